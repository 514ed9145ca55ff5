//! Failures as the officer sees them (one clear line, or one JSON object) and as scripts see them
//! (the exit code).

use std::process::ExitCode;

use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::connect::{CallError, one_line};
use crate::output::{Lang, Out};

/// Exit code: the applicant got a reservation (or the command did what it was asked).
pub const EXIT_OK: u8 = 0;
/// Exit code: any other error (server unreachable, not found, expired, ...).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad input (ours or the server's INVALID_ARGUMENT).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: the applicant was referred to IKD activation.
pub const EXIT_REFERRED: u8 = 3;
/// Exit code: the answer is the applicant's earlier reservation, already printed or held for
/// another counter: do not print a card here.
pub const EXIT_DO_NOT_PRINT: u8 = 4;

/// One invalid field, as the server's BadRequest (or our own check) names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field, e.g. `nik`.
    pub field: String,
    /// Why it is invalid.
    pub description: String,
    /// Why it is invalid, in Bahasa Indonesia: our own check's, or the server's
    /// `localized_message` in `id-ID` when it sent one.
    pub indonesian: Option<String>,
}

/// A failed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Input rejected, locally or by the server (INVALID_ARGUMENT). Exit code 2.
    BadInput {
        /// A summary.
        message: String,
        /// The offending fields.
        violations: Vec<FieldViolation>,
    },
    /// No server answered. Exit code 1.
    NoServer {
        /// The endpoints tried.
        servers: String,
        /// The last failure.
        detail: String,
    },
    /// The server answered with an error. Exit code 1 (4 for ALREADY_RESERVED_ELSEWHERE).
    Server {
        /// The gRPC code name, e.g. `FAILED_PRECONDITION`.
        code: String,
        /// The server's message.
        message: String,
        /// The server's message in Bahasa Indonesia (its `google.rpc.LocalizedMessage` in
        /// `id-ID`), when it sent one.
        indonesian: Option<String>,
        /// The ErrorInfo reason, e.g. `RESERVATION_EXPIRED`.
        reason: Option<String>,
        /// The ResourceInfo name for NOT_FOUND.
        resource: Option<String>,
        /// The RetryInfo delay, when the server asked to be called again later (at most
        /// [`crate::connect::retry_hint`]'s bound).
        retry_after: Option<std::time::Duration>,
        /// The call's id in the server's log (its `x-request-id` answer metadata): what an
        /// operator looks for when the server failed.
        call_id: Option<String>,
    },
    /// Something local went wrong (a file, the terminal), said in both languages (a system's
    /// own error text inside them stays as the system gives it). Exit code 1.
    Local {
        /// For counter staff (`--lang id`, the default).
        indonesian: String,
        /// For `--lang en`, and the message of `--json`.
        english: String,
    },
}

pub use blangko_proto::code_name;

/// `text` with its first letter upper-case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A `google.rpc.LocalizedMessage` in Bahasa Indonesia (locale `id` or `id-…`), one line; None
/// for another locale or an empty message.
fn indonesian(locale: String, message: String) -> Option<String> {
    let locale = locale.to_ascii_lowercase();
    (locale == "id" || locale.starts_with("id-") || locale.starts_with("id_"))
        .then(|| one_line(&message))
        .filter(|m| !m.is_empty())
}

