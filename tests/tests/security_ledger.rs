//! The tamper-evident ledger, end to end on every backend: VerifyLedger finds a row edited
//! directly in the database (the first broken entry), a deleted entry, and — with the head hash
//! published earlier by GetStock — a whole chain rewritten with recomputed hashes.

use blangko_e2e::fixtures::{self, office_with_point, reserve_request, rid};
use blangko_e2e::{TestServer, on_each_backend};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use blangko_server::engine::ledger;
use sqlx::any::install_default_drivers;

async fn verify(
    stock: &mut blangko_proto::v1::stock_service_client::StockServiceClient<
        tonic::transport::Channel,
    >,
    office_id: &str,
    published: &str,
) -> anyhow::Result<LedgerChainVerification> {
    let answer = stock
        .verify_ledger(VerifyLedgerRequest {
            office_id: office_id.into(),
            published_head_hash: published.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(answer.chains.len() == 1, "one chain expected");
    let chain = answer.chains[0].clone();
    assert_eq!(answer.intact, chain.intact);
    Ok(chain)
}

/// An entry's hash computed from the API's fields alone, the way `LedgerEntry.hash` documents
/// it (written here from the documentation, not from the server's code).
fn documented_hash(e: &LedgerEntry) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    let at = e.recorded_at.unwrap_or_default();
    let recorded_ms = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
    field(e.previous_hash.as_bytes());
    field(e.office_id.as_bytes());
    field(&e.sequence.to_be_bytes());
    field(&e.kind.to_be_bytes());
    field(&recorded_ms.to_be_bytes());
    field(e.local_date.as_bytes());
    field(e.principal.as_bytes());
    field(&e.on_hand_delta.to_be_bytes());
    field(&e.held_delta.to_be_bytes());
    field(&e.on_hand_after.to_be_bytes());
    field(&e.held_after.to_be_bytes());
    for text in [
        &e.service_point_id,
        &e.reservation_id,
        &e.reference,
        &e.counterpart_office_id,
        &e.note,
        &e.masked_nik,
    ] {
        field(text.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_recomputes_the_chain_from_the_listed_entries() -> anyhow::Result<()> {
    // Another agency holds only what ListLedgerEntries gives it and the head GetStock published:
    // every hash must follow from the entry's own fields, and the chain must end at the head.
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    office_with_point(&mut stock, "3275", "main", 10, 50).await?;
    for n in 1..=2 {
        let answer = counter
            .reserve(reserve_request("3275", "main", n))
            .await?
            .into_inner();
        let Some(Outcome::Reservation(r)) = answer.outcome else {
            anyhow::bail!("no reservation");
        };
        if n == 1 {
            counter
                .commit_reservation(CommitReservationRequest {
                    request_id: rid(),
                    reservation_id: r.reservation_id,
                })
                .await?;
        }
    }
    let entries = stock
        .list_ledger_entries(ListLedgerEntriesRequest {
            office_id: "3275".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries;
    let kinds: Vec<LedgerEntryKind> = entries.iter().map(|e| e.kind()).collect();
    assert!(
        kinds.contains(&LedgerEntryKind::Shipment) && kinds.contains(&LedgerEntryKind::Commit),
        "{kinds:?}"
    );
    let mut previous = "0".repeat(64);
    for e in &entries {
        assert_eq!(e.previous_hash, previous, "entry {}", e.sequence);
        assert_eq!(
            e.local_date.len(),
            10,
            "entry {}: {:?}",
            e.sequence,
            e.local_date
        );
        assert_eq!(documented_hash(e), e.hash, "entry {}", e.sequence);
        previous = e.hash.clone();
    }
    let published = fixtures::stock_level(&mut stock, "3275")
        .await?
        .ledger_head_hash;
    assert_eq!(previous, published);
    // A field changed in transit no longer matches its hash.
    let mut changed = entries[entries.len() - 1].clone();
    changed.held_after += 1;
    assert_ne!(documented_hash(&changed), changed.hash);

    // A shipment answered by a server from before entries carried their local_date (its stored
    // answer without the field, made so here), sent again: the replayed entry has its date, from
    // the ledger, and its hash recomputes.
    let shipment = RecordShipmentRequest {
        request_id: rid(),
        office_id: "3275".into(),
        quantity: 5,
        reference: "DO-OLD-1".into(),
        note: String::new(),
    };
    let first = stock.record_shipment(shipment.clone()).await?.into_inner();
    let pool = sqlx::AnyPool::connect(&server.db.pool_url()).await?;
    let rows =
        sqlx::query("SELECT request_id, response FROM idempotency WHERE method = 'RecordShipment'")
            .fetch_all(&pool)
            .await?;
    let mut found = Vec::new();
    for row in &rows {
        let key: String = sqlx::Row::try_get(row, "request_id")?;
        let bytes: Vec<u8> = sqlx::Row::try_get(row, "response")?;
        let answer = <RecordShipmentResponse as prost::Message>::decode(bytes.as_slice())?;
        if answer.entry.as_ref().map(|e| e.reference.as_str()) == Some("DO-OLD-1") {
            found.push((key, answer));
        }
    }
    assert_eq!(found.len(), 1, "one stored answer for the shipment");
    let (key, mut old) = found.remove(0);
    let Some(old_entry) = old.entry.as_mut() else {
        anyhow::bail!("a shipment answer without its entry");
    };
    assert!(!old_entry.local_date.is_empty(), "stored with its date");
    old_entry.local_date.clear();
    sqlx::query("UPDATE idempotency SET response = $1 WHERE request_id = $2")
        .bind(prost::Message::encode_to_vec(&old))
        .bind(&key)
        .execute(&pool)
        .await?;
    pool.close().await;
    let again = stock.record_shipment(shipment).await?.into_inner();
    assert!(again.replayed);
    let entry = again.entry.unwrap_or_default();
    assert_eq!(Some(&entry), first.entry.as_ref());
    assert_eq!(documented_hash(&entry), entry.hash);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verification_finds_an_edited_row_a_deleted_entry_and_a_rewritten_chain()
-> anyhow::Result<()> {
    on_each_backend(|db| async move {
        install_default_drivers();
        let server = TestServer::start_on(db.clone(), &[]).await?;
        let mut stock = server.stock_client().await?;
        let mut counter = server.counter_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 50).await?;
        office_with_point(&mut stock, "3204", "main", 10, 50).await?;
        for n in 1..=3 {
            let answer = counter
                .reserve(reserve_request("3275", "main", n))
                .await?
                .into_inner();
            let Some(Outcome::Reservation(r)) = answer.outcome else {
                anyhow::bail!("no reservation");
            };
            counter
                .commit_reservation(CommitReservationRequest {
                    request_id: rid(),
                    reservation_id: r.reservation_id,
                })
                .await?;
        }
        // Intact, and the published head is the chain's head.
        let chain = verify(&mut stock, "3275", "").await?;
        assert!(chain.intact, "{chain:?}");
        let head = chain.head_sequence;
        assert!(head >= 8, "{chain:?}");
        assert_eq!(chain.entries_checked, head);
        let published = fixtures::stock_level(&mut stock, "3275")
            .await?
            .ledger_head_hash;
        assert_eq!(published, chain.head_hash);
        let all = stock
            .verify_ledger(VerifyLedgerRequest::default())
            .await?
            .into_inner();
        assert!(all.intact);
        assert_eq!(all.chains.len(), 2);
        assert!(all.next_page_token.is_empty(), "{all:?}");
        // Every office's chain, a page of offices at a time (a national deployment has hundreds).
        let mut token = String::new();
        let mut paged = Vec::new();
        for _ in 0..3 {
            let page = stock
                .verify_ledger(VerifyLedgerRequest {
                    page_size: 1,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert!(page.intact && page.chains.len() == 1, "{page:?}");
            paged.extend(page.chains.into_iter().map(|c| c.office_id));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let all_ids: Vec<String> = all.chains.iter().map(|c| c.office_id.clone()).collect();
        assert_eq!(paged, all_ids);
        let too_many = stock
            .verify_ledger(VerifyLedgerRequest {
                page_size: 11,
                ..Default::default()
            })
            .await
            .expect_err("at most 10 offices per call");
        assert_eq!(
            blangko_e2e::field_violations(&too_many)[0].0,
            "page_size",
            "{too_many:?}"
        );

        let url = match db.sqlite_file() {
            Some(path) => format!("sqlite://{}", path.display()),
            None => db.url.clone(),
        };
        let pool = sqlx::AnyPool::connect(&url).await?;

        // 1. One field of one row changed in the database: found at that entry.
        sqlx::query("UPDATE ledger SET on_hand_delta = on_hand_delta + 5 WHERE office_id = '3275' AND seq = 4")
            .execute(&pool)
            .await?;
        let chain = verify(&mut stock, "3275", "").await?;
        assert!(!chain.intact);
        assert_eq!(chain.first_broken_sequence, 4, "{chain:?}");
        assert!(chain.problem.contains("hash"), "{chain:?}");
        // The other office's chain is not affected.
        assert!(verify(&mut stock, "3204", "").await?.intact);
        sqlx::query("UPDATE ledger SET on_hand_delta = on_hand_delta - 5 WHERE office_id = '3275' AND seq = 4")
            .execute(&pool)
            .await?;
        assert!(verify(&mut stock, "3275", "").await?.intact);

        // 1b. A delta edited to the end of its range: found at that entry, and the balance
        //     arithmetic neither panics nor wraps.
        let delta: i64 = sqlx::query_scalar(
            "SELECT on_hand_delta FROM ledger WHERE office_id = '3275' AND seq = 4",
        )
        .fetch_one(&pool)
        .await?;
        sqlx::query("UPDATE ledger SET on_hand_delta = $1 WHERE office_id = '3275' AND seq = 4")
            .bind(i64::MIN)
            .execute(&pool)
            .await?;
        let chain = verify(&mut stock, "3275", "").await?;
        assert!(!chain.intact);
        assert_eq!(chain.first_broken_sequence, 4, "{chain:?}");
        sqlx::query("UPDATE ledger SET on_hand_delta = $1 WHERE office_id = '3275' AND seq = 4")
            .bind(delta)
            .execute(&pool)
            .await?;
        assert!(verify(&mut stock, "3275", "").await?.intact);

        // The principal is covered too.
        sqlx::query("UPDATE ledger SET principal = 'someone-else' WHERE office_id = '3275' AND seq = 2")
            .execute(&pool)
            .await?;
        let chain = verify(&mut stock, "3275", "").await?;
        assert_eq!(chain.first_broken_sequence, 2, "{chain:?}");
        sqlx::query("UPDATE ledger SET principal = 'anonymous' WHERE office_id = '3275' AND seq = 2")
            .execute(&pool)
            .await?;

        // 2. A deleted entry in the middle.
        let mut conn = pool.acquire().await?;
        let entries = ledger::entries_after(&mut conn, "3275", 0, 0, i64::MAX, 1000).await?;
        drop(conn);
        sqlx::query("DELETE FROM ledger WHERE office_id = '3275' AND seq = 5")
            .execute(&pool)
            .await?;
        let chain = verify(&mut stock, "3275", "").await?;
        assert_eq!(chain.first_broken_sequence, 5, "{chain:?}");
        assert!(chain.problem.contains("missing"), "{chain:?}");
        restore(&pool, &entries[4]).await?;
        assert!(verify(&mut stock, "3275", &published).await?.intact);

        // 2b. The office row behind its ledger (as after restoring it from an older copy): its
        //     head one entry back. The entry past the head is named, not skipped.
        let head_entry = &entries[entries.len() - 1].entry;
        let before_head = &entries[entries.len() - 2].entry;
        sqlx::query("UPDATE offices SET ledger_seq = $1, ledger_head = $2 WHERE office_id = '3275'")
            .bind(before_head.sequence as i64)
            .bind(&before_head.hash)
            .execute(&pool)
            .await?;
        let chain = verify(&mut stock, "3275", "").await?;
        assert!(!chain.intact, "{chain:?}");
        assert_eq!(chain.first_broken_sequence, head_entry.sequence, "{chain:?}");
        assert!(chain.problem.contains("past the office's head"), "{chain:?}");
        sqlx::query("UPDATE offices SET ledger_seq = $1, ledger_head = $2 WHERE office_id = '3275'")
            .bind(head_entry.sequence as i64)
            .bind(&head_entry.hash)
            .execute(&pool)
            .await?;
        assert!(verify(&mut stock, "3275", &published).await?.intact);

        // 3. A whole chain rewritten from entry 2 on, every hash recomputed and the office's
        //    head updated: consistent in itself, but the published head is gone from it.
        let mut previous = entries[0].entry.hash.clone();
        for stored in &entries[1..] {
            let mut e = stored.entry.clone();
            if e.sequence == 2 {
                e.note = "rewritten".into();
            }
            e.previous_hash = previous.clone();
            e.hash = ledger::entry_hash(&e, stored.recorded_ms);
            sqlx::query(
                "UPDATE ledger SET note = $1, previous_hash = $2, hash = $3 WHERE office_id = '3275' AND seq = $4",
            )
            .bind(&e.note)
            .bind(&e.previous_hash)
            .bind(&e.hash)
            .bind(e.sequence as i64)
            .execute(&pool)
            .await?;
            previous = e.hash;
        }
        sqlx::query("UPDATE offices SET ledger_head = $1 WHERE office_id = '3275'")
            .bind(&previous)
            .execute(&pool)
            .await?;
        assert!(verify(&mut stock, "3275", "").await?.intact, "a rewrite is consistent in itself");
        let chain = verify(&mut stock, "3275", &published).await?;
        assert!(!chain.intact);
        assert!(chain.problem.contains("rewritten"), "{chain:?}");

        // Bad input is INVALID_ARGUMENT.
        let status = stock
            .verify_ledger(VerifyLedgerRequest {
                office_id: "3275".into(),
                published_head_hash: "xyz".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad hash");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        pool.close().await;
        Ok(())
    })
    .await
}

async fn restore(pool: &sqlx::AnyPool, stored: &ledger::StoredEntry) -> anyhow::Result<()> {
    let e = &stored.entry;
    sqlx::query(
        "INSERT INTO ledger (office_id, seq, kind, recorded_ms, local_date, principal, on_hand_delta, held_delta, on_hand_after, held_after, service_point_id, reservation_id, reference, counterpart_office_id, note, masked_nik, previous_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
    .bind(&e.office_id)
    .bind(e.sequence as i64)
    .bind(i64::from(e.kind))
    .bind(stored.recorded_ms)
    .bind(&e.local_date)
    .bind(&e.principal)
    .bind(e.on_hand_delta)
    .bind(e.held_delta)
    .bind(e.on_hand_after as i64)
    .bind(e.held_after as i64)
    .bind(&e.service_point_id)
    .bind(&e.reservation_id)
    .bind(&e.reference)
    .bind(&e.counterpart_office_id)
    .bind(&e.note)
    .bind(&e.masked_nik)
    .bind(&e.previous_hash)
    .bind(&e.hash)
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auditors_export_the_ledger_as_json_lines_and_verify_it_with_the_counter_client()
-> anyhow::Result<()> {
    install_default_drivers();
    let db = blangko_e2e::TestDatabase::sqlite().await?;
    let mut tokens = blangko_e2e::TestTokens::new(&db);
    let admin = tokens.add("ops", "admin", None, None)?;
    let auditor = tokens.add("bpk-auditor", "agency", None, None)?;
    let server = TestServer::start_on(db.clone(), &["--token-file", &tokens.arg()]).await?;
    let mut stock = server.stock_client_as(Some(&admin)).await?;
    stock
        .upsert_office(UpsertOfficeRequest {
            request_id: rid(),
            office: Some(Office {
                office_id: "3275".into(),
                name: "Kota Bekasi".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await?;
    for quantity in [500, 250] {
        stock
            .record_shipment(RecordShipmentRequest {
                request_id: rid(),
                office_id: "3275".into(),
                quantity,
                reference: format!("DO-{quantity}"),
                note: String::new(),
            })
            .await?;
    }
    let run = |args: Vec<String>| async move {
        anyhow::Ok(
            tokio::process::Command::new(blangko_e2e::counter_bin())
                .args(args)
                .output()
                .await?,
        )
    };
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "--server",
            &server.url,
            "--token",
            &auditor,
            "--office",
            "3275",
            "--retries",
            "0",
            "ledger",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let out = run(base(&[])).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // Office creation (policy change) and two shipments, in chain order, linked by hash.
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["kind"], "LEDGER_ENTRY_KIND_SHIPMENT");
    assert_eq!(lines[1]["on_hand_before"], 0);
    assert_eq!(lines[2]["on_hand_before"], 500);
    assert_eq!(lines[2]["on_hand_after"], 750);
    assert_eq!(lines[2]["principal"], "ops");
    assert_eq!(lines[2]["previous_hash"], lines[1]["hash"]);
    // The export carries everything the hash covers: an auditor recomputes every hash from it.
    for line in &lines {
        let text = |k: &str| line[k].as_str().unwrap_or_default().to_string();
        let int = |k: &str| line[k].as_i64().unwrap_or(i64::MIN);
        let recorded_ms = int("recorded_ms");
        let entry = LedgerEntry {
            office_id: text("office_id"),
            sequence: line["sequence"].as_u64().unwrap_or(0),
            kind: LedgerEntryKind::from_str_name(&text("kind")).map_or(-1, |k| k as i32),
            recorded_at: Some(prost_types::Timestamp {
                seconds: recorded_ms.div_euclid(1000),
                nanos: (recorded_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            principal: text("principal"),
            on_hand_delta: int("on_hand_delta"),
            held_delta: int("held_delta"),
            on_hand_after: line["on_hand_after"].as_u64().unwrap_or(u64::MAX),
            held_after: line["held_after"].as_u64().unwrap_or(u64::MAX),
            service_point_id: text("service_point_id"),
            reservation_id: text("reservation_id"),
            reference: text("reference"),
            counterpart_office_id: text("counterpart_office_id"),
            note: text("note"),
            masked_nik: text("masked_nik"),
            previous_hash: text("previous_hash"),
            hash: text("hash"),
            local_date: text("local_date"),
        };
        assert_eq!(documented_hash(&entry), entry.hash, "{line}");
    }

    let out = run(base(&["--verify"])).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let url = format!(
        "sqlite://{}",
        db.sqlite_file().unwrap_or_default().display()
    );
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query("UPDATE ledger SET reference = 'DO-999' WHERE office_id = '3275' AND seq = 3")
        .execute(&pool)
        .await?;
    pool.close().await;
    let out = run(base(&["--verify", "--lang", "en"])).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("BROKEN at entry 3"), "{text}");
    Ok(())
}
