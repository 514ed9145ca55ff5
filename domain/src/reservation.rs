//! The reservation state machine (DESIGN rules 5 and 6).
//!
//! ```text
//!            commit (live)                cancel
//!   HELD ──────────────────> COMMITTED    HELD ──> CANCELLED
//!     │  expiry (sweeper or lazily at the next touch)
//!     └────────────────────> EXPIRED ── commit, if a slot and a blank can be taken again ──> COMMITTED
//! ```
//!
//! These functions only say which step to take; the store performs it in the same transaction
//! that read the state, so two counters cannot both act on one reservation.

/// Where a reservation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A slot and a blank are earmarked until the hold's expiry.
    Held,
    /// The card was printed; the blank left `on_hand`.
    Committed,
    /// The counter gave the slot and blank back.
    Cancelled,
    /// The hold ran out before a commit; slot and blank went back.
    Expired,
}

impl State {
    /// The stored and wire spelling: "HELD", "COMMITTED", "CANCELLED", "EXPIRED".
    pub fn as_str(self) -> &'static str {
        match self {
            State::Held => "HELD",
            State::Committed => "COMMITTED",
            State::Cancelled => "CANCELLED",
            State::Expired => "EXPIRED",
        }
    }

    /// The inverse of `as_str`; None for any other text.
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "HELD" => Some(State::Held),
            "COMMITTED" => Some(State::Committed),
            "CANCELLED" => Some(State::Cancelled),
            "EXPIRED" => Some(State::Expired),
            _ => None,
        }
    }
}

/// Spoiled blanks one reservation may report: more suggests a broken printer, not bad luck,
/// and each one is state property leaving stock.
pub const MAX_SPOILED_PER_RESERVATION: u32 = 3;

/// What a CommitReservation must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// Live hold -> COMMITTED.
    Commit,
    /// Already COMMITTED: answer OK again (a retried request).
    Replay,
    /// Hold expired (state EXPIRED, or HELD with now >= expires_at): take a slot and a blank
    /// again, then commit; if either is gone, RESERVATION_EXPIRED.
    Retake,
}

/// What a CancelReservation must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelStep {
    /// A live HELD -> CANCELLED, returns slot and blank.
    Cancel,
    /// Already CANCELLED: answer OK again.
    Replay,
    /// EXPIRED: slot and blank already went back; answer OK unchanged.
    AlreadyExpired,
    /// HELD past its expiry, not yet swept: it ends as EXPIRED, as the sweeper would end it,
    /// and the answer is the one for EXPIRED (the sweeper's timing must not matter).
    Overdue,
}

/// A transition the current state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The reservation was cancelled; a new Reserve is needed.
    #[error("reservation was cancelled")]
    Cancelled,
    /// The card was already printed on this reservation.
    #[error("card already printed")]
    Committed,
    /// The hold ran out.
    #[error("hold expired")]
    Expired,
    /// The reservation is not in the HELD state (for callers without a more precise cause).
    #[error("not held")]
    NotHeld,
    /// MAX_SPOILED_PER_RESERVATION blanks were already spoiled on this reservation.
    #[error("spoilage limit reached")]
    SpoilageLimit,
}

impl TransitionError {
    /// The same as the English `Display`, in Bahasa Indonesia.
    pub fn indonesian(self) -> &'static str {
        match self {
            TransitionError::Cancelled => "pemesanan sudah dibatalkan",
            TransitionError::Committed => "kartu sudah dicetak",
            TransitionError::Expired => "masa tahan sudah habis",
            TransitionError::NotHeld => "pemesanan tidak sedang ditahan",
            TransitionError::SpoilageLimit => "batas blangko rusak untuk pemesanan ini tercapai",
        }
    }
}

