//! Durability on the embedded store: SIGKILL the server process during a burst of Reserves and
//! Commits, restart it on the same file, and find every acknowledged reservation and commit,
//! with consistent counts and the quota never exceeded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blangko_e2e::fixtures::{self, office_with_point, reserve_request, rid};
use blangko_e2e::scrape::count;
use blangko_e2e::{TestDatabase, TestServer};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;

#[derive(Default)]
struct Acknowledged {
    reserved: HashSet<String>,
    committed: HashSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_burst_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut server = TestServer::spawn_process_on(db.clone(), &[]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 300, 1000).await?;

    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    // Set just before the kill: a call that fails before it is a failure of the test.
    let killing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let mut counter = server.counter_client().await?;
        let acked = acked.clone();
        let killing = killing.clone();
        workers.push(tokio::spawn(async move {
            let died = |what: &str, status: tonic::Status| {
                if killing.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(format!("{what} failed before the kill: {status:?}"))
                }
            };
            // Each worker reserves and commits applicants until the server dies (bounded).
            for i in 0..200u32 {
                let n = w * 1000 + i;
                let answer = match counter.reserve(reserve_request("3275", "main", n)).await {
                    Ok(answer) => answer,
                    Err(status) => return died("a Reserve", status),
                };
                let Some(Outcome::Reservation(r)) = answer.into_inner().outcome else {
                    continue;
                };
                if let Ok(mut a) = acked.lock() {
                    a.reserved.insert(r.reservation_id.clone());
                }
                if i % 2 == 0 {
                    let commit = counter
                        .commit_reservation(CommitReservationRequest {
                            request_id: rid(),
                            reservation_id: r.reservation_id.clone(),
                        })
                        .await;
                    match commit {
                        Ok(_) => {
                            if let Ok(mut a) = acked.lock() {
                                a.committed.insert(r.reservation_id);
                            }
                        }
                        Err(status) => return died("a commit", status),
                    }
                }
            }
            Ok(())
        }));
    }
    // Let the burst run, then kill the process without warning, in the middle of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let count = acked.lock().map(|a| a.reserved.len()).unwrap_or(0);
        if count >= 60 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {count} reservations in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        workers.iter().any(|w| !w.is_finished()),
        "the burst ended before the kill"
    );
    killing.store(true, std::sync::atomic::Ordering::SeqCst);
    server.kill();
    server.wait_killed().await;
    for w in workers {
        if let Err(failure) = w.await? {
            anyhow::bail!("{failure}");
        }
    }
    let (reserved, committed) = {
        let a = acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (a.reserved.clone(), a.committed.clone())
    };
    assert!(reserved.len() >= 60, "the burst was under way when killed");

    // Restart on the same file.
    let server = TestServer::spawn_process_on(db, &[]).await?;
    let mut counter = server.counter_client().await?;
    let found = fixtures::all_reservations(&mut counter, "3275").await?;
    let by_id: std::collections::HashMap<&str, &Reservation> = found
        .iter()
        .map(|r| (r.reservation_id.as_str(), r))
        .collect();
    for id in &reserved {
        let r = by_id
            .get(id.as_str())
            .ok_or_else(|| anyhow::anyhow!("acknowledged reservation {id} lost"))?;
        assert!(matches!(
            r.state(),
            ReservationState::Held | ReservationState::Committed
        ));
    }
    for id in &committed {
        assert_eq!(
            by_id[id.as_str()].state(),
            ReservationState::Committed,
            "acknowledged commit {id} lost"
        );
    }
    let held = found
        .iter()
        .filter(|r| r.state() == ReservationState::Held)
        .count() as u32;
    let printed = found
        .iter()
        .filter(|r| r.state() == ReservationState::Committed)
        .count() as u32;
    let q = counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "main".into(),
        })
        .await?
        .into_inner()
        .quota
        .unwrap_or_default();
    assert_eq!(
        (q.held, q.committed),
        (held, printed),
        "counters agree with the rows"
    );
    assert!(q.held + q.committed <= q.quota);
    assert_eq!(
        q.on_hand,
        1000 - printed,
        "every printed card left the stock once"
    );
    assert_eq!(q.available, 1000 - printed - held);
    Ok(())
}

