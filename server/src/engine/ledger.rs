//! The append-only stock ledger: one hash chain per office, so offices never serialize on one
//! chain. An entry's hash covers the previous entry's hash and every field of the entry, each
//! length-prefixed so no two different entries encode alike.

use blangko_proto::v1::{LedgerEntry, LedgerEntryKind};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::store::rows::{OfficeRow, ValueRef};

/// The previous hash of an office's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a new entry records; the chain fields are filled in by [`append`].
#[derive(Debug, Default, Clone)]
pub struct NewEntry {
    /// What happened.
    pub kind: i32,
    /// Change of on_hand.
    pub on_hand_delta: i64,
    /// Change of held.
    pub held_delta: i64,
    /// Service point concerned.
    pub service_point_id: String,
    /// Reservation concerned.
    pub reservation_id: String,
    /// Delivery, transfer or destruction-report reference.
    pub reference: String,
    /// The other office of a transfer.
    pub counterpart_office_id: String,
    /// Free text.
    pub note: String,
    /// The NIK concerned, masked.
    pub masked_nik: String,
}

impl NewEntry {
    /// An entry of `kind`.
    pub fn of(kind: LedgerEntryKind) -> Self {
        NewEntry {
            kind: kind as i32,
            ..NewEntry::default()
        }
    }
}

/// Appends an entry to `office`'s chain: applies the deltas to the in-memory office row (the
/// caller writes it back once with `rows::update_office_stock`), inserts the entry, and returns it.
pub async fn append(
    conn: &mut AnyConnection,
    office: &mut OfficeRow,
    entry: NewEntry,
    principal: &str,
    now_ms: i64,
    local_date: &str,
) -> Result<LedgerEntry, crate::engine::EngineError> {
    let stored = chain(office, entry, principal, now_ms, local_date)?;
    insert_entries(conn, std::slice::from_ref(&stored)).await?;
    Ok(stored.entry)
}

/// Chains an entry onto `office` in memory only (deltas applied, sequence and hashes set); the
/// caller inserts it with [`insert_entries`], in the same transaction.
pub fn chain(
    office: &mut OfficeRow,
    entry: NewEntry,
    principal: &str,
    now_ms: i64,
    local_date: &str,
) -> Result<StoredEntry, crate::engine::EngineError> {
    let on_hand = office.on_hand + entry.on_hand_delta;
    let held = office.held + entry.held_delta;
    if on_hand < 0 || held < 0 || held > on_hand {
        return Err(crate::engine::EngineError::Internal(format!(
            "stock invariant broken at office {}: on_hand {} held {}",
            office.office_id, on_hand, held
        )));
    }
    office.on_hand = on_hand;
    office.held = held;
    office.ledger_seq += 1;
    let mut e = LedgerEntry {
        office_id: office.office_id.clone(),
        sequence: office.ledger_seq as u64,
        kind: entry.kind,
        recorded_at: Some(crate::engine::timestamp(now_ms)),
        principal: principal.to_string(),
        on_hand_delta: entry.on_hand_delta,
        held_delta: entry.held_delta,
        on_hand_after: office.on_hand as u64,
        held_after: office.held as u64,
        service_point_id: entry.service_point_id,
        reservation_id: entry.reservation_id,
        reference: entry.reference,
        counterpart_office_id: entry.counterpart_office_id,
        note: entry.note,
        masked_nik: entry.masked_nik,
        previous_hash: office.ledger_head.clone(),
        hash: String::new(),
        local_date: local_date.to_string(),
    };
    e.hash = entry_hash(&e, now_ms);
    office.ledger_head = e.hash.clone();
    Ok(StoredEntry {
        entry: e,
        recorded_ms: now_ms,
    })
}

pub const LEDGER_COLUMNS: [&str; 18] = [
    "office_id",
    "seq",
    "kind",
    "recorded_ms",
    "local_date",
    "principal",
    "on_hand_delta",
    "held_delta",
    "on_hand_after",
    "held_after",
    "service_point_id",
    "reservation_id",
    "reference",
    "counterpart_office_id",
    "note",
    "masked_nik",
    "previous_hash",
    "hash",
];

