//! A Reserve batch on SQLite, run whole on the hot path's own connection (`store::direct`): its
//! reads, its decisions (the same [`decide_batch`] as the general path) and its writes, on the
//! office's batch worker, with prepared statements and no hop to another thread per statement or
//! row.
//!
//! It covers the steady state of a busy day. A batch that needs more (the office or one of its
//! service points is unknown, a service point's quota row for today does not exist yet, holds
//! of the office are due to expire) writes nothing here and goes to the general path, which
//! creates the quota row, releases the holds or answers NOT_FOUND; the batches after it come
//! back here. So does a batch that finds the database locked by another program: the general
//! path waits for it (bounded by the busy time-out and the request time-out) on sqlx's thread.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use blangko_proto::v1::IkdStatus;
use rusqlite::Connection;

use super::{
    BatchAnswers, BatchState, IDEMPOTENCY_COLUMNS, Job, PointConfig, PointState, Prefetched,
    decide_batch, point_ids,
};
use crate::domain::calendar::OfficeZone;
use crate::engine::ledger::{self, LEDGER_COLUMNS};
use crate::engine::{Engine, EngineError, EngineResult, QUEUE_REPORT_TTL_MS, zone_of};
use crate::store::direct::{self, Prepared, SHARED_SQL, execute, numbered, query, query_optional};
use crate::store::journal::{self, Change, Journal};
use crate::store::rows::{
    self, Columns, QuotaDayRow, RESERVATION_COLUMNS, RESERVATION_INSERT_COLUMNS, ReservationRow,
    ServicePointRow, StoredAnswer, Value, ValueRef,
};

impl From<rusqlite::Error> for EngineError {
    fn from(err: rusqlite::Error) -> Self {
        EngineError::Database(direct::to_sqlx(err))
    }
}

/// The statements of a batch, written once (those shared with GetQuota are in `SHARED_SQL`).
struct Statements {
    due_hold: &'static str,
    stored_answer: &'static str,
    live_reservation: String,
    ikd_activated: &'static str,
    waiting: &'static str,
    counts_by_reason: &'static str,
    insert_ledger: String,
    insert_reservation: String,
    insert_answer: String,
    add_referrals: String,
    update_quota_day: String,
    update_office_stock: String,
}

static SQL: LazyLock<Statements> = LazyLock::new(|| Statements {
    due_hold: "SELECT 1 FROM reservations WHERE state = 'HELD' AND expires_ms <= ?1 AND office_id = ?2 LIMIT 1",
    stored_answer: "SELECT method, fingerprint, response FROM idempotency WHERE request_id = ?1",
    // Named, as in the general path: the planner once took an index on state instead.
    live_reservation: format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations INDEXED BY reservations_one_live_per_nik_day WHERE nik_hash = ?1 AND local_date = ?2 AND state IN ('HELD', 'COMMITTED')"
    ),
    ikd_activated: "SELECT 1 FROM ikd_activations WHERE nik_hash = ?1",
    waiting: "SELECT service_point_id, CAST(COALESCE(SUM(waiting), 0) AS BIGINT) AS n FROM queue_reports WHERE office_id = ?1 AND reported_ms > ?2 GROUP BY service_point_id",
    counts_by_reason: "SELECT reason, COUNT(*) AS n FROM reservations WHERE office_id = ?1 AND service_point_id = ?2 AND local_date = ?3 AND state IN ('HELD', 'COMMITTED') GROUP BY reason",
    insert_ledger: insert_one("ledger", &LEDGER_COLUMNS),
    insert_reservation: insert_one("reservations", &RESERVATION_INSERT_COLUMNS),
    insert_answer: insert_one("idempotency", &IDEMPOTENCY_COLUMNS),
    // Shared with the general path, written once with SQLite's numbered placeholders.
    add_referrals: numbered(rows::IKD_REFERRALS_UPSERT),
    update_quota_day: numbered(rows::QUOTA_DAY_UPDATE),
    update_office_stock: numbered(rows::OFFICE_STOCK_UPDATE),
});

