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
            let mut listener = match PgListener::connect(&database_url).await {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot connect the change listener; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if let Err(err) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %err, "cannot LISTEN for changes; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            // Anything may have changed while we were not listening.
            self.hub.all_changed();
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    received = tokio::time::timeout(probe, listener.try_recv()) => match received {
                        Ok(Ok(Some(notification))) => {
                            self.hub.office_changed(notification.payload());
                        }
                        // The connection dropped; PgListener reconnects on the next call.
                        Ok(Ok(None)) => self.hub.all_changed(),
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
                                    sqlx::query("SELECT 1").execute(&mut listener),
                                ) => answered,
                            };
                            if !matches!(answered, Ok(Ok(_))) {
                                tracing::warn!(
                                    ?probe,
                                    "change listener's connection did not answer; reconnecting"
                                );
                                break;
                            }
                        }
                    },
                }
            }
        }
    }
}
