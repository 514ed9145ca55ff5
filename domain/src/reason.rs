//! Why an applicant needs a card, in the ministry's priority order (DESIGN rule 4).

/// The reason an applicant needs a printed card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Recorded but never printed (print-ready record): first in the ministry's order.
    NewRecording,
    /// Turned 17 or married, needs a card to vote.
    FirstTimeVoter,
    /// Lives in a newly split region and needs the new address on the card.
    RegionSplit,
    /// Name, address, status or other data changed.
    DataChange,
    /// Vulnerable people: elderly, disabled, in care, disaster victims.
    Vulnerable,
    /// The card was lost.
    Lost,
    /// The card was damaged.
    Damaged,
}

impl Reason {
    /// Every reason, in the ministry's priority order.
    pub const ALL: [Reason; 7] = [
        Reason::NewRecording,
        Reason::FirstTimeVoter,
        Reason::RegionSplit,
        Reason::DataChange,
        Reason::Vulnerable,
        Reason::Lost,
        Reason::Damaged,
    ];

    /// The stored and wire spelling, e.g. "NEW_RECORDING".
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NewRecording => "NEW_RECORDING",
            Reason::FirstTimeVoter => "FIRST_TIME_VOTER",
            Reason::RegionSplit => "REGION_SPLIT",
            Reason::DataChange => "DATA_CHANGE",
            Reason::Vulnerable => "VULNERABLE",
            Reason::Lost => "LOST",
            Reason::Damaged => "DAMAGED",
        }
    }

    /// The inverse of `as_str`; None for any other text.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The priority reasons an office starts with: the first two of the ministry's order.
    pub fn default_priority() -> Vec<Reason> {
        vec![Reason::NewRecording, Reason::FirstTimeVoter]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "NEW_RECORDING",
                "FIRST_TIME_VOTER",
                "REGION_SPLIT",
                "DATA_CHANGE",
                "VULNERABLE",
                "LOST",
                "DAMAGED"
            ]
        );
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::parse("lost"), None);
        assert_eq!(Reason::parse("REASON_LOST"), None);
        assert_eq!(Reason::parse(""), None);
    }

    #[test]
    fn order_and_default_priority() {
        let mut sorted = Reason::ALL;
        sorted.sort();
        assert_eq!(sorted, Reason::ALL);
        assert_eq!(
            Reason::default_priority(),
            vec![Reason::NewRecording, Reason::FirstTimeVoter]
        );
    }
}