/// `INSERT INTO table (a, b, ...) VALUES (?1, ?2, ...)`: one row, prepared once and run per row
/// (on this connection a run is a function call, so multi-row statements would gain nothing).
fn insert_one(table: &str, columns: &[&str]) -> String {
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        columns.join(", "),
        placeholders.join(", ")
    )
}

/// Offices whose rows the hot path keeps between batches, at most this many (past it, the
/// least recently used office is forgotten and read again from the database when its next
/// batch comes).
pub const MAX_KEPT_OFFICES: usize = 1024;

/// What the hot path keeps of an office between two of its batches: the office row, its service
/// points' settings (parsed) and today's quota rows, as the last batch's COMMIT left them. A
/// burst's batch then reads none of them again (with 16 service points that was about a tenth
/// of a batch's server CPU, BENCHMARKS.md).
///
/// Why they cannot be stale: they are used only when SQLite's `PRAGMA data_version`, read inside
/// the batch's own write transaction, is the one the rows were kept under. It changes whenever
/// another connection commits (the general path, the stock service, the sweeper, another
/// program on the file) and never for this connection's own commits, and this connection
/// writes none of these rows but in the Reserve batches that keep them (its journal folds touch
/// other tables). A batch takes its office's entry out, and only a batch that committed puts
/// one back, after its COMMIT and before the write gate opens (so entries are put in the order
/// of the commits): a failed or rolled-back batch leaves nothing behind.
#[derive(Default)]
pub(crate) struct KeptOffices {
    offices: std::sync::Mutex<KeptMap>,
}

#[derive(Default)]
struct KeptMap {
    rows: HashMap<String, OfficeRows>,
    /// Bumped at every put: the entry with the lowest mark is the least recently used.
    mark: u64,
}

impl KeptOffices {
    fn map(&self) -> std::sync::MutexGuard<'_, KeptMap> {
        // Whole entries only are inserted and removed under this lock: a poisoned map is sound.
        self.offices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The office's entry, taken out, when it was kept under `data_version` and for the day of
    /// `now`; else None (and the entry is gone).
    fn take(&self, office_id: &str, data_version: i64, now: i64) -> Option<OfficeRows> {
        let rows = self.map().rows.remove(office_id)?;
        let today = crate::domain::calendar::format_local_date(rows.zone.local_date(now));
        (rows.data_version == data_version && rows.date == today).then_some(rows)
    }

    /// Keeps an office's rows after its batch committed.
    fn put(&self, mut rows: OfficeRows) {
        let mut map = self.map();
        map.mark += 1;
        rows.mark = map.mark;
        if map.rows.len() >= MAX_KEPT_OFFICES && !map.rows.contains_key(&rows.office.office_id) {
            let oldest = map
                .rows
                .iter()
                .min_by_key(|(_, r)| r.mark)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                map.rows.remove(&oldest);
            }
        }
        map.rows.insert(rows.office.office_id.clone(), rows);
    }

    /// How many offices are kept (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map().rows.len()
    }
}

/// An office's rows as a batch reads them (see [`KeptOffices`]).
struct OfficeRows {
    /// `PRAGMA data_version` in the transaction that read or wrote them.
    data_version: i64,
    /// For [`KeptOffices`]' eviction.
    mark: u64,
    office: rows::OfficeRow,
    zone: OfficeZone,
    /// The office-local day of `quota_days`.
    date: String,
    /// Every service point of the office.
    points: HashMap<String, Arc<PointConfig>>,
    /// The office's quota rows of `date`, by service point (a point without one today has none).
    quota_days: HashMap<String, QuotaDayRow>,
}

