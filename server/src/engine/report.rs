//! The daily stock report (GetStockReport): per local day of an office, the opening stock, what
//! came in and went out by kind, the closing stock, IKD referrals and activations.
//!
//! Everything comes from the database in one read-only snapshot: the movements are sums of the
//! ledger's `on_hand_delta` by kind, the opening and closing stocks are the ledger's own balance
//! column (`on_hand_after` of the last entry before the day began or ended), so "balanced"
//! checks the balance column against the deltas rather than restating one sum. A ledger entry
//! counts on the office-local day of its `recorded_ms` (when the blank physically moved); IKD
//! referrals move no blank and are counted per local day in `ikd_referral_days`.

use std::collections::HashMap;

use blangko_proto::v1::{GetStockReportResponse, LedgerEntryKind, StockReportDay};
use chrono::NaiveDate;
use sqlx::Row;

use super::{Engine, EngineError, EngineResult, FieldViolation, zone_of};
use crate::domain::calendar::format_local_date;
use crate::store::rows;

/// Most days in one report (a leap year): the report's work and answer size stay bounded.
pub const MAX_REPORT_DAYS: i64 = 366;

/// Milliseconds in a day (office zones have fixed offsets, no DST).
const DAY_MS: i64 = 86_400_000;

/// How far, in days, a ledger entry's stored `local_date` may lie from the day its
/// `recorded_ms` falls on in the office's zone now, either way: the stored date was computed in
/// the zone the office had when the entry was recorded, and office zones are UTC+7 to UTC+9
/// (`OfficeZone`), at most 2 hours apart, so one day at most (a unit test checks every pair).
const ZONE_SHIFT_DAYS: u64 = 1;

/// How many days a Commit entry's stored `local_date` may lie before the day of its
/// `recorded_ms` in the same zone: it carries the reservation's day, and a hold is committed at
/// most its time-to-live after it was made (later it is retaken, and only on its own day), so at
/// most `MAX_HOLD_TTL_SECS` rounded up to whole days. Every other entry carries the day of its
/// own `recorded_ms`.
const HOLD_LAG_DAYS: u64 =
    (crate::grpc::validate::MAX_HOLD_TTL_SECS as u64).div_ceil((DAY_MS / 1000) as u64);

/// The report's ledger queries take the entries whose stored dates lie in its days widened by
/// these margins (earlier by [`HOLD_LAG_DAYS`] and [`ZONE_SHIFT_DAYS`], later by
/// [`ZONE_SHIFT_DAYS`]) through the `ledger_by_day` index, then cut them exactly by
/// `recorded_ms`: a report of a few days reads those days, not the office's whole ledger
/// (BENCHMARKS.md, "The stock report on a year of ledger").
const MARGIN_BEFORE_DAYS: u64 = HOLD_LAG_DAYS + ZONE_SHIFT_DAYS;
const MARGIN_AFTER_DAYS: u64 = ZONE_SHIFT_DAYS;

/// One day's sums, before they become a row.
#[derive(Default, Clone, Copy)]
struct Sums {
    received: i64,
    transferred_in: i64,
    transferred_out: i64,
    printed: i64,
    spoiled: i64,
    stock_take: i64,
    ikd_activations: i64,
}

