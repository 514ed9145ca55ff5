//! Typed rows and the queries that read and write them. Every function takes the executor it
//! runs on, so the same code serves a write transaction and the read pool.

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// Where the typed rows below read their columns: a sqlx row, or a row of the SQLite hot
/// path's own connection (`store::direct`), so both decode through the same code.
pub trait Columns {
    /// The source's error type.
    type Error;
    /// A TEXT column.
    fn text(&self, column: &str) -> Result<String, Self::Error>;
    /// An integer column.
    fn int(&self, column: &str) -> Result<i64, Self::Error>;
    /// A BLOB/BYTEA column.
    fn bytes(&self, column: &str) -> Result<Vec<u8>, Self::Error>;
    /// A 0/1 integer column.
    fn flag(&self, column: &str) -> Result<bool, Self::Error> {
        Ok(self.int(column)? != 0)
    }
}

impl Columns for AnyRow {
    type Error = sqlx::Error;
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
        self.try_get(column)
    }
}

/// `offices` row.
#[derive(Debug, Clone)]
pub struct OfficeRow {
    pub office_id: String,
    pub name: String,
    pub time_zone: String,
    pub province_code: String,
    pub daily_cap: i64,
    pub expected_next_supply_date: String,
    pub fallback_horizon_days: i64,
    pub ikd_first_required: bool,
    pub hold_ttl_secs: i64,
    pub on_hand: i64,
    pub held: i64,
    pub ledger_seq: i64,
    pub ledger_head: String,
}

pub const OFFICE_COLUMNS: &str = "office_id, name, time_zone, province_code, daily_cap, expected_next_supply_date, fallback_horizon_days, ikd_first_required, hold_ttl_secs, on_hand, held, ledger_seq, ledger_head";

impl OfficeRow {
    pub fn from_row<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(OfficeRow {
            office_id: row.text("office_id")?,
            name: row.text("name")?,
            time_zone: row.text("time_zone")?,
            province_code: row.text("province_code")?,
            daily_cap: row.int("daily_cap")?,
            expected_next_supply_date: row.text("expected_next_supply_date")?,
            fallback_horizon_days: row.int("fallback_horizon_days")?,
            ikd_first_required: row.flag("ikd_first_required")?,
            hold_ttl_secs: row.int("hold_ttl_secs")?,
            on_hand: row.int("on_hand")?,
            held: row.int("held")?,
            ledger_seq: row.int("ledger_seq")?,
            ledger_head: row.text("ledger_head")?,
        })
    }

    /// on_hand - held.
    pub fn available(&self) -> i64 {
        self.on_hand - self.held
    }
}

/// Reads an office; `lock` is the engine's `FOR UPDATE` suffix (empty for plain reads).
pub async fn office(
    conn: &mut AnyConnection,
    office_id: &str,
    lock: &str,
) -> Result<Option<OfficeRow>, sqlx::Error> {
    let sql = format!("{}{lock}", *OFFICE_BY_ID);
    let row = sqlx::query(&sql)
        .bind(office_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(OfficeRow::from_row).transpose()
}

/// Offices ordered by id after `after`, optionally of one province.
pub async fn offices_page(
    conn: &mut AnyConnection,
    province_code: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<OfficeRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {OFFICE_COLUMNS} FROM offices WHERE office_id > $1 AND ($2 = '' OR province_code = $2) ORDER BY office_id LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(after)
        .bind(province_code)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(OfficeRow::from_row).collect()
}

/// A page of at most `limit` offices after `after` (by id), and the token of the next page: the
/// page's last office id when more follow, empty after the last office.
pub async fn offices_page_and_next(
    conn: &mut AnyConnection,
    province_code: &str,
    after: &str,
    limit: u32,
) -> Result<(Vec<OfficeRow>, String), sqlx::Error> {
    // One more than asked: tells whether another page follows.
    let mut offices = offices_page(conn, province_code, after, i64::from(limit) + 1).await?;
    let more = offices.len() > limit as usize;
    offices.truncate(limit as usize);
    let next = match offices.last() {
        Some(last) if more => last.office_id.clone(),
        _ => String::new(),
    };
    Ok((offices, next))
}

/// Sets an office's stock levels and ledger head after a movement.
pub async fn update_office_stock(
    conn: &mut AnyConnection,
    office: &OfficeRow,
) -> Result<(), sqlx::Error> {
    execute_built(conn, office_stock_update(office)).await
}

/// Inserts a new office (no stock, an empty ledger), unless one with its id exists: false then.
/// On PostgreSQL an insert of the same id by a transaction still open waits for its end.
pub async fn insert_office(conn: &mut AnyConnection, o: &OfficeRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO offices (office_id, name, time_zone, province_code, daily_cap, expected_next_supply_date, fallback_horizon_days, ikd_first_required, hold_ttl_secs, on_hand, held, ledger_seq, ledger_head)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, 0, $10)
         ON CONFLICT (office_id) DO NOTHING",
    )
    .bind(&o.office_id)
    .bind(&o.name)
    .bind(&o.time_zone)
    .bind(&o.province_code)
    .bind(o.daily_cap)
    .bind(&o.expected_next_supply_date)
    .bind(o.fallback_horizon_days)
    .bind(i64::from(o.ikd_first_required))
    .bind(o.hold_ttl_secs)
    .bind(&o.ledger_head)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Writes an office's settings (its stock and ledger columns are left as they are).
pub async fn update_office_settings(
    conn: &mut AnyConnection,
    o: &OfficeRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE offices SET name = $1, time_zone = $2, daily_cap = $3, expected_next_supply_date = $4, fallback_horizon_days = $5, ikd_first_required = $6, hold_ttl_secs = $7 WHERE office_id = $8",
    )
    .bind(&o.name)
    .bind(&o.time_zone)
    .bind(o.daily_cap)
    .bind(&o.expected_next_supply_date)
    .bind(o.fallback_horizon_days)
    .bind(i64::from(o.ikd_first_required))
    .bind(o.hold_ttl_secs)
    .bind(&o.office_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// `service_points` row. The policy is kept as an encoded `blangko.v1.QuotaPolicy`; mode and
/// weight are columns too because PACED quotas sum the weights of an office's service points.
#[derive(Debug, Clone)]
pub struct ServicePointRow {
    pub office_id: String,
    pub service_point_id: String,
    pub name: String,
    pub kind: i64,
    /// Seven '0'/'1' characters, Monday first.
    pub service_days: String,
    /// Comma-separated local dates.
    pub holidays: String,
    pub quota_mode: i64,
    pub weight: i64,
    pub policy: Vec<u8>,
}

pub const SERVICE_POINT_COLUMNS: &str =
    "office_id, service_point_id, name, kind, service_days, holidays, quota_mode, weight, policy";

impl ServicePointRow {
    pub fn from_row<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(ServicePointRow {
            office_id: row.text("office_id")?,
            service_point_id: row.text("service_point_id")?,
            name: row.text("name")?,
            kind: row.int("kind")?,
            service_days: row.text("service_days")?,
            holidays: row.text("holidays")?,
            quota_mode: row.int("quota_mode")?,
            weight: row.int("weight")?,
            policy: row.bytes("policy")?,
        })
    }
}

