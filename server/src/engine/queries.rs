//! Read-only operations: quota snapshots, stock levels and listings. None of them writes, so a
//! GetQuota never creates a day's quota row (it computes what the row would be).

mod sqlite;

use std::collections::HashMap;

use blangko_proto::v1::{
    LedgerEntry, QuotaMode, QuotaPolicy, QuotaSnapshot, Reservation, ReservationState, StockLevel,
};
use chrono::NaiveDate;
use sqlx::AnyConnection;

use super::{
    COVER_HISTORY_DAYS, Engine, EngineError, EngineResult, QUEUE_REPORT_TTL_MS, ledger, policy_of,
    priority_reasons, release_at_ms, reservation_to_proto, timestamp, zone_of,
};
use crate::domain::calendar::{OfficeZone, ServiceCalendar, format_local_date, parse_local_date};
use crate::domain::forecast::days_of_cover;
use crate::domain::quota::{self, AdmissionInput};
use crate::store::rows::{self, OfficeRow, QuotaDayRow, ServicePointRow};

/// Largest page of ListReservations and ListStock.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Largest page of ListLedgerEntries.
pub const MAX_LEDGER_PAGE_SIZE: u32 = 1000;
/// Most ledger entries one ListLedgerEntries call with a kind filter looks at (an office's rare
/// kinds, e.g. its shipments among a year of Reserves and Commits, would otherwise have each
/// call read the rest of the chain).
pub const MAX_LEDGER_SCAN: i64 = 10_000;
/// Page size when the caller gives 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// The admission figures of a service point right now, for a caller of reason class
/// `is_priority`, from figures already in hand (reason caps are added by Reserve itself).
#[allow(clippy::too_many_arguments)]
pub(crate) fn admission_figures(
    office: &OfficeRow,
    policy: &QuotaPolicy,
    qd: &QuotaDayRow,
    zone: OfficeZone,
    today: NaiveDate,
    now_ms: i64,
    is_priority: bool,
    office_used: i64,
) -> AdmissionInput {
    let before_release = now_ms < release_at_ms(zone, today, policy);
    AdmissionInput {
        closed: qd.closed,
        quota: qd.quota.max(0) as u64,
        used: qd.used().max(0) as u64,
        priority_used: qd.priority_used.max(0) as u64,
        priority_reserved: if before_release {
            quota::priority_share(qd.quota.max(0) as u64, policy.priority_share_percent)
        } else {
            0
        },
        is_priority,
        before_release,
        office_cap: (office.daily_cap > 0).then_some(office.daily_cap as u64),
        office_used: office_used.max(0) as u64,
        available: office.available().max(0) as u64,
        reason_caps: Vec::new(),
    }
}

/// As [`admission_figures`], reading the office's use today from the database.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn admission_input(
    conn: &mut AnyConnection,
    office: &OfficeRow,
    policy: &QuotaPolicy,
    qd: &QuotaDayRow,
    zone: OfficeZone,
    today: NaiveDate,
    now_ms: i64,
    is_priority: bool,
) -> EngineResult<AdmissionInput> {
    let office_used = rows::office_used_on(conn, &office.office_id, &qd.local_date).await?;
    Ok(admission_figures(
        office,
        policy,
        qd,
        zone,
        today,
        now_ms,
        is_priority,
        office_used,
    ))
}

/// The figures a snapshot shows besides the quota row and the office row.
pub(crate) struct SnapshotExtras {
    /// Held plus committed today over the office.
    pub office_used: i64,
    /// Applicants waiting at the service point (live queue reports).
    pub waiting: i64,
}

