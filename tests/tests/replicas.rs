//! Several stateless server processes over one PostgreSQL database: the database transaction is
//! the only arbiter, so the quota stays exact across replicas; a replica killed mid-burst loses
//! nothing acknowledged; watchers see changes made through other replicas (LISTEN/NOTIFY).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blangko_e2e::fixtures::{self, office_with_point, reserve_request};
use blangko_e2e::postgres::skip_postgres;
use blangko_e2e::{Backend, TestDatabase, TestServer};
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_types::StatusExt;

async fn three_replicas() -> anyhow::Result<Option<(Arc<TestDatabase>, Vec<TestServer>)>> {
    if skip_postgres() {
        eprintln!("BLANGKO_SKIP_POSTGRES=1: multi-replica test skipped");
        return Ok(None);
    }
    let db = TestDatabase::new(Backend::Postgres).await?;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers
            .push(TestServer::spawn_process_on(db.clone(), &["--db-max-connections", "24"]).await?);
    }
    Ok(Some((db, servers)))
}

async fn clients(
    servers: &[TestServer],
    per_server: usize,
) -> anyhow::Result<Vec<CounterServiceClient<Channel>>> {
    let mut out = Vec::new();
    for server in servers {
        for _ in 0..per_server {
            out.push(server.counter_client().await?);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nine_hundred_reserves_over_three_replicas_get_exactly_211() -> anyhow::Result<()> {
    let Some((_db, servers)) = three_replicas().await? else {
        return Ok(());
    };
    let mut stock = servers[0].stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 211, 5000).await?;
    let pool = clients(&servers, 3).await?;
    let mut tasks = Vec::new();
    for n in 0..900u32 {
        let mut client = pool[n as usize % pool.len()].clone();
        tasks.push(tokio::spawn(async move {
            client.reserve(reserve_request("3275", "main", n)).await
        }));
    }
    let mut ids = HashSet::new();
    let mut referred = 0;
    for task in tasks {
        match task.await??.into_inner().outcome {
            Some(Outcome::Reservation(r)) => {
                ids.insert(r.reservation_id);
            }
            Some(Outcome::IkdReferral(_)) => referred += 1,
            None => anyhow::bail!("no outcome"),
        }
    }
    assert_eq!((ids.len(), referred), (211, 689));

    // The same NIK sent to all three replicas at once: one reservation.
    office_with_point(&mut stock, "3204", "main", 10, 100).await?;
    let mut tasks = Vec::new();
    for i in 0..30usize {
        let mut client = pool[i % pool.len()].clone();
        tasks.push(tokio::spawn(async move {
            client.reserve(reserve_request("3204", "main", 6000)).await
        }));
    }
    let mut same = HashSet::new();
    for task in tasks {
        match task.await??.into_inner().outcome {
            Some(Outcome::Reservation(r)) => {
                same.insert(r.reservation_id);
            }
            other => anyhow::bail!("expected the one reservation, got {other:?}"),
        }
    }
    assert_eq!(same.len(), 1, "one person, one blank, across replicas");
    let s = stock
        .get_stock(GetStockRequest {
            office_id: "3204".into(),
        })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default();
    assert_eq!(s.held, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_replica_mid_burst_loses_nothing_and_the_others_keep_serving()
-> anyhow::Result<()> {
    let Some((_db, mut servers)) = three_replicas().await? else {
        return Ok(());
    };
    let mut stock = servers[0].stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 150, 5000).await?;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for (w, server) in servers.iter().enumerate() {
        for k in 0..3u32 {
            let mut client = server.counter_client().await?;
            let acked = acked.clone();
            let base = (w as u32 * 3 + k) * 100;
            workers.push(tokio::spawn(async move {
                // The failed calls, up to the fourth (then this counter gives up). UNAVAILABLE
                // with the server's RetryInfo (a lost race, a lock wait past its bound) is sent
                // again with the same request_id, as the counter client does, a few times.
                let mut errors = Vec::new();
                for i in 0..100u32 {
                    let request = reserve_request("3275", "main", base + i);
                    let mut tries = 0;
                    let answer = loop {
                        match client.reserve(request.clone()).await {
                            Err(status)
                                if status.code() == tonic::Code::Unavailable
                                    && status.get_details_retry_info().is_some()
                                    && tries < 5 =>
                            {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            other => break other,
                        }
                    };
                    match answer {
                        Ok(answer) => {
                            if let Some(Outcome::Reservation(r)) = answer.into_inner().outcome
                                && let Ok(mut a) = acked.lock()
                            {
                                a.insert(r.reservation_id);
                            }
                        }
                        Err(status) => {
                            errors.push(status);
                            if errors.len() > 3 {
                                break;
                            }
                        }
                    }
                }
                errors
            }));
        }
    }
    // Kill replica 2 once the burst is under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().map(|a| a.len()).unwrap_or(0) < 30 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        acked.lock().map(|a| a.len()).unwrap_or(0) >= 30,
        "the burst was under way when replica 2 was killed"
    );
    assert!(
        workers[6..].iter().any(|w| !w.is_finished()),
        "replica 2's counters were still calling when it was killed"
    );
    servers[2].kill();
    servers[2].wait_killed().await;
    for (n, w) in workers.into_iter().enumerate() {
        let errors = w.await?;
        // Counters 0–5 call replicas 0 and 1, which were never touched.
        if n < 6 {
            assert!(errors.is_empty(), "counter {n} failed: {errors:?}");
        }
    }
    // The surviving replicas still serve and agree on every acknowledged reservation.
    let mut counter = servers[1].counter_client().await?;
    let found: HashSet<String> = fixtures::all_reservations(&mut counter, "3275")
        .await?
        .into_iter()
        .map(|r| r.reservation_id)
        .collect();
    let acked = acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert!(
        acked.is_subset(&found),
        "an acknowledged reservation is missing"
    );
    let q = counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "main".into(),
        })
        .await?
        .into_inner()
        .quota
        .unwrap_or_default();
    assert!(q.held + q.committed <= 150, "quota exceeded: {q:?}");
    assert_eq!(q.held as usize, found.len(), "counters agree with the rows");
    // 600 applicants through replicas 0 and 1 alone used up the quota of 150: a fresh Reserve
    // through replica 0 is decided, and referred to IKD for that.
    assert_eq!(q.held, 150, "{q:?}");
    let after = servers[0]
        .counter_client()
        .await?
        .reserve(reserve_request("3275", "main", 9999))
        .await?
        .into_inner();
    match after.outcome {
        Some(Outcome::IkdReferral(referral)) => {
            assert_eq!(referral.cause(), ReferralCause::QuotaExhausted);
        }
        other => anyhow::bail!("expected an IKD referral (quota used up), got {other:?}"),
    }
    Ok(())
}

/// Whether a watch stream shows `held` holds within `limit`.
async fn watch_until_held(
    watch: &mut tonic::Streaming<WatchQuotaResponse>,
    held: u32,
    limit: Duration,
) -> bool {
    tokio::time::timeout(limit, async {
        while let Some(Ok(s)) = watch.next().await {
            if s.quota.unwrap_or_default().held == held {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_one_replica_sees_reserves_made_through_another() -> anyhow::Result<()> {
    let Some((_db, servers)) = three_replicas().await? else {
        return Ok(());
    };
    let mut stock = servers[0].stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 20, 100).await?;
    let mut watch =
        fixtures::watch_quota(&mut servers[0].counter_client().await?, "3275", "main").await?;
    let first = watch
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))??;
    assert_eq!(first.quota.unwrap_or_default().held, 0);
    let mut counter_b = servers[1].counter_client().await?;
    for n in 0..3 {
        counter_b
            .reserve(reserve_request("3275", "main", n))
            .await?;
    }
    let seen = watch_until_held(&mut watch, 3, Duration::from_secs(10)).await;
    assert!(
        seen,
        "replica A's watcher never saw replica B's three holds"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_still_sees_other_replicas_after_its_listener_connection_silently_dies()
-> anyhow::Result<()> {
    if skip_postgres() {
        return Ok(());
    }
    let db = TestDatabase::new(Backend::Postgres).await?;
    // postgres://user@host:port/name: replica A reaches the same database through a proxy.
    let Some((target, via_proxy)) = (|| {
        let rest = db.url.split_once('@')?.1;
        let authority = rest.split_once('/')?.0;
        Some((authority.to_string(), rest.to_string()))
    })() else {
        return blangko_e2e::skipped(&format!("a database URL without host:port ({})", db.url));
    };
    let proxy = blangko_e2e::proxy::FreezingProxy::start(target.clone(), b"LISTEN").await?;
    let proxied = db.url.replace(
        &via_proxy,
        &via_proxy.replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1),
    );
    let a =
        TestServer::spawn_process_via(db.clone(), &proxied, &["--change-listener-probe-secs", "1"])
            .await?;
    let b = TestServer::spawn_process_on(db.clone(), &[]).await?;
    office_with_point(&mut b.stock_client().await?, "3275", "main", 20, 100).await?;
    let mut watch = fixtures::watch_quota(&mut a.counter_client().await?, "3275", "main").await?;
    let first = watch
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))??;
    assert_eq!(first.quota.unwrap_or_default().held, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.marked() == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "replica A's change listener never connected through the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The listener's connection goes silent, as when the database host loses power: no close,
    // no error, nothing.
    assert_eq!(proxy.freeze_marked(), 1);
    let mut counter_b = b.counter_client().await?;
    for n in 0..2 {
        counter_b
            .reserve(reserve_request("3275", "main", n))
            .await?;
    }
    // Within a probe and its answer's wait (1 s each) and a reconnect, replica A's watcher is
    // told (before, it waited for its next change for as long as the connection stayed silent).
    let seen = watch_until_held(&mut watch, 2, Duration::from_secs(20)).await;
    assert!(
        seen,
        "replica A's watcher never saw replica B's holds: {}",
        a.log()
    );
    assert!(
        a.log()
            .contains("change listener's connection did not answer"),
        "{}",
        a.log()
    );
    Ok(())
}