impl Engine {
    /// The daily stock report of `office_id` for the local days `from..=to` (validated by the
    /// caller for form; here against the office's today and the range limit).
    pub async fn stock_report(
        &self,
        office_id: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> EngineResult<GetStockReportResponse> {
        // One snapshot for every query below, so the figures add up even while counters work.
        let mut tx = self.store.begin_read().await?;
        let conn: &mut sqlx::AnyConnection = &mut tx;
        let office = Self::office_or_not_found(conn, office_id, "").await?;
        let zone = zone_of(&office)?;
        let today = zone.local_date(self.clock.now_ms());
        check_range(from, to, today)?;

        let offset_ms = i64::from(zone.utc_offset_secs()) * 1000;
        let start_ms = zone.start_of_day_ms(from);
        let end_ms = zone.start_of_day_ms(to) + DAY_MS;
        let first_index = (start_ms + offset_ms).div_euclid(DAY_MS);
        let (Some(first_date), Some(last_date)) = (
            from.checked_sub_days(chrono::Days::new(MARGIN_BEFORE_DAYS)),
            to.checked_add_days(chrono::Days::new(MARGIN_AFTER_DAYS)),
        ) else {
            return Err(EngineError::Internal(format!(
                "the report's days {from}..{to} cannot be widened by its margins"
            )));
        };
        let first_date = format_local_date(first_date);
        let last_date = format_local_date(last_date);
        // When the widened days cover every stored date of the office, the report covers its
        // whole ledger, and reading the table in order is cheaper than through the index
        // (`ledger_by_day` gives both dates at once). Otherwise the queries read the widened
        // days only: a range before the first entry or after the last reads nothing.
        let stored = sqlx::query(
            "SELECT (SELECT MIN(local_date) FROM ledger WHERE office_id = $1) AS first_date,
                    (SELECT MAX(local_date) FROM ledger WHERE office_id = $1) AS last_date",
        )
        .bind(office_id)
        .fetch_one(&mut *conn)
        .await?;
        let first_stored: Option<String> = stored.try_get("first_date")?;
        let last_stored: Option<String> = stored.try_get("last_date")?;
        let whole = match (&first_stored, &last_stored) {
            (Some(first), Some(last)) => {
                first_date.as_str() <= first.as_str() && last_date.as_str() >= last.as_str()
            }
            _ => false,
        };
        let dates = (!whole).then_some((first_date.as_str(), last_date.as_str()));
        // The day-by-day queries below read the ledger through this window.
        let window = DayWindow {
            office_id,
            offset_ms,
            start_ms,
            end_ms,
            dates,
        };

        let opening = opening_balance(conn, office_id, from, start_ms).await?;

        // The movements, summed per local day (an integer day index in the office's zone) and kind.
        let kinds = [
            LedgerEntryKind::Shipment,
            LedgerEntryKind::TransferIn,
            LedgerEntryKind::TransferOut,
            LedgerEntryKind::Commit,
            LedgerEntryKind::Spoiled,
            LedgerEntryKind::StockTake,
            LedgerEntryKind::IkdActivation,
        ];
        let kind_list = kinds
            .iter()
            .map(|k| (*k as i32).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let sums_sql = format!(
            "SELECT (recorded_ms + $1) / {DAY_MS} AS day_index, kind,
                    CAST(SUM(on_hand_delta) AS BIGINT) AS delta, CAST(COUNT(*) AS BIGINT) AS entries
             FROM ledger WHERE office_id = $2 {dates}
               AND recorded_ms >= $3 AND recorded_ms < $4 AND kind IN ({kind_list})
             GROUP BY (recorded_ms + $1) / {DAY_MS}, kind",
            dates = window.dates_sql()
        );
        let mut sums: HashMap<i64, Sums> = HashMap::new();
        for r in window.fetch(conn, &sums_sql).await? {
            let day: i64 = r.try_get("day_index")?;
            let kind: i64 = r.try_get("kind")?;
            let delta: i64 = r.try_get("delta")?;
            let entries: i64 = r.try_get("entries")?;
            let s = sums.entry(day).or_default();
            match LedgerEntryKind::try_from(kind as i32) {
                Ok(LedgerEntryKind::Shipment) => s.received += delta,
                Ok(LedgerEntryKind::TransferIn) => s.transferred_in += delta,
                Ok(LedgerEntryKind::TransferOut) => s.transferred_out -= delta,
                Ok(LedgerEntryKind::Commit) => s.printed -= delta,
                Ok(LedgerEntryKind::Spoiled) => s.spoiled -= delta,
                Ok(LedgerEntryKind::StockTake) => s.stock_take += delta,
                Ok(LedgerEntryKind::IkdActivation) => s.ikd_activations += entries,
                _ => {}
            }
        }

        // The balance at the end of each day that has entries: after the last entry recorded in
        // it. And the balance at its start, from its first entry alone (its balance after, minus
        // its own change): so that "each day opens where the day before closed" is checked
        // against the ledger, not assumed.
        let closing_of = window.balance_per_day(conn, "MAX", "on_hand_after").await?;
        let opening_of = window
            .balance_per_day(conn, "MIN", "on_hand_after - on_hand_delta")
            .await?;

        let referrals = rows::ikd_referrals_between(
            conn,
            office_id,
            &format_local_date(from),
            &format_local_date(to),
        )
        .await?;
        tx.commit().await?;

        let mut days = Vec::new();
        let mut previous_close = opening;
        let mut reconciled = true;
        let mut date = from;
        let mut index = first_index;
        while date <= to {
            let s = sums.get(&index).copied().unwrap_or_default();
            // A day with entries opens with the balance before its first entry; a day without
            // entries keeps the stock the day before closed with.
            let open = opening_of.get(&index).copied().unwrap_or(previous_close);
            let close = closing_of.get(&index).copied().unwrap_or(open);
            let computed =
                open + s.received + s.transferred_in - s.transferred_out - s.printed - s.spoiled
                    + s.stock_take;
            // The day adds up, and it opens where the day before closed.
            let balanced = computed == close && open == previous_close;
            if !balanced {
                reconciled = false;
            }
            let local_date = format_local_date(date);
            days.push(StockReportDay {
                ikd_referrals: referrals.get(&local_date).copied().unwrap_or(0).max(0) as u64,
                local_date,
                opening_on_hand: open.max(0) as u64,
                received: s.received.max(0) as u64,
                transferred_in: s.transferred_in.max(0) as u64,
                transferred_out: s.transferred_out.max(0) as u64,
                printed: s.printed.max(0) as u64,
                spoiled: s.spoiled.max(0) as u64,
                stock_take_difference: s.stock_take,
                closing_on_hand: close.max(0) as u64,
                ikd_activations: s.ikd_activations.max(0) as u64,
                balanced,
            });
            previous_close = close;
            index += 1;
            date = match date.succ_opt() {
                Some(d) => d,
                None => break,
            };
        }
        Ok(GetStockReportResponse {
            office_id: office.office_id.clone(),
            office_name: office.name.clone(),
            time_zone: office.time_zone.clone(),
            days,
            reconciled,
            ledger_sequence: office.ledger_seq.max(0) as u64,
        })
    }
}

/// The latest stored date, at most `$2`, of an office's entries recorded before `$3`: walks
/// `ledger_by_day` back from `$2`, past only the entries stored on those days but recorded
/// later (a few days' worth at most, by the margins).
pub const LAST_DATE_BEFORE: &str = "SELECT local_date FROM ledger
     WHERE office_id = $1 AND local_date <= $2 AND recorded_ms < $3
     ORDER BY local_date DESC LIMIT 1";
/// The balance after the last entry recorded before `$4`, among those stored on the dates
/// `$2..=$3`: along `ledger_by_day`. `seq + 0` keeps the planners off the primary key's order:
/// walking `(office_id, seq)` back from the newest entry looks cheap for `LIMIT 1`, and reads
/// everything recorded since those dates.
pub const LAST_BALANCE_BETWEEN: &str = "SELECT on_hand_after FROM ledger
     WHERE office_id = $1 AND local_date >= $2 AND local_date <= $3 AND recorded_ms < $4
     ORDER BY seq + 0 DESC LIMIT 1";

/// The office's balance when the local day `from` began (at `start_ms`): after the last entry
/// recorded before it, or 0 before the first.
///
/// Found through the stored dates, so that a report of a day long ago reads a few days of
/// ledger, not everything recorded since (walking back from the newest entry did). This assumes
/// that an office's entries are recorded in sequence order, as they are: each is chained under
/// the office's lock at the time of its server's clock. A clock set days back and corrected
/// later would file entries out of that order, and the balance found could be an older one.
///
/// An entry recorded before `from` is stored on a date at most [`ZONE_SHIFT_DAYS`] after the
/// day it was recorded, so on or before `from - 1 + ZONE_SHIFT_DAYS`. Let D be the latest such
/// date among the entries recorded before `from`. The last of those entries (by sequence) was
/// recorded no earlier than the day of the entry stored on D, less [`ZONE_SHIFT_DAYS`], and is
/// stored at most [`MARGIN_BEFORE_DAYS`] before its own day: so on a date within
/// D - `ZONE_SHIFT_DAYS` - `MARGIN_BEFORE_DAYS` ..= `from - 1 + ZONE_SHIFT_DAYS`.
async fn opening_balance(
    conn: &mut sqlx::AnyConnection,
    office_id: &str,
    from: NaiveDate,
    start_ms: i64,
) -> EngineResult<i64> {
    let Some(latest) = from
        .pred_opt()
        .and_then(|d| d.checked_add_days(chrono::Days::new(ZONE_SHIFT_DAYS)))
    else {
        return Ok(0);
    };
    let latest = format_local_date(latest);
    let found: Option<String> = sqlx::query(LAST_DATE_BEFORE)
        .bind(office_id)
        .bind(&latest)
        .bind(start_ms)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get("local_date"))
        .transpose()?;
    let Some(found) = found else {
        return Ok(0);
    };
    let earliest = crate::domain::calendar::parse_local_date(&found)
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .checked_sub_days(chrono::Days::new(ZONE_SHIFT_DAYS + MARGIN_BEFORE_DAYS))
        .map(format_local_date)
        .unwrap_or_default();
    let balance: Option<i64> = sqlx::query(LAST_BALANCE_BETWEEN)
        .bind(office_id)
        .bind(&earliest)
        .bind(&latest)
        .bind(start_ms)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get("on_hand_after"))
        .transpose()?;
    Ok(balance.unwrap_or(0))
}

