//! The Reserve journal (SQLite): under a burst, a Reserve batch writes its new rows (ledger
//! entries, reservations, stored answers) as ONE journal row, in the same transaction as its
//! quota and stock updates, and the rows reach their tables later, when the burst pauses
//! ("folding"). Writing those rows into their tables costs about ten B-tree inserts per Reserve,
//! one of them on a random page of the NIK index; the journal row is one append per batch at the
//! end of its table (BENCHMARKS.md, "The Reserve journal").
//!
//! Why nothing is lost or decided twice:
//! - The journal row is committed, and made durable by the same group fsync, in the transaction
//!   that decides the batch: a crash leaves either the whole batch (quota, stock and journal row)
//!   or none of it. Opening the store folds whatever a crash left ([`super::Store::open`]).
//! - Quota rows and the office row (stock, ledger head) are written at once, as before: every
//!   count a decision reads is always current.
//! - What the journal holds but the tables do not yet show: a reservation per NIK, a stored answer
//!   per request id, a ledger entry. The journal keeps in memory a fingerprint of every such NIK
//!   hash and request id, and the earliest expiry of its holds. A Reserve batch that meets a
//!   fingerprint, a due hold, or a cap per reason (which counts reservations) folds the journal
//!   first, in its own transaction, and then reads the tables as usual. Every other transaction,
//!   and every read of those tables, folds it first too ([`super::Store::begin`],
//!   [`super::Store::reader`]): only Reserve batches ever see an unfolded journal. A read that
//!   compares those tables with the counts kept in place (a ledger verification, a stock report)
//!   takes its snapshot with the write gate still held after the fold
//!   ([`super::Store::begin_read`]).
//! - A fingerprint is 64 bits of FNV-1a: a collision only folds the journal once more.
//! - The in-memory state changes only after the transaction that changed the journal table has
//!   committed, while the write gate is still held, so no transaction ever sees one without the
//!   other.
//!
//! Migrations: a journal row names the columns of its rows, so a migration that adds a column with
//! a default to `ledger`, `reservations` or `idempotency` folds as before; one that renames or
//! drops such a column must fold the journal first (migrations run before the start folds it).
//!
//! Bounds: at most [`Limits::max_reservations`] Reserves' rows wait in the journal (a Reserve
//! referred to IKD counts as one too: a burst against a day's used-up quota makes rows of stored
//! answers and no reservation); at the bound a burst's batch first folds the oldest rows, about
//! as many as it adds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;

use super::direct::{Prepared, execute, query};
use super::rows::{Value, ValueRef};

/// A batch of at least this many Reserves is journaled: a Reserve decided alone is no burst, and
/// its rows go straight into their tables, as they always did (unless the journal holds rows:
/// a write never overtakes journaled ones).
pub const JOURNAL_FROM_BATCH: usize = 2;
/// Default for the most reservations waiting in the journal (`--reserve-journal-max`). At about
/// 1 KB a reservation in the journal table and 32 bytes of fingerprints in memory, that is about
/// 128 MB of file and 8 MiB of memory; folding it all in one transaction takes about 2 s of one
/// core (1.8 s for 113,000 in BENCHMARKS.md), the longest a read made right after such a burst
/// waits.
pub const DEFAULT_MAX_PENDING_RESERVATIONS: u64 = 131_072;
/// Default for how long an office's Reserves pause before its worker folds a chunk of the
/// journal (`--reserve-journal-pause-ms`): longer than any gap in a burst's closed loop of calls.
pub const DEFAULT_FOLD_AFTER_PAUSE_MS: u64 = 20;

/// The journal's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most reservations waiting in the journal; 0 turns it off.
    pub max_reservations: u64,
    /// How long an office's Reserves pause before its worker folds a chunk.
    pub fold_after_pause: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_reservations: DEFAULT_MAX_PENDING_RESERVATIONS,
            fold_after_pause: std::time::Duration::from_millis(DEFAULT_FOLD_AFTER_PAUSE_MS),
        }
    }
}

/// Most reservations folded in one transaction by the folds that let Reserves go between them
/// (after a pause, and past the bound): about 10-20 ms of the write gate.
pub const FOLD_CHUNK: u64 = 512;

/// Reservations per transaction when a read or a write folds the journal during a burst
/// (`store::fold_most`), and the most a Reserve batch folds in its own transaction (a longer
/// fold is done first, a chunk at a time): about 3-5 ms of the write gate each. A counter listing
/// its holds every second of a load-test burst: Reserve p99.9 28-45 ms with 256, 24-27 ms with
/// 128 (but the listing took 1.2-2.2 s instead of 1.1-1.7 s), 52-65 ms with 512
/// (BENCHMARKS.md).
pub const FOLD_BESIDE_RESERVES: u64 = 256;

/// The tables a journal row may carry rows for (a row naming any other is refused when folded).
const TABLES: [&str; 3] = ["ledger", "reservations", "idempotency"];
/// The first byte of every journal row: the format's version. Rows of format 1 (fixed-width
/// lengths and integers, hashes as hex text), which an older server may have left, are still
/// read.
const FORMAT: u8 = 2;
/// The first format: every length a u32 and every integer an i64, little-endian.
const FORMAT_FIXED: u8 = 1;