/// The step for a CommitReservation; Cancelled -> Err(Cancelled).
pub fn on_commit(
    state: State,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<CommitStep, TransitionError> {
    match state {
        State::Held if now_ms < expires_at_ms => Ok(CommitStep::Commit),
        // Overdue but not yet swept: the same as EXPIRED, the sweeper's timing must not matter.
        State::Held | State::Expired => Ok(CommitStep::Retake),
        State::Committed => Ok(CommitStep::Replay),
        State::Cancelled => Err(TransitionError::Cancelled),
    }
}

/// The step for a CancelReservation; Committed -> Err(Committed).
pub fn on_cancel(
    state: State,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<CancelStep, TransitionError> {
    match state {
        State::Held if now_ms < expires_at_ms => Ok(CancelStep::Cancel),
        State::Held => Ok(CancelStep::Overdue),
        State::Cancelled => Ok(CancelStep::Replay),
        State::Expired => Ok(CancelStep::AlreadyExpired),
        State::Committed => Err(TransitionError::Committed),
    }
}

/// Spoiled blank on a reservation: allowed on a live HELD hold with spoiled_count < 3.
///
/// Overdue HELD or EXPIRED -> Expired (the officer prints only on a live hold); Committed ->
/// Committed; Cancelled -> Cancelled; limit -> SpoilageLimit.
pub fn on_spoil(
    state: State,
    now_ms: i64,
    expires_at_ms: i64,
    spoiled_count: u32,
) -> Result<(), TransitionError> {
    match state {
        State::Held if now_ms >= expires_at_ms => Err(TransitionError::Expired),
        State::Held if spoiled_count >= MAX_SPOILED_PER_RESERVATION => {
            Err(TransitionError::SpoilageLimit)
        }
        State::Held => Ok(()),
        State::Expired => Err(TransitionError::Expired),
        State::Committed => Err(TransitionError::Committed),
        State::Cancelled => Err(TransitionError::Cancelled),
    }
}

/// The sweeper: true when a HELD reservation is due to expire (now >= expires_at).
pub fn is_due(state: State, now_ms: i64, expires_at_ms: i64) -> bool {
    state == State::Held && now_ms >= expires_at_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [State; 4] = [
        State::Held,
        State::Committed,
        State::Cancelled,
        State::Expired,
    ];
    /// A hold that expires at t = 1,800,000 ms (30 minutes after t = 0).
    const EXPIRES: i64 = 1_800_000;
    const LIVE: i64 = EXPIRES - 1;

    #[test]
    fn state_names_round_trip() {
        let names: Vec<&str> = ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["HELD", "COMMITTED", "CANCELLED", "EXPIRED"]);
        for state in ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("held"), None);
        assert_eq!(State::parse(""), None);
        assert_eq!(State::parse("STATE_HELD"), None);
    }

    #[test]
    fn commit_transitions() {
        assert_eq!(on_commit(State::Held, 0, EXPIRES), Ok(CommitStep::Commit));
        assert_eq!(
            on_commit(State::Held, LIVE, EXPIRES),
            Ok(CommitStep::Commit)
        );
        // At the expiry instant the hold is over.
        assert_eq!(
            on_commit(State::Held, EXPIRES, EXPIRES),
            Ok(CommitStep::Retake)
        );
        assert_eq!(
            on_commit(State::Expired, LIVE, EXPIRES),
            Ok(CommitStep::Retake)
        );
        assert_eq!(
            on_commit(State::Committed, EXPIRES + 1, EXPIRES),
            Ok(CommitStep::Replay)
        );
        assert_eq!(
            on_commit(State::Cancelled, LIVE, EXPIRES),
            Err(TransitionError::Cancelled)
        );
    }

    #[test]
    fn cancel_transitions() {
        assert_eq!(
            on_cancel(State::Held, LIVE, EXPIRES),
            Ok(CancelStep::Cancel)
        );
        assert_eq!(
            on_cancel(State::Held, EXPIRES, EXPIRES),
            Ok(CancelStep::Overdue)
        );
        assert_eq!(
            on_cancel(State::Cancelled, LIVE, EXPIRES),
            Ok(CancelStep::Replay)
        );
        assert_eq!(
            on_cancel(State::Expired, LIVE, EXPIRES),
            Ok(CancelStep::AlreadyExpired)
        );
        assert_eq!(
            on_cancel(State::Committed, LIVE, EXPIRES),
            Err(TransitionError::Committed)
        );
    }

    #[test]
    fn spoil_transitions() {
        for count in 0..MAX_SPOILED_PER_RESERVATION {
            assert_eq!(on_spoil(State::Held, LIVE, EXPIRES, count), Ok(()));
        }
        assert_eq!(MAX_SPOILED_PER_RESERVATION, 3);
        assert_eq!(
            on_spoil(State::Held, LIVE, EXPIRES, 3),
            Err(TransitionError::SpoilageLimit)
        );
        assert_eq!(
            on_spoil(State::Held, EXPIRES, EXPIRES, 0),
            Err(TransitionError::Expired)
        );
        // Overdue wins over the limit: the hold is gone either way.
        assert_eq!(
            on_spoil(State::Held, EXPIRES, EXPIRES, 3),
            Err(TransitionError::Expired)
        );
        assert_eq!(
            on_spoil(State::Expired, LIVE, EXPIRES, 0),
            Err(TransitionError::Expired)
        );
        assert_eq!(
            on_spoil(State::Committed, LIVE, EXPIRES, 0),
            Err(TransitionError::Committed)
        );
        assert_eq!(
            on_spoil(State::Cancelled, LIVE, EXPIRES, 0),
            Err(TransitionError::Cancelled)
        );
    }

    #[test]
    fn sweeper_expires_only_overdue_holds() {
        assert!(!is_due(State::Held, LIVE, EXPIRES));
        assert!(is_due(State::Held, EXPIRES, EXPIRES));
        assert!(is_due(State::Held, EXPIRES + 60_000, EXPIRES));
        for state in [State::Committed, State::Cancelled, State::Expired] {
            assert!(!is_due(state, EXPIRES + 60_000, EXPIRES), "{state:?}");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            TransitionError::Cancelled.to_string(),
            "reservation was cancelled"
        );
        assert_eq!(
            TransitionError::Committed.to_string(),
            "card already printed"
        );
        assert_eq!(TransitionError::Expired.to_string(), "hold expired");
        assert_eq!(TransitionError::NotHeld.to_string(), "not held");
        assert_eq!(
            TransitionError::SpoilageLimit.to_string(),
            "spoilage limit reached"
        );
        assert_eq!(
            [
                TransitionError::Cancelled,
                TransitionError::Committed,
                TransitionError::Expired,
                TransitionError::NotHeld,
                TransitionError::SpoilageLimit,
            ]
            .map(TransitionError::indonesian),
            [
                "pemesanan sudah dibatalkan",
                "kartu sudah dicetak",
                "masa tahan sudah habis",
                "pemesanan tidak sedang ditahan",
                "batas blangko rusak untuk pemesanan ini tercapai",
            ]
        );
    }
}