/// Sends one Reserve per request, all at once over several connections; the outcomes in order.
async fn send_all(
    server: &TestServer,
    requests: &[ReserveRequest],
) -> anyhow::Result<Vec<Option<Outcome>>> {
    const CONNECTIONS: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.counter_client().await?);
    }
    let mut tasks = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let mut client = clients[i % CONNECTIONS].clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move { client.reserve(request).await }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await??.into_inner().outcome);
    }
    Ok(outcomes)
}

/// [`send_all`], each answer a reservation.
async fn burst(
    server: &TestServer,
    requests: &[ReserveRequest],
) -> anyhow::Result<Vec<Reservation>> {
    send_all(server, requests)
        .await?
        .into_iter()
        .map(|outcome| match outcome {
            Some(Outcome::Reservation(r)) => Ok(r),
            other => anyhow::bail!("expected a reservation, got {other:?}"),
        })
        .collect()
}

/// The office's ledger table, read from the SQLite file as another program would, holds the
/// start of its chain: entries 1, 2, 3, ... with no gap (journaled entries come after them).
async fn assert_ledger_table_has_no_gap(db: &TestDatabase, office_id: &str) -> anyhow::Result<()> {
    let file = db.sqlite_file().ok_or_else(|| anyhow::anyhow!("SQLite"))?;
    sqlx::any::install_default_drivers();
    let other = sqlx::AnyPool::connect(&format!("sqlite://{}", file.display())).await?;
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM ledger WHERE office_id = $1 ORDER BY seq")
            .bind(office_id)
            .fetch_all(&other)
            .await?;
    other.close().await;
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    anyhow::ensure!(seqs == expected, "the ledger table has a gap: {seqs:?}");
    Ok(())
}

