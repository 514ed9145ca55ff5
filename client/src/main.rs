//! The `blangko-counter` binary: parse the command line, run it, exit with its code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = blangko_counter::Cli::parse();
    blangko_counter::run(cli).await
}
