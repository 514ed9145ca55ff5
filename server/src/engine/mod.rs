//! The engine: every operation of the API as one database transaction over the store, applying
//! the pure rules of `domain`. Files:
//! - `reserve.rs`: Reserve (the hot path), with `reserve/sqlite.rs`: a batch run whole on SQLite's
//!   hot-path connection;
//! - `holds.rs`: commit, cancel, spoiled blanks, IKD activation, hold expiry;
//! - `stock.rs`: offices, service points, shipments, transfers, stock-takes, quota policies;
//! - `queries.rs`: snapshots, stock levels, listings (read-only);
//! - `ledger.rs`: the hash-chained stock ledger;
//! - `report.rs`: the daily stock report, computed from the ledger;
//! - `watch.rs`: live quota snapshots for WatchQuota;
//! - `sweeper.rs`: the background task that expires holds.

pub mod batch;
pub mod error;
pub mod holds;
pub mod ledger;
pub mod notify;
pub mod queries;
pub mod report;
pub mod reserve;
pub mod retention;
pub mod scope;
pub mod stock;
pub mod sweeper;
pub mod verify;
pub mod watch;

use std::sync::Arc;

use blangko_proto::v1::{QuotaMode, QuotaPolicy, Reservation, ReservationState};
use chrono::NaiveDate;
use prost::Message;
use sqlx::AnyConnection;

pub use error::{EngineError, EngineResult, FieldViolation, is_unavailable};

use crate::clock::Clock;
use crate::domain::calendar::{OfficeZone, ServiceCalendar, format_local_date, parse_local_date};
use crate::domain::quota;
use crate::domain::reason::Reason;
use crate::nik_key::NikKey;
use crate::store::rows::{self, OfficeRow, QuotaDayRow, ReservationRow, ServicePointRow};
use crate::store::{Store, Tx};

/// How many times a transaction that lost a race (PostgreSQL unique violation, serialization
/// failure, deadlock) is tried again before the error goes to the caller.
pub const MAX_ATTEMPTS: u32 = 4;
/// Most expired holds released in one round (one read of the due holds).
pub const EXPIRY_BATCH: i64 = 500;
/// Most rounds of [`EXPIRY_BATCH`] a transaction that needs its office's holds released (a
/// Reserve batch, a late commit, a transfer, a stock-take, a quota change) runs: 1,000 holds, a
/// queue file's whole morning run out at once, about 4,000 statements under the office lock.
/// Past it the rest counts as held (a refusal too many, never a card too many) and the sweeper is
/// woken; the sweeper runs one round per transaction.
pub const MAX_EXPIRY_ROUNDS: usize = 2;
/// A counter's queue report counts for this long after its last refresh (DESIGN rule 12).
pub const QUEUE_REPORT_TTL_MS: i64 = 120_000;
/// A queue report this old is deleted by the sweeper (it stopped counting long before): the
/// table keeps about one row per counter that reported lately.
pub const QUEUE_REPORT_KEEP_MS: i64 = 10 * QUEUE_REPORT_TTL_MS;
/// Most counters of one service point whose queue reports count at once.
pub const MAX_COUNTERS_PER_POINT: i64 = 256;
/// The default priority release time, when a policy gives none.
pub const DEFAULT_RELEASE_TIME: &str = "12:00";
/// Service days of history for the mean daily use behind "days of cover".
pub const COVER_HISTORY_DAYS: usize = 14;

/// The stock and quota engine, shared by every gRPC handler.
pub struct Engine {
    /// The database.
    pub store: Store,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Turns NIKs into keyed hashes.
    pub nik_key: NikKey,
    /// Live snapshots for watchers.
    pub hub: watch::WatchHub,
    /// The per-office Reserve queues (group commit).
    pub batcher: batch::Batcher,
    /// Process start (unix ms), for GetServerInfo.
    pub started_ms: i64,
    /// Counters and histograms for the metrics endpoint (shared with the layers in front).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The local date before which every reservation's NIK hash is purged already (found by the
    /// last complete retention purge), so that the next one reads only the days since.
    pub(crate) purged_before: std::sync::Mutex<Option<String>>,
    /// The offices' rows the SQLite hot path keeps between Reserve batches.
    pub(crate) kept_offices: reserve::KeptOffices,
    /// Wakes the sweeper before its next tick: a Reserve met a hold at another office that has
    /// run out but was not released yet (see `reserve::decide_one`), or more holds ran out than
    /// one transaction releases ([`MAX_EXPIRY_ROUNDS`], and the sweeper's one round).
    pub(crate) sweep_soon: tokio::sync::Notify,
    /// The last office the sweeper's previous pass reached when it stopped at its bound ("" to
    /// start at the first): the next pass goes on from there.
    pub(crate) sweep_after: std::sync::Mutex<String>,
}

