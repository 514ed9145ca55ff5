//! The metrics endpoint: `GET /metrics` on `--metrics-listen ADDR`, in the OpenMetrics text
//! format (which Prometheus scrapes natively). A separate plain-HTTP listener, so a scraper
//! needs no gRPC and no token: bind it to an address only the monitoring network reaches.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::gauges::{self, ProcessFigures};
use crate::engine::Engine;
use crate::overload::ConcurrencyBudget;

/// The OpenMetrics text content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest a scrape may take before it answers 503 (a scrape reads the database).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint reads.
#[derive(Clone)]
pub struct MetricsState {
    engine: Arc<Engine>,
    budget: Arc<ConcurrencyBudget>,
    /// One scrape at a time: several scrapers at once wait for each other instead of
    /// multiplying the database reads.
    scrape_lock: Arc<tokio::sync::Mutex<()>>,
}

impl MetricsState {
    /// The endpoint's view of the server.
    pub fn new(engine: Arc<Engine>, budget: Arc<ConcurrencyBudget>) -> Self {
        MetricsState {
            engine,
            budget,
            scrape_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The whole exposition text.
    pub async fn render(&self) -> anyhow::Result<String> {
        let _one_at_a_time = self.scrape_lock.lock().await;
        let mut registry = Registry::default();
        self.engine.metrics.register(&mut registry);
        if let Some(latency) = self.engine.store.wal_fsync_latency() {
            registry.register(
                "blangko_sqlite_wal_fsync_seconds",
                "Group fsyncs of SQLite's WAL (--sqlite-synchronous full) by how long they took; every acknowledged Reserve waits for one, so a slow or stalling disk shows here first",
                latency,
            );
        }
        let process = ProcessFigures {
            in_flight: self.budget.in_flight() as i64,
            max_in_flight: self.budget.max() as i64,
        };
        gauges::register(&self.engine, &process, &mut registry)
            .await
            .context("cannot read the stock figures")?;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .context("cannot encode the metrics")?;
        Ok(text)
    }
}

/// Binds the metrics listener (so a bad address fails the start, not later).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// Serves `/metrics` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    state: MetricsState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(err) = served {
        tracing::error!(%err, "the metrics endpoint stopped");
    }
}

async fn scrape(axum::extract::State(state): axum::extract::State<MetricsState>) -> Response {
    match tokio::time::timeout(SCRAPE_TIMEOUT, state.render()).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(err)) => {
            tracing::warn!(error = %format!("{err:#}"), "metrics scrape failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics unavailable: the database could not be read; see the server log\n",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics unavailable: the scrape took too long\n",
        )
            .into_response(),
    }
}
