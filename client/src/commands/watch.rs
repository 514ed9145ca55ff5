//! `watch`: live quota snapshots, one line per change. Survives a server restart (or a replica
//! going away) by reconnecting with bounded backoff; `--max-updates` and `--for` end it.

use std::process::ExitCode;
use std::time::Duration;

use blangko_proto::v1::QuotaSnapshot;
use serde_json::json;

use crate::cli::WatchArgs;
use crate::connect::Backoff;
use crate::error::{EXIT_ERROR, EXIT_OK, Failure};
use crate::output::{Out, snapshot_json, snapshot_line};
use crate::terminal::Terminal;

/// The snapshot without its timestamp: two snapshots that differ only in `as_of` are no change.
fn content(q: &QuotaSnapshot) -> QuotaSnapshot {
    QuotaSnapshot {
        as_of: None,
        ..q.clone()
    }
}

/// Follows the quota and calls `on_change` for every changed snapshot until it returns false.
/// Reconnects after a stream error or end, or a refusal with a RetryInfo delay (after at least
/// that delay); gives up after `max_reconnects` failures in a row. `on_notice` gets the
/// reconnect messages.
pub async fn follow<F, N>(
    term: &Terminal,
    max_reconnects: u32,
    mut on_change: F,
    mut on_notice: N,
) -> Result<(), Failure>
where
    F: FnMut(&QuotaSnapshot) -> bool,
    N: FnMut(&Failure, Duration),
{
    let backoff = Backoff {
        base: Duration::from_millis(250),
        max: Duration::from_secs(5),
    };
    let mut last: Option<QuotaSnapshot> = None;
    let mut failures: u32 = 0;
    loop {
        let failure = match term.watch().await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        failures = 0;
                        let Some(snapshot) = message.quota else {
                            continue;
                        };
                        let now = content(&snapshot);
                        if last.as_ref() == Some(&now) {
                            continue;
                        }
                        last = Some(now);
                        if !on_change(&snapshot) {
                            return Ok(());
                        }
                    }
                    Ok(None) => {
                        break Failure::local(
                            "server menutup aliran data kuota",
                            "the server closed the stream",
                        );
                    }
                    Err(status) => break Failure::from(status),
                }
            },
            Err(failure @ Failure::BadInput { .. }) => return Err(failure),
            // The server asked to be called again later (TOO_MANY_WATCHERS: its watcher
            // slots are full): a reconnect, after at least the delay it gave.
            Err(
                failure @ Failure::Server {
                    retry_after: Some(_),
                    ..
                },
            ) => failure,
            Err(failure @ Failure::Server { .. }) => return Err(failure),
            Err(failure) => failure,
        };
        if failures >= max_reconnects {
            return Err(failure);
        }
        let asked = match &failure {
            Failure::Server { retry_after, .. } => retry_after.unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let delay = backoff.delay(failures, &mut rand::rng()).max(asked);
        failures += 1;
        on_notice(&failure, delay);
        tokio::time::sleep(delay).await;
    }
}

/// Runs `watch`.
pub async fn run(term: &Terminal, out: Out, args: &WatchArgs) -> ExitCode {
    if let Err(failure) = term.office().and(term.service_point()) {
        return failure.exit(&out);
    }
    let max_updates = args.max_updates;
    let mut shown: u64 = 0;
    let following = follow(
        term,
        args.max_reconnects,
        |snapshot| {
            if out.json {
                out.json(&json!({"quota": snapshot_json(snapshot, out.zone)}));
            } else {
                out.line(&format!(
                    "{}  {}",
                    out.zone.time_of_day(snapshot.as_of.as_ref()),
                    snapshot_line(snapshot, &out)
                ));
            }
            shown += 1;
            max_updates.is_none_or(|max| shown < max)
        },
        |failure, delay| {
            let what = if matches!(
                failure,
                Failure::Server {
                    retry_after: Some(_),
                    ..
                }
            ) {
                out.t(
                    "Server belum bisa melayani; mencoba lagi dalam",
                    "The server cannot take it yet; trying again in",
                )
            } else {
                out.t(
                    "Koneksi terputus; menyambung ulang dalam",
                    "Connection lost; reconnecting in",
                )
            };
            out.notice(&format!(
                "{what} {} ms: {}",
                delay.as_millis(),
                failure.human(out.lang)
            ));
        },
    );
    let result = match args.for_secs {
        Some(secs) => match tokio::time::timeout(Duration::from_secs_f64(secs), following).await {
            Ok(result) => result,
            Err(_elapsed) => Ok(()),
        },
        None => following.await,
    };
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(failure) => {
            failure.report(&out);
            ExitCode::from(EXIT_ERROR.max(failure.exit_code()))
        }
    }
}
