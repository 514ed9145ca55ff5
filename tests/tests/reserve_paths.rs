//! SQLite decides Reserve batches on its hot-path connection (`store::direct`) and sends to the
//! general path only the batches that need it: the first of a day at a service point (which
//! computes the day's quota row), one that finds holds due (which releases them first), and one
//! naming an unknown service point. An operator sees which in `blangko_reserve_batches`; the
//! answers are the same either way, and the ledger stays one intact chain across both.

use std::sync::Arc;

use blangko_e2e::fixtures::{self, reserve_request};
use blangko_e2e::scrape::{count, value};
use blangko_e2e::{TestDatabase, TestServer};
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use blangko_server::clock::ManualClock;
use tonic::transport::Channel;

/// Tuesday 2026-12-01 08:00 WIB.
const TUESDAY_8AM_WIB_MS: i64 = 1_796_086_800_000;
const MINUTE_MS: i64 = 60_000;

/// The batches decided so far on each path, as the metrics endpoint shows them.
async fn batches(server: &TestServer) -> anyhow::Result<(f64, f64)> {
    let text = server.scrape_metrics().await?;
    Ok((
        count(
            &text,
            "blangko_reserve_batches_total",
            &[("path", "direct")],
        ),
        count(
            &text,
            "blangko_reserve_batches_total",
            &[("path", "general")],
        ),
    ))
}

async fn send(
    counter: &mut CounterServiceClient<Channel>,
    request: ReserveRequest,
) -> anyhow::Result<Outcome> {
    counter
        .reserve(request)
        .await?
        .into_inner()
        .outcome
        .ok_or_else(|| anyhow::anyhow!("no outcome"))
}

/// The status code of a Reserve that must fail.
async fn refusal(
    counter: &mut CounterServiceClient<Channel>,
    request: ReserveRequest,
) -> anyhow::Result<tonic::Code> {
    match counter.reserve(request).await {
        Ok(answer) => anyhow::bail!("expected an error, got {:?}", answer.into_inner()),
        Err(status) => Ok(status.code()),
    }
}