/// Value tags.
const TAG_INT: u8 = 0;
const TAG_TEXT: u8 = 1;
const TAG_BYTES: u8 = 2;
/// Format 2: a text of 64 lowercase hexadecimal digits (a SHA-256 or HMAC: the ledger's hashes,
/// a NIK's keyed hash, a request's fingerprint), kept as its 32 bytes.
const TAG_HEX_256: u8 = 3;

/// Rows for one table, with the columns they fill, in order: borrowed from the batch that
/// makes them, since they are only encoded.
pub struct Section<'a> {
    /// One of [`TABLES`].
    pub table: &'static str,
    /// The columns, in the order of each row's values.
    pub columns: &'static [&'static str],
    /// The rows, each as many values as `columns`.
    pub rows: Vec<Vec<ValueRef<'a>>>,
}

/// One batch's rows, and what the journal must remember of them until they are folded.
pub struct Entry<'a> {
    /// The rows, table by table, in the order they are inserted when folded.
    pub sections: Vec<Section<'a>>,
    /// The request ids whose answers the entry stores.
    pub request_ids: Vec<&'a str>,
    /// The NIK hashes of the reservations it makes.
    pub nik_hashes: Vec<&'a str>,
    /// The earliest expiry of its holds (i64::MAX: none).
    pub min_expires_ms: i64,
    /// Its weight against the bound: the Reserves it answers, referrals included (at least the
    /// reservations it makes). Stored in the journal table's `reservations` column.
    pub reservations: u64,
}

/// What a transaction did to the journal table, for [`Journal::committed`] once it has committed.
#[derive(Default)]
pub struct Change {
    appended: Option<Appended>,
    /// Reservations, and journal rows, folded.
    folded: u64,
    folded_rows: u64,
    /// The last journal row folded (rows are folded oldest first).
    folded_through: Option<i64>,
    emptied: bool,
}

struct Appended {
    keys: RowKeys,
    reservations: u64,
}

/// What the journal remembers of a row it appends until the row is folded.
struct RowKeys {
    /// The row's `seq`.
    seq: i64,
    /// Fingerprints of its request ids and NIK hashes.
    fingerprints: Vec<u64>,
    /// The earliest expiry of its holds (i64::MAX: none; i64::MIN: not known, so every Reserve
    /// batch folds first).
    min_expires_ms: i64,
}

impl Change {
    /// Whether the transaction folded the whole journal.
    pub fn emptied(&self) -> bool {
        self.emptied
    }

    /// Reservations the transaction folded.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

#[derive(Default)]
struct State {
    /// Fingerprints of the NIK hashes and request ids in the journal: a fingerprint leaves when
    /// the last row that holds it is folded. (Kept until the journal was empty, they grew by two
    /// a Reserve for as long as a burst past the journal's bound lasted: its batches fold the
    /// oldest rows as they append, so the journal is never empty.)
    /// Hashed with foldhash, seeded per set, rather than SipHash: a request id is the caller's
    /// own text, and a seed the caller cannot know still keeps crafted ids from piling into one
    /// bucket; SipHash of every fingerprint (and again at each growth of a set of a burst's
    /// 200,000) was about 1% of a Reserve's server CPU under `perf`.
    fingerprints: HashSet<u64, foldhash::fast::RandomState>,
    /// The fingerprints held by more than one row, with how many rows beyond the first (a
    /// second row with the same key is rare: the first makes its batch fold it).
    more: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// Every row's fingerprints, oldest row first, one after another (one queue rather than a
    /// list per row: a burst's rows would be thousands of small allocations).
    held: VecDeque<u64>,
    /// The rows in the journal, oldest first: (seq, how many of `held` are its fingerprints).
    rows: VecDeque<(i64, usize)>,
    /// The earliest expiry of a hold in the journal's rows, as the rows that may still hold it:
    /// (seq, earliest expiry) with expiries rising, front first. A row whose earliest expiry is
    /// no earlier than a later row's can never be the earliest again and is not kept. The front
    /// is the earliest; folding the oldest rows takes from the front, so no fold looks at every
    /// row (a burst past the journal's bound folds the oldest row with every batch).
    earliest: VecDeque<(i64, i64)>,
}

impl State {
    /// Forgets the rows up to `seq` (folded), and their fingerprints.
    fn folded_through(&mut self, seq: i64) {
        while let Some(&(row, _)) = self.earliest.front()
            && row <= seq
        {
            self.earliest.pop_front();
        }
        while let Some(&(row, count)) = self.rows.front()
            && row <= seq
        {
            self.rows.pop_front();
            for _ in 0..count {
                let Some(fingerprint) = self.held.pop_front() else {
                    break;
                };
                match self.more.get_mut(&fingerprint) {
                    Some(more) if *more > 1 => *more -= 1,
                    Some(_) => {
                        self.more.remove(&fingerprint);
                    }
                    None => {
                        self.fingerprints.remove(&fingerprint);
                    }
                }
            }
        }
    }

    /// The earliest expiry of a hold in the journal (i64::MAX: none).
    fn min_expires_ms(&self) -> i64 {
        self.earliest
            .front()
            .map_or(i64::MAX, |&(_, expires)| expires)
    }