impl OfficeRows {
    /// Reads an office's rows for the day of `now`; None when the office does not exist.
    fn read(
        conn: &Connection,
        office_id: &str,
        data_version: i64,
        now: i64,
    ) -> EngineResult<Option<OfficeRows>> {
        let Some(office) = direct::office(conn, office_id)? else {
            return Ok(None);
        };
        let zone = zone_of(&office)?;
        let date = crate::domain::calendar::format_local_date(zone.local_date(now));
        let quota_days = query(
            conn,
            &SHARED_SQL.quota_days_of_office,
            &[Value::text(office_id), Value::text(&date)],
            |r| QuotaDayRow::from_row(r),
        )?
        .into_iter()
        .map(|q| (q.service_point_id.clone(), q))
        .collect();
        let mut points = HashMap::new();
        for sp in query(
            conn,
            &SHARED_SQL.service_points_of_office,
            &[Value::text(office_id)],
            |r| ServicePointRow::from_row(r),
        )? {
            points.insert(sp.service_point_id.clone(), Arc::new(PointConfig::of(&sp)?));
        }
        Ok(Some(OfficeRows {
            data_version,
            mark: 0,
            office,
            zone,
            date,
            points,
            quota_days,
        }))
    }
}

/// SQLite's count of commits by other connections, as this transaction sees the database.
fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

impl Engine {
    /// Decides a batch on SQLite's hot-path connection. None: not SQLite, or the batch needs the
    /// general path (nothing was written).
    pub(super) async fn reserve_batch_sqlite(
        &self,
        office_id: &str,
        jobs: &[Job],
    ) -> Option<EngineResult<BatchAnswers>> {
        let connection = self.store.direct()?;
        let long_fold = AtomicBool::new(false);
        let mut decided = self
            .decide_on(connection, office_id, jobs, Some(&long_fold))
            .await;
        if long_fold.load(Ordering::Relaxed) {
            // The batch must fold the journal first (a retry, or the same person again, during
            // a burst), and more than a chunk of it: rolled back, it folds most of it here, the
            // write gate open between chunks so that other offices' batches go on, and runs
            // again. A failure here is met again, and reported, by the batch's own fold.
            if let Err(err) = self.store.fold_journal_most().await {
                tracing::debug!(error = %err, "the Reserve journal was not folded before the batch");
            }
            decided = self.decide_on(connection, office_id, jobs, None).await;
        }
        // Ok(None) twice over: locked from outside the process, or the batch needs the general path.
        match decided {
            Ok(Some(Some(answers))) => Some(Ok(answers)),
            Ok(_) => None,
            Err(err) => Some(Err(err)),
        }
    }

    /// The batch in one transaction on the hot path's connection (see [`decide`]); with
    /// `long_fold`, a batch that would have to fold more than a chunk of the journal first sets
    /// it and decides nothing.
    async fn decide_on(
        &self,
        connection: &direct::Direct,
        office_id: &str,
        jobs: &[Job],
        long_fold: Option<&AtomicBool>,
    ) -> EngineResult<Option<Option<BatchAnswers>>> {
        let decided = connection
            .run_journaled_then(
                |tx, journal, change| {
                    // The time once the write gate is held, as the general path reads it under the
                    // office lock.
                    let now = self.clock.now_ms();
                    let version = data_version(tx)?;
                    let kept = self.kept_offices.take(office_id, version, now);
                    let decided = decide(
                        tx,
                        Journaled {
                            journal,
                            change,
                            long_fold,
                        },
                        office_id,
                        kept,
                        jobs,
                        Turn {
                            now,
                            data_version: version,
                            sweep_soon: &self.sweep_soon,
                        },
                    )?;
                    let commit = decided.is_some();
                    Ok::<_, EngineError>((
                        decided.map(|(answers, rows)| (answers, Some(rows))),
                        commit,
                    ))
                },
                |decided| {
                    // Committed: the rows as this batch left them serve the office's next batch.
                    // Kept before the write gate opens, so that rows kept by a batch that committed
                    // earlier can never replace those of one that committed after it (two workers
                    // of one office overlap when an idle one ends as a new one starts), which
                    // `data_version` cannot tell apart: this connection's own commits leave it as
                    // it is.
                    if let Some(rows) = decided.as_mut().and_then(|(_, rows)| rows.take()) {
                        self.kept_offices.put(rows);
                    }
                },
            )
            .await?;
        Ok(decided.map(|d| d.map(|(answers, _)| answers)))
    }
}
/// The Reserve journal as a batch's transaction sees it (see `store::journal`).
struct Journaled<'t> {
    journal: &'t Journal,
    change: &'t mut Change,
    /// Set instead of folding more than [`journal::FOLD_BESIDE_RESERVES`] in the batch's
    /// transaction (its caller folds it in chunks and runs the batch again); None: fold here
    /// whatever it takes.
    long_fold: Option<&'t AtomicBool>,
}

