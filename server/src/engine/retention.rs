//! NIK retention (UU 27/2022: keep personal data no longer than needed). After the retention
//! period a reservation's keyed NIK hash is replaced by a value derived from the reservation id,
//! IKD activations are deleted, and stored idempotency answers (whose fingerprints are keyed
//! hashes of requests that carried NIKs) are dropped. The reservations themselves, the daily
//! quota counts and the ledger stay: the counts are kept, the link to a person is not.
//!
//! The purge runs beside the service day, so it never holds the database's write lock for long:
//! it finds what to purge with short reads on the reader pool ([`PURGE_CHUNK`] rows each, along
//! an index: `reservations_by_office_day` for reservations, the time indexes of migration 0007
//! (PostgreSQL: 0006) for IKD activations and stored answers), and changes it by key in short
//! write transactions of at most that many rows. A database that has never been purged, or a
//! retention period cut from 400 to 30 days, is worked off chunk by chunk between the Reserve
//! batches. Reservations are read per office along `reservations_by_office_day`, from the day
//! the last complete purge reached, so an hourly purge reads only the days that have come past
//! the retention period since.
//!
//! It folds the SQLite Reserve journal once, when it starts, and its reads do not fold it again
//! (a fold per office and chunk took the write gate from a burst's Reserves hundreds of times
//! an hour): what reaches the journal after the start is newer than anything the purge looks
//! for (a retention period is 1 day or more; 0 turns the purge off). Its writes fold it, as
//! every write does.

use chrono::Duration;
use sqlx::Row;

use super::{Engine, EngineResult};
use crate::domain::calendar::{OfficeZone, format_local_date};
use crate::store::rows;

/// The prefix of a purged reservation's `nik_hash` (never a hex HMAC, so it matches no NIK).
pub const PURGED_PREFIX: &str = "purged:";
/// The purge's read of IKD activations past the cutoff ($1), oldest first, at most $2: along
/// `ikd_activations_by_time`.
pub const FIND_OLD_IKD_ACTIVATIONS: &str =
    "SELECT nik_hash FROM ikd_activations WHERE activated_ms < $1 ORDER BY activated_ms LIMIT $2";
/// The purge's read of stored answers past the cutoff ($1), oldest first, at most $2: along
/// `idempotency_by_created`.
pub const FIND_OLD_ANSWERS: &str =
    "SELECT request_id FROM idempotency WHERE created_ms < $1 ORDER BY created_ms LIMIT $2";
