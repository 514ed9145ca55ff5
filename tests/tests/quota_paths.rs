//! SQLite answers GetQuota on read connections of the server's own (`store::direct::Reads`),
//! also for a service point whose quota row for today does not exist yet (it computes what the
//! row would be, as the general path does), and sends an unknown office or service point to the
//! general path, which answers NOT_FOUND. An operator sees which in `blangko_quota_reads`. The
//! snapshots are the same either way: the same morning on PostgreSQL, where every read takes the
//! general path, shows the same figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use blangko_e2e::fixtures::{self, reserve_request};
use blangko_e2e::postgres::skip_postgres;
use blangko_e2e::scrape::count;
use blangko_e2e::{Backend, TestDatabase, TestServer, on_each_backend};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use blangko_server::clock::ManualClock;

/// Tuesday 2026-12-01 08:00 WIB.
const TUESDAY_8AM_WIB_MS: i64 = 1_796_086_800_000;

/// The quota snapshots read so far on each path (direct, general), as the metrics show them.
async fn reads(server: &TestServer) -> anyhow::Result<(f64, f64)> {
    let text = server.scrape_metrics().await?;
    let on = |path| count(&text, "blangko_quota_reads_total", &[("path", path)]);
    Ok((on("direct"), on("general")))
}

fn paced(weight: u32) -> QuotaPolicy {
    QuotaPolicy {
        mode: QuotaMode::Paced as i32,
        weight,
        ..QuotaPolicy::default()
    }
}