impl Failure {
    /// A local failure, in Bahasa Indonesia and in English.
    pub fn local(indonesian: impl Into<String>, english: impl Into<String>) -> Failure {
        Failure::Local {
            indonesian: indonesian.into(),
            english: english.into(),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        if status.code() == Code::InvalidArgument {
            let violations = status
                .get_details_bad_request()
                .map(|bad| {
                    bad.field_violations
                        .into_iter()
                        .map(|v| FieldViolation {
                            field: v.field,
                            description: v.description,
                            indonesian: v
                                .localized_message
                                .and_then(|m| indonesian(m.locale, m.message)),
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Failure::BadInput {
                message: one_line(status.message()),
                violations,
            };
        }
        Failure::Server {
            code: code_name(status.code()).to_string(),
            message: one_line(status.message()),
            indonesian: status
                .get_details_localized_message()
                .and_then(|m| indonesian(m.locale, m.message)),
            reason: status.get_details_error_info().map(|info| info.reason),
            resource: status
                .get_details_resource_info()
                .map(|info| format!("{} {}", info.resource_type, info.resource_name)),
            retry_after: crate::connect::retry_hint(&status),
            call_id: status
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|id| !id.is_empty() && id.len() <= 128)
                .map(str::to_string),
        }
    }
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Failure {
        match error {
            CallError::Status(status) => Failure::from(status),
            CallError::NoServer { servers, detail } => Failure::NoServer { servers, detail },
        }
    }
}

impl Failure {
    /// A local bad-input failure on one field, said in English and in Bahasa Indonesia.
    pub fn bad_field(
        field: &str,
        description: impl Into<String>,
        indonesian: impl Into<String>,
    ) -> Failure {
        let description = description.into();
        Failure::BadInput {
            message: format!("{field}: {description}"),
            violations: vec![FieldViolation {
                field: field.to_string(),
                description,
                indonesian: Some(indonesian.into()),
            }],
        }
    }

    /// The exit code of this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::BadInput { .. } => EXIT_BAD_INPUT,
            // Served today at another service point or office: do not print here (as for a
            // replayed reservation that must not be printed), rather than "other error".
            Failure::Server {
                reason: Some(reason),
                ..
            } if reason == "ALREADY_RESERVED_ELSEWHERE" => EXIT_DO_NOT_PRINT,
            _ => EXIT_ERROR,
        }
    }

    /// The gRPC code name of a server error (`FAILED_PRECONDITION`), if it is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Failure::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether no answer came (no server, or the call timed out or broke): the call may or may
    /// not have been done, and sending it again is safe.
    pub fn unanswered(&self) -> bool {
        matches!(self, Failure::NoServer { .. })
            || matches!(
                self,
                Failure::Server { code, reason: None, .. }
                    if code == "UNAVAILABLE" || code == "DEADLINE_EXCEEDED"
            )
    }

    /// The ErrorInfo reason, if the server gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Failure::Server { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// What the officer reads: one line (plus one per invalid field).
    pub fn human(&self, lang: Lang) -> String {
        match self {
            Failure::BadInput {
                message,
                violations,
            } => {
                if violations.is_empty() {
                    format!(
                        "{} {message}",
                        lang.t("Masukan ditolak:", "Input rejected:")
                    )
                } else {
                    let fields: Vec<String> = violations
                        .iter()
                        .map(|v| {
                            let why = match (lang, &v.indonesian) {
                                (Lang::Id, Some(indonesian)) => indonesian,
                                _ => &v.description,
                            };
                            format!("{}: {why}", v.field)
                        })
                        .collect();
                    format!(
                        "{} {}",
                        lang.t("Masukan ditolak:", "Input rejected:"),
                        fields.join("; ")
                    )
                }
            }
            Failure::NoServer { servers, detail } => format!(
                "{} {servers} ({detail})",
                lang.t("Tidak ada server yang menjawab:", "No server answered:")
            ),
            Failure::Server {
                code,
                message,
                indonesian,
                reason,
                resource,
                call_id,
                ..
            } => {
                // The server's own words in Bahasa Indonesia, when it sent them (they name what
                // was not found, so the English resource name is not added to them).
                let (message, resource) = match (lang, indonesian) {
                    (Lang::Id, Some(indonesian)) => (indonesian, &None),
                    _ => (message, resource),
                };
                let explained = reason.as_deref().and_then(|r| explain_reason(r, lang));
                if explained.is_none()
                    && code == "NOT_FOUND"
                    && indonesian.is_some()
                    && lang == Lang::Id
                {
                    // "Pemesanan 'R1' tidak ditemukan" says it all.
                    return format!("{} [{code}]", capitalized(message));
                }
                let mut text = match (explained, code.as_str()) {
                    (Some(explained), _) => explained.to_string(),
                    (None, "NOT_FOUND") => lang.t("Tidak ditemukan", "Not found").to_string(),
                    (None, "UNAUTHENTICATED" | "PERMISSION_DENIED") => lang
                        .t(
                            "Tidak diizinkan (periksa --token)",
                            "Not allowed (check --token)",
                        )
                        .to_string(),
                    (None, _) => lang.t("Server menolak", "The server refused").to_string(),
                };
                if let Some(resource) = resource {
                    text.push_str(&format!(" ({resource})"));
                }
                let code_reason = match reason {
                    Some(reason) => format!("{code}/{reason}"),
                    None => code.clone(),
                };
                match call_id {
                    // A failure of the server itself: the id the operators find in its log.
                    Some(id) if matches!(code.as_str(), "INTERNAL" | "UNKNOWN" | "DATA_LOSS") => {
                        format!(
                            "{text}: {message} [{code_reason}] ({} {id})",
                            lang.t("ID untuk operator:", "id for the operators:")
                        )
                    }
                    _ => format!("{text}: {message} [{code_reason}]"),
                }
            }
            Failure::Local {
                indonesian,
                english,
            } => format!(
                "{} {}",
                lang.t("Galat:", "Error:"),
                lang.t(indonesian, english)
            ),
        }
    }

    /// The server's message in `lang`: its Bahasa Indonesia words when it sent them, else its
    /// English (empty for a failure that is not the server's).
    fn server_words(&self, lang: Lang) -> &str {
        match (self, lang) {
            (
                Failure::Server {
                    indonesian: Some(indonesian),
                    ..
                },
                Lang::Id,
            ) => indonesian,
            (Failure::Server { message, .. }, _) => message,
            _ => "",
        }
    }

    /// What the officer reads when a spoiled-blank report on a reservation was refused. The
    /// blank in hand is spoiled either way: when the reservation is no longer held (expired,
    /// cancelled, printed), the generic advice ("do NOT print") is beside the point, and what to
    /// do is to record the blank as spoiled from stock.
    pub fn human_for_spoiled(&self, lang: Lang) -> String {
        // The request id was used before with other details: the same blank's report with a
        // note or reference added on a retry (recorded already), or another call.
        if self.reason() == Some("REQUEST_ID_REUSED") {
            return format!(
                "{} [{}]",
                lang.t(
                    "ID permintaan ini sudah dipakai untuk laporan dengan keterangan lain. Jika ini ulangan laporan blangko yang SAMA (catatan atau nomor berita acara ditambahkan): sudah tercatat, JANGAN laporkan lagi. Jika ini blangko LAIN: laporkan tanpa --request-id.",
                    "This request id was used for a report with other details. If this repeats the report of the SAME blank (a note or report reference added): it is recorded already, do NOT report it again. If this is ANOTHER blank: report it without --request-id.",
                ),
                "ALREADY_EXISTS/REQUEST_ID_REUSED"
            );
        }
        // Printed: the commit took the blank out of the stock already. A spoiled one on top
        // would write off a second blank.
        if self.reason() == Some("RESERVATION_COMMITTED") {
            return format!(
                "{} [FAILED_PRECONDITION/RESERVATION_COMMITTED]",
                lang.t(
                    "Blangko rusak BELUM tercatat: pemesanan ini sudah ditandai dicetak, jadi blangkonya sudah keluar dari stok. Jangan catat rusak dari stok untuk blangko yang sama; jika kartu dicetak ulang pada blangko lain, catat blangko yang rusak itu sebagai rusak dari stok (rusak stok ALASAN).",
                    "The spoiled blank is NOT recorded: this reservation is marked printed, so its blank already left the stock. Do not record the same blank as spoiled from stock; if the card is reprinted on another blank, record the spoiled one from stock (spoiled stock REASON).",
                )
            );
        }
        if let Failure::Server {
            code,
            reason: Some(reason),
            ..
        } = self
            && matches!(
                reason.as_str(),
                "RESERVATION_EXPIRED" | "RESERVATION_CANCELLED" | "RESERVATION_NOT_HELD"
            )
        {
            let message = self.server_words(lang);
            return format!(
                "{}: {message} [{code}/{reason}]",
                lang.t(
                    "Blangko rusak BELUM tercatat: pemesanan ini tidak ditahan lagi. Catat blangko itu sebagai rusak dari stok: di layar loket rusak stok ALASAN, atau blangko-counter spoiled --reason ALASAN tanpa ID pemesanan",
                    "The spoiled blank is NOT recorded: this reservation is no longer held. Record the blank as spoiled from stock: on the counter screen spoiled stock REASON, or blangko-counter spoiled --reason REASON without a reservation id",
                )
            );
        }
        self.human(lang)
    }

    /// What the officer reads when marking a card printed was refused because the hold is gone
    /// (cancelled, or run out with no slot or blank to take again): the card may be printed
    /// already, and then a blank left the stock with no record.
    pub fn human_for_commit(&self, lang: Lang) -> String {
        if matches!(
            self.reason(),
            Some("RESERVATION_EXPIRED" | "RESERVATION_CANCELLED")
        ) {
            return format!(
                "{} {}",
                self.human(lang),
                lang.t(
                    "Cetak TIDAK tercatat. Jika kartunya sudah dicetak, blangko itu keluar tanpa catatan: beri tahu supervisor agar stok dikoreksi. Jika belum dicetak: JANGAN cetak.",
                    "The print is NOT recorded. If the card is already printed, its blank left with no record: tell the supervisor so the stock is corrected. If not printed yet: do NOT print.",
                )
            );
        }
        self.human(lang)
    }

    /// The machine shape: `{"error": {...}}`, each with `code`, `message` (English, as the server
    /// or the system said it) and `message_indonesian` (the line the counter shows staff).
    pub fn json(&self) -> Value {
        let mut error = match self {
            Failure::BadInput {
                message,
                violations,
            } => json!({
                "code": "INVALID_ARGUMENT",
                "message": message,
                "field_violations": violations.iter().map(|v| json!({"field": v.field, "description": v.description, "description_indonesian": v.indonesian})).collect::<Vec<_>>(),
            }),
            Failure::NoServer { servers, detail } => json!({
                "code": "UNAVAILABLE",
                "message": format!("no server answered: {detail}"),
                "servers": servers,
            }),
            Failure::Server {
                code,
                message,
                reason,
                resource,
                call_id,
                ..
            } => json!({
                "code": code,
                "message": message,
                "reason": reason,
                "resource": resource,
                "call_id": call_id,
            }),
            Failure::Local { english, .. } => json!({"code": "LOCAL", "message": english}),
        };
        error["message_indonesian"] = Value::String(self.human(Lang::Id));
        json!({ "error": error })
    }

    /// Prints the failure: JSON on stdout with `--json`, else one line on stderr.
    pub fn report(&self, out: &Out) {
        if out.json {
            out.json(&self.json());
        } else {
            out.notice(&self.human(out.lang));
        }
    }

    /// Prints the failure and gives its exit code.
    pub fn exit(&self, out: &Out) -> ExitCode {
        self.report(out);
        ExitCode::from(self.exit_code())
    }
}

/// What an ErrorInfo reason means for the officer.
fn explain_reason(reason: &str, lang: Lang) -> Option<&'static str> {
    let text = match reason {
        "RESERVATION_EXPIRED" => lang.t(
            // Why it could not be taken again (the day is over, the applicant holds another
            // blank, no slot or blank is free) is the server's message that follows.
            "Masa tahan sudah habis: JANGAN cetak",
            "The hold expired: do NOT print",
        ),
        "RESERVATION_CANCELLED" => lang.t(
            "Pemesanan ini sudah dibatalkan: JANGAN cetak",
            "This reservation was cancelled: do NOT print",
        ),
        "RESERVATION_COMMITTED" => lang.t(
            "Pemesanan ini sudah dicetak (DICETAK)",
            "This reservation is already printed (COMMITTED)",
        ),
        "ALREADY_RESERVED_ELSEWHERE" => lang.t(
            "NIK ini sudah mendapat blangko hari ini di tempat layanan lain",
            "This NIK already holds a blank today at another service point",
        ),
        "SPOILAGE_LIMIT_REACHED" => lang.t(
            "Sudah 3 blangko rusak untuk pemesanan ini",
            "Already 3 spoiled blanks for this reservation",
        ),
        "REQUEST_ID_REUSED" => lang.t(
            "ID permintaan sudah dipakai untuk data lain",
            "The request id was already used with other data",
        ),
        "INSUFFICIENT_STOCK" => lang.t("Stok tidak cukup", "Not enough stock"),
        "EARLIER_HOLD_RELEASING" => lang.t(
            "Masa tahan NIK ini di kantor lain baru habis dan sedang dilepas: ulangi sebentar lagi",
            "This NIK's hold at another office has just run out and is being released: try again in a moment",
        ),
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn only_calls_left_without_a_decision_are_unanswered() {
        let server = |code: &str, reason: Option<&str>| Failure::Server {
            code: code.into(),
            message: "m".into(),
            indonesian: None,
            reason: reason.map(str::to_string),
            resource: None,
            retry_after: None,
            call_id: None,
        };
        assert!(
            Failure::NoServer {
                servers: "http://a".into(),
                detail: "refused".into()
            }
            .unanswered()
        );
        assert!(server("UNAVAILABLE", None).unanswered());
        assert!(server("DEADLINE_EXCEEDED", None).unanswered());
        // Answers the server decided: not "send it again blind".
        assert!(!server("UNAVAILABLE", Some("EARLIER_HOLD_RELEASING")).unanswered());
        assert!(!server("FAILED_PRECONDITION", Some("RESERVATION_EXPIRED")).unanswered());
        assert!(!Failure::local("x", "x").unanswered());
    }

    #[test]
    fn a_hold_elsewhere_being_released_reads_as_try_again_soon() {
        let wait = Failure::Server {
            code: "UNAVAILABLE".into(),
            message: "this applicant's hold at another office has just run out".into(),
            indonesian: None,
            reason: Some("EARLIER_HOLD_RELEASING".into()),
            resource: None,
            retry_after: None,
            call_id: None,
        };
        let id = wait.human(Lang::Id);
        assert!(id.contains("sedang dilepas: ulangi sebentar lagi"), "{id}");
        assert!(
            wait.human(Lang::En).contains("try again in a moment"),
            "{}",
            wait.human(Lang::En)
        );
    }

    #[test]
    fn a_refused_spoiled_report_says_to_record_the_blank_from_stock() {
        let expired = Failure::Server {
            code: "FAILED_PRECONDITION".into(),
            message: "cannot record a spoiled blank on this reservation: expired".into(),
            indonesian: None,
            reason: Some("RESERVATION_EXPIRED".into()),
            resource: None,
            retry_after: None,
            call_id: None,
        };
        let id = expired.human_for_spoiled(Lang::Id);
        assert!(id.starts_with("Blangko rusak BELUM tercatat"), "{id}");
        assert!(!id.contains("JANGAN cetak"), "{id}");
        assert!(
            expired
                .human_for_spoiled(Lang::En)
                .contains("Record the blank as spoiled from stock")
        );
        // Other refusals read as everywhere else.
        let limit = Failure::Server {
            code: "FAILED_PRECONDITION".into(),
            message: "limit".into(),
            indonesian: None,
            reason: Some("SPOILAGE_LIMIT_REACHED".into()),
            resource: None,
            retry_after: None,
            call_id: None,
        };
        assert_eq!(limit.human_for_spoiled(Lang::Id), limit.human(Lang::Id));
    }

    fn refused(code: &str, reason: &str) -> Failure {
        Failure::Server {
            code: code.into(),
            message: "refused".into(),
            indonesian: None,
            reason: Some(reason.into()),
            resource: None,
            retry_after: None,
            call_id: None,
        }
    }

    #[test]
    fn a_spoiled_report_refused_as_printed_or_as_a_reused_id_is_not_sent_again_as_new() {
        // Printed already: the commit counted the blank; a spoiled one from stock for the same
        // blank would write off two.
        let printed =
            refused("FAILED_PRECONDITION", "RESERVATION_COMMITTED").human_for_spoiled(Lang::Id);
        assert!(printed.contains("sudah keluar dari stok"), "{printed}");
        assert!(
            printed.contains("Jangan catat rusak dari stok untuk blangko yang sama"),
            "{printed}"
        );
        // The same request id with a note added: the first report stands.
        let reused = refused("ALREADY_EXISTS", "REQUEST_ID_REUSED");
        let en = reused.human_for_spoiled(Lang::En);
        assert!(
            en.contains("it is recorded already, do NOT report it again"),
            "{en}"
        );
        assert!(
            en.contains("If this is ANOTHER blank: report it without --request-id"),
            "{en}"
        );
        assert!(!reused.human_for_spoiled(Lang::Id).contains("data lain"));
    }

    #[test]
    fn a_refused_commit_says_what_to_do_with_a_card_already_printed() {
        for reason in ["RESERVATION_EXPIRED", "RESERVATION_CANCELLED"] {
            let failure = refused("FAILED_PRECONDITION", reason);
            let id = failure.human_for_commit(Lang::Id);
            assert!(id.contains("Cetak TIDAK tercatat"), "{id}");
            assert!(id.contains("beri tahu supervisor"), "{id}");
            let en = failure.human_for_commit(Lang::En);
            assert!(en.contains("If not printed yet: do NOT print"), "{en}");
        }
        let other = refused("NOT_FOUND", "");
        assert_eq!(other.human_for_commit(Lang::Id), other.human(Lang::Id));
    }

    #[test]
    fn a_server_failure_shows_the_id_the_operators_find_in_its_log() {
        let mut status =
            Status::internal("internal error; the operators have the details in the server log");
        status
            .metadata_mut()
            .insert("x-request-id", "srv-0192ab".parse().unwrap());
        let failure = Failure::from(status);
        let line = failure.human(Lang::Id);
        assert!(
            line.ends_with("[INTERNAL] (ID untuk operator: srv-0192ab)"),
            "{line}"
        );
        assert_eq!(failure.json()["error"]["call_id"], "srv-0192ab");
        // A refusal (not a failure of the server) reads as before; JSON still has the id.
        let mut status = Status::not_found("reservation 'x' not found");
        status
            .metadata_mut()
            .insert("x-request-id", "srv-0192ac".parse().unwrap());
        let failure = Failure::from(status);
        assert!(!failure.human(Lang::Id).contains("srv-0192ac"));
        assert_eq!(failure.json()["error"]["call_id"], "srv-0192ac");
    }

    #[test]
    fn bad_request_details_become_field_violations() {
        let details =
            ErrorDetails::with_bad_request_violation("nik", "birth date 32-01 is impossible");
        let status = Status::with_error_details(Code::InvalidArgument, "invalid NIK", details);
        let failure = Failure::from(status);
        assert_eq!(failure.exit_code(), EXIT_BAD_INPUT);
        assert_eq!(
            failure.human(Lang::Id),
            "Masukan ditolak: nik: birth date 32-01 is impossible"
        );
        assert_eq!(
            failure.human(Lang::En),
            "Input rejected: nik: birth date 32-01 is impossible"
        );
        let v = failure.json();
        assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
        assert_eq!(v["error"]["field_violations"][0]["field"], "nik");
    }

    /// A BadRequest field violation with its localized message.
    fn violation(
        field: &str,
        english: &str,
        locale: &str,
        localized: &str,
    ) -> tonic_types::FieldViolation {
        tonic_types::FieldViolation {
            localized_message: Some(tonic_types::LocalizedMessage::new(locale, localized)),
            ..tonic_types::FieldViolation::new(field, english)
        }
    }

    /// The failure a status with `details` makes.
    fn failure(code: Code, message: &str, details: ErrorDetails) -> Failure {
        Failure::from(Status::with_error_details(code, message, details))
    }

    /// What the officer reads, with `--lang id` and with `--lang en`.
    fn lines(failure: &Failure) -> [String; 2] {
        [failure.human(Lang::Id), failure.human(Lang::En)]
    }

    #[test]
    fn the_servers_words_in_bahasa_indonesia_are_shown_to_counter_staff() {
        // A field refused by the server: its Indonesian reason with --lang id, English with en;
        // another locale is not taken for Bahasa Indonesia.
        let mut details = ErrorDetails::new();
        details.set_bad_request(vec![
            violation(
                "nik",
                "must contain only digits",
                "id-ID",
                "NIK hanya boleh berisi angka",
            ),
            violation("counter_id", "is required", "fr-FR", "requis"),
        ]);
        let bad = failure(Code::InvalidArgument, "invalid request", details);
        assert_eq!(
            lines(&bad),
            [
                "Masukan ditolak: nik: NIK hanya boleh berisi angka; counter_id: is required",
                "Input rejected: nik: must contain only digits; counter_id: is required",
            ]
        );
        // JSON: each field's Indonesian reason beside its English one.
        let v = bad.json();
        assert_eq!(
            v["error"]["field_violations"][0]["description_indonesian"],
            "NIK hanya boleh berisi angka"
        );
        assert_eq!(
            v["error"]["field_violations"][1]["description_indonesian"],
            Value::Null
        );
        // A refusal: the counter's own explanation of the reason, then the server's words.
        let mut details =
            ErrorDetails::with_error_info("INSUFFICIENT_STOCK", "blangko.v1", HashMap::new());
        details.set_localized_message("id-ID", "kantor 3275 hanya punya 2 blangko tersedia");
        let refused = failure(
            Code::FailedPrecondition,
            "office 3275 has 2 available blanks",
            details,
        );
        assert_eq!(
            lines(&refused),
            [
                "Stok tidak cukup: kantor 3275 hanya punya 2 blangko tersedia [FAILED_PRECONDITION/INSUFFICIENT_STOCK]",
                "Not enough stock: office 3275 has 2 available blanks [FAILED_PRECONDITION/INSUFFICIENT_STOCK]",
            ]
        );
        // JSON keeps the English message, and the Indonesian line beside it.
        let v = refused.json();
        assert_eq!(v["error"]["message"], "office 3275 has 2 available blanks");
        assert!(
            v["error"]["message_indonesian"]
                .as_str()
                .is_some_and(|m| m.contains("hanya punya 2 blangko")),
            "{v}"
        );
    }

    #[test]
    fn a_not_found_reads_once_and_refusals_of_a_spoiled_report_speak_indonesian() {
        let mut details =
            ErrorDetails::with_resource_info("reservation", "R1", "", "no such resource");
        details.set_localized_message("id", "pemesanan 'R1' tidak ditemukan");
        let not_found = failure(Code::NotFound, "reservation 'R1' not found", details);
        assert_eq!(
            lines(&not_found),
            [
                "Pemesanan 'R1' tidak ditemukan [NOT_FOUND]",
                "Not found (reservation R1): reservation 'R1' not found [NOT_FOUND]",
            ]
        );
        let mut details =
            ErrorDetails::with_error_info("RESERVATION_CANCELLED", "blangko.v1", HashMap::new());
        details.set_localized_message(
            "id_ID",
            "blangko rusak tidak dapat dicatat pada pemesanan ini: pemesanan sudah dibatalkan",
        );
        let spoiled = failure(
            Code::FailedPrecondition,
            "cannot record a spoiled blank on this reservation: reservation was cancelled",
            details,
        );
        let id = spoiled.human_for_spoiled(Lang::Id);
        assert!(id.starts_with("Blangko rusak BELUM tercatat"), "{id}");
        assert!(
            id.contains(": blangko rusak tidak dapat dicatat pada pemesanan ini: pemesanan sudah dibatalkan [FAILED_PRECONDITION/RESERVATION_CANCELLED]"),
            "{id}"
        );
        assert!(spoiled.human_for_spoiled(Lang::En).contains(
            ": cannot record a spoiled blank on this reservation: reservation was cancelled ["
        ));
    }

    #[test]
    fn error_info_reasons_are_explained() {
        let details = ErrorDetails::with_error_info("RESERVATION_EXPIRED", "blangko", []);
        let status = Status::with_error_details(Code::FailedPrecondition, "hold expired", details);
        let failure = Failure::from(status);
        assert_eq!(failure.exit_code(), EXIT_ERROR);
        assert_eq!(failure.reason(), Some("RESERVATION_EXPIRED"));
        let text = failure.human(Lang::En);
        assert!(text.contains("do NOT print"), "{text}");
        assert!(
            text.ends_with("[FAILED_PRECONDITION/RESERVATION_EXPIRED]"),
            "{text}"
        );
    }

    #[test]
    fn no_server_is_one_line() {
        let failure = Failure::from(CallError::NoServer {
            servers: "http://127.0.0.1:1".to_string(),
            detail: "http://127.0.0.1:1: tcp connect error".to_string(),
        });
        let text = failure.human(Lang::Id);
        assert!(text.starts_with("Tidak ada server yang menjawab: http://127.0.0.1:1"));
        assert!(!text.contains('\n'));
        assert_eq!(failure.exit_code(), EXIT_ERROR);
        assert_eq!(failure.json()["error"]["code"], "UNAVAILABLE");
    }
}
