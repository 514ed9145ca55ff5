//! What can go wrong in an engine operation, in terms a caller can act on. The gRPC layer maps
//! each variant to one status code with rich details (`grpc::status`).

/// One bad field of a request: which one and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name in the request message (dotted path for nested fields).
    pub field: String,
    /// Why it is wrong.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
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
    },
    /// A request id or delivery reference already used for other content: ALREADY_EXISTS.
    #[error("{message}")]
    AlreadyExists {
        /// "REQUEST_ID_REUSED" or "REFERENCE_REUSED".
        reason: &'static str,
        /// For people.
        message: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A broken invariant or corrupt stored data: a bug, reported as INTERNAL.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl EngineError {
    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        EngineError::Invalid(vec![FieldViolation::new(field, description)])
    }

    /// A conflict that a fresh attempt of the whole transaction resolves.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Database(err) if crate::store::is_retryable(err))
    }
}

/// Engine result.
pub type EngineResult<T> = Result<T, EngineError>;