/// An office's ledger over a range of local days (`offset_ms` turns unix ms into local ms;
/// `dates`, when the report does not cover the whole ledger: the first and last stored local
/// dates to read, the report's days widened by the margins).
struct DayWindow<'a> {
    office_id: &'a str,
    offset_ms: i64,
    start_ms: i64,
    end_ms: i64,
    dates: Option<(&'a str, &'a str)>,
}

impl DayWindow<'_> {
    /// The condition on the stored local date (`$5`, `$6`) that lets a query read a few days
    /// through `ledger_by_day`, or nothing when the whole ledger is read.
    fn dates_sql(&self) -> &'static str {
        match self.dates {
            Some(_) => "AND local_date >= $5 AND local_date <= $6",
            None => "",
        }
    }

    /// Runs `sql`, a query over the window: `$1` the zone's offset, `$2` the office, `$3..$4` the
    /// instants, and `$5..$6` the stored dates where it includes [`DayWindow::dates_sql`].
    async fn fetch(
        &self,
        conn: &mut sqlx::AnyConnection,
        sql: &str,
    ) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        let query = sqlx::query(sql)
            .bind(self.offset_ms)
            .bind(self.office_id)
            .bind(self.start_ms)
            .bind(self.end_ms);
        let query = match self.dates {
            Some((first, last)) => query.bind(first).bind(last),
            None => query,
        };
        query.fetch_all(conn).await
    }

    /// `balance` (an expression over one ledger row) of the first (`MIN`) or last (`MAX`) entry
    /// of each local day that has entries, by day index.
    async fn balance_per_day(
        &self,
        conn: &mut sqlx::AnyConnection,
        first_or_last: &str,
        balance: &str,
    ) -> EngineResult<HashMap<i64, i64>> {
        let dates = self.dates_sql();
        let sql = format!(
            "SELECT (recorded_ms + $1) / {DAY_MS} AS day_index, CAST({balance} AS BIGINT) AS balance
             FROM ledger WHERE office_id = $2 AND seq IN (
                 SELECT {first_or_last}(seq) FROM ledger WHERE office_id = $2
                   {dates} AND recorded_ms >= $3 AND recorded_ms < $4
                 GROUP BY (recorded_ms + $1) / {DAY_MS})"
        );
        let mut out = HashMap::new();
        for r in self.fetch(conn, &sql).await? {
            out.insert(r.try_get("day_index")?, r.try_get("balance")?);
        }
        Ok(out)
    }
}

