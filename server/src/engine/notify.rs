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
    /// Listens for other replicas' changes until `shutdown` fires (PostgreSQL only).
    pub async fn run_change_listener(
        self: Arc<Self>,
        database_url: String,
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
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => self.hub.office_changed(notification.payload()),
                        // The connection dropped; PgListener reconnects on the next call.
                        Ok(None) => self.hub.all_changed(),
                        Err(err) => {
                            tracing::warn!(error = %err, "change listener failed; reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }
}