/// An hour's pause before the Reserve journal is folded by itself (only what reads and Reserves
/// need, and the next start, fold it), and the metrics endpoint on a port of its own.
const JOURNAL_KEPT_AND_METRICS: [&str; 4] = [
    "--reserve-journal-pause-ms",
    "3600000",
    "--metrics-listen",
    "127.0.0.1:0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_left_in_the_reserve_journal_is_seen_at_once_and_survives_sigkill()
-> anyhow::Result<()> {
    const BURST: u32 = 600;
    let db = TestDatabase::sqlite().await?;
    let args = JOURNAL_KEPT_AND_METRICS;
    let mut server = TestServer::spawn_process_on(db.clone(), &args).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 1500, 1500).await?;
    office_with_point(&mut stock, "3204", "main", 10, 10).await?;

    // A burst: its batches are written to the journal.
    let first: Vec<ReserveRequest> = (0..BURST)
        .map(|n| reserve_request("3275", "main", n))
        .collect();
    let reserved = burst(&server, &first).await?;
    let mut counter = server.counter_client().await?;
    // Straight after it, with nothing read in between: a retry finds its first answer, and the
    // same person is refused at another office. Both are among the last of the burst, which
    // were decided in large batches (the first may be decided alone, without the journal).
    let last = BURST as usize - 1;
    let again = counter.reserve(first[last].clone()).await?.into_inner();
    let Some(Outcome::Reservation(r)) = again.outcome else {
        anyhow::bail!("the retry got {:?}", again.outcome);
    };
    assert_eq!(r.reservation_id, reserved[last].reservation_id);
    assert!(r.replayed, "the retry is marked replayed");
    let elsewhere = counter
        .reserve(reserve_request("3204", "main", BURST - 2))
        .await
        .expect_err("a second blank for the same person");
    assert_eq!(
        blangko_e2e::error_reason(&elsewhere).as_deref(),
        Some("ALREADY_RESERVED_ELSEWHERE")
    );
    let text = server.scrape_metrics().await?;
    let batches = count(&text, "blangko_reserve_journal_batches_total", &[]);
    assert!(batches >= 1.0, "the burst used the journal: {batches}");
    // Read before the scrape's own reads fold: the retry and the refusal folded it.
    let folded = count(&text, "blangko_reserve_journal_folded_total", &[]);
    assert!(
        folded >= 1.0,
        "the retry folded the journal first: {folded}"
    );

    // A second burst, and the process killed before anything reads or folds it.
    let second: Vec<ReserveRequest> = (1000..1000 + BURST)
        .map(|n| reserve_request("3275", "main", n))
        .collect();
    let mut reserved_second = Vec::new();
    for wave in second.chunks(16) {
        reserved_second.extend(burst(&server, wave).await?);
    }
    server.kill();
    server.wait_killed().await;

    let server = TestServer::spawn_process_on(db, &args).await?;
    let text = server.scrape_metrics().await?;
    let folded = count(&text, "blangko_reserve_journal_folded_total", &[]);
    assert!(
        folded >= 1.0,
        "the start folded what the killed process left in the journal: {folded}"
    );
    let mut counter = server.counter_client().await?;
    let found = fixtures::all_reservations(&mut counter, "3275").await?;
    let ids: HashSet<&str> = found.iter().map(|r| r.reservation_id.as_str()).collect();
    for r in reserved.iter().chain(&reserved_second) {
        assert!(
            ids.contains(r.reservation_id.as_str()),
            "acknowledged reservation {} lost",
            r.reservation_id
        );
    }
    assert_eq!(found.len(), 2 * BURST as usize);
    let q = fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
    assert_eq!((q.held, q.committed), (2 * BURST, 0));
    let mut stock = server.stock_client().await?;
    assert!(fixtures::ledger_intact(&mut stock, "3275").await?);
    // The stored answers came back too: a retry of the second burst replays.
    let again = counter.reserve(second[7].clone()).await?.into_inner();
    let Some(Outcome::Reservation(r)) = again.outcome else {
        anyhow::bail!("the retry got {:?}", again.outcome);
    };
    assert_eq!(r.reservation_id, reserved_second[7].reservation_id);
    assert!(r.replayed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_reserve_never_overtakes_the_journal_in_the_ledger_table() -> anyhow::Result<()> {
    // A listing folds the journal and then reads the ledger table, page by page. The table must
    // be the start of the chain whenever it is read: an entry written straight into it while
    // older ones still wait in the journal is a gap in the listing, and its page token moves
    // past the entries folded later, for good.
    const BURST: u32 = 200;
    let db = TestDatabase::sqlite().await?;
    let server = TestServer::spawn_process_on(db.clone(), &JOURNAL_KEPT_AND_METRICS).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 1000, 1000).await?;
    let requests: Vec<ReserveRequest> = (0..BURST)
        .map(|n| reserve_request("3275", "main", n))
        .collect();
    burst(&server, &requests).await?;
    let pending = count(
        &server.scrape_metrics().await?,
        "blangko_reserve_journal_pending",
        &[],
    );
    assert!(pending >= 1.0, "the burst waits in the journal: {pending}");
    // One Reserve alone, a batch of one, while the journal holds the burst.
    let mut counter = server.counter_client().await?;
    let lone = counter
        .reserve(reserve_request("3275", "main", 5000))
        .await?
        .into_inner();
    assert!(matches!(lone.outcome, Some(Outcome::Reservation(_))));

    // The file as another program (or a listing between its fold and its read) sees it.
    assert_ledger_table_has_no_gap(&db, "3275").await?;

    // And every entry is there once the journal is folded (a listing folds it).
    let mut stock = server.stock_client().await?;
    assert!(fixtures::ledger_intact(&mut stock, "3275").await?);
    let found = fixtures::all_reservations(&mut counter, "3275").await?;
    assert_eq!(found.len(), BURST as usize + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reason_cap_holds_while_a_burst_fills_the_journal() -> anyhow::Result<()> {
    // A service point with a cap on reprints (lost, damaged) counts its reprints from the
    // reservations table, so its batch must see the journal folded. With a burst of another
    // office in the journal (more than a chunk), the batch leaves that fold to its caller, in
    // chunks, and runs again: the cap still counts every reprint.
    const BURST: u32 = 600;
    let db = TestDatabase::sqlite().await?;
    let server = TestServer::spawn_process_on(db, &JOURNAL_KEPT_AND_METRICS).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3204", "main", 1000, 1000).await?;
    fixtures::office(&mut stock, "3275", |_| {}).await?;
    let capped = QuotaPolicy {
        reason_caps: vec![ReasonCap {
            name: "cetak-ulang".into(),
            reasons: vec![Reason::Lost as i32, Reason::Damaged as i32],
            daily_cap: 2,
        }],
        ..fixtures::fixed(100)
    };
    fixtures::service_point(&mut stock, "3275", "capped", capped).await?;
    fixtures::ship(&mut stock, "3275", 100).await?;
    let mut counter = server.counter_client().await?;
    let reprint = |n: u32| ReserveRequest {
        reason: Reason::Lost as i32,
        ..reserve_request("3275", "capped", 5000 + n)
    };
    // One reprint before the burst.
    let first = counter.reserve(reprint(0)).await?.into_inner();
    assert!(matches!(first.outcome, Some(Outcome::Reservation(_))));
    let requests: Vec<ReserveRequest> = (0..BURST)
        .map(|n| reserve_request("3204", "main", n))
        .collect();
    burst(&server, &requests).await?;
    let pending = count(
        &server.scrape_metrics().await?,
        "blangko_reserve_journal_pending",
        &[],
    );
    assert!(pending > 256.0, "more than a chunk waits: {pending}");
    let second = counter.reserve(reprint(1)).await?.into_inner();
    assert!(matches!(second.outcome, Some(Outcome::Reservation(_))));
    let third = counter.reserve(reprint(2)).await?.into_inner();
    let Some(Outcome::IkdReferral(refused)) = third.outcome else {
        anyhow::bail!("a third reprint past the cap of 2: {:?}", third.outcome);
    };
    assert_eq!(refused.cause(), ReferralCause::ReasonCapReached);
    // The burst is all there.
    let found = fixtures::all_reservations(&mut counter, "3204").await?;
    assert_eq!(found.len(), BURST as usize);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_past_a_small_journal_bound_keep_every_answer_and_the_ledger_in_order()
-> anyhow::Result<()> {
    // A journal bound of 40 Reserves: every batch of a burst first folds the oldest rows to make
    // room. The first burst ends in referrals (its quota is 100 of 300), so the rows a later
    // batch folds first include rows of referrals alone: it folds until its own Reserves fit,
    // never all of the journal and never writing past it.
    const BURST: u32 = 300;
    let db = TestDatabase::sqlite().await?;
    let args = [
        "--reserve-journal-pause-ms",
        "3600000",
        "--reserve-journal-max",
        "40",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let server = TestServer::spawn_process_on(db.clone(), &args).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 100, 2000).await?;
    fixtures::service_point(&mut stock, "3275", "mpp", fixtures::fixed(1000)).await?;
    let first: Vec<ReserveRequest> = (0..BURST)
        .map(|n| reserve_request("3275", "main", n))
        .collect();
    // In waves of 16, so that batches are smaller than the bound and the journal fills up.
    let mut outcomes = Vec::new();
    for wave in first.chunks(16) {
        outcomes.extend(send_all(&server, wave).await?);
    }
    let reserved = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Reservation(_))))
        .count();
    assert_eq!(reserved, 100, "the quota of main");
    let second: Vec<ReserveRequest> = (1000..1000 + BURST)
        .map(|n| reserve_request("3275", "mpp", n))
        .collect();
    let reserved_second = burst(&server, &second).await?;
    let pending = count(
        &server.scrape_metrics().await?,
        "blangko_reserve_journal_pending",
        &[],
    );
    assert!(pending <= 40.0, "the bound holds: {pending}");

    // The ledger table is the start of the chain (nothing written past the journal).
    assert_ledger_table_has_no_gap(&db, "3275").await?;

    // Every answer is kept: retries replay them, referrals included.
    let mut counter = server.counter_client().await?;
    for request in [&first[0], &first[BURST as usize - 1], &second[5]] {
        let again = counter.reserve(request.clone()).await?.into_inner();
        let replayed = match again.outcome {
            Some(Outcome::Reservation(r)) => r.replayed,
            Some(Outcome::IkdReferral(r)) => r.replayed,
            None => false,
        };
        assert!(replayed, "{} was not replayed", request.request_id);
    }
    let found = fixtures::all_reservations(&mut counter, "3275").await?;
    assert_eq!(found.len(), 100 + reserved_second.len());
    let main = fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
    let mpp = fixtures::quota_snapshot(&mut counter, "3275", "mpp").await?;
    assert_eq!((main.held, mpp.held), (100, BURST));
    assert!(fixtures::ledger_intact(&mut stock, "3275").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_quota_and_metrics_count_a_burst_still_in_the_journal_and_leave_it_there()
-> anyhow::Result<()> {
    // What supervisors, agencies and the metrics scrape read during a burst: exact counts,
    // without folding the Reserve journal (a fold holds every Reserve of the server back).
    const BURST: u32 = 600;
    let db = TestDatabase::sqlite().await?;
    let server = TestServer::spawn_process_on(db, &JOURNAL_KEPT_AND_METRICS).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 1000, 1000).await?;
    let requests: Vec<ReserveRequest> = (0..BURST)
        .map(|n| reserve_request("3275", "main", n))
        .collect();
    burst(&server, &requests).await?;

    let office = [("office", "3275")];
    let point = [("office", "3275"), ("service_point", "main")];
    let text = server.scrape_metrics().await?;
    let pending = count(&text, "blangko_reserve_journal_pending", &[]);
    assert!(
        pending >= f64::from(BURST / 2),
        "most of the burst waits in the journal: {pending}"
    );
    assert_eq!(
        count(&text, "blangko_service_point_held_today", &point),
        f64::from(BURST)
    );
    assert_eq!(
        count(&text, "blangko_stock_held", &office),
        f64::from(BURST)
    );
    assert_eq!(count(&text, "blangko_stock_on_hand", &office), 1000.0);
    let level = stock
        .get_stock(GetStockRequest {
            office_id: "3275".into(),
        })
        .await?
        .into_inner()
        .stock
        .ok_or_else(|| anyhow::anyhow!("GetStock answered no stock level"))?;
    assert_eq!(
        (level.on_hand, level.held, level.available, level.today_used),
        (1000, BURST, 1000 - BURST, BURST)
    );
    let listed = stock
        .list_stock(ListStockRequest {
            province_code: "32".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let listed: Vec<(&str, u32)> = listed
        .stocks
        .iter()
        .map(|s| (s.office_id.as_str(), s.held))
        .collect();
    assert_eq!(listed, [("3275", BURST)]);
    let mut counter = server.counter_client().await?;
    let quota = fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
    assert_eq!((quota.held, quota.remaining), (BURST, 1000 - BURST));

    // None of these folded the journal: it holds what it held.
    let text = server.scrape_metrics().await?;
    assert_eq!(
        count(&text, "blangko_reserve_journal_pending", &[]),
        pending
    );
    assert_eq!(
        count(&text, "blangko_reserve_journal_folded_total", &[]),
        0.0
    );

    // A listing folds it first (more than one chunk of it with the write gate open between
    // them) and finds every reservation; the counts stay as they were.
    let found = fixtures::all_reservations(&mut counter, "3275").await?;
    assert_eq!(found.len(), BURST as usize);
    let text = server.scrape_metrics().await?;
    assert_eq!(count(&text, "blangko_reserve_journal_pending", &[]), 0.0);
    assert_eq!(
        count(&text, "blangko_service_point_held_today", &point),
        f64::from(BURST)
    );
    Ok(())
}

/// Office 3275's service point `main` with its day's quota of 3 used up, a counter client, and
/// 60 Reserves of new applicants, every one of which the quota refers to IKD.
async fn quota_used_up(
    server: &TestServer,
) -> anyhow::Result<(
    blangko_proto::v1::counter_service_client::CounterServiceClient<tonic::transport::Channel>,
    Vec<ReserveRequest>,
)> {
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 3, 100).await?;
    let mut counter = server.counter_client().await?;
    for n in 0..3 {
        counter.reserve(reserve_request("3275", "main", n)).await?;
    }
    let requests = (100..160)
        .map(|n| reserve_request("3275", "main", n))
        .collect();
    Ok((counter, requests))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_that_was_all_referred_to_ikd_keeps_its_answers() -> anyhow::Result<()> {
    // The day's quota is gone before the burst, so its journal rows hold stored answers and no
    // reservation at all; those answers must still be found and kept.
    let db = TestDatabase::sqlite().await?;
    let args = ["--reserve-journal-pause-ms", "3600000"];
    let mut server = TestServer::spawn_process_on(db.clone(), &args).await?;
    let (mut counter, requests) = quota_used_up(&server).await?;
    for outcome in send_all(&server, &requests).await? {
        assert!(
            matches!(&outcome, Some(Outcome::IkdReferral(r)) if r.cause() == ReferralCause::QuotaExhausted),
            "{outcome:?}"
        );
    }
    let last = requests.len() - 1;
    let again = counter.reserve(requests[last].clone()).await?.into_inner();
    let Some(Outcome::IkdReferral(r)) = again.outcome else {
        anyhow::bail!("the retry got {:?}", again.outcome);
    };
    assert!(r.replayed, "the retry finds the referral it was given");

    // Killed and started again: the other answers were kept as well.
    server.kill();
    server.wait_killed().await;
    let server = TestServer::spawn_process_on(db, &args).await?;
    let mut counter = server.counter_client().await?;
    let again = counter
        .reserve(requests[last - 1].clone())
        .await?
        .into_inner();
    let Some(Outcome::IkdReferral(r)) = again.outcome else {
        anyhow::bail!("the retry got {:?}", again.outcome);
    };
    assert!(r.replayed, "an answer of the burst survived the restart");
    let q = fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
    assert_eq!((q.held, q.remaining), (3, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_referrals_alone_stays_within_the_journal_bound() -> anyhow::Result<()> {
    // The day's quota is gone, so every batch of the burst journals a row of stored answers and
    // no reservation. The bound (4 here) counts their Reserves too: counting reservations only,
    // such rows piled up, with their fingerprints in memory, for as long as the burst lasted.
    let db = TestDatabase::sqlite().await?;
    let args = [
        "--reserve-journal-pause-ms",
        "3600000",
        "--reserve-journal-max",
        "4",
    ];
    let server = TestServer::spawn_process_on(db.clone(), &args).await?;
    let (mut counter, requests) = quota_used_up(&server).await?;
    // In waves of 4: many small batches, each a row.
    for wave in requests.chunks(4) {
        for outcome in send_all(&server, wave).await? {
            assert!(
                matches!(&outcome, Some(Outcome::IkdReferral(_))),
                "{outcome:?}"
            );
        }
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.pool_url()).await?;
    let (rows, weight): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(reservations), 0) FROM reserve_journal")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    assert!(
        (1..=4).contains(&rows),
        "{rows} journal rows past a bound of 4"
    );
    // The bound counts the Reserves the rows answer, referrals included.
    assert!(
        (1..=4).contains(&weight),
        "{weight} Reserves in the journal past a bound of 4"
    );
    // Every answer is kept, folded or not: retries find them.
    for request in [&requests[0], &requests[requests.len() - 1]] {
        let again = counter.reserve(request.clone()).await?.into_inner();
        assert!(
            matches!(again.outcome, Some(Outcome::IkdReferral(r)) if r.replayed),
            "{} was not replayed",
            request.request_id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_verification_during_a_burst_finds_every_chain_intact() -> anyhow::Result<()> {
    // An auditor verifies an office's chain while its counters reserve: every verification
    // must see a whole chain, even with batches committing between the journal's fold and the
    // verification's reads.
    const WORKERS: u32 = 8;
    const PER_WORKER: u32 = 150;
    let db = TestDatabase::sqlite().await?;
    let server = TestServer::spawn_process_on(db, &[]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 2000, 2000).await?;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let mut counter = server.counter_client().await?;
        workers.push(tokio::spawn(async move {
            for i in 0..PER_WORKER {
                counter
                    .reserve(reserve_request("3275", "main", w * 1000 + i))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let mut broken = Vec::new();
    let mut verified = 0u32;
    while !workers.iter().all(|w| w.is_finished()) {
        let answer = stock
            .verify_ledger(VerifyLedgerRequest {
                office_id: "3275".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        verified += 1;
        if !answer.intact {
            broken.push(answer.chains);
        }
    }
    for w in workers {
        w.await??;
    }
    assert!(verified >= 2, "verified during the burst: {verified}");
    assert!(
        broken.is_empty(),
        "{} of {verified} verifications during the burst found a broken chain, first: {:?}",
        broken.len(),
        broken.first()
    );
    assert!(fixtures::ledger_intact(&mut stock, "3275").await?);
    Ok(())
}

/// A database file reached through a symbolic link: SQLite names the WAL after the link's
/// target, and the group fsync must sync that WAL, not fall back to the database file (which
/// left every acknowledged commit's frames unsynced). Shown by making the target's WAL fail its
/// fsync: the server must notice, and end.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_reached_through_a_symbolic_link_has_its_own_wal_fsynced() -> anyhow::Result<()>
{
    let db = TestDatabase::sqlite().await?;
    let link = db
        .sqlite_file()
        .ok_or_else(|| anyhow::anyhow!("a SQLite database"))?;
    let target = db.dir.path().join("kept-elsewhere.db");
    std::os::unix::fs::symlink(&target, &link)?;
    let (mut server, mut counter) = serving_one_reservation(&db).await?;
    let wal = db.dir.path().join("kept-elsewhere.db-wal");
    anyhow::ensure!(
        wal.exists(),
        "SQLite's WAL is named after the link's target"
    );
    wal_fails_and_the_server_ends(
        &mut server,
        &mut counter,
        &wal,
        "the target's WAL was never fsynced",
    )
    .await
}

/// A server process on `db` with office 3275 (service point mpp, quota 100) and one reservation
/// made: the server, and the counter client that made it.
async fn serving_one_reservation(
    db: &Arc<TestDatabase>,
) -> anyhow::Result<(
    TestServer,
    blangko_proto::v1::counter_service_client::CounterServiceClient<tonic::transport::Channel>,
)> {
    let server = TestServer::spawn_process_on(db.clone(), &[]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", 100, 100).await?;
    let mut counter = server.counter_client().await?;
    counter.reserve(reserve_request("3275", "mpp", 1)).await?;
    Ok((server, counter))
}

/// Makes `wal` fail its next fsync (its name made a link to itself, and the group fsync opens
/// the WAL by name), sends a Reserve, and checks that it is not acknowledged and that the server
/// ends within 20 s with status 3 (`unless` names what it means when it does not).
#[cfg(unix)]
async fn wal_fails_and_the_server_ends(
    server: &mut TestServer,
    counter: &mut blangko_proto::v1::counter_service_client::CounterServiceClient<
        tonic::transport::Channel,
    >,
    wal: &std::path::Path,
    unless: &str,
) -> anyhow::Result<()> {
    std::fs::remove_file(wal)?;
    std::os::unix::fs::symlink(wal, wal)?;
    // Not acknowledged: the answer waits for the fsync that fails.
    let answer = counter.reserve(reserve_request("3275", "mpp", 2)).await;
    assert!(answer.is_err(), "{answer:?}");
    let status = server
        .exited_within(Duration::from_secs(20))
        .await
        .ok_or_else(|| anyhow::anyhow!("{unless}:\n{}", server.log()))?;
    assert_eq!(status.code(), Some(3), "{}", server.log());
    Ok(())
}

/// A server short of file descriptors cannot open its WAL for the group fsync: no fsync ran, so
/// nothing is known about the disk. The Reserve waiting for it is not acknowledged, and the
/// server goes on (it used to end with status 3, as after a failed fsync); the same request
/// sent again once descriptors are free is answered from what was committed. The shortage is
/// made by lowering the running server's descriptor limit below every descriptor it holds
/// (`prlimit --pid`): descriptors it has keep working, every new one is refused (EMFILE).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_short_of_file_descriptors_waits_for_its_fsync_and_goes_on() -> anyhow::Result<()>
{
    let db = TestDatabase::sqlite().await?;
    let (mut server, mut counter) = serving_one_reservation(&db).await?;
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("a server process"))?
        .to_string();
    let prlimit = |limit: &str| -> anyhow::Result<String> {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid, limit])
            .args(["--output", "SOFT", "--noheadings"])
            .output()?;
        anyhow::ensure!(out.status.success(), "prlimit {limit}: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let soft = prlimit("--nofile")?;
    prlimit("--nofile=3:")?;

    let request = reserve_request("3275", "mpp", 2);
    let refused = counter
        .reserve(request.clone())
        .await
        .expect_err("acknowledged without an fsync");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        server.exited_within(Duration::from_secs(2)).await,
        None,
        "the server ended:\n{}",
        server.log()
    );

    prlimit(&format!("--nofile={soft}:"))?;
    let again = counter.reserve(request).await?.into_inner();
    match again.outcome {
        Some(Outcome::Reservation(r)) => assert!(r.replayed, "{r:?}"),
        other => anyhow::bail!("not the reservation: {other:?}"),
    }
    let log = server.log();
    assert!(!log.contains("exiting now"), "{log}");
    // The operator is told why writes were refused.
    assert!(
        log.contains("the fsync of the database's WAL did not run"),
        "{log}"
    );
    Ok(())
}

/// A failed fsync of the WAL ends the server at once, status 3, saying why: carrying on would let
/// a checkpoint complete and the next write start the WAL again over acknowledged commits. Here
/// the WAL's name is made to lead nowhere (a link to itself), so the group fsync, which opens
/// the WAL by name, fails.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_ends_the_server_before_it_can_overwrite_the_wal() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let (mut server, mut counter) = serving_one_reservation(&db).await?;
    let mut wal = db
        .sqlite_file()
        .ok_or_else(|| anyhow::anyhow!("a SQLite database"))?
        .into_os_string();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    wal_fails_and_the_server_ends(
        &mut server,
        &mut counter,
        &wal,
        "still running after a failed fsync",
    )
    .await?;
    assert!(
        server
            .log()
            .contains("exiting now, before anything can overwrite"),
        "{}",
        server.log()
    );
    Ok(())
}
