//! The metrics endpoint as an operator reads it: after a known sequence of reserves, refusals,
//! an IKD activation and a commit, every counter shows exactly what was done, the stock gauges
//! equal GetStock's and GetQuota's figures, the sweeper's expiries show up, and the text holds
//! no NIK, no token and no request id.

use std::sync::Arc;
use std::time::Duration;

use blangko_e2e::fixtures::{self, nik, reserve_request, rid};
use blangko_e2e::scrape::{count, value};
use blangko_e2e::{Backend, TestServer, on_each_backend};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use blangko_server::clock::ManualClock;

/// A Tuesday, 08:00 WIB.
const TUESDAY_8AM_WIB_MS: i64 = 1_796_086_800_000;
const RESERVE: &str = "/blangko.v1.CounterService/Reserve";

/// True when `text` holds a run of 16 digits (a NIK, whatever it is).
fn has_sixteen_digit_run(text: &str) -> bool {
    let mut run = 0;
    for b in text.bytes() {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 16 {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_was_done_and_gauges_match_the_api() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let backend = db.backend;
        let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
        let server = TestServer::start_with_clock(
            db,
            &["--metrics-listen", "127.0.0.1:0", "--sweep-interval-secs", "1"],
            Arc::new(clock.clone()),
        )
        .await?;
        let mut stock = server.stock_client().await?;
        let mut counter = server.counter_client().await?;
        // Kota Bekasi: quota 3 at the MPP, 10 blanks. Kabupaten Bandung: IKD first, quota 5.
        fixtures::office_with_point(&mut stock, "3275", "mpp", 3, 10).await?;
        fixtures::office(&mut stock, "3204", |o| o.ikd_first_required = true).await?;
        fixtures::service_point(&mut stock, "3204", "main", fixtures::fixed(5)).await?;
        fixtures::ship(&mut stock, "3204", 4).await?;

        // Three reserved, one replayed, two past the quota.
        let mut request_ids = Vec::new();
        let mut reservations = Vec::new();
        let mut sent = Vec::new();
        let first = reserve_request("3275", "mpp", 0);
        for n in 0..5 {
            let request = if n == 0 {
                first.clone()
            } else {
                reserve_request("3275", "mpp", n)
            };
            request_ids.push(request.request_id.clone());
            sent.push(request.clone());
            let answer = counter.reserve(request).await?.into_inner();
            match (n, answer.outcome) {
                (0..=2, Some(Outcome::Reservation(r))) => reservations.push(r),
                (3..=4, Some(Outcome::IkdReferral(r))) => {
                    assert_eq!(r.cause(), ReferralCause::QuotaExhausted)
                }
                (n, other) => anyhow::bail!("reserve {n}: unexpected {other:?}"),
            }
        }
        let replay = counter.reserve(first.clone()).await?.into_inner();
        assert!(
            matches!(replay.outcome, Some(Outcome::Reservation(ref r)) if r.replayed),
            "{replay:?}"
        );
        // A referral asked again with the same request id: the stored answer, counted once.
        let referral_again = counter.reserve(sent[3].clone()).await?.into_inner();
        assert!(
            matches!(referral_again.outcome, Some(Outcome::IkdReferral(ref r)) if r.replayed),
            "{referral_again:?}"
        );
        // IKD first: NOT_ACTIVE is referred; after the activation it is reserved.
        let ikd = |n: u32| ReserveRequest {
            ikd_status: IkdStatus::NotActive as i32,
            ..reserve_request("3204", "main", n)
        };
        let referred = counter.reserve(ikd(10)).await?.into_inner();
        assert!(
            matches!(referred.outcome, Some(Outcome::IkdReferral(ref r)) if r.cause() == ReferralCause::IkdRequired),
            "{referred:?}"
        );
        let activation = RecordIkdActivationRequest {
            request_id: rid(),
            office_id: "3204".into(),
            service_point_id: "main".into(),
            counter_id: "loket-1".into(),
            nik: nik(10),
        };
        let recorded = counter
            .record_ikd_activation(activation.clone())
            .await?
            .into_inner();
        assert!(!recorded.replayed);
        // The same activation retried: answered again, recorded (and counted) once.
        let again = counter
            .record_ikd_activation(activation)
            .await?
            .into_inner();
        assert!(again.replayed);
        let activated = counter.reserve(ikd(10)).await?.into_inner();
        assert!(matches!(
            activated.outcome,
            Some(Outcome::Reservation(_))
        ));
        // The first applicant again, elsewhere: FAILED_PRECONDITION.
        let elsewhere = counter
            .reserve(ReserveRequest {
                ikd_status: IkdStatus::Active as i32,
                ..reserve_request("3204", "main", 0)
            })
            .await
            .expect_err("a second blank elsewhere");
        assert_eq!(elsewhere.code(), tonic::Code::FailedPrecondition);
        // A bad NIK: INVALID_ARGUMENT.
        let bad = counter
            .reserve(ReserveRequest {
                nik: "12345".into(),
                ..reserve_request("3275", "mpp", 99)
            })
            .await
            .expect_err("a bad NIK");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        // One card printed.
        counter
            .commit_reservation(CommitReservationRequest {
                request_id: rid(),
                reservation_id: reservations[0].reservation_id.clone(),
            })
            .await?;

        let text = server.scrape_metrics().await?;
        let outcome = |o: &str| count(&text, "blangko_reservations_total", &[("outcome", o)]);
        assert_eq!(outcome("reserved"), 4.0, "{text}");
        assert_eq!(outcome("replayed"), 2.0);
        assert_eq!(outcome("quota_exhausted"), 2.0);
        assert_eq!(outcome("ikd_required"), 1.0);
        assert_eq!(outcome("already_reserved_elsewhere"), 1.0);
        assert_eq!(outcome("invalid"), 1.0);
        let cause = |c: &str| count(&text, "blangko_ikd_referrals_total", &[("cause", c)]);
        assert_eq!(cause("quota_exhausted"), 2.0);
        assert_eq!(cause("ikd_required"), 1.0);
        assert_eq!(cause("out_of_stock"), 0.0);
        assert_eq!(count(&text, "blangko_ikd_activations_total", &[]), 1.0);
        let rpc = |method: &str, code: &str| {
            count(
                &text,
                "blangko_rpc_requests_total",
                &[("method", method), ("code", code)],
            )
        };
        // 5 + 2 replays + 2 at Bandung answered OK; one FAILED_PRECONDITION; one INVALID_ARGUMENT.
        assert_eq!(rpc(RESERVE, "OK"), 9.0);
        assert_eq!(rpc(RESERVE, "FAILED_PRECONDITION"), 1.0);
        assert_eq!(rpc(RESERVE, "INVALID_ARGUMENT"), 1.0);
        assert_eq!(rpc("/blangko.v1.CounterService/CommitReservation", "OK"), 1.0);
        assert_eq!(
            value(
                &text,
                "blangko_rpc_latency_seconds_count",
                &[("method", RESERVE), ("code", "OK")]
            ),
            Some(9.0)
        );
        assert_eq!(count(&text, "blangko_load_shed_total", &[]), 0.0);
        // SQLite's group fsync: each of the first four reservations, made one after another,
        // waited for one of its own. PostgreSQL's COMMIT is durable by itself: no such metric.
        let fsyncs = value(&text, "blangko_sqlite_wal_fsync_seconds_count", &[]);
        match backend {
            Backend::Sqlite => assert!(fsyncs.is_some_and(|n| n >= 4.0), "{fsyncs:?}\n{text}"),
            Backend::Postgres => assert_eq!(fsyncs, None, "{text}"),
        }
        assert_eq!(
            value(&text, "blangko_requests_in_flight_limit", &[]),
            Some(1024.0)
        );
        assert!(
            value(&text, "blangko_db_pool_max_connections", &[]).is_some()
                || text.contains("blangko_db_pool_max_connections{pool=\"writer\"}"),
            "{text}"
        );

        // The gauges say what GetStock and GetQuota say.
        for (office, point) in [("3275", "mpp"), ("3204", "main")] {
            let level = stock
                .get_stock(GetStockRequest {
                    office_id: office.into(),
                })
                .await?
                .into_inner()
                .stock
                .expect("stock");
            let o = [("office", office)];
            assert_eq!(
                value(&text, "blangko_stock_on_hand", &o),
                Some(f64::from(level.on_hand))
            );
            assert_eq!(
                value(&text, "blangko_stock_held", &o),
                Some(f64::from(level.held))
            );
            assert_eq!(
                value(&text, "blangko_stock_available", &o),
                Some(f64::from(level.available))
            );
            assert_eq!(
                value(&text, "blangko_office_quota_remaining_today", &o),
                Some(f64::from(level.today_quota) - f64::from(level.today_used))
            );
            assert_eq!(
                value(&text, "blangko_office_days_of_cover", &o),
                level.has_days_of_cover.then_some(level.days_of_cover)
            );
            let quota = counter
                .get_quota(GetQuotaRequest {
                    office_id: office.into(),
                    service_point_id: point.into(),
                })
                .await?
                .into_inner()
                .quota
                .expect("quota");
            let p = [("office", office), ("service_point", point)];
            assert_eq!(
                value(&text, "blangko_service_point_quota_remaining_today", &p),
                Some(f64::from(quota.remaining))
            );
            assert_eq!(
                value(&text, "blangko_service_point_held_today", &p),
                Some(f64::from(quota.held))
            );
            assert_eq!(
                value(&text, "blangko_service_point_committed_today", &p),
                Some(f64::from(quota.committed))
            );
        }
        // Kota Bekasi in figures: 10 shipped, one printed, two held, quota used up.
        let bekasi = [("office", "3275")];
        assert_eq!(value(&text, "blangko_stock_on_hand", &bekasi), Some(9.0));
        assert_eq!(value(&text, "blangko_stock_held", &bekasi), Some(2.0));
        assert_eq!(value(&text, "blangko_stock_available", &bekasi), Some(7.0));
        assert_eq!(
            value(
                &text,
                "blangko_service_point_quota_remaining_today",
                &[("office", "3275"), ("service_point", "mpp")]
            ),
            Some(0.0)
        );

        // No NIK, no request id in the exposition: not the NIKs used, and no label value that
        // could be one (values themselves are numbers, whose digits may run long).
        for n in [0, 1, 2, 3, 4, 10, 99] {
            assert!(!text.contains(&nik(n)), "NIK {n} in metrics");
        }
        for sample in blangko_e2e::scrape::samples(&text) {
            for (key, label) in &sample.labels {
                assert!(!has_sixteen_digit_run(label), "{key}={label}");
            }
        }
        for id in &request_ids {
            assert!(!text.contains(id.as_str()), "request id {id} in metrics");
        }

        // Half an hour later the sweeper expires the three live holds (two at Bekasi, one at
        // Bandung), and the gauges follow.
        clock.advance_ms(31 * 60 * 1000);
        let mut expired = 0.0;
        for _ in 0..200 {
            let text = server.scrape_metrics().await?;
            expired = count(&text, "blangko_sweeper_holds_expired_total", &[]);
            if expired >= 3.0 {
                assert!(count(&text, "blangko_sweeper_runs_total", &[]) >= 1.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(expired, 3.0);
        let text = server.scrape_metrics().await?;
        assert_eq!(value(&text, "blangko_stock_held", &bekasi), Some(0.0));
        assert_eq!(value(&text, "blangko_stock_available", &bekasi), Some(9.0));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_unless_asked_for() -> anyhow::Result<()> {
    // The server process listens on its gRPC address alone; with --metrics-listen, on two.
    for (flags, listening) in [(&[][..], 1), (&["--metrics-listen", "127.0.0.1:0"][..], 2)] {
        let server =
            TestServer::spawn_process_on(blangko_e2e::TestDatabase::sqlite().await?, flags).await?;
        let pid = server.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        assert_eq!(listening_sockets(pid)?, listening, "{flags:?}");
    }
    Ok(())
}

/// How many TCP sockets the process `pid` holds in the LISTEN state (Linux: its descriptors
/// that are sockets, looked up in the kernel's TCP tables).
fn listening_sockets(pid: u32) -> anyhow::Result<usize> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed since the listing (a file the server opens for a moment) is gone.
        let target = match std::fs::read_link(fd?.path()) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut listening = 0;
    for table in ["tcp", "tcp6"] {
        // A kernel without IPv6 has no tcp6 table.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state (0A: LISTEN), field 9 the socket's inode.
            if fields.get(3) == Some(&"0A") && fields.get(9).is_some_and(|i| inodes.contains(*i)) {
                listening += 1;
            }
        }
    }
    Ok(listening)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_only_metrics() -> anyhow::Result<()> {
    let mut server = TestServer::start_on(
        blangko_e2e::TestDatabase::sqlite().await?,
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await?;
    let addr = server.metrics_addr.expect("metrics address");
    let err = blangko_e2e::scrape::get(addr, "/")
        .await
        .expect_err("only /metrics");
    assert!(err.to_string().contains("404"), "{err}");
    let text = server.scrape_metrics().await?;
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE blangko_rpc_requests counter"),
        "{text}"
    );
    // The endpoint stops with the server, which still shuts down cleanly.
    assert!(server.stop().await?, "a clean stop");
    assert!(blangko_e2e::scrape::get(addr, "/metrics").await.is_err());
    Ok(())
}
