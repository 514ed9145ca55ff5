//! `blangko-server`: parse the flags, build, serve until SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use blangko_server::app::{Application, init_tracing, shutdown_signal};
use blangko_server::config::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    init_tracing(&config);
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blangko-server: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let addr = app.local_addr()?;
    // Printed on stdout so scripts and tests that start the server on port 0 learn the port.
    println!("blangko-server listening on {addr}");
    tracing::info!(%addr, "serving gRPC (health and reflection included)");
    app.run_until_stopped(shutdown_signal()).await
}
