//! Overload: past --max-concurrent-requests calls in flight, callers are refused at once with
//! UNAVAILABLE and RetryInfo, nothing is lost or done twice, the metrics count every refusal,
//! WatchQuota streams take no slot, and the server serves normally afterwards. Everything is
//! asserted by counts, never by timings.

use std::collections::HashSet;
use std::time::Duration;

use blangko_e2e::fixtures::{self, masked, office_with_point, reserve_request};
use blangko_e2e::scrape::count;
use blangko_e2e::{TestDatabase, TestServer, error_reason};
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use futures::StreamExt;
use tonic_types::StatusExt;

/// The concurrency limit of the server under test.
const LIMIT: &str = "4";
/// The service point's quota: smaller than the number of applicants.
const QUOTA: u32 = 40;
/// Applicants per round, all sent at once.
const PER_ROUND: u32 = 300;
/// Rounds at most, until at least one call was shed (one is practically always enough).
const MAX_ROUNDS: u32 = 5;
/// Connections the calls are spread over.
const CONNECTIONS: usize = 3;
/// Watch streams held open through the storm: more than the limit.
const WATCHERS: usize = 6;
/// Shed callers retrying at once (below the limit).
const RETRYING_AT_ONCE: usize = 2;
/// Tries per shed caller before the test gives up on it.
const MAX_TRIES: usize = 20;
/// How long a shed caller waits before it tries again (the server's RetryInfo says 250 ms).
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// What one Reserve came back with.
enum Answer {
    Reserved(Box<Reservation>),
    Referred(ReferralCause),
    Shed,
}