/// Inserts chained entries (multi-row statements).
pub async fn insert_entries(
    conn: &mut AnyConnection,
    entries: &[StoredEntry],
) -> Result<(), sqlx::Error> {
    crate::store::rows::insert_many(conn, "ledger", &LEDGER_COLUMNS, entry_rows(entries)).await
}

/// The `ledger` rows of entries, in [`LEDGER_COLUMNS`] order.
pub fn entry_rows(entries: &[StoredEntry]) -> Vec<Vec<crate::store::rows::Value>> {
    entries
        .iter()
        .map(|s| Vec::from(entry_refs(s).map(ValueRef::to_value)))
        .collect()
}

/// A stored entry's values, borrowed, in [`LEDGER_COLUMNS`] order.
pub fn entry_refs(s: &StoredEntry) -> [ValueRef<'_>; 18] {
    use ValueRef::{Int, Text};
    let e = &s.entry;
    [
        Text(&e.office_id),
        Int(e.sequence as i64),
        Int(i64::from(e.kind)),
        Int(s.recorded_ms),
        Text(&e.local_date),
        Text(&e.principal),
        Int(e.on_hand_delta),
        Int(e.held_delta),
        Int(e.on_hand_after as i64),
        Int(e.held_after as i64),
        Text(&e.service_point_id),
        Text(&e.reservation_id),
        Text(&e.reference),
        Text(&e.counterpart_office_id),
        Text(&e.note),
        Text(&e.masked_nik),
        Text(&e.previous_hash),
        Text(&e.hash),
    ]
}

/// The hash of an entry: SHA-256 over its previous hash and all its fields, as
/// `LedgerEntry.hash` documents it for anyone who recomputes the chain.
pub fn entry_hash(e: &LedgerEntry, recorded_ms: i64) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(e.previous_hash.as_bytes());
    field(e.office_id.as_bytes());
    field(&e.sequence.to_be_bytes());
    field(&e.kind.to_be_bytes());
    field(&recorded_ms.to_be_bytes());
    field(e.local_date.as_bytes());
    field(e.principal.as_bytes());
    field(&e.on_hand_delta.to_be_bytes());
    field(&e.held_delta.to_be_bytes());
    field(&e.on_hand_after.to_be_bytes());
    field(&e.held_after.to_be_bytes());
    field(e.service_point_id.as_bytes());
    field(e.reservation_id.as_bytes());
    field(e.reference.as_bytes());
    field(e.counterpart_office_id.as_bytes());
    field(e.note.as_bytes());
    field(e.masked_nik.as_bytes());
    crate::lower_hex(&h.finalize())
}

/// A stored ledger row: the wire entry and the exact time the hash covers (the wire's
/// `recorded_at` carries the same milliseconds).
pub struct StoredEntry {
    /// The entry as the API shows it.
    pub entry: LedgerEntry,
    /// Unix ms it was recorded.
    pub recorded_ms: i64,
}

/// Sets `local_date` on an entry of a stored answer made before entries carried it (a replay
/// of an older RecordShipment, TransferStock or AdjustStock), from its ledger row, so that its
/// hash can be recomputed from the answer as from any listed entry.
pub async fn fill_local_date(
    conn: &mut AnyConnection,
    entry: Option<&mut LedgerEntry>,
) -> Result<(), sqlx::Error> {
    let Some(e) = entry.filter(|e| e.local_date.is_empty() && e.sequence > 0) else {
        return Ok(());
    };
    let stored: Option<String> =
        sqlx::query_scalar("SELECT local_date FROM ledger WHERE office_id = $1 AND seq = $2")
            .bind(&e.office_id)
            .bind(e.sequence as i64)
            .fetch_optional(conn)
            .await?;
    if let Some(date) = stored {
        e.local_date = date;
    }
    Ok(())
}

