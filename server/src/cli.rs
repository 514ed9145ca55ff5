//! What the `blangko-server` binary does with its parsed flags (kept in the library so the
//! end-to-end tests can build the very same program).

use std::process::ExitCode;

use anyhow::Context;

use crate::app::{Application, ShutdownSignals, init_tracing};
use crate::auth::tokens;
use crate::config::{Command, Config, TokenCommand};

/// Starts logging, builds the server, serves until SIGINT/SIGTERM. Exit code 0 after a clean
/// shutdown, 1 with a one-line reason when it cannot start. With a subcommand (`token …`) it
/// runs that instead and exits.
pub async fn run(config: Config) -> ExitCode {
    // SIGHUP reloads the token file once the server serves. Its default is to end the process:
    // from here on tokio's handler takes it, so a SIGHUP sent while the server starts (its
    // migrations, a journal fold), to a server without a token file, or to `backup` or `token`
    // (`pkill -HUP blangko-server` reaches them too) is ignored instead of killing it.
    #[cfg(unix)]
    if let Err(err) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        eprintln!(
            "blangko-server: cannot take SIGHUP over ({err}); a SIGHUP would end this process"
        );
    }
    let result = match &config.command {
        Some(Command::Token(cmd)) => token_command(&config, cmd),
        Some(Command::Backup { to }) => backup_command(&config, to).await,
        None => {
            init_tracing(&config);
            serve(config).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blangko-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Before the build, which may take long (ShutdownSignals).
    let mut signals = ShutdownSignals::take_over();
    let build = Application::build(config);
    tokio::pin!(build);
    let (app, stop_at_once) = tokio::select! {
        app = &mut build => (app?, false),
        () = signals.next() => {
            tracing::info!("shutdown requested while starting: the server stops as soon as it has started; a second SIGINT or SIGTERM stops it now");
            tokio::select! {
                app = &mut build => (app?, true),
                () = signals.next() => anyhow::bail!("stopped while starting, on a second signal"),
            }
        }
    };
    let addr = app.local_addr()?;
    // Printed on stdout so scripts and tests that start the server on port 0 learn the port.
    println!("blangko-server listening on {addr}");
    if let Some(metrics) = app.metrics_addr()? {
        // The second line, only with --metrics-listen (port 0 picks a free port).
        println!("blangko-server metrics on http://{metrics}/metrics");
    }
    tracing::info!(%addr, "serving gRPC (health and reflection included)");
    // The first signal drains; a second one, while the server stops, stops it at once.
    let (first_tx, first) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::spawn(async move {
        if !stop_at_once {
            signals.next().await;
        }
        let _ = first_tx.send(());
        signals.next().await;
        let _ = second_tx.send(());
    });
    let stopped = app
        .run_until_stopped_or_forced(
            async move {
                let _ = first.await;
            },
            async move {
                if second.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        )
        .await;
    listener.abort();
    stopped
}

/// `token add|list|revoke` on the file named by --token-file.
fn token_command(config: &Config, cmd: &TokenCommand) -> anyhow::Result<()> {
    let path = config
        .token_file
        .as_deref()
        .context("name the token file with --token-file FILE (or BLANGKO_TOKEN_FILE)")?;
    match cmd {
        TokenCommand::Add {
            name,
            role,
            office,
            service_points,
        } => {
            let token = tokens::add_to_file(
                path,
                name,
                role.role(),
                office.as_deref(),
                service_points.as_deref(),
            )?;
            // The token is shown once, on stdout alone, so `TOKEN=$(blangko-server … token add …)` works.
            println!("{token}");
            eprintln!(
                "blangko-server: added '{name}' to {}; send SIGHUP to running servers to make it valid",
                path.display()
            );
        }
        TokenCommand::List => {
            let table = tokens::TokenTable::load(path)?;
            for line in table.lines() {
                let p = &line.principal;
                let (office, service_points) = p.scope_fields();
                println!(
                    "{}\t{}\t{office}\t{service_points}\tsha256:{}…",
                    p.name,
                    p.role.as_str(),
                    line.token_sha256.get(..12).unwrap_or("")
                );
            }
        }
        TokenCommand::Revoke { name } => {
            if !tokens::revoke_in_file(path, name)? {
                anyhow::bail!("no principal named '{name}' in {}", path.display());
            }
            eprintln!(
                "blangko-server: revoked '{name}'; send SIGHUP to running servers to make it take effect"
            );
        }
    }
    Ok(())
}

/// `backup --to FILE` of the SQLite database named by --database.
async fn backup_command(config: &Config, to: &std::path::Path) -> anyhow::Result<()> {
    use crate::store::backup::{self, KeyCopy};
    let key_in_environment = std::env::var_os("BLANGKO_NIK_KEY").is_some();
    let report = backup::backup(
        &config.database,
        config.nik_key_file.as_deref(),
        key_in_environment,
        to,
    )
    .await?;
    for stale in &report.stale_removed {
        println!(
            "removed {}: the working copy of an earlier backup that was interrupted",
            stale.display()
        );
    }
    for problem in &report.stale_left {
        eprintln!("warning: {problem}");
    }
    println!(
        "backup written to {} ({} bytes, {} offices, {} ledger entries; SQLite integrity check ok)",
        report.database.display(),
        report.bytes,
        report.offices,
        report.ledger_entries
    );
    match &report.key {
        KeyCopy::Copied(path) => println!(
            "NIK key copied to {} (mode 0600): keep it with the backup and as secret as the original; \
             without it the backup's NIK hashes cannot be matched",
            path.display()
        ),
        KeyCopy::InEnvironment => println!(
            "NIK key: the servers read it from BLANGKO_NIK_KEY, so it was not copied; keep that key with the backup"
        ),
    }
    Ok(())
}