/// Builds a snapshot from figures in hand.
pub(crate) fn snapshot_from(
    office: &OfficeRow,
    policy: &QuotaPolicy,
    qd: &QuotaDayRow,
    zone: OfficeZone,
    now_ms: i64,
    extras: &SnapshotExtras,
) -> EngineResult<QuotaSnapshot> {
    let today =
        parse_local_date(&qd.local_date).map_err(|e| EngineError::Internal(e.to_string()))?;
    let input = admission_figures(
        office,
        policy,
        qd,
        zone,
        today,
        now_ms,
        true,
        extras.office_used,
    );
    let (remaining, remaining_non_priority) = quota::remaining(&input);
    let next_reset = zone.start_of_day_ms(today.succ_opt().unwrap_or(today));
    let release = release_at_ms(zone, today, policy);
    let has_share = policy.priority_share_percent > 0 && !priority_reasons(policy).is_empty();
    Ok(QuotaSnapshot {
        office_id: office.office_id.clone(),
        service_point_id: qd.service_point_id.clone(),
        local_date: qd.local_date.clone(),
        quota: count(qd.quota),
        held: count(qd.held),
        committed: count(qd.committed),
        remaining: count(remaining),
        remaining_non_priority: count(remaining_non_priority),
        on_hand: count(office.on_hand),
        available: count(office.available()),
        office_daily_cap: count(office.daily_cap),
        office_used_today: count(input.office_used),
        waiting: count(extras.waiting),
        mode: if policy.mode == QuotaMode::Paced as i32 {
            QuotaMode::Paced as i32
        } else {
            QuotaMode::Fixed as i32
        },
        supply_overdue: qd.supply_overdue,
        closed: qd.closed,
        next_reset_at: Some(timestamp(next_reset)),
        priority_release_at: has_share.then(|| timestamp(release)),
        as_of: Some(timestamp(now_ms)),
    })
}

/// Today's quota of an office, summed over all its service points: a point's stored row of the
/// day, or, for a point no transaction has touched yet today, the quota its first one will
/// store (as GetQuota shows it). Summing the stored rows alone gave 0 in the morning, before
/// the first Reserve, which is when the daily notice is published.
fn today_quota_of(
    office: &OfficeRow,
    points: &[ServicePointRow],
    days: &[QuotaDayRow],
    today: NaiveDate,
) -> EngineResult<i64> {
    let mut total = 0i64;
    for sp in points {
        let stored = days
            .iter()
            .find(|q| q.service_point_id == sp.service_point_id);
        total += match stored {
            Some(q) => q.quota,
            None => super::quota_day_among(office, sp, today, points, days)?.quota,
        };
    }
    Ok(total)
}

/// Reads what a snapshot needs besides the quota and office rows.
pub(crate) async fn snapshot_extras(
    conn: &mut AnyConnection,
    office_id: &str,
    service_point_id: &str,
    local_date: &str,
    now_ms: i64,
) -> EngineResult<SnapshotExtras> {
    let (office_used, waiting) = rows::office_used_and_waiting(
        conn,
        office_id,
        service_point_id,
        local_date,
        now_ms - QUEUE_REPORT_TTL_MS,
    )
    .await?;
    Ok(SnapshotExtras {
        office_used,
        waiting,
    })
}

/// Builds the snapshot of a service point from figures read in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn snapshot(
    conn: &mut AnyConnection,
    office: &OfficeRow,
    sp: &ServicePointRow,
    policy: &QuotaPolicy,
    qd: &QuotaDayRow,
    calendar: &ServiceCalendar,
    zone: OfficeZone,
    now_ms: i64,
) -> EngineResult<QuotaSnapshot> {
    let _ = calendar;
    let extras = snapshot_extras(
        conn,
        &office.office_id,
        &sp.service_point_id,
        &qd.local_date,
        now_ms,
    )
    .await?;
    snapshot_from(office, policy, qd, zone, now_ms, &extras)
}