/// One Reserve: its answer, or Shed for an UNAVAILABLE with RetryInfo and ErrorInfo
/// OVERLOADED; any other error fails the test.
async fn reserve_once(
    mut client: CounterServiceClient<tonic::transport::Channel>,
    request: ReserveRequest,
    n: u32,
) -> anyhow::Result<Answer> {
    match client.reserve(request).await {
        Ok(response) => match response.into_inner().outcome {
            Some(Outcome::Reservation(r)) => Ok(Answer::Reserved(Box::new(r))),
            Some(Outcome::IkdReferral(r)) => Ok(Answer::Referred(r.cause())),
            None => anyhow::bail!("applicant {n}: an answer without an outcome"),
        },
        Err(status) => {
            anyhow::ensure!(
                status.code() == tonic::Code::Unavailable,
                "applicant {n}: only UNAVAILABLE may come back, got {status:?}"
            );
            let retry = status
                .get_details_retry_info()
                .ok_or_else(|| anyhow::anyhow!("applicant {n}: UNAVAILABLE without RetryInfo"))?;
            anyhow::ensure!(
                retry.retry_delay.is_some_and(|d| d > Duration::ZERO),
                "applicant {n}: RetryInfo without a delay"
            );
            anyhow::ensure!(
                error_reason(&status).as_deref() == Some("OVERLOADED"),
                "applicant {n}: {status:?}"
            );
            Ok(Answer::Shed)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_limit_calls_are_shed_with_retry_info_and_nothing_is_lost() -> anyhow::Result<()> {
    let server = TestServer::start_on(
        TestDatabase::sqlite().await?,
        &[
            "--max-concurrent-requests",
            LIMIT,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", QUOTA, 1000).await?;

    // Watch streams open before the storm, more of them than the limit: they take no slot.
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut counter = server.counter_client().await?;
        let mut stream = counter
            .watch_quota(WatchQuotaRequest {
                office_id: "3275".into(),
                service_point_id: "mpp".into(),
            })
            .await?
            .into_inner();
        let first = stream.next().await.transpose()?;
        assert!(first.is_some(), "a watch stream starts with a snapshot");
        watchers.push(stream);
    }

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.counter_client().await?);
    }
    let mut requests: Vec<ReserveRequest> = Vec::new();
    let mut reserved: Vec<(u32, Reservation)> = Vec::new();
    let mut referred: Vec<u32> = Vec::new();
    let mut shed: Vec<u32> = Vec::new();
    // Every UNAVAILABLE any caller saw, storm and retries together.
    let mut shed_seen = 0usize;
    for round in 0..MAX_ROUNDS {
        let first = requests.len() as u32;
        requests
            .extend((0..PER_ROUND).map(|i| reserve_request("3275", "mpp", round * PER_ROUND + i)));
        let calls = (first..requests.len() as u32).map(|n| {
            let client = clients[n as usize % CONNECTIONS].clone();
            let request = requests[n as usize].clone();
            async move { (n, reserve_once(client, request, n).await) }
        });
        for (n, answer) in futures::future::join_all(calls).await {
            match answer? {
                Answer::Reserved(r) => reserved.push((n, *r)),
                Answer::Referred(cause) => {
                    assert_eq!(cause, ReferralCause::QuotaExhausted, "applicant {n}");
                    referred.push(n);
                }
                Answer::Shed => shed.push(n),
            }
        }
        if !shed.is_empty() {
            break;
        }
    }
    shed_seen += shed.len();
    let sent = requests.len();
    eprintln!(
        "storm of {sent} calls: {} reserved, {} referred, {} shed",
        reserved.len(),
        referred.len(),
        shed.len()
    );
    assert!(!shed.is_empty(), "no call was shed in {sent} calls");

    // The shed callers do what RetryInfo tells them: wait, then send the same request again
    // (same request_id), a few at a time. Each gets its answer within a bounded number of tries.
    let retries = futures::stream::iter(shed.clone().into_iter().map(|n| {
        let client = clients[n as usize % CONNECTIONS].clone();
        let request = requests[n as usize].clone();
        async move {
            let mut shed_again = 0;
            for _ in 0..MAX_TRIES {
                match reserve_once(client.clone(), request.clone(), n).await? {
                    Answer::Shed => {
                        shed_again += 1;
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                    answer => return anyhow::Ok((n, answer, shed_again)),
                }
            }
            anyhow::bail!("applicant {n} was shed {MAX_TRIES} times in a row")
        }
    }))
    .buffer_unordered(RETRYING_AT_ONCE)
    .collect::<Vec<_>>()
    .await;
    for result in retries {
        let (n, answer, shed_again) = result?;
        shed_seen += shed_again;
        match answer {
            Answer::Reserved(r) => reserved.push((n, *r)),
            Answer::Referred(cause) => {
                assert_eq!(cause, ReferralCause::QuotaExhausted, "applicant {n}");
                referred.push(n);
            }
            Answer::Shed => anyhow::bail!("applicant {n}: shed after all"),
        }
    }
    // Every applicant has exactly one answer; the quota is used up exactly, the rest referred.
    assert_eq!(reserved.len() + referred.len(), sent);
    assert_eq!(reserved.len(), QUOTA as usize);
    assert_eq!(referred.len(), sent - QUOTA as usize);

    // Every acknowledged reservation is stored, once; nothing else is.
    let mut counter = server.counter_client().await?;
    let listed = fixtures::all_reservations(&mut counter, "3275").await?;
    let listed_ids: HashSet<&str> = listed.iter().map(|r| r.reservation_id.as_str()).collect();
    let acknowledged: HashSet<&str> = reserved
        .iter()
        .map(|(_, r)| r.reservation_id.as_str())
        .collect();
    assert_eq!(acknowledged.len(), reserved.len(), "a reservation id twice");
    assert_eq!(listed.len(), listed_ids.len(), "a reservation listed twice");
    assert_eq!(listed_ids, acknowledged);
    let listed_niks: HashSet<&str> = listed.iter().map(|r| r.masked_nik.as_str()).collect();
    for n in &referred {
        assert!(
            !listed_niks.contains(masked(*n).as_str()),
            "applicant {n} was referred to IKD but holds a blank"
        );
    }
    for (n, r) in &reserved {
        assert_eq!(r.masked_nik, masked(*n), "applicant {n}");
    }
    let quota = counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
        })
        .await?
        .into_inner()
        .quota
        .expect("quota");
    assert_eq!((quota.held + quota.committed) as usize, reserved.len());
    assert!(quota.held + quota.committed <= quota.quota);

    // The metrics count exactly the refusals the callers saw.
    let text = server.scrape_metrics().await?;
    assert_eq!(
        count(&text, "blangko_load_shed_total", &[]),
        shed_seen as f64,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            "blangko_rpc_requests_total",
            &[
                ("method", "/blangko.v1.CounterService/Reserve"),
                ("code", "UNAVAILABLE")
            ]
        ),
        shed_seen as f64
    );
    assert_eq!(
        count(
            &text,
            "blangko_reservations_total",
            &[("outcome", "reserved")]
        ),
        reserved.len() as f64
    );

    // Afterwards the server serves normally: one call at a time is never shed.
    for i in 0..20 {
        let n = 100_000 + i;
        counter
            .reserve(reserve_request("3275", "mpp", n))
            .await
            .map_err(|s| anyhow::anyhow!("call {i} after the storm: {s:?}"))?;
    }
    assert_eq!(
        server.health_status("").await?,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let after = counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
        })
        .await?
        .into_inner()
        .quota
        .expect("quota");
    // And the watch streams still run: each comes to the latest figures.
    for (i, stream) in watchers.iter_mut().enumerate() {
        let mut latest = None;
        for _ in 0..1000 {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .map_err(|_| anyhow::anyhow!("watcher {i} got no update"))?;
            let snapshot = next
                .transpose()?
                .and_then(|w| w.quota)
                .ok_or_else(|| anyhow::anyhow!("watcher {i} ended"))?;
            let done = snapshot.held + snapshot.committed == after.held + after.committed;
            latest = Some(snapshot);
            if done {
                break;
            }
        }
        let latest = latest.expect("a snapshot");
        assert_eq!(
            latest.held + latest.committed,
            after.held + after.committed,
            "watcher {i}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_outlives_the_request_timeout() -> anyhow::Result<()> {
    let server = TestServer::start_on(
        TestDatabase::sqlite().await?,
        &[
            "--request-timeout-secs",
            "1",
            "--max-concurrent-requests",
            "1",
            // Not a test of durability: a slow disk's fsync must not eat the 1 s of a set-up call.
            "--sqlite-synchronous",
            "normal",
        ],
    )
    .await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", 5, 10).await?;
    let mut counter = server.counter_client().await?;
    let mut stream = counter
        .watch_quota(WatchQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
        })
        .await?
        .into_inner();
    let first = stream.next().await.transpose()?.and_then(|w| w.quota);
    assert_eq!(first.map(|q| q.held), Some(0));
    // Longer than the request time-out: the stream is not cut, and the one slot is free.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    counter.reserve(reserve_request("3275", "mpp", 1)).await?;
    let mut held = 0;
    for _ in 0..100 {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no update after the reserve"))?;
        let snapshot = next
            .transpose()?
            .and_then(|w| w.quota)
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
        held = snapshot.held;
        if held == 1 {
            break;
        }
    }
    assert_eq!(held, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_past_the_request_timeout_gets_deadline_exceeded_and_its_retry_one_answer()
-> anyhow::Result<()> {
    blangko_e2e::on_each_backend(|db| async move {
        sqlx::any::install_default_drivers();
        let server = TestServer::start_on(
            db.clone(),
            &[
                "--request-timeout-secs",
                "1",
                "--metrics-listen",
                "127.0.0.1:0",
                // Not a test of durability: a slow disk's fsync must not eat the 1 s of a set-up
                // call (SQLite only; PostgreSQL ignores it).
                "--sqlite-synchronous",
                "normal",
            ],
        )
        .await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "mpp", 5, 10).await?;
        let mut counter = server.counter_client().await?;

        // Another connection holds the lock every Reserve of the office needs (SQLite: the
        // write lock; PostgreSQL: the office row) for longer than the request time-out.
        let url = match db.sqlite_file() {
            Some(file) => format!("sqlite:{}", file.display()),
            None => db.url.clone(),
        };
        let mut blocker = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
        match db.backend {
            blangko_e2e::Backend::Sqlite => {
                sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await?;
            }
            blangko_e2e::Backend::Postgres => {
                sqlx::query("BEGIN").execute(&mut blocker).await?;
                sqlx::query("SELECT office_id FROM offices WHERE office_id = '3275' FOR UPDATE")
                    .execute(&mut blocker)
                    .await?;
            }
        }
        let request = reserve_request("3275", "mpp", 1);
        let status = counter
            .reserve(request.clone())
            .await
            .expect_err("the office is locked past the time-out");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert_eq!(error_reason(&status).as_deref(), Some("REQUEST_TIMEOUT"));
        // The same request with a shorter deadline of the caller's own (grpc-timeout): tonic
        // cuts it first, and the server's books count it as CANCELLED.
        let mut short = tonic::Request::new(request.clone());
        short.set_timeout(Duration::from_millis(300));
        let status = counter
            .reserve(short)
            .await
            .expect_err("the caller's deadline passes first");
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        // Released well within the database's own busy time-out (5 s).
        tokio::time::sleep(Duration::from_millis(500)).await;
        sqlx::query("ROLLBACK").execute(&mut blocker).await?;

        // The caller retries with the same request: exactly one reservation exists.
        let mut answer = None;
        for _ in 0..MAX_TRIES {
            match counter.reserve(request.clone()).await {
                Ok(a) => {
                    answer = Some(a.into_inner());
                    break;
                }
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(s) => anyhow::bail!("retry: {s:?}"),
            }
        }
        let answer = answer.ok_or_else(|| anyhow::anyhow!("no answer to the retry"))?;
        assert!(
            matches!(answer.outcome, Some(Outcome::Reservation(_))),
            "{answer:?}"
        );
        let listed = fixtures::all_reservations(&mut counter, "3275").await?;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].masked_nik, masked(1));

        let text = server.scrape_metrics().await?;
        let timeouts = count(&text, "blangko_request_timeouts_total", &[]);
        assert!(timeouts >= 1.0, "{text}");
        assert_eq!(
            count(
                &text,
                "blangko_rpc_requests_total",
                &[
                    ("method", "/blangko.v1.CounterService/Reserve"),
                    ("code", "DEADLINE_EXCEEDED")
                ]
            ),
            timeouts
        );
        assert_eq!(
            count(
                &text,
                "blangko_rpc_requests_total",
                &[
                    ("method", "/blangko.v1.CounterService/Reserve"),
                    ("code", "CANCELLED")
                ]
            ),
            1.0,
            "{text}"
        );
        Ok(())
    })
    .await
}