    /// Remembers a row just appended.
    fn appended(&mut self, keys: RowKeys) {
        for &fingerprint in &keys.fingerprints {
            if !self.fingerprints.insert(fingerprint) {
                *self.more.entry(fingerprint).or_insert(0) += 1;
            }
        }
        if keys.min_expires_ms != i64::MAX {
            while let Some(&(_, expires)) = self.earliest.back()
                && expires >= keys.min_expires_ms
            {
                self.earliest.pop_back();
            }
            self.earliest.push_back((keys.seq, keys.min_expires_ms));
        }
        self.rows.push_back((keys.seq, keys.fingerprints.len()));
        self.held.extend(keys.fingerprints);
    }

    /// Forgets everything: the journal is empty.
    fn emptied(&mut self) {
        self.fingerprints.clear();
        self.fingerprints.shrink_to(1024);
        self.more.clear();
        self.more.shrink_to(16);
        self.held.clear();
        self.held.shrink_to(1024);
        self.rows.clear();
        self.rows.shrink_to(256);
        self.earliest.clear();
        self.earliest.shrink_to(256);
    }
}

/// The journal's state in memory (see the module comment).
pub struct Journal {
    limits: Limits,
    state: Mutex<State>,
    /// Reservations in the journal table now (for its bound and the metrics).
    pending: AtomicU64,
    /// Rows in the journal table now: whether there is anything to fold at all (a batch whose
    /// Reserves were all referred to IKD makes a row of stored answers and no reservation).
    rows: AtomicU64,
    /// Batches journaled, and reservations folded, since the start (metrics and tests).
    journaled_batches: AtomicU64,
    folded: AtomicU64,
}

impl Journal {
    /// An empty journal with these bounds.
    pub fn new(limits: Limits) -> Self {
        Journal {
            limits,
            state: Mutex::new(State {
                fingerprints: HashSet::default(),
                more: HashMap::default(),
                held: VecDeque::new(),
                rows: VecDeque::new(),
                earliest: VecDeque::new(),
            }),
            pending: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            journaled_batches: AtomicU64::new(0),
            folded: AtomicU64::new(0),
        }
    }
}

/// The fingerprint of a NIK hash or request id (kinds apart, so the two never meet): 64-bit
/// FNV-1a over the kind and the key. A NIK hash is already a keyed hash, and a request id is the
/// caller's own: a collision (made on purpose or not) only folds the journal once more.
fn fingerprint(kind: u8, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = (OFFSET ^ u64::from(kind)).wrapping_mul(PRIME);
    for &byte in key.as_bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    }
    hash
}

const NIK: u8 = 1;
const REQUEST: u8 = 2;

impl Journal {
    /// Its bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether `reservations` more fit in the journal beside `pending` (never when it is off).
    pub fn has_room(&self, pending: u64, reservations: u64) -> bool {
        self.limits.max_reservations > 0 && pending + reservations <= self.limits.max_reservations
    }

    /// Reservations waiting in the journal now.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    /// What folding the whole journal now would take, in reservations' worth (a row without
    /// reservations counts as one), as the folds with a `limit` count it.
    pub fn weight(&self) -> u64 {
        self.pending().max(self.rows.load(Ordering::SeqCst))
    }

    /// Whether the journal table holds no row: nothing to fold.
    pub fn is_empty(&self) -> bool {
        self.rows.load(Ordering::SeqCst) == 0
    }

    /// Batches journaled since the start.
    pub fn journaled_batches(&self) -> u64 {
        self.journaled_batches.load(Ordering::SeqCst)
    }

    /// Reservations folded into their tables since the start.
    pub fn folded(&self) -> u64 {
        self.folded.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only whole updates happen under this lock: a poisoned state is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a Reserve batch must fold the journal before it reads: one of its request ids or
    /// NIK hashes may be in it, or one of its holds may be due at `now_ms`.
    pub fn must_fold_for<'a>(
        &self,
        request_ids: impl IntoIterator<Item = &'a str>,
        nik_hashes: impl IntoIterator<Item = &'a str>,
        now_ms: i64,
    ) -> bool {
        if self.is_empty() {
            return false;
        }
        let state = self.state();
        state.min_expires_ms() <= now_ms
            || request_ids
                .into_iter()
                .any(|id| state.fingerprints.contains(&fingerprint(REQUEST, id)))
            || nik_hashes
                .into_iter()
                .any(|h| state.fingerprints.contains(&fingerprint(NIK, h)))
    }

    /// Whether a hold in the journal may be due at `now_ms` (the sweeper folds only then).
    pub fn may_hold_due(&self, now_ms: i64) -> bool {
        !self.is_empty() && self.state().min_expires_ms() <= now_ms
    }

