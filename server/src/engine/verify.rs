//! Ledger verification: recompute every office's hash chain from the stored rows and report the
//! first entry that does not verify. What is checked, entry by entry, in chain order:
//! - the sequence runs 1, 2, 3, … without a gap;
//! - each entry links to the hash of the one before (the first to the genesis hash);
//! - each entry's stored hash is the hash of its content (`ledger::entry_hash`);
//! - the balances follow from the deltas (on_hand and held before = after − delta, and each
//!   entry's "before" is the previous entry's "after");
//!
//! and at the end, that the office row's head (sequence and hash) and its stock are the chain's.
//! A rewrite of a whole chain recomputes cleanly, so the head hashes the server publishes
//! (GetStock, the daily notice) are the outside anchor: given one, the chain must contain it.

use blangko_proto::v1::LedgerChainVerification;

use super::ledger::{self, GENESIS_HASH};
use super::{Engine, EngineError, EngineResult};
use crate::store::rows::{self, OfficeRow};

/// Entries read per query while verifying.
pub const VERIFY_PAGE: i64 = 1000;
/// Most offices' chains one call verifies when it asks for every office.
pub const MAX_VERIFY_OFFICES: u32 = 10;

impl Engine {
    /// Verifies `office_id`'s chain. `published_head_hash` must still be in the chain.
    pub async fn verify_ledger(
        &self,
        office_id: &str,
        published_head_hash: &str,
    ) -> EngineResult<LedgerChainVerification> {
        // One snapshot: the head read first and the entries paged after it.
        let mut tx = self.store.begin_read().await?;
        let conn: &mut sqlx::AnyConnection = &mut tx;
        let office =
            rows::office(conn, office_id, "")
                .await?
                .ok_or_else(|| EngineError::NotFound {
                    kind: "office",
                    id: office_id.to_string(),
                })?;
        verify_chain(conn, &office, published_head_hash).await
    }

    /// Verifies the chains of the next `limit` offices after `after` (by office id), and gives
    /// the token of the page after them (empty after the last office).
    pub async fn verify_ledgers_page(
        &self,
        after: &str,
        limit: u32,
    ) -> EngineResult<(Vec<LedgerChainVerification>, String)> {
        let mut tx = self.store.begin_read().await?;
        let conn: &mut sqlx::AnyConnection = &mut tx;
        let (offices, next) = rows::offices_page_and_next(conn, "", after, limit).await?;
        let mut reports = Vec::with_capacity(offices.len());
        for office in &offices {
            reports.push(verify_chain(conn, office, "").await?);
        }
        Ok((reports, next))
    }
}

async fn verify_chain(
    conn: &mut sqlx::AnyConnection,
    office: &OfficeRow,
    published_head_hash: &str,
) -> EngineResult<LedgerChainVerification> {
    let mut report = LedgerChainVerification {
        office_id: office.office_id.clone(),
        intact: true,
        head_sequence: office.ledger_seq.max(0) as u64,
        head_hash: office.ledger_head.clone(),
        ..Default::default()
    };
    let head_sequence = report.head_sequence;
    let mut previous_hash = GENESIS_HASH.to_string();
    let mut expected_seq: u64 = 1;
    // In i128: the rows read may have been edited to any value, and the sums must not wrap.
    let (mut on_hand, mut held) = (0i128, 0i128);
    let mut published_found = published_head_hash.is_empty();
    let mut after = 0i64;
    // The office row and the entries are read in one snapshot (`Store::begin_read`), so every
    // entry is at or before the office's head: one past it means the office row is behind its
    // ledger (restored from an older copy, say), and the office's next movement would collide
    // with that entry.
    'pages: loop {
        let page =
            ledger::entries_after(conn, &office.office_id, 0, after, i64::MAX, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.entry.sequence as i64;
        for stored in &page {
            let e = &stored.entry;
            if e.sequence > head_sequence {
                broken(
                    &mut report,
                    e.sequence,
                    format!(
                        "entry {} is past the office's head (entry {head_sequence}): the office row is behind its ledger",
                        e.sequence
                    ),
                );
                break 'pages;
            }
            report.entries_checked += 1;
            if e.sequence != expected_seq {
                broken(
                    &mut report,
                    expected_seq,
                    format!(
                        "entry {expected_seq} is missing (next stored: {})",
                        e.sequence
                    ),
                );
            }
            if e.previous_hash != previous_hash {
                broken(
                    &mut report,
                    e.sequence,
                    "its previous_hash is not the hash of the entry before it".into(),
                );
            }
            if ledger::entry_hash(e, stored.recorded_ms) != e.hash {
                broken(
                    &mut report,
                    e.sequence,
                    "its content does not match its hash (a field was changed)".into(),
                );
            }
            let on_hand_before = i128::from(e.on_hand_after) - i128::from(e.on_hand_delta);
            let held_before = i128::from(e.held_after) - i128::from(e.held_delta);
            if on_hand_before != on_hand || held_before != held {
                broken(
                    &mut report,
                    e.sequence,
                    format!(
                        "its balance before (on_hand {on_hand_before}, held {held_before}) is not the previous balance after (on_hand {on_hand}, held {held})"
                    ),
                );
            }
            if e.hash == published_head_hash {
                published_found = true;
            }
            on_hand = i128::from(e.on_hand_after);
            held = i128::from(e.held_after);
            previous_hash = e.hash.clone();
            expected_seq = e.sequence + 1;
        }
    }
    let end = expected_seq;
    if end - 1 != head_sequence {
        broken(
            &mut report,
            end,
            format!(
                "the chain ends at entry {} but the office's head is entry {}",
                end - 1,
                head_sequence
            ),
        );
    }
    if previous_hash != office.ledger_head {
        broken(
            &mut report,
            end,
            "the office's head hash is not the hash of the chain's last entry".into(),
        );
    }
    if on_hand != i128::from(office.on_hand) || held != i128::from(office.held) {
        broken(
            &mut report,
            end,
            format!(
                "the office's stock (on_hand {}, held {}) is not the chain's (on_hand {on_hand}, held {held})",
                office.on_hand, office.held
            ),
        );
    }
    if !published_found {
        broken(
            &mut report,
            1,
            "the published head hash is not in the chain: the chain was rewritten".into(),
        );
    }
    Ok(report)
}

/// Records the first problem of a chain (later ones follow from it and are not reported).
fn broken(report: &mut LedgerChainVerification, sequence: u64, problem: String) {
    if report.intact {
        report.intact = false;
        report.first_broken_sequence = sequence;
        report.problem = problem;
    }
}