impl Engine {
    /// Loads an office or answers NOT_FOUND.
    pub(crate) async fn office_or_not_found(
        conn: &mut AnyConnection,
        office_id: &str,
        lock: &str,
    ) -> EngineResult<OfficeRow> {
        rows::office(conn, office_id, lock)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                kind: "office",
                id: office_id.to_string(),
            })
    }

    /// Loads a service point or answers NOT_FOUND.
    pub(crate) async fn service_point_or_not_found(
        conn: &mut AnyConnection,
        office_id: &str,
        service_point_id: &str,
    ) -> EngineResult<ServicePointRow> {
        rows::service_point(conn, office_id, service_point_id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                kind: "service point",
                id: format!("{office_id}/{service_point_id}"),
            })
    }

    /// Today's snapshot of a service point. Consumes nothing and writes nothing.
    pub async fn get_quota(
        &self,
        office_id: &str,
        service_point_id: &str,
    ) -> EngineResult<QuotaSnapshot> {
        // SQLite: on a read connection of its own, unless it needs what only the path below does
        // (see `queries/sqlite.rs`).
        if let Some(snapshot) = self.quota_snapshot_sqlite(office_id, service_point_id)? {
            self.metrics.record_quota_read("direct");
            return Ok(snapshot);
        }
        self.metrics.record_quota_read("general");
        // One transaction, so that the rows a snapshot combines are of one moment. A snapshot
        // reads only what Reserve batches keep in place: no fold of the Reserve journal.
        let mut tx = self.store.begin_read_without_fold().await?;
        let conn: &mut AnyConnection = &mut tx;
        let office = Self::office_or_not_found(conn, office_id, "").await?;
        let sp = Self::service_point_or_not_found(conn, office_id, service_point_id).await?;
        let snapshot = self.quota_snapshot_of(conn, &office, &sp).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    /// Today's snapshot of a loaded service point, read on `conn` (GetQuota, metrics).
    pub(crate) async fn quota_snapshot_of(
        &self,
        conn: &mut AnyConnection,
        office: &OfficeRow,
        sp: &ServicePointRow,
    ) -> EngineResult<QuotaSnapshot> {
        let zone = zone_of(office)?;
        let now = self.clock.now_ms();
        let today = zone.local_date(now);
        let date = format_local_date(today);
        let qd = match rows::quota_day(conn, &office.office_id, &sp.service_point_id, &date, "")
            .await?
        {
            Some(q) => q,
            None => super::compute_quota_day(conn, office, sp, today).await?,
        };
        let policy = policy_of(sp)?;
        let calendar = super::calendar_of(sp);
        snapshot(conn, office, sp, &policy, &qd, &calendar, zone, now).await
    }

    /// One office's stock level.
    pub async fn get_stock(&self, office_id: &str) -> EngineResult<StockLevel> {
        // One transaction: the office row and its quota rows of the day of one moment. A stock
        // level reads only what Reserve batches keep in place: no fold of the Reserve journal.
        let mut tx = self.store.begin_read_without_fold().await?;
        let conn: &mut AnyConnection = &mut tx;
        let office = Self::office_or_not_found(conn, office_id, "").await?;
        let level = self.stock_level(conn, &office).await?;
        tx.commit().await?;
        Ok(level)
    }

    /// The stock level of a loaded office.
    pub(crate) async fn stock_level(
        &self,
        conn: &mut AnyConnection,
        office: &OfficeRow,
    ) -> EngineResult<StockLevel> {
        let zone = zone_of(office)?;
        let now = self.clock.now_ms();
        let today = zone.local_date(now);
        let date = format_local_date(today);
        let days = rows::quota_days_of_office(conn, &office.office_id, &date).await?;
        let points = rows::service_points_of(conn, &office.office_id).await?;
        let today_quota = today_quota_of(office, &points, &days, today)?;
        let today_used: i64 = days.iter().map(|q| q.used()).sum();
        let today_committed: i64 = days.iter().map(|q| q.committed).sum();
        // Mean daily use over the office's last service days: the days any of its service points
        // serves (an MPP open on Saturdays counts its Saturdays; Monday to Friday for an office
        // without service points yet).
        let calendars: Vec<ServiceCalendar> = points.iter().map(super::calendar_of).collect();
        let history = office_service_days(&calendars, today, COVER_HISTORY_DAYS);
        let (mean, cover) = match history.last() {
            Some(oldest) => {
                let used =
                    ledger::daily_use(conn, &office.office_id, &format_local_date(*oldest), &date)
                        .await?;
                let per_day: Vec<u64> = history
                    .iter()
                    .map(|d| {
                        let key = format_local_date(*d);
                        used.iter()
                            .find(|(day, _)| *day == key)
                            .map(|(_, n)| (*n).max(0) as u64)
                            .unwrap_or(0)
                    })
                    .collect();
                days_of_cover(office.on_hand.max(0) as u64, &per_day)
            }
            None => (0.0, None),
        };
        let expected = parse_local_date(&office.expected_next_supply_date).ok();
        Ok(StockLevel {
            office_id: office.office_id.clone(),
            office_name: office.name.clone(),
            province_code: office.province_code.clone(),
            on_hand: count(office.on_hand),
            held: count(office.held),
            available: count(office.available()),
            today_quota: count(today_quota),
            today_used: count(today_used),
            today_committed: count(today_committed),
            mean_daily_use: mean,
            days_of_cover: cover.unwrap_or(0.0),
            has_days_of_cover: cover.is_some(),
            expected_next_supply_date: office.expected_next_supply_date.clone(),
            supply_overdue: expected.is_none_or(|d| d <= today),
            local_date: date,
            ledger_head_hash: office.ledger_head.clone(),
            ledger_seq: office.ledger_seq.max(0) as u64,
            as_of: Some(timestamp(now)),
        })
    }

    /// Stock across offices, by office id after `after`.
    pub async fn list_stock(
        &self,
        province_code: &str,
        after: &str,
        page_size: u32,
    ) -> EngineResult<(Vec<StockLevel>, String)> {
        // One transaction: every office of the page as of one moment, as GetStock reads one
        // (without a fold of the Reserve journal, likewise).
        let mut tx = self.store.begin_read_without_fold().await?;
        let conn: &mut AnyConnection = &mut tx;
        let (offices, next) =
            rows::offices_page_and_next(conn, province_code, after, page_size).await?;
        let mut stocks = Vec::with_capacity(offices.len());
        for office in &offices {
            stocks.push(self.stock_level(conn, office).await?);
        }
        tx.commit().await?;
        Ok((stocks, next))
    }

    /// Ledger entries of an office after sequence `after_seq`, at most `page_size`, and the
    /// sequence to go on after when the chain goes on beyond what was read (one entry more than
    /// the page is read to know). With a kind filter, at most [`MAX_LEDGER_SCAN`] entries of the
    /// chain are looked at per call: the page may come back short, even empty, with a token
    /// that goes on from where the look stopped.
    pub async fn list_ledger(
        &self,
        office_id: &str,
        kind: i32,
        after_seq: i64,
        page_size: u32,
    ) -> EngineResult<(Vec<LedgerEntry>, Option<i64>)> {
        let mut conn = self.store.reader().await?.acquire().await?;
        Self::office_or_not_found(&mut conn, office_id, "").await?;
        // With a kind filter the look stops at `until_seq`, and goes on from there while the
        // ledger table holds newer entries. Its newest is read before the entries: the table
        // always holds an office's entries from 1 up to its newest without a gap (SQLite's
        // Reserve journal is folded in order, and no write overtakes it), so the read below
        // sees every entry up to it. Not the office's head: a Reserve batch may have journaled
        // entries since the reader folded, which the table does not show yet, and a token past
        // them would skip them for good.
        let (until_seq, in_table) = if kind == 0 {
            (i64::MAX, None)
        } else {
            let newest: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM ledger WHERE office_id = $1")
                    .bind(office_id)
                    .fetch_one(&mut *conn)
                    .await?;
            (after_seq.saturating_add(MAX_LEDGER_SCAN), newest)
        };
        let mut entries = ledger::entries_after(
            &mut conn,
            office_id,
            kind,
            after_seq,
            until_seq,
            i64::from(page_size) + 1,
        )
        .await?;
        let next = if entries.len() > page_size as usize {
            entries.truncate(page_size as usize);
            entries.last().map(|e| e.entry.sequence as i64)
        } else if in_table.is_some_and(|newest| until_seq < newest) {
            Some(until_seq)
        } else {
            None
        };
        Ok((entries.into_iter().map(|e| e.entry).collect(), next))
    }

    /// Reservations of an office, newest first; only those the Reserve calls stored under
    /// `made_by` (scoped request keys) made, when it is not empty.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_reservations(
        &self,
        office_id: &str,
        service_point_id: &str,
        counter_id: &str,
        state: ReservationState,
        local_date: Option<NaiveDate>,
        before_seq: Option<i64>,
        page_size: u32,
        made_by: &[(String, &str)],
    ) -> EngineResult<ListedReservations> {
        let mut conn = self.store.reader().await?.acquire().await?;
        let office = Self::office_or_not_found(&mut conn, office_id, "").await?;
        // The reservations the stored answers of these Reserve calls name, each with the first
        // call (in the caller's order) that named it.
        let mut call_of: HashMap<String, &str> = HashMap::new();
        if !made_by.is_empty() {
            let keys: Vec<&str> = made_by.iter().map(|(key, _)| key.as_str()).collect();
            let answers = rows::stored_answers(&mut conn, &keys).await?;
            for (key, sent) in made_by {
                let Some(answer) = answers.get(key) else {
                    continue;
                };
                if answer.method != super::reserve::RESERVE {
                    continue;
                }
                let response: blangko_proto::v1::ReserveResponse =
                    super::decode_answer(&answer.response)?;
                if let Some(blangko_proto::v1::reserve_response::Outcome::Reservation(r)) =
                    response.outcome
                {
                    call_of.entry(r.reservation_id).or_insert(sent);
                }
            }
            if call_of.is_empty() {
                return Ok(ListedReservations::default());
            }
        }
        let made: Vec<String> = call_of.keys().cloned().collect();
        let zone = zone_of(&office)?;
        let now = self.clock.now_ms();
        let day = local_date.unwrap_or_else(|| zone.local_date(now));
        let date = format_local_date(day);
        let state_text = match state {
            ReservationState::Unspecified => "",
            ReservationState::Held => "HELD",
            ReservationState::Committed => "COMMITTED",
            ReservationState::Cancelled => "CANCELLED",
            ReservationState::Expired => "EXPIRED",
        };
        let rows = rows::reservations_page(
            &mut conn,
            office_id,
            service_point_id,
            counter_id,
            state_text,
            &date,
            before_seq,
            i64::from(page_size) + 1,
            &made,
        )
        .await?;
        let more = rows.len() > page_size as usize;
        let page: Vec<_> = rows.into_iter().take(page_size as usize).collect();
        // The next page is of the same day, even when the office's midnight passes meanwhile.
        let next = if more {
            page.last().map(|r| (day, r.office_seq))
        } else {
            None
        };
        Ok(ListedReservations {
            made_by: if made_by.is_empty() {
                Vec::new()
            } else {
                page.iter()
                    .map(|r| {
                        call_of
                            .get(&r.reservation_id)
                            .map(|sent| sent.to_string())
                            .unwrap_or_default()
                    })
                    .collect()
            },
            reservations: page
                .iter()
                .map(|r| reservation_to_proto(r, false))
                .collect(),
            next,
        })
    }
}

