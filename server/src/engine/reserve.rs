//! Reserve: the hot path. One transaction decides and writes: the office row is locked first,
//! so no other transaction (connection, process or replica) can decide about the same office's
//! quota and stock between our read and our write.

mod sqlite;

pub(crate) use sqlite::KeptOffices;

use std::collections::HashMap;
use std::sync::Arc;

use blangko_proto::v1::{
    IkdReferral, IkdStatus, LedgerEntryKind, QuotaPolicy, QuotaSnapshot, ReferralCause,
    Reservation, ReserveResponse, reserve_response::Outcome,
};
use chrono::NaiveDate;
use prost::Message;
use sqlx::AnyConnection;

use super::batch::TopUp;
use super::ledger::{self, NewEntry};
use super::queries::{SnapshotExtras, admission_figures, snapshot_from};
use super::{
    EXPIRY_BATCH, Engine, EngineError, EngineResult, calendar_of, new_reservation_id, policy_of,
    priority_reasons, release_at_ms, reservation_to_proto, timestamp, zone_of,
};
use crate::domain::calendar::{OfficeZone, ServiceCalendar, format_local_date, parse_local_date};
use crate::domain::nik::Nik;
use crate::domain::quota::{self, CapUse};
use crate::domain::referral::{ReferralKind, referral_text_at};
use crate::store::rows::{self, OfficeRow, QuotaDayRow, ReservationRow};

/// A validated Reserve.
#[derive(Debug, Clone)]
pub struct ReserveCommand {
    /// Idempotency key.
    pub request_id: String,
    /// The office.
    pub office_id: String,
    /// The service point.
    pub service_point_id: String,
    /// The counter.
    pub counter_id: String,
    /// The applicant (Debug prints it masked).
    pub nik: Nik,
    /// Wire value of the reason (validated).
    pub reason: i32,
    /// Wire value of the IKD check (validated).
    pub ikd_status: i32,
    /// Who calls.
    pub principal: String,
    /// Keyed fingerprint of the request content.
    pub fingerprint: String,
}

/// The method name idempotency records carry.
pub const RESERVE: &str = "Reserve";

/// RetryInfo of a Reserve that met another office's hold which ran out but is not released
/// yet: the sweeper, woken at once, releases it in about this time.
pub const EARLIER_HOLD_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// How long after a hold elsewhere ran out a Reserve still answers "being released, retry"
/// (EARLIER_HOLD_RELEASING); later, ALREADY_RESERVED_ELSEWHERE. The sweeper, woken by the first
/// such Reserve, releases it within a pass; a hold still there after this long is one it cannot
/// release, and retrying would not help.
pub const EARLIER_HOLD_RELEASE_WINDOW_MS: i64 = 60_000;

/// A map that lives for one batch and is looked up a few times per Reserve (its service points,
/// the answers and reservations it made so far): hashed with foldhash instead of SipHash. It is
/// seeded per map, so a caller cannot choose keys that collide, and it holds at most
/// `--reserve-batch-size` keys.
type BatchMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One Reserve waiting in an office's batch.
pub(crate) struct Job {
    /// The validated request.
    pub cmd: ReserveCommand,
    /// The keyed hash of its NIK.
    pub nik_hash: String,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<EngineResult<ReserveResponse>>,
}

/// The columns of the `idempotency` rows a batch writes.
const IDEMPOTENCY_COLUMNS: [&str; 5] = [
    "request_id",
    "method",
    "fingerprint",
    "response",
    "created_ms",
];

/// A batch decided and committed, waiting to be made durable and answered.
pub(crate) struct DecidedBatch {
    office_id: String,
    jobs: Vec<Job>,
    outcome: EngineResult<BatchAnswers>,
}

/// A batch's answers, in the order of its Reserves, and whether it changed the office (stock,
/// holds), so that watchers are told.
pub(crate) type BatchAnswers = (Vec<EngineResult<ReserveResponse>>, bool);

/// A service point's settings as a batch decides with them, parsed once from its row: its
/// policy, its calendar and the reasons that may use its priority share. The SQLite hot path
/// keeps them between batches (`reserve/sqlite.rs`), shared.
pub(crate) struct PointConfig {
    policy: QuotaPolicy,
    calendar: ServiceCalendar,
    priority: Vec<i32>,
}

impl PointConfig {
    /// The settings of a service point's row (a stored policy that no longer decodes: INTERNAL).
    pub(crate) fn of(sp: &rows::ServicePointRow) -> EngineResult<PointConfig> {
        let policy = policy_of(sp)?;
        Ok(PointConfig {
            calendar: calendar_of(sp),
            priority: priority_reasons(&policy),
            policy,
        })
    }
}

/// A service point touched by the batch, with its quota row kept in memory until the end.
struct PointState {
    config: Arc<PointConfig>,
    qd: QuotaDayRow,
    waiting: i64,
    /// Live reservations today per reason (loaded only when the policy caps reasons).
    by_reason: HashMap<i64, i64>,
    dirty: bool,
}

