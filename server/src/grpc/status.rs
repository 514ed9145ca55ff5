//! The one place where engine errors become gRPC statuses, with rich error details
//! (google.rpc.BadRequest, ErrorInfo, ResourceInfo, RetryInfo) that clients in any language decode.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::engine::EngineError;
use crate::engine::error::describe;

/// The ErrorInfo domain of every error this service raises.
pub const ERROR_DOMAIN: &str = "blangko.v1";

impl From<EngineError> for Status {
    fn from(err: EngineError) -> Status {
        match err {
            EngineError::Invalid(violations) => {
                let message = format!("invalid request: {}", describe(&violations));
                // The first field and why, and how many more are listed (the last one listed
                // counts those left out): each one's reason is in its violation, and the whole
                // status travels in headers that clients bound.
                let indonesian = match violations.as_slice() {
                    [] => "permintaan tidak sah".to_string(),
                    [first] => format!(
                        "permintaan tidak sah: {}: {}",
                        first.field, first.indonesian
                    ),
                    [first, rest @ ..] => format!(
                        "permintaan tidak sah: {}: {} (dan {} kesalahan lain tercantum)",
                        first.field,
                        first.indonesian,
                        rest.len()
                    ),
                };
                let mut details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation {
                            localized_message: Some(tonic_types::LocalizedMessage::new(
                                LOCALE,
                                v.indonesian,
                            )),
                            ..tonic_types::FieldViolation::new(v.field, v.description)
                        })
                        .collect::<Vec<_>>(),
                );
                details.set_localized_message(LOCALE, indonesian);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            EngineError::NotFound { kind, id } => {
                // The id comes from the caller: a NIK typed into it is not echoed.
                let id = crate::domain::nik::mask_nik_stretches(&id).into_owned();
                let mut details =
                    ErrorDetails::with_resource_info(kind, &id, "", "no such resource");
                details.set_localized_message(
                    LOCALE,
                    format!("{} '{id}' tidak ditemukan", indonesian_kind(kind)),
                );
                Status::with_error_details(
                    Code::NotFound,
                    format!("{kind} '{id}' not found"),
                    details,
                )
            }
            EngineError::FailedPrecondition {
                reason,
                message,
                indonesian,
            } => refused(Code::FailedPrecondition, reason, message, indonesian),
            EngineError::AlreadyExists {
                reason,
                message,
                indonesian,
            } => refused(Code::AlreadyExists, reason, message, indonesian),
            EngineError::Exhausted {
                reason,
                message,
                indonesian,
                retry_after,
            } => retry_later(
                Code::ResourceExhausted,
                reason,
                (message, indonesian),
                retry_after,
            ),
            EngineError::Retry {
                reason,
                message,
                indonesian,
                retry_after,
            } => retry_later(
                Code::Unavailable,
                reason,
                (message, indonesian),
                retry_after,
            ),
            EngineError::Database(db) => database_status(&db),
            EngineError::Unavailable(text) => {
                tracing::debug!(error = %text, "database unavailable (shared by a batch)");
                unavailable()
            }
            EngineError::Internal(message) => {
                tracing::error!(%message, "internal error");
                internal("internal error; the operators have the details in the server log")
            }
        }
    }
}

/// The locale of every error's `google.rpc.LocalizedMessage`: Bahasa Indonesia, as the counters
/// speak it (the status message itself is English, for developers).
pub const LOCALE: &str = "id-ID";

/// `google.rpc.LocalizedMessage` in [`LOCALE`] alone, for a status that has no other detail.
pub fn localized(code: Code, message: impl Into<String>, indonesian: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_localized_message(LOCALE, indonesian),
    )
}

/// How a NOT_FOUND's kind of resource is said in Bahasa Indonesia.
fn indonesian_kind(kind: &str) -> &'static str {
    match kind {
        "office" => "kantor",
        "service point" => "tempat layanan",
        "reservation" => "pemesanan",
        _ => "data",
    }
}

/// `code` with ErrorInfo `reason` and the Indonesian message: the state forbids the call.
fn refused(code: Code, reason: &str, message: String, indonesian: String) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    details.set_localized_message(LOCALE, indonesian);
    Status::with_error_details(code, message, details)
}

/// INTERNAL: the server failed; the operators have the details in its log.
fn internal(message: &str) -> Status {
    localized(
        Code::Internal,
        message,
        "galat di server; operator dapat melihat rinciannya di log server",
    )
}

/// A database failure: UNAVAILABLE with RetryInfo when waiting may help (no free connection, the
/// database unreachable), INTERNAL otherwise. The database's own text goes to the log only.
fn database_status(err: &sqlx::Error) -> Status {
    if crate::engine::is_unavailable(err) {
        tracing::warn!(error = %err, "database unavailable");
        unavailable()
    } else {
        tracing::error!(error = %err, "database error");
        internal("database error; the operators have the details in the server log")
    }
}

/// `code` with ErrorInfo `reason`, RetryInfo `retry_after` and the message in English and in
/// Bahasa Indonesia: not now, later.
fn retry_later(
    code: Code,
    reason: &str,
    (message, indonesian): (String, String),
    retry_after: Duration,
) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    details.set_localized_message(LOCALE, indonesian);
    Status::with_error_details(code, message, details)
}