/// Reads one service point.
pub async fn service_point(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
) -> Result<Option<ServicePointRow>, sqlx::Error> {
    let row = sqlx::query(&SERVICE_POINT_BY_ID)
        .bind(office_id)
        .bind(service_point_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(ServicePointRow::from_row).transpose()
}

/// Every service point of an office, by id.
pub async fn service_points_of(
    conn: &mut AnyConnection,
    office_id: &str,
) -> Result<Vec<ServicePointRow>, sqlx::Error> {
    let rows = sqlx::query(&SERVICE_POINTS_OF_OFFICE)
        .bind(office_id)
        .fetch_all(conn)
        .await?;
    rows.iter().map(ServicePointRow::from_row).collect()
}

/// The service points of an office among `ids` (a batch's), by id.
pub async fn service_points_among(
    conn: &mut AnyConnection,
    office_id: &str,
    ids: &[&str],
) -> Result<HashMap<String, ServicePointRow>, sqlx::Error> {
    let rows = fetch_for_keys(conn, Some(office_id), ids, |p, keys| {
        format!(
            "SELECT {SERVICE_POINT_COLUMNS} FROM service_points WHERE office_id = {p} AND service_point_id IN ({keys})"
        )
    })
    .await?;
    rows.iter()
        .map(|r| ServicePointRow::from_row(r).map(|sp| (sp.service_point_id.clone(), sp)))
        .collect()
}

/// Inserts or replaces a service point.
pub async fn upsert_service_point(
    conn: &mut AnyConnection,
    sp: &ServicePointRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO service_points (office_id, service_point_id, name, kind, service_days, holidays, quota_mode, weight, policy)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (office_id, service_point_id) DO UPDATE SET name = $3, kind = $4, service_days = $5, holidays = $6, quota_mode = $7, weight = $8, policy = $9",
    )
    .bind(&sp.office_id)
    .bind(&sp.service_point_id)
    .bind(&sp.name)
    .bind(sp.kind)
    .bind(&sp.service_days)
    .bind(&sp.holidays)
    .bind(sp.quota_mode)
    .bind(sp.weight)
    .bind(&sp.policy)
    .execute(conn)
    .await?;
    Ok(())
}

/// `quota_days` row: one service point's quota and use on one local day.
#[derive(Debug, Clone)]
pub struct QuotaDayRow {
    pub office_id: String,
    pub service_point_id: String,
    pub local_date: String,
    pub quota: i64,
    pub held: i64,
    pub committed: i64,
    pub priority_used: i64,
    pub closed: bool,
    pub supply_overdue: bool,
}

pub const QUOTA_DAY_COLUMNS: &str = "office_id, service_point_id, local_date, quota, held, committed, priority_used, closed, supply_overdue";

impl QuotaDayRow {
    pub fn from_row<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(QuotaDayRow {
            office_id: row.text("office_id")?,
            service_point_id: row.text("service_point_id")?,
            local_date: row.text("local_date")?,
            quota: row.int("quota")?,
            held: row.int("held")?,
            committed: row.int("committed")?,
            priority_used: row.int("priority_used")?,
            closed: row.flag("closed")?,
            supply_overdue: row.flag("supply_overdue")?,
        })
    }

    /// held + committed.
    pub fn used(&self) -> i64 {
        self.held + self.committed
    }
}

/// Reads a quota day.
pub async fn quota_day(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
    local_date: &str,
    lock: &str,
) -> Result<Option<QuotaDayRow>, sqlx::Error> {
    let sql = format!("{}{lock}", *QUOTA_DAY_BY_ID);
    let row = sqlx::query(&sql)
        .bind(office_id)
        .bind(service_point_id)
        .bind(local_date)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(QuotaDayRow::from_row).transpose()
}

/// Inserts a freshly computed quota day (the caller holds the office lock, so no other
/// transaction inserts the same day concurrently).
pub async fn insert_quota_day(
    conn: &mut AnyConnection,
    q: &QuotaDayRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO quota_days (office_id, service_point_id, local_date, quota, held, committed, priority_used, closed, supply_overdue)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&q.office_id)
    .bind(&q.service_point_id)
    .bind(&q.local_date)
    .bind(q.quota)
    .bind(q.held)
    .bind(q.committed)
    .bind(q.priority_used)
    .bind(i64::from(q.closed))
    .bind(i64::from(q.supply_overdue))
    .execute(conn)
    .await?;
    Ok(())
}

/// Opens a quota day that was computed closed (not a service day, or a holiday): a supervisor
/// set today's quota on it.
pub async fn open_quota_day(conn: &mut AnyConnection, q: &QuotaDayRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE quota_days SET closed = $1 WHERE office_id = $2 AND service_point_id = $3 AND local_date = $4",
    )
    .bind(0_i64)
    .bind(&q.office_id)
    .bind(&q.service_point_id)
    .bind(&q.local_date)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes a quota day's counters and quota.
pub async fn update_quota_day(
    conn: &mut AnyConnection,
    q: &QuotaDayRow,
) -> Result<(), sqlx::Error> {
    execute_built(conn, quota_day_update(q)).await
}

/// Quota days of an office on one local day.
pub async fn quota_days_of_office(
    conn: &mut AnyConnection,
    office_id: &str,
    local_date: &str,
) -> Result<Vec<QuotaDayRow>, sqlx::Error> {
    let rows = sqlx::query(&QUOTA_DAYS_OF_OFFICE)
        .bind(office_id)
        .bind(local_date)
        .fetch_all(conn)
        .await?;
    rows.iter().map(QuotaDayRow::from_row).collect()
}

/// `reservations` row.
#[derive(Debug, Clone)]
pub struct ReservationRow {
    pub reservation_id: String,
    pub office_id: String,
    pub office_seq: i64,
    pub service_point_id: String,
    pub counter_id: String,
    pub local_date: String,
    pub nik_hash: String,
    pub masked_nik: String,
    pub reason: i64,
    pub priority: bool,
    pub ikd_status: i64,
    pub state: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub committed_ms: i64,
    pub spoiled_count: i64,
}

pub const RESERVATION_COLUMNS: &str = "reservation_id, office_id, office_seq, service_point_id, counter_id, local_date, nik_hash, masked_nik, reason, priority, ikd_status, state, created_ms, expires_ms, committed_ms, spoiled_count";

impl ReservationRow {
    pub fn from_row<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(ReservationRow {
            reservation_id: row.text("reservation_id")?,
            office_id: row.text("office_id")?,
            office_seq: row.int("office_seq")?,
            service_point_id: row.text("service_point_id")?,
            counter_id: row.text("counter_id")?,
            local_date: row.text("local_date")?,
            nik_hash: row.text("nik_hash")?,
            masked_nik: row.text("masked_nik")?,
            reason: row.int("reason")?,
            priority: row.flag("priority")?,
            ikd_status: row.int("ikd_status")?,
            state: row.text("state")?,
            created_ms: row.int("created_ms")?,
            expires_ms: row.int("expires_ms")?,
            committed_ms: row.int("committed_ms")?,
            spoiled_count: row.int("spoiled_count")?,
        })
    }
}

