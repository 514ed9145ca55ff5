//! The same program as `blangko-server`, built as part of this test package so the end-to-end
//! tests can start it as a child process without a separate build step.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    blangko_server::cli::run(blangko_server::config::Config::parse()).await
}