impl PointState {
    /// A service point as the batch found it.
    fn new(
        config: Arc<PointConfig>,
        qd: QuotaDayRow,
        waiting: i64,
        by_reason: HashMap<i64, i64>,
    ) -> PointState {
        PointState {
            config,
            qd,
            waiting,
            by_reason,
            dirty: false,
        }
    }
}

/// What a batch holds for one office for the length of its transaction. Everything a decision
/// reads is fetched once per batch (a few statements), decided in memory, and written at the
/// end with multi-row statements: group commit.
struct BatchState<'a> {
    office: OfficeRow,
    zone: OfficeZone,
    now: i64,
    today: NaiveDate,
    date: String,
    /// Held plus committed today over the office (kept up to date in memory).
    office_used: i64,
    points: BatchMap<String, EngineResult<PointState>>,
    /// Answers already stored, by request id (prefetched).
    answers: HashMap<String, rows::StoredAnswer>,
    /// The answers given in this batch ([`BatchState::new_answers`]), by request id (borrowed
    /// from the batch's Reserves, like the other keys the decisions add).
    given: BatchMap<&'a str, usize>,
    /// Live reservations of the batch's NIKs (prefetched).
    live: HashMap<String, ReservationRow>,
    /// The reservations made in this batch ([`BatchState::reservations`]), by NIK hash.
    made: BatchMap<&'a str, usize>,
    /// NIKs with a recorded IKD activation (prefetched where the office requires IKD first).
    activated: std::collections::HashSet<String>,
    ledger: Vec<ledger::StoredEntry>,
    reservations: Vec<ReservationRow>,
    new_answers: Vec<NewAnswer<'a>>,
    changed: bool,
    /// IKD referrals given in this batch, by cause (counted for the daily stock report).
    referrals: HashMap<i32, i64>,
    /// Wakes the sweeper (`Engine::sweep_soon`) when a Reserve meets another office's hold that
    /// ran out but is not released yet.
    sweep_soon: &'a tokio::sync::Notify,
}

/// What a batch read for its Reserves before deciding them.
struct Prefetched {
    /// Answers already stored, by request id.
    answers: HashMap<String, rows::StoredAnswer>,
    /// Live reservations of the batch's NIKs.
    live: HashMap<String, ReservationRow>,
    /// NIKs with a recorded IKD activation (where the office requires IKD first).
    activated: std::collections::HashSet<String>,
}

impl<'a> BatchState<'a> {
    /// The state of a batch before its decisions, from what it read.
    fn new(
        office: OfficeRow,
        zone: OfficeZone,
        now: i64,
        office_used: i64,
        prefetched: Prefetched,
        sweep_soon: &'a tokio::sync::Notify,
    ) -> BatchState<'a> {
        let Prefetched {
            answers,
            live,
            activated,
        } = prefetched;
        let today = zone.local_date(now);
        BatchState {
            office,
            zone,
            now,
            today,
            date: format_local_date(today),
            office_used,
            points: BatchMap::default(),
            answers,
            given: BatchMap::default(),
            live,
            made: BatchMap::default(),
            activated,
            ledger: Vec::new(),
            reservations: Vec::new(),
            new_answers: Vec::new(),
            changed: false,
            referrals: HashMap::new(),
            sweep_soon,
        }
    }

    /// The answer stored or given in this batch for a request id: method, fingerprint, bytes.
    fn answer(&self, request_id: &str) -> Option<(&str, &str, &[u8])> {
        if let Some(&i) = self.given.get(request_id) {
            let a = &self.new_answers[i];
            return Some((RESERVE, a.fingerprint, &a.response));
        }
        self.answers.get(request_id).map(|a| {
            (
                a.method.as_str(),
                a.fingerprint.as_str(),
                a.response.as_slice(),
            )
        })
    }

    /// The live reservation of a NIK today: found by the batch's reads, or made in this batch.
    fn live_of(&self, nik_hash: &str) -> Option<&ReservationRow> {
        match self.made.get(nik_hash) {
            Some(&i) => self.reservations.get(i),
            None => self.live.get(nik_hash),
        }
    }

    /// The answers given in this batch as `idempotency` rows, owned.
    fn answer_rows(&self) -> Vec<Vec<rows::Value>> {
        self.answer_refs()
            .into_iter()
            .map(|row| row.into_iter().map(rows::ValueRef::to_value).collect())
            .collect()
    }

    /// The answers given in this batch as `idempotency` rows (in [`IDEMPOTENCY_COLUMNS`]
    /// order), borrowed.
    fn answer_refs(&self) -> Vec<Vec<rows::ValueRef<'_>>> {
        use rows::ValueRef::{Bytes, Int, Text};
        self.new_answers
            .iter()
            .map(|a| {
                vec![
                    Text(a.request_id),
                    Text(RESERVE),
                    Text(a.fingerprint),
                    Bytes(&a.response),
                    Int(self.now),
                ]
            })
            .collect()
    }

    /// The batch's new reservations as `reservations` rows, in insert-column order.
    fn reservation_rows(&self) -> Vec<Vec<rows::Value>> {
        self.reservations
            .iter()
            .map(rows::reservation_values)
            .collect()
    }
}

