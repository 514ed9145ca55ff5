//! The `blangko-counter` binary: parse the command line, run it, exit with its code.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    blangko_counter::main().await
}
