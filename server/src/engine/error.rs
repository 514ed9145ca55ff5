//! What can go wrong in an engine operation, in terms a caller can act on. The gRPC layer maps
//! each variant to one status code with rich details (`grpc::status`).

/// One bad field of a request: which one and why, in English (BadRequest's `description`, for
/// developers) and in Bahasa Indonesia (its `localized_message`, for the people at a counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name in the request message (dotted path for nested fields).
    pub field: String,
    /// Why it is wrong.
    pub description: String,
    /// Why it is wrong, in Bahasa Indonesia.
    pub indonesian: String,
}

impl FieldViolation {
    /// A violation of `field`, said in English and in Bahasa Indonesia.
    pub fn new(
        field: impl Into<String>,
        description: impl Into<String>,
        indonesian: impl Into<String>,
    ) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
            indonesian: indonesian.into(),
        }
    }
}

/// An engine operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input: INVALID_ARGUMENT with BadRequest field violations.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldViolation>),
    /// An unknown office, service point or reservation: NOT_FOUND.
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// "office", "service point" or "reservation".
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The state forbids the call: FAILED_PRECONDITION with ErrorInfo `reason`.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason, e.g. "RESERVATION_EXPIRED".
        reason: &'static str,
        /// For people.
        message: String,
        /// For people, in Bahasa Indonesia.
        indonesian: String,
    },
    /// A request id or delivery reference already used for other content: ALREADY_EXISTS.
    #[error("{message}")]
    AlreadyExists {
        /// "REQUEST_ID_REUSED" or "REFERENCE_REUSED".
        reason: &'static str,
        /// For people.
        message: String,
        /// For people, in Bahasa Indonesia.
        indonesian: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A bounded resource of this server is full (it sheds the call): RESOURCE_EXHAUSTED with
    /// ErrorInfo `reason` and RetryInfo `retry_after`.
    #[error("{message}")]
    Exhausted {
        /// Machine-readable reason, e.g. "TOO_MANY_WATCHERS".
        reason: &'static str,
        /// For people.
        message: String,
        /// For people, in Bahasa Indonesia.
        indonesian: String,
        /// When trying again may succeed.
        retry_after: std::time::Duration,
    },
    /// Not now, soon: something the call waits for is under way (a hold at another office that
    /// ran out is being released). UNAVAILABLE with ErrorInfo `reason` and RetryInfo
    /// `retry_after`; nothing was done, so the same call (same request_id) may be sent again.
    #[error("{message}")]
    Retry {
        /// Machine-readable reason, e.g. "EARLIER_HOLD_RELEASING".
        reason: &'static str,
        /// For people.
        message: String,
        /// For people, in Bahasa Indonesia.
        indonesian: String,
        /// When trying again should succeed.
        retry_after: std::time::Duration,
    },
    /// The database busy or unreachable, met by another call of the same batch (that call keeps
    /// the source error): UNAVAILABLE with RetryInfo, as for the first call.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A broken invariant or corrupt stored data: a bug, reported as INTERNAL.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The violations in one line, "field: why; field: why", in English.
pub(crate) fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl EngineError {
    /// One bad field, said in English and in Bahasa Indonesia.
    pub fn invalid(
        field: impl Into<String>,
        description: impl Into<String>,
        indonesian: impl Into<String>,
    ) -> Self {
        EngineError::Invalid(vec![FieldViolation::new(field, description, indonesian)])
    }

    /// A conflict that a fresh attempt of the whole transaction resolves.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Database(err) if crate::store::is_retryable(err))
    }

    /// The failure of a whole batch, once for each of its `calls`: every call gets the same
    /// status class (a busy database is UNAVAILABLE for all of them, so that clients retry), and
    /// the first keeps the source error.
    pub fn for_each_call(self, calls: usize) -> Vec<EngineError> {
        let mut answers: Vec<EngineError> = (1..calls).map(|_| self.same_for_another()).collect();
        if calls > 0 {
            answers.insert(0, self);
        }
        answers
    }

    fn same_for_another(&self) -> EngineError {
        match self {
            EngineError::Invalid(violations) => EngineError::Invalid(violations.clone()),
            EngineError::NotFound { kind, id } => EngineError::NotFound {
                kind,
                id: id.clone(),
            },
            EngineError::FailedPrecondition {
                reason,
                message,
                indonesian,
            } => EngineError::FailedPrecondition {
                reason,
                message: message.clone(),
                indonesian: indonesian.clone(),
            },
            EngineError::AlreadyExists {
                reason,
                message,
                indonesian,
            } => EngineError::AlreadyExists {
                reason,
                message: message.clone(),
                indonesian: indonesian.clone(),
            },
            EngineError::Exhausted {
                reason,
                message,
                indonesian,
                retry_after,
            } => EngineError::Exhausted {
                reason,
                message: message.clone(),
                indonesian: indonesian.clone(),
                retry_after: *retry_after,
            },
            EngineError::Retry {
                reason,
                message,
                indonesian,
                retry_after,
            } => EngineError::Retry {
                reason,
                message: message.clone(),
                indonesian: indonesian.clone(),
                retry_after: *retry_after,
            },
            EngineError::Database(err) if is_unavailable(err) => {
                EngineError::Unavailable(err.to_string())
            }
            EngineError::Database(err) => EngineError::Internal(format!("database error: {err}")),
            EngineError::Unavailable(text) => EngineError::Unavailable(text.clone()),
            EngineError::Internal(text) => EngineError::Internal(text.clone()),
        }
    }
}

/// A database failure that waiting may cure: no free connection, the pool closing, I/O, a
/// transaction that lost a race with others (PostgreSQL: serialization failure, deadlock)
/// every time the engine tried it, or PostgreSQL going away or holding a lock past
/// `--db-lock-timeout-secs` ([`crate::store::is_transient`]). The transaction was rolled back,
/// so the caller may send the same call again (with the same request_id). A unique key that
/// was still taken after every try (23505) is not among them: a race that loses four times
/// running is more likely a fault, which INTERNAL reports, than bad luck.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
    ) || crate::store::is_lost_race(err)
        || crate::store::is_transient(err)
}

/// Engine result.
pub type EngineResult<T> = Result<T, EngineError>;