impl Engine {
    /// Reserves one blank for one applicant, or refers the applicant to IKD.
    ///
    /// Reserves of one office are queued and decided in batches, each batch in ONE transaction
    /// that locks the office row once (group commit): under a burst the lock is taken and the
    /// commit paid once per batch instead of once per applicant, and every decision still sees
    /// the effect of the ones before it.
    #[tracing::instrument(skip_all, fields(office = %cmd.office_id, service_point = %crate::domain::nik::mask_nik_stretches(&cmd.service_point_id), nik = %cmd.nik.masked()))]
    pub async fn reserve(&self, cmd: ReserveCommand) -> EngineResult<ReserveResponse> {
        let nik_hash = self.nik_key.hash_nik(cmd.nik.as_str());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batcher
            .submit(
                self,
                Job {
                    cmd,
                    nik_hash,
                    reply,
                },
            )
            .await?;
        let mut response = answer.await.map_err(|_| {
            EngineError::Internal("the reservation batch ended without an answer".into())
        })??;
        if let Some(Outcome::Reservation(reservation)) = response.outcome.as_mut()
            && reservation.replayed
        {
            self.refresh_replayed(reservation).await?;
        }
        Ok(response)
    }

    /// A replayed answer (a retry of the request id, or the applicant again) shows its
    /// reservation as it is now, not as it was when first answered: a counter must not print
    /// the card of a reservation that has since been printed, cancelled or let run out. A
    /// reservation only just made in the Reserve journal (the applicant twice in one batch) is
    /// not in the table yet and is answered as it is, held.
    async fn refresh_replayed(&self, reservation: &mut Reservation) -> EngineResult<()> {
        let mut conn = self.store.reader_without_fold().acquire().await?;
        if let Some(row) = rows::reservation(&mut conn, &reservation.reservation_id).await? {
            *reservation = reservation_to_proto(&row, true);
        }
        Ok(())
    }

    /// Decides a batch of Reserves of one office in one transaction (committed, not yet known
    /// durable). A lost race (PostgreSQL) retries the whole batch; any other failure of the
    /// transaction fails every Reserve of the batch (callers retry with the same request_id).
    /// [`Engine::answer_batch`] answers them once the commit is durable.
    ///
    /// `top_up`: more queued Reserves of the office, taken into the batch once the general path
    /// holds the office's row lock (the SQLite hot path does not wait for a lock: it ignores it).
    pub(crate) async fn run_batch(
        &self,
        office_id: &str,
        mut jobs: Vec<Job>,
        mut top_up: TopUp<'_>,
    ) -> DecidedBatch {
        // SQLite: the whole batch on the hot path's own connection, unless it needs what only
        // the general path below does (see `reserve/sqlite.rs`).
        if let Some(outcome) = self.reserve_batch_sqlite(office_id, &jobs).await {
            self.metrics.record_reserve_batch("direct", jobs.len());
            return DecidedBatch {
                office_id: office_id.to_string(),
                jobs,
                outcome,
            };
        }
        let mut attempt = 1;
        let outcome = loop {
            match self
                .reserve_batch_once(office_id, &mut jobs, &mut top_up)
                .await
            {
                Err(err) if err.is_retryable() && attempt < super::MAX_ATTEMPTS => attempt += 1,
                other => break other,
            }
        };
        self.metrics.record_reserve_batch("general", jobs.len());
        DecidedBatch {
            office_id: office_id.to_string(),
            jobs,
            outcome,
        }
    }

    /// Answers a decided batch once its commit is durable, waiting for that on this task.
    pub(crate) async fn answer_batch(&self, batch: DecidedBatch) {
        let durable = match &batch.outcome {
            Ok(_) => self.store.sync().await.map_err(EngineError::from),
            Err(_) => Ok(()),
        };
        self.deliver(batch, durable);
    }

    /// Answers a decided batch once its commit is durable, without waiting for it: on SQLite
    /// the group fsync's thread answers right after the fsync that covers the batch
    /// ([`crate::store::Store::when_durable`]). The office's worker decides the next batch
    /// meanwhile (pipelining: the fsync of one batch overlaps the transaction of the next).
    pub(crate) fn answer_when_durable(self: &Arc<Self>, batch: DecidedBatch) {
        if batch.outcome.is_err() {
            // Nothing was committed: the errors go out at once.
            self.deliver(batch, Ok(()));
            return;
        }
        let engine = Arc::clone(self);
        self.store.when_durable(Box::new(move |durable| {
            engine.deliver(
                batch,
                durable.map_err(|e| EngineError::from(sqlx::Error::Io(e))),
            );
        }));
    }

