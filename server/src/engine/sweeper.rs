//! The sweeper: releases holds whose time ran out, so their slots and blanks return even when
//! no Reserve touches the office (Reserve itself also releases due holds of its office first,
//! so an expiry never waits for the sweeper).

use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::store::rows;

/// Most offices handled per sweep (the rest in the next sweep).
pub const OFFICES_PER_SWEEP: i64 = 100;

impl Engine {
    /// One sweep: expires the due holds of up to [`OFFICES_PER_SWEEP`] offices. Returns how many.
    pub async fn sweep_once(&self) -> anyhow::Result<usize> {
        let now = self.clock.now_ms();
        let offices = {
            let mut conn = self
                .store
                .reader_for_due_holds(now)
                .await?
                .acquire()
                .await?;
            rows::offices_with_due_holds(&mut conn, now, OFFICES_PER_SWEEP).await?
        };
        let mut total = 0;
        for office in offices {
            // One office that cannot be swept (a broken row, say) must not keep the offices
            // after it from being swept: its error is logged, and the sweep goes on.
            match self.expire_office(&office).await {
                Ok(n) => total += n,
                Err(err) => {
                    tracing::warn!(office = %office, error = %err, "cannot expire this office's due holds; the sweep goes on with the others")
                }
            }
        }
        Ok(total)
    }

    /// Sweeps every `interval` until `shutdown` fires.
    pub async fn run_sweeper(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            match self.sweep_once().await {
                Ok(expired) => self.metrics.record_sweep(Some(expired)),
                Err(err) => {
                    self.metrics.record_sweep(None);
                    tracing::warn!(error = %err, "sweeper pass failed; will try again");
                }
            }
        }
    }
}
