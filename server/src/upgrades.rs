//! Changes to stored data that a server makes at start, before it serves, where SQL alone cannot
//! make them: a keyed hash needs the NIK key, which the database never holds. Each is recorded
//! in `data_upgrades` (migration 0008, PostgreSQL 0007) with the time it last ran.
//!
//! [`REHASH_NIK_SHAPED_REQUEST_IDS`]: a request id with 16 or more digits is stored as `#` and a
//! keyed hash ([`NikKey::request_key`]), never in clear, because it could hold a NIK. Servers
//! before this change counted only spaces, dots, dashes and slashes as what may separate a NIK's
//! digits, so an id such as `q_3275_0141_0190_0001` (a client that joins its parts with
//! underscores), or one typed with no-break spaces, was stored in clear. The upgrade hashes those
//! keys as the server now looks them up, so a retry after the upgrade still finds its answer, and
//! (SQLite) overwrites the replaced bytes. A key from before request ids were scoped to their
//! caller (the id alone) cannot be hashed the way it is now looked up (its caller is not known)
//! and is found by no lookup any more: it is deleted.
//!
//! The first start reads every stored key not yet hashed. Later starts read only the keys stored
//! since the last one, less [`RESCAN_OVERLAP_MS`]: with several PostgreSQL replicas upgraded one
//! after the other, the older ones still store such ids in clear meanwhile, and the last replica
//! to start on the new version hashes what they stored.

use sqlx::Row;

use crate::nik_key::{NikKey, SCOPE_SEPARATOR};
use crate::store::{DatabaseKind, Store, Tx};

/// The name in `data_upgrades` of the hashing of request ids stored in clear.
pub const REHASH_NIK_SHAPED_REQUEST_IDS: &str = "rehash-nik-shaped-request-ids";

/// Most stored keys one transaction of an upgrade reads and changes: short transactions, as the
/// retention purge's.
pub const UPGRADE_CHUNK: i64 = 500;

/// How far before the last run a later start reads stored keys again: replicas' clocks differ,
/// and a key is stamped by the clock of the replica that stored it.
pub const RESCAN_OVERLAP_MS: i64 = 3_600_000;

/// What the request-id upgrade changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rehashed {
    /// Stored keys read (keys not yet hashed that hold an underscore or a character outside
    /// ASCII, stored since the time the pass started from).
    pub read: u64,
    /// Keys replaced by their hashed form.
    pub hashed: u64,
    /// Keys deleted: unscoped ones, or ones whose hashed form was already stored (by a replica
    /// that had the change first).
    pub deleted: u64,
}

/// Runs the upgrades; `now_ms` stamps them.
pub async fn run(store: &Store, key: &NikKey, now_ms: i64) -> anyhow::Result<()> {
    let since = match last_run_ms(store, REHASH_NIK_SHAPED_REQUEST_IDS).await? {
        Some(ms) => ms.saturating_sub(RESCAN_OVERLAP_MS),
        None => i64::MIN,
    };
    let rehashed = rehash_nik_shaped_request_ids(store, key, since).await?;
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
        "INSERT INTO data_upgrades (name, done_ms) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET done_ms = excluded.done_ms",
    )
    .bind(REHASH_NIK_SHAPED_REQUEST_IDS)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    store.sync().await?;
    Ok(())
}

/// When the upgrade `name` last ran, if ever.
async fn last_run_ms(store: &Store, name: &str) -> anyhow::Result<Option<i64>> {
    let mut tx = store.begin_read().await?;
    let row = sqlx::query("SELECT done_ms FROM data_upgrades WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<i64, _>("done_ms")?),
        None => None,
    })
}