impl Journaled<'_> {
    /// The Reserves in the journal as this transaction leaves it so far.
    fn pending(&self) -> u64 {
        if self.change.emptied() {
            0
        } else {
            self.journal.pending().saturating_sub(self.change.folded())
        }
    }

    /// Folds the whole journal into its tables in this transaction, unless it is empty.
    fn fold_all(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.change.emptied() && !self.journal.is_empty() {
            self.journal.fold(conn, None, self.change)?;
        }
        Ok(())
    }

    /// [`Journaled::fold_all`] when that is at most [`journal::FOLD_BESIDE_RESERVES`], or when
    /// the caller gave no `long_fold`. Past it, sets `long_fold` and returns false: the batch
    /// decides nothing, and its caller folds the journal in chunks, off the tokio thread and with
    /// the write gate open between them, and runs it again (a fold of a full journal here would
    /// hold every office's Reserves for seconds).
    fn fold_all_or_defer(&mut self, conn: &Connection) -> rusqlite::Result<bool> {
        if let Some(long_fold) = self.long_fold
            && !self.change.emptied()
            && self.journal.weight() > journal::FOLD_BESIDE_RESERVES
        {
            long_fold.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.fold_all(conn)?;
        Ok(true)
    }

    /// Whether a batch of `batch` Reserves writes its rows as a journal row: a burst's batch (at
    /// least `JOURNAL_FROM_BATCH`) while the journal has room, and any batch while the journal
    /// holds rows. The row weighs the Reserves it answers, referrals included (a burst against
    /// a used-up quota makes rows without reservations, which grew the journal, and its
    /// fingerprints, without end while the bound counted reservations). At its bound the batch
    /// first folds the oldest rows, about as many Reserves' worth as it adds, so a burst that outlasts the bound keeps the
    /// journal full but no fuller, and each batch pays for about its own rows (a fixed chunk of
    /// 512 stalled one batch in twenty for tens of milliseconds: p99 20 ms against 10 ms without
    /// the journal in a 30 s burst, BENCHMARKS.md).
    ///
    /// A batch whose rows go straight into their tables never overtakes journaled ones: a
    /// listing that folded the journal and then reads its table would otherwise see ledger
    /// entry 103 before 101 and 102 were folded, and its page token would move past them for
    /// good. So while the journal holds rows, a lone Reserve is journaled too, and a batch
    /// larger than the whole bound finds the journal emptied first.
    fn takes(&mut self, conn: &Connection, batch: usize) -> rusqlite::Result<bool> {
        let weight = batch as u64;
        let empty = self.change.emptied() || self.journal.is_empty();
        if self.journal.limits().max_reservations == 0
            || (batch < journal::JOURNAL_FROM_BATCH && empty)
        {
            self.fold_all(conn)?;
            return Ok(false);
        }
        if !empty {
            // At the bound: fold the oldest rows until this batch fits, about as many as it
            // adds. Each fold folds at least one row, or finds the journal empty.
            while !self.journal.has_room(self.pending(), weight) && !self.change.emptied() {
                let need = (self.pending() + weight)
                    .saturating_sub(self.journal.limits().max_reservations)
                    .max(1);
                self.journal.fold(conn, Some(need), self.change)?;
            }
        }
        // No room only for a batch larger than the whole bound, and then the journal was
        // emptied above: its rows go straight into their tables behind everything journaled.
        Ok(self.journal.has_room(self.pending(), weight))
    }
}