/// Reads one reservation.
pub async fn reservation(
    conn: &mut AnyConnection,
    reservation_id: &str,
) -> Result<Option<ReservationRow>, sqlx::Error> {
    let sql = format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE reservation_id = $1");
    let row = sqlx::query(&sql)
        .bind(reservation_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(ReservationRow::from_row).transpose()
}

/// The live (HELD or COMMITTED) reservation of a NIK on a local day, anywhere.
pub async fn live_reservation_of_nik(
    conn: &mut AnyConnection,
    nik_hash: &str,
    local_date: &str,
) -> Result<Option<ReservationRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE nik_hash = $1 AND local_date = $2 AND state IN ('HELD', 'COMMITTED')"
    );
    let row = sqlx::query(&sql)
        .bind(nik_hash)
        .bind(local_date)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(ReservationRow::from_row).transpose()
}

/// Inserts a new reservation.
pub async fn insert_reservation(
    conn: &mut AnyConnection,
    r: &ReservationRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reservations (reservation_id, office_id, service_point_id, counter_id, local_date, nik_hash, masked_nik, reason, priority, ikd_status, state, created_ms, expires_ms, committed_ms, spoiled_count, office_seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&r.reservation_id)
    .bind(&r.office_id)
    .bind(&r.service_point_id)
    .bind(&r.counter_id)
    .bind(&r.local_date)
    .bind(&r.nik_hash)
    .bind(&r.masked_nik)
    .bind(r.reason)
    .bind(i64::from(r.priority))
    .bind(r.ikd_status)
    .bind(&r.state)
    .bind(r.created_ms)
    .bind(r.expires_ms)
    .bind(r.committed_ms)
    .bind(r.spoiled_count)
    .bind(r.office_seq)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes a reservation's mutable fields.
pub async fn update_reservation(
    conn: &mut AnyConnection,
    r: &ReservationRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservations SET state = $1, expires_ms = $2, committed_ms = $3, spoiled_count = $4 WHERE reservation_id = $5",
    )
    .bind(&r.state)
    .bind(r.expires_ms)
    .bind(r.committed_ms)
    .bind(r.spoiled_count)
    .bind(&r.reservation_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The HELD reservations of office `office` whose hold ran out by `due_by`, earliest first, at
/// most `limit` (all three placeholders): a probe of `reservations_held_by_office_expiry`.
fn due_holds_sql(due_by: &str, office: &str, limit: &str) -> String {
    format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE state = 'HELD' AND expires_ms <= {due_by} AND office_id = {office} ORDER BY expires_ms LIMIT {limit}"
    )
}

/// HELD reservations of an office whose hold ran out by `now_ms` (bounded batch).
pub async fn due_holds(
    conn: &mut AnyConnection,
    office_id: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<ReservationRow>, sqlx::Error> {
    let sql = due_holds_sql("$1", "$2", "$3");
    let rows = sqlx::query(&sql)
        .bind(now_ms)
        .bind(office_id)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(ReservationRow::from_row).collect()
}

/// Offices after `after` (by id; "" for the first) that have at least one hold due by `now_ms`
/// (bounded), in id order: one probe of `reservations_held_by_office_expiry` per office.
pub async fn offices_with_due_holds(
    conn: &mut AnyConnection,
    now_ms: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT o.office_id FROM offices o WHERE o.office_id > $1 AND EXISTS (SELECT 1 FROM reservations r WHERE r.state = 'HELD' AND r.office_id = o.office_id AND r.expires_ms <= $2) ORDER BY o.office_id LIMIT $3",
    )
    .bind(after)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| r.try_get("office_id")).collect()
}

/// Reservations of an office, newest first, with optional filters and a keyset cursor
/// (`before_seq` = office_seq of the last row of the previous page).
#[allow(clippy::too_many_arguments)]
pub async fn reservations_page(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
    counter_id: &str,
    state: &str,
    local_date: &str,
    before_seq: Option<i64>,
    limit: i64,
    reservation_ids: &[String],
) -> Result<Vec<ReservationRow>, sqlx::Error> {
    // Only these reservations: one placeholder per id ($8 on), bound like the rest.
    let only = if reservation_ids.is_empty() {
        String::new()
    } else {
        let list = (0..reservation_ids.len())
            .map(|i| format!("${}", i + 8))
            .collect::<Vec<_>>()
            .join(", ");
        format!(" AND reservation_id IN ({list})")
    };
    let sql = format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations
         WHERE office_id = $1 AND ($2 = '' OR service_point_id = $2) AND ($3 = '' OR counter_id = $3)
           AND ($4 = '' OR state = $4) AND local_date = $5
           AND office_seq < $6{only}
         ORDER BY office_seq DESC LIMIT $7"
    );
    let mut query = sqlx::query(&sql)
        .bind(office_id)
        .bind(service_point_id)
        .bind(counter_id)
        .bind(state)
        .bind(local_date)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(limit);
    for id in reservation_ids {
        query = query.bind(id.as_str());
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(ReservationRow::from_row).collect()
}

/// Live reservations (held or committed) today at a service point whose reason is one of `reasons`.
pub async fn live_count_for_reasons(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
    local_date: &str,
    reasons: &[i64],
) -> Result<i64, sqlx::Error> {
    if reasons.is_empty() {
        return Ok(0);
    }
    // Reason numbers are validated enum values (small integers), so listing them inline is safe.
    let list = reasons
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT COUNT(*) AS n FROM reservations WHERE office_id = $1 AND service_point_id = $2 AND local_date = $3 AND state IN ('HELD', 'COMMITTED') AND reason IN ({list})"
    );
    let row = sqlx::query(&sql)
        .bind(office_id)
        .bind(service_point_id)
        .bind(local_date)
        .fetch_one(conn)
        .await?;
    row.try_get("n")
}

/// Held plus committed over all of an office's service points on a local day (summed by the
/// database: one row back instead of one per service point).
pub async fn office_used_on(
    conn: &mut AnyConnection,
    office_id: &str,
    local_date: &str,
) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {OFFICE_USED} AS n"))
        .bind(office_id)
        .bind(local_date)
        .fetch_one(conn)
        .await?;
    row.try_get("n")
}

/// [`office_used_on`] and the applicants waiting at a service point by queue reports newer than
/// `since_ms`, in one statement (what a quota snapshot reads besides the quota and office rows).
pub async fn office_used_and_waiting(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
    local_date: &str,
    since_ms: i64,
) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(&OFFICE_USED_AND_WAITING)
        .bind(office_id)
        .bind(local_date)
        .bind(service_point_id)
        .bind(since_ms)
        .fetch_one(conn)
        .await?;
    Ok((row.try_get("used")?, row.try_get("waiting")?))
}

