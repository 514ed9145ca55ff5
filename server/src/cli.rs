//! What the `blangko-server` binary does with its parsed flags (kept in the library so the
//! end-to-end tests can build the very same program).

use std::process::ExitCode;

use crate::app::{Application, init_tracing, shutdown_signal};
use crate::config::Config;

/// Starts logging, builds the server, serves until SIGINT/SIGTERM. Exit code 0 after a clean
/// shutdown, 1 with a one-line reason when it cannot start.
pub async fn run(config: Config) -> ExitCode {
    init_tracing(&config);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blangko-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let addr = app.local_addr()?;
    // Printed on stdout so scripts and tests that start the server on port 0 learn the port.
    println!("blangko-server listening on {addr}");
    tracing::info!(%addr, "serving gRPC (health and reflection included)");
    app.run_until_stopped(shutdown_signal()).await
}