    /// Appends `entry` as one journal row, in the caller's transaction.
    pub fn append(
        &self,
        conn: &Connection,
        entry: Entry<'_>,
        change: &mut Change,
    ) -> rusqlite::Result<()> {
        let body = encode(&entry.sections);
        execute(
            conn,
            "INSERT INTO reserve_journal (body, reservations) VALUES (?1, ?2)",
            &[
                Value::Bytes(body),
                Value::Int(i64::try_from(entry.reservations).unwrap_or(i64::MAX)),
            ],
        )?;
        let mut fingerprints: Vec<u64> = entry
            .request_ids
            .iter()
            .map(|id| fingerprint(REQUEST, id))
            .collect();
        fingerprints.extend(entry.nik_hashes.iter().map(|h| fingerprint(NIK, h)));
        change.appended = Some(Appended {
            keys: RowKeys {
                seq: conn.last_insert_rowid(),
                fingerprints,
                min_expires_ms: entry.min_expires_ms,
            },
            reservations: entry.reservations,
        });
        Ok(())
    }

    /// Folds journal rows into their tables, oldest first, in the caller's transaction: all of
    /// them (`limit` None) or about `limit` reservations' worth (whole rows, at least one; a row
    /// without reservations counts as one).
    pub fn fold(
        &self,
        conn: &Connection,
        limit: Option<u64>,
        change: &mut Change,
    ) -> rusqlite::Result<()> {
        let mut taken: u64 = 0;
        let mut weight: u64 = 0;
        let mut rows_taken: u64 = 0;
        let mut last_seq = None;
        // One row at a time (a row holds a whole batch), oldest first.
        let mut next = Prepared::new(
            conn,
            "SELECT seq, body, reservations FROM reserve_journal WHERE seq > ?1 ORDER BY seq LIMIT 1",
        )?;
        while limit.is_none_or(|limit| weight < limit) {
            let Some((seq, body, reservations)) =
                next.query_optional(&[Value::Int(last_seq.unwrap_or(0))], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
            else {
                break;
            };
            insert_rows(conn, &body).map_err(|err| in_row(seq, err))?;
            let reservations = u64::try_from(reservations).unwrap_or(0);
            taken += reservations;
            weight += reservations.max(1);
            rows_taken += 1;
            last_seq = Some(seq);
        }
        let Some(last_seq) = last_seq else {
            change.emptied = true;
            return Ok(());
        };
        execute(
            conn,
            "DELETE FROM reserve_journal WHERE seq <= ?1",
            &[Value::Int(last_seq)],
        )?;
        let left = query(conn, "SELECT 1 FROM reserve_journal LIMIT 1", &[], |_| {
            Ok(())
        })?;
        change.folded += taken;
        change.folded_rows += rows_taken;
        change.folded_through = Some(last_seq);
        change.emptied = left.is_empty();
        Ok(())
    }

    /// Applies what a committed transaction did to the journal table. Call it after COMMIT and
    /// before the write gate opens.
    pub fn committed(&self, change: Change) {
        if change.folded_rows > 0 || change.emptied {
            self.folded.fetch_add(change.folded, Ordering::SeqCst);
            for (count, by) in [
                (&self.pending, change.folded),
                (&self.rows, change.folded_rows),
            ] {
                let _ = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_sub(by))
                });
            }
            if change.emptied {
                self.state().emptied();
                self.pending.store(0, Ordering::SeqCst);
                self.rows.store(0, Ordering::SeqCst);
            } else if let Some(seq) = change.folded_through {
                self.state().folded_through(seq);
            }
        }
        if let Some(appended) = change.appended {
            self.state().appended(appended.keys);
            self.pending
                .fetch_add(appended.reservations, Ordering::SeqCst);
            self.rows.fetch_add(1, Ordering::SeqCst);
            self.journaled_batches.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// At open: the rows and reservations a journal table left by an earlier process holds.
    pub fn load(&self, conn: &Connection) -> rusqlite::Result<()> {
        let (rows, pending, last): (i64, i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(reservations), 0), COALESCE(MAX(seq), 0) FROM reserve_journal",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        self.pending
            .store(u64::try_from(pending).unwrap_or(0), Ordering::SeqCst);
        self.rows
            .store(u64::try_from(rows).unwrap_or(0), Ordering::SeqCst);
        // Nothing is known of its keys: every Reserve batch folds first, until its last row is
        // folded.
        if rows > 0 {
            self.state().appended(RowKeys {
                seq: last,
                fingerprints: Vec::new(),
                min_expires_ms: i64::MIN,
            });
        }
        Ok(())
    }
}

/// Inserts the rows of one journal row into their tables.
fn insert_rows(conn: &Connection, body: &[u8]) -> rusqlite::Result<()> {
    for (table, columns, rows) in decode(body).map_err(corrupt)? {
        if !TABLES.contains(&table.as_str())
            || columns
                .iter()
                .any(|c| c.is_empty() || !c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(corrupt(format!("a journal row names table {table:?}")));
        }
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            placeholders.join(", ")
        );
        let mut insert = Prepared::new(conn, &sql)?;
        for row in rows {
            if row.len() != columns.len() {
                return Err(corrupt(format!(
                    "a journal row for {table} has a short row"
                )));
            }
            insert.execute(&row)?;
        }
    }
    Ok(())
}

/// A fold's error, naming the journal row it could not fold (for whoever has to look at it).
fn in_row(seq: i64, err: rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(
        format!("cannot fold Reserve journal row {seq}: {err}").into(),
    )
}

fn corrupt(why: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("corrupt Reserve journal: {why}").into())
}

