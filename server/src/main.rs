//! `blangko-server`: parse the flags, then `blangko_server::cli::run`.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    blangko_server::cli::run(blangko_server::config::Config::parse()).await
}