/// One office by id (`$1`). The statements below are shared by sqlx's connections and
/// SQLite's own (`store::direct`, written there with numbered placeholders).
pub static OFFICE_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {OFFICE_COLUMNS} FROM offices WHERE office_id = $1"));
/// One service point by office (`$1`) and id (`$2`).
pub static SERVICE_POINT_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {SERVICE_POINT_COLUMNS} FROM service_points WHERE office_id = $1 AND service_point_id = $2"
    )
});
/// One quota row by office (`$1`), service point (`$2`) and local date (`$3`).
pub static QUOTA_DAY_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {QUOTA_DAY_COLUMNS} FROM quota_days WHERE office_id = $1 AND service_point_id = $2 AND local_date = $3"
    )
});
/// Every service point of an office (`$1`), by id.
pub static SERVICE_POINTS_OF_OFFICE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {SERVICE_POINT_COLUMNS} FROM service_points WHERE office_id = $1 ORDER BY service_point_id"
    )
});
/// The quota rows of an office (`$1`) on a local date (`$2`).
pub static QUOTA_DAYS_OF_OFFICE: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {QUOTA_DAY_COLUMNS} FROM quota_days WHERE office_id = $1 AND local_date = $2")
});
/// An office's use on a day (`used`) and the applicants waiting at one of its service points
/// (`waiting`): office `$1`, local date `$2`, service point `$3`, queue reports newer than `$4`.
pub static OFFICE_USED_AND_WAITING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {OFFICE_USED} AS used, (SELECT CAST(COALESCE(SUM(waiting), 0) AS BIGINT) FROM queue_reports WHERE office_id = $1 AND service_point_id = $3 AND reported_ms > $4) AS waiting"
    )
});

/// The office's use on a day as a scalar subquery, with `$1` the office and `$2` the local date.
const OFFICE_USED: &str = "(SELECT CAST(COALESCE(SUM(held + committed), 0) AS BIGINT) FROM quota_days WHERE office_id = $1 AND local_date = $2)";

/// Applicants waiting per service point of an office, by queue reports newer than `since_ms`
/// (only service points with such reports appear).
pub async fn waiting_by_point(
    conn: &mut AnyConnection,
    office_id: &str,
    since_ms: i64,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT service_point_id, CAST(COALESCE(SUM(waiting), 0) AS BIGINT) AS n FROM queue_reports WHERE office_id = $1 AND reported_ms > $2 GROUP BY service_point_id",
    )
    .bind(office_id)
    .bind(since_ms)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("service_point_id")?, r.try_get("n")?)))
        .collect()
}

/// Stores a counter's queue report (the latest replaces the earlier ones).
pub async fn upsert_queue_report(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
    counter_id: &str,
    waiting: i64,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO queue_reports (office_id, service_point_id, counter_id, waiting, reported_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (office_id, service_point_id, counter_id) DO UPDATE SET waiting = $4, reported_ms = $5",
    )
    .bind(office_id)
    .bind(service_point_id)
    .bind(counter_id)
    .bind(waiting)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored answer to a mutating call.
pub struct StoredAnswer {
    pub method: String,
    pub fingerprint: String,
    pub response: Vec<u8>,
}

impl StoredAnswer {
    pub fn from_row<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(StoredAnswer {
            method: row.text("method")?,
            fingerprint: row.text("fingerprint")?,
            response: row.bytes("response")?,
        })
    }
}

/// Looks up the answer stored for a request id.
pub async fn stored_answer(
    conn: &mut AnyConnection,
    request_id: &str,
) -> Result<Option<StoredAnswer>, sqlx::Error> {
    let row =
        sqlx::query("SELECT method, fingerprint, response FROM idempotency WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(conn)
            .await?;
    row.as_ref().map(StoredAnswer::from_row).transpose()
}

/// Stores the answer to a mutating call.
pub async fn store_answer(
    conn: &mut AnyConnection,
    request_id: &str,
    method: &str,
    fingerprint: &str,
    response: &[u8],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency (request_id, method, fingerprint, response, created_ms) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(request_id)
    .bind(method)
    .bind(fingerprint)
    .bind(response)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// A value for a multi-row INSERT.
#[derive(Debug, Clone)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Value {
    /// A text value.
    pub fn text(value: &str) -> Value {
        Value::Text(value.to_string())
    }

    /// The value, borrowed.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Int(v) => ValueRef::Int(*v),
            Value::Text(v) => ValueRef::Text(v),
            Value::Bytes(v) => ValueRef::Bytes(v),
        }
    }
}

/// A [`Value`] borrowed from the row it belongs to: the Reserve hot path writes a batch's rows
/// (into their tables or into the Reserve journal) without copying their texts first.
#[derive(Debug, Clone, Copy)]
pub enum ValueRef<'a> {
    /// An integer.
    Int(i64),
    /// A text.
    Text(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
}

impl ValueRef<'_> {
    /// The value, owned.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Int(v) => Value::Int(v),
            ValueRef::Text(v) => Value::Text(v.to_string()),
            ValueRef::Bytes(v) => Value::Bytes(v.to_vec()),
        }
    }
}

/// Most bound parameters in one statement (SQLite's limit is 32,766, PostgreSQL's 65,535).
const MAX_PARAMS_PER_STATEMENT: usize = 4000;

/// Inserts many rows with as few statements as the parameter limit allows (group commit writes
/// a batch's rows at once instead of one statement per row).
pub async fn insert_many(
    conn: &mut AnyConnection,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() || columns.is_empty() {
        return Ok(());
    }
    let sqlite = is_sqlite(conn);
    let per_statement = (MAX_PARAMS_PER_STATEMENT / columns.len()).max(1);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Value>> = rows.by_ref().take(per_statement).collect();
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
        let mut n = 1;
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&placeholders(sqlite, n, row.len()));
            n += row.len();
            sql.push(')');
        }
        bound(&sql, chunk.into_iter().flatten())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Whether `conn` talks to SQLite (placeholders differ, see [`placeholders`]).
fn is_sqlite(conn: &AnyConnection) -> bool {
    conn.backend_name().eq_ignore_ascii_case("sqlite")
}

/// `sql` with `values` bound to its parameters, in order.
fn bound(
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    values
        .into_iter()
        .fold(sqlx::query(sql), |query, value| match value {
            Value::Int(v) => query.bind(v),
            Value::Text(v) => query.bind(v),
            Value::Bytes(v) => query.bind(v),
        })
}

/// Runs one of the `(statement, values)` pairs built below ([`quota_day_update`], ...).
async fn execute_built(
    conn: &mut AnyConnection,
    (sql, values): (&str, Vec<Value>),
) -> Result<(), sqlx::Error> {
    bound(sql, values).execute(conn).await?;
    Ok(())
}

/// Several writes sent to PostgreSQL as ONE statement: each an INSERT or UPDATE in a
/// data-modifying CTE (`WITH w0 AS (INSERT ...), w1 AS (UPDATE ...) SELECT ...`), so a Reserve
/// batch pays one round trip for its writes instead of one per table while it holds the office
/// lock. Every part is executed and checked as on its own (constraints, unique violations).
///
/// Rows travel as one array parameter per column (`unnest($1::text[], $2::bigint[], ...)`), not
/// as one placeholder per value: the statement's text then depends on which parts a batch has,
/// not on how many rows each has, so each connection parses it once and keeps it prepared, and
/// PostgreSQL can keep its plan. With a placeholder per value, nearly every batch was a new
/// statement: parsed, described (one more round trip) and planned again under the office lock
/// (BENCHMARKS.md, "PostgreSQL: statements whose text does not change with the batch").
#[derive(Default)]
pub struct CombinedWrite {
    parts: Vec<String>,
    values: Vec<Value>,
}

