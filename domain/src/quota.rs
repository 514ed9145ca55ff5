//! Quota policy: how big today's quota is (paced over the days until the next supply) and
//! whether one more Reserve fits (DESIGN rules 1, 3 and 4).
//!
//! The store reads an [`AdmissionInput`] inside the reservation transaction and writes the hold
//! only if [`decide`] admits it, so the decision and its write cannot race.

use chrono::NaiveDate;

use crate::calendar::ServiceCalendar;

/// Days the PACED quota spreads the stock over, and whether supply is overdue.
///
/// days_left counts `today` (if a service day) and every service day before `expected_supply`.
/// No date, or a date <= today: `fallback_horizon_days` (at least 1), overdue = true: the
/// horizon is already a number of service days, counted from today. Never returns 0 days,
/// so callers can divide by it.
pub fn days_left(
    cal: &ServiceCalendar,
    today: NaiveDate,
    expected_supply: Option<NaiveDate>,
    fallback_horizon_days: u32,
) -> (u32, bool) {
    match expected_supply {
        Some(supply) if supply > today => {
            // Zero when no service day remains before the supply (today is Saturday, the lot
            // arrives Monday): one day then, so the whole share is usable if the point opens.
            (cal.service_days_between(today, supply).max(1), false)
        }
        _ => (fallback_horizon_days.max(1), true),
    }
}

/// floor(available * weight / total_weight / days_left); 0 if total_weight or days_left is 0.
///
/// Computed as one division in u128 (floor(floor(a / b) / c) == floor(a / (b * c)) for
/// positive integers), so no intermediate can overflow; a result above u64::MAX (only possible
/// with weight > total_weight, a misconfiguration) saturates.
pub fn paced_quota(available: u64, weight: u32, total_weight: u64, days_left: u32) -> u64 {
    let divisor = u128::from(total_weight) * u128::from(days_left);
    if divisor == 0 {
        return 0;
    }
    let quota = u128::from(available) * u128::from(weight) / divisor;
    u64::try_from(quota).unwrap_or(u64::MAX)
}

/// P = floor(quota * percent / 100), percent clamped to 100.
pub fn priority_share(quota: u64, percent: u32) -> u64 {
    let percent = u128::from(percent.min(100));
    // percent <= 100 keeps the result <= quota, so it fits in u64.
    u64::try_from(u128::from(quota) * percent / 100).unwrap_or(quota)
}

/// Everything the decision needs, read inside the reservation transaction.
#[derive(Debug, Clone)]
pub struct AdmissionInput {
    /// Not a service day / holiday at this service point.
    pub closed: bool,
    /// Today's quota Q of the service point.
    pub quota: u64,
    /// Held + committed today at the service point.
    pub used: u64,
    /// Of `used`, the reservations with a priority reason.
    pub priority_used: u64,
    /// P, the slots kept for priority reasons (0 when none or after release).
    pub priority_reserved: u64,
    /// The applicant's reason is a priority reason.
    pub is_priority: bool,
    /// Now is before the priority release time, so P is still kept.
    pub before_release: bool,
    /// Office daily cap over all service points (Pandeglang: 200/day), if any.
    pub office_cap: Option<u64>,
    /// Held + committed today over the whole office.
    pub office_used: u64,
    /// Office stock not earmarked by a hold: on_hand - held.
    pub available: u64,
    /// Only the caps whose group contains the applicant's reason.
    pub reason_caps: Vec<CapUse>,
}

/// One reason-group cap and today's use of that group at the service point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapUse {
    /// Daily maximum for the group, e.g. {LOST, DAMAGED} <= 50.
    pub cap: u64,
    /// Held + committed today with a reason in the group.
    pub used: u64,
}

/// Why a Reserve was not admitted; each becomes an IKD referral, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a service day at this service point.
    Closed,
    /// The office has no available blank.
    OutOfStock,
    /// The service point quota (or the share kept for priority reasons, or the office cap) is used up.
    QuotaExhausted,
    /// A cap on the applicant's reason group is used up.
    ReasonCapReached,
}