/// A batch's turn at the write gate: its time, the database's `data_version` as its
/// transaction sees it, and the sweeper to wake (see `Engine::sweep_soon`).
struct Turn<'t> {
    now: i64,
    data_version: i64,
    sweep_soon: &'t tokio::sync::Notify,
}

/// The batch in one transaction: None when it needs the general path (nothing written). With
/// its answers, the office's rows as the batch leaves them (see [`KeptOffices`]): `kept` when
/// the last batch's are still current, else read here.
fn decide(
    conn: &Connection,
    mut journaled: Journaled<'_>,
    office_id: &str,
    kept: Option<OfficeRows>,
    jobs: &[Job],
    turn: Turn<'_>,
) -> EngineResult<Option<(BatchAnswers, OfficeRows)>> {
    let Turn {
        now, data_version, ..
    } = turn;
    let rows = match kept {
        Some(rows) => rows,
        None => match OfficeRows::read(conn, office_id, data_version, now)? {
            Some(rows) => rows,
            None => return Ok(None),
        },
    };
    let OfficeRows {
        office,
        zone,
        date,
        points,
        mut quota_days,
        ..
    } = rows;
    // The reads below see the tables: a request id or NIK of this batch that may wait in the
    // journal, or a hold in it that may be due, is folded into them first.
    if journaled.journal.must_fold_for(
        jobs.iter().map(|j| j.cmd.request_id.as_str()),
        jobs.iter().map(|j| j.nik_hash.as_str()),
        now,
    ) && !journaled.fold_all_or_defer(conn)?
    {
        return Ok(None);
    }
    // Due holds are released (with their ledger entries) by the general path first.
    let due = query_optional(
        conn,
        SQL.due_hold,
        &[Value::Int(now), Value::text(office_id)],
        |_| Ok(()),
    )?;
    if due.is_some() {
        return Ok(None);
    }

    // Everything else the decisions read: one probe per Reserve for a stored answer and for a
    // live reservation of its NIK.
    let office_used = quota_days.values().map(QuotaDayRow::used).sum();
    let mut answers = HashMap::new();
    let mut live = HashMap::new();
    let mut activated = HashSet::new();
    let mut stored_answer = Prepared::new(conn, SQL.stored_answer)?;
    let mut live_reservation = Prepared::new(conn, &SQL.live_reservation)?;
    let mut ikd_activated = if office.ikd_first_required {
        Some(Prepared::new(conn, SQL.ikd_activated)?)
    } else {
        None
    };
    for Job { cmd, nik_hash, .. } in jobs {
        if let Some(answer) = stored_answer
            .query_optional(&[ValueRef::Text(&cmd.request_id)], |r| {
                StoredAnswer::from_row(r)
            })?
        {
            answers.insert(cmd.request_id.clone(), answer);
        }
        if let Some(r) = live_reservation
            .query_optional(&[ValueRef::Text(nik_hash), ValueRef::Text(&date)], |r| {
                ReservationRow::from_row(r)
            })?
        {
            live.insert(nik_hash.clone(), r);
        }
        if let Some(ikd_activated) = ikd_activated.as_mut()
            && cmd.ikd_status == IkdStatus::NotActive as i32
            && ikd_activated
                .query_optional(&[ValueRef::Text(nik_hash)], |_| Ok(()))?
                .is_some()
        {
            activated.insert(nik_hash.clone());
        }
    }
    let waiting: HashMap<String, i64> = query(
        conn,
        SQL.waiting,
        &[
            Value::text(office_id),
            Value::Int(now - QUEUE_REPORT_TTL_MS),
        ],
        |r| Ok((r.text("service_point_id")?, r.int("n")?)),
    )?
    .into_iter()
    .collect();

    let mut state = BatchState::new(
        office,
        zone,
        now,
        office_used,
        Prefetched {
            answers,
            live,
            activated,
        },
        turn.sweep_soon,
    );
    for id in point_ids(jobs) {
        // An unknown service point: the general path answers NOT_FOUND.
        let Some(config) = points.get(id) else {
            return Ok(None);
        };
        // The first transaction of the day computes the quota row (general path).
        let Some(qd) = quota_days.remove(id) else {
            return Ok(None);
        };
        let by_reason = if config.policy.reason_caps.is_empty() {
            HashMap::new()
        } else {
            // Counted from the reservations table, which must hold them all.
            if !journaled.fold_all_or_defer(conn)? {
                return Ok(None);
            }
            query(
                conn,
                SQL.counts_by_reason,
                &[Value::text(office_id), Value::text(id), Value::text(&date)],
                |r| Ok((r.int("reason")?, r.int("n")?)),
            )?
            .into_iter()
            .collect()
        };
        let waiting = waiting.get(id).copied().unwrap_or(0);
        state.points.insert(
            id.to_string(),
            Ok(PointState::new(Arc::clone(config), qd, waiting, by_reason)),
        );
    }

    let answers = decide_batch(&mut state, jobs)?;
    write(conn, journaled, office_id, jobs, &state)?;
    // The office's rows as this transaction leaves them.
    for (id, point) in state.points {
        if let Ok(point) = point {
            quota_days.insert(id, point.qd);
        }
    }
    let rows = OfficeRows {
        data_version,
        mark: 0,
        office: state.office,
        zone,
        date,
        points,
        quota_days,
    };
    Ok(Some(((answers, state.changed), rows)))
}