impl CombinedWrite {
    /// A multi-row INSERT of `rows` into `table` (nothing when `rows` is empty).
    pub fn insert(&mut self, table: &str, columns: &[&str], rows: Vec<Vec<Value>>) {
        let template = format!(
            "INSERT INTO {table} ({}) SELECT * FROM {{rows}}",
            columns.join(", ")
        );
        self.rows(&template, columns, rows);
    }

    /// `template` with `{rows}` replaced by `rows` as a relation `u(columns...)`, each column one
    /// array parameter (nothing when `rows` is empty). Every row has `columns.len()` values, and
    /// the first row's values name the columns' types.
    pub fn rows(&mut self, template: &str, columns: &[&str], rows: Vec<Vec<Value>>) {
        let Some(first) = rows.first() else {
            return;
        };
        let types: Vec<&str> = first.iter().map(Value::postgres_type).collect();
        let mut arrays = vec![String::from("{"); columns.len()];
        for (i, row) in rows.into_iter().enumerate() {
            debug_assert_eq!(row.len(), columns.len(), "a row of {template}");
            for (array, value) in arrays.iter_mut().zip(row) {
                if i > 0 {
                    array.push(',');
                }
                value.push_array_element(array);
            }
        }
        let first_parameter = self.values.len() + 1;
        let unnest = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}[]", first_parameter + i))
            .collect::<Vec<_>>()
            .join(", ");
        let relation = format!("unnest({unnest}) AS u({})", columns.join(", "));
        self.parts.push(template.replace("{rows}", &relation));
        self.values.extend(arrays.into_iter().map(|mut array| {
            array.push('}');
            Value::Text(array)
        }));
    }

    /// One statement written with `$1..$n` for `values`.
    pub fn statement(&mut self, sql: &str, values: Vec<Value>) {
        self.parts.push(renumber(sql, self.values.len()));
        self.values.extend(values);
    }

    /// Sends it all as one statement whose main part is `final_select` (written with `$1..$n`
    /// for `final_values`, e.g. a `pg_notify`).
    pub async fn execute(
        mut self,
        conn: &mut AnyConnection,
        final_select: &str,
        final_values: Vec<Value>,
    ) -> Result<(), sqlx::Error> {
        let final_select = renumber(final_select, self.values.len());
        self.values.extend(final_values);
        let mut sql = String::from("WITH ");
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("w{i} AS ({part})"));
        }
        if self.parts.is_empty() {
            sql.clear();
        }
        sql.push(' ');
        sql.push_str(&final_select);
        bound(&sql, self.values).execute(&mut *conn).await?;
        Ok(())
    }
}

impl Value {
    /// The PostgreSQL type of an array of such values.
    fn postgres_type(&self) -> &'static str {
        match self {
            Value::Int(_) => "bigint",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytea",
        }
    }

    /// Appends this value as an element of a PostgreSQL array literal: an integer as digits; a
    /// text double-quoted, with `"` and `\` escaped by a backslash (so commas, braces, spaces
    /// and the word NULL stay text); bytes as a quoted `\x` and hex digits.
    fn push_array_element(self, array: &mut String) {
        match self {
            Value::Int(v) => array.push_str(&v.to_string()),
            Value::Text(v) => push_quoted_element(array, &v),
            Value::Bytes(v) => {
                array.push_str("\"\\\\x");
                array.push_str(&hex::encode(v));
                array.push('"');
            }
        }
    }
}

fn push_quoted_element(array: &mut String, text: &str) {
    array.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            array.push('\\');
        }
        array.push(c);
    }
    array.push('"');
}

/// A PostgreSQL `text[]` literal of `items`, bound as one parameter and cast (`$n::text[]`).
pub fn postgres_text_array(items: &[&str]) -> String {
    let mut array = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            array.push(',');
        }
        push_quoted_element(&mut array, item);
    }
    array.push('}');
    array
}

/// `sql` with every `$n` placeholder shifted by `offset`.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            out.push_str(&format!("${}", n + offset));
        } else {
            out.push(c);
        }
    }
    out
}

/// The statement of [`quota_day_update`].
pub const QUOTA_DAY_UPDATE: &str = "UPDATE quota_days SET quota = $1, held = $2, committed = $3, priority_used = $4 WHERE office_id = $5 AND service_point_id = $6 AND local_date = $7";

/// [`QUOTA_DAY_UPDATE`] for many rows at once in a [`CombinedWrite::rows`]: its values, in
/// [`QUOTA_DAY_UPDATE_COLUMNS`] order, are those of [`quota_day_update`].
pub const QUOTA_DAY_UPDATE_ROWS: &str = "UPDATE quota_days AS q SET quota = u.quota, held = u.held, committed = u.committed, priority_used = u.priority_used FROM {rows} WHERE q.office_id = u.office_id AND q.service_point_id = u.service_point_id AND q.local_date = u.local_date";

/// The columns of [`QUOTA_DAY_UPDATE_ROWS`], in the order of [`quota_day_update`]'s values.
pub const QUOTA_DAY_UPDATE_COLUMNS: [&str; 7] = [
    "quota",
    "held",
    "committed",
    "priority_used",
    "office_id",
    "service_point_id",
    "local_date",
];

/// The statement of [`office_stock_update`].
pub const OFFICE_STOCK_UPDATE: &str = "UPDATE offices SET on_hand = $1, held = $2, ledger_seq = $3, ledger_head = $4 WHERE office_id = $5";

/// The UPDATE of [`update_quota_day`], with its values.
pub fn quota_day_update(q: &QuotaDayRow) -> (&'static str, Vec<Value>) {
    (
        QUOTA_DAY_UPDATE,
        vec![
            Value::Int(q.quota),
            Value::Int(q.held),
            Value::Int(q.committed),
            Value::Int(q.priority_used),
            Value::Text(q.office_id.clone()),
            Value::Text(q.service_point_id.clone()),
            Value::Text(q.local_date.clone()),
        ],
    )
}

/// The UPDATE of [`update_office_stock`], with its values.
pub fn office_stock_update(office: &OfficeRow) -> (&'static str, Vec<Value>) {
    (
        OFFICE_STOCK_UPDATE,
        vec![
            Value::Int(office.on_hand),
            Value::Int(office.held),
            Value::Int(office.ledger_seq),
            Value::Text(office.ledger_head.clone()),
            Value::Text(office.office_id.clone()),
        ],
    )
}

/// The upsert of [`add_ikd_referrals`], with its values.
pub fn ikd_referrals_upsert(
    office_id: &str,
    local_date: &str,
    cause: i32,
    referrals: i64,
) -> (&'static str, Vec<Value>) {
    (
        IKD_REFERRALS_UPSERT,
        vec![
            Value::Text(office_id.to_string()),
            Value::Text(local_date.to_string()),
            Value::Int(i64::from(cause)),
            Value::Int(referrals),
        ],
    )
}