fn reservation(outcome: Outcome) -> anyhow::Result<Reservation> {
    match outcome {
        Outcome::Reservation(r) => Ok(r),
        other => anyhow::bail!("expected a reservation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steady_state_runs_on_the_hot_path_and_the_rest_on_the_general_one()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server = TestServer::start_with_clock(
        db,
        &["--metrics-listen", "127.0.0.1:0"],
        Arc::new(clock.clone()),
    )
    .await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    // Quota 3 at the MPP, 3 at the kecamatan desk, 10 blanks.
    fixtures::office_with_point(&mut stock, "3275", "mpp", 3, 10).await?;
    fixtures::service_point(&mut stock, "3275", "kec", fixtures::fixed(3)).await?;
    assert_eq!(batches(&server).await?, (0.0, 0.0));

    // The day's first Reserve at the MPP computes its quota row: general path.
    let first = reservation(send(&mut counter, reserve_request("3275", "mpp", 1)).await?)?;
    assert_eq!(batches(&server).await?, (0.0, 1.0));

    // From then on the hot path: a new applicant, a retry of that call, and the same applicant
    // under a new request id (the one blank a day is the one already held).
    let second_request = reserve_request("3275", "mpp", 2);
    let second = reservation(send(&mut counter, second_request.clone()).await?)?;
    assert!(!second.replayed);
    let retried = reservation(send(&mut counter, second_request).await?)?;
    assert!(retried.replayed);
    assert_eq!(retried.reservation_id, second.reservation_id);
    let again = reservation(send(&mut counter, reserve_request("3275", "mpp", 2)).await?)?;
    assert_eq!(again.reservation_id, second.reservation_id);
    assert_eq!(batches(&server).await?, (3.0, 1.0));

    // The third blank, then the quota is exhausted: an IKD referral, still on the hot path.
    reservation(send(&mut counter, reserve_request("3275", "mpp", 3)).await?)?;
    match send(&mut counter, reserve_request("3275", "mpp", 4)).await? {
        Outcome::IkdReferral(referral) => {
            assert_eq!(referral.cause(), ReferralCause::QuotaExhausted);
            assert!(!referral.message_indonesian.is_empty());
        }
        other => anyhow::bail!("expected a referral, got {other:?}"),
    }
    assert_eq!(batches(&server).await?, (5.0, 1.0));

    // The kecamatan desk's first Reserve of the day: general again. The MPP applicant is
    // refused there, whichever path decides.
    for n in [1, 2] {
        let code = refusal(&mut counter, reserve_request("3275", "kec", n)).await?;
        assert_eq!(code, tonic::Code::FailedPrecondition, "one blank a day");
    }
    reservation(send(&mut counter, reserve_request("3275", "kec", 5)).await?)?;
    assert_eq!(batches(&server).await?, (7.0, 2.0));

    // An unknown service point: NOT_FOUND, from the general path.
    let code = refusal(&mut counter, reserve_request("3275", "nowhere", 6)).await?;
    assert_eq!(code, tonic::Code::NotFound);
    assert_eq!(batches(&server).await?, (7.0, 3.0));

    // 31 minutes on, every hold has run out: the general path releases them and reserves.
    clock.advance_ms(31 * MINUTE_MS);
    let after = reservation(send(&mut counter, reserve_request("3275", "mpp", 7)).await?)?;
    assert_eq!(batches(&server).await?, (7.0, 4.0));
    let held = fixtures::stock_level(&mut stock, "3275").await?.held;
    assert_eq!(
        held, 1,
        "only the reservation made after the expiry is held"
    );
    let expired = counter
        .list_reservations(ListReservationsRequest {
            office_id: "3275".into(),
            state: ReservationState::Expired as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .reservations;
    assert_eq!(expired.len(), 4, "{expired:?}");
    assert!(
        expired
            .iter()
            .any(|r| r.reservation_id == first.reservation_id)
    );
    assert_ne!(after.reservation_id, first.reservation_id);

    // The next one is back on the hot path, and the ledger is one intact chain throughout.
    reservation(send(&mut counter, reserve_request("3275", "mpp", 8)).await?)?;
    assert_eq!(batches(&server).await?, (8.0, 4.0));
    assert!(fixtures::ledger_intact(&mut stock, "3275").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_both_connections_never_overlap() -> anyhow::Result<()> {
    // Reserves (hot path) and commits and cancels (sqlx) at once on one office, so that the two
    // connections' write transactions alternate all the time: every call succeeds, the stock,
    // the quota and the ledger chain add up.
    let db = TestDatabase::sqlite().await?;
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server = TestServer::start_with_clock(db, &[], Arc::new(clock)).await?;
    let mut stock = server.stock_client().await?;
    fixtures::office_with_point(&mut stock, "3275", "mpp", 400, 400).await?;
    let counter = server.counter_client().await?;
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let mut counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept = 0u32;
            for i in 0..25u32 {
                let n = worker * 1000 + i;
                let r = reservation(send(&mut counter, reserve_request("3275", "mpp", n)).await?)?;
                if i % 2 == 0 {
                    counter
                        .commit_reservation(CommitReservationRequest {
                            request_id: fixtures::rid(),
                            reservation_id: r.reservation_id,
                        })
                        .await?;
                    kept += 1;
                } else {
                    counter
                        .cancel_reservation(CancelReservationRequest {
                            request_id: fixtures::rid(),
                            reservation_id: r.reservation_id,
                            note: String::new(),
                        })
                        .await?;
                }
            }
            anyhow::Ok(kept)
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await??;
    }
    assert_eq!(committed, 8 * 13);
    let level = fixtures::stock_level(&mut stock, "3275").await?;
    assert_eq!(level.held, 0);
    assert_eq!(level.on_hand, 400 - committed);
    let quota = fixtures::quota_snapshot(&mut counter.clone(), "3275", "mpp").await?;
    assert_eq!(quota.committed, committed);
    assert_eq!(quota.held, 0);
    assert!(fixtures::ledger_intact(&mut stock, "3275").await?);
    Ok(())
}

/// The hot path keeps an office's rows (the office, its service points, today's quota rows)
/// from one batch to the next. A change by anything else must reach the very next Reserve: a
/// stock operation through the API (sqlx's connection) and another program writing the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_reserve_sees_what_others_changed_since_the_last_batch() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server = TestServer::start_with_clock(
        db.clone(),
        &["--metrics-listen", "127.0.0.1:0"],
        Arc::new(clock),
    )
    .await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    fixtures::office_with_point(&mut stock, "3275", "mpp", 10, 10).await?;
    // The first Reserve makes the quota row (general path), the next two are the hot path's.
    for n in 1..=3 {
        reservation(send(&mut counter, reserve_request("3275", "mpp", n)).await?)?;
    }
    assert_eq!(batches(&server).await?, (2.0, 1.0));

    // Another program lowers today's quota to what is used: the next Reserve is refused.
    let file = db.sqlite_file().ok_or_else(|| anyhow::anyhow!("SQLite"))?;
    sqlx::any::install_default_drivers();
    let other = sqlx::AnyPool::connect(&format!("sqlite://{}", file.display())).await?;
    sqlx::query("UPDATE quota_days SET quota = 3 WHERE office_id = '3275'")
        .execute(&other)
        .await?;
    match send(&mut counter, reserve_request("3275", "mpp", 4)).await? {
        Outcome::IkdReferral(referral) => {
            assert_eq!(referral.cause(), ReferralCause::QuotaExhausted);
        }
        other => anyhow::bail!("the quota another program set was not seen: {other:?}"),
    }
    assert_eq!(
        fixtures::quota_snapshot(&mut counter, "3275", "mpp")
            .await?
            .held,
        3
    );
    sqlx::query("UPDATE quota_days SET quota = 10 WHERE office_id = '3275'")
        .execute(&other)
        .await?;
    other.close().await;
    reservation(send(&mut counter, reserve_request("3275", "mpp", 5)).await?)?;

    // Through the API: a stock-take finds 5 blanks of 10, 4 of them held, so one is left.
    stock
        .adjust_stock(AdjustStockRequest {
            request_id: fixtures::rid(),
            office_id: "3275".into(),
            counted_on_hand: 5,
            note: "stock opname: 5 hilang".into(),
            counted_as_of_seq: None,
        })
        .await?;
    reservation(send(&mut counter, reserve_request("3275", "mpp", 6)).await?)?;
    match send(&mut counter, reserve_request("3275", "mpp", 7)).await? {
        Outcome::IkdReferral(referral) => {
            assert_eq!(referral.cause(), ReferralCause::OutOfStock);
        }
        other => anyhow::bail!("the stock written off through the API was not seen: {other:?}"),
    }
    let level = fixtures::stock_level(&mut stock, "3275").await?;
    assert_eq!((level.on_hand, level.held, level.available), (5, 5, 0));
    let (direct, general) = batches(&server).await?;
    assert_eq!(
        general, 1.0,
        "every Reserve after the first ran on the hot path"
    );
    assert_eq!(direct, 6.0);
    assert!(fixtures::ledger_intact(&mut stock, "3275").await?);
    Ok(())
}

/// The PostgreSQL Reserve batch reads its rows as JSON, where BYTEA (the service point's policy,
/// a stored answer) comes in the connection's `bytea_output` format. A database whose default is
/// `escape` still reserves, replays and refers: the server sets hex on its own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reserves_whatever_the_database_says_bytea_looks_like() -> anyhow::Result<()> {
    if blangko_e2e::postgres::skip_postgres() {
        return Ok(());
    }
    let db = TestDatabase::new(blangko_e2e::Backend::Postgres).await?;
    {
        use sqlx::{Connection, Row};
        let mut conn = sqlx::PgConnection::connect(&db.url).await?;
        let name: String = sqlx::query("SELECT current_database()")
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        sqlx::query(&format!(
            "ALTER DATABASE \"{name}\" SET bytea_output = 'escape'"
        ))
        .execute(&mut conn)
        .await?;
    }
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server = TestServer::start_with_clock(db, &[], Arc::new(clock)).await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    fixtures::office_with_point(&mut stock, "3275", "mpp", 1, 10).await?;
    let first = reserve_request("3275", "mpp", 1);
    let reserved = counter.reserve(first.clone()).await?.into_inner();
    assert!(
        matches!(&reserved.outcome, Some(Outcome::Reservation(r)) if !r.replayed),
        "{reserved:?}"
    );
    // The same request again: the stored answer (BYTEA) read back through the batch's JSON.
    let again = counter.reserve(first).await?.into_inner();
    let (Some(Outcome::Reservation(a)), Some(Outcome::Reservation(b))) =
        (&reserved.outcome, &again.outcome)
    else {
        panic!("not two reservations: {again:?}");
    };
    assert!(b.replayed);
    assert_eq!(a.reservation_id, b.reservation_id);
    // The quota of 1 is used: the next applicant is referred to IKD.
    let next = counter
        .reserve(reserve_request("3275", "mpp", 2))
        .await?
        .into_inner();
    assert!(
        matches!(next.outcome, Some(Outcome::IkdReferral(_))),
        "{next:?}"
    );
    Ok(())
}

/// The PostgreSQL batch reads its rows in one statement, each key list one array parameter;
/// the separate reads (SQLite's way) take one statement each, with a placeholder per key. Both
/// must find the same rows: the quota rows, stored answers, live reservations, IKD activations,
/// service points, queues and due holds that the Reserves before them recorded, for a small batch and for
/// lists of over a thousand keys, and for request ids that an array literal must quote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_reads_agree_in_one_statement_and_separately() -> anyhow::Result<()> {
    use blangko_server::store::rows::{BatchKeys, batch_reads, batch_reads_separately};
    use sqlx::{Connection, Row};
    use std::collections::{BTreeMap, BTreeSet};

    if blangko_e2e::postgres::skip_postgres() {
        return Ok(());
    }
    let db = TestDatabase::new(blangko_e2e::Backend::Postgres).await?;
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server = TestServer::start_with_clock(db, &[], Arc::new(clock.clone())).await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    fixtures::office_with_point(&mut stock, "3275", "mpp", 100, 100).await?;
    let mut request_ids = Vec::new();
    let mut held = Vec::new();
    // Request ids are free text: quotes, backslashes, commas, braces, spaces and the word NULL
    // must reach the database as they are.
    let odd_ids = [r#"kiosk "A"\\2,{x} 1"#, "NULL", r"\"];
    for n in 1..=3 {
        let mut request = reserve_request("3275", "mpp", n);
        request.request_id = format!("{}-{n}", odd_ids[n as usize - 1]);
        // As the server keys it: scoped to the caller (here the anonymous one).
        request_ids.push(format!("anonymous\u{1f}{}", request.request_id));
        let answer = counter.reserve(request).await?.into_inner();
        let Some(Outcome::Reservation(r)) = answer.outcome else {
            anyhow::bail!("not reserved: {answer:?}");
        };
        held.push(r.reservation_id);
        // A minute apart, so the holds run out one after another.
        clock.advance_ms(MINUTE_MS);
    }
    for n in 11..=12 {
        counter
            .record_ikd_activation(fixtures::ikd_activation("3275", "mpp", n))
            .await?;
    }
    counter
        .report_queue(fixtures::queue_report("3275", "mpp", 7))
        .await?;

    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&server.db.url).await?;
    sqlx::query("SET bytea_output = 'hex'")
        .execute(&mut conn)
        .await?;
    let mut reserved = Vec::new();
    let mut activated = Vec::new();
    for (table, into) in [
        ("reservations", &mut reserved),
        ("ikd_activations", &mut activated),
    ] {
        let sql = format!("SELECT nik_hash FROM {table} ORDER BY nik_hash");
        for row in sqlx::query(&sql).fetch_all(&mut conn).await? {
            into.push(row.try_get(0)?);
        }
    }
    assert_eq!((reserved.len(), activated.len()), (3, 2));
    let date: String = sqlx::query("SELECT local_date FROM quota_days")
        .fetch_one(&mut conn)
        .await?
        .try_get(0)?;

    // Keys the database does not hold pad the lists past the limit.
    let padded = |real: &[String], prefix: &str, n: usize| -> Vec<String> {
        let mut keys = real.to_vec();
        keys.extend((0..n).map(|i| format!("{prefix}-{i:04}")));
        keys
    };
    let small = [
        request_ids.clone(),
        reserved.clone(),
        vec!["mpp".to_string()],
        activated.clone(),
    ];
    let large = [
        padded(&request_ids, "unknown-request", 1021),
        padded(&reserved, "unknown-nik", 1021),
        padded(&["mpp".to_string()], "unknown-point", 1023),
        padded(&activated, "unknown-ikd", 1022),
    ];
    assert!(large.iter().all(|keys| keys.len() > 1000));

    let since_ms = TUESDAY_8AM_WIB_MS - 10 * MINUTE_MS;
    let mut found = Vec::new();
    for lists in [&small, &large] {
        let refs: Vec<Vec<&str>> = lists
            .iter()
            .map(|l| l.iter().map(String::as_str).collect())
            .collect();
        let keys = BatchKeys {
            office_id: "3275",
            local_date: &date,
            since_ms,
            request_ids: &refs[0],
            nik_hashes: &refs[1],
            point_ids: &refs[2],
            ikd_nik_hashes: &refs[3],
            // The holds run out 30 minutes after they were made: a day later, all three are due.
            due_by_ms: TUESDAY_8AM_WIB_MS + 24 * 60 * MINUTE_MS,
            due_limit: 2,
        };
        for reads in [
            batch_reads(&mut conn, &keys).await?,
            batch_reads_separately(&mut conn, &keys).await?,
        ] {
            found.push((
                reads
                    .quota_days
                    .iter()
                    .map(|q| (q.service_point_id.clone(), q.used()))
                    .collect::<Vec<_>>(),
                reads.answers.into_keys().collect::<BTreeSet<_>>(),
                reads.live.into_keys().collect::<BTreeSet<_>>(),
                reads.activated.into_iter().collect::<BTreeSet<_>>(),
                reads.service_points.into_keys().collect::<BTreeSet<_>>(),
                reads.waiting.into_iter().collect::<BTreeMap<_, _>>(),
                reads
                    .due
                    .into_iter()
                    .map(|r| r.reservation_id)
                    .collect::<Vec<_>>(),
            ));
        }
    }
    let set = |keys: &[String]| keys.iter().cloned().collect::<BTreeSet<_>>();
    let (quota_days, answers, live, ikd, points, waiting, due) = &found[0];
    assert_eq!(quota_days, &vec![("mpp".to_string(), 3)]);
    assert_eq!(answers, &set(&request_ids));
    assert_eq!(live, &set(&reserved));
    assert_eq!(ikd, &set(&activated));
    assert_eq!(points, &BTreeSet::from(["mpp".to_string()]));
    assert_eq!(waiting, &BTreeMap::from([("mpp".to_string(), 7)]));
    // Two due holds (the limit), the earliest first: the first two Reserves'.
    assert_eq!(due, &held[..2]);
    for (i, other) in found.iter().enumerate().skip(1) {
        assert_eq!(
            &found[0], other,
            "read {i} (one statement, separately; small, large) differs"
        );
    }
    conn.close().await?;
    Ok(())
}

