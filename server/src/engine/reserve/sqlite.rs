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
use std::sync::LazyLock;

use blangko_proto::v1::IkdStatus;
use rusqlite::Connection;

use super::{
    BatchAnswers, BatchState, IDEMPOTENCY_COLUMNS, Job, PointState, decide_batch, point_ids,
};
use crate::engine::ledger::{self, LEDGER_COLUMNS};
use crate::engine::{Engine, EngineError, EngineResult, QUEUE_REPORT_TTL_MS, policy_of, zone_of};
use crate::store::direct::{self, Prepared, SHARED_SQL, execute, numbered, query, query_optional};
use crate::store::journal::{self, Change, Journal};
use crate::store::rows::{
    self, Columns, QuotaDayRow, RESERVATION_COLUMNS, RESERVATION_INSERT_COLUMNS, ReservationRow,
    ServicePointRow, StoredAnswer, Value,
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

impl Engine {
    /// Decides a batch on SQLite's hot-path connection. None: not SQLite, or the batch needs the
    /// general path (nothing was written).
    pub(super) async fn reserve_batch_sqlite(
        &self,
        office_id: &str,
        jobs: &[Job],
    ) -> Option<EngineResult<BatchAnswers>> {
        let connection = self.store.direct()?;
        let decided = connection
            .run_journaled(|tx, journal, change| {
                // The time once the write gate is held, as the general path reads it under the
                // office lock.
                let now = self.clock.now_ms();
                let decided = decide(tx, Journaled { journal, change }, office_id, jobs, now)?;
                let commit = decided.is_some();
                Ok::<_, EngineError>((decided, commit))
            })
            .await;
        // Ok(None) twice over: locked from outside the process, or the batch needs the general path.
        decided.map(Option::flatten).transpose()
    }
}

/// The Reserve journal as a batch's transaction sees it (see `store::journal`).
struct Journaled<'t> {
    journal: &'t Journal,
    change: &'t mut Change,
}

impl Journaled<'_> {
    /// Reservations in the journal as this transaction leaves it so far.
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

    /// Whether a batch of `batch` Reserves making `reservations` writes its rows as a journal
    /// row: a burst's batch (at least `JOURNAL_FROM_BATCH`) while the journal has room. At its
    /// bound the batch first folds the oldest rows, about as many reservations as it makes, so a
    /// burst that outlasts the bound keeps the journal full but no fuller, and each batch pays
    /// for about its own rows (a fixed chunk of 512 stalled one batch in twenty for tens of
    /// milliseconds: p99 20 ms against 10 ms without the journal in a 30 s burst,
    /// BENCHMARKS.md).
    fn takes(
        &mut self,
        conn: &Connection,
        batch: usize,
        reservations: u64,
    ) -> rusqlite::Result<bool> {
        if batch < journal::JOURNAL_FROM_BATCH || self.journal.limits().max_reservations == 0 {
            return Ok(false);
        }
        if !self.journal.has_room(self.pending(), reservations) && !self.journal.is_empty() {
            self.journal
                .fold(conn, Some(reservations.max(1)), self.change)?;
        }
        Ok(self.journal.has_room(self.pending(), reservations))
    }
}