/// The rows of a query over a list of keys (a batch's request ids, NIK hashes, ...), in chunks
/// that stay within the parameter limit. `sql(leading, keys)` writes the statement for one
/// chunk, given the placeholder of the `leading` value (bound first, when there is one) and the
/// comma-separated placeholders of the chunk's keys.
async fn fetch_for_keys(
    conn: &mut AnyConnection,
    leading: Option<&str>,
    keys: &[&str],
    sql: impl Fn(&str, &str) -> String,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let sqlite = is_sqlite(conn);
    let first = 1 + usize::from(leading.is_some());
    let mut out = Vec::new();
    for chunk in keys.chunks(MAX_PARAMS_PER_STATEMENT - 1) {
        let text = sql(
            &placeholders(sqlite, 1, 1),
            &placeholders(sqlite, first, chunk.len()),
        );
        let mut query = sqlx::query(&text);
        if let Some(value) = leading {
            query = query.bind(value);
        }
        for key in chunk {
            query = query.bind(*key);
        }
        out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Placeholders for `count` parameters numbered from `first`: `$first, $first+1, ...` on
/// PostgreSQL; anonymous `?` on SQLite, where every `$n` is a *named* parameter and binding
/// looks each name up in a list, so a statement with n named parameters costs O(n²) to bind
/// (it was a tenth of the server's CPU time under a Reserve burst, in `sqlite3_bind_parameter_name`).
fn placeholders(sqlite: bool, first: usize, count: usize) -> String {
    if sqlite {
        return vec!["?"; count].join(", ");
    }
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stored answers of many request ids at once.
pub async fn stored_answers(
    conn: &mut AnyConnection,
    request_ids: &[&str],
) -> Result<HashMap<String, StoredAnswer>, sqlx::Error> {
    let rows = fetch_for_keys(conn, None, request_ids, |_, keys| {
        format!(
            "SELECT request_id, method, fingerprint, response FROM idempotency WHERE request_id IN ({keys})"
        )
    })
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("request_id")?, StoredAnswer::from_row(r)?)))
        .collect()
}

/// The live (HELD or COMMITTED) reservations of many NIKs on a local day, by NIK hash.
pub async fn live_reservations_of_niks(
    conn: &mut AnyConnection,
    nik_hashes: &[&str],
    local_date: &str,
) -> Result<HashMap<String, ReservationRow>, sqlx::Error> {
    let sqlite = is_sqlite(conn);
    let rows = fetch_for_keys(conn, Some(local_date), nik_hashes, |date, keys| {
        // Both planners are told which index to take, so the lookup stays a search of the
        // NIK/day index even before the table has statistics (a fresh or fast-growing table):
        // SQLite by name (otherwise it preferred the former reservations_due (state = ?) and scanned every
        // held reservation); PostgreSQL by one LIMIT 1 subquery per hash, each an index probe
        // (without statistics, both an IN list and a plain join from the list of hashes were
        // planned as a scan of the whole day's part of the index).
        if sqlite {
            format!(
                "SELECT {RESERVATION_COLUMNS} FROM reservations INDEXED BY reservations_one_live_per_nik_day WHERE local_date = {date} AND state IN ('HELD', 'COMMITTED') AND nik_hash IN ({keys})"
            )
        } else {
            let values = keys
                .split(", ")
                .map(|k| format!("({k})"))
                .collect::<Vec<_>>()
                .join(", ");
            live_by_nik_postgres(&format!("(VALUES {values})"), date)
        }
    })
    .await?;
    rows.iter()
        .map(|r| ReservationRow::from_row(r).map(|row| (row.nik_hash.clone(), row)))
        .collect()
}

/// PostgreSQL: the live reservation of each hash of `hashes` (a relation of one column, e.g.
/// `(VALUES ($3), ($4))` or `unnest($5::text[])`) on the day `date` (a placeholder), as one
/// `LIMIT 1` index probe per hash.
fn live_by_nik_postgres(hashes: &str, date: &str) -> String {
    format!(
        "SELECT r.* FROM {hashes} AS batch(h) CROSS JOIN LATERAL (SELECT {RESERVATION_COLUMNS} FROM reservations WHERE nik_hash = batch.h AND local_date = {date} AND state IN ('HELD', 'COMMITTED') LIMIT 1) AS r"
    )
}

/// Which of these NIK hashes have a recorded IKD activation.
pub async fn ikd_activated_among(
    conn: &mut AnyConnection,
    nik_hashes: &[&str],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let rows = fetch_for_keys(conn, None, nik_hashes, |_, keys| {
        format!("SELECT nik_hash FROM ikd_activations WHERE nik_hash IN ({keys})")
    })
    .await?;
    rows.iter().map(|r| r.try_get("nik_hash")).collect()
}

/// Live reservations today at a service point, counted per reason.
pub async fn live_counts_by_reason(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
    local_date: &str,
) -> Result<HashMap<i64, i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT reason, COUNT(*) AS n FROM reservations WHERE office_id = $1 AND service_point_id = $2 AND local_date = $3 AND state IN ('HELD', 'COMMITTED') GROUP BY reason",
    )
    .bind(office_id)
    .bind(service_point_id)
    .bind(local_date)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("reason")?, r.try_get("n")?)))
        .collect()
}

/// The columns of `reservations`, in the order of [`reservation_values`].
pub const RESERVATION_INSERT_COLUMNS: [&str; 16] = [
    "reservation_id",
    "office_id",
    "office_seq",
    "service_point_id",
    "counter_id",
    "local_date",
    "nik_hash",
    "masked_nik",
    "reason",
    "priority",
    "ikd_status",
    "state",
    "created_ms",
    "expires_ms",
    "committed_ms",
    "spoiled_count",
];

/// A reservation as values for [`insert_many`].
pub fn reservation_values(r: &ReservationRow) -> Vec<Value> {
    Vec::from(reservation_refs(r).map(ValueRef::to_value))
}

/// A reservation's values, borrowed, in [`RESERVATION_INSERT_COLUMNS`] order.
pub fn reservation_refs(r: &ReservationRow) -> [ValueRef<'_>; 16] {
    [
        ValueRef::Text(&r.reservation_id),
        ValueRef::Text(&r.office_id),
        ValueRef::Int(r.office_seq),
        ValueRef::Text(&r.service_point_id),
        ValueRef::Text(&r.counter_id),
        ValueRef::Text(&r.local_date),
        ValueRef::Text(&r.nik_hash),
        ValueRef::Text(&r.masked_nik),
        ValueRef::Int(r.reason),
        ValueRef::Int(i64::from(r.priority)),
        ValueRef::Int(r.ikd_status),
        ValueRef::Text(&r.state),
        ValueRef::Int(r.created_ms),
        ValueRef::Int(r.expires_ms),
        ValueRef::Int(r.committed_ms),
        ValueRef::Int(r.spoiled_count),
    ]
}

/// The upsert that counts IKD referrals of a cause at an office on a local day.
pub const IKD_REFERRALS_UPSERT: &str = "INSERT INTO ikd_referral_days (office_id, local_date, cause, referrals) VALUES ($1, $2, $3, $4)
         ON CONFLICT (office_id, local_date, cause) DO UPDATE SET referrals = ikd_referral_days.referrals + excluded.referrals";