/// Most rows one read of the purge returns, and one of its write transactions changes.
pub const PURGE_CHUNK: i64 = 500;

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Reservations whose NIK hash was removed.
    pub reservations: u64,
    /// IKD activations deleted.
    pub ikd_activations: u64,
    /// Stored idempotency answers deleted.
    pub answers: u64,
    /// The write transactions that did it, each of at most one chunk of rows
    /// ([`PURGE_CHUNK`]): short, so that Reserves never wait behind the purge for long.
    pub transactions: u64,
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
        let from = self
            .purged_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        // Every row made before now in its table, once (see the module's comment).
        self.store.fold_journal().await?;
        let transactions = std::sync::atomic::AtomicU64::new(0);
        let mut reservations = 0;
        let mut after_office = String::new();
        loop {
            let (offices, next) = {
                let mut conn = self.store.reader_without_fold().acquire().await?;
                rows::offices_page_and_next(&mut conn, "", &after_office, PURGE_CHUNK as u32)
                    .await?
            };
            for office in &offices {
                reservations += self
                    .purge_office_reservations(
                        &office.office_id,
                        &from,
                        &cutoff_date,
                        &transactions,
                    )
                    .await?;
            }
            if next.is_empty() {
                break;
            }
            after_office = next;
        }
        // Every reservation before the cutoff is purged now: the next purge starts there.
        *self.purged_before.lock().unwrap_or_else(|p| p.into_inner()) = Some(cutoff_date.max(from));
        let ikd_activations = self
            .purge_chunks(
                FIND_OLD_IKD_ACTIVATIONS,
                // The date again: an activation recorded anew since the read (the same person
                // activating again) is kept.
                "DELETE FROM ikd_activations WHERE nik_hash = $1 AND activated_ms < $2",
                cutoff_ms,
                &transactions,
            )
            .await?;
        let answers = self
            .purge_chunks(
                FIND_OLD_ANSWERS,
                "DELETE FROM idempotency WHERE request_id = $1 AND created_ms < $2",
                cutoff_ms,
                &transactions,
            )
            .await?;
        let purged = Purged {
            reservations,
            ikd_activations,
            answers,
            transactions: transactions.into_inner(),
        };
        if purged != Purged::default() {
            tracing::info!(
                reservations,
                ikd_activations,
                answers,
                transactions = purged.transactions,
                retention_days,
                "purged NIK hashes past retention"
            );
        }
        Ok(purged)
    }

    /// Purges the NIK hashes of `office_id`'s reservations of local days from `from` up to
    /// `before` (excluded), a chunk at a time.
    async fn purge_office_reservations(
        &self,
        office_id: &str,
        from: &str,
        before: &str,
        transactions: &std::sync::atomic::AtomicU64,
    ) -> EngineResult<u64> {
        let mut purged = 0;
        // Where the next read starts: (local_date, office_seq), past the last row read.
        let (mut date, mut seq) = (from.to_string(), i64::MIN);
        loop {
            let rows = {
                let mut conn = self.store.reader_without_fold().acquire().await?;
                sqlx::query(
                    "SELECT reservation_id, local_date, office_seq, nik_hash FROM reservations \
                     WHERE office_id = $1 AND local_date < $2 AND (local_date, office_seq) > ($3, $4) \
                     ORDER BY local_date, office_seq LIMIT $5",
                )
                .bind(office_id)
                .bind(before)
                .bind(&date)
                .bind(seq)
                .bind(PURGE_CHUNK)
                .fetch_all(&mut *conn)
                .await?
            };
            let Some(last) = rows.last() else {
                return Ok(purged);
            };
            date = last.try_get("local_date")?;
            seq = last.try_get("office_seq")?;
            let mut ids = Vec::new();
            for row in &rows {
                let hash: String = row.try_get("nik_hash")?;
                if !hash.starts_with(PURGED_PREFIX) {
                    ids.push(row.try_get::<String, _>("reservation_id")?);
                }
            }
            purged += self
                .write_by_keys(
                    &format!(
                        "UPDATE reservations SET nik_hash = '{PURGED_PREFIX}' || reservation_id \
                         WHERE reservation_id = $1 AND nik_hash NOT LIKE '{PURGED_PREFIX}%'"
                    ),
                    ids,
                    None,
                    transactions,
                )
                .await?;
            if (rows.len() as i64) < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }

    /// Deletes, a chunk at a time, the rows that `find` (bound to `cutoff_ms` and the chunk size,
    /// giving one key per row) names, by `delete` (bound to one key and `cutoff_ms`, so that a
    /// row changed since the read is checked again).
    async fn purge_chunks(
        &self,
        find: &str,
        delete: &str,
        cutoff_ms: i64,
        transactions: &std::sync::atomic::AtomicU64,
    ) -> EngineResult<u64> {
        let mut deleted = 0;
        loop {
            let keys: Vec<String> = {
                let mut conn = self.store.reader_without_fold().acquire().await?;
                sqlx::query_scalar(find)
                    .bind(cutoff_ms)
                    .bind(PURGE_CHUNK)
                    .fetch_all(&mut *conn)
                    .await?
            };
            let found = keys.len() as i64;
            deleted += self
                .write_by_keys(delete, keys, Some(cutoff_ms), transactions)
                .await?;
            if found < PURGE_CHUNK {
                return Ok(deleted);
            }
        }
    }

    /// Runs `statement` (its parameters a key and, when given, `also`) for each of `keys`, in one
    /// short write transaction (counted in `transactions`), and gives the rows it changed. In
    /// key order, so that two replicas purging at once take their row locks in the same order
    /// (no deadlock between them).
    async fn write_by_keys(
        &self,
        statement: &str,
        mut keys: Vec<String>,
        also: Option<i64>,
        transactions: &std::sync::atomic::AtomicU64,
    ) -> EngineResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        keys.sort_unstable();
        let mut changed = 0;
        let mut tx = self.begin().await?;
        for key in &keys {
            let mut query = sqlx::query(statement).bind(key);
            if let Some(also) = also {
                query = query.bind(also);
            }
            changed += query.execute(&mut *tx).await?.rows_affected();
        }
        self.commit_durably(tx).await?;
        transactions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(changed)
    }
}
