//! The sweeper: releases holds whose time ran out, so their slots and blanks return even when
//! no Reserve touches the office (Reserve itself also releases due holds of its office first,
//! so an expiry never waits for the sweeper).

use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::store::rows;

/// Most offices handled per sweep (the rest in the next sweep).
pub const OFFICES_PER_SWEEP: i64 = 100;

/// The shortest time between two sweeper passes that Reserves asked for (`Engine::sweep_soon`).
pub const SWEEP_SOON_GAP: Duration = Duration::from_millis(250);

impl Engine {
    /// One sweep: expires the due holds of up to [`OFFICES_PER_SWEEP`] offices, from where the
    /// last sweep stopped. Returns how many.
    pub async fn sweep_once(&self) -> anyhow::Result<usize> {
        let now = self.clock.now_ms();
        // Each sweep goes on after the last office the one before reached, and wraps around:
        // offices early in id order whose holds cannot be released (or that always have due
        // holds) must not keep the later ones from ever being swept.
        let after = self
            .sweep_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let offices = {
            let mut conn = self
                .store
                .reader_for_due_holds(now)
                .await?
                .acquire()
                .await?;
            let mut offices =
                rows::offices_with_due_holds(&mut conn, now, &after, OFFICES_PER_SWEEP).await?;
            let full = i64::try_from(offices.len()).unwrap_or(i64::MAX) >= OFFICES_PER_SWEEP;
            let next = match offices.last() {
                Some(last) if full => last.clone(),
                _ => String::new(),
            };
            if !full && !after.is_empty() {
                let room = OFFICES_PER_SWEEP - i64::try_from(offices.len()).unwrap_or(0);
                let wrapped = rows::offices_with_due_holds(&mut conn, now, "", room).await?;
                offices.extend(
                    wrapped
                        .into_iter()
                        .take_while(|o| o.as_str() <= after.as_str()),
                );
            }
            *self.sweep_after.lock().unwrap_or_else(|p| p.into_inner()) = next;
            offices
        };
        // Queue reports long expired (a counter that stopped reporting), so the table stays
        // small; a failure here only leaves them for the next sweep.
        if let Err(err) = self.drop_stale_queue_reports(now).await {
            tracing::debug!(error = %err, "cannot drop stale queue reports now; the next sweep tries again");
        }
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

    /// Deletes the queue reports older than [`super::QUEUE_REPORT_KEEP_MS`], when a read finds
    /// any (a write transaction only then). On its own, in a short transaction that locks nothing
    /// but the rows it deletes, never beside a counter's report. Returns how many.
    pub async fn drop_stale_queue_reports(&self, now: i64) -> anyhow::Result<u64> {
        let before = now - super::QUEUE_REPORT_KEEP_MS;
        let any: Option<i64> = {
            // Queue reports are never in the Reserve journal: nothing to fold for this read.
            let mut conn = self.store.reader_without_fold().acquire().await?;
            sqlx::query_scalar("SELECT 1 FROM queue_reports WHERE reported_ms < $1 LIMIT 1")
                .bind(before)
                .fetch_optional(&mut *conn)
                .await?
        };
        if any.is_none() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let deleted = sqlx::query("DELETE FROM queue_reports WHERE reported_ms < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit_durably(tx).await?;
        Ok(deleted)
    }

    /// Sweeps every `interval` until `shutdown` fires.
    pub async fn run_sweeper(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pass = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.sweep_soon.notified() => {
                    // Woken by Reserves that met a hold elsewhere which ran out: at most one
                    // such pass per SWEEP_SOON_GAP, however many Reserves retry meanwhile.
                    tokio::time::sleep_until(last_pass + SWEEP_SOON_GAP).await;
                }
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            last_pass = tokio::time::Instant::now();
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