impl Engine {
    /// An engine over an open store, shared (its Reserve workers hold a reference).
    pub fn shared(
        store: Store,
        clock: Arc<dyn Clock>,
        nik_key: NikKey,
        max_watchers: usize,
        watch_refresh: std::time::Duration,
        reserve_batch_size: usize,
    ) -> Arc<Self> {
        let mut engine = Self::new(store, clock, nik_key, max_watchers, watch_refresh);
        engine.batcher = batch::Batcher::new(reserve_batch_size);
        let engine = Arc::new(engine);
        engine.batcher.attach(&engine);
        engine
    }

    /// An engine over an open store.
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        nik_key: NikKey,
        max_watchers: usize,
        watch_refresh: std::time::Duration,
    ) -> Self {
        let started_ms = clock.now_ms();
        Engine {
            store,
            clock,
            nik_key,
            hub: watch::WatchHub::new(max_watchers, watch_refresh),
            batcher: batch::Batcher::default(),
            started_ms,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            purged_before: std::sync::Mutex::new(None),
            kept_offices: reserve::KeptOffices::default(),
            sweep_soon: tokio::sync::Notify::new(),
            sweep_after: std::sync::Mutex::new(String::new()),
        }
    }

    /// Runs `op` in a fresh write transaction, again after a lost race (bounded).
    pub(crate) async fn with_retry<T, F, Fut>(&self, mut op: F) -> EngineResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = EngineResult<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(err) if err.is_retryable() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, "transaction lost a race; trying again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Starts a write transaction.
    pub(crate) async fn begin(&self) -> EngineResult<Tx> {
        Ok(self.store.begin().await?)
    }

    /// Commits a transaction and returns once it is durable (see [`crate::store::Store::sync`]):
    /// nobody is answered about a write that a power loss could still take back.
    pub(crate) async fn commit_durably(&self, tx: Tx) -> EngineResult<()> {
        tx.commit().await?;
        self.store.sync().await?;
        Ok(())
    }
}

/// A protobuf timestamp from unix ms.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The office's zone; stored zones were validated on the way in.
pub(crate) fn zone_of(office: &OfficeRow) -> EngineResult<OfficeZone> {
    OfficeZone::parse(&office.time_zone).map_err(|e| EngineError::Internal(e.to_string()))
}

/// The service point's calendar: its weekdays and holidays.
pub(crate) fn calendar_of(sp: &ServicePointRow) -> ServiceCalendar {
    let mut weekdays = [false; 7];
    for (i, c) in sp.service_days.chars().take(7).enumerate() {
        weekdays[i] = c == '1';
    }
    let holidays = sp
        .holidays
        .split(',')
        .filter_map(|d| parse_local_date(d).ok())
        .collect();
    ServiceCalendar { weekdays, holidays }
}

/// An answer stored for idempotency, decoded again (a stored answer that no longer decodes is
/// corrupt data: INTERNAL).
pub(crate) fn decode_answer<M: Message + Default>(bytes: &[u8]) -> EngineResult<M> {
    M::decode(bytes).map_err(|e| EngineError::Internal(format!("stored answer: {e}")))
}

/// The stored policy of a service point.
pub(crate) fn policy_of(sp: &ServicePointRow) -> EngineResult<QuotaPolicy> {
    QuotaPolicy::decode(sp.policy.as_slice())
        .map_err(|e| EngineError::Internal(format!("stored policy does not decode: {e}")))
}

