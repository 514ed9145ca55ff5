//! Gauges computed at scrape time: stock, today's quota and days of cover per office and per
//! service point (read from the database with the very code GetStock and GetQuota run, so the
//! figures agree), watchers, calls in flight and database pools. Nothing here runs on the hot
//! path; a scrape reads at most [`MAX_EXPORTED_OFFICES`] offices and
//! [`MAX_EXPORTED_SERVICE_POINTS`] service points.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use sqlx::AnyConnection;

use crate::engine::{Engine, EngineResult};
use crate::store::rows;

/// Most offices exported per scrape: every regency and city of Indonesia (514) fits twice.
/// Past it the rest are left out and `blangko_metrics_truncated` says so.
pub const MAX_EXPORTED_OFFICES: usize = 1024;
/// Most service points exported per scrape (about eight per office at the office bound).
pub const MAX_EXPORTED_SERVICE_POINTS: usize = 8192;

/// Labels of per-office gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OfficeLabels {
    /// The office (Kemendagri regency/city code).
    pub office: String,
}

/// Labels of per-service-point gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PointLabels {
    /// The office.
    pub office: String,
    /// The service point.
    pub service_point: String,
}

/// Labels of database pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// `writer` and `reader` (SQLite), or `shared` (PostgreSQL: one pool for both).
    pub pool: &'static str,
}

type OfficeGauge = Family<OfficeLabels, Gauge>;
type PointGauge = Family<PointLabels, Gauge>;
type OfficeFloatGauge = Family<OfficeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// What the engine reports besides the database figures.
pub struct ProcessFigures {
    /// Calls in flight under the concurrency limit.
    pub in_flight: i64,
    /// The concurrency limit (--max-concurrent-requests).
    pub max_in_flight: i64,
}