/// [`IKD_REFERRALS_UPSERT`] for many rows at once in a [`CombinedWrite::rows`] (one row per
/// cause, so no two rows meet the same conflict); values as [`ikd_referrals_upsert`]'s.
pub const IKD_REFERRALS_UPSERT_ROWS: &str = "INSERT INTO ikd_referral_days (office_id, local_date, cause, referrals) SELECT * FROM {rows}
         ON CONFLICT (office_id, local_date, cause) DO UPDATE SET referrals = ikd_referral_days.referrals + excluded.referrals";

/// The columns of [`IKD_REFERRALS_UPSERT_ROWS`].
pub const IKD_REFERRALS_COLUMNS: [&str; 4] = ["office_id", "local_date", "cause", "referrals"];

/// Counts `referrals` more IKD referrals of `cause` at an office on a local day (the daily stock
/// report reads them back with [`ikd_referrals_between`]).
pub async fn add_ikd_referrals(
    conn: &mut AnyConnection,
    office_id: &str,
    local_date: &str,
    cause: i32,
    referrals: i64,
) -> Result<(), sqlx::Error> {
    execute_built(
        conn,
        ikd_referrals_upsert(office_id, local_date, cause, referrals),
    )
    .await
}

/// IKD referrals of an office per local day (all causes), for days `from_date..=to_date`.
pub async fn ikd_referrals_between(
    conn: &mut AnyConnection,
    office_id: &str,
    from_date: &str,
    to_date: &str,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT local_date, CAST(SUM(referrals) AS BIGINT) AS referrals FROM ikd_referral_days
         WHERE office_id = $1 AND local_date >= $2 AND local_date <= $3 GROUP BY local_date",
    )
    .bind(office_id)
    .bind(from_date)
    .bind(to_date)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("local_date")?, r.try_get("referrals")?)))
        .collect()
}

/// A row read as JSON (PostgreSQL's `row_to_json`), by column name like a database row, so one
/// statement can return rows of several shapes ([`batch_reads`]).
pub struct JsonRow(serde_json::Map<String, serde_json::Value>);

impl JsonRow {
    /// Parses one `row_to_json(...)::text` value.
    pub fn parse(text: &str) -> Result<JsonRow, sqlx::Error> {
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Ok(JsonRow(map)),
            Ok(_) => Err(json_error("a row that is not a JSON object".into())),
            Err(err) => Err(json_error(format!("a row that is not JSON: {err}"))),
        }
    }

    fn get(&self, column: &str) -> Result<&serde_json::Value, sqlx::Error> {
        self.0
            .get(column)
            .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_string()))
    }
}

fn json_error(message: String) -> sqlx::Error {
    sqlx::Error::Decode(message.into())
}

impl Columns for JsonRow {
    type Error = sqlx::Error;
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.get(column)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| json_error(format!("column {column} is not text")))
    }
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.get(column)?
            .as_i64()
            .ok_or_else(|| json_error(format!("column {column} is not an integer")))
    }
    /// BYTEA, which `row_to_json` writes as `\x` and hex digits.
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
        let text = self.text(column)?;
        text.strip_prefix("\\x")
            .and_then(|digits| hex::decode(digits).ok())
            .ok_or_else(|| json_error(format!("column {column} is not bytea hex")))
    }
}

/// What a Reserve batch reads once it holds its office's row lock.
#[derive(Default)]
pub struct BatchReads {
    /// The office's quota rows on the day.
    pub quota_days: Vec<QuotaDayRow>,
    /// Answers already stored for the batch's request ids, by request id.
    pub answers: HashMap<String, StoredAnswer>,
    /// Live reservations of the batch's NIKs on the day, by NIK hash.
    pub live: HashMap<String, ReservationRow>,
    /// Which of `BatchKeys::ikd_nik_hashes` have a recorded IKD activation.
    pub activated: std::collections::HashSet<String>,
    /// The batch's service points, by id.
    pub service_points: HashMap<String, ServicePointRow>,
    /// Applicants waiting per service point (queue reports newer than `since_ms`).
    pub waiting: HashMap<String, i64>,
    /// The office's HELD reservations whose hold ran out by `BatchKeys::due_by_ms`, at most
    /// `BatchKeys::due_limit` of them, earliest first (as [`due_holds`] reads them).
    pub due: Vec<ReservationRow>,
}

/// The keys of a batch's reads.
pub struct BatchKeys<'a> {
    pub office_id: &'a str,
    pub local_date: &'a str,
    /// Queue reports at or before this time are stale.
    pub since_ms: i64,
    pub request_ids: &'a [&'a str],
    pub nik_hashes: &'a [&'a str],
    pub point_ids: &'a [&'a str],
    /// The NIKs whose IKD activation matters (empty when the office does not require IKD).
    pub ikd_nik_hashes: &'a [&'a str],
    /// Holds that ran out by this time are due.
    pub due_by_ms: i64,
    /// How many due holds to read (0: none).
    pub due_limit: i64,
}

/// The reads of a Reserve batch. On PostgreSQL they are ONE statement (its parts' rows as JSON),
/// so the office's row lock is held for one round trip of reads instead of five or six; on
/// SQLite (no network), one statement each ([`batch_reads_separately`]).
pub async fn batch_reads(
    conn: &mut AnyConnection,
    keys: &BatchKeys<'_>,
) -> Result<BatchReads, sqlx::Error> {
    if is_sqlite(conn) {
        batch_reads_separately(conn, keys).await
    } else {
        batch_reads_postgres(conn, keys).await
    }
}

/// The reads of [`batch_reads`], one statement each (SQLite's way; on PostgreSQL too, for a
/// test that compares the two).
pub async fn batch_reads_separately(
    conn: &mut AnyConnection,
    keys: &BatchKeys<'_>,
) -> Result<BatchReads, sqlx::Error> {
    Ok(BatchReads {
        quota_days: quota_days_of_office(conn, keys.office_id, keys.local_date).await?,
        answers: stored_answers(conn, keys.request_ids).await?,
        live: live_reservations_of_niks(conn, keys.nik_hashes, keys.local_date).await?,
        activated: if keys.ikd_nik_hashes.is_empty() {
            Default::default()
        } else {
            ikd_activated_among(conn, keys.ikd_nik_hashes).await?
        },
        service_points: service_points_among(conn, keys.office_id, keys.point_ids).await?,
        waiting: waiting_by_point(conn, keys.office_id, keys.since_ms).await?,
        due: if keys.due_limit > 0 {
            due_holds(conn, keys.office_id, keys.due_by_ms, keys.due_limit).await?
        } else {
            Vec::new()
        },
    })
}

/// The parts of [`batch_reads_postgres`], as its `part` column numbers them.
const PART_QUOTA_DAYS: i32 = 0;
const PART_ANSWERS: i32 = 1;
const PART_LIVE: i32 = 2;
const PART_SERVICE_POINTS: i32 = 3;
const PART_WAITING: i32 = 4;
const PART_ACTIVATED: i32 = 5;
const PART_DUE: i32 = 6;

