//! The office's local day: time zones, service days and the local date/time text formats.
//!
//! A quota day is the office's local calendar day, never the UTC day: at 06:00 WIB it is still
//! the previous day in UTC. Indonesia's three zones are fixed offsets with no DST, so the
//! conversions are plain arithmetic and need no time-zone database.
//!
//! Every search over days is bounded (366 days forward or back, 3660 days for a span) so a
//! calendar with no service day at all cannot make a request loop.

use std::collections::BTreeSet;

use chrono::{Datelike, Days, NaiveDate, NaiveTime, Timelike};

/// Milliseconds in a day; a fixed-offset zone has no 23- or 25-hour days.
const MS_PER_DAY: i64 = 86_400_000;

/// `NaiveDate::num_days_from_ce` of 1970-01-01, to turn dates into days since the Unix epoch.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// How far next/previous service-day searches look: one year covers any weekly pattern plus a
/// long run of holidays.
const SEARCH_LIMIT_DAYS: u64 = 366;

/// The longest span `service_days_between` counts: ten years of supply planning.
const SPAN_LIMIT_DAYS: i64 = 3660;

/// An Indonesian time zone an office can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfficeZone {
    /// Asia/Jakarta, UTC+7: Java, Sumatra, West and Central Kalimantan.
    Wib,
    /// Asia/Makassar, UTC+8: Bali, Nusa Tenggara, Sulawesi, South/East/North Kalimantan.
    Wita,
    /// Asia/Jayapura, UTC+9: Maluku and Papua.
    Wit,
}

impl OfficeZone {
    /// "Asia/Jakarta" | "Asia/Makassar" | "Asia/Jayapura"; empty string → Wib (the default). Else Err.
    pub fn parse(name: &str) -> Result<OfficeZone, CalendarError> {
        match name {
            "" | "Asia/Jakarta" => Ok(OfficeZone::Wib),
            "Asia/Makassar" => Ok(OfficeZone::Wita),
            "Asia/Jayapura" => Ok(OfficeZone::Wit),
            // The input is not echoed: it may be arbitrarily long.
            _ => Err(CalendarError::UnknownZone),
        }
    }

    /// The IANA name stored with the office and sent over the API.
    pub fn iana_name(self) -> &'static str {
        match self {
            OfficeZone::Wib => "Asia/Jakarta",
            OfficeZone::Wita => "Asia/Makassar",
            OfficeZone::Wit => "Asia/Jayapura",
        }
    }

    /// The label Indonesians read on a clock: "WIB", "WITA" or "WIT".
    pub fn label(self) -> &'static str {
        match self {
            OfficeZone::Wib => "WIB",
            OfficeZone::Wita => "WITA",
            OfficeZone::Wit => "WIT",
        }
    }

    /// Offset from UTC in seconds: 7h, 8h, 9h; none has DST.
    pub fn utc_offset_secs(self) -> i32 {
        match self {
            OfficeZone::Wib => 7 * 3600,
            OfficeZone::Wita => 8 * 3600,
            OfficeZone::Wit => 9 * 3600,
        }
    }

    /// The local calendar date at `now_ms` (Unix milliseconds); clamps outside chrono's range.
    pub fn local_date(self, now_ms: i64) -> NaiveDate {
        let local_days = self.local_ms(now_ms).div_euclid(MS_PER_DAY);
        // i64 milliseconds reach far beyond chrono's ±262,000 years; clamp instead of failing.
        let days_from_ce = i64::from(UNIX_EPOCH_DAYS_FROM_CE) + local_days;
        match i32::try_from(days_from_ce)
            .ok()
            .and_then(NaiveDate::from_num_days_from_ce_opt)
        {
            Some(date) => date,
            None if local_days < 0 => NaiveDate::MIN,
            None => NaiveDate::MAX,
        }
    }

    /// The local wall-clock time at `now_ms` (Unix milliseconds).
    pub fn local_time(self, now_ms: i64) -> NaiveTime {
        let ms_of_day = self.local_ms(now_ms).rem_euclid(MS_PER_DAY);
        // ms_of_day < 86_400_000, so both parts fit in u32 and form a valid time.
        let secs = u32::try_from(ms_of_day / 1000).unwrap_or(0);
        let nanos = u32::try_from(ms_of_day % 1000).unwrap_or(0) * 1_000_000;
        NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos).unwrap_or(NaiveTime::MIN)
    }

    /// Unix ms of local midnight at the start of `date`.
    pub fn start_of_day_ms(self, date: NaiveDate) -> i64 {
        // chrono dates span about ±95 million days, times 86.4 million ms: well inside i64.
        let days = i64::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE);
        days * MS_PER_DAY - i64::from(self.utc_offset_secs()) * 1000
    }

    /// Unix ms of `time` on local `date`.
    pub fn at_ms(self, date: NaiveDate, time: NaiveTime) -> i64 {
        let time_ms = i64::from(time.num_seconds_from_midnight()) * 1000
            + i64::from(time.nanosecond() / 1_000_000);
        self.start_of_day_ms(date) + time_ms
    }

    /// Unix ms shifted to local wall-clock ms; saturates rather than overflowing on absurd input.
    fn local_ms(self, now_ms: i64) -> i64 {
        now_ms.saturating_add(i64::from(self.utc_offset_secs()) * 1000)
    }
}