/// A page of ListReservations.
#[derive(Debug, Default)]
pub struct ListedReservations {
    pub reservations: Vec<Reservation>,
    /// The next page's day and sequence; None on the last page.
    pub next: Option<(NaiveDate, i64)>,
    /// With a filter by request id: each reservation's call, in the same order.
    pub made_by: Vec<String>,
}

/// A stored count as a proto count: never negative, and a count past `u32::MAX` shows as
/// `u32::MAX` instead of wrapping to a small number.
pub(crate) fn count(value: impl Into<i128>) -> u32 {
    u32::try_from(value.into().max(0)).unwrap_or(u32::MAX)
}

/// The last `n` days before `today` on which any of `calendars` serves (Monday to Friday when
/// there is none), newest first, as [`ServiceCalendar::previous_service_days`] gives them.
fn office_service_days(
    calendars: &[ServiceCalendar],
    today: NaiveDate,
    n: usize,
) -> Vec<NaiveDate> {
    if calendars.is_empty() {
        return ServiceCalendar::monday_to_friday().previous_service_days(today, n);
    }
    let mut days: Vec<NaiveDate> = calendars
        .iter()
        .flat_map(|c| c.previous_service_days(today, n))
        .collect();
    days.sort_unstable_by(|a, b| b.cmp(a));
    days.dedup();
    days.truncate(n);
    days
}