/// The journal row's bytes: the format byte, then per section its table, its columns and its
/// rows. Lengths and integers are LEB128 varints (integers zigzag-encoded), strings and byte
/// strings length-prefixed, and a 64-digit lowercase hex text its 32 bytes: a Reserve's three
/// rows took about 940 bytes in format 1, and fewer bytes are fewer WAL pages to write, fsync
/// and checkpoint in the batch's COMMIT (BENCHMARKS.md).
pub fn encode(sections: &[Section<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + sections
            .iter()
            .map(|s| 64 + s.rows.len() * 256)
            .sum::<usize>(),
    );
    out.push(FORMAT);
    put_varint(&mut out, sections.len() as u64);
    for section in sections {
        put_bytes(&mut out, section.table.as_bytes());
        put_varint(&mut out, section.columns.len() as u64);
        for column in section.columns {
            put_bytes(&mut out, column.as_bytes());
        }
        put_varint(&mut out, section.rows.len() as u64);
        for row in &section.rows {
            for value in row {
                match *value {
                    ValueRef::Int(v) => {
                        out.push(TAG_INT);
                        put_varint(&mut out, (v.wrapping_shl(1) ^ (v >> 63)) as u64);
                    }
                    ValueRef::Text(v) => match hex_256(v) {
                        Some(bytes) => {
                            out.push(TAG_HEX_256);
                            out.extend_from_slice(&bytes);
                        }
                        None => {
                            out.push(TAG_TEXT);
                            put_bytes(&mut out, v.as_bytes());
                        }
                    },
                    ValueRef::Bytes(v) => {
                        out.push(TAG_BYTES);
                        put_bytes(&mut out, v);
                    }
                }
            }
        }
    }
    out
}

/// The 32 bytes of a text of exactly 64 lowercase hexadecimal digits (anything else: None, and
/// it is kept as text, so every text decodes to exactly itself).
fn hex_256(text: &str) -> Option<[u8; 32]> {
    // `hex` reads upper case too, which would come back lower case: lower case only. One pass,
    // a table look-up per digit (checking the digits first and then decoding them with `hex` was
    // about two thirds of `encode`'s time under `perf`).
    let digits: &[u8; 64] = text.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = HEX_VALUE[usize::from(pair[0])];
        let low = HEX_VALUE[usize::from(pair[1])];
        if (high | low) > 0x0f {
            return None;
        }
        *byte = (high << 4) | low;
    }
    Some(out)
}

/// The value of each lower-case hex digit; 0xff for every other byte.
static HEX_VALUE: [u8; 256] = {
    let mut values = [0xffu8; 256];
    let mut digit = 0;
    while digit < 10 {
        values[b'0' as usize + digit] = digit as u8;
        digit += 1;
    }
    let mut letter = 0;
    while letter < 6 {
        values[b'a' as usize + letter] = 10 + letter as u8;
        letter += 1;
    }
    values
};

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A decoded section: table, columns, rows.
type Decoded = (String, Vec<String>, Vec<Vec<Value>>);

/// The sections of a journal row (format 2, or 1 from an older server); an error names what is
/// wrong (never a panic on bad bytes).
pub fn decode(body: &[u8]) -> Result<Vec<Decoded>, String> {
    let mut input = Reader {
        rest: body,
        fixed: false,
    };
    match input.byte()? {
        FORMAT => {}
        FORMAT_FIXED => input.fixed = true,
        _ => return Err("unknown format".into()),
    }
    let sections = input.len()?;
    let mut out = Vec::new();
    for _ in 0..sections {
        let table = input.text()?;
        let width = input.len()?;
        let columns = (0..width)
            .map(|_| input.text())
            .collect::<Result<Vec<_>, _>>()?;
        let count = input.len()?;
        let mut rows = Vec::new();
        for _ in 0..count {
            let mut row = Vec::with_capacity(width);
            for _ in 0..width {
                row.push(match input.byte()? {
                    TAG_INT => Value::Int(input.int()?),
                    TAG_TEXT => Value::Text(input.text()?),
                    TAG_BYTES => Value::Bytes(input.bytes()?.to_vec()),
                    TAG_HEX_256 if !input.fixed => Value::Text(crate::lower_hex(input.take(32)?)),
                    other => return Err(format!("unknown value tag {other}")),
                });
            }
            rows.push(row);
        }
        out.push((table, columns, rows));
    }
    if !input.rest.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(out)
}

