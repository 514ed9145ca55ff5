//! The one place where engine errors become gRPC statuses, with rich error details
//! (google.rpc.BadRequest, ErrorInfo, ResourceInfo, RetryInfo) that clients in any language decode.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::engine::EngineError;

/// The ErrorInfo domain of every error this service raises.
pub const ERROR_DOMAIN: &str = "blangko.v1";

impl From<EngineError> for Status {
    fn from(err: EngineError) -> Status {
        match err {
            EngineError::Invalid(violations) => {
                let message = format!("invalid request: {}", describe(&violations));
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            EngineError::NotFound { kind, id } => {
                // The id comes from the caller: a NIK typed into it is not echoed.
                let id = crate::domain::nik::mask_nik_stretches(&id).into_owned();
                Status::with_error_details(
                    Code::NotFound,
                    format!("{kind} '{id}' not found"),
                    ErrorDetails::with_resource_info(kind, id, "", "no such resource"),
                )
            }
            EngineError::FailedPrecondition { reason, message } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
            ),
            EngineError::AlreadyExists { reason, message } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
            ),
            EngineError::Exhausted {
                reason,
                message,
                retry_after,
            } => retry_later(Code::ResourceExhausted, reason, message, retry_after),
            EngineError::Retry {
                reason,
                message,
                retry_after,
            } => retry_later(Code::Unavailable, reason, message, retry_after),
            EngineError::Database(db) => database_status(&db),
            EngineError::Unavailable(text) => {
                tracing::debug!(error = %text, "database unavailable (shared by a batch)");
                unavailable()
            }
            EngineError::Internal(message) => {
                tracing::error!(%message, "internal error");
                Status::internal("internal error; the operators have the details in the server log")
            }
        }
    }
}

/// A database failure: UNAVAILABLE with RetryInfo when waiting may help (no free connection, the
/// database unreachable), INTERNAL otherwise. The database's own text goes to the log only.
fn database_status(err: &sqlx::Error) -> Status {
    if crate::engine::is_unavailable(err) {
        tracing::warn!(error = %err, "database unavailable");
        unavailable()
    } else {
        tracing::error!(error = %err, "database error");
        Status::internal("database error; the operators have the details in the server log")
    }
}

/// `code` with ErrorInfo `reason` and RetryInfo `retry_after`: not now, later.
fn retry_later(code: Code, reason: &str, message: String, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// UNAVAILABLE with a retry hint: the database is busy or unreachable.
fn unavailable() -> Status {
    Status::with_error_details(
        Code::Unavailable,
        "the database is busy or unreachable; retry with the same request_id",
        ErrorDetails::with_retry_info(Some(Duration::from_millis(200))),
    )
}

fn describe(violations: &[crate::engine::FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The ErrorInfo reason of a call refused by load shedding.
pub const OVERLOADED: &str = "OVERLOADED";
/// The ErrorInfo reason of a call cut by the server's request time-out.
pub const REQUEST_TIMEOUT: &str = "REQUEST_TIMEOUT";

/// A call refused because `limit` calls were already in flight: UNAVAILABLE (gRPC clients may
/// retry it; nothing was done) with RetryInfo saying when, and ErrorInfo OVERLOADED.
pub fn overloaded(limit: usize, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.set_error_info(OVERLOADED, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(
        Code::Unavailable,
        format!(
            "the server is overloaded ({limit} calls in flight); nothing was done: retry after {} ms with the same request_id",
            retry_after.as_millis()
        ),
        details,
    )
}

/// A call that ran past the server's request time-out: DEADLINE_EXCEEDED. A mutating call may
/// or may not have taken effect; a retry with the same request_id gets the first answer.
pub fn timed_out(timeout: Duration) -> Status {
    Status::with_error_details(
        Code::DeadlineExceeded,
        format!(
            "the call ran past the server's request time-out ({} s); retry with the same request_id",
            timeout.as_secs()
        ),
        ErrorDetails::with_error_info(REQUEST_TIMEOUT, ERROR_DOMAIN, HashMap::new()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each call of a failed batch of three gets.
    fn codes_of_a_batch_failing_with(err: EngineError) -> Vec<(Code, bool)> {
        err.for_each_call(3)
            .into_iter()
            .map(Status::from)
            .map(|s| (s.code(), s.get_details_retry_info().is_some()))
            .collect()
    }

    #[test]
    fn every_call_of_a_batch_that_met_a_busy_database_is_told_to_retry() {
        // Clients retry UNAVAILABLE only: the other calls of the batch must not get INTERNAL.
        for err in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            assert_eq!(
                codes_of_a_batch_failing_with(EngineError::Database(err)),
                vec![(Code::Unavailable, true); 3]
            );
        }
        let io = std::io::Error::other("disk gone");
        assert_eq!(
            codes_of_a_batch_failing_with(EngineError::Database(sqlx::Error::Io(io))),
            vec![(Code::Unavailable, true); 3]
        );
    }

    /// A PostgreSQL error with its SQLSTATE, as sqlx gives it.
    #[derive(Debug)]
    struct PgCode(&'static str);

    impl std::fmt::Display for PgCode {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for PgCode {}

    impl sqlx::error::DatabaseError for PgCode {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(std::borrow::Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_lost_race_or_a_database_that_went_away_is_retried_by_the_client_not_reported_internal() {
        // Serialization failure, deadlock: rolled back, so the same call may be sent again;
        // clients retry UNAVAILABLE.
        for code in ["40001", "40P01"] {
            let lost = EngineError::Database(sqlx::Error::Database(Box::new(PgCode(code))));
            assert_eq!(
                codes_of_a_batch_failing_with(lost),
                vec![(Code::Unavailable, true); 3],
                "{code}"
            );
        }
        // PostgreSQL restarting or failing over, a lost connection, a lock held past
        // --db-lock-timeout-secs: over once the database is back or the lock free.
        for code in ["57P01", "57P02", "57P03", "08006", "08001", "55P03"] {
            let gone = EngineError::Database(sqlx::Error::Database(Box::new(PgCode(code))));
            assert_eq!(
                codes_of_a_batch_failing_with(gone),
                vec![(Code::Unavailable, true); 3],
                "{code}"
            );
        }
        // Any other database error stays INTERNAL (a constraint the engine broke is a bug), a
        // unique key still taken after every try included.
        for code in ["23514", "23505"] {
            let broken = EngineError::Database(sqlx::Error::Database(Box::new(PgCode(code))));
            assert_eq!(
                codes_of_a_batch_failing_with(broken),
                vec![(Code::Internal, false); 3],
                "{code}"
            );
        }
    }

    #[test]
    fn every_call_of_a_failed_batch_gets_the_same_status_class() {
        let not_found = EngineError::NotFound {
            kind: "office",
            id: "3275".into(),
        };
        assert_eq!(
            codes_of_a_batch_failing_with(not_found),
            vec![(Code::NotFound, false); 3]
        );
        let broken = EngineError::Database(sqlx::Error::RowNotFound);
        assert_eq!(
            codes_of_a_batch_failing_with(broken),
            vec![(Code::Internal, false); 3]
        );
        assert!(
            EngineError::Internal("x".into())
                .for_each_call(0)
                .is_empty()
        );
    }
}
