//! Queue forecast and stock cover: who in the queue can still expect a blank today, and how
//! many service days the stock lasts at the recent pace.

/// DESIGN rule 12: of `counter_waiting` applicants of `total_waiting` at the service point,
/// floor(remaining * q / Q) can expect a blank (at most q); returns (served, referred).
/// total_waiting 0 or < q: treat total as q (a stale or missing report must not inflate the share).
pub fn forecast(remaining: u64, counter_waiting: u64, total_waiting: u64) -> (u64, u64) {
    let q = counter_waiting;
    let total = total_waiting.max(q);
    if total == 0 {
        return (0, 0);
    }
    // u128: remaining * q may exceed u64; the quotient is <= remaining, so it fits back.
    let share = u128::from(remaining) * u128::from(q) / u128::from(total);
    let served = u64::try_from(share).unwrap_or(u64::MAX).min(q);
    (served, q - served)
}

/// Days of cover: on_hand / mean of `daily_use` (the last service days' use); None when the
/// mean is 0. Returns `(mean, Option<cover>)`; an empty slice has mean 0.
pub fn days_of_cover(on_hand: u64, daily_use: &[u64]) -> (f64, Option<f64>) {
    if daily_use.is_empty() {
        return (0.0, None);
    }
    // Summed in u128 so a long window of large numbers cannot overflow.
    let total: u128 = daily_use.iter().map(|&n| u128::from(n)).sum();
    let mean = total as f64 / daily_use.len() as f64;
    if mean == 0.0 {
        return (0.0, None);
    }
    (mean, Some(on_hand as f64 / mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecast_rounds_down() {
        // 10 left, this counter has 4 of 12 waiting: floor(40/12) = 3 served, 1 referred now.
        assert_eq!(forecast(10, 4, 12), (3, 1));
        // Same numbers at the other counters (8 of 12): floor(80/12) = 6; 3 + 6 <= 10.
        assert_eq!(forecast(10, 8, 12), (6, 2));
        // Plenty left: everyone here is served.
        assert_eq!(forecast(100, 4, 12), (4, 0));
        // Nothing left: everyone is referred.
        assert_eq!(forecast(0, 5, 20), (0, 5));
        // Exactly enough for the whole service point.
        assert_eq!(forecast(12, 4, 12), (4, 0));
    }

    #[test]
    fn forecast_with_missing_or_stale_totals() {
        // No total reported: this counter's own queue is the total.
        assert_eq!(forecast(3, 5, 0), (3, 2));
        // Total below the counter's own queue (other reports expired): use q.
        assert_eq!(forecast(3, 5, 2), (3, 2));
        assert_eq!(forecast(10, 5, 2), (5, 0));
        // Nobody waiting.
        assert_eq!(forecast(10, 0, 0), (0, 0));
        assert_eq!(forecast(10, 0, 7), (0, 0));
        // No overflow.
        assert_eq!(forecast(u64::MAX, u64::MAX, u64::MAX), (u64::MAX, 0));
        assert_eq!(forecast(u64::MAX, 1, u64::MAX), (1, 0));
    }

    #[test]
    fn days_of_cover_from_recent_use() {
        // 2,000 on hand, last five service days used 180..220 (mean 200): 10 days of cover.
        let (mean, cover) = days_of_cover(2000, &[180, 220, 200, 190, 210]);
        assert_eq!(mean, 200.0);
        assert_eq!(cover, Some(10.0));
        // Mean 2.5: 15 blanks last 6 days.
        let (mean, cover) = days_of_cover(15, &[2, 3]);
        assert_eq!(mean, 2.5);
        assert_eq!(cover, Some(6.0));
        // No use: cover undefined, not infinite.
        assert_eq!(days_of_cover(2000, &[0, 0, 0]), (0.0, None));
        assert_eq!(days_of_cover(2000, &[]), (0.0, None));
        // Empty stock with use: zero days.
        assert_eq!(days_of_cover(0, &[10]), (10.0, Some(0.0)));
        // Large values do not overflow the sum.
        let (mean, _) = days_of_cover(1, &[u64::MAX, u64::MAX]);
        assert_eq!(mean, u64::MAX as f64);
    }
}
