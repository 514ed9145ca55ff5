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
            EngineError::NotFound { kind, id } => Status::with_error_details(
                Code::NotFound,
                format!("{kind} '{id}' not found"),
                ErrorDetails::with_resource_info(kind, id, "", "no such resource"),
            ),
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
            EngineError::Database(db) => database_status(&db),
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
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            tracing::warn!(error = %err, "database unavailable");
            Status::with_error_details(
                Code::Unavailable,
                "the database is busy or unreachable; retry with the same request_id",
                ErrorDetails::with_retry_info(Some(Duration::from_millis(200))),
            )
        }
        other => {
            tracing::error!(error = %other, "database error");
            Status::internal("database error; the operators have the details in the server log")
        }
    }
}

fn describe(violations: &[crate::engine::FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}