/// Ok(()) = admit. Order of checks: closed, out of stock (available == 0), service point quota
/// (with the priority rule), office cap, reason caps.
///
/// The priority rule (DESIGN rule 4): before the release time, P slots are kept for priority
/// reasons. A non-priority Reserve is admitted only if `used - priority_used < Q - P` AND
/// `used < Q`: non-priority use stops at Q - P, so the free slots `Q - used` never drop below
/// `P - priority_used`, i.e. max(0, P - priority_used) slots always stay free for priority.
/// Priority use beyond P does not eat into the non-priority share; the second condition only
/// stops the total at Q. A priority Reserve only needs `used < Q`: it may take any free slot.
/// After release (`before_release` false) everyone needs only `used < Q`.
///
/// An exhausted office cap is reported as `QuotaExhausted`: for the applicant it is the same
/// "no more prints today", and the referral is the same.
pub fn decide(input: &AdmissionInput) -> Result<(), Refusal> {
    if input.closed {
        return Err(Refusal::Closed);
    }
    if input.available == 0 {
        return Err(Refusal::OutOfStock);
    }
    if service_point_room(input, input.is_priority) == 0 {
        return Err(Refusal::QuotaExhausted);
    }
    if office_room(input) == 0 {
        return Err(Refusal::QuotaExhausted);
    }
    if input.reason_caps.iter().any(|c| c.used >= c.cap) {
        return Err(Refusal::ReasonCapReached);
    }
    Ok(())
}

/// Whether a non-priority Reserve refused as [`Refusal::QuotaExhausted`] is held back only by
/// the share kept for priority reasons until the release time: the service point has free slots,
/// the office cap has room and there are blanks, so it opens at the release time today. When the
/// office cap (or the whole quota) is what is used up, it does not.
pub fn kept_for_priority_until_release(input: &AdmissionInput) -> bool {
    !input.closed
        && input.before_release
        && !input.is_priority
        && input.available > 0
        && service_point_room(input, false) == 0
        && service_point_room(input, true) > 0
        && office_room(input) > 0
        && input.reason_caps.iter().all(|c| c.used < c.cap)
}

/// How many more Reserves could succeed now for a priority / a non-priority reason (ignoring
/// reason caps): min(quota room, office cap room, available), saturating at 0; (0, 0) when closed.
pub fn remaining(input: &AdmissionInput) -> (u64, u64) {
    if input.closed {
        return (0, 0);
    }
    let shared = office_room(input).min(input.available);
    (
        service_point_room(input, true).min(shared),
        service_point_room(input, false).min(shared),
    )
}

/// Free slots of the service point quota for a priority or a non-priority reason, following
/// the priority rule documented on [`decide`].
fn service_point_room(input: &AdmissionInput, is_priority: bool) -> u64 {
    let total_room = input.quota.saturating_sub(input.used);
    if is_priority || !input.before_release {
        return total_room;
    }
    let non_priority_used = input.used.saturating_sub(input.priority_used);
    let non_priority_limit = input.quota.saturating_sub(input.priority_reserved);
    total_room.min(non_priority_limit.saturating_sub(non_priority_used))
}

