//! `blangko-counter announce`: the office's daily public stock notice, against a real server, in
//! Bahasa Indonesia, English and JSON, carrying the ledger's head hash that GetStock publishes.

use std::time::Duration;

use blangko_counter::serde_json::{self, Value};
use blangko_e2e::fixtures::{office_with_point, reserve_request};
use blangko_e2e::{TestServer, counter_bin};
use blangko_proto::v1::GetStockRequest;

async fn announce(server: &TestServer, extra: &[&str]) -> anyhow::Result<(i32, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(counter_bin())
            .args(["--server", &server.url, "--office", "3275"])
            .args(extra)
            .arg("announce")
            .output(),
    )
    .await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_notice_shows_the_stock_and_the_ledger_head_in_both_languages()
-> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 30, 500).await?;
    let mut counter = server.counter_client().await?;
    for n in 0..3 {
        counter.reserve(reserve_request("3275", "main", n)).await?;
    }
    let head = stock
        .get_stock(GetStockRequest {
            office_id: "3275".into(),
        })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default()
        .ledger_head_hash;
    assert_eq!(head.len(), 64);

    let (code, text) = announce(&server, &[]).await?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("PENGUMUMAN STOK BLANGKO KTP-EL"), "{text}");
    assert!(text.contains("Kantor 3275 (3275)"), "{text}");
    let field = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.rsplit(": ").next())
            .map(str::trim)
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert_eq!(field("Stok blangko di kantor"), "500");
    assert_eq!(field("  sedang dipesan pemohon"), "3");
    assert_eq!(field("  tersedia"), "497");
    assert!(text.contains("tidak dipungut biaya"));
    assert!(text.contains(&head), "the notice publishes the ledger head");

    let (code, english) = announce(&server, &["--lang", "en"]).await?;
    assert_eq!(code, 0);
    assert!(
        english.contains("PUBLIC NOTICE: BLANK e-KTP CARD STOCK"),
        "{english}"
    );
    assert!(english.contains(&head));

    let (code, json) = announce(&server, &["--json"]).await?;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(json.trim())?;
    assert_eq!(v["on_hand"], 500);
    assert_eq!(v["available"], 497);
    assert_eq!(v["ledger_head_hash"], head.as_str());
    Ok(())
}