/// [`batch_reads`] as one PostgreSQL statement: a `UNION ALL` of the same queries, each row
/// tagged with its part and carried as `row_to_json` text. Each key list is ONE `text[]`
/// parameter, so the text is the same for every batch: prepared once per connection, its plan
/// kept, where a placeholder per key made nearly every batch a statement to parse and plan again
/// (and no parameter limit to fall back from). An empty list reads nothing.
static BATCH_READS_POSTGRES: LazyLock<String> = LazyLock::new(|| {
    // $1 office, $2 local date, $3 since; $4 request ids, $5 NIK hashes, $6 service point ids,
    // $7 NIK hashes whose IKD activation matters; $8 due by, $9 how many due holds.
    [
        (
            PART_QUOTA_DAYS,
            format!(
                "SELECT {QUOTA_DAY_COLUMNS} FROM quota_days WHERE office_id = $1 AND local_date = $2"
            ),
        ),
        (
            PART_ANSWERS,
            "SELECT request_id, method, fingerprint, response FROM idempotency WHERE request_id = ANY($4::text[])".to_string(),
        ),
        (
            // One index probe per hash, as in `live_reservations_of_niks`.
            PART_LIVE,
            live_by_nik_postgres("unnest($5::text[])", "$2"),
        ),
        (
            PART_SERVICE_POINTS,
            format!(
                "SELECT {SERVICE_POINT_COLUMNS} FROM service_points WHERE office_id = $1 AND service_point_id = ANY($6::text[])"
            ),
        ),
        (
            PART_WAITING,
            "SELECT service_point_id, CAST(COALESCE(SUM(waiting), 0) AS BIGINT) AS n FROM queue_reports WHERE office_id = $1 AND reported_ms > $3 GROUP BY service_point_id".to_string(),
        ),
        (
            PART_ACTIVATED,
            "SELECT nik_hash FROM ikd_activations WHERE nik_hash = ANY($7::text[])".to_string(),
        ),
        (PART_DUE, due_holds_sql("$8", "$1", "$9")),
    ]
    .iter()
    .map(|(i, part)| format!("SELECT {i} AS part, row_to_json(t)::text AS body FROM ({part}) AS t"))
    .collect::<Vec<_>>()
    .join(" UNION ALL ")
});

async fn batch_reads_postgres(
    conn: &mut AnyConnection,
    keys: &BatchKeys<'_>,
) -> Result<BatchReads, sqlx::Error> {
    let query = sqlx::query(BATCH_READS_POSTGRES.as_str())
        .bind(keys.office_id)
        .bind(keys.local_date)
        .bind(keys.since_ms)
        .bind(postgres_text_array(keys.request_ids))
        .bind(postgres_text_array(keys.nik_hashes))
        .bind(postgres_text_array(keys.point_ids))
        .bind(postgres_text_array(keys.ikd_nik_hashes))
        .bind(keys.due_by_ms)
        .bind(keys.due_limit);
    let mut reads = BatchReads::default();
    for row in query.fetch_all(&mut *conn).await? {
        let part: i32 = row.try_get("part")?;
        let body = JsonRow::parse(&row.try_get::<String, _>("body")?)?;
        match part {
            PART_QUOTA_DAYS => reads.quota_days.push(QuotaDayRow::from_row(&body)?),
            PART_ANSWERS => {
                reads
                    .answers
                    .insert(body.text("request_id")?, StoredAnswer::from_row(&body)?);
            }
            PART_LIVE => {
                let r = ReservationRow::from_row(&body)?;
                reads.live.insert(r.nik_hash.clone(), r);
            }
            PART_SERVICE_POINTS => {
                let sp = ServicePointRow::from_row(&body)?;
                reads.service_points.insert(sp.service_point_id.clone(), sp);
            }
            PART_WAITING => {
                reads
                    .waiting
                    .insert(body.text("service_point_id")?, body.int("n")?);
            }
            PART_ACTIVATED => {
                reads.activated.insert(body.text("nik_hash")?);
            }
            PART_DUE => reads.due.push(ReservationRow::from_row(&body)?),
            other => return Err(json_error(format!("a batch read of unknown part {other}"))),
        }
    }
    // A UNION ALL keeps no order of its parts' rows.
    reads.due.sort_by_key(|r| r.expires_ms);
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_statements_number_their_parameters_after_the_earlier_ones() {
        assert_eq!(
            renumber("UPDATE t SET a = $1 WHERE b = $2 AND c = $12", 3),
            "UPDATE t SET a = $4 WHERE b = $5 AND c = $15"
        );
        let mut write = CombinedWrite::default();
        write.insert(
            "t",
            &["a", "b", "c"],
            vec![
                vec![
                    Value::Int(1),
                    Value::Text("x".into()),
                    Value::Bytes(vec![0x0a]),
                ],
                vec![
                    Value::Int(-2),
                    Value::Text("y".into()),
                    Value::Bytes(vec![]),
                ],
            ],
        );
        write.insert("empty", &["a"], Vec::new());
        write.statement(
            "UPDATE u SET n = $1 WHERE id = $2",
            vec![Value::Int(7), Value::Int(8)],
        );
        assert_eq!(
            write.parts,
            vec![
                "INSERT INTO t (a, b, c) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS u(a, b, c)".to_string(),
                "UPDATE u SET n = $4 WHERE id = $5".to_string(),
            ]
        );
        let texts: Vec<&str> = write
            .values
            .iter()
            .filter_map(|v| match v {
                Value::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, [r#"{1,-2}"#, r#"{"x","y"}"#, r#"{"\\x0a","\\x"}"#]);
        assert_eq!(write.values.len(), 5);
    }

    #[test]
    fn array_literals_keep_every_text_as_it_is() {
        assert_eq!(postgres_text_array(&[]), "{}");
        assert_eq!(
            postgres_text_array(&[r#"a"b"#, r"c\d", "e,{f} g", "NULL"]),
            r#"{"a\"b","c\\d","e,{f} g","NULL"}"#
        );
    }

    #[test]
    fn sqlite_placeholders_are_anonymous() {
        assert_eq!(placeholders(true, 5, 3), "?, ?, ?");
        assert_eq!(placeholders(false, 5, 3), "$5, $6, $7");
    }

    #[test]
    fn a_json_row_reads_like_a_database_row() {
        let row =
            JsonRow::parse(r#"{"method":"Reserve","fingerprint":"f","response":"\\x0aff","n":7}"#)
                .unwrap();
        let answer = StoredAnswer::from_row(&row).unwrap();
        assert_eq!(answer.method, "Reserve");
        assert_eq!(answer.response, vec![0x0a, 0xff]);
        assert_eq!(row.int("n").unwrap(), 7);
        // Wrong types and missing columns are errors naming the column, never a default.
        assert!(
            row.int("method")
                .unwrap_err()
                .to_string()
                .contains("method")
        );
        assert!(matches!(
            row.text("absent"),
            Err(sqlx::Error::ColumnNotFound(c)) if c == "absent"
        ));
        let bad = JsonRow::parse(r#"{"response":"0aff"}"#).unwrap();
        assert!(bad.bytes("response").is_err());
        assert!(JsonRow::parse("[1]").is_err());
        assert!(JsonRow::parse("not json").is_err());
    }
}
