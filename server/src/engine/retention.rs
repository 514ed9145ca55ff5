//! NIK retention (UU 27/2022: keep personal data no longer than needed). After the retention
//! period a reservation's keyed NIK hash is replaced by a value derived from the reservation id,
//! IKD activations are deleted, and stored idempotency answers (whose fingerprints are keyed
//! hashes of requests that carried NIKs) are dropped. The reservations themselves, the daily
//! quota counts and the ledger stay: the counts are kept, the link to a person is not.

use chrono::Duration;

use super::{Engine, EngineResult};
use crate::domain::calendar::{OfficeZone, format_local_date};

/// The prefix of a purged reservation's `nik_hash` (never a hex HMAC, so it matches no NIK).
pub const PURGED_PREFIX: &str = "purged:";

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Reservations whose NIK hash was removed.
    pub reservations: u64,
    /// IKD activations deleted.
    pub ikd_activations: u64,
    /// Stored idempotency answers deleted.
    pub answers: u64,
}

impl Engine {
    /// Purges NIK hashes of reservations from local days more than `retention_days` before
    /// `now_ms` (office days are compared in WIB, the earliest zone, so no office keeps one a
    /// day too long by the calendar of another), and activations and answers older than that.
    pub async fn purge_nik_hashes(&self, now_ms: i64, retention_days: u32) -> EngineResult<Purged> {
        let days = i64::from(retention_days);
        let cutoff_date = OfficeZone::Wib.local_date(now_ms) - Duration::days(days);
        let cutoff_date = format_local_date(cutoff_date);
        let cutoff_ms = now_ms.saturating_sub(days.saturating_mul(86_400_000));
        let mut tx = self.begin().await?;
        let reservations = sqlx::query(
            "UPDATE reservations SET nik_hash = $1 || reservation_id
             WHERE local_date < $2 AND nik_hash NOT LIKE 'purged:%'",
        )
        .bind(PURGED_PREFIX)
        .bind(&cutoff_date)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let ikd_activations = sqlx::query("DELETE FROM ikd_activations WHERE activated_ms < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let answers = sqlx::query("DELETE FROM idempotency WHERE created_ms < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit_durably(tx).await?;
        let purged = Purged {
            reservations,
            ikd_activations,
            answers,
        };
        if purged != Purged::default() {
            tracing::info!(
                reservations,
                ikd_activations,
                answers,
                retention_days,
                "purged NIK hashes past retention"
            );
        }
        Ok(purged)
    }
}