/// Which weekdays and dates a service point serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCalendar {
    /// Open weekdays, index 0 = Monday … 6 = Sunday (MPP service malls often open Saturday).
    pub weekdays: [bool; 7],
    /// Dates closed regardless of the weekday: national holidays, cuti bersama, local closures.
    pub holidays: BTreeSet<NaiveDate>,
}

impl ServiceCalendar {
    /// Monday to Friday, no holidays: the usual Disdukcapil office week.
    pub fn monday_to_friday() -> Self {
        ServiceCalendar {
            weekdays: [true, true, true, true, true, false, false],
            holidays: BTreeSet::new(),
        }
    }

    /// True when `date` is an open weekday and not a holiday.
    pub fn is_service_day(&self, date: NaiveDate) -> bool {
        let weekday = date.weekday().num_days_from_monday() as usize;
        self.weekdays[weekday] && !self.holidays.contains(&date)
    }

    /// The first service day strictly after `date`, searching at most 366 days; None if none.
    pub fn next_service_day_after(&self, date: NaiveDate) -> Option<NaiveDate> {
        (1..=SEARCH_LIMIT_DAYS)
            .filter_map(|n| date.checked_add_days(Days::new(n)))
            .find(|d| self.is_service_day(*d))
    }

    /// Service days d with from <= d < until (0 if until <= from); the span is capped at 3660 days.
    pub fn service_days_between(&self, from: NaiveDate, until: NaiveDate) -> u32 {
        let span_days = (until - from).num_days().clamp(0, SPAN_LIMIT_DAYS);
        let span_days = usize::try_from(span_days).unwrap_or(0);
        let count = from
            .iter_days()
            .take(span_days)
            .filter(|d| self.is_service_day(*d))
            .count();
        // At most 3660, so it always fits.
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// The last `n` service days strictly before `date`, newest first, searching at most 366 days back.
    pub fn previous_service_days(&self, date: NaiveDate, n: usize) -> Vec<NaiveDate> {
        (1..=SEARCH_LIMIT_DAYS)
            .filter_map(|back| date.checked_sub_days(Days::new(back)))
            .filter(|d| self.is_service_day(*d))
            .take(n)
            .collect()
    }
}

/// Why a written date, time or time zone was refused: English as `Display`, Bahasa Indonesia
/// from [`CalendarError::indonesian`]. The input itself is never repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// Not "YYYY-MM-DD".
    #[error("date must be written as YYYY-MM-DD")]
    DateShape,
    /// "YYYY-MM-DD", but no such day (2026-02-30).
    #[error("date is not a real calendar date")]
    NoSuchDate,
    /// Not "HH:MM".
    #[error("time must be written as HH:MM")]
    TimeShape,
    /// "HH:MM", but past 23:59.
    #[error("time must be between 00:00 and 23:59")]
    NoSuchTime,
    /// Not one of Indonesia's three time zones.
    #[error("time zone must be Asia/Jakarta, Asia/Makassar or Asia/Jayapura")]
    UnknownZone,
}