    /// Answers a batch's calls: its answers when it committed and `durable` says the commit is
    /// durable, else the error for each. Quick and never blocking (it may run on the group
    /// fsync's thread).
    fn deliver(&self, batch: DecidedBatch, durable: EngineResult<()>) {
        let DecidedBatch {
            office_id,
            jobs,
            outcome,
        } = batch;
        // Committed but not known durable: no answer may claim it. A retry with the same
        // request_id gets the stored answer.
        let outcome = durable.and(outcome);
        match outcome {
            Ok((answers, changed)) => {
                if changed {
                    self.hub.office_changed(&office_id);
                }
                for (job, answer) in jobs.into_iter().zip(answers) {
                    let _ = job.reply.send(answer);
                }
            }
            Err(err) => {
                tracing::warn!(office = %office_id, error = %err, "reservation batch failed");
                let answers = err.for_each_call(jobs.len());
                for (job, e) in jobs.into_iter().zip(answers) {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
    }

    async fn reserve_batch_once(
        &self,
        office_id: &str,
        jobs: &mut Vec<Job>,
        top_up: &mut TopUp<'_>,
    ) -> EngineResult<BatchAnswers> {
        let lock = self.store.for_update();
        let mut tx = self.begin().await?;
        let conn: &mut AnyConnection = &mut tx;
        let mut office = Self::office_or_not_found(conn, office_id, lock).await?;
        let added = top_up.take(jobs);
        if added > 0 {
            self.metrics.record_reserve_top_up(added);
        }
        let jobs: &[Job] = jobs;
        let zone = zone_of(&office)?;
        let now = self.clock.now_ms();
        let today = zone.local_date(now);
        let date = format_local_date(today);

        // Everything the decisions read, fetched once for the whole batch (on PostgreSQL in one
        // round trip): the office's quota rows today, stored answers, live reservations of the
        // NIKs, IKD activations, the service points and their queues, and the holds now due.
        let request_ids: Vec<&str> = jobs.iter().map(|j| j.cmd.request_id.as_str()).collect();
        let nik_hashes: Vec<&str> = jobs.iter().map(|j| j.nik_hash.as_str()).collect();
        let not_active: Vec<&str> = if office.ikd_first_required {
            jobs.iter()
                .filter(|j| j.cmd.ikd_status == IkdStatus::NotActive as i32)
                .map(|j| j.nik_hash.as_str())
                .collect()
        } else {
            Vec::new()
        };
        let point_ids = point_ids(jobs);
        let mut keys = rows::BatchKeys {
            office_id,
            local_date: &date,
            since_ms: now - super::QUEUE_REPORT_TTL_MS,
            request_ids: &request_ids,
            nik_hashes: &nik_hashes,
            point_ids: &point_ids,
            ikd_nik_hashes: &not_active,
            due_by_ms: now,
            due_limit: EXPIRY_BATCH,
        };
        let mut reads = rows::batch_reads(conn, &keys).await?;
        let due = std::mem::take(&mut reads.due);
        let mut expired = 0;
        if !due.is_empty() {
            // The first round was read with the rest; more rounds when it was full (bounded:
            // MAX_EXPIRY_ROUNDS).
            expired = self
                .expire_due_bounded(conn, &mut office, now, Some(due))
                .await?;
            // The expiries changed quota rows and maybe a NIK's live reservation: read again.
            keys.due_limit = 0;
            reads = rows::batch_reads(conn, &keys).await?;
        }
        let office_used: i64 = reads.quota_days.iter().map(|q| q.used()).sum();
        let mut state = BatchState::new(
            office,
            zone,
            now,
            office_used,
            Prefetched {
                answers: reads.answers,
                live: reads.live,
                activated: reads.activated,
            },
            &self.sweep_soon,
        );
        state.changed = expired > 0;
        let mut service_points = reads.service_points;
        let mut quota_days: HashMap<String, QuotaDayRow> = reads
            .quota_days
            .into_iter()
            .map(|q| (q.service_point_id.clone(), q))
            .collect();
        let waiting = reads.waiting;
        for id in point_ids {
            let point = match service_points.remove(id) {
                None => Err(EngineError::NotFound {
                    kind: "service point",
                    id: format!("{office_id}/{id}"),
                }),
                Some(sp) => {
                    let qd = quota_days.remove(id);
                    let waiting = waiting.get(id).copied().unwrap_or(0);
                    self.load_point(conn, &state, sp, qd, waiting).await
                }
            };
            if let Err(EngineError::Database(err)) = point {
                return Err(EngineError::Database(err));
            }
            state.points.insert(id.to_string(), point);
        }

        let answers = decide_batch(&mut state, jobs)?;

        // The writes: a few multi-row statements for the whole batch.
        if self.store.kind() == crate::store::DatabaseKind::Postgres {
            self.write_batch_combined(conn, office_id, &state).await?;
        } else {
            self.write_batch(conn, office_id, &state).await?;
        }
        tx.commit().await?;
        Ok((answers, state.changed))
    }

    /// The batch's writes, one statement per table (SQLite: no network between the engine and
    /// its database, so a round trip costs little).
    async fn write_batch(
        &self,
        conn: &mut AnyConnection,
        office_id: &str,
        state: &BatchState<'_>,
    ) -> EngineResult<()> {
        ledger::insert_entries(conn, &state.ledger).await?;
        rows::insert_many(
            conn,
            "reservations",
            &rows::RESERVATION_INSERT_COLUMNS,
            state.reservation_rows(),
        )
        .await?;
        rows::insert_many(
            conn,
            "idempotency",
            &IDEMPOTENCY_COLUMNS,
            state.answer_rows(),
        )
        .await?;
        for (cause, referrals) in &state.referrals {
            rows::add_ikd_referrals(conn, office_id, &state.date, *cause, *referrals).await?;
        }
        for point in state.points.values().filter_map(|p| p.as_ref().ok()) {
            if point.dirty {
                rows::update_quota_day(conn, &point.qd).await?;
            }
        }
        if state.changed {
            rows::update_office_stock(conn, &state.office).await?;
            self.announce_in_tx(conn, office_id).await?;
        }
        Ok(())
    }

    /// The batch's writes as ONE PostgreSQL statement (data-modifying CTEs), ending with the
    /// NOTIFY to the other replicas: one round trip while the office row is locked instead of
    /// one per table, in a statement whose text does not change with the batch's size.
    async fn write_batch_combined(
        &self,
        conn: &mut AnyConnection,
        office_id: &str,
        state: &BatchState<'_>,
    ) -> EngineResult<()> {
        let mut write = rows::CombinedWrite::default();
        write.insert(
            "ledger",
            &ledger::LEDGER_COLUMNS,
            ledger::entry_rows(&state.ledger),
        );
        write.insert(
            "reservations",
            &rows::RESERVATION_INSERT_COLUMNS,
            state.reservation_rows(),
        );
        write.insert("idempotency", &IDEMPOTENCY_COLUMNS, state.answer_rows());
        write.rows(
            rows::IKD_REFERRALS_UPSERT_ROWS,
            &rows::IKD_REFERRALS_COLUMNS,
            state
                .referrals
                .iter()
                .map(|(cause, referrals)| {
                    rows::ikd_referrals_upsert(office_id, &state.date, *cause, *referrals).1
                })
                .collect(),
        );
        write.rows(
            rows::QUOTA_DAY_UPDATE_ROWS,
            &rows::QUOTA_DAY_UPDATE_COLUMNS,
            state
                .points
                .values()
                .filter_map(|p| p.as_ref().ok())
                .filter(|point| point.dirty)
                .map(|point| rows::quota_day_update(&point.qd).1)
                .collect(),
        );
        if state.changed {
            let (sql, values) = rows::office_stock_update(&state.office);
            write.statement(sql, values);
            write
                .execute(
                    conn,
                    "SELECT pg_notify($1, $2)",
                    vec![
                        rows::Value::Text(super::notify::CHANNEL.to_string()),
                        rows::Value::Text(office_id.to_string()),
                    ],
                )
                .await?;
        } else {
            // Only answers to store (replays, referrals): no stock moved, nobody to tell.
            write.execute(conn, "SELECT 1", Vec::new()).await?;
        }
        Ok(())
    }

    /// A service point's state for the batch, from its row, its quota row today (created here
    /// when no transaction has touched the day yet) and its queue.
    async fn load_point(
        &self,
        conn: &mut AnyConnection,
        state: &BatchState<'_>,
        sp: rows::ServicePointRow,
        qd: Option<QuotaDayRow>,
        waiting: i64,
    ) -> EngineResult<PointState> {
        let office_id = state.office.office_id.as_str();
        let qd = match qd {
            Some(qd) => qd,
            None => {
                super::quota_day_for_update(
                    conn,
                    self.store.for_update(),
                    &state.office,
                    &sp,
                    state.today,
                )
                .await?
            }
        };
        let config = Arc::new(PointConfig::of(&sp)?);
        let by_reason = if config.policy.reason_caps.is_empty() {
            HashMap::new()
        } else {
            rows::live_counts_by_reason(conn, office_id, &sp.service_point_id, &state.date).await?
        };
        Ok(PointState::new(config, qd, waiting, by_reason))
    }

    /// The answer stored for `request_id` (a scoped key), if any; ALREADY_EXISTS if it was for
    /// other content. An answer an older server stored under the id alone counts too, when it is
    /// for the same content (for other content it is taken for another caller's, and ignored)
    /// ([`crate::nik_key::NikKey::unscoped_request_key`]): a retry across an upgrade must not do
    /// its work twice (a transfer, a spoiled blank). Reserve does not look there: its NIK's live
    /// reservation answers a retry in any case.
    pub(crate) async fn stored_answer(
        &self,
        conn: &mut AnyConnection,
        request_id: &str,
        method: &str,
        fingerprint: &str,
    ) -> EngineResult<Option<Vec<u8>>> {
        let mut stored = rows::stored_answer(conn, request_id).await?;
        let mut older_form = false;
        if stored.is_none()
            && let Some(unscoped) = crate::nik_key::NikKey::unscoped_request_key(request_id)
        {
            stored = rows::stored_answer(conn, unscoped).await?;
            older_form = stored.is_some();
        }
        match stored {
            None => Ok(None),
            Some(a) if a.method == method && a.fingerprint == fingerprint => {
                // The first call may have committed this answer without its fsync having ended
                // yet (a retry after a time-out): the answer goes out only once it is durable.
                self.store.sync().await?;
                Ok(Some(a.response))
            }
            // An older server's answer for other content: most likely another caller's request
            // that happened to use the same id (ids were not scoped then), not a reuse by this
            // caller. It is not this request's answer, and does not refuse it.
            Some(_) if older_form => Ok(None),
            Some(a) => Err(request_id_reused(request_id, &a.method)),
        }
    }

    /// Tells other replicas (PostgreSQL NOTIFY, delivered at commit) that an office changed.
    pub(crate) async fn announce_in_tx(
        &self,
        conn: &mut AnyConnection,
        office_id: &str,
    ) -> EngineResult<()> {
        if self.store.kind() == crate::store::DatabaseKind::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(super::notify::CHANNEL)
                .bind(office_id)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// One Reserve of the batch, decided in memory. An error leaves the batch state untouched.
fn decide_one<'a>(
    state: &mut BatchState<'a>,
    cmd: &'a ReserveCommand,
    nik_hash: &'a str,
) -> EngineResult<ReserveResponse> {
    // The same request id again (stored earlier, or earlier in this batch).
    if let Some((method, fingerprint, bytes)) = state.answer(&cmd.request_id) {
        if method != RESERVE || fingerprint != cmd.fingerprint {
            return Err(request_id_reused(&cmd.request_id, method));
        }
        let mut response: ReserveResponse = super::decode_answer(bytes)?;
        match response.outcome.as_mut() {
            Some(Outcome::Reservation(r)) => r.replayed = true,
            Some(Outcome::IkdReferral(r)) => r.replayed = true,
            None => {}
        }
        return Ok(response);
    }
    let point = match state.points.get(&cmd.service_point_id) {
        Some(Ok(point)) => point,
        Some(Err(EngineError::NotFound { kind, id })) => {
            return Err(EngineError::NotFound {
                kind,
                id: id.clone(),
            });
        }
        Some(Err(e)) => return Err(EngineError::Internal(e.to_string())),
        None => return Err(EngineError::Internal("service point not loaded".into())),
    };

    // One person, one blank a day (rule 7).
    if let Some(existing) = state.live_of(nik_hash) {
        if existing.office_id != cmd.office_id || existing.service_point_id != cmd.service_point_id
        {
            // A hold elsewhere that has run out, which that office's batches or the sweeper have
            // not released yet (a batch releases its own office's only): the applicant is free
            // in a moment. The sweeper is woken now; until it has run, the Reserve is answered
            // "retry", not "reserved elsewhere", so the answer does not hang on its timing.
            // Only just run out: a hold overdue for longer than that is one the sweeper cannot
            // release (it fails on that office), and the applicant is told where it is.
            if existing.state == crate::domain::reservation::State::Held.as_str()
                && existing.expires_ms <= state.now
                && state.now - existing.expires_ms < EARLIER_HOLD_RELEASE_WINDOW_MS
            {
                state.sweep_soon.notify_one();
                return Err(EngineError::Retry {
                    reason: "EARLIER_HOLD_RELEASING",
                    message: "this applicant's hold at another office has just run out and is being released; send the same request again in a moment".into(),
                    indonesian: "masa tahan pemohon ini di kantor lain baru habis dan sedang dilepas; kirim permintaan yang sama sebentar lagi".into(),
                    retry_after: EARLIER_HOLD_RETRY,
                });
            }
            return Err(EngineError::FailedPrecondition {
                reason: "ALREADY_RESERVED_ELSEWHERE",
                message: format!(
                    "this applicant already holds a blank today at office {} service point {}",
                    existing.office_id, existing.service_point_id
                ),
                indonesian: format!(
                    "pemohon ini sudah mendapat blangko hari ini di kantor {} tempat layanan {}",
                    existing.office_id, existing.service_point_id
                ),
            });
        }
        let response = ReserveResponse {
            outcome: Some(Outcome::Reservation(reservation_to_proto(existing, true))),
            quota: Some(batch_snapshot(state, point)?),
        };
        record_answer(state, cmd, &response);
        return Ok(response);
    }

    let outcome = match admission(state, point, cmd, nik_hash)? {
        Some((cause, opens_at_release)) => {
            let referral = referral(
                cause,
                opens_at_release,
                state.zone,
                state.today,
                &state.office,
                &point.config.policy,
                &point.config.calendar,
            );
            *state.referrals.entry(referral.cause).or_insert(0) += 1;
            Outcome::IkdReferral(referral)
        }
        None => {
            // Everything that can refuse comes first: the quota invariant with one more hold,
            // then the ledger chain's stock checks (which change the office row only when they
            // pass). The batch's state changes only after both.
            let is_priority = point.config.priority.contains(&cmd.reason);
            quota_invariant_with(&point.qd, 1)?;
            let reservation_id = new_reservation_id(state.now);
            let masked_nik = cmd.nik.masked();
            let mut entry = NewEntry::of(LedgerEntryKind::Reserve);
            entry.held_delta = 1;
            entry.service_point_id = cmd.service_point_id.clone();
            entry.reservation_id = reservation_id.clone();
            entry.masked_nik = masked_nik.clone();
            let stored = ledger::chain(
                &mut state.office,
                entry,
                &cmd.principal,
                state.now,
                &state.date,
            )?;
            let office = &state.office;
            let reservation = ReservationRow {
                reservation_id,
                office_id: cmd.office_id.clone(),
                office_seq: office.ledger_seq,
                service_point_id: cmd.service_point_id.clone(),
                counter_id: cmd.counter_id.clone(),
                local_date: state.date.clone(),
                nik_hash: nik_hash.to_string(),
                masked_nik,
                reason: i64::from(cmd.reason),
                priority: is_priority,
                ikd_status: i64::from(cmd.ikd_status),
                state: "HELD".to_string(),
                created_ms: state.now,
                expires_ms: state.now + office.hold_ttl_secs.max(1) * 1000,
                committed_ms: 0,
                spoiled_count: 0,
            };
            let proto = reservation_to_proto(&reservation, false);
            state.ledger.push(stored);
            state.office_used += 1;
            state.changed = true;
            state.made.insert(nik_hash, state.reservations.len());
            state.reservations.push(reservation);
            if let Some(Ok(point)) = state.points.get_mut(&cmd.service_point_id) {
                point.qd.held += 1;
                if is_priority {
                    point.qd.priority_used += 1;
                }
                point.dirty = true;
                *point.by_reason.entry(i64::from(cmd.reason)).or_insert(0) += 1;
            }
            Outcome::Reservation(proto)
        }
    };
    let Some(Ok(point)) = state.points.get(&cmd.service_point_id) else {
        return Err(EngineError::Internal(
            "service point vanished from the batch".into(),
        ));
    };
    let response = ReserveResponse {
        outcome: Some(outcome),
        quota: Some(batch_snapshot(state, point)?),
    };
    record_answer(state, cmd, &response);
    Ok(response)
}

/// The distinct service points of a batch's Reserves, sorted.
fn point_ids(jobs: &[Job]) -> Vec<&str> {
    let mut ids: Vec<&str> = jobs
        .iter()
        .map(|j| j.cmd.service_point_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The decisions of a batch, in arrival order, in memory; then the quota invariant of every
/// quota row they changed, checked before anything is written.
fn decide_batch<'a>(
    state: &mut BatchState<'a>,
    jobs: &'a [Job],
) -> EngineResult<Vec<EngineResult<ReserveResponse>>> {
    let answers = jobs
        .iter()
        .map(|job| decide_one(state, &job.cmd, &job.nik_hash))
        .collect();
    for point in state
        .points
        .values()
        .filter_map(|p| p.as_ref().ok())
        .filter(|p| p.dirty)
    {
        check_quota_invariant(&point.qd)?;
    }
    Ok(answers)
}

/// ALREADY_EXISTS for a request id used before for other content.
fn request_id_reused(request_id: &str, method: &str) -> EngineError {
    let request_id = crate::domain::nik::mask_nik_stretches(
        crate::nik_key::NikKey::shown_request_id(request_id),
    );
    EngineError::AlreadyExists {
        reason: "REQUEST_ID_REUSED",
        message: format!(
            "request_id '{request_id}' was already used for another {method} request; use a new request_id for a new request"
        ),
        indonesian: format!(
            "request_id '{request_id}' sudah dipakai untuk permintaan {method} lain; pakai request_id baru untuk permintaan baru"
        ),
    }
}

/// An answer given in the batch, kept for its end (and for a repeat of its request id in the
/// batch).
struct NewAnswer<'a> {
    request_id: &'a str,
    fingerprint: &'a str,
    response: Vec<u8>,
}

/// Keeps an answer for the end of the batch (and for a repeat of its request id in the batch).
fn record_answer<'a>(
    state: &mut BatchState<'a>,
    cmd: &'a ReserveCommand,
    response: &ReserveResponse,
) {
    state.given.insert(&cmd.request_id, state.new_answers.len());
    state.new_answers.push(NewAnswer {
        request_id: &cmd.request_id,
        fingerprint: &cmd.fingerprint,
        response: response.encode_to_vec(),
    });
}

/// The snapshot of a service point from the batch's state.
fn batch_snapshot(state: &BatchState<'_>, point: &PointState) -> EngineResult<QuotaSnapshot> {
    snapshot_from(
        &state.office,
        &point.config.policy,
        &point.qd,
        state.zone,
        state.now,
        &SnapshotExtras {
            office_used: state.office_used,
            waiting: point.waiting,
        },
    )
}

/// Decides whether the applicant may have a blank: None admits, Some names the referral.
fn admission(
    state: &BatchState<'_>,
    point: &PointState,
    cmd: &ReserveCommand,
    nik_hash: &str,
) -> EngineResult<Option<(ReferralKind, bool)>> {
    // IKD first (rule 8): the office requires an active IKD, an exemption, or a recorded activation.
    if state.office.ikd_first_required {
        if cmd.ikd_status == IkdStatus::Unspecified as i32 {
            return Err(EngineError::invalid(
                "ikd_status",
                "this office requires IKD first: say whether the applicant's IKD is ACTIVE, NOT_ACTIVE or EXEMPT",
                "kantor ini mewajibkan IKD lebih dulu: sebutkan apakah IKD pemohon ACTIVE, NOT_ACTIVE atau EXEMPT",
            ));
        }
        if cmd.ikd_status == IkdStatus::NotActive as i32 && !state.activated.contains(nik_hash) {
            return Ok(Some((ReferralKind::IkdRequired, false)));
        }
    }
    let is_priority = point.config.priority.contains(&cmd.reason);
    let mut input = admission_figures(
        &state.office,
        &point.config.policy,
        &point.qd,
        state.zone,
        state.today,
        state.now,
        is_priority,
        state.office_used,
    );
    input.reason_caps = cap_uses(&point.config.policy, cmd.reason, &point.by_reason);
    Ok(quota::decide(&input).err().map(|refusal| {
        (
            ReferralKind::from(refusal),
            quota::kept_for_priority_until_release(&input),
        )
    }))
}

/// The reason-group caps of `policy` that count `reason`, each with its use today
/// (`by_reason`: live reservations of the service point's day per reason).
pub(crate) fn cap_uses(
    policy: &QuotaPolicy,
    reason: i32,
    by_reason: &HashMap<i64, i64>,
) -> Vec<CapUse> {
    policy
        .reason_caps
        .iter()
        .filter(|cap| cap.reasons.contains(&reason))
        .map(|cap| {
            let used: i64 = cap
                .reasons
                .iter()
                .map(|r| by_reason.get(&i64::from(*r)).copied().unwrap_or(0))
                .sum();
            CapUse {
                cap: u64::from(cap.daily_cap),
                used: used.max(0) as u64,
            }
        })
        .collect()
}

/// Asserts the quota invariant before writing a quota day (the database checks it too).
pub(crate) fn check_quota_invariant(qd: &QuotaDayRow) -> EngineResult<()> {
    quota_invariant_with(qd, 0)
}

/// [`check_quota_invariant`] of `qd` with `more_held` more holds, without changing it.
fn quota_invariant_with(qd: &QuotaDayRow, more_held: i64) -> EngineResult<()> {
    let held = qd.held + more_held;
    if held < 0 || qd.committed < 0 || held + qd.committed > qd.quota {
        return Err(EngineError::Internal(format!(
            "quota invariant broken at {}/{} on {}: held {} + committed {} > quota {}",
            qd.office_id, qd.service_point_id, qd.local_date, held, qd.committed, qd.quota
        )));
    }
    Ok(())
}

/// The IKD referral for a refusal, with when quota opens again. `opens_at_release`: a
/// QuotaExhausted that only the share kept for priority reasons caused, before the release time
/// ([`quota::kept_for_priority_until_release`]), which opens at the release time today.
pub(crate) fn referral(
    kind: ReferralKind,
    opens_at_release: bool,
    zone: OfficeZone,
    today: NaiveDate,
    office: &OfficeRow,
    policy: &QuotaPolicy,
    calendar: &ServiceCalendar,
) -> IkdReferral {
    let next_day = calendar
        .next_service_day_after(today)
        .map(|d| zone.start_of_day_ms(d));
    let release = release_at_ms(zone, today, policy);
    let next_ms = match kind {
        ReferralKind::IkdRequired => None,
        // The priority share is what stopped a non-priority reason: it opens at the release time.
        ReferralKind::QuotaExhausted if opens_at_release => Some(release),
        // No blanks: the next supply, when one is expected after today.
        ReferralKind::OutOfStock => parse_local_date(&office.expected_next_supply_date)
            .ok()
            .filter(|d| *d > today)
            .map(|d| zone.start_of_day_ms(d)),
        _ => next_day,
    };
    let text = referral_text_at(kind, zone, next_ms);
    let cause = match kind {
        ReferralKind::Closed => ReferralCause::Closed,
        ReferralKind::OutOfStock => ReferralCause::OutOfStock,
        ReferralKind::QuotaExhausted => ReferralCause::QuotaExhausted,
        ReferralKind::ReasonCapReached => ReferralCause::ReasonCapReached,
        ReferralKind::IkdRequired => ReferralCause::IkdRequired,
    };
    IkdReferral {
        cause: cause as i32,
        message_indonesian: text.indonesian,
        message_english: text.english,
        activation_steps_indonesian: text.steps_indonesian,
        activation_steps_english: text.steps_english,
        next_quota_at: next_ms.map(timestamp),
        replayed: false,
    }
}
