//! `ledger`: the office's hash-chained ledger for auditors, exported as JSON lines (one entry per
//! line, in chain order, every field including the hashes, and the exact `recorded_ms` the hash
//! covers, so an auditor can recompute the chain as `LedgerEntry.hash` documents it), and
//! `ledger --verify`: the server recomputes the chain (VerifyLedger) and the answer says whether
//! it is intact.

use std::io::Write;
use std::process::ExitCode;

use blangko_proto::v1::{
    LedgerEntry, LedgerEntryKind, ListLedgerEntriesRequest, VerifyLedgerRequest,
};
use serde_json::{Value, json};

use crate::error::{EXIT_ERROR, EXIT_OK};
use crate::output::{Out, Zone};
use crate::terminal::Terminal;

/// Entries per page while exporting.
const PAGE_SIZE: u32 = 1000;

/// One entry as a JSON object (instants in RFC 3339 with the zone's offset, to the second, and
/// the recording instant also in Unix milliseconds, as the hash covers it).
pub fn entry_json(e: &LedgerEntry, zone: Zone) -> Value {
    let kind = LedgerEntryKind::try_from(e.kind)
        .map(|k| k.as_str_name().to_string())
        .unwrap_or_else(|_| e.kind.to_string());
    json!({
        "office_id": e.office_id,
        "sequence": e.sequence,
        "kind": kind,
        "recorded_at": zone.rfc3339(e.recorded_at.as_ref()),
        "recorded_ms": e.recorded_at.and_then(|t| {
            t.seconds
                .checked_mul(1000)?
                .checked_add(i64::from(t.nanos) / 1_000_000)
        }),
        "local_date": e.local_date,
        "principal": e.principal,
        "on_hand_delta": e.on_hand_delta,
        "held_delta": e.held_delta,
        "on_hand_before": before(e.on_hand_after, e.on_hand_delta),
        "held_before": before(e.held_after, e.held_delta),
        "on_hand_after": e.on_hand_after,
        "held_after": e.held_after,
        "service_point_id": e.service_point_id,
        "reservation_id": e.reservation_id,
        "reference": e.reference,
        "counterpart_office_id": e.counterpart_office_id,
        "note": e.note,
        "masked_nik": e.masked_nik,
        "previous_hash": e.previous_hash,
        "hash": e.hash,
    })
}

/// The figure before an entry, from the figure after it and the change; null when they do not
/// fit in one (a broken entry is exported as it is, never a panic or a wrapped number).
fn before(after: u64, delta: i64) -> Option<i64> {
    i64::try_from(after).ok()?.checked_sub(delta)
}

/// A server whose next page does not move on (the same page token again, or entries that do not
/// follow the last one): the export stops rather than write the same entries for ever.
fn pages_stuck() -> crate::error::Failure {
    crate::error::Failure::local(
        "server mengulang halaman yang sama; ekspor dihentikan",
        "the server repeated a page; the export stopped",
    )
}

/// Runs `ledger` (export) or `ledger --verify`.
pub async fn run(term: &Terminal, out: Out, verify: bool) -> ExitCode {
    let office = match term.office() {
        Ok(o) => o.to_string(),
        Err(failure) => return failure.exit(&out),
    };
    if verify {
        return run_verify(term, out, office).await;
    }
    let mut page_token = String::new();
    let mut last_sequence: Option<u64> = None;
    let stdout = std::io::stdout();
    loop {
        let request = ListLedgerEntriesRequest {
            office_id: office.clone(),
            kind: 0,
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
        };
        let page = match term
            .conn
            .stock(|mut c| {
                let request = request.clone();
                async move { c.list_ledger_entries(request).await }
            })
            .await
        {
            Ok(page) => page,
            Err(error) => return crate::error::Failure::from(error).exit(&out),
        };
        let mut lock = stdout.lock();
        for e in &page.entries {
            // Chain order: every entry follows the last one written.
            if last_sequence.is_some_and(|last| e.sequence <= last) {
                drop(lock);
                return pages_stuck().exit(&out);
            }
            last_sequence = Some(e.sequence);
            if writeln!(lock, "{}", entry_json(e, out.zone)).is_err() {
                return ExitCode::from(EXIT_ERROR);
            }
        }
        drop(lock);
        if page.next_page_token.is_empty() {
            return ExitCode::from(EXIT_OK);
        }
        if page.next_page_token == page_token || page.entries.is_empty() {
            return pages_stuck().exit(&out);
        }
        page_token = page.next_page_token;
    }
}

async fn run_verify(term: &Terminal, out: Out, office: String) -> ExitCode {
    // Without an office: every office, a page of them per call.
    let mut intact = true;
    let mut page_token = String::new();
    loop {
        let request = VerifyLedgerRequest {
            office_id: office.clone(),
            page_token: page_token.clone(),
            ..Default::default()
        };
        let answer = match term
            .conn
            .stock(|mut c| {
                let request = request.clone();
                async move { c.verify_ledger(request).await }
            })
            .await
        {
            Ok(answer) => answer,
            Err(error) => return crate::error::Failure::from(error).exit(&out),
        };
        print_chains(&out, &answer.chains);
        intact &= answer.intact;
        if answer.next_page_token.is_empty() {
            break;
        }
        if answer.next_page_token == page_token || answer.chains.is_empty() {
            return pages_stuck().exit(&out);
        }
        page_token = answer.next_page_token;
    }
    if intact {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

fn print_chains(out: &Out, chains: &[blangko_proto::v1::LedgerChainVerification]) {
    for chain in chains {
        if out.json {
            out.json(&json!({
                "office_id": chain.office_id,
                "intact": chain.intact,
                "entries_checked": chain.entries_checked,
                "head_sequence": chain.head_sequence,
                "head_hash": chain.head_hash,
                "first_broken_sequence": chain.first_broken_sequence,
                "problem": chain.problem,
            }));
        } else if chain.intact {
            out.line(&format!(
                "{} {}: {} ({} {}, head {})",
                out.t("Buku besar kantor", "Ledger of office"),
                chain.office_id,
                out.t("utuh", "intact"),
                chain.entries_checked,
                out.t("entri", "entries"),
                chain.head_hash
            ));
        } else {
            out.line(&format!(
                "{} {}: {} {} — {}",
                out.t("Buku besar kantor", "Ledger of office"),
                chain.office_id,
                out.t("RUSAK mulai entri", "BROKEN at entry"),
                chain.first_broken_sequence,
                chain.problem
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_exported_with_the_milliseconds_its_hash_covers_or_null() {
        let mut e = LedgerEntry {
            recorded_at: Some(prost_types::Timestamp {
                seconds: 1_795_917_900,
                nanos: 123_000_000,
            }),
            local_date: "2026-11-29".into(),
            ..Default::default()
        };
        let v = entry_json(&e, Zone::Wib);
        assert_eq!(v["recorded_ms"], 1_795_917_900_123_i64);
        assert_eq!(v["local_date"], "2026-11-29");
        // A time no millisecond count can hold: null, never a panic or a wrapped number.
        e.recorded_at = Some(prost_types::Timestamp {
            seconds: i64::MAX / 100,
            nanos: 0,
        });
        assert_eq!(entry_json(&e, Zone::Wib)["recorded_ms"], Value::Null);
    }
}
