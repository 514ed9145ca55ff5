//! `reserve`: one applicant. Exit 0 reserved, 3 referred to IKD, 4 answered with a reservation
//! that must not be printed here (or ALREADY_RESERVED_ELSEWHERE), 2 bad input, 1 other errors.

use std::process::ExitCode;

use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::{IkdStatus, Reservation, ReservationState, ReserveResponse};
use serde_json::json;

use crate::cli::ReserveArgs;
use crate::connect::random_request_id;
use crate::error::{EXIT_DO_NOT_PRINT, EXIT_ERROR, EXIT_OK, EXIT_REFERRED, Failure};
use crate::output::{
    Out, referral_json, referral_lines, reservation_json, reservation_line, reservation_state_line,
    snapshot_json,
};
use crate::terminal::Terminal;

/// When a Reserve's answer is the applicant's reservation made earlier (the same NIK again) and
/// no card may be printed here for it: already printed today, held for another counter, or no
/// longer held (cancelled, or run out: the server shows a replayed reservation as it is now).
/// The words for the officer; None when this counter may print: only a HELD reservation of this
/// counter (new, or replayed and not run out). Any other state, one this client does not know
/// included, is not printed (fails closed).
pub fn do_not_print(reservation: &Reservation, counter: &str, out: &Out) -> Option<String> {
    match reservation.state() {
        ReservationState::Committed => Some(format!(
            "{} {}: {}",
            out.t("SUDAH DICETAK pukul", "ALREADY PRINTED at"),
            out.zone.time(reservation.committed_at.as_ref()),
            out.t(
                "JANGAN cetak lagi untuk NIK ini hari ini.",
                "do NOT print again for this NIK today.",
            ),
        )),
        ReservationState::Held if reservation.counter_id != counter => Some(format!(
            "{} {}: {}",
            out.t("Ditahan untuk loket", "Held for counter"),
            reservation.counter_id,
            out.t(
                "JANGAN cetak di sini; arahkan pemohon ke loket itu.",
                "do NOT print here; send the applicant to that counter.",
            ),
        )),
        // A new hold is judged by the server's clock alone (a fast local clock must not hide
        // it); a replayed one may have run out since.
        ReservationState::Held if reservation.replayed && lapsed(reservation) => {
            Some(format!(
                "{}: {}",
                out.t("MASA TAHAN SUDAH HABIS", "THE HOLD HAS RUN OUT"),
                out.t(
                    "JANGAN cetak; pesan lagi untuk pemohon ini (permintaan baru).",
                    "do NOT print; reserve again for this applicant (a new request).",
                ),
            ))
        }
        ReservationState::Cancelled | ReservationState::Expired => Some(format!(
            "{}: {}",
            if reservation.state() == ReservationState::Cancelled {
                out.t("SUDAH DIBATALKAN", "ALREADY CANCELLED")
            } else {
                out.t("SUDAH KEDALUWARSA", "ALREADY EXPIRED")
            },
            out.t(
                "JANGAN cetak; blangko ini tidak lagi ditahan. Pesan lagi untuk pemohon ini (permintaan baru).",
                "do NOT print; no blank is held for it any more. Reserve again for this applicant (a new request).",
            ),
        )),
        ReservationState::Held => None,
        ReservationState::Unspecified => Some(
            out.t(
                "STATUS PEMESANAN TIDAK DIKENAL: JANGAN cetak; hubungi supervisor.",
                "UNKNOWN RESERVATION STATE: do NOT print; ask a supervisor.",
            )
            .to_string(),
        ),
    }
}

/// The line for a Reserve answer's reservation: beside a do-not-print warning it does not also
/// say what to do with a replayed hold.
pub fn answer_line(reservation: &Reservation, warned: bool, out: &Out) -> String {
    if warned {
        reservation_state_line(reservation, out)
    } else {
        reservation_line(reservation, out)
    }
}

/// Whether no blank is held for this reservation any more: cancelled, run out, or held past its
/// expiry (the server releases overdue holds in passes: a replay may show one not yet released).
/// The expiry is the server's time, so it is compared with the server's clock, not this PC's.
pub fn lapsed(reservation: &Reservation) -> bool {
    match reservation.state() {
        ReservationState::Cancelled | ReservationState::Expired => true,
        ReservationState::Held => reservation
            .expires_at
            .as_ref()
            .is_some_and(|at| at.seconds <= crate::server_clock::now_secs()),
        _ => false,
    }
}

/// Prints a Reserve answer (reservation or referral, and the quota after it) and gives its exit
/// code. Shared with the interactive screen. `counter`: this terminal's counter, to warn when the
/// answer is the applicant's earlier reservation that must not be printed here.
pub fn print_outcome(response: &ReserveResponse, counter: &str, out: &Out) -> u8 {
    let quota = response.quota.as_ref();
    match &response.outcome {
        Some(Outcome::Reservation(reservation)) => {
            let warning = do_not_print(reservation, counter, out);
            if out.json {
                out.json(&json!({
                    // A script that prints on "reserved" must not print this one.
                    "outcome": if warning.is_some() { "do_not_print" } else { "reserved" },
                    "reservation": reservation_json(reservation, out.zone),
                    "quota": quota.map(|q| snapshot_json(q, out.zone)),
                    "do_not_print": warning,
                }));
            } else {
                out.line(&answer_line(reservation, warning.is_some(), out));
                if let Some(warning) = &warning {
                    out.line(warning);
                }
                if let Some(q) = quota {
                    out.line(&format!(
                        "{} {}/{}",
                        out.t("Sisa kuota hari ini:", "Quota left today:"),
                        q.remaining,
                        q.quota
                    ));
                }
            }
            // A script that prints on exit 0 must not print this one.
            if warning.is_some() {
                EXIT_DO_NOT_PRINT
            } else {
                EXIT_OK
            }
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
        Ok(response) => ExitCode::from(print_outcome(
            &response,
            term.counter().unwrap_or_default(),
            &out,
        )),
        Err(failure) => failure.exit(&out),
    }
}
