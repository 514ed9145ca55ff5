//! `announce`: the office's daily public notice of its blank stock, in Bahasa Indonesia (or
//! English). Offices must announce their stock daily (against extortion: nobody can claim there
//! are no blanks while the notice says there are). The notice carries the head hash of the
//! office's ledger chain, so a later rewrite of the chain is detectable by anyone who kept it.

use std::process::ExitCode;

use blangko_proto::v1::{GetStockRequest, StockLevel};
use serde_json::json;

use crate::error::EXIT_OK;
use crate::output::Out;
use crate::terminal::Terminal;

/// Runs `announce` for the office given with --office.
pub async fn run(term: &Terminal, out: Out) -> ExitCode {
    let office = match term.office() {
        Ok(o) => o.to_string(),
        Err(failure) => return failure.exit(&out),
    };
    let stock = match term
        .conn
        .stock(|mut c| {
            let office = office.clone();
            async move { c.get_stock(GetStockRequest { office_id: office }).await }
        })
        .await
    {
        // A public notice from an answer without its figures would announce zero blanks.
        Ok(answer) => match answer.stock {
            Some(stock) => stock,
            None => {
                return crate::error::Failure::local(
                    "server menjawab tanpa data stok; pengumuman tidak dibuat",
                    "the server answered without the stock; no notice was made",
                )
                .exit(&out);
            }
        },
        Err(error) => return crate::error::Failure::from(error).exit(&out),
    };
    if out.json {
        out.json(&json!({
            "notice": "daily_stock",
            "office_id": stock.office_id,
            "office_name": stock.office_name,
            "local_date": stock.local_date,
            "on_hand": stock.on_hand,
            "held": stock.held,
            "available": stock.available,
            "today_quota": stock.today_quota,
            "today_used": stock.today_used,
            "mean_daily_use": stock.mean_daily_use,
            "days_of_cover": stock.has_days_of_cover.then_some(stock.days_of_cover),
            "expected_next_supply_date": stock.expected_next_supply_date,
            "supply_overdue": stock.supply_overdue,
            "ledger_head_hash": stock.ledger_head_hash,
        }));
    } else {
        for line in notice_lines(&stock, &out) {
            out.line(&line);
        }
    }
    ExitCode::from(EXIT_OK)
}

/// The notice as printed lines.
pub fn notice_lines(s: &StockLevel, out: &Out) -> Vec<String> {
    let t = |id: &str, en: &str| out.t(id, en).to_string();
    let cover = if s.has_days_of_cover {
        format!(
            "{:.0} {}",
            s.days_of_cover.floor(),
            t("hari layanan", "service days")
        )
    } else {
        t(
            "belum dapat dihitung (belum ada pemakaian)",
            "not yet known (no use so far)",
        )
    };
    let supply = if s.expected_next_supply_date.is_empty() {
        t("belum diketahui", "not known yet")
    } else {
        s.expected_next_supply_date.clone()
    };
    vec![
        t(
            "PENGUMUMAN STOK BLANGKO KTP-EL",
            "PUBLIC NOTICE: BLANK e-KTP CARD STOCK",
        ),
        format!(
            "{} {} ({})",
            t(
                "Dinas Kependudukan dan Pencatatan Sipil",
                "Civil Registry Office"
            ),
            s.office_name,
            s.office_id
        ),
        // The office's own local date (the server's, in the office's time zone), whatever
        // zone this terminal shows times in.
        format!(
            "{}: {} ({})",
            t("Tanggal", "Date"),
            s.local_date,
            t("waktu setempat kantor", "office local time")
        ),
        String::new(),
        format!(
            "{:<34}: {}",
            t("Stok blangko di kantor", "Blanks at the office"),
            s.on_hand
        ),
        format!(
            "{:<34}: {}",
            t("  sedang dipesan pemohon", "  held for applicants"),
            s.held
        ),
        format!("{:<34}: {}", t("  tersedia", "  available"), s.available),
        format!(
            "{:<34}: {} ({} {})",
            t(
                "Kuota hari ini (semua loket)",
                "Today's quota (all counters)"
            ),
            s.today_quota,
            t("terpakai", "used"),
            s.today_used
        ),
        format!(
            "{:<34}: {:.1}",
            t("Rata-rata pemakaian per hari", "Mean use per service day"),
            s.mean_daily_use
        ),
        format!(
            "{:<34}: {}",
            t("Perkiraan stok cukup untuk", "Stock expected to last"),
            cover
        ),
        format!("{:<34}: {}", t("Pasokan berikutnya", "Next supply"), supply),
        String::new(),
        t(
            "Pelayanan KTP-el tidak dipungut biaya. Bila kuota hari ini habis, silakan aktivasi IKD (Identitas Kependudukan Digital) di loket.",
            "e-KTP services are free of charge. When today's quota is used up, please activate IKD (the digital ID) at the counter.",
        ),
        format!(
            "{}: {}",
            t(
                "Kode verifikasi buku stok (SHA-256)",
                "Stock ledger verification code (SHA-256)"
            ),
            s.ledger_head_hash
        ),
    ]
}
