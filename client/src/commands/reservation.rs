//! `commit`, `cancel` and `spoiled`: what happens to a reservation after the Reserve.

use std::process::ExitCode;

use blangko_proto::v1::{QuotaSnapshot, Reservation, SpoilageReason};
use serde_json::json;

use crate::error::{EXIT_OK, EXIT_REFERRED, Failure};
use crate::output::{
    Lang, Out, referral_json, referral_lines, reservation_json, reservation_line,
    reservation_state_line, snapshot_json,
};
use crate::terminal::Terminal;
use crate::vocab;

fn print_reservation(
    outcome: &str,
    reservation: Option<&Reservation>,
    quota: Option<&QuotaSnapshot>,
    out: &Out,
) {
    if out.json {
        out.json(&json!({
            "outcome": outcome,
            "reservation": reservation.map(|r| reservation_json(r, out.zone)),
            "quota": quota.map(|q| snapshot_json(q, out.zone)),
        }));
        return;
    }
    if let Some(reservation) = reservation {
        out.line(&reservation_line(reservation, out));
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

/// Runs `commit ID`.
pub async fn commit(term: &Terminal, out: Out, reservation_id: &str) -> ExitCode {
    match term.commit(reservation_id).await {
        Ok(answer) => {
            print_reservation(
                "committed",
                answer.reservation.as_ref(),
                answer.quota.as_ref(),
                &out,
            );
            ExitCode::from(EXIT_OK)
        }
        Err(failure) => {
            if out.json {
                failure.report(&out);
            } else {
                out.notice(&failure.human_for_commit(out.lang));
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Runs `cancel ID`.
pub async fn cancel(term: &Terminal, out: Out, reservation_id: &str, note: &str) -> ExitCode {
    match term.cancel(reservation_id, note).await {
        Ok(answer) => {
            print_reservation(
                "cancelled",
                answer.reservation.as_ref(),
                answer.quota.as_ref(),
                &out,
            );
            ExitCode::from(EXIT_OK)
        }
        Err(failure) => failure.exit(&out),
    }
}

/// Runs `spoiled [ID] --reason R [--report REF]`. Exit 3 when the reservation had to be
/// cancelled for lack of a blank (the applicant is referred to IKD).
#[allow(clippy::too_many_arguments)]
pub async fn spoiled(
    term: &Terminal,
    out: Out,
    reservation_id: &str,
    reason: SpoilageReason,
    report: &str,
    note: &str,
    request_id: Option<&str>,
) -> ExitCode {
    if reason == SpoilageReason::Other && note.trim().is_empty() {
        return Failure::bad_field(
            "note",
            "is required with --reason other: say what happened to the blank",
            "wajib dengan --reason other: tulis apa yang terjadi pada blangko",
        )
        .exit(&out);
    }
    let request_id = request_id.map_or_else(Terminal::new_spoiled_request_id, str::to_string);
    let answer = match term
        .spoiled(reservation_id, reason, report, note, &request_id)
        .await
    {
        Ok(answer) => answer,
        Err(failure) => {
            // No server answered: the report may have been recorded all the same. Its request
            // id is what makes running it again safe.
            if out.json {
                let mut value = failure.json();
                value["error"]["request_id"] = json!(request_id);
                out.json(&value);
            } else {
                out.notice(&failure.human_for_spoiled(out.lang));
                if failure.unanswered() {
                    out.notice(&unanswered_spoiled_hint(&request_id, out.lang));
                }
            }
            return ExitCode::from(failure.exit_code());
        }
    };
    if out.json {
        out.json(&json!({
            "outcome": if answer.ikd_referral.is_some() { "ikd_referral" } else { "spoiled_recorded" },
            "spoilage_reason": vocab::spoilage_code(reason),
            "reservation": answer.reservation.as_ref().map(|r| reservation_json(r, out.zone)),
            "referral": answer.ikd_referral.as_ref().map(|r| referral_json(r, out.zone)),
            "on_hand": answer.on_hand,
            "available": answer.available,
            "replayed": answer.replayed,
        }));
    } else {
        if answer.replayed {
            out.line(out.t(
                "Laporan ini sudah tercatat sebelumnya (sekali saja, blangko tidak dicatat dua kali); berikut keadaannya sekarang:",
                "This report was already recorded (once: the blank is not written off twice); here is how things are now:",
            ));
        }
        out.line(&format!(
            "{} ({}) · {} {} · {} {}",
            out.t("Blangko rusak dicatat", "Spoiled blank recorded"),
            vocab::spoilage_code(reason),
            out.t("stok fisik", "on hand"),
            answer.on_hand,
            out.t("tersedia", "available"),
            answer.available
        ));
        if let Some(reservation) = &answer.reservation {
            // A replayed report says so once, above: the reservation as it is now.
            out.line(&reservation_state_line(reservation, &out));
        }
        if let Some(referral) = &answer.ikd_referral {
            for line in referral_lines(referral, &out) {
                out.line(&line);
            }
        }
    }
    ExitCode::from(if answer.ikd_referral.is_some() {
        EXIT_REFERRED
    } else {
        EXIT_OK
    })
}

/// What the officer reads when a spoiled-blank report got no answer: it may be recorded, and
/// the same request id makes running it again safe.
pub fn unanswered_spoiled_hint(request_id: &str, lang: Lang) -> String {
    format!(
        "{} --request-id {request_id}",
        lang.t(
            "Laporan blangko rusak mungkin sudah tercatat. Ulangi perintah yang sama dengan",
            "The spoiled blank may have been recorded. Run the same command again with",
        )
    )
}
