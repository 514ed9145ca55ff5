//! `blangko-server`: parse the flags, then `blangko_server::cli::run`.
#![forbid(unsafe_code)]

use std::time::Duration;

use clap::Parser;

/// Longest wait, once the server has stopped, for blocking work still running (a database call
/// cut at the shutdown deadline or by a second signal); the process then exits without it.
const RUNTIME_STOP: Duration = Duration::from_secs(1);

fn main() -> std::process::ExitCode {
    let config = blangko_server::config::Config::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("blangko-server: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(blangko_server::cli::run(config));
    // Dropping the runtime would wait for every blocking task, however long it runs.
    runtime.shutdown_timeout(RUNTIME_STOP);
    code
}