/// The batch's writes, in the order of the general path's: its ledger entries, reservations and
/// stored answers as one journal row when the journal takes them ([`Journaled::takes`]), else
/// into their tables.
fn write(
    conn: &Connection,
    mut journaled: Journaled<'_>,
    office_id: &str,
    jobs: &[Job],
    state: &BatchState<'_>,
) -> EngineResult<()> {
    if journaled.takes(conn, jobs.len())? {
        let entry = journal::Entry {
            request_ids: jobs.iter().map(|j| j.cmd.request_id.as_str()).collect(),
            nik_hashes: state
                .reservations
                .iter()
                .map(|r| r.nik_hash.as_str())
                .collect(),
            min_expires_ms: state
                .reservations
                .iter()
                .map(|r| r.expires_ms)
                .min()
                .unwrap_or(i64::MAX),
            // Its weight: the Reserves it answers (`Journaled::takes`).
            reservations: jobs.len() as u64,
            sections: vec![
                journal::Section {
                    table: "ledger",
                    columns: &LEDGER_COLUMNS,
                    rows: state
                        .ledger
                        .iter()
                        .map(|e| Vec::from(ledger::entry_refs(e)))
                        .collect(),
                },
                journal::Section {
                    table: "reservations",
                    columns: &RESERVATION_INSERT_COLUMNS,
                    rows: state
                        .reservations
                        .iter()
                        .map(|r| Vec::from(rows::reservation_refs(r)))
                        .collect(),
                },
                journal::Section {
                    table: "idempotency",
                    columns: &IDEMPOTENCY_COLUMNS,
                    rows: state.answer_refs(),
                },
            ],
        };
        journaled.journal.append(conn, entry, journaled.change)?;
    } else {
        // Each statement looked up once for all of its rows.
        let mut insert = Prepared::new(conn, &SQL.insert_ledger)?;
        for entry in &state.ledger {
            insert.execute(&ledger::entry_refs(entry))?;
        }
        let mut insert = Prepared::new(conn, &SQL.insert_reservation)?;
        for reservation in &state.reservations {
            insert.execute(&rows::reservation_refs(reservation))?;
        }
        let mut insert = Prepared::new(conn, &SQL.insert_answer)?;
        for row in state.answer_refs() {
            insert.execute(&row)?;
        }
    }
    for (cause, referrals) in &state.referrals {
        let (_, values) = rows::ikd_referrals_upsert(office_id, &state.date, *cause, *referrals);
        execute(conn, &SQL.add_referrals, &values)?;
    }
    for point in state.points.values().filter_map(|p| p.as_ref().ok()) {
        if point.dirty {
            let (_, values) = rows::quota_day_update(&point.qd);
            execute(conn, &SQL.update_quota_day, &values)?;
        }
    }
    if state.changed {
        let (_, values) = rows::office_stock_update(&state.office);
        execute(conn, &SQL.update_office_stock, &values)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(office_id: &str, data_version: i64, date: &str) -> OfficeRows {
        OfficeRows {
            data_version,
            mark: 0,
            office: rows::OfficeRow {
                office_id: office_id.to_string(),
                name: office_id.to_string(),
                time_zone: "Asia/Jakarta".into(),
                province_code: "32".into(),
                daily_cap: 0,
                expected_next_supply_date: String::new(),
                fallback_horizon_days: 30,
                ikd_first_required: false,
                hold_ttl_secs: 1800,
                on_hand: 10,
                held: 0,
                ledger_seq: 0,
                ledger_head: String::new(),
            },
            zone: OfficeZone::Wib,
            date: date.to_string(),
            points: HashMap::new(),
            quota_days: HashMap::new(),
        }
    }

    /// Tuesday 2026-12-01 08:00 WIB.
    const TUESDAY_8AM_WIB_MS: i64 = 1_796_086_800_000;

    #[test]
    fn kept_rows_serve_only_the_same_data_version_and_day_and_only_once() {
        let kept = KeptOffices::default();
        kept.put(rows_of("3275", 7, "2026-12-01"));
        // Another connection committed since: gone, not served.
        assert!(kept.take("3275", 8, TUESDAY_8AM_WIB_MS).is_none());
        assert!(
            kept.take("3275", 7, TUESDAY_8AM_WIB_MS).is_none(),
            "taken out"
        );
        // The next day: its quota rows are not these.
        kept.put(rows_of("3275", 7, "2026-12-01"));
        let next_day = TUESDAY_8AM_WIB_MS + 16 * 3_600_000;
        assert!(kept.take("3275", 7, next_day).is_none());
        // The same version and day: served once; a batch that fails puts nothing back.
        kept.put(rows_of("3275", 7, "2026-12-01"));
        assert!(kept.take("3275", 7, TUESDAY_8AM_WIB_MS).is_some());
        assert!(kept.take("3275", 7, TUESDAY_8AM_WIB_MS).is_none());
    }

    #[test]
    fn at_most_max_kept_offices_are_kept_and_the_least_recent_goes_first() {
        let kept = KeptOffices::default();
        for i in 0..MAX_KEPT_OFFICES {
            kept.put(rows_of(&format!("o{i}"), 1, "2026-12-01"));
        }
        // o0 is used again, so o1 is now the least recently used.
        kept.put(rows_of("o0", 1, "2026-12-01"));
        kept.put(rows_of("new", 1, "2026-12-01"));
        assert_eq!(kept.len(), MAX_KEPT_OFFICES);
        assert!(kept.take("o1", 1, TUESDAY_8AM_WIB_MS).is_none(), "evicted");
        assert!(kept.take("o0", 1, TUESDAY_8AM_WIB_MS).is_some());
        assert!(kept.take("new", 1, TUESDAY_8AM_WIB_MS).is_some());
    }
}