struct Reader<'a> {
    rest: &'a [u8],
    /// Format 1: fixed-width lengths and integers.
    fixed: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn len(&mut self) -> Result<usize, String> {
        if self.fixed {
            let bytes: [u8; 4] = self.take(4)?.try_into().map_err(|_| "short length")?;
            return Ok(u32::from_le_bytes(bytes) as usize);
        }
        usize::try_from(self.varint()?).map_err(|_| "length too large".into())
    }

    fn int(&mut self) -> Result<i64, String> {
        if self.fixed {
            let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| "short integer")?;
            return Ok(i64::from_le_bytes(bytes));
        }
        let zigzag = self.varint()?;
        Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }

    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "text is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory database with the journal table and `tables` (SQL).
    fn database(tables: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE reserve_journal (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, reservations BIGINT NOT NULL);",
        )
        .unwrap();
        conn.execute_batch(tables).unwrap();
        conn
    }

    /// Rows of `table`.
    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn sections() -> Vec<Section<'static>> {
        vec![
            Section {
                table: "ledger",
                columns: &["office_id", "seq"],
                rows: vec![
                    vec![ValueRef::Text("3275"), ValueRef::Int(-7)],
                    vec![ValueRef::Text(""), ValueRef::Int(i64::MAX)],
                ],
            },
            Section {
                table: "idempotency",
                columns: &["request_id", "response"],
                rows: vec![vec![ValueRef::Text("é-1"), ValueRef::Bytes(&[0, 255, 7])]],
            },
        ]
    }

    #[test]
    fn a_journal_row_decodes_to_what_was_encoded() {
        let decoded = decode(&encode(&sections())).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].0, "ledger");
        assert_eq!(decoded[0].1, vec!["office_id", "seq"]);
        assert!(matches!(&decoded[0].2[0][0], Value::Text(t) if t == "3275"));
        assert!(matches!(decoded[0].2[0][1], Value::Int(-7)));
        assert!(matches!(decoded[0].2[1][1], Value::Int(i64::MAX)));
        assert_eq!(decoded[1].0, "idempotency");
        assert!(matches!(&decoded[1].2[0][0], Value::Text(t) if t == "é-1"));
        assert!(matches!(&decoded[1].2[0][1], Value::Bytes(b) if b == &[0, 255, 7]));
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn integers_hashes_and_other_texts_come_back_exactly() {
        let upper = HASH.to_uppercase();
        let texts = [HASH, upper.as_str(), &HASH[1..], "", "é"];
        let ints = [0, 1, -1, 63, -64, 64, 300, -300, i64::MAX, i64::MIN];
        let mut row: Vec<ValueRef<'_>> = texts.iter().map(|t| ValueRef::Text(t)).collect();
        row.extend(ints.iter().map(|i| ValueRef::Int(*i)));
        let body = encode(&[Section {
            table: "ledger",
            columns: &["c"; 15],
            rows: vec![row],
        }]);
        let decoded = &decode(&body).unwrap()[0].2[0];
        assert_eq!(decoded.len(), 15);
        for (value, text) in decoded.iter().zip(texts) {
            assert!(
                matches!(value, Value::Text(t) if t == text),
                "{value:?} != {text}"
            );
        }
        for (value, int) in decoded[texts.len()..].iter().zip(ints) {
            assert!(
                matches!(value, Value::Int(i) if *i == int),
                "{value:?} != {int}"
            );
        }
    }

    #[test]
    fn only_64_lower_case_hex_digits_are_packed_and_they_decode_as_hex_does() {
        // Every ASCII character as the hash's first, second and last digit.
        for ch in (0u8..128).map(char::from) {
            for at in [0, 1, 63] {
                let mut text: Vec<char> = HASH.chars().collect();
                text[at] = ch;
                let text: String = text.into_iter().collect();
                let lower_hex = ch.is_ascii_digit() || ('a'..='f').contains(&ch);
                match hex_256(&text) {
                    Some(bytes) => {
                        assert!(lower_hex, "{ch:?} at {at} was packed");
                        assert_eq!(bytes.to_vec(), hex::decode(&text).unwrap());
                        assert_eq!(crate::lower_hex(&bytes), text);
                    }
                    None => assert!(!lower_hex, "{ch:?} at {at} was not packed"),
                }
            }
        }
        // 64 bytes that are not 64 characters, and 63 or 65 digits.
        assert_eq!(hex_256(&format!("é{}", &HASH[2..])), None);
        assert_eq!(hex_256(&HASH[1..]), None);
        assert_eq!(hex_256(&format!("{HASH}0")), None);
    }

    #[test]
    fn a_hash_takes_its_32_bytes_and_small_integers_one() {
        let size = |value: ValueRef<'_>| {
            let body = encode(&[Section {
                table: "ledger",
                columns: &["c"],
                rows: vec![vec![value]],
            }]);
            assert_eq!(decode(&body).unwrap()[0].2[0].len(), 1);
            body.len()
        };
        let empty = size(ValueRef::Text(""));
        // A tag and the bytes; the empty text is a tag and a length byte.
        assert_eq!(size(ValueRef::Text(HASH)), empty - 1 + 32);
        assert_eq!(size(ValueRef::Text(&HASH.to_uppercase())), empty + 64);
        assert_eq!(size(ValueRef::Int(-7)), empty);
        assert_eq!(size(ValueRef::Int(1_796_086_800_000)), empty + 5);
    }

    #[test]
    fn a_row_of_format_1_left_by_an_older_server_still_decodes() {
        // Format 1: u32 lengths, i64 integers (little-endian), no hash tag.
        let mut body = vec![1u8];
        let len = |out: &mut Vec<u8>, n: usize| out.extend_from_slice(&(n as u32).to_le_bytes());
        let text = |out: &mut Vec<u8>, t: &str| {
            len(out, t.len());
            out.extend_from_slice(t.as_bytes());
        };
        len(&mut body, 1);
        text(&mut body, "ledger");
        len(&mut body, 2);
        text(&mut body, "hash");
        text(&mut body, "seq");
        len(&mut body, 1);
        body.push(1);
        text(&mut body, HASH);
        body.push(0);
        body.extend_from_slice(&(-7i64).to_le_bytes());
        let decoded = decode(&body).unwrap();
        assert_eq!(decoded[0].0, "ledger");
        assert_eq!(decoded[0].1, vec!["hash", "seq"]);
        assert!(matches!(&decoded[0].2[0][0], Value::Text(t) if t == HASH));
        assert!(matches!(decoded[0].2[0][1], Value::Int(-7)));
        // The hash tag is format 2's only.
        let last = body.len() - 9 - 64 - 4 - 1;
        body[last] = 3;
        assert!(decode(&body).is_err());
    }

    #[test]
    fn damaged_journal_rows_are_refused_not_misread() {
        let body = encode(&sections());
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), "trailing bytes");
        let mut other = body;
        other[0] = 9;
        assert_eq!(decode(&other).unwrap_err(), "unknown format");
    }

    #[test]
    fn fingerprints_of_nik_hashes_and_request_ids_never_meet() {
        assert_ne!(fingerprint(NIK, "abc"), fingerprint(REQUEST, "abc"));
        assert_eq!(fingerprint(NIK, "abc"), fingerprint(NIK, "abc"));
    }

    #[test]
    fn a_journal_is_folded_into_its_tables_and_forgets_its_keys_once_empty() {
        let conn = database(
            "CREATE TABLE ledger (office_id TEXT, seq BIGINT);
             CREATE TABLE idempotency (request_id TEXT, response BLOB);",
        );
        let journal = Journal::new(Limits::default());
        for n in 0..3 {
            let (request_id, nik_hash) = (format!("r{n}"), format!("n{n}"));
            let mut change = Change::default();
            let entry = Entry {
                sections: sections(),
                request_ids: vec![&request_id],
                nik_hashes: vec![&nik_hash],
                min_expires_ms: 1_000 + n,
                reservations: 2,
            };
            journal.append(&conn, entry, &mut change).unwrap();
            journal.committed(change);
        }
        assert_eq!(journal.pending(), 6);
        assert!(journal.must_fold_for(["r1"], [], 0));
        assert!(journal.must_fold_for([], ["n2"], 0));
        assert!(!journal.must_fold_for(["n1"], ["r1"], 0), "kinds apart");
        assert!(journal.must_fold_for([], [], 1_000), "a hold due");
        assert!(!journal.may_hold_due(999));

        // A chunk of 3 takes whole rows: two of them.
        let mut change = Change::default();
        journal.fold(&conn, Some(3), &mut change).unwrap();
        assert!(!change.emptied());
        journal.committed(change);
        assert_eq!(journal.pending(), 2);
        let ledger = count(&conn, "ledger");
        assert_eq!(ledger, 4);

        let mut change = Change::default();
        journal.fold(&conn, None, &mut change).unwrap();
        assert!(change.emptied());
        journal.committed(change);
        assert_eq!(journal.pending(), 0);
        assert_eq!(journal.folded(), 6);
        assert!(!journal.must_fold_for(["r1"], ["n2"], i64::MAX));
        let answers = count(&conn, "idempotency");
        assert_eq!(answers, 3);
        let left = count(&conn, "reserve_journal");
        assert_eq!(left, 0);
    }

    #[test]
    fn a_row_without_reservations_is_still_folded() {
        // A burst whose Reserves were all referred to IKD: stored answers, no reservation.
        let conn = database("CREATE TABLE idempotency (request_id TEXT, response BLOB);");
        let journal = Journal::new(Limits::default());
        let mut change = Change::default();
        let entry = Entry {
            sections: vec![Section {
                table: "idempotency",
                columns: &["request_id", "response"],
                rows: vec![vec![ValueRef::Text("r1"), ValueRef::Bytes(&[1])]],
            }],
            request_ids: vec!["r1"],
            nik_hashes: vec![],
            min_expires_ms: i64::MAX,
            reservations: 0,
        };
        journal.append(&conn, entry, &mut change).unwrap();
        journal.committed(change);
        assert_eq!(journal.pending(), 0);
        assert!(!journal.is_empty(), "a row to fold");
        assert!(
            journal.must_fold_for(["r1"], [], 0),
            "its retry folds it first"
        );

        // A journal left by another process is known by its rows, too.
        let reopened = Journal::new(Limits::default());
        reopened.load(&conn).unwrap();
        assert!(!reopened.is_empty());
        assert!(
            reopened.must_fold_for([], [], 0),
            "nothing is known of its keys"
        );

        let mut change = Change::default();
        journal.fold(&conn, Some(FOLD_CHUNK), &mut change).unwrap();
        assert!(change.emptied());
        journal.committed(change);
        assert!(journal.is_empty());
        let answers = count(&conn, "idempotency");
        assert_eq!(answers, 1);
    }

    /// Appends one row holding request `request` and NIK hash `nik`, with a hold expiring at
    /// `expires_ms`, and commits it.
    fn append_one(
        conn: &Connection,
        journal: &Journal,
        request: &'static str,
        nik: &'static str,
        expires_ms: i64,
    ) {
        let mut change = Change::default();
        let entry = Entry {
            sections: vec![Section {
                table: "idempotency",
                columns: &["request_id", "response"],
                rows: vec![vec![ValueRef::Text(request), ValueRef::Bytes(&[1])]],
            }],
            request_ids: vec![request],
            nik_hashes: vec![nik],
            min_expires_ms: expires_ms,
            reservations: 1,
        };
        journal.append(conn, entry, &mut change).unwrap();
        journal.committed(change);
    }

    #[test]
    fn a_folded_row_is_forgotten_though_the_journal_never_empties() {
        // A burst past the journal's bound: each batch folds the oldest rows as it appends, so
        // the journal is never empty. What the folded rows held must not force folds, nor stay
        // in memory.
        let conn = database("CREATE TABLE idempotency (request_id TEXT, response BLOB);");
        let journal = Journal::new(Limits::default());
        const REQUESTS: [&str; 4] = ["r0", "r1", "r2", "r3"];
        const NIKS: [&str; 4] = ["n0", "n1", "n2", "n3"];
        // r1 and n1 appear in two rows (a key seen twice must stay until both are folded).
        append_one(&conn, &journal, REQUESTS[0], NIKS[0], 1_000);
        append_one(&conn, &journal, REQUESTS[1], NIKS[1], 5_000);
        append_one(&conn, &journal, REQUESTS[1], NIKS[1], 9_000);
        append_one(&conn, &journal, REQUESTS[2], NIKS[2], i64::MAX);
        assert!(journal.may_hold_due(1_000), "row 1's hold");
        assert_eq!(journal.state().more.len(), 2, "r1 and n1 are in two rows");

        let fold = |limit: u64| {
            let mut change = Change::default();
            journal.fold(&conn, Some(limit), &mut change).unwrap();
            assert!(!change.emptied());
            journal.committed(change);
        };
        fold(2);
        assert!(
            !journal.must_fold_for([REQUESTS[0]], [NIKS[0]], 0),
            "row 1 is folded"
        );
        assert!(
            journal.must_fold_for([REQUESTS[1]], [], 0),
            "row 3 still holds r1"
        );
        assert!(
            journal.must_fold_for([], [NIKS[1]], 0),
            "row 3 still holds n1"
        );
        assert!(
            !journal.may_hold_due(8_999),
            "the earliest hold left is row 3's"
        );
        assert!(journal.may_hold_due(9_000));
        assert_eq!(journal.state().fingerprints.len(), 4);

        fold(1);
        assert!(!journal.must_fold_for([REQUESTS[1]], [NIKS[1]], 0));
        assert!(journal.must_fold_for([REQUESTS[2]], [], 0));
        assert!(!journal.may_hold_due(i64::MAX - 1), "no hold left");
        append_one(&conn, &journal, REQUESTS[3], NIKS[3], i64::MAX);
        assert_eq!(
            journal.state().fingerprints.len(),
            4,
            "rows 4 and 5's keys only"
        );
        assert_eq!(journal.state().rows.len(), 2);
        assert_eq!(journal.state().held.len(), 4);
        assert!(
            journal.state().more.is_empty(),
            "r1 and n1 left with their last row"
        );
        assert_eq!(journal.pending(), 2);

        // A later row may hold an earlier expiry (another office's shorter holds).
        append_one(&conn, &journal, "r4", "n4", 20_000);
        append_one(&conn, &journal, "r5", "n5", 12_000);
        assert!(journal.may_hold_due(12_000) && !journal.may_hold_due(11_999));
        fold(3);
        assert!(
            journal.may_hold_due(12_000),
            "the later row's hold is still in the journal"
        );

        // A journal left by another process: nothing is known of its keys until its last row
        // is folded, and then the keys of rows appended since are all it holds.
        let reopened = Journal::new(Limits::default());
        reopened.load(&conn).unwrap();
        assert!(reopened.must_fold_for([], [], 0));
        append_one(&conn, &reopened, "r9", "n9", i64::MAX);
        let mut change = Change::default();
        reopened.fold(&conn, Some(1), &mut change).unwrap();
        reopened.committed(change);
        assert!(
            !reopened.must_fold_for(["r0"], ["n0"], 0),
            "the old rows are folded"
        );
        assert!(reopened.must_fold_for(["r9"], [], 0), "the new row is not");
    }

    #[test]
    fn a_journal_row_naming_another_table_is_refused() {
        let conn = database("CREATE TABLE offices (office_id TEXT);");
        let body = encode(&[Section {
            table: "offices",
            columns: &["office_id"],
            rows: vec![vec![ValueRef::Text("x")]],
        }]);
        conn.execute(
            "INSERT INTO reserve_journal (body, reservations) VALUES (?1, 1)",
            [body],
        )
        .unwrap();
        let journal = Journal::new(Limits::default());
        journal.load(&conn).unwrap();
        let err = journal
            .fold(&conn, None, &mut Change::default())
            .unwrap_err();
        assert!(err.to_string().contains("corrupt Reserve journal"), "{err}");
        assert!(err.to_string().contains("row 1"), "{err}");
    }
}
