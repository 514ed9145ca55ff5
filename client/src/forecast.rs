//! The queue forecast (DESIGN.md rule 12), computed locally from a live snapshot between the
//! server's own answers to ReportQueue, and the way ticket numbers are shown.

/// Of `mine` applicants waiting at this counter, out of `total_waiting` at the service point, how
/// many can expect a blank: `floor(remaining * mine / total_waiting)`, at most `mine`. A total
/// below `mine` (a stale snapshot) counts as `mine`.
pub fn expected_served(remaining: u32, mine: u32, total_waiting: u32) -> u32 {
    if mine == 0 {
        return 0;
    }
    let total = u64::from(total_waiting.max(mine));
    let served = u64::from(remaining) * u64::from(mine) / total;
    u32::try_from(served).unwrap_or(u32::MAX).min(mine)
}

/// The waiting count of the service point with this counter's report replaced: the snapshot
/// still counts `last_reported` for us, but `mine` are waiting now.
pub fn total_with_mine(snapshot_waiting: u32, last_reported: u32, mine: u32) -> u32 {
    snapshot_waiting
        .saturating_sub(last_reported)
        .saturating_add(mine)
}

/// Splits a ticket into its prefix and trailing number: `A017` → (`A`, 17).
fn split_ticket(ticket: &str) -> Option<(&str, u64)> {
    let digits_start = ticket
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit())
        .last()
        .map(|(i, _)| i)?;
    let digits = &ticket[digits_start..];
    let number = digits.parse::<u64>().ok()?;
    Some((&ticket[..digits_start], number))
}

/// Tickets as compact ranges: `21–35`, `A001–A003, B7`.
pub fn ticket_ranges<S: AsRef<str>>(tickets: &[S]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(&str, &str, u64)> = None; // (first ticket, last ticket, last number)
    let mut run_prefix = "";
    for ticket in tickets.iter().map(AsRef::as_ref) {
        let parsed = split_ticket(ticket);
        if let (Some((first, _, last_number)), Some((prefix, number))) = (run, parsed)
            && prefix == run_prefix
            && last_number.checked_add(1) == Some(number)
        {
            run = Some((first, ticket, number));
            continue;
        }
        if let Some((first, last, _)) = run.take() {
            parts.push(range_text(first, last));
        }
        match parsed {
            Some((prefix, number)) => {
                run = Some((ticket, ticket, number));
                run_prefix = prefix;
            }
            None => parts.push(ticket.to_string()),
        }
    }
    if let Some((first, last, _)) = run {
        parts.push(range_text(first, last));
    }
    parts.join(", ")
}

fn range_text(first: &str, last: &str) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}–{last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_12_examples() {
        // Quota 20, one counter with 35 waiting: tickets 1-20 served, 21-35 referred.
        assert_eq!(expected_served(20, 35, 35), 20);
        // Two counters share 20: 35 and 15 waiting -> floor(20*35/50) = 14.
        assert_eq!(expected_served(20, 35, 50), 14);
        assert_eq!(expected_served(20, 15, 50), 6);
        // More quota than people: everyone.
        assert_eq!(expected_served(100, 35, 35), 35);
        assert_eq!(expected_served(100, 35, 50), 35);
        assert_eq!(expected_served(0, 35, 35), 0);
        assert_eq!(expected_served(20, 0, 10), 0);
        // A stale snapshot that counts fewer than us.
        assert_eq!(expected_served(20, 35, 0), 20);
        // No overflow.
        assert_eq!(expected_served(u32::MAX, u32::MAX, u32::MAX), u32::MAX);
    }

    #[test]
    fn our_report_is_replaced_in_the_total() {
        assert_eq!(total_with_mine(50, 35, 34), 49);
        assert_eq!(total_with_mine(0, 35, 34), 34);
    }

    #[test]
    fn ticket_ranges_are_compact() {
        let numbers: Vec<String> = (21..=35).map(|n| n.to_string()).collect();
        assert_eq!(ticket_ranges(&numbers), "21–35");
        assert_eq!(
            ticket_ranges(&["A001", "A002", "A003", "B7"]),
            "A001–A003, B7"
        );
        assert_eq!(ticket_ranges(&["5", "7", "8"]), "5, 7–8");
        assert_eq!(ticket_ranges(&["X", "Y"]), "X, Y");
        assert_eq!(ticket_ranges::<&str>(&[]), "");
        assert_eq!(ticket_ranges(&["9", "10", "11"]), "9–11");
    }
}
