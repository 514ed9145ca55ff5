//! Request ids and the per-call log: a caller's `x-request-id` comes back in the answer's
//! metadata (on errors too) and names the call's log line, with its method, office, service
//! point and status; a call without one (or with an unusable one) gets an id from the server.
//! The server is the real binary, logging JSON lines to the file the harness keeps.

use std::time::Duration;

use blangko_e2e::TestServer;
use blangko_e2e::fixtures::{self, nik, office_with_point, reserve_request};
use blangko_proto::v1::*;

const REQUEST_ID: &str = "x-request-id";

/// The JSON log lines of the server that mention `needle`, waiting (bounded) until one does:
/// a call's line is written when its answer's last frame is sent.
async fn log_lines_with(
    server: &TestServer,
    needle: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    for _ in 0..100 {
        let lines: Vec<serde_json::Value> = server
            .log()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !lines.is_empty() {
            return Ok(lines);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no log line mentions {needle}:\n{}", server.log())
}

/// The `rpc` span fields of a JSON log line (the span the line was written in).
fn rpc_span(line: &serde_json::Value) -> Option<&serde_json::Value> {
    line.get("span").filter(|s| s["name"] == "rpc")
}

fn with_id<T>(message: T, id: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(REQUEST_ID, id.parse()?);
    Ok(request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_and_names_the_log_line() -> anyhow::Result<()> {
    // Every call logged: successes are DEBUG lines of target blangko_server::rpc.
    let server = TestServer::spawn_process(&[
        "--log-format",
        "json",
        "--log",
        "info,blangko_server::rpc=debug",
    ])
    .await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", 5, 10).await?;
    let mut counter = server.counter_client().await?;

    // The caller's id comes back and names the log line of its call.
    let answer = counter
        .reserve(with_id(reserve_request("3275", "mpp", 1), "abc-123")?)
        .await?;
    assert_eq!(
        answer
            .metadata()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
        Some("abc-123")
    );
    let lines = log_lines_with(&server, "abc-123").await?;
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "rpc finished")
        .ok_or_else(|| anyhow::anyhow!("no 'rpc finished' line: {lines:?}"))?;
    let span = rpc_span(finished).ok_or_else(|| anyhow::anyhow!("no rpc span: {finished}"))?;
    assert_eq!(span["request_id"], "abc-123");
    assert_eq!(span["method"], "/blangko.v1.CounterService/Reserve");
    assert_eq!(span["office"], "3275");
    assert_eq!(span["service_point"], "mpp");
    assert_eq!(span["outcome"], "reserved");
    assert_eq!(finished["fields"]["code"], "OK");
    assert!(
        finished["fields"]["latency_ms"].as_f64().is_some(),
        "{finished}"
    );

    // On an error too: the id comes back in the status's metadata, and the line says NOT_FOUND.
    let status = counter
        .get_quota(with_id(
            GetQuotaRequest {
                office_id: "3204".into(),
                service_point_id: "main".into(),
            },
            "err-456",
        )?)
        .await
        .expect_err("an unknown office");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        status
            .metadata()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
        Some("err-456")
    );
    let lines = log_lines_with(&server, "err-456").await?;
    assert!(
        lines.iter().any(|l| l["fields"]["code"] == "NOT_FOUND"
            && rpc_span(l).is_some_and(|s| s["method"] == "/blangko.v1.CounterService/GetQuota")),
        "{lines:?}"
    );

    // Without an id, the server makes one and sends it back; it names the log line as well.
    let answer = counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
        })
        .await?;
    let generated = answer
        .metadata()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(generated.starts_with("srv-"), "{generated:?}");
    log_lines_with(&server, &generated).await?;

    // An unusable id (too long, or a NIK) is replaced, never echoed nor logged.
    for bad in ["x".repeat(200), format!("id-{}", nik(7))] {
        let answer = counter
            .get_quota(with_id(
                GetQuotaRequest {
                    office_id: "3275".into(),
                    service_point_id: "mpp".into(),
                },
                &bad,
            )?)
            .await?;
        let echoed = answer
            .metadata()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(echoed.starts_with("srv-"), "{bad} → {echoed}");
        log_lines_with(&server, &echoed).await?;
        assert!(!server.log().contains(bad.as_str()));
    }
    assert!(!server.log().contains(&nik(1)), "a NIK in the log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_level_failed_calls_are_logged_as_text() -> anyhow::Result<()> {
    let server = TestServer::spawn_process(&[]).await?;
    let mut stock = server.stock_client().await?;
    fixtures::office(&mut stock, "3275", |_| {}).await?;
    stock
        .get_stock(with_id(
            GetStockRequest {
                office_id: "3275".into(),
            },
            "text-ok",
        )?)
        .await?;
    let status = stock
        .get_stock(with_id(
            GetStockRequest {
                office_id: "3204".into(),
            },
            "text-789",
        )?)
        .await
        .expect_err("an unknown office");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let mut line = None;
    for _ in 0..100 {
        line = server
            .log()
            .lines()
            .find(|l| l.contains("text-789") && l.contains("rpc finished"))
            .map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = line.ok_or_else(|| anyhow::anyhow!("no line:\n{}", server.log()))?;
    assert!(line.contains("/blangko.v1.StockService/GetStock"), "{line}");
    assert!(line.contains("office=\"3204\""), "{line}");
    assert!(line.contains("code=\"NOT_FOUND\""), "{line}");
    // A successful call is a DEBUG line, not written at the default level.
    assert!(!server.log().contains("text-ok"), "{}", server.log());
    Ok(())
}