/// Reads the figures and registers them as gauges in `registry`.
pub async fn register(
    engine: &Engine,
    process: &ProcessFigures,
    registry: &mut Registry,
) -> EngineResult<()> {
    // The journal's figures, then the counts Reserve batches keep in place, read without a fold
    // of the Reserve journal (see `Store::begin_read_without_fold`): a scrape during a burst
    // leaves the journal as it is.
    journal_figures(engine, registry);
    let on_hand = OfficeGauge::default();
    let held = OfficeGauge::default();
    let available = OfficeGauge::default();
    let office_quota = OfficeGauge::default();
    let office_remaining = OfficeGauge::default();
    let cover = OfficeFloatGauge::default();
    let point_quota = PointGauge::default();
    let point_held = PointGauge::default();
    let point_committed = PointGauge::default();
    let point_remaining = PointGauge::default();
    let truncated = Gauge::<i64>::default();

    let offices = {
        let mut conn = engine.store.reader_without_fold().acquire().await?;
        rows::offices_page(&mut conn, "", "", MAX_EXPORTED_OFFICES as i64 + 1).await?
    };
    if offices.len() > MAX_EXPORTED_OFFICES {
        truncated.set(1);
    }
    let mut points_left = MAX_EXPORTED_SERVICE_POINTS;
    for listed in offices.iter().take(MAX_EXPORTED_OFFICES) {
        // Each office in a read-only transaction of its own, its row read again inside it, so
        // that its gauges are of one moment (as GetStock's answer is); one office at a time, so
        // no snapshot is held for the whole scrape.
        let mut tx = engine.store.begin_read_without_fold().await?;
        let conn: &mut AnyConnection = &mut tx;
        let Some(office) = rows::office(conn, &listed.office_id, "").await? else {
            continue;
        };
        let office = &office;
        let level = engine.stock_level(conn, office).await?;
        let labels = OfficeLabels {
            office: office.office_id.clone(),
        };
        on_hand.get_or_create(&labels).set(i64::from(level.on_hand));
        held.get_or_create(&labels).set(i64::from(level.held));
        available
            .get_or_create(&labels)
            .set(i64::from(level.available));
        office_quota
            .get_or_create(&labels)
            .set(i64::from(level.today_quota));
        office_remaining
            .get_or_create(&labels)
            .set(i64::from(level.today_quota) - i64::from(level.today_used));
        if level.has_days_of_cover {
            cover.get_or_create(&labels).set(level.days_of_cover);
        }
        for sp in rows::service_points_of(conn, &office.office_id).await? {
            if points_left == 0 {
                truncated.set(1);
                break;
            }
            points_left -= 1;
            let snapshot = engine.quota_snapshot_of(conn, office, &sp).await?;
            let labels = PointLabels {
                office: office.office_id.clone(),
                service_point: sp.service_point_id.clone(),
            };
            point_quota
                .get_or_create(&labels)
                .set(i64::from(snapshot.quota));
            point_held
                .get_or_create(&labels)
                .set(i64::from(snapshot.held));
            point_committed
                .get_or_create(&labels)
                .set(i64::from(snapshot.committed));
            point_remaining
                .get_or_create(&labels)
                .set(i64::from(snapshot.remaining));
        }
        tx.commit().await?;
    }

    registry.register(
        "blangko_stock_on_hand",
        "Blanks physically at the office (held ones included), as GetStock reports",
        on_hand,
    );
    registry.register(
        "blangko_stock_held",
        "Blanks earmarked by live holds, as GetStock reports",
        held,
    );
    registry.register(
        "blangko_stock_available",
        "Blanks on hand and not held, as GetStock reports",
        available,
    );
    registry.register(
        "blangko_office_quota_today",
        "Today's quota summed over the office's service points, those not yet touched today included (GetStock today_quota)",
        office_quota,
    );
    registry.register(
        "blangko_office_quota_remaining_today",
        "Today's quota left over the office's service points (GetStock today_quota - today_used)",
        office_remaining,
    );
    registry.register(
        "blangko_office_days_of_cover",
        "Service days the stock on hand lasts at the mean use of the last 14 service days (absent without use)",
        cover,
    );
    registry.register(
        "blangko_service_point_quota_today",
        "Today's quota of the service point, as GetQuota reports",
        point_quota,
    );
    registry.register(
        "blangko_service_point_held_today",
        "Reservations held today at the service point",
        point_held,
    );
    registry.register(
        "blangko_service_point_committed_today",
        "Reservations committed (cards printed) today at the service point",
        point_committed,
    );
    registry.register(
        "blangko_service_point_quota_remaining_today",
        "Today's quota left at the service point, as GetQuota reports (remaining)",
        point_remaining,
    );
    registry.register(
        "blangko_metrics_truncated",
        "1 when offices or service points were left out of this scrape (past the export bounds)",
        truncated,
    );

    let watchers = Gauge::<i64>::default();
    watchers.set(engine.hub.watcher_count() as i64);
    registry.register(
        "blangko_watch_streams",
        "WatchQuota streams open now",
        watchers,
    );
    let in_flight = Gauge::<i64>::default();
    in_flight.set(process.in_flight);
    registry.register(
        "blangko_requests_in_flight",
        "Calls in flight under the concurrency limit",
        in_flight,
    );
    let limit = Gauge::<i64>::default();
    limit.set(process.max_in_flight);
    registry.register(
        "blangko_requests_in_flight_limit",
        "The concurrency limit (--max-concurrent-requests)",
        limit,
    );

    let size = Family::<PoolLabels, Gauge>::default();
    let idle = Family::<PoolLabels, Gauge>::default();
    let max = Family::<PoolLabels, Gauge>::default();
    for (pool, stats) in engine.store.pool_stats() {
        let labels = PoolLabels { pool };
        size.get_or_create(&labels).set(i64::from(stats.size));
        idle.get_or_create(&labels).set(stats.idle as i64);
        max.get_or_create(&labels).set(i64::from(stats.max));
    }
    registry.register(
        "blangko_db_pool_connections",
        "Open database connections in the pool (in use plus idle)",
        size,
    );
    registry.register(
        "blangko_db_pool_idle_connections",
        "Idle database connections in the pool",
        idle,
    );
    registry.register(
        "blangko_db_pool_max_connections",
        "Most connections the pool may open",
        max,
    );
    Ok(())
}

/// The Reserve journal's figures (SQLite; absent on PostgreSQL, which has no journal).
fn journal_figures(engine: &Engine, registry: &mut Registry) {
    let Some(direct) = engine.store.direct() else {
        return;
    };
    let journal = direct.journal();
    let pending = Gauge::<i64>::default();
    pending.set(i64::try_from(journal.pending()).unwrap_or(i64::MAX));
    registry.register(
        "blangko_reserve_journal_pending",
        "Reserves (reservations and IKD referrals) in the Reserve journal, not yet folded into their tables",
        pending,
    );
    for (name, help, value) in [
        (
            "blangko_reserve_journal_batches",
            "Reserve batches written as one journal row since the start",
            journal.journaled_batches(),
        ),
        (
            "blangko_reserve_journal_folded",
            "Reservations folded from the Reserve journal into their tables since the start",
            journal.folded(),
        ),
    ] {
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
}