#[cfg(test)]
mod tests {
    use super::{NaiveDate, ServiceCalendar, count, office_service_days};

    #[test]
    fn the_office_serves_on_the_days_any_service_point_serves() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 12, d).expect("date");
        // Monday 7 December 2026; the week before runs Monday 30 Nov to Sunday 6 Dec.
        let today = day(7);
        let weekdays = ServiceCalendar::monday_to_friday();
        let mut mpp = ServiceCalendar::monday_to_friday();
        mpp.weekdays[5] = true; // the MPP also opens on Saturdays
        assert_eq!(
            office_service_days(std::slice::from_ref(&weekdays), today, 6),
            [
                day(4),
                day(3),
                day(2),
                day(1),
                NaiveDate::from_ymd_opt(2026, 11, 30).expect("date"),
                NaiveDate::from_ymd_opt(2026, 11, 27).expect("date")
            ]
        );
        // With the MPP, Saturday 5 December is a service day of the office.
        assert_eq!(
            office_service_days(&[weekdays.clone(), mpp], today, 3),
            [day(5), day(4), day(3)]
        );
        // No service point yet: Monday to Friday.
        assert_eq!(office_service_days(&[], today, 2), [day(4), day(3)]);
    }

    #[test]
    fn counts_past_u32_saturate_and_negative_ones_are_zero() {
        assert_eq!(count(7i64), 7);
        assert_eq!(count(-3i64), 0);
        assert_eq!(count(4_294_967_296_i64), u32::MAX, "not wrapped to 0");
        assert_eq!(count(u64::MAX), u32::MAX);
    }
}