/// The next snapshot of a watch stream, within 10 s.
async fn next_quota(
    stream: &mut tonic::Streaming<WatchQuotaResponse>,
) -> anyhow::Result<QuotaSnapshot> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| anyhow::anyhow!("no snapshot within 10 s"))?
        .transpose()?
        .and_then(|w| w.quota)
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_watchers_a_stream_is_refused_with_retry_info_and_a_freed_slot_serves_again()
-> anyhow::Result<()> {
    let server = TestServer::start_on(
        TestDatabase::sqlite().await?,
        &["--max-watchers", "2", "--metrics-listen", "127.0.0.1:0"],
    )
    .await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", QUOTA, 100).await?;
    let mut counter = server.counter_client().await?;
    let watch = || WatchQuotaRequest {
        office_id: "3275".into(),
        service_point_id: "mpp".into(),
    };
    // Snapshot reads of GetQuota's paths: what a WatchQuota set-up costs the database.
    let reads = || async {
        let text = server.scrape_metrics().await?;
        anyhow::Ok(
            count(&text, "blangko_quota_reads_total", &[("path", "direct")])
                + count(&text, "blangko_quota_reads_total", &[("path", "general")]),
        )
    };
    let mut first = counter.watch_quota(watch()).await?.into_inner();
    next_quota(&mut first).await?;
    let mut second = counter.watch_quota(watch()).await?.into_inner();
    next_quota(&mut second).await?;
    // The reads of the two set-ups and of the refresher's first pass are done once the count
    // stays put (bounded, 5 s).
    let mut settled = reads().await?;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = reads().await?;
        if now == settled {
            break;
        }
        settled = now;
    }
    let refused = counter
        .watch_quota(watch())
        .await
        .expect_err("a third stream past --max-watchers 2");
    // Refusals at the limit (clients retry them every few seconds) read nothing.
    for _ in 0..20 {
        counter
            .watch_quota(watch())
            .await
            .expect_err("still past --max-watchers 2");
    }
    assert_eq!(reads().await?, settled);
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(error_reason(&refused).as_deref(), Some("TOO_MANY_WATCHERS"));
    let retry = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .ok_or_else(|| anyhow::anyhow!("no RetryInfo delay: {refused:?}"))?;
    assert!(retry > Duration::ZERO);

    // Streams closed and opened again, many times over: each new stream still hears of a
    // change (its service point's refresher must not have left with the old streams).
    drop(first);
    let mut n = 0;
    for round in 0..20 {
        drop(second);
        let mut stream = loop {
            // The server notices a closed stream a moment later: its slot is free by then.
            match counter.watch_quota(watch()).await {
                Ok(s) => break s.into_inner(),
                Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        let before = next_quota(&mut stream).await?.held;
        if round % 4 == 0 {
            counter.reserve(reserve_request("3275", "mpp", n)).await?;
            n += 1;
            let mut held = before;
            while held <= before {
                held = next_quota(&mut stream).await?.held;
            }
            assert_eq!(held, n, "round {round}");
        }
        second = stream;
    }
    Ok(())
}
