//! One-off changes to stored data that a server makes at start, before it serves, where SQL
//! alone cannot make them: a keyed hash needs the NIK key, which the database never holds. Each
//! is recorded in `data_upgrades` (migration 0008, PostgreSQL 0007) once done, so that later
//! starts skip it.
//!
//! [`REHASH_NIK_SHAPED_REQUEST_IDS`]: a request id with 16 or more digits is stored as `#` and a
//! keyed hash ([`NikKey::request_key`]), never in clear, because it could hold a NIK. Servers
//! before this change counted only spaces, dots, dashes and slashes as what may separate a NIK's
//! digits, so an id such as `q_3275_0141_0190_0001` (a client that joins its parts with
//! underscores), or one with a tab or a no-break space, was stored in clear. The upgrade hashes
//! those keys as the server now looks them up, so a retry across the upgrade still finds its
//! answer and no such NIK stays in the file. A key from before request ids were scoped to their
//! caller (the id alone) cannot be hashed the way it is now looked up (its caller is not known)
//! and is found by no lookup any more: it is deleted.

use sqlx::Row;

use crate::nik_key::{NikKey, SCOPE_SEPARATOR};
use crate::store::{DatabaseKind, Store};

/// The name in `data_upgrades` of the hashing of request ids stored in clear.
pub const REHASH_NIK_SHAPED_REQUEST_IDS: &str = "rehash-nik-shaped-request-ids";

/// Most stored keys one transaction of an upgrade reads and changes: short transactions, as the
/// retention purge's.
pub const UPGRADE_CHUNK: i64 = 500;

/// What the request-id upgrade changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rehashed {
    /// Stored keys read (every key not yet hashed).
    pub read: u64,
    /// Keys replaced by their hashed form.
    pub hashed: u64,
    /// Keys deleted: unscoped ones, or ones whose hashed form was already stored (by a replica
    /// that had the change first).
    pub deleted: u64,
}

/// Runs the upgrades not yet recorded as done. `now_ms` stamps them.
pub async fn run(store: &Store, key: &NikKey, now_ms: i64) -> anyhow::Result<()> {
    if done(store, REHASH_NIK_SHAPED_REQUEST_IDS).await? {
        return Ok(());
    }
    let rehashed = rehash_nik_shaped_request_ids(store, key).await?;
    if rehashed.hashed + rehashed.deleted > 0 {
        tracing::info!(
            read = rehashed.read,
            hashed = rehashed.hashed,
            deleted = rehashed.deleted,
            "request ids that could hold a NIK (digits split by underscores or other spaces) were stored in clear by an earlier version: now stored hashed"
        );
    }
    let mut tx = store.begin().await?;
    sqlx::query(
        "INSERT INTO data_upgrades (name, done_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(REHASH_NIK_SHAPED_REQUEST_IDS)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    store.sync().await?;
    Ok(())
}

async fn done(store: &Store, name: &str) -> anyhow::Result<bool> {
    let mut tx = store.begin_read().await?;
    let row = sqlx::query("SELECT done_ms FROM data_upgrades WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row.is_some())
}

/// Hashes every stored request key whose caller's id now counts as one that could hold a NIK,
/// in transactions of at most [`UPGRADE_CHUNK`] keys, walking the keys in order. Another
/// replica doing the same at once is harmless: a key it changed first is no longer there to
/// change.
pub async fn rehash_nik_shaped_request_ids(
    store: &Store,
    key: &NikKey,
) -> anyhow::Result<Rehashed> {
    let mut rehashed = Rehashed::default();
    let mut after = String::new();
    loop {
        let mut tx = store.begin().await?;
        let keys: Vec<String> = sqlx::query(
            "SELECT request_id FROM idempotency WHERE request_id > $1 AND request_id NOT LIKE '#%' ORDER BY request_id LIMIT $2",
        )
        .bind(&after)
        .bind(UPGRADE_CHUNK)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("request_id"))
        .collect::<Result<_, _>>()?;
        let Some(last) = keys.last() else {
            tx.commit().await?;
            break;
        };
        after = last.clone();
        rehashed.read += keys.len() as u64;
        // SQLite keeps a deleted or replaced key's bytes in the page's free space (and a free
        // page's) until they are reused: with `secure_delete` it overwrites them with zeros, so
        // the id in clear leaves the file. Only for this transaction: on the Reserve path it
        // would zero every folded journal row too.
        let sqlite = store.kind() == DatabaseKind::Sqlite;
        if sqlite {
            sqlx::query("PRAGMA secure_delete = ON")
                .execute(&mut *tx)
                .await?;
        }
        for stored in &keys {
            let (scope, id) = match stored.split_once(SCOPE_SEPARATOR) {
                Some((principal, id)) => (Some(principal), id),
                None => (None, stored.as_str()),
            };
            if !crate::domain::nik::has_nik_stretch_any_separator(id) {
                continue;
            }
            let hashed = scope.map(|principal| key.request_key(principal, id));
            let taken = match &hashed {
                Some(hashed) => sqlx::query("SELECT 1 FROM idempotency WHERE request_id = $1")
                    .bind(hashed)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some(),
                None => false,
            };
            match hashed {
                Some(hashed) if !taken => {
                    let changed =
                        sqlx::query("UPDATE idempotency SET request_id = $1 WHERE request_id = $2")
                            .bind(&hashed)
                            .bind(stored)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    rehashed.hashed += changed;
                }
                _ => {
                    let changed = sqlx::query("DELETE FROM idempotency WHERE request_id = $1")
                        .bind(stored)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    rehashed.deleted += changed;
                }
            }
        }
        if sqlite {
            sqlx::query("PRAGMA secure_delete = OFF")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if (keys.len() as i64) < UPGRADE_CHUNK {
            break;
        }
    }
    if rehashed.hashed + rehashed.deleted > 0 {
        store.sync().await?;
    }
    Ok(rehashed)
}