/// UNAVAILABLE with a retry hint: the database is busy or unreachable.
fn unavailable() -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(200)));
    details.set_localized_message(
        LOCALE,
        "basis data sedang sibuk atau tidak terjangkau; kirim ulang dengan request_id yang sama",
    );
    Status::with_error_details(
        Code::Unavailable,
        "the database is busy or unreachable; retry with the same request_id",
        details,
    )
}

/// The ErrorInfo reason of a call refused by load shedding.
pub const OVERLOADED: &str = "OVERLOADED";
/// The ErrorInfo reason of a call cut by the server's request time-out.
pub const REQUEST_TIMEOUT: &str = "REQUEST_TIMEOUT";

/// A call refused because `limit` calls were already in flight: UNAVAILABLE (gRPC clients may
/// retry it; nothing was done) with RetryInfo saying when, and ErrorInfo OVERLOADED.
pub fn overloaded(limit: usize, retry_after: Duration) -> Status {
    let ms = retry_after.as_millis();
    retry_later(
        Code::Unavailable,
        OVERLOADED,
        (
            format!(
                "the server is overloaded ({limit} calls in flight); nothing was done: retry after {ms} ms with the same request_id"
            ),
            format!(
                "server sedang kelebihan beban ({limit} panggilan berjalan); permintaan belum diproses: kirim ulang setelah {ms} ms dengan request_id yang sama"
            ),
        ),
        retry_after,
    )
}

/// A call that ran past the server's request time-out: DEADLINE_EXCEEDED. A mutating call may
/// or may not have taken effect; a retry with the same request_id gets the first answer.
pub fn timed_out(timeout: Duration) -> Status {
    let secs = timeout.as_secs();
    refused(
        Code::DeadlineExceeded,
        REQUEST_TIMEOUT,
        format!(
            "the call ran past the server's request time-out ({secs} s); retry with the same request_id"
        ),
        format!(
            "panggilan melewati batas waktu server ({secs} detik); kirim ulang dengan request_id yang sama"
        ),
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

    #[test]
    fn every_error_the_server_raises_says_it_in_bahasa_indonesia_too() {
        let retry = Duration::from_secs(1);
        let statuses = [
            Status::from(EngineError::invalid(
                "nik",
                "must contain only digits",
                "NIK hanya boleh berisi angka",
            )),
            Status::from(EngineError::NotFound {
                kind: "service point",
                id: "mpp".into(),
            }),
            Status::from(EngineError::FailedPrecondition {
                reason: "INSUFFICIENT_STOCK",
                message: "no stock".into(),
                indonesian: "stok tidak cukup".into(),
            }),
            Status::from(EngineError::AlreadyExists {
                reason: "REQUEST_ID_REUSED",
                message: "reused".into(),
                indonesian: "sudah dipakai".into(),
            }),
            Status::from(EngineError::Exhausted {
                reason: "TOO_MANY_WATCHERS",
                message: "full".into(),
                indonesian: "penuh".into(),
                retry_after: retry,
            }),
            Status::from(EngineError::Retry {
                reason: "EARLIER_HOLD_RELEASING",
                message: "soon".into(),
                indonesian: "sebentar lagi".into(),
                retry_after: retry,
            }),
            Status::from(EngineError::Database(sqlx::Error::PoolTimedOut)),
            Status::from(EngineError::Database(sqlx::Error::RowNotFound)),
            Status::from(EngineError::Unavailable("busy".into())),
            Status::from(EngineError::Internal("bug".into())),
            overloaded(64, retry),
            timed_out(Duration::from_secs(30)),
        ];
        for status in statuses {
            let localized = status
                .get_details_localized_message()
                .unwrap_or_else(|| panic!("no LocalizedMessage: {status:?}"));
            assert_eq!(localized.locale, "id-ID", "{status:?}");
            assert!(!localized.message.is_empty(), "{status:?}");
            assert_ne!(localized.message, status.message(), "{status:?}");
            // The other details stay as they were.
            if matches!(
                status.code(),
                Code::FailedPrecondition | Code::AlreadyExists
            ) {
                assert!(status.get_details_error_info().is_some(), "{status:?}");
            }
        }
        let not_found = Status::from(EngineError::NotFound {
            kind: "service point",
            id: "mpp".into(),
        });
        assert_eq!(
            not_found.get_details_localized_message().map(|m| m.message),
            Some("tempat layanan 'mpp' tidak ditemukan".to_string())
        );
        assert_eq!(
            not_found
                .get_details_resource_info()
                .map(|r| r.resource_name),
            Some("mpp".to_string())
        );
        let invalid = Status::from(EngineError::invalid(
            "nik",
            "must contain only digits",
            "NIK hanya boleh berisi angka",
        ));
        let violation = &invalid
            .get_details_bad_request()
            .expect("BadRequest")
            .field_violations[0];
        assert_eq!(violation.description, "must contain only digits");
        assert_eq!(
            violation
                .localized_message
                .as_ref()
                .map(|m| (m.locale.as_str(), m.message.as_str())),
            Some(("id-ID", "NIK hanya boleh berisi angka"))
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
