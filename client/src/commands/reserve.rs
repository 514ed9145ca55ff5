//! `reserve`: one applicant. Exit 0 reserved, 3 referred to IKD, 2 bad input, 1 other errors.

use std::process::ExitCode;

use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::{IkdStatus, ReserveResponse};
use serde_json::json;

use crate::cli::ReserveArgs;
use crate::connect::random_request_id;
use crate::error::{EXIT_ERROR, EXIT_OK, EXIT_REFERRED, Failure};
use crate::output::{
    Out, referral_json, referral_lines, reservation_json, reservation_line, snapshot_json,
};
use crate::terminal::Terminal;

/// Prints a Reserve answer (reservation or referral, and the quota after it) and gives its exit
/// code. Shared with the interactive screen.
pub fn print_outcome(response: &ReserveResponse, out: &Out) -> u8 {
    let quota = response.quota.as_ref();
    match &response.outcome {
        Some(Outcome::Reservation(reservation)) => {
            if out.json {
                out.json(&json!({
                    "outcome": "reserved",
                    "reservation": reservation_json(reservation, out.zone),
                    "quota": quota.map(|q| snapshot_json(q, out.zone)),
                }));
            } else {
                out.line(&reservation_line(reservation, out));
                if let Some(q) = quota {
                    out.line(&format!(
                        "{} {}/{}",
                        out.t("Sisa kuota hari ini:", "Quota left today:"),
                        q.remaining,
                        q.quota
                    ));
                }
            }
            EXIT_OK
        }
        Some(Outcome::IkdReferral(referral)) => {
            if out.json {
                out.json(&json!({
                    "outcome": "ikd_referral",
                    "referral": referral_json(referral, out.zone),
                    "quota": quota.map(|q| snapshot_json(q, out.zone)),
                }));
            } else {
                for line in referral_lines(referral, out) {
                    out.line(&line);
                }
            }
            EXIT_REFERRED
        }
        None => {
            Failure::local(
                "server menjawab tanpa hasil (tidak ada pemesanan atau rujukan IKD)",
                "the server answered without an outcome",
            )
            .report(out);
            EXIT_ERROR
        }
    }
}

/// Runs `reserve`.
pub async fn run(term: &Terminal, out: Out, args: &ReserveArgs) -> ExitCode {
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(|| random_request_id("r"));
    let ikd = args.ikd.unwrap_or(IkdStatus::Unspecified);
    match term
        .reserve(&args.nik.0, args.reason, ikd, &request_id)
        .await
    {
        Ok(response) => ExitCode::from(print_outcome(&response, &out)),
        Err(failure) => failure.exit(&out),
    }
}