/// Reads entries of an office with `after_seq < seq <= until_seq` (of `kind`, or every kind
/// for 0), at most `limit`, in chain order.
pub async fn entries_after(
    conn: &mut AnyConnection,
    office_id: &str,
    kind: i32,
    after_seq: i64,
    until_seq: i64,
    limit: i64,
) -> Result<Vec<StoredEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT office_id, seq, kind, recorded_ms, local_date, principal, on_hand_delta, held_delta, on_hand_after, held_after, service_point_id, reservation_id, reference, counterpart_office_id, note, masked_nik, previous_hash, hash
         FROM ledger WHERE office_id = $1 AND seq > $2 AND seq <= $3 AND ($4 = 0 OR kind = $4)
         ORDER BY seq LIMIT $5",
    )
    .bind(office_id)
    .bind(after_seq)
    .bind(until_seq)
    .bind(i64::from(kind))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let recorded_ms: i64 = r.try_get("recorded_ms")?;
            Ok(StoredEntry {
                entry: LedgerEntry {
                    office_id: r.try_get("office_id")?,
                    sequence: r.try_get::<i64, _>("seq")? as u64,
                    kind: r.try_get::<i64, _>("kind")? as i32,
                    recorded_at: Some(crate::engine::timestamp(recorded_ms)),
                    principal: r.try_get("principal")?,
                    on_hand_delta: r.try_get("on_hand_delta")?,
                    held_delta: r.try_get("held_delta")?,
                    on_hand_after: r.try_get::<i64, _>("on_hand_after")? as u64,
                    held_after: r.try_get::<i64, _>("held_after")? as u64,
                    service_point_id: r.try_get("service_point_id")?,
                    reservation_id: r.try_get("reservation_id")?,
                    reference: r.try_get("reference")?,
                    counterpart_office_id: r.try_get("counterpart_office_id")?,
                    note: r.try_get("note")?,
                    masked_nik: r.try_get("masked_nik")?,
                    previous_hash: r.try_get("previous_hash")?,
                    hash: r.try_get("hash")?,
                    local_date: r.try_get("local_date")?,
                },
                recorded_ms,
            })
        })
        .collect()
}

/// The office's blanks on hand right after ledger entry `seq` (0: before the first entry).
pub async fn on_hand_after(
    conn: &mut AnyConnection,
    office_id: &str,
    seq: i64,
) -> Result<i64, crate::engine::EngineError> {
    if seq == 0 {
        return Ok(0);
    }
    sqlx::query_scalar::<_, i64>(
        "SELECT on_hand_after FROM ledger WHERE office_id = $1 AND seq = $2",
    )
    .bind(office_id)
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        crate::engine::EngineError::Internal(format!(
            "ledger entry {seq} of office {office_id} is missing"
        ))
    })
}

/// What followed entry `seq` of `office_id`, for a stock-take counted as of it: when the next
/// entry was recorded, and the first stock-take after it (each None when there is none). Two
/// lookups along the primary key.
pub async fn after_entry(
    conn: &mut AnyConnection,
    office_id: &str,
    seq: i64,
) -> Result<(Option<i64>, Option<i64>), sqlx::Error> {
    sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
        "SELECT
           (SELECT recorded_ms FROM ledger WHERE office_id = $1 AND seq > $2 ORDER BY seq LIMIT 1),
           (SELECT seq FROM ledger WHERE office_id = $1 AND seq > $2 AND kind = $3 ORDER BY seq LIMIT 1)",
    )
    .bind(office_id)
    .bind(seq)
    .bind(LedgerEntryKind::StockTake as i32 as i64)
    .fetch_one(&mut *conn)
    .await
}

/// Blanks used (printed plus spoiled) per local date of an office since `from_date` (inclusive)
/// and before `until_date` (exclusive).
pub async fn daily_use(
    conn: &mut AnyConnection,
    office_id: &str,
    from_date: &str,
    until_date: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT local_date, CAST(COALESCE(SUM(-on_hand_delta), 0) AS BIGINT) AS used FROM ledger
         WHERE office_id = $1 AND local_date >= $2 AND local_date < $3 AND kind IN ($4, $5)
         GROUP BY local_date",
    )
    .bind(office_id)
    .bind(from_date)
    .bind(until_date)
    .bind(LedgerEntryKind::Commit as i32 as i64)
    .bind(LedgerEntryKind::Spoiled as i32 as i64)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("local_date")?, r.try_get("used")?)))
        .collect()
}