/// The range must be ordered, end no later than the office's today and span at most
/// [`MAX_REPORT_DAYS`] days.
fn check_range(from: NaiveDate, to: NaiveDate, today: NaiveDate) -> EngineResult<()> {
    let mut violations = Vec::new();
    if to < from {
        violations.push(FieldViolation::new(
            "to_date",
            format!("must not be before from_date ({from})"),
            format!("tidak boleh sebelum from_date ({from})"),
        ));
    } else if (to - from).num_days() + 1 > MAX_REPORT_DAYS {
        violations.push(FieldViolation::new(
            "to_date",
            format!(
                "the report may span at most {MAX_REPORT_DAYS} days, got {}",
                (to - from).num_days() + 1
            ),
            format!(
                "laporan paling panjang {MAX_REPORT_DAYS} hari, diminta {}",
                (to - from).num_days() + 1
            ),
        ));
    }
    if to > today {
        violations.push(FieldViolation::new(
            "to_date",
            format!("must not be after the office's today ({today})"),
            format!("tidak boleh setelah hari ini di kantor itu ({today})"),
        ));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Invalid(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        crate::domain::calendar::parse_local_date(s).unwrap_or_default()
    }

    #[test]
    fn a_stored_local_date_is_within_the_margins() {
        use crate::domain::calendar::OfficeZone;
        let zones = [OfficeZone::Wib, OfficeZone::Wita, OfficeZone::Wit];
        let margin_ms = ZONE_SHIFT_DAYS as i64 * DAY_MS;
        for recorded in zones {
            for now in zones {
                // Two offsets less than a day apart put one instant on the same or an adjacent
                // local day; the margin must cover that for every pair.
                let apart_ms = (i64::from(recorded.utc_offset_secs())
                    - i64::from(now.utc_offset_secs()))
                .abs()
                    * 1000;
                assert!(apart_ms < margin_ms, "{recorded:?} and {now:?}");
            }
        }
        // The list above is every zone: a new one fails to compile here until it is added.
        for zone in zones {
            match zone {
                OfficeZone::Wib | OfficeZone::Wita | OfficeZone::Wit => {}
            }
        }
    }

    #[test]
    fn the_range_is_ordered_bounded_and_not_in_the_future() {
        let today = d("2026-11-29");
        assert!(check_range(d("2026-11-01"), d("2026-11-29"), today).is_ok());
        assert!(check_range(d("2025-11-29"), d("2026-11-29"), today).is_ok()); // 366 days
        assert!(check_range(d("2025-11-28"), d("2026-11-29"), today).is_err()); // 367 days
        assert!(check_range(d("2026-11-10"), d("2026-11-09"), today).is_err());
        assert!(check_range(d("2026-11-29"), d("2026-11-30"), today).is_err());
    }
}