/// The reasons that may use the priority share (the default when the policy names none).
pub(crate) fn priority_reasons(policy: &QuotaPolicy) -> Vec<i32> {
    if policy.priority_reasons.is_empty() {
        Reason::default_priority()
            .into_iter()
            .map(reason_to_proto)
            .collect()
    } else {
        policy.priority_reasons.clone()
    }
}

/// Unix ms of today's priority release.
pub(crate) fn release_at_ms(zone: OfficeZone, today: NaiveDate, policy: &QuotaPolicy) -> i64 {
    let text = if policy.priority_release_local_time.is_empty() {
        DEFAULT_RELEASE_TIME
    } else {
        policy.priority_release_local_time.as_str()
    };
    let time = crate::domain::calendar::parse_local_time(text)
        .or_else(|_| crate::domain::calendar::parse_local_time(DEFAULT_RELEASE_TIME))
        .unwrap_or(chrono::NaiveTime::MIN);
    zone.at_ms(today, time)
}

/// The wire value of a domain reason.
pub fn reason_to_proto(r: Reason) -> i32 {
    use blangko_proto::v1::Reason as P;
    (match r {
        Reason::NewRecording => P::NewRecording,
        Reason::FirstTimeVoter => P::FirstTimeVoter,
        Reason::RegionSplit => P::RegionSplit,
        Reason::DataChange => P::DataChange,
        Reason::Vulnerable => P::Vulnerable,
        Reason::Lost => P::Lost,
        Reason::Damaged => P::Damaged,
    }) as i32
}

/// The domain reason of a wire value (None for UNSPECIFIED and unknown numbers).
pub fn reason_from_proto(value: i32) -> Option<Reason> {
    use blangko_proto::v1::Reason as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::NewRecording => Reason::NewRecording,
        P::FirstTimeVoter => Reason::FirstTimeVoter,
        P::RegionSplit => Reason::RegionSplit,
        P::DataChange => Reason::DataChange,
        P::Vulnerable => Reason::Vulnerable,
        P::Lost => Reason::Lost,
        P::Damaged => Reason::Damaged,
    })
}

/// The wire form of a stored reservation.
pub(crate) fn reservation_to_proto(r: &ReservationRow, replayed: bool) -> Reservation {
    let state = match r.state.as_str() {
        "HELD" => ReservationState::Held,
        "COMMITTED" => ReservationState::Committed,
        "CANCELLED" => ReservationState::Cancelled,
        "EXPIRED" => ReservationState::Expired,
        _ => ReservationState::Unspecified,
    };
    Reservation {
        reservation_id: r.reservation_id.clone(),
        office_id: r.office_id.clone(),
        service_point_id: r.service_point_id.clone(),
        counter_id: r.counter_id.clone(),
        local_date: r.local_date.clone(),
        state: state as i32,
        reason: r.reason as i32,
        masked_nik: r.masked_nik.clone(),
        created_at: Some(timestamp(r.created_ms)),
        expires_at: Some(timestamp(r.expires_ms)),
        committed_at: (r.committed_ms > 0).then(|| timestamp(r.committed_ms)),
        spoiled_count: r.spoiled_count as u32,
        replayed,
    }
}

/// A new reservation id: `R`, the creation time (12 hex digits of unix ms) and 12 hex digits of
/// randomness. Ids made later sort later, so new rows land at the end of the primary-key index
/// instead of on a random page of it (a random key dirtied one more page per Reserve).
pub(crate) fn new_reservation_id(now_ms: i64) -> String {
    let bytes: [u8; 6] = rand::random();
    format!(
        "R{:012x}{}",
        now_ms.max(0) & 0xffff_ffff_ffff,
        crate::lower_hex(&bytes)
    )
}

/// The quota of a (service point, day) that no transaction has touched yet: computed from the
/// policy and, for PACED, from the office stock at the start of the day.
pub(crate) async fn compute_quota_day(
    conn: &mut AnyConnection,
    office: &OfficeRow,
    sp: &ServicePointRow,
    today: NaiveDate,
) -> EngineResult<QuotaDayRow> {
    let paced = if paced_on(sp, today)? {
        let siblings = rows::service_points_of(conn, &office.office_id).await?;
        let date = format_local_date(today);
        let days = rows::quota_days_of_office(conn, &office.office_id, &date).await?;
        Some(PacedFigures::of(&siblings, &days))
    } else {
        None
    };
    quota_day_from(office, sp, today, paced)
}