/// Hashes every stored request key created at or after `since_ms` whose caller's id now counts
/// as one that could hold a NIK, in transactions of at most [`UPGRADE_CHUNK`] keys, along
/// `idempotency_by_created`. Another replica doing the same at once is harmless: a key is copied
/// under its hashed form unless that is stored already, then deleted, so each key ends hashed
/// once whoever gets there first.
pub async fn rehash_nik_shaped_request_ids(
    store: &Store,
    key: &NikKey,
    since_ms: i64,
) -> anyhow::Result<Rehashed> {
    let mut rehashed = Rehashed::default();
    let sqlite = store.kind() == DatabaseKind::Sqlite;
    // The last key read: (created_ms, request_id), in the order of the reads.
    let mut after = (since_ms, String::new());
    loop {
        let mut tx = store.begin().await?;
        // Only a key holding an underscore or a character outside ASCII can need it: the older
        // rule counted spaces, dots, dashes and slashes already, and request ids may hold no
        // other ASCII whitespace (control characters are refused). SQL skips the rest, so a
        // start reads few keys however many are stored.
        let rows = sqlx::query(
            "SELECT request_id, created_ms FROM idempotency \
             WHERE (created_ms > $1 OR (created_ms = $1 AND request_id > $2)) AND request_id NOT LIKE '#%' \
             AND (request_id LIKE '%\\_%' ESCAPE '\\' OR length(request_id) <> octet_length(request_id)) \
             ORDER BY created_ms, request_id LIMIT $3",
        )
        .bind(after.0)
        .bind(&after.1)
        .bind(UPGRADE_CHUNK)
        .fetch_all(&mut *tx)
        .await?;
        let keys = rows
            .iter()
            .map(|row| {
                Ok::<_, sqlx::Error>((
                    row.try_get::<i64, _>("created_ms")?,
                    row.try_get::<String, _>("request_id")?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = keys.last() else {
            tx.commit().await?;
            break;
        };
        after = last.clone();
        rehashed.read += keys.len() as u64;
        // SQLite keeps a deleted key's bytes in the page's free space (and a free page's) until
        // they are reused: with `secure_delete` it overwrites them with zeros, so the id in clear
        // leaves the file. On this transaction's connection only, and switched off again
        // whatever happens: on the Reserve path it would zero every folded journal row too.
        if sqlite {
            sqlx::query("PRAGMA secure_delete = ON")
                .execute(&mut *tx)
                .await?;
        }
        let changed = rehash_keys(&mut tx, key, &keys).await;
        let off = if sqlite {
            sqlx::query("PRAGMA secure_delete = OFF")
                .execute(&mut *tx)
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        let (hashed, deleted) = changed?;
        off?;
        tx.commit().await?;
        rehashed.hashed += hashed;
        rehashed.deleted += deleted;
        if (keys.len() as i64) < UPGRADE_CHUNK {
            break;
        }
    }
    if rehashed.hashed + rehashed.deleted > 0 {
        store.sync().await?;
    }
    Ok(rehashed)
}

/// Hashes those of `keys` (stored request keys, with their times) whose id could hold a NIK:
/// (hashed, deleted).
async fn rehash_keys(
    tx: &mut Tx,
    key: &NikKey,
    keys: &[(i64, String)],
) -> Result<(u64, u64), sqlx::Error> {
    let (mut hashed, mut deleted) = (0, 0);
    for (_, stored) in keys {
        let (scope, id) = match stored.split_once(SCOPE_SEPARATOR) {
            Some((principal, id)) => (Some(principal), id),
            None => (None, stored.as_str()),
        };
        if !crate::domain::nik::has_nik_stretch_any_separator(id) {
            continue;
        }
        if let Some(principal) = scope {
            hashed += sqlx::query(
                "INSERT INTO idempotency (request_id, method, fingerprint, response, created_ms) \
                 SELECT $1, method, fingerprint, response, created_ms FROM idempotency WHERE request_id = $2 \
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(key.request_key(principal, id))
            .bind(stored)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        }
        deleted += sqlx::query("DELETE FROM idempotency WHERE request_id = $1")
            .bind(stored)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    // Each key hashed was also deleted in its clear form: count it once.
    Ok((hashed, deleted - hashed.min(deleted)))
}
