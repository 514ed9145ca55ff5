//! NIK privacy (UU 27/2022): no raw NIK in the logs (at debug level), the database file or its
//! WAL/journal files, nor in error messages; NIK hashes are purged after the retention period
//! while the counts stay.

use std::path::Path;
use std::time::Duration;

use blangko_e2e::fixtures::{self, nik, office_with_point, reserve_request, rid};
use blangko_e2e::{TestDatabase, TestServer, on_each_backend};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use blangko_server::clock::{Clock, SystemClock};
use sqlx::Row;

/// Every file under `dir` (recursively) whose bytes contain one of `niks`, with the NIK found.
fn files_containing(dir: &Path, niks: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files_containing(&path, niks)?);
            continue;
        }
        let bytes = std::fs::read(&path)?;
        for n in niks {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                found.push((path.display().to_string(), n.clone()));
            }
        }
    }
    Ok(found)
}

fn reservation_of(answer: ReserveResponse) -> anyhow::Result<Reservation> {
    match answer.outcome {
        Some(Outcome::Reservation(r)) => Ok(r),
        other => anyhow::bail!("expected a reservation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_day_at_debug_level_leaves_no_nik_in_logs_database_or_wal() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let dir = db.dir.path().to_path_buf();
    let niks: Vec<String> = (1..=12).map(nik).collect();
    // An invalid NIK (day 72 is no date) that must not be echoed either.
    let bad_nik = "3275017201900001".to_string();
    let mut all = niks.clone();
    all.push(bad_nik.clone());

    // The scan works: a planted NIK is found, in a file and among other bytes.
    let planted = dir.join("planted.bin");
    std::fs::write(
        &planted,
        [b"\x00\x01garbage".as_slice(), niks[3].as_bytes(), b"\xff"].concat(),
    )?;
    let found = files_containing(&dir, &all)?;
    assert_eq!(
        found,
        vec![(planted.display().to_string(), niks[3].clone())]
    );
    std::fs::remove_file(&planted)?;
    assert!(files_containing(&dir, &all)?.is_empty());

    let mut server = TestServer::spawn_process_on(
        db.clone(),
        &["--log", "debug", "--sweep-interval-secs", "1"],
    )
    .await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    office_with_point(&mut stock, "3275", "main", 8, 100).await?;
    fixtures::service_point(&mut stock, "3275", "mpp", fixtures::fixed(8)).await?;
    // IKD first, so activations matter.
    fixtures::office(&mut stock, "3275", |o| o.ikd_first_required = true).await?;

    let mut errors = Vec::new();
    let mut held = Vec::new();
    for (i, n) in niks.iter().enumerate().take(10) {
        let mut request = reserve_request("3275", "main", 0);
        request.nik = n.clone();
        request.ikd_status = if i % 3 == 0 {
            IkdStatus::NotActive as i32
        } else {
            IkdStatus::Active as i32
        };
        if i % 3 == 0 {
            // Referred first, then the officer activates IKD and reserves again.
            let answer = counter.reserve(request.clone()).await?.into_inner();
            assert!(matches!(answer.outcome, Some(Outcome::IkdReferral(_))));
            counter
                .record_ikd_activation(RecordIkdActivationRequest {
                    request_id: rid(),
                    office_id: "3275".into(),
                    service_point_id: "main".into(),
                    counter_id: "loket-1".into(),
                    nik: n.clone(),
                })
                .await?;
            request.request_id = rid();
        }
        match counter.reserve(request).await?.into_inner().outcome {
            Some(Outcome::Reservation(r)) => held.push(r),
            Some(Outcome::IkdReferral(r)) => assert_eq!(r.cause(), ReferralCause::QuotaExhausted),
            None => anyhow::bail!("no outcome"),
        }
    }
    // The same person at another service point: an error, which must not carry the NIK.
    let mut again = reserve_request("3275", "mpp", 0);
    again.nik = niks[1].clone();
    errors.push(
        counter
            .reserve(again)
            .await
            .expect_err("reserved elsewhere"),
    );
    // A bad NIK: INVALID_ARGUMENT naming the field, not the digits.
    let mut bad = reserve_request("3275", "mpp", 0);
    bad.nik = bad_nik.clone();
    errors.push(counter.reserve(bad).await.expect_err("bad NIK"));
    // Commit, cancel, spoil.
    for (i, r) in held.iter().enumerate() {
        match i % 3 {
            0 => {
                counter
                    .commit_reservation(CommitReservationRequest {
                        request_id: rid(),
                        reservation_id: r.reservation_id.clone(),
                    })
                    .await?;
            }
            1 => {
                counter
                    .cancel_reservation(CancelReservationRequest {
                        request_id: rid(),
                        reservation_id: r.reservation_id.clone(),
                        note: "applicant left".into(),
                    })
                    .await?;
            }
            _ => {
                counter
                    .report_spoiled_blank(ReportSpoiledBlankRequest {
                        request_id: rid(),
                        office_id: "3275".into(),
                        reservation_id: r.reservation_id.clone(),
                        reason: SpoilageReason::Misprint as i32,
                        destruction_report_reference: "BA-1".into(),
                        note: String::new(),
                    })
                    .await?;
            }
        }
    }
    counter
        .report_queue(fixtures::queue_report("3275", "main", 4))
        .await?;
    let listed = counter
        .list_reservations(ListReservationsRequest {
            office_id: "3275".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!listed.reservations.is_empty());
    for r in &listed.reservations {
        assert!(all.iter().all(|n| !r.masked_nik.contains(n.as_str())));
    }
    let ledger = stock
        .list_ledger_entries(ListLedgerEntriesRequest {
            office_id: "3275".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    for status in &errors {
        for n in &all {
            assert!(!status.message().contains(n.as_str()), "{status:?}");
            assert!(!format!("{:?}", status.details()).contains(n.as_str()));
        }
    }
    for e in &ledger.entries {
        assert!(all.iter().all(|n| !format!("{e:?}").contains(n.as_str())));
    }
    // Holds that run out, released by the sweeper at debug level: two more applicants at the
    // MPP on a hold of 1 s, waited for until the server lists them EXPIRED (bounded).
    fixtures::office(&mut stock, "3275", |o| {
        o.ikd_first_required = true;
        o.hold_ttl_secs = 1;
    })
    .await?;
    for n in &niks[10..12] {
        let mut request = reserve_request("3275", "mpp", 0);
        request.nik = n.clone();
        request.ikd_status = IkdStatus::Active as i32;
        reservation_of(counter.reserve(request).await?.into_inner())?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let expired = counter
            .list_reservations(ListReservationsRequest {
                office_id: "3275".into(),
                service_point_id: "mpp".into(),
                state: ReservationState::Expired as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .reservations;
        // Listed EXPIRED, and released by the sweeper (its line is in the log scanned below).
        if expired.len() == 2 && server.log().contains("released expired holds") {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the 1 s holds were never released: {expired:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(server.log().contains("DEBUG"), "the log ran at debug level");
    assert!(dir.join("blangko.db-wal").exists(), "the WAL is scanned");
    no_nik_in_files_while_running_and_after_stop(&dir, &all, &mut server).await
}

/// No NIK of `niks` in any file under `dir` (the database, its WAL and shared-memory files, the
/// server's log) while `server` runs, nor after a clean stop (the WAL checkpointed into the
/// database file). A log line that holds one is printed.
async fn no_nik_in_files_while_running_and_after_stop(
    dir: &Path,
    niks: &[String],
    server: &mut TestServer,
) -> anyhow::Result<()> {
    let leaks = files_containing(dir, niks)?;
    for line in server
        .log()
        .lines()
        .filter(|l| niks.iter().any(|n| l.contains(n.as_str())))
    {
        println!("LEAK {line}");
    }
    assert!(leaks.is_empty(), "NIK found while running: {leaks:?}");
    assert!(server.stop().await?);
    let leaks = files_containing(dir, niks)?;
    assert!(leaks.is_empty(), "NIK found after stop: {leaks:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nik_hashes_are_purged_after_the_retention_period_and_the_counts_stay() -> anyhow::Result<()>
{
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db.clone(), &[]).await?;
        let engine = server
            .engine()
            .ok_or_else(|| anyhow::anyhow!("in-process"))?;
        let mut stock = server.stock_client().await?;
        let mut counter = server.counter_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 100).await?;
        let r = reservation_of(
            counter
                .reserve(reserve_request("3275", "main", 1))
                .await?
                .into_inner(),
        )?;
        counter
            .commit_reservation(CommitReservationRequest {
                request_id: rid(),
                reservation_id: r.reservation_id.clone(),
            })
            .await?;
        counter
            .record_ikd_activation(fixtures::ikd_activation("3275", "main", 2))
            .await?;
        let quota_before = counter
            .get_quota(GetQuotaRequest {
                office_id: "3275".into(),
                service_point_id: "main".into(),
            })
            .await?
            .into_inner()
            .quota
            .unwrap_or_default();

        let url = match db.sqlite_file() {
            Some(path) => format!("sqlite://{}", path.display()),
            None => db.url.clone(),
        };
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await?;
        let hash_of = || async {
            let row = sqlx::query("SELECT nik_hash FROM reservations WHERE reservation_id = $1")
                .bind(&r.reservation_id)
                .fetch_one(&pool)
                .await?;
            anyhow::Ok(row.try_get::<String, _>("nik_hash")?)
        };
        let before = hash_of().await?;
        assert_eq!(before.len(), 64, "a keyed hash is kept while in retention");

        // Within the retention period: nothing is purged.
        let now = engine.clock.now_ms();
        let purged = engine.purge_nik_hashes(now + 399 * 86_400_000, 400).await?;
        assert_eq!(purged.reservations, 0);
        assert_eq!(hash_of().await?, before);

        // Past it: the hash is gone, the activation too, the counts and the ledger stay.
        let purged = engine.purge_nik_hashes(now + 402 * 86_400_000, 400).await?;
        assert_eq!(purged.reservations, 1);
        assert_eq!(purged.ikd_activations, 1);
        let after = hash_of().await?;
        assert!(after.starts_with("purged:"), "{after}");
        assert_ne!(after, before);
        let activations: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ikd_activations")
            .fetch_one(&pool)
            .await?
            .try_get("n")?;
        assert_eq!(activations, 0);
        let quota_after = counter
            .get_quota(GetQuotaRequest {
                office_id: "3275".into(),
                service_point_id: "main".into(),
            })
            .await?
            .into_inner()
            .quota
            .unwrap_or_default();
        assert_eq!(
            (quota_after.committed, quota_after.held, quota_after.on_hand),
            (
                quota_before.committed,
                quota_before.held,
                quota_before.on_hand
            )
        );
        let verified = stock
            .verify_ledger(VerifyLedgerRequest {
                office_id: "3275".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(verified.intact);
        // A second purge finds nothing more.
        let purged = engine.purge_nik_hashes(now + 402 * 86_400_000, 400).await?;
        assert_eq!(purged.reservations, 0);
        pool.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nik_typed_into_a_request_id_a_note_or_an_id_is_neither_stored_nor_echoed()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let dir = db.dir.path().to_path_buf();
    let mut server = TestServer::spawn_process_on(db.clone(), &["--log", "debug"]).await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    office_with_point(&mut stock, "3275", "main", 8, 100).await?;
    let applicant = nik(7);
    let other = nik(8);
    let niks = vec![applicant.clone(), other.clone()];

    // A client that builds its request ids from the NIK: served, and its retry replays.
    let mut request = reserve_request("3275", "main", 7);
    request.request_id = format!("q-3275-main-{applicant}");
    let first = reservation_of(counter.reserve(request.clone()).await?.into_inner())?;
    let again = reservation_of(counter.reserve(request.clone()).await?.into_inner())?;
    assert_eq!(again.reservation_id, first.reservation_id);
    assert!(again.replayed);
    // The same id for another applicant: ALREADY_EXISTS, without either NIK in it.
    let mut reused = request.clone();
    reused.nik = other.clone();
    let mut errors = vec![
        counter
            .reserve(reused)
            .await
            .expect_err("a request id used for another applicant"),
    ];
    assert_eq!(
        errors[0].code(),
        tonic::Code::AlreadyExists,
        "{:?}",
        errors[0]
    );

    // A NIK in a note that the ledger would keep: refused, naming the field.
    let refused = counter
        .cancel_reservation(CancelReservationRequest {
            request_id: rid(),
            reservation_id: first.reservation_id.clone(),
            note: format!("pemohon {other} minta batal"),
        })
        .await
        .expect_err("a NIK in the note");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = blangko_e2e::field_violations(&refused)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(fields, vec!["note"]);
    errors.push(refused);
    // The same NIK typed with spaces, in a shipment's note: refused too. A long number that is no
    // NIK (an 18-digit pallet code) is a fine reference.
    let spaced = other
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let shipment = |note: String| RecordShipmentRequest {
        request_id: rid(),
        office_id: "3275".into(),
        quantity: 10,
        reference: "SSCC 003456789012345675".into(),
        note,
    };
    let refused = stock
        .record_shipment(shipment(format!("untuk pemohon {spaced}")))
        .await
        .expect_err("a spaced NIK in the note");
    assert_eq!(blangko_e2e::field_violations(&refused)[0].0, "note");
    errors.push(refused);
    stock
        .record_shipment(shipment("kiriman kedua".into()))
        .await?;
    // A NIK beside a date in the same note, and in a service point's name (which the ledger's
    // note of the change repeats): refused.
    let refused = counter
        .cancel_reservation(CancelReservationRequest {
            request_id: rid(),
            reservation_id: first.reservation_id.clone(),
            note: format!("tgl 01.12.2026 {other} minta batal"),
        })
        .await
        .expect_err("a NIK beside a date");
    assert_eq!(blangko_e2e::field_violations(&refused)[0].0, "note");
    errors.push(refused);
    let refused =
        fixtures::service_point_named(&mut stock, "3275", "loket-9", &format!("Loket {other}"))
            .await
            .expect_err("a NIK in a name");
    let refused = refused
        .downcast::<tonic::Status>()
        .map_err(|e| anyhow::anyhow!("not a status: {e}"))?;
    assert_eq!(
        blangko_e2e::field_violations(&refused)[0].0,
        "service_point.name"
    );
    errors.push(refused);
    // A NIK typed as the counter (or two fields swapped by a client): refused, naming the field;
    // the counter's id is kept with every reservation and in the ledger's notes.
    let mut swapped = reserve_request("3275", "main", 8);
    swapped.counter_id = other.clone();
    let refused = counter
        .reserve(swapped)
        .await
        .expect_err("a NIK as the counter");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(blangko_e2e::field_violations(&refused)[0].0, "counter_id");
    errors.push(refused);
    let refused = counter
        .record_ikd_activation(RecordIkdActivationRequest {
            request_id: rid(),
            office_id: "3275".into(),
            service_point_id: "main".into(),
            // Typed with dashes: still a NIK.
            counter_id: format!("loket-{}", spaced.replace(' ', "-")),
            nik: other.clone(),
        })
        .await
        .expect_err("a NIK in the counter's id");
    assert_eq!(blangko_e2e::field_violations(&refused)[0].0, "counter_id");
    errors.push(refused);
    // A NIK typed where a reservation id goes: NOT_FOUND, the id not echoed.
    let not_found = counter
        .commit_reservation(CommitReservationRequest {
            request_id: rid(),
            reservation_id: other.clone(),
        })
        .await
        .expect_err("no such reservation");
    assert_eq!(not_found.code(), tonic::Code::NotFound, "{not_found:?}");
    errors.push(not_found);
    for status in &errors {
        for n in &niks {
            assert!(!status.message().contains(n.as_str()), "{status:?}");
            assert!(!format!("{:?}", status.details()).contains(n.as_str()));
        }
    }
    // The hold is still there, uncancelled.
    let listed = fixtures::all_reservations(&mut counter, "3275").await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), ReservationState::Held);

    no_nik_in_files_while_running_and_after_stop(&dir, &niks, &mut server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_purge_finds_old_answers_and_activations_along_an_index() -> anyhow::Result<()> {
    // Every Reserve and Commit stores an answer, so a year's table is every call of the year:
    // the purge must not read all of it every hour to find the few rows past the cutoff.
    on_each_backend(|db| async move {
        let mut server = TestServer::start_on(db.clone(), &[]).await?;
        use blangko_server::engine::retention::{FIND_OLD_ANSWERS, FIND_OLD_IKD_ACTIVATIONS};
        for (query, index) in [
            (FIND_OLD_ANSWERS, "idempotency_by_created"),
            (FIND_OLD_IKD_ACTIVATIONS, "ikd_activations_by_time"),
        ] {
            let plan = db
                .query_plan(&query.replace("$1", "1000").replace("$2", "500"))
                .await?;
            assert!(plan.contains(index), "{query}: {plan}");
        }
        assert!(server.stop().await?);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_past_retention_is_purged_in_chunks_and_nothing_is_missed() -> anyhow::Result<()>
{
    // More reservations than one purge chunk (500) across two offices: all purged, in short
    // transactions, and a second purge finds nothing.
    const PER_OFFICE: u32 = 700;
    let server = TestServer::start().await?;
    let engine = server
        .engine()
        .ok_or_else(|| anyhow::anyhow!("in-process"))?;
    let mut stock = server.stock_client().await?;
    for office in ["3275", "3204"] {
        office_with_point(&mut stock, office, "main", 10_000, 10_000).await?;
    }
    let counter = server.counter_client().await?;
    let calls = (0..2 * PER_OFFICE).map(|n| {
        let mut counter = counter.clone();
        let office = if n % 2 == 0 { "3275" } else { "3204" };
        async move { counter.reserve(reserve_request(office, "main", n)).await }
    });
    for answer in futures::future::join_all(calls).await {
        reservation_of(answer?.into_inner())?;
    }
    let now = engine.clock.now_ms();
    let purged = engine.purge_nik_hashes(now + 402 * 86_400_000, 400).await?;
    assert_eq!(purged.reservations, u64::from(2 * PER_OFFICE));
    // The stored answers of the Reserves and of the six set-up calls (offices, points, shipments).
    assert_eq!(purged.answers, u64::from(2 * PER_OFFICE) + 6, "{purged:?}");
    // In chunks of at most 500 rows, a transaction each: 700 = 500 + 200 at each office, and
    // 1,406 answers = 500 + 500 + 406.
    assert_eq!(purged.transactions, 2 * 2 + 3, "{purged:?}");
    let url = format!(
        "sqlite://{}",
        server
            .db
            .sqlite_file()
            .ok_or_else(|| anyhow::anyhow!("SQLite"))?
            .display()
    );
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    let kept: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM reservations WHERE nik_hash NOT LIKE 'purged:%'")
            .fetch_one(&pool)
            .await?
            .try_get("n")?;
    assert_eq!(kept, 0, "every NIK hash past retention is gone");
    let again = engine.purge_nik_hashes(now + 402 * 86_400_000, 400).await?;
    assert_eq!(again, Default::default());
    pool.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_refuses_another_nik_key_unless_told_the_change_is_deliberate()
-> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let mut first = TestServer::spawn_process_on(db.clone(), &[]).await?;
        let mut stock = first.stock_client().await?;
        let mut counter = first.counter_client().await?;
        office_with_point(&mut stock, "3275", "main", 5, 10).await?;
        reservation_of(
            counter
                .reserve(reserve_request("3275", "main", 1))
                .await?
                .into_inner(),
        )?;
        // Another key in the file (a second replica given the wrong one, a restore beside the
        // wrong key): the server does not start, and says why.
        let key: [u8; 32] = rand::random();
        let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&db.nik_key_file, &key_hex)?;
        // One SQLite file serves one process: there the first server stops first. A PostgreSQL
        // replica is refused while the first one runs.
        let sqlite = db.sqlite_file().is_some();
        if sqlite {
            assert!(first.stop().await?);
        }
        let refused = TestServer::spawn_process_on(db.clone(), &[]).await;
        let err = match refused {
            Ok(_) => anyhow::bail!("a server started with another NIK key"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains("hashed with another NIK key"), "{err}");
        assert!(err.contains("--nik-key-changed"), "{err}");
        if !sqlite {
            // The first replica (the right key) goes on serving meanwhile.
            fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
            assert!(first.stop().await?);
        }
        // Told the change is deliberate: it starts, and from then on the new key is the one.
        // Its clock runs a day ahead (a drill): the change is stamped with the server's time.
        let day_ahead = SystemClock::with_offset_ms(86_400_000);
        let before_ms = day_ahead.now_ms();
        let mut changed = TestServer::spawn_process_on(
            db.clone(),
            &["--nik-key-changed", "--clock-offset-secs", "86400"],
        )
        .await?;
        assert!(
            changed.log().contains("the NIK key was changed"),
            "{}",
            changed.log()
        );
        assert!(changed.stop().await?);
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url).await?;
        let set_ms: i64 = sqlx::query("SELECT set_ms FROM nik_key_check WHERE id = 1")
            .fetch_one(&mut conn)
            .await?
            .try_get("set_ms")?;
        sqlx::Connection::close(conn).await?;
        let after_ms = day_ahead.now_ms();
        assert!(
            (before_ms..=after_ms).contains(&set_ms),
            "the key change is stamped {set_ms}, not by the server's clock (a day ahead: {before_ms})"
        );
        let mut again = TestServer::spawn_process_on(db.clone(), &[]).await?;
        again.stock_client().await?;
        assert!(again.stop().await?);
        Ok(())
    })
    .await
}

/// `nik` in groups of four joined by `separator`, as a program or a person may write it.
fn nik_joined(nik: &str, separator: &str) -> String {
    nik.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(separator)
}

/// Every stored request key (`idempotency.request_id`).
async fn stored_request_keys(url: &str) -> anyhow::Result<Vec<String>> {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await?;
    let keys = sqlx::query("SELECT request_id FROM idempotency")
        .fetch_all(&mut conn)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("request_id"))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::Connection::close(conn).await?;
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nik_joined_by_underscores_in_a_request_id_is_stored_hashed_even_when_stored_before()
-> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let mut server = TestServer::spawn_process_on(db.clone(), &["--log", "debug"]).await?;
        let mut stock = server.stock_client().await?;
        let mut counter = server.counter_client().await?;
        office_with_point(&mut stock, "3275", "main", 8, 100).await?;

        // A client that joins the parts of its request ids with underscores, or a person who
        // typed no-break spaces: the id is stored hashed, and the retry replays.
        let mut underscored = reserve_request("3275", "main", 7);
        underscored.request_id = format!("q_3275_main_{}", nik_joined(&nik(7), "_"));
        let mut spaced = reserve_request("3275", "main", 8);
        spaced.request_id = format!("q 3275 {}", nik_joined(&nik(8), "\u{a0}"));
        let mut plain = reserve_request("3275", "main", 9);
        plain.request_id = "q-3275-main-9".into();
        for request in [&underscored, &spaced, &plain] {
            let first = reservation_of(counter.reserve(request.clone()).await?.into_inner())?;
            let again = reservation_of(counter.reserve(request.clone()).await?.into_inner())?;
            assert_eq!(again.reservation_id, first.reservation_id);
            assert!(again.replayed, "{}", request.request_id);
        }
        // The same NIK joined by underscores in x-request-id: neither echoed nor logged.
        let header_id = format!("hdr_{}", nik_joined(&nik(7), "_"));
        let mut with_header = tonic::Request::new(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "main".into(),
        });
        with_header
            .metadata_mut()
            .insert("x-request-id", header_id.parse()?);
        let answer = counter.get_quota(with_header).await?;
        let echoed = answer
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(echoed.starts_with("srv-"), "{header_id} → {echoed}");
        // Joined so where a reservation id goes: NOT_FOUND, the digits masked in the answer and
        // in the debug log's span.
        let reservation_id = format!("r_{}", nik_joined(&nik(7), "_"));
        let not_found = counter
            .commit_reservation(CommitReservationRequest {
                request_id: rid(),
                reservation_id: reservation_id.clone(),
            })
            .await
            .expect_err("no such reservation");
        assert_eq!(not_found.code(), tonic::Code::NotFound, "{not_found:?}");
        assert!(
            not_found.message().contains("r_****_****_****_****"),
            "{not_found:?}"
        );
        // Masked in the Bahasa Indonesia message as well.
        let (_, indonesian) = blangko_e2e::localized_message(&not_found)
            .ok_or_else(|| anyhow::anyhow!("no LocalizedMessage"))?;
        assert_eq!(
            indonesian, "pemesanan 'r_****_****_****_****' tidak ditemukan",
            "{not_found:?}"
        );
        let log = server.log();
        for clear in [&header_id, &reservation_id] {
            assert!(!log.contains(clear.as_str()), "{clear} in the log");
        }
        assert!(server.stop().await?);

        let keys = stored_request_keys(&db.url).await?;
        let (principal, _) = keys
            .iter()
            .find_map(|k| k.strip_suffix("q-3275-main-9"))
            .map(|scope| scope.split_at(scope.len() - 1))
            .ok_or_else(|| anyhow::anyhow!("the plain id is not stored scoped: {keys:?}"))?;
        let principal = principal.to_string();
        for id in [&underscored.request_id, &spaced.request_id] {
            assert!(
                !keys.iter().any(|k| k.contains(id.as_str())),
                "{id:?} stored in clear: {keys:?}"
            );
        }

        // A database written by a version that stored such ids in clear, scoped to their caller
        // (that version's key for these very requests), before this upgrade had ever run: the
        // next start hashes them, and each is stored under the key a retry looks for. Then the
        // same after the upgrade had run (another replica still on the older version stored one
        // since): the next start hashes what was stored since its last run.
        let key = blangko_server::nik_key::NikKey::from_hex(
            std::fs::read_to_string(&db.nik_key_file)?.trim(),
        )?;
        for (id, first_run) in [(&underscored.request_id, true), (&spaced.request_id, false)] {
            sqlx::any::install_default_drivers();
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url).await?;
            let hashed = key.request_key(&principal, id);
            let in_clear =
                sqlx::query("UPDATE idempotency SET request_id = $1 WHERE request_id = $2")
                    .bind(format!("{principal}\u{1f}{id}"))
                    .bind(&hashed)
                    .execute(&mut conn)
                    .await?;
            assert_eq!(in_clear.rows_affected(), 1, "{id}");
            if first_run {
                sqlx::query("DELETE FROM data_upgrades")
                    .execute(&mut conn)
                    .await?;
            }
            sqlx::Connection::close(conn).await?;
            let mut upgraded = TestServer::spawn_process_on(db.clone(), &[]).await?;
            let log = upgraded.log();
            assert!(log.contains("now stored hashed"), "{log}");
            assert!(log.contains("hashed=1"), "{log}");
            let keys = stored_request_keys(&db.url).await?;
            assert!(
                !keys.iter().any(|k| k.contains(id.as_str())),
                "{id:?} still in clear after the upgrade: {keys:?}"
            );
            assert!(
                keys.contains(&hashed),
                "{id:?} not under its hashed key: {keys:?}"
            );
            let mut counter = upgraded.counter_client().await?;
            for request in [&underscored, &spaced, &plain] {
                let again = reservation_of(counter.reserve(request.clone()).await?.into_inner())?;
                assert!(again.replayed, "{}", request.request_id);
            }
            assert_eq!(
                fixtures::all_reservations(&mut counter, "3275")
                    .await?
                    .len(),
                3,
                "a retry after the upgrade reserved again"
            );
            assert!(upgraded.stop().await?);
        }
        // Nothing left to hash: the next start says nothing.
        let mut again = TestServer::spawn_process_on(db.clone(), &[]).await?;
        again.stock_client().await?;
        assert!(
            !again.log().contains("now stored hashed"),
            "{}",
            again.log()
        );
        assert!(again.stop().await?);
        if let Some(file) = db.sqlite_file() {
            let dir = file
                .parent()
                .ok_or_else(|| anyhow::anyhow!("no directory"))?;
            let forms = vec![underscored.request_id.clone(), spaced.request_id.clone()];
            assert_eq!(files_containing(dir, &forms)?, vec![]);
        }
        Ok(())
    })
    .await
}
