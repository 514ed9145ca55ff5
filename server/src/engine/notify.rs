//! Changes made through other replicas. With PostgreSQL every transaction that changes an
//! office sends `NOTIFY blangko_office_changed, '<office_id>'` (delivered at commit); each replica
//! LISTENs and marks its watched service points of that office as changed, so a WatchQuota
//! stream on replica A sees a Reserve made through replica B. After a lost connection every
//! watched snapshot is refreshed, since notifications sent meanwhile are gone.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::Engine;

/// The notification channel.
pub const CHANNEL: &str = "blangko_office_changed";
/// Pause before reconnecting after a failure.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

impl Engine {
    /// Listens for other replicas' changes until `shutdown` fires (PostgreSQL only). After
    /// `probe` without a notification it checks the connection with a query that must answer
    /// within `probe` too: the listener only receives, and a connection whose peer vanished
    /// without closing it (a host powered off, a failover behind one address) would otherwise
    /// wait for ever while the other replicas' changes go unseen.
    pub async fn run_change_listener(
        self: Arc<Self>,
        database_url: String,
        probe: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            // The set-up gives way to shutdown: a database out of reach must not hold the
            // process past its drain time-out.
            let set_up = tokio::select! {
                set_up = listen(&database_url, probe) => set_up,
                _ = shutdown.changed() => return,
            };
            let (mut listener, pid) = match set_up {
                Ok(listening) => listening,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot set up the change listener; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            let mut session = Some(pid);
            // Anything may have changed while we were not listening.
            self.hub.all_changed();
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    received = tokio::time::timeout(probe, listener.try_recv()) => match received {
                        Ok(Ok(Some(notification))) => {
                            self.hub.office_changed(notification.payload());
                        }
                        // The connection dropped and PgListener connected again (its
                        // session is new: the next probe takes it as known).
                        Ok(Ok(None)) => {
                            self.hub.all_changed();
                            session = None;
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(error = %err, "change listener failed; reconnecting");
                            break;
                        }
                        // Quiet for `probe`: is anyone still there? (The wait just given up
                        // read nothing: a notification is one small message, read whole.)
                        Err(_) => {
                            let answered = tokio::select! {
                                // A probe of a dead connection waits up to `probe`: shutdown
                                // does not.
                                _ = shutdown.changed() => return,
                                answered = tokio::time::timeout(
                                    probe,
                                    backend_pid(&mut listener),
                                ) => answered,
                            };
                            let Ok(Ok(pid)) = answered else {
                                tracing::warn!(
                                    ?probe,
                                    "change listener's connection did not answer; reconnecting"
                                );
                                break;
                            };
                            // A connection that dropped while the wait above was being given
                            // up (PgListener was connecting again inside it) is connected
                            // again, and LISTENs again, by the probe itself, silently:
                            // notifications sent meanwhile are gone.
                            match session {
                                Some(known) if known != pid => {
                                    tracing::info!(
                                        "change listener connected again; refreshing every watched quota"
                                    );
                                    self.hub.all_changed();
                                }
                                _ => {}
                            }
                            session = Some(pid);
                        }
                    },
                }
            }
        }
    }
}

/// A listener connected and LISTENing on [`CHANNEL`], with the server process of its session
/// (to notice a reconnect that PgListener makes without saying so: see the probe). The
/// session's question must answer within `probe`.
async fn listen(database_url: &str, probe: Duration) -> anyhow::Result<(PgListener, i32)> {
    let mut listener = PgListener::connect(database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect: {e}"))?;
    listener
        .listen(CHANNEL)
        .await
        .map_err(|e| anyhow::anyhow!("cannot LISTEN: {e}"))?;
    let pid = tokio::time::timeout(probe, backend_pid(&mut listener))
        .await
        .map_err(|_| anyhow::anyhow!("its connection did not answer within {probe:?}"))??;
    Ok((listener, pid))
}

/// The server process of the listener's session (PgListener connects again when it must).
async fn backend_pid(listener: &mut PgListener) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(listener)
        .await
}