/// A Reserve batch on PostgreSQL can wait for its office's row lock (another replica's batch, a
/// supervisor's stock-take). Reserves queued meanwhile join that batch once it holds the lock,
/// instead of waiting for a turn of their own: one transaction for all of them, every one
/// answered, the quota counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reserves_queued_during_the_lock_wait_join_the_waiting_batch() -> anyhow::Result<()>
{
    use sqlx::Connection;

    if blangko_e2e::postgres::skip_postgres() {
        return Ok(());
    }
    const QUEUED: u32 = 7;
    let db = TestDatabase::new(blangko_e2e::Backend::Postgres).await?;
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server =
        TestServer::start_with_clock(db, &["--metrics-listen", "127.0.0.1:0"], Arc::new(clock))
            .await?;
    let mut stock = server.stock_client().await?;
    fixtures::office_with_point(&mut stock, "3275", "mpp", 100, 100).await?;
    let before = batches(&server).await?;

    // Another transaction holds the office row, as another replica's batch would.
    sqlx::any::install_default_drivers();
    let mut holder = sqlx::AnyConnection::connect(&server.db.url).await?;
    let mut watcher = sqlx::AnyConnection::connect(&server.db.url).await?;
    sqlx::query("BEGIN").execute(&mut holder).await?;
    sqlx::query("SELECT office_id FROM offices WHERE office_id = '3275' FOR UPDATE")
        .fetch_all(&mut holder)
        .await?;

    let counter = server.counter_client().await?;
    let call = |n: u32| {
        let mut counter = counter.clone();
        tokio::spawn(async move { send(&mut counter, reserve_request("3275", "mpp", n)).await })
    };
    let first = call(1);
    // The first Reserve's batch is now waiting for the lock.
    assert!(
        blangko_e2e::postgres::lock_waited(&mut watcher, "%FOR UPDATE%").await?,
        "the first batch never waited for the office's row lock"
    );
    let queued: Vec<_> = (2..=QUEUED + 1).map(call).collect();
    // Every call in flight in the server before the lock goes (the queued ones wait in the
    // office's queue behind the first batch); bounded, 10 s.
    let mut all_in = false;
    for _ in 0..200 {
        let text = server.scrape_metrics().await?;
        if value(&text, "blangko_requests_in_flight", &[]).unwrap_or(0.0) >= f64::from(QUEUED + 1) {
            all_in = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(all_in, "the queued Reserves never reached the server");
    sqlx::query("ROLLBACK").execute(&mut holder).await?;

    let mut niks = std::collections::BTreeSet::new();
    for task in std::iter::once(first).chain(queued) {
        niks.insert(reservation(task.await??)?.masked_nik);
    }
    assert_eq!(
        niks.len(),
        QUEUED as usize + 1,
        "one reservation per applicant"
    );
    let after = batches(&server).await?;
    assert_eq!(
        after.1 - before.1,
        1.0,
        "every Reserve decided in the batch that waited for the lock"
    );
    let text = server.scrape_metrics().await?;
    assert_eq!(
        count(&text, "blangko_reserve_top_ups_total", &[]),
        f64::from(QUEUED)
    );
    let snapshot = fixtures::quota_snapshot(&mut counter.clone(), "3275", "mpp").await?;
    assert_eq!(snapshot.held + snapshot.committed, QUEUED + 1);
    assert_eq!(snapshot.remaining, 100 - (QUEUED + 1));
    holder.close().await?;
    watcher.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lock_held_past_the_lock_timeout_answers_unavailable_and_the_retry_reserves()
-> anyhow::Result<()> {
    use sqlx::Connection;
    use tonic_types::StatusExt;

    if blangko_e2e::postgres::skip_postgres() {
        return Ok(());
    }
    let db = TestDatabase::new(blangko_e2e::Backend::Postgres).await?;
    let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
    let server =
        TestServer::start_with_clock(db, &["--db-lock-timeout-secs", "1"], Arc::new(clock)).await?;
    let mut stock = server.stock_client().await?;
    fixtures::office_with_point(&mut stock, "3275", "mpp", 100, 100).await?;

    // A transaction stuck while it holds the office row (a replica cut off mid-transaction).
    sqlx::any::install_default_drivers();
    let mut holder = sqlx::AnyConnection::connect(&server.db.url).await?;
    sqlx::query("BEGIN").execute(&mut holder).await?;
    sqlx::query("SELECT office_id FROM offices WHERE office_id = '3275' FOR UPDATE")
        .fetch_all(&mut holder)
        .await?;

    let mut counter = server.counter_client().await?;
    let request = reserve_request("3275", "mpp", 1);
    let refused = counter
        .reserve(request.clone())
        .await
        .expect_err("the office's row is locked past the lock time-out");
    // UNAVAILABLE with a delay: what clients retry, with the same request_id.
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
    // Other offices were never held up: their calls have connections.
    fixtures::office_with_point(&mut stock, "3204", "mpp", 10, 10).await?;
    reservation(send(&mut counter, reserve_request("3204", "mpp", 2)).await?)?;

    sqlx::query("ROLLBACK").execute(&mut holder).await?;
    holder.close().await?;
    let reserved = reservation(send(&mut counter, request).await?)?;
    assert!(!reserved.replayed, "the refused call had done nothing");
    let snapshot = fixtures::quota_snapshot(&mut counter, "3275", "mpp").await?;
    assert_eq!((snapshot.held, snapshot.remaining), (1, 99));
    Ok(())
}