/// One office's morning: two PACED service points (weights 3 and 2) and a FIXED one, 500 blanks
/// until the supply of 8 December; GetQuota for each before any Reserve, then a queue report and
/// three Reserves, then GetQuota again. Returns the server and the six GetQuota snapshots.
async fn morning(db: Arc<TestDatabase>) -> anyhow::Result<(TestServer, Vec<QuotaSnapshot>)> {
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server = TestServer::start_with_clock(
        db,
        &["--metrics-listen", "127.0.0.1:0"],
        Arc::new(clock.clone()),
    )
    .await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    fixtures::office(&mut stock, "3275", |o| {
        o.expected_next_supply_date = "2026-12-08".into()
    })
    .await?;
    fixtures::service_point(&mut stock, "3275", "utara", paced(3)).await?;
    fixtures::service_point(&mut stock, "3275", "timur", paced(2)).await?;
    fixtures::service_point(&mut stock, "3275", "mpp", fixtures::fixed(4)).await?;
    fixtures::ship(&mut stock, "3275", 500).await?;

    let points = ["utara", "timur", "mpp"];
    let mut snapshots = Vec::new();
    for point in points {
        snapshots.push(fixtures::quota_snapshot(&mut counter, "3275", point).await?);
    }
    counter
        .report_queue(fixtures::queue_report("3275", "mpp", 6))
        .await?;
    for (point, n) in [("mpp", 1), ("mpp", 2), ("utara", 3)] {
        let outcome = counter
            .reserve(reserve_request("3275", point, n))
            .await?
            .into_inner()
            .outcome;
        anyhow::ensure!(
            matches!(outcome, Some(Outcome::Reservation(_))),
            "{outcome:?}"
        );
    }
    for point in points {
        snapshots.push(fixtures::quota_snapshot(&mut counter, "3275", point).await?);
    }
    Ok((server, snapshots))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_quota_reads_on_its_own_connections_with_the_figures_of_the_general_path()
-> anyhow::Result<()> {
    let (server, snapshots) = morning(TestDatabase::sqlite().await?).await?;
    // Every snapshot, before the day's rows existed and after, on the read connections: the six
    // GetQuota calls and the one ReportQueue answered with.
    assert_eq!(reads(&server).await?, (7.0, 0.0));

    // 500 blanks over the 7 service days before the supply (the points serve every day), shared
    // 3:2, and the FIXED 4.
    let quotas: Vec<u32> = snapshots.iter().map(|s| s.quota).collect();
    assert_eq!(quotas, [500 * 3 / 5 / 7, 500 * 2 / 5 / 7, 4, 42, 28, 4]);
    let mpp = &snapshots[5];
    assert_eq!((mpp.held, mpp.remaining, mpp.waiting), (2, 2, 6));
    assert_eq!(mpp.office_used_today, 3);
    assert_eq!(mpp.available, 497);
    assert_eq!(snapshots[3].held, 1, "utara");
    assert_eq!(snapshots[4].held, 0, "timur");
    assert!(snapshots.iter().all(|s| s.local_date == "2026-12-01"));

    // Unknown office or service point: NOT_FOUND, from the general path.
    let mut counter = server.counter_client().await?;
    for (office, point) in [("3276", "mpp"), ("3275", "nowhere")] {
        let status = counter
            .get_quota(GetQuotaRequest {
                office_id: office.into(),
                service_point_id: point.into(),
            })
            .await
            .expect_err("unknown");
        assert_eq!(status.code(), tonic::Code::NotFound, "{office}/{point}");
    }
    assert_eq!(reads(&server).await?, (7.0, 2.0));

    // The same morning on PostgreSQL: the general path, the same snapshots.
    if !skip_postgres() {
        let (pg_server, pg_snapshots) =
            morning(TestDatabase::new(Backend::Postgres).await?).await?;
        assert_eq!(reads(&pg_server).await?, (0.0, 7.0));
        assert_eq!(pg_snapshots, snapshots);
    }
    Ok(())
}

/// Runs `read` (with its round number) until `done`, collecting what it read and counting its
/// finished rounds in `rounds`. Bounded by time, not by a count of rounds: quick rounds on a
/// machine whose fsyncs are slow could use up any count before the Reserves beside them end.
async fn read_until<T, F, Fut>(
    done: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    mut read: F,
) -> anyhow::Result<Vec<T>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<T>>>,
{
    let mut all = Vec::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    for round in 0.. {
        if done.load(Ordering::SeqCst) || tokio::time::Instant::now() >= until {
            break;
        }
        all.extend(read(round).await?);
        rounds.fetch_add(1, Ordering::SeqCst);
    }
    Ok(all)
}

/// Waits until each reader has finished two more rounds than now: the second began after this
/// call. Bounded (30 s).
async fn two_more_rounds_of(readers: &[Arc<AtomicUsize>]) -> anyhow::Result<()> {
    let from: Vec<usize> = readers.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    for _ in 0..3_000 {
        if readers
            .iter()
            .zip(&from)
            .all(|(r, from)| r.load(Ordering::SeqCst) >= from + 2)
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("the readers did not read while the Reserves paused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_read_during_a_storm_of_reserves_are_each_one_moment() -> anyhow::Result<()> {
    // Two service points of one office, Reserves at both while GetQuota, GetStock, ListStock
    // and the metrics endpoint read: each
    // answer combines rows read in one transaction (SQLite's read connections, or the general
    // path's read-only transaction on PostgreSQL), so its figures are of one moment. Before,
    // GetQuota read the office row and the office's use in separate statements, and under load
    // `available` and `office_used_today` disagreed.
    on_each_backend(|db| async move {
        let backend = db.backend;
        let server = Arc::new(
            TestServer::start_with_clock(
                db,
                &["--metrics-listen", "127.0.0.1:0"],
                Arc::new(ManualClock::at(TUESDAY_8AM_WIB_MS)),
            )
            .await?,
        );
        let mut stock = server.stock_client().await?;
        fixtures::office_with_point(&mut stock, "3275", "mpp", 120, 1000).await?;
        fixtures::service_point(&mut stock, "3275", "kec", fixtures::fixed(120)).await?;
        let counter = server.counter_client().await?;

        let done = Arc::new(AtomicBool::new(false));
        let rounds: [Arc<AtomicUsize>; 3] = Default::default();
        // Half-way (90 of 180 Reserves), the workers wait until every reader has read then:
        // whatever the machine's speed, some answers are of the storm's middle, not its end.
        let half_way = Arc::new(tokio::sync::Barrier::new(6));
        let go_on = Arc::new(tokio::sync::Barrier::new(6));
        let mut reserving = Vec::new();
        for worker in 0..6u32 {
            let mut counter = counter.clone();
            let (half_way, go_on, readers) =
                (Arc::clone(&half_way), Arc::clone(&go_on), rounds.clone());
            reserving.push(tokio::spawn(async move {
                for i in 0..30u32 {
                    if i == 15 {
                        // Bounded waits: a worker that failed before the middle never comes,
                        // and the others must fail, not wait for it for ever.
                        let bound = std::time::Duration::from_secs(120);
                        let arrived = tokio::time::timeout(bound, half_way.wait())
                            .await
                            .map_err(|_| anyhow::anyhow!("a worker never reached the middle"))?;
                        let read = if arrived.is_leader() {
                            two_more_rounds_of(&readers).await
                        } else {
                            Ok(())
                        };
                        // Every worker goes on, the leader too when the readers failed.
                        tokio::time::timeout(bound, go_on.wait())
                            .await
                            .map_err(|_| anyhow::anyhow!("a worker never went on"))?;
                        read?;
                    }
                    let point = if i % 2 == 0 { "mpp" } else { "kec" };
                    let request = reserve_request("3275", point, worker * 100 + i);
                    counter.reserve(request).await?;
                }
                anyhow::Ok(())
            }));
        }
        let quota_reader = {
            let counter = counter.clone();
            tokio::spawn(read_until(
                Arc::clone(&done),
                Arc::clone(&rounds[0]),
                move |_| {
                    let mut counter = counter.clone();
                    async move {
                        Ok(vec![
                            fixtures::quota_snapshot(&mut counter, "3275", "mpp").await?,
                        ])
                    }
                },
            ))
        };
        let stock_reader = {
            let stock = stock.clone();
            tokio::spawn(read_until(
                Arc::clone(&done),
                Arc::clone(&rounds[1]),
                move |i| {
                    let mut stock = stock.clone();
                    async move {
                        if i % 2 == 0 {
                            Ok(vec![fixtures::stock_level(&mut stock, "3275").await?])
                        } else {
                            // ListStock: the same level, for agencies reading across offices.
                            let page = stock.list_stock(ListStockRequest::default()).await?;
                            Ok(page.into_inner().stocks)
                        }
                    }
                },
            ))
        };
        let metrics_reader = {
            let server = Arc::clone(&server);
            tokio::spawn(read_until(
                Arc::clone(&done),
                Arc::clone(&rounds[2]),
                move |_| {
                    let server = Arc::clone(&server);
                    async move { Ok(vec![server.scrape_metrics().await?]) }
                },
            ))
        };
        for task in reserving {
            task.await??;
        }
        done.store(true, Ordering::SeqCst);

        let snapshots = quota_reader.await??;
        assert!(
            snapshots.iter().any(|s| s.office_used_today == 90),
            "no snapshot was read half-way: {snapshots:?}"
        );
        for s in &snapshots {
            let used = s.held + s.committed;
            assert!(used <= s.quota, "{s:?}");
            assert_eq!(s.remaining, s.quota - used, "{s:?}");
            assert!(s.office_used_today >= used, "{s:?}");
            // Nothing was committed: every blank in use today is held, and held is what the
            // office row takes off its stock.
            assert_eq!(s.available, 1000 - s.office_used_today, "{s:?}");
        }
        let levels = stock_reader.await??;
        assert!(
            levels.iter().any(|l| l.today_used == 90),
            "no stock level was read half-way: {levels:?}"
        );
        for l in &levels {
            assert_eq!(l.today_used, l.held, "{l:?}");
            assert_eq!(l.available, l.on_hand - l.held, "{l:?}");
        }

        // The gauges of a scrape: the office's held blanks are its service points' holds.
        let scrapes = metrics_reader.await??;
        assert!(
            scrapes
                .iter()
                .any(|text| count(text, "blangko_stock_held", &[("office", "3275")]) == 90.0),
            "no scrape half-way"
        );
        for text in &scrapes {
            let office = [("office", "3275")];
            let held = count(text, "blangko_stock_held", &office);
            let points: f64 = ["mpp", "kec"]
                .iter()
                .map(|p| {
                    let labels = [("office", "3275"), ("service_point", *p)];
                    count(text, "blangko_service_point_held_today", &labels)
                })
                .sum();
            assert_eq!(held, points, "a scrape mixed two moments");
            assert_eq!(
                count(text, "blangko_stock_available", &office),
                1000.0 - held
            );
        }

        let last = fixtures::quota_snapshot(&mut counter.clone(), "3275", "mpp").await?;
        assert_eq!((last.held, last.office_used_today), (90, 180));
        let (direct, general) = reads(&server).await?;
        let read = snapshots.len() as f64 + 1.0;
        match backend {
            Backend::Sqlite => assert_eq!((direct, general), (read, 0.0)),
            Backend::Postgres => assert_eq!((direct, general), (0.0, read)),
        }
        Ok(())
    })
    .await
}