/// [`compute_quota_day`] with the office's service points and quota rows of `today` in hand.
pub(crate) fn quota_day_among(
    office: &OfficeRow,
    sp: &ServicePointRow,
    today: NaiveDate,
    siblings: &[ServicePointRow],
    days: &[QuotaDayRow],
) -> EngineResult<QuotaDayRow> {
    let paced = paced_on(sp, today)?.then(|| PacedFigures::of(siblings, days));
    quota_day_from(office, sp, today, paced)
}

/// Whether a service point's quota on `day` is paced on the office's stock, so that computing
/// its quota row needs [`PacedFigures`].
pub(crate) fn paced_on(sp: &ServicePointRow, day: NaiveDate) -> EngineResult<bool> {
    let policy = policy_of(sp)?;
    Ok(policy.mode == QuotaMode::Paced as i32 && calendar_of(sp).is_service_day(day))
}

/// What a PACED quota is shared out by, read from the office's rows.
pub(crate) struct PacedFigures {
    /// The weights of the office's PACED service points, summed.
    total_weight: u64,
    /// Held plus committed today over the office.
    used_today: i64,
}

impl PacedFigures {
    /// From the office's service points and its quota rows of the day.
    pub(crate) fn of(siblings: &[ServicePointRow], days: &[QuotaDayRow]) -> PacedFigures {
        PacedFigures {
            total_weight: siblings
                .iter()
                .filter(|s| s.quota_mode == QuotaMode::Paced as i64)
                .map(|s| s.weight.max(0) as u64)
                .sum(),
            used_today: days.iter().map(|q| q.used()).sum(),
        }
    }
}

/// A service point's quota row for `today` as it would be created, from figures in hand (`paced`
/// is required when [`paced_on`] says so).
pub(crate) fn quota_day_from(
    office: &OfficeRow,
    sp: &ServicePointRow,
    today: NaiveDate,
    paced: Option<PacedFigures>,
) -> EngineResult<QuotaDayRow> {
    let policy = policy_of(sp)?;
    let calendar = calendar_of(sp);
    let closed = !calendar.is_service_day(today);
    let mut supply_overdue = false;
    let quota = if closed {
        0
    } else if policy.mode == QuotaMode::Paced as i32 {
        let Some(paced) = paced else {
            return Err(EngineError::Internal(
                "a paced quota was computed without the office's figures".into(),
            ));
        };
        let expected = parse_local_date(&office.expected_next_supply_date).ok();
        let horizon = office.fallback_horizon_days.max(1) as u32;
        let (days, overdue) = quota::days_left(&calendar, today, expected, horizon);
        supply_overdue = overdue;
        // The stock at the start of the day: what is available now plus what the office has
        // already handed out today, so the service point touched last is not paced on less.
        let stock = (office.available() + paced.used_today).max(0) as u64;
        quota::paced_quota(stock, policy.weight, paced.total_weight, days) as i64
    } else {
        i64::from(policy.fixed_daily_quota)
    };
    Ok(QuotaDayRow {
        office_id: office.office_id.clone(),
        service_point_id: sp.service_point_id.clone(),
        local_date: format_local_date(today),
        quota,
        held: 0,
        committed: 0,
        priority_used: 0,
        closed,
        supply_overdue,
    })
}

/// Today's quota row, created (computed and stored) if this is the first transaction to touch it.
pub(crate) async fn quota_day_for_update(
    conn: &mut AnyConnection,
    lock: &str,
    office: &OfficeRow,
    sp: &ServicePointRow,
    day: NaiveDate,
) -> EngineResult<QuotaDayRow> {
    let date = format_local_date(day);
    if let Some(q) =
        rows::quota_day(conn, &office.office_id, &sp.service_point_id, &date, lock).await?
    {
        return Ok(q);
    }
    let q = compute_quota_day(conn, office, sp, day).await?;
    rows::insert_quota_day(conn, &q).await?;
    Ok(q)
}