/// The batch in one transaction: None when it needs the general path (nothing written).
fn decide(
    conn: &Connection,
    mut journaled: Journaled<'_>,
    office_id: &str,
    jobs: &[Job],
    now: i64,
) -> EngineResult<Option<BatchAnswers>> {
    let Some(office) = direct::office(conn, office_id)? else {
        return Ok(None);
    };
    // The reads below see the tables: a request id or NIK of this batch that may wait in the
    // journal, or a hold in it that may be due, is folded into them first.
    if journaled.journal.must_fold_for(
        jobs.iter().map(|j| j.cmd.request_id.as_str()),
        jobs.iter().map(|j| j.nik_hash.as_str()),
        now,
    ) {
        journaled.fold_all(conn)?;
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
    let zone = zone_of(&office)?;
    let date = crate::domain::calendar::format_local_date(zone.local_date(now));

    // Everything the decisions read: the office's quota rows today, then one probe per Reserve
    // for a stored answer and for a live reservation of its NIK.
    let mut quota_days: HashMap<String, QuotaDayRow> = query(
        conn,
        &SHARED_SQL.quota_days_of_office,
        &[Value::text(office_id), Value::text(&date)],
        |r| QuotaDayRow::from_row(r),
    )?
    .into_iter()
    .map(|q| (q.service_point_id.clone(), q))
    .collect();
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
            .query_optional(&[Value::text(&cmd.request_id)], |r| {
                StoredAnswer::from_row(r)
            })?
        {
            answers.insert(cmd.request_id.clone(), answer);
        }
        if let Some(r) = live_reservation
            .query_optional(&[Value::text(nik_hash), Value::text(&date)], |r| {
                ReservationRow::from_row(r)
            })?
        {
            live.insert(nik_hash.clone(), r);
        }
        if let Some(ikd_activated) = ikd_activated.as_mut()
            && cmd.ikd_status == IkdStatus::NotActive as i32
            && ikd_activated
                .query_optional(&[Value::text(nik_hash)], |_| Ok(()))?
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

    let mut state = BatchState::new(office, zone, now, office_used, answers, live, activated);
    let ids = point_ids(jobs.iter().map(|j| &j.cmd));
    // A burst spreads over the office's service points: one statement reads them all (a batch
    // over 16 points read them with 16) unless the batch names only one.
    let mut points: HashMap<String, ServicePointRow> = if ids.len() > 1 {
        query(
            conn,
            &SHARED_SQL.service_points_of_office,
            &[Value::text(office_id)],
            |r| ServicePointRow::from_row(r),
        )?
        .into_iter()
        .map(|sp| (sp.service_point_id.clone(), sp))
        .collect()
    } else {
        HashMap::new()
    };
    for id in ids {
        let sp = match points.remove(id) {
            Some(sp) => Some(sp),
            None => query_optional(
                conn,
                &SHARED_SQL.service_point,
                &[Value::text(office_id), Value::text(id)],
                |r| ServicePointRow::from_row(r),
            )?,
        };
        let Some(sp) = sp else {
            return Ok(None);
        };
        // The first transaction of the day computes the quota row (general path).
        let Some(qd) = quota_days.remove(id) else {
            return Ok(None);
        };
        let policy = policy_of(&sp)?;
        let by_reason = if policy.reason_caps.is_empty() {
            HashMap::new()
        } else {
            // Counted from the reservations table, which must hold them all.
            journaled.fold_all(conn)?;
            query(
                conn,
                SQL.counts_by_reason,
                &[
                    Value::text(office_id),
                    Value::text(id),
                    Value::text(&state.date),
                ],
                |r| Ok((r.int("reason")?, r.int("n")?)),
            )?
            .into_iter()
            .collect()
        };
        let waiting = waiting.get(id).copied().unwrap_or(0);
        state.points.insert(
            id.to_string(),
            Ok(PointState::new(&sp, policy, qd, waiting, by_reason)),
        );
    }

    let answers = decide_batch(
        &mut state,
        jobs.iter().map(|j| (&j.cmd, j.nik_hash.as_str())),
    )?;
    write(conn, journaled, office_id, jobs, &mut state)?;
    Ok(Some((answers, state.changed)))
}

/// The batch's writes, in the order of the general path's: its ledger entries, reservations and
/// stored answers as one journal row when the journal takes them ([`Journaled::takes`]), else
/// into their tables.
fn write(
    conn: &Connection,
    mut journaled: Journaled<'_>,
    office_id: &str,
    jobs: &[Job],
    state: &mut BatchState,
) -> EngineResult<()> {
    let reservations = state.reservations.len() as u64;
    if journaled.takes(conn, jobs.len(), reservations)? {
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
            reservations,
            sections: vec![
                journal::Section {
                    table: "ledger",
                    columns: &LEDGER_COLUMNS,
                    rows: ledger::entry_rows(&state.ledger),
                },
                journal::Section {
                    table: "reservations",
                    columns: &RESERVATION_INSERT_COLUMNS,
                    rows: state.reservation_rows(),
                },
                journal::Section {
                    table: "idempotency",
                    columns: &IDEMPOTENCY_COLUMNS,
                    rows: std::mem::take(&mut state.new_answers),
                },
            ],
        };
        journaled.journal.append(conn, entry, journaled.change)?;
    } else {
        // Each statement looked up once for all of its rows.
        let mut insert = Prepared::new(conn, &SQL.insert_ledger)?;
        for row in ledger::entry_rows(&state.ledger) {
            insert.execute(&row)?;
        }
        let mut insert = Prepared::new(conn, &SQL.insert_reservation)?;
        for row in state.reservation_rows() {
            insert.execute(&row)?;
        }
        let mut insert = Prepared::new(conn, &SQL.insert_answer)?;
        for row in std::mem::take(&mut state.new_answers) {
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