/// Free slots under the office daily cap; unlimited without a cap.
fn office_room(input: &AdmissionInput) -> u64 {
    input
        .office_cap
        .map_or(u64::MAX, |cap| cap.saturating_sub(input.office_used))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test date")
    }

    /// A service point with Q = 30, nothing used yet, plenty of stock, no priority share.
    fn open_point() -> AdmissionInput {
        AdmissionInput {
            closed: false,
            quota: 30,
            used: 0,
            priority_used: 0,
            priority_reserved: 0,
            is_priority: false,
            before_release: false,
            office_cap: None,
            office_used: 0,
            available: 2000,
            reason_caps: Vec::new(),
        }
    }

    #[test]
    fn days_left_until_supply() {
        let cal = ServiceCalendar::monday_to_friday();
        // Monday 23 November, supply Monday 7 December: two weeks of five days.
        assert_eq!(
            days_left(&cal, date(2026, 11, 23), Some(date(2026, 12, 7)), 10),
            (10, false)
        );
        // Friday 27th, supply Wednesday 2 December: Fri 27, Mon 30, Tue 1.
        assert_eq!(
            days_left(&cal, date(2026, 11, 27), Some(date(2026, 12, 2)), 10),
            (3, false)
        );
        // Saturday 28th (closed), supply Wednesday: Mon 30, Tue 1; today not counted.
        assert_eq!(
            days_left(&cal, date(2026, 11, 28), Some(date(2026, 12, 2)), 10),
            (2, false)
        );
        // A holiday in between is not a day to spread over.
        let mut with_holiday = cal.clone();
        with_holiday.holidays = BTreeSet::from([date(2026, 11, 30)]);
        assert_eq!(
            days_left(
                &with_holiday,
                date(2026, 11, 27),
                Some(date(2026, 12, 2)),
                10
            ),
            (2, false)
        );
        // Supply tomorrow: just today.
        assert_eq!(
            days_left(&cal, date(2026, 11, 26), Some(date(2026, 11, 27)), 10),
            (1, false)
        );
        // Saturday, supply Monday: no service day in between, still 1, never 0.
        assert_eq!(
            days_left(&cal, date(2026, 11, 28), Some(date(2026, 11, 30)), 10),
            (1, false)
        );
    }

    #[test]
    fn days_left_when_supply_is_overdue() {
        let cal = ServiceCalendar::monday_to_friday();
        let today = date(2026, 11, 27);
        assert_eq!(days_left(&cal, today, None, 10), (10, true));
        assert_eq!(days_left(&cal, today, Some(today), 10), (10, true));
        assert_eq!(
            days_left(&cal, today, Some(date(2026, 11, 1)), 15),
            (15, true)
        );
        assert_eq!(days_left(&cal, today, None, 0), (1, true));
    }

    #[test]
    fn paced_quota_arithmetic() {
        // Pandeglang: 2,000 blanks over 10 days, one service point.
        assert_eq!(paced_quota(2000, 1, 1, 10), 200);
        // Kota Bekasi-like: 12 district offices of weight 1 and an MPP of weight 5 (total 17),
        // 10,000 blanks over 20 days: 10000/17/20 = 29.4 -> 29, and 50000/17/20 = 147.05 -> 147.
        let district = paced_quota(10_000, 1, 17, 20);
        let mall = paced_quota(10_000, 5, 17, 20);
        assert_eq!((district, mall), (29, 147));
        // The office's day (12 x 29 + 147 = 495) stays within the pace of the stock (500).
        assert_eq!(12 * district + mall, 495);
        // Fewer blanks than days: 0 today rather than overspending.
        assert_eq!(paced_quota(9, 1, 1, 10), 0);
        assert_eq!(paced_quota(2000, 1, 0, 10), 0);
        assert_eq!(paced_quota(2000, 1, 1, 0), 0);
        assert_eq!(paced_quota(0, 1, 1, 10), 0);
        // No overflow at the extremes.
        // u64::MAX * u32::MAX needs 96 bits; divided back by u64::MAX it is u32::MAX.
        assert_eq!(
            paced_quota(u64::MAX, u32::MAX, u64::MAX, 1),
            u64::from(u32::MAX)
        );
        assert_eq!(paced_quota(u64::MAX, u32::MAX, 1, 1), u64::MAX);
        assert_eq!(
            paced_quota(u64::MAX, 1, 1, u32::MAX),
            u64::MAX / u64::from(u32::MAX)
        );
    }

    #[test]
    fn priority_share_arithmetic() {
        assert_eq!(priority_share(200, 30), 60);
        assert_eq!(priority_share(7, 50), 3);
        assert_eq!(priority_share(29, 0), 0);
        assert_eq!(priority_share(29, 100), 29);
        assert_eq!(priority_share(29, 250), 29);
        assert_eq!(priority_share(u64::MAX, 100), u64::MAX);
    }

    #[test]
    fn closed_and_out_of_stock_come_first() {
        let mut input = open_point();
        input.closed = true;
        // Closed with room and stock: nothing can be reserved today.
        assert_eq!(decide(&input), Err(Refusal::Closed));
        assert_eq!(remaining(&input), (0, 0));
        input.available = 0;
        input.used = 30;
        assert_eq!(decide(&input), Err(Refusal::Closed));
        assert_eq!(remaining(&input), (0, 0));
        input.closed = false;
        assert_eq!(decide(&input), Err(Refusal::OutOfStock));
        input.used = 0;
        assert_eq!(decide(&input), Err(Refusal::OutOfStock));
        assert_eq!(remaining(&input), (0, 0));
        input.available = 1;
        assert_eq!(decide(&input), Ok(()));
        // Quota room 30, but one blank: one more Reserve.
        assert_eq!(remaining(&input), (1, 1));
    }

    #[test]
    fn service_point_quota() {
        let mut input = open_point();
        input.used = 29;
        assert_eq!(decide(&input), Ok(()));
        assert_eq!(remaining(&input), (1, 1));
        input.used = 30;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        input.is_priority = true;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        assert_eq!(remaining(&input), (0, 0));
        // A supervisor lowered the quota below use: no room, no underflow.
        input.quota = 20;
        assert_eq!(remaining(&input), (0, 0));
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
    }

    #[test]
    fn priority_share_before_release() {
        // Q = 30, P = 10 kept for NEW_RECORDING / FIRST_TIME_VOTER until 11:00.
        let mut input = open_point();
        input.priority_reserved = 10;
        input.before_release = true;
        // 20 non-priority used: the non-priority share is full.
        input.used = 20;
        input.priority_used = 0;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        assert_eq!(remaining(&input), (10, 0));
        input.is_priority = true;
        assert_eq!(decide(&input), Ok(()));
        // 19 non-priority + 4 priority: one non-priority slot left, 7 for priority.
        input.used = 23;
        input.priority_used = 4;
        assert_eq!(remaining(&input), (7, 1));
        input.is_priority = false;
        assert_eq!(decide(&input), Ok(()));
        // 20 non-priority + 9 priority: the last slot is priority's.
        input.used = 29;
        input.priority_used = 9;
        assert_eq!(remaining(&input), (1, 0));
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
    }

    #[test]
    fn only_the_priority_share_opens_at_the_release_time() {
        // Q = 30, P = 10 before release, 20 non-priority used: the share is what refuses.
        let mut input = open_point();
        input.priority_reserved = 10;
        input.before_release = true;
        input.used = 20;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        assert!(kept_for_priority_until_release(&input));
        // The office cap is used up as well: the release opens nothing.
        input.office_cap = Some(200);
        input.office_used = 200;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        assert!(!kept_for_priority_until_release(&input));
        // The applicant's reason cap is used up too: 12:00 opens nothing for them.
        input.office_used = 0;
        input.reason_caps = vec![CapUse { used: 2, cap: 2 }];
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        assert!(!kept_for_priority_until_release(&input));
        input.reason_caps.clear();
        input.office_used = 200;
        // Without a share, a cap refusal with free service point slots is not the share either.
        input.priority_reserved = 0;
        input.used = 5;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        assert!(!kept_for_priority_until_release(&input));
        // The whole quota used up; after the release; a priority reason: never.
        let mut full = open_point();
        full.priority_reserved = 10;
        full.before_release = true;
        full.used = 30;
        assert!(!kept_for_priority_until_release(&full));
        full.used = 20;
        full.before_release = false;
        assert!(!kept_for_priority_until_release(&full));
        full.before_release = true;
        full.is_priority = true;
        assert!(!kept_for_priority_until_release(&full));
    }

    #[test]
    fn priority_beyond_its_share() {
        // Q = 30, P = 10, and priority applicants already took 15 slots (more than P).
        let mut input = open_point();
        input.priority_reserved = 10;
        input.before_release = true;
        input.priority_used = 15;
        // 10 non-priority: non-priority may still reach Q - P = 20, and 5 slots remain.
        input.used = 25;
        assert_eq!(remaining(&input), (5, 5));
        assert_eq!(decide(&input), Ok(()));
        // 15 + 15: total room is the binding limit, both stop at Q.
        input.used = 30;
        assert_eq!(remaining(&input), (0, 0));
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        input.is_priority = true;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
    }

    #[test]
    fn priority_share_after_release() {
        // Same use as the full non-priority share above, but released: any reason takes any slot.
        let mut input = open_point();
        input.priority_reserved = 10;
        input.before_release = false;
        input.used = 20;
        assert_eq!(decide(&input), Ok(()));
        assert_eq!(remaining(&input), (10, 10));
        input.used = 30;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
    }

    #[test]
    fn office_cap() {
        // Pandeglang: 200/day over all service points; this point has room of its own.
        let mut input = open_point();
        input.quota = 150;
        input.used = 40;
        input.office_cap = Some(200);
        input.office_used = 199;
        assert_eq!(decide(&input), Ok(()));
        assert_eq!(remaining(&input), (1, 1));
        input.office_used = 200;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
        assert_eq!(remaining(&input), (0, 0));
        input.office_used = 250;
        assert_eq!(remaining(&input), (0, 0));
        input.office_cap = None;
        assert_eq!(remaining(&input), (110, 110));
    }

    #[test]
    fn reason_group_caps() {
        // {LOST, DAMAGED} <= 50 and an online-reprint group <= 20.
        let mut input = open_point();
        input.quota = 150;
        input.used = 60;
        input.reason_caps = vec![CapUse { cap: 50, used: 49 }, CapUse { cap: 20, used: 3 }];
        assert_eq!(decide(&input), Ok(()));
        input.reason_caps[0].used = 50;
        assert_eq!(decide(&input), Err(Refusal::ReasonCapReached));
        // Reason caps are not counted in `remaining`.
        assert_eq!(remaining(&input), (90, 90));
        // A cap of 0 closes the group.
        input.reason_caps = vec![CapUse { cap: 0, used: 0 }];
        assert_eq!(decide(&input), Err(Refusal::ReasonCapReached));
        // The quota is checked before the reason caps.
        input.used = 150;
        assert_eq!(decide(&input), Err(Refusal::QuotaExhausted));
    }

    #[test]
    fn decide_agrees_with_remaining() {
        // Over a grid of states, a Reserve is admitted exactly when `remaining` is positive.
        for used in 0..=12u64 {
            for priority_used in 0..=used {
                for p in 0..=12u64 {
                    for office_used in [0u64, 9, 11] {
                        for before_release in [false, true] {
                            let mut input = open_point();
                            input.quota = 10;
                            input.used = used;
                            input.priority_used = priority_used;
                            input.priority_reserved = p;
                            input.before_release = before_release;
                            input.office_cap = Some(10);
                            input.office_used = office_used;
                            let (prio, other) = remaining(&input);
                            input.is_priority = true;
                            assert_eq!(decide(&input).is_ok(), prio > 0, "{input:?}");
                            input.is_priority = false;
                            assert_eq!(decide(&input).is_ok(), other > 0, "{input:?}");
                            assert!(other <= prio, "{input:?}");
                        }
                    }
                }
            }
        }
    }
}