impl CalendarError {
    /// The same, in Bahasa Indonesia.
    pub fn indonesian(self) -> &'static str {
        match self {
            CalendarError::DateShape => "tanggal harus ditulis TTTT-BB-HH",
            CalendarError::NoSuchDate => "tanggal ini tidak ada di kalender",
            CalendarError::TimeShape => "jam harus ditulis JJ:MM",
            CalendarError::NoSuchTime => "jam harus antara 00:00 dan 23:59",
            CalendarError::UnknownZone => {
                "zona waktu harus Asia/Jakarta, Asia/Makassar atau Asia/Jayapura"
            }
        }
    }
}

/// Parses a local date written strictly as "YYYY-MM-DD".
pub fn parse_local_date(s: &str) -> Result<NaiveDate, CalendarError> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return Err(CalendarError::DateShape);
    }
    // All digits (the shape above), so the numbers parse.
    let year: i32 = s[0..4].parse().map_err(|_| CalendarError::DateShape)?;
    let month: u32 = s[5..7].parse().map_err(|_| CalendarError::DateShape)?;
    let day: u32 = s[8..10].parse().map_err(|_| CalendarError::DateShape)?;
    NaiveDate::from_ymd_opt(year, month, day).ok_or(CalendarError::NoSuchDate)
}

