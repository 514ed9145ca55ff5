//! GetQuota on SQLite's read connections (`store::direct::Reads`): the office, the service
//! point, today's quota row and the office's use, read in one read transaction as function calls
//! on the calling thread, then the same [`snapshot_from`] as the general path.
//!
//! A service point with no quota row for today yet gets what the row would be, computed as the
//! general path does (a read writes nothing). An unknown office or service point (NOT_FOUND), no
//! free read connection or a busy database: None, and the general path answers.

use blangko_proto::v1::QuotaSnapshot;
use rusqlite::Connection;

use super::{SnapshotExtras, snapshot_from};
use crate::domain::calendar::format_local_date;
use crate::engine::{
    Engine, EngineError, EngineResult, PacedFigures, QUEUE_REPORT_TTL_MS, paced_on, policy_of,
    quota_day_from, zone_of,
};
use crate::store::direct::{self, SHARED_SQL as SQL, query, query_optional};
use crate::store::rows::{Columns, QuotaDayRow, ServicePointRow, Value};

impl Engine {
    /// Today's snapshot of a service point from SQLite's read connections. None: not SQLite, or
    /// the general path must answer (see the module comment).
    pub(super) fn quota_snapshot_sqlite(
        &self,
        office_id: &str,
        service_point_id: &str,
    ) -> EngineResult<Option<QuotaSnapshot>> {
        let Some(reads) = self.store.reads() else {
            return Ok(None);
        };
        let snapshot = reads.read(|tx| {
            let now = self.clock.now_ms();
            snapshot(tx, office_id, service_point_id, now)
        })?;
        Ok(snapshot.flatten())
    }
}

/// The snapshot as the general path builds it (`Engine::quota_snapshot_of`), or None when it
/// needs the general path.
fn snapshot(
    conn: &Connection,
    office_id: &str,
    service_point_id: &str,
    now: i64,
) -> EngineResult<Option<QuotaSnapshot>> {
    let Some(office) = direct::office(conn, office_id)? else {
        return Ok(None);
    };
    let point = [Value::text(office_id), Value::text(service_point_id)];
    let Some(sp) = query_optional(conn, &SQL.service_point, &point, |r| {
        ServicePointRow::from_row(r)
    })?
    else {
        return Ok(None);
    };
    let zone = zone_of(&office)?;
    let today = zone.local_date(now);
    let date = format_local_date(today);
    let day = [
        Value::text(office_id),
        Value::text(service_point_id),
        Value::text(&date),
    ];
    let qd = match query_optional(conn, &SQL.quota_day, &day, |r| QuotaDayRow::from_row(r))? {
        Some(qd) => qd,
        None => {
            let paced = if paced_on(&sp, today)? {
                let office_day = [Value::text(office_id), Value::text(&date)];
                let siblings = query(conn, &SQL.service_points_of_office, &office_day[..1], |r| {
                    ServicePointRow::from_row(r)
                })?;
                let days = query(conn, &SQL.quota_days_of_office, &office_day, |r| {
                    QuotaDayRow::from_row(r)
                })?;
                Some(PacedFigures::of(&siblings, &days))
            } else {
                None
            };
            quota_day_from(&office, &sp, today, paced)?
        }
    };
    let policy = policy_of(&sp)?;
    let since = now - QUEUE_REPORT_TTL_MS;
    let figures = [
        Value::text(office_id),
        Value::text(&date),
        Value::text(service_point_id),
        Value::Int(since),
    ];
    let extras = query_optional(conn, &SQL.office_used_and_waiting, &figures, |r| {
        Ok(SnapshotExtras {
            office_used: r.int("used")?,
            waiting: r.int("waiting")?,
        })
    })?
    .ok_or_else(|| EngineError::Internal("the office's use today read no row".into()))?;
    snapshot_from(&office, &policy, &qd, zone, now, &extras).map(Some)
}