/// Formats a local date as "YYYY-MM-DD", the inverse of `parse_local_date`.
pub fn format_local_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Parses a local time written strictly as "HH:MM", 00:00..23:59.
pub fn parse_local_time(s: &str) -> Result<NaiveTime, CalendarError> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 5
        && b[2] == b':'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit());
    if !shape_ok {
        return Err(CalendarError::TimeShape);
    }
    let hour: u32 = s[0..2].parse().map_err(|_| CalendarError::TimeShape)?;
    let minute: u32 = s[3..5].parse().map_err(|_| CalendarError::TimeShape)?;
    // from_hms_opt refuses hour 24+ and minute 60+.
    NaiveTime::from_hms_opt(hour, minute, 0).ok_or(CalendarError::NoSuchTime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test date")
    }

    fn time(h: u32, m: u32, s: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, s).expect("test time")
    }

    /// 2026-11-28T16:59:59Z.
    const SAT_1659_59_UTC_MS: i64 = 1_795_885_199_000;

    #[test]
    fn zone_names_round_trip() {
        for zone in [OfficeZone::Wib, OfficeZone::Wita, OfficeZone::Wit] {
            assert_eq!(OfficeZone::parse(zone.iana_name()), Ok(zone));
        }
        assert_eq!(OfficeZone::parse(""), Ok(OfficeZone::Wib));
        assert!(OfficeZone::parse("UTC").is_err());
        assert!(OfficeZone::parse("asia/jakarta").is_err());
        assert!(OfficeZone::parse("Asia/Pontianak").is_err());
        assert_eq!(OfficeZone::Wib.utc_offset_secs(), 25_200);
        assert_eq!(OfficeZone::Wita.utc_offset_secs(), 28_800);
        assert_eq!(OfficeZone::Wit.utc_offset_secs(), 32_400);
        assert_eq!(OfficeZone::Wita.label(), "WITA");
    }

    #[test]
    fn local_day_around_midnight() {
        // The constant really is 2026-11-28T16:59:59Z.
        assert_eq!(
            chrono::DateTime::from_timestamp_millis(SAT_1659_59_UTC_MS)
                .expect("in range")
                .to_rfc3339(),
            "2026-11-28T16:59:59+00:00"
        );
        let (wib, wita, wit) = (OfficeZone::Wib, OfficeZone::Wita, OfficeZone::Wit);
        let t = SAT_1659_59_UTC_MS;
        // 23:59:59 WIB on the 28th; one second later the WIB day turns.
        assert_eq!(wib.local_date(t), date(2026, 11, 28));
        assert_eq!(wib.local_time(t), time(23, 59, 59));
        assert_eq!(wib.local_date(t + 1000), date(2026, 11, 29));
        assert_eq!(wib.local_time(t + 1000), time(0, 0, 0));
        // 00:59:59 WITA and 01:59:59 WIT, already the 29th.
        assert_eq!(wita.local_date(t), date(2026, 11, 29));
        assert_eq!(wita.local_time(t), time(0, 59, 59));
        assert_eq!(wit.local_date(t), date(2026, 11, 29));
        assert_eq!(wit.local_time(t), time(1, 59, 59));
        // 15:59:59Z is 23:59:59 WITA on the 28th; 14:59:59Z is 23:59:59 WIT on the 28th.
        assert_eq!(wita.local_date(t - 3_600_000), date(2026, 11, 28));
        assert_eq!(wita.local_time(t - 3_600_000), time(23, 59, 59));
        assert_eq!(wit.local_date(t - 7_200_000), date(2026, 11, 28));
        assert_eq!(wit.local_date(t - 7_199_000), date(2026, 11, 29));
    }

    #[test]
    fn local_day_before_the_epoch_and_at_extremes() {
        // 1969-12-31T16:59:59.999Z is 23:59:59.999 WIB on 31 December 1969.
        let ms = -7 * 3_600_000 - 1;
        assert_eq!(OfficeZone::Wib.local_date(ms), date(1969, 12, 31));
        assert_eq!(
            OfficeZone::Wib.local_time(ms),
            NaiveTime::from_hms_milli_opt(23, 59, 59, 999).expect("valid")
        );
        assert_eq!(OfficeZone::Wib.local_date(ms + 1), date(1970, 1, 1));
        assert_eq!(OfficeZone::Wit.local_date(i64::MAX), NaiveDate::MAX);
        assert_eq!(OfficeZone::Wib.local_date(i64::MIN), NaiveDate::MIN);
    }

    #[test]
    fn start_of_day_and_at_ms() {
        let d = date(2026, 11, 29);
        // Midnight WIB on the 29th is 17:00Z on the 28th.
        assert_eq!(
            OfficeZone::Wib.start_of_day_ms(d),
            SAT_1659_59_UTC_MS + 1000
        );
        assert_eq!(
            OfficeZone::Wita.start_of_day_ms(d),
            SAT_1659_59_UTC_MS + 1000 - 3_600_000
        );
        assert_eq!(
            OfficeZone::Wit.start_of_day_ms(d),
            SAT_1659_59_UTC_MS + 1000 - 7_200_000
        );
        let release = time(10, 30, 0);
        let at = OfficeZone::Wita.at_ms(d, release);
        assert_eq!(at - OfficeZone::Wita.start_of_day_ms(d), 37_800_000);
        assert_eq!(OfficeZone::Wita.local_date(at), d);
        assert_eq!(OfficeZone::Wita.local_time(at), release);
        assert_eq!(
            OfficeZone::Wib.start_of_day_ms(date(1970, 1, 1)),
            -25_200_000
        );
    }

    #[test]
    fn next_service_day_over_weekend_and_holiday() {
        let mut cal = ServiceCalendar::monday_to_friday();
        // Friday 2026-11-27 -> Monday 30th.
        assert_eq!(
            cal.next_service_day_after(date(2026, 11, 27)),
            Some(date(2026, 11, 30))
        );
        // Saturday and Sunday also -> Monday.
        assert_eq!(
            cal.next_service_day_after(date(2026, 11, 28)),
            Some(date(2026, 11, 30))
        );
        // With Monday 30th a holiday: Tuesday 1 December.
        cal.holidays.insert(date(2026, 11, 30));
        assert_eq!(
            cal.next_service_day_after(date(2026, 11, 27)),
            Some(date(2026, 12, 1))
        );
        // Christmas Friday 2026-12-25: Thursday 24th -> Monday 28th.
        cal.holidays.insert(date(2026, 12, 25));
        assert_eq!(
            cal.next_service_day_after(date(2026, 12, 24)),
            Some(date(2026, 12, 28))
        );
        assert!(!cal.is_service_day(date(2026, 12, 25)));
        assert!(cal.is_service_day(date(2026, 12, 24)));
        let closed = ServiceCalendar {
            weekdays: [false; 7],
            holidays: BTreeSet::new(),
        };
        assert_eq!(closed.next_service_day_after(date(2026, 11, 27)), None);
    }

    #[test]
    fn saturday_service_point() {
        // An MPP service mall open Monday to Saturday.
        let mall = ServiceCalendar {
            weekdays: [true, true, true, true, true, true, false],
            holidays: BTreeSet::new(),
        };
        assert!(mall.is_service_day(date(2026, 11, 28)));
        assert!(!mall.is_service_day(date(2026, 11, 29)));
        assert_eq!(
            mall.next_service_day_after(date(2026, 11, 27)),
            Some(date(2026, 11, 28))
        );
    }

    #[test]
    fn counting_service_days() {
        let mut cal = ServiceCalendar::monday_to_friday();
        // Mon 2026-11-23 .. Mon 2026-12-07 (exclusive): two full weeks, 10 days.
        assert_eq!(
            cal.service_days_between(date(2026, 11, 23), date(2026, 12, 7)),
            10
        );
        // From Saturday 28th until Wednesday 2 December: Mon 30, Tue 1.
        assert_eq!(
            cal.service_days_between(date(2026, 11, 28), date(2026, 12, 2)),
            2
        );
        cal.holidays.insert(date(2026, 12, 1));
        assert_eq!(
            cal.service_days_between(date(2026, 11, 28), date(2026, 12, 2)),
            1
        );
        // Empty and reversed spans.
        assert_eq!(
            cal.service_days_between(date(2026, 11, 30), date(2026, 11, 30)),
            0
        );
        assert_eq!(
            cal.service_days_between(date(2026, 12, 30), date(2026, 11, 30)),
            0
        );
        // A span of 100 years is capped at 3660 days.
        let open_daily = ServiceCalendar {
            weekdays: [true; 7],
            holidays: BTreeSet::new(),
        };
        assert_eq!(
            open_daily.service_days_between(date(2026, 1, 1), date(2126, 1, 1)),
            3660
        );
    }

    #[test]
    fn previous_service_days_newest_first() {
        let mut cal = ServiceCalendar::monday_to_friday();
        cal.holidays.insert(date(2026, 11, 26));
        // Before Monday 30th: Fri 27, (Thu 26 holiday), Wed 25, Tue 24.
        assert_eq!(
            cal.previous_service_days(date(2026, 11, 30), 3),
            vec![date(2026, 11, 27), date(2026, 11, 25), date(2026, 11, 24)]
        );
        assert!(cal.previous_service_days(date(2026, 11, 30), 0).is_empty());
        // A calendar with one open weekday yields at most 53 within 366 days.
        let mondays = ServiceCalendar {
            weekdays: [true, false, false, false, false, false, false],
            holidays: BTreeSet::new(),
        };
        let found = mondays.previous_service_days(date(2026, 11, 28), 1000);
        assert_eq!(found.len(), 52);
        assert_eq!(found[0], date(2026, 11, 23));
    }

    #[test]
    fn local_date_text() {
        assert_eq!(parse_local_date("2026-02-28"), Ok(date(2026, 2, 28)));
        assert_eq!(parse_local_date("2024-02-29"), Ok(date(2024, 2, 29)));
        for bad in [
            "2026-02-29",
            "2026-2-28",
            "2026/02/28",
            "26-02-28",
            "2026-02-28 ",
            " 2026-02-28",
            "2026-13-01",
            "2026-00-10",
            "+026-02-28",
            "2026-+2-28",
            "",
            "20260228",
        ] {
            assert!(parse_local_date(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_local_date(date(2026, 1, 5)), "2026-01-05");
        let d = date(2026, 11, 28);
        assert_eq!(parse_local_date(&format_local_date(d)), Ok(d));
    }

    #[test]
    fn local_time_text() {
        assert_eq!(parse_local_time("00:00"), Ok(time(0, 0, 0)));
        assert_eq!(parse_local_time("10:30"), Ok(time(10, 30, 0)));
        assert_eq!(parse_local_time("23:59"), Ok(time(23, 59, 0)));
        for bad in [
            "24:00", "23:60", "9:30", "09:5", "09.30", "09:30:00", "", "+9:30", "09:+3", "ab:cd",
        ] {
            assert!(parse_local_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn at_ms_keeps_the_milliseconds_of_the_time() {
        let date = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let time = NaiveTime::from_hms_milli_opt(12, 0, 0, 250).unwrap();
        let zone = OfficeZone::Wib;
        assert_eq!(
            zone.at_ms(date, time),
            zone.start_of_day_ms(date) + 43_200_250
        );
    }
}
