//! Supervisor and agency operations end to end, on every backend: transfers, stock-takes,
//! today's quota, the hash-chained ledger and its pages, stock across offices, reservation
//! listings, queue forecasts and live snapshots.

use std::time::Duration;

use blangko_e2e::fixtures::{self, office_with_point, reserve_request, rid};
use blangko_e2e::{TestServer, error_reason, on_each_backend};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stock_and_settings_call_sent_again_says_it_is_a_repeat() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3216", "main", 10, 0).await?;
        let office = UpsertOfficeRequest {
            request_id: rid(),
            office: Some(Office {
                office_id: "3275".into(),
                name: "Disdukcapil Kota Bekasi".into(),
                time_zone: "Asia/Jakarta".into(),
                ..Office::default()
            }),
            update_mask: None,
        };
        let first = stock.upsert_office(office.clone()).await?.into_inner();
        let again = stock.upsert_office(office).await?.into_inner();
        assert_eq!((first.replayed, again.replayed), (false, true));
        assert_eq!(first.office, again.office);

        let point = UpsertServicePointRequest {
            request_id: rid(),
            service_point: Some(ServicePoint {
                office_id: "3275".into(),
                service_point_id: "mpp".into(),
                name: "MPP".into(),
                kind: ServicePointKind::MainOffice as i32,
                service_days: (1..=7).collect(),
                holidays: vec![],
                policy: Some(fixtures::fixed(10)),
            }),
        };
        let first = stock
            .upsert_service_point(point.clone())
            .await?
            .into_inner();
        let again = stock.upsert_service_point(point).await?.into_inner();
        assert_eq!((first.replayed, again.replayed), (false, true));

        fixtures::ship(&mut stock, "3275", 100).await?;
        let transfer = TransferStockRequest {
            request_id: rid(),
            from_office_id: "3275".into(),
            to_office_id: "3216".into(),
            quantity: 10,
            reference: "PINJAM-02".into(),
            note: String::new(),
        };
        let first = stock.transfer_stock(transfer.clone()).await?.into_inner();
        let again = stock.transfer_stock(transfer).await?.into_inner();
        assert_eq!((first.replayed, again.replayed), (false, true));
        assert_eq!(
            get_stock(&mut stock, "3275").await?.on_hand,
            90,
            "moved once"
        );

        let take = AdjustStockRequest {
            request_id: rid(),
            office_id: "3275".into(),
            counted_on_hand: 88,
            note: "opname".into(),
            counted_as_of_seq: None,
        };
        let first = stock.adjust_stock(take.clone()).await?.into_inner();
        let again = stock.adjust_stock(take).await?.into_inner();
        assert_eq!((first.replayed, again.replayed), (false, true));

        let policy = SetQuotaPolicyRequest {
            request_id: rid(),
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
            policy: Some(fixtures::fixed(20)),
            todays_quota: None,
        };
        let first = stock.set_quota_policy(policy.clone()).await?.into_inner();
        let again = stock.set_quota_policy(policy).await?.into_inner();
        assert_eq!((first.replayed, again.replayed), (false, true));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_servers_answer_for_other_content_under_the_same_id_does_not_refuse_a_call()
-> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db.clone(), &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 500).await?;
        // A server from before ids were scoped stored another agency's stock-take under the
        // bare id "opname-1".
        sqlx::any::install_default_drivers();
        let other = sqlx::AnyPool::connect(&db.url).await?;
        sqlx::query(
            "INSERT INTO idempotency (request_id, method, fingerprint, response, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind("opname-1")
        .bind("AdjustStock")
        .bind("another agency's content")
        .bind(Vec::<u8>::new())
        .bind(1_i64)
        .execute(&other)
        .await?;
        other.close().await;
        // This caller's own first "opname-1" is done, not refused as a reused id.
        let take = AdjustStockRequest {
            request_id: "opname-1".into(),
            office_id: "3275".into(),
            counted_on_hand: 480,
            note: "stock opname".into(),
            counted_as_of_seq: None,
        };
        let done = stock.adjust_stock(take.clone()).await?.into_inner();
        assert_eq!(get_stock(&mut stock, "3275").await?.on_hand, 480, "{done:?}");
        // Its retry is its own answer again; other content under it is refused.
        stock.adjust_stock(take.clone()).await?;
        let err = stock
            .adjust_stock(AdjustStockRequest {
                counted_on_hand: 470,
                ..take
            })
            .await
            .expect_err("the id is this caller's now");
        assert_eq!(error_reason(&err).as_deref(), Some("REQUEST_ID_REUSED"));
        assert_eq!(get_stock(&mut stock, "3275").await?.on_hand, 480);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_and_stock_takes_move_blanks_and_leave_ledger_entries() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 500).await?;
        office_with_point(&mut stock, "3216", "main", 10, 0).await?;
        let moved = stock
            .transfer_stock(TransferStockRequest {
                request_id: rid(),
                from_office_id: "3275".into(),
                to_office_id: "3216".into(),
                quantity: 120,
                reference: "PINJAM-01".into(),
                note: "pinjaman antar kabupaten".into(),
            })
            .await?
            .into_inner();
        assert_eq!(moved.from_stock.unwrap_or_default().on_hand, 380);
        assert_eq!(moved.to_stock.unwrap_or_default().on_hand, 120);
        let out = moved.out_entry.unwrap_or_default();
        assert_eq!(
            (
                out.kind(),
                out.on_hand_delta,
                out.counterpart_office_id.as_str()
            ),
            (LedgerEntryKind::TransferOut, -120, "3216")
        );
        let err = stock
            .transfer_stock(TransferStockRequest {
                request_id: rid(),
                from_office_id: "3216".into(),
                to_office_id: "3275".into(),
                quantity: 121,
                reference: String::new(),
                note: String::new(),
            })
            .await
            .expect_err("more than available");
        assert_eq!(error_reason(&err).as_deref(), Some("INSUFFICIENT_STOCK"));

        // A stock-take sets on_hand to the count and records the difference.
        let mut counter = server.counter_client().await?;
        counter.reserve(reserve_request("3275", "main", 1)).await?;
        let adjusted = stock
            .adjust_stock(AdjustStockRequest {
                request_id: rid(),
                office_id: "3275".into(),
                counted_on_hand: 377,
                note: "stock opname bulanan".into(),
                counted_as_of_seq: None,
            })
            .await?
            .into_inner();
        let entry = adjusted.entry.unwrap_or_default();
        assert_eq!(
            (entry.kind(), entry.on_hand_delta, entry.on_hand_after),
            (LedgerEntryKind::StockTake, -3, 377)
        );
        assert_eq!(adjusted.stock.unwrap_or_default().available, 376);
        let err = stock
            .adjust_stock(AdjustStockRequest {
                request_id: rid(),
                office_id: "3275".into(),
                counted_on_hand: 0,
                note: "salah hitung".into(),
                counted_as_of_seq: None,
            })
            .await
            .expect_err("below held");
        assert_eq!(error_reason(&err).as_deref(), Some("COUNT_BELOW_HELD"));

        // A count that began before blanks moved: the supervisor counts 377 in the vault while
        // a counter prints two cards; entered afterwards as of the entry the count began at, the
        // two printed blanks stay recorded and the count's difference is 0.
        let began = get_stock(&mut stock, "3275").await?.ledger_seq;
        for n in [2, 3] {
            let r = counter
                .reserve(reserve_request("3275", "main", n))
                .await?
                .into_inner();
            let Some(Outcome::Reservation(r)) = r.outcome else {
                anyhow::bail!("not reserved: {:?}", r.outcome)
            };
            counter
                .commit_reservation(CommitReservationRequest {
                    request_id: rid(),
                    reservation_id: r.reservation_id,
                })
                .await?;
        }
        assert_eq!(get_stock(&mut stock, "3275").await?.on_hand, 375);
        let as_of = |counted: u32, seq: u64| AdjustStockRequest {
            request_id: rid(),
            office_id: "3275".into(),
            counted_on_hand: counted,
            note: "stock opname pagi".into(),
            counted_as_of_seq: Some(seq),
        };
        let adjusted = stock.adjust_stock(as_of(377, began)).await?.into_inner();
        let entry = adjusted.entry.unwrap_or_default();
        assert_eq!((entry.on_hand_delta, entry.on_hand_after), (0, 375));
        assert!(
            entry
                .note
                .ends_with(&format!("(counted as of ledger entry {began})"))
        );
        // The same count entered again as of the same entry, now one blank short: refused,
        // since a stock-take was booked after that entry; as of the newest entry, one blank is
        // booked and the printed two stay.
        let err = stock
            .adjust_stock(as_of(376, began))
            .await
            .expect_err("a stock-take was booked since");
        assert_eq!(
            error_reason(&err).as_deref(),
            Some("STOCK_TAKE_SINCE"),
            "{err:?}"
        );
        let newest = get_stock(&mut stock, "3275").await?.ledger_seq;
        let adjusted = stock.adjust_stock(as_of(374, newest)).await?.into_inner();
        let entry = adjusted.entry.unwrap_or_default();
        assert_eq!((entry.on_hand_delta, entry.on_hand_after), (-1, 374));
        // Two supervisors count the same vault: one begins at `began`, the other enters a
        // count of 372 as the stock now while the first is still counting. The first's count,
        // the same 372, entered as of the entry it began at, is refused instead of booking the
        // two missing blanks again.
        let began = get_stock(&mut stock, "3275").await?.ledger_seq;
        let now_count = stock
            .adjust_stock(AdjustStockRequest {
                request_id: rid(),
                office_id: "3275".into(),
                counted_on_hand: 372,
                note: "hitung ulang".into(),
                counted_as_of_seq: None,
            })
            .await?
            .into_inner()
            .entry
            .unwrap_or_default();
        assert_eq!(
            (now_count.on_hand_delta, now_count.on_hand_after),
            (-2, 372)
        );
        let err = stock
            .adjust_stock(as_of(372, began))
            .await
            .expect_err("a stock-take was booked since the count began");
        assert_eq!(
            error_reason(&err).as_deref(),
            Some("STOCK_TAKE_SINCE"),
            "{err:?}"
        );
        assert!(
            err.message()
                .contains(&format!("entry {}", now_count.sequence)),
            "{err:?}"
        );
        assert_eq!(get_stock(&mut stock, "3275").await?.on_hand, 372);
        // An entry that does not exist yet, or entry 0: refused, naming the field.
        for seq in [now_count.sequence + 5, 0] {
            let err = stock
                .adjust_stock(as_of(372, seq))
                .await
                .expect_err("not an entry of the ledger");
            assert_eq!(
                blangko_e2e::field_violations(&err)[0].0,
                "counted_as_of_seq",
                "{seq}: {err:?}"
            );
        }
        Ok(())
    })
    .await
}

async fn get_stock(
    stock: &mut blangko_proto::v1::stock_service_client::StockServiceClient<
        tonic::transport::Channel,
    >,
    office_id: &str,
) -> anyhow::Result<StockLevel> {
    Ok(stock
        .get_stock(GetStockRequest {
            office_id: office_id.into(),
        })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn todays_quota_can_change_but_never_below_what_is_used() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 100).await?;
        let mut counter = server.counter_client().await?;
        for n in 0..3 {
            counter.reserve(reserve_request("3275", "main", n)).await?;
        }
        let set = |q: u32| SetQuotaPolicyRequest {
            request_id: rid(),
            office_id: "3275".into(),
            service_point_id: "main".into(),
            policy: Some(fixtures::fixed(10)),
            todays_quota: Some(q),
        };
        let err = stock.set_quota_policy(set(2)).await.expect_err("below use");
        assert_eq!(error_reason(&err).as_deref(), Some("QUOTA_BELOW_USE"));
        let ok = stock.set_quota_policy(set(3)).await?.into_inner();
        let q = ok.quota.unwrap_or_default();
        assert_eq!((q.quota, q.remaining), (3, 0));
        let refused = counter
            .reserve(reserve_request("3275", "main", 9))
            .await?
            .into_inner();
        assert!(matches!(refused.outcome, Some(Outcome::IkdReferral(_))));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_is_a_hash_chain_read_in_stable_pages() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 100).await?;
        let mut counter = server.counter_client().await?;
        let r = counter
            .reserve(reserve_request("3275", "main", 1))
            .await?
            .into_inner();
        let Some(Outcome::Reservation(r)) = r.outcome else {
            anyhow::bail!("r")
        };
        counter
            .commit_reservation(CommitReservationRequest {
                request_id: rid(),
                reservation_id: r.reservation_id.clone(),
            })
            .await?;
        // office created, service point set, shipment, reserve, commit = 5 entries.
        let mut entries = Vec::new();
        let mut token = String::new();
        loop {
            let page = stock
                .list_ledger_entries(ListLedgerEntriesRequest {
                    office_id: "3275".into(),
                    kind: 0,
                    page_size: 2,
                    page_token: token.clone(),
                })
                .await?
                .into_inner();
            assert!(page.entries.len() <= 2);
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let kinds: Vec<LedgerEntryKind> = entries.iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            vec![
                LedgerEntryKind::PolicyChange,
                LedgerEntryKind::PolicyChange,
                LedgerEntryKind::Shipment,
                LedgerEntryKind::Reserve,
                LedgerEntryKind::Commit
            ]
        );
        assert_eq!(entries[0].previous_hash, "0".repeat(64));
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].previous_hash, pair[0].hash,
                "chain broken at {}",
                pair[1].sequence
            );
            assert_eq!(pair[1].sequence, pair[0].sequence + 1);
        }
        let commit = &entries[4];
        assert_eq!(
            (
                commit.on_hand_delta,
                commit.held_delta,
                commit.on_hand_after
            ),
            (-1, -1, 99)
        );
        assert_eq!(commit.masked_nik, fixtures::masked(1));
        assert_eq!(commit.principal, "anonymous");
        let head = stock
            .get_stock(GetStockRequest {
                office_id: "3275".into(),
            })
            .await?
            .into_inner()
            .stock
            .unwrap_or_default()
            .ledger_head_hash;
        assert_eq!(head, commit.hash);
        // Filtering by kind.
        let shipments = stock
            .list_ledger_entries(ListLedgerEntriesRequest {
                office_id: "3275".into(),
                kind: LedgerEntryKind::Shipment as i32,
                page_size: 0,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        assert_eq!(shipments.entries.len(), 1);
        assert_eq!(shipments.entries[0].on_hand_delta, 100);
        // A page that ends exactly at the last entry says there is nothing more: no token to a
        // page that would come back empty (all five entries in one page of 5; the one shipment
        // in a page of 1).
        for (kind, size, want) in [(0, 5, 5), (LedgerEntryKind::Shipment as i32, 1, 1)] {
            let page = stock
                .list_ledger_entries(ListLedgerEntriesRequest {
                    office_id: "3275".into(),
                    kind,
                    page_size: size,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            assert_eq!(page.entries.len(), want, "{page:?}");
            assert_eq!(page.next_page_token, "", "kind {kind}, page of {size}");
        }
        let err = stock
            .list_ledger_entries(ListLedgerEntriesRequest {
                office_id: "3275".into(),
                kind: 0,
                page_size: 5000,
                page_token: "x".into(),
            })
            .await
            .expect_err("bounded page");
        let fields: Vec<String> = blangko_e2e::field_violations(&err)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, vec!["page_size", "page_token"]);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_filter_reads_a_bounded_stretch_of_the_chain_per_call() -> anyhow::Result<()> {
    // An office's two shipments, 12,000 entries apart (a year of Reserves and Commits between
    // them, written here straight into the table): listing the shipments looks at no more than
    // MAX_LEDGER_SCAN entries per call, so a call may come back empty with a token that goes
    // on, and following the tokens finds both.
    use blangko_server::engine::queries::MAX_LEDGER_SCAN;
    on_each_backend(|db| async move {
        sqlx::any::install_default_drivers();
        let server = TestServer::start_on(db.clone(), &[]).await?;
        let mut stock = server.stock_client().await?;
        fixtures::office(&mut stock, "3275", |_| {}).await?;
        fixtures::ship(&mut stock, "3275", 100).await?;
        let pool = sqlx::AnyPool::connect(&db.pool_url()).await?;
        let head: i64 =
            sqlx::query_scalar("SELECT ledger_seq FROM offices WHERE office_id = '3275'")
                .fetch_one(&pool)
                .await?;
        let between = MAX_LEDGER_SCAN + 2_000;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2)
             INSERT INTO ledger (office_id, seq, kind, recorded_ms, local_date, principal,
                 on_hand_delta, held_delta, on_hand_after, held_after, service_point_id,
                 reservation_id, reference, counterpart_office_id, note, masked_nik,
                 previous_hash, hash)
             SELECT '3275', $1 + i, $3, 0, '2026-01-01', 'test', 0, 0, 100, 0, '', '', '', '',
                 '', '', '', '' FROM n",
        )
        .bind(head)
        .bind(between)
        .bind(LedgerEntryKind::Commit as i32 as i64)
        .execute(&pool)
        .await?;
        sqlx::query("UPDATE offices SET ledger_seq = $1 WHERE office_id = '3275'")
            .bind(head + between)
            .execute(&pool)
            .await?;
        pool.close().await;
        fixtures::ship(&mut stock, "3275", 50).await?;

        let mut token = String::new();
        let mut pages = Vec::new();
        for _ in 0..10 {
            let page = stock
                .list_ledger_entries(ListLedgerEntriesRequest {
                    office_id: "3275".into(),
                    kind: LedgerEntryKind::Shipment as i32,
                    page_size: 100,
                    page_token: token.clone(),
                })
                .await?
                .into_inner();
            pages.push(
                page.entries
                    .iter()
                    .map(|e| e.on_hand_delta)
                    .collect::<Vec<_>>(),
            );
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        // The first call looks at the first 10,000 entries (the first shipment among them),
        // the second at the rest, which ends with the second shipment.
        assert_eq!(pages, [vec![100], vec![50]]);
        // A stretch without the kind comes back empty, with a token past it.
        let page = stock
            .list_ledger_entries(ListLedgerEntriesRequest {
                office_id: "3275".into(),
                kind: LedgerEntryKind::Shipment as i32,
                page_size: 100,
                page_token: (head + 1).to_string(),
            })
            .await?
            .into_inner();
        assert!(page.entries.is_empty(), "{page:?}");
        assert_eq!(
            page.next_page_token,
            (head + 1 + MAX_LEDGER_SCAN).to_string()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_point_id_that_could_be_a_nik_is_refused() -> anyhow::Result<()> {
    // Service point ids are published (metrics labels, logs): 16 digits, in a row or split as
    // people type them, could be a NIK.
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    fixtures::office(&mut stock, "3275", |_| {}).await?;
    let err = fixtures::service_point(
        &mut stock,
        "3275",
        "loket-3275010101900001",
        fixtures::fixed(5),
    )
    .await
    .expect_err("a NIK-shaped id");
    let status = err
        .downcast_ref::<tonic::Status>()
        .ok_or_else(|| anyhow::anyhow!("not a gRPC status: {err}"))?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = blangko_e2e::field_violations(status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    // The fixture's name repeats the id ("Loket loket-3275…"), and names go into the ledger.
    assert_eq!(
        fields,
        vec!["service_point.service_point_id", "service_point.name"]
    );
    // Split by a dash or dots it is still 16 digits, as a NIK is often typed: refused too.
    for split in ["loket-327501-0101900001", "3275.0101.0190.0001"] {
        let err = fixtures::service_point_named(&mut stock, "3275", split, "Loket MPP")
            .await
            .expect_err("a NIK-shaped id, split");
        let status = err
            .downcast_ref::<tonic::Status>()
            .ok_or_else(|| anyhow::anyhow!("not a gRPC status: {err}"))?;
        let fields: Vec<String> = blangko_e2e::field_violations(status)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, vec!["service_point.service_point_id"], "{split}");
    }
    // Fewer digits are fine (a name, which the ledger keeps, is checked like a note).
    fixtures::service_point_named(&mut stock, "3275", "loket-3275-mpp-01", "Loket MPP").await?;
    Ok(())
}

/// The fields a refusal names, from an error a call gave.
fn refused_fields<T: std::fmt::Debug>(answer: Result<T, tonic::Status>) -> Vec<String> {
    match answer {
        Ok(answer) => panic!("accepted: {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            blangko_e2e::field_violations(&status)
                .into_iter()
                .map(|(field, _)| field)
                .collect()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_that_would_hide_a_nik_or_pass_for_another_document_are_refused_by_field()
-> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    office_with_point(&mut stock, "3275", "main", 10, 0).await?;
    let shipment = |request_id: &str, reference: &str, note: &str| RecordShipmentRequest {
        request_id: request_id.into(),
        office_id: "3275".into(),
        quantity: 100,
        reference: reference.into(),
        note: note.into(),
    };
    // A reference with a zero-width space looks like "SJ-001" and would book it twice.
    assert_eq!(
        refused_fields(
            stock
                .record_shipment(shipment(&rid(), "SJ-001\u{200B}", ""))
                .await
        ),
        ["reference"]
    );
    // "t-1 " and "t-1" would be two requests: a retry done twice.
    assert_eq!(
        refused_fields(stock.record_shipment(shipment("t-1 ", "SJ-001", "")).await),
        ["request_id"]
    );
    assert_eq!(
        refused_fields(stock.record_shipment(shipment("   ", "SJ-001", "")).await),
        ["request_id"]
    );
    // A NIK split by underscores, or by no-break spaces, in a note the ledger keeps for good.
    for note in [
        "NIK 3275_0141_0190_0001",
        "NIK 3275\u{a0}0141\u{a0}0190\u{a0}0001",
    ] {
        assert_eq!(
            refused_fields(
                stock
                    .record_shipment(shipment(&rid(), "SJ-001", note))
                    .await
            ),
            ["note"],
            "{note}"
        );
    }
    // Nothing was booked by the refusals; the proper request is.
    assert_eq!(fixtures::stock_level(&mut stock, "3275").await?.on_hand, 0);
    stock
        .record_shipment(shipment(&rid(), "SJ-001", "dari Kemendagri"))
        .await?;
    assert_eq!(
        fixtures::stock_level(&mut stock, "3275").await?.on_hand,
        100
    );

    // A counter id that is a NIK split by underscores (an id may hold them).
    let mut request = reserve_request("3275", "main", 1);
    request.counter_id = "3275_0141_0190_0001".into();
    assert_eq!(
        refused_fields(counter.reserve(request).await),
        ["counter_id"]
    );

    // A blank written off as OTHER says why.
    let other = |note: &str| ReportSpoiledBlankRequest {
        request_id: rid(),
        office_id: "3275".into(),
        reservation_id: String::new(),
        reason: SpoilageReason::Other as i32,
        destruction_report_reference: String::new(),
        note: note.into(),
    };
    assert_eq!(
        refused_fields(counter.report_spoiled_blank(other(" ")).await),
        ["note"]
    );
    counter
        .report_spoiled_blank(other("tertumpah tinta"))
        .await?;
    assert_eq!(fixtures::stock_level(&mut stock, "3275").await?.on_hand, 99);

    // A weight beside a FIXED quota is out of range, not stored as if it meant something.
    let mut policy = fixtures::fixed(20);
    policy.weight = 5000;
    let set = SetQuotaPolicyRequest {
        request_id: rid(),
        office_id: "3275".into(),
        service_point_id: "main".into(),
        policy: Some(policy),
        todays_quota: None,
    };
    assert_eq!(
        refused_fields(stock.set_quota_policy(set).await),
        ["policy.weight"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_queue_report_holds_no_place_among_the_counters_of_a_service_point()
-> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    office_with_point(&mut stock, "3275", "main", 10, 10).await?;
    let report = |n: u32, waiting: u32| ReportQueueRequest {
        counter_id: format!("loket-{n}"),
        ..fixtures::queue_report("3275", "main", waiting)
    };
    // 256 counters report (the most a service point keeps), then all withdraw.
    for n in 0..256 {
        counter.report_queue(report(n, 1)).await?;
    }
    let full = counter
        .report_queue(report(256, 1))
        .await
        .expect_err("a 257th counter");
    assert_eq!(error_reason(&full).as_deref(), Some("TOO_MANY_COUNTERS"));
    for n in 0..256 {
        counter.report_queue(report(n, 0)).await?;
    }
    // The next counter is not refused: no report of the withdrawn ones counts.
    counter.report_queue(report(256, 5)).await?;
    let quota = fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
    assert_eq!(quota.waiting, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lists_are_refused_whole_and_errors_list_a_bounded_number_of_fields()
-> anyhow::Result<()> {
    // A list near the 4 MiB message limit must not be checked entry by entry (a duplicate check
    // per entry was quadratic and held a worker for hours), nor make one violation per entry.
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    fixtures::office(&mut stock, "3275", |_| {}).await?;
    let point = |holidays: Vec<String>, policy: QuotaPolicy| UpsertServicePointRequest {
        request_id: rid(),
        service_point: Some(ServicePoint {
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
            name: "Mal Pelayanan Publik".into(),
            kind: ServicePointKind::MainOffice as i32,
            service_days: vec![1; 200_000],
            holidays,
            policy: Some(policy),
        }),
    };
    let mut huge = fixtures::fixed(5);
    huge.priority_reasons = (1..=600_000).collect();
    huge.reason_caps = vec![ReasonCap::default(); 9];
    let err = stock
        .upsert_service_point(point(vec![String::new(); 100_000], huge))
        .await
        .expect_err("oversized lists");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let violations = blangko_e2e::field_violations(&err);
    let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "service_point.service_days",
            "service_point.holidays",
            "service_point.policy.priority_reasons",
            "service_point.policy.reason_caps",
        ]
    );
    assert!(
        violations[2].1.contains("at most 16 entries, got 600000"),
        "{violations:?}"
    );
    // Within the limits, every bad entry is named, up to 32 violations; the last says how many
    // more there were.
    let err = stock
        .upsert_service_point(point(vec![String::new(); 64], fixtures::fixed(5)))
        .await
        .expect_err("64 empty holidays and 200,000 weekdays");
    let violations = blangko_e2e::field_violations(&err);
    assert_eq!(violations.len(), 32, "{violations:?}");
    assert_eq!(violations[0].0, "service_point.service_days");
    assert_eq!(violations[1].0, "service_point.holidays[0]");
    assert!(
        violations[31].1.ends_with(
            "(and 33 more violations, not listed: at most 32 are, of at most 3072 bytes)"
        ),
        "{:?}",
        violations[31]
    );
    // Nothing was recorded, and the server still answers at once.
    let mut counter = server.counter_client().await?;
    let listed = counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
        })
        .await
        .expect_err("no such service point");
    assert_eq!(listed.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_across_offices_pages_by_office_and_filters_by_province() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        for (office, blanks) in [("3275", 500), ("3204", 300), ("3601", 2000), ("3216", 0)] {
            office_with_point(&mut stock, office, "main", 10, blanks).await?;
        }
        let mut counter = server.counter_client().await?;
        counter.reserve(reserve_request("3204", "main", 1)).await?;
        let page1 = stock
            .list_stock(ListStockRequest {
                province_code: "32".into(),
                page_size: 2,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        let ids: Vec<&str> = page1.stocks.iter().map(|s| s.office_id.as_str()).collect();
        assert_eq!(ids, vec!["3204", "3216"]);
        let page2 = stock
            .list_stock(ListStockRequest {
                province_code: "32".into(),
                page_size: 2,
                page_token: page1.next_page_token.clone(),
            })
            .await?
            .into_inner();
        let ids: Vec<&str> = page2.stocks.iter().map(|s| s.office_id.as_str()).collect();
        assert_eq!(ids, vec!["3275"]);
        assert!(page2.next_page_token.is_empty());
        let bandung = &page1.stocks[0];
        assert_eq!(
            (
                bandung.on_hand,
                bandung.held,
                bandung.available,
                bandung.today_quota,
                bandung.today_used
            ),
            (300, 1, 299, 10, 1)
        );
        assert!(
            !bandung.has_days_of_cover,
            "no use in the last 14 service days yet"
        );
        let all = stock
            .list_stock(ListStockRequest {
                province_code: String::new(),
                page_size: 0,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        assert_eq!(all.stocks.len(), 4);
        assert_eq!(
            all.stocks.iter().map(|s| u64::from(s.on_hand)).sum::<u64>(),
            2800
        );
        // Nobody has reserved at 3275 today: its quota is still that of each of its service
        // points, as GetQuota shows them (before, 0 until the first Reserve: the morning's
        // public notice said so).
        fixtures::service_point(&mut stock, "3275", "kec", fixtures::fixed(5)).await?;
        let main = fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
        let kec = fixtures::quota_snapshot(&mut counter, "3275", "kec").await?;
        // Both serve every day and have no holiday: open today, whatever the day.
        assert!(!main.closed && !kec.closed, "{main:?} {kec:?}");
        let expected = 15;
        assert_eq!(main.quota + kec.quota, expected);
        let bekasi = fixtures::stock_level(&mut stock, "3275").await?;
        assert_eq!((bekasi.today_quota, bekasi.today_used), (expected, 0));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counters_open_holds_list_in_pages_newest_first() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 50, 100).await?;
        let mut counter = server.counter_client().await?;
        for n in 0..7 {
            let mut request = reserve_request("3275", "main", n);
            request.counter_id = if n % 2 == 0 {
                "loket-2".into()
            } else {
                "loket-1".into()
            };
            counter.reserve(request).await?;
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = counter
                .list_reservations(ListReservationsRequest {
                    office_id: "3275".into(),
                    counter_id: "loket-2".into(),
                    state: ReservationState::Held as i32,
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            seen.extend(page.reservations);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let serials: Vec<String> = seen
            .iter()
            .map(|r| r.masked_nik[12..].to_string())
            .collect();
        assert_eq!(
            serials,
            vec!["0007", "0005", "0003", "0001"],
            "loket-2's holds, newest first"
        );
        assert!(
            seen.iter()
                .all(|r| r.counter_id == "loket-2" && r.state() == ReservationState::Held)
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_reports_forecast_each_counters_share_of_what_is_left() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 20, 100).await?;
        let mut counter = server.counter_client().await?;
        let report = |counter_id: &str, waiting: u32| ReportQueueRequest {
            office_id: "3275".into(),
            service_point_id: "main".into(),
            counter_id: counter_id.into(),
            waiting,
        };
        let alone = counter
            .report_queue(report("loket-1", 35))
            .await?
            .into_inner();
        assert_eq!((alone.expected_served, alone.expected_referred), (20, 15));
        let b = counter
            .report_queue(report("loket-2", 15))
            .await?
            .into_inner();
        assert_eq!(b.quota.unwrap_or_default().waiting, 50);
        // 20 left shared over 50 waiting: loket-2 with 15 expects floor(20 * 15 / 50) = 6.
        assert_eq!((b.expected_served, b.expected_referred), (6, 9));
        let a = counter
            .report_queue(report("loket-1", 35))
            .await?
            .into_inner();
        assert_eq!((a.expected_served, a.expected_referred), (14, 21));
        let err = counter
            .report_queue(report("loket-1", 100_001))
            .await
            .expect_err("bounded");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        // Invented counter ids cannot swell the queue without bound: 256 counters report (two
        // already have), the next new one is refused, and a known one still reports.
        for i in 3..=256 {
            counter
                .report_queue(report(&format!("loket-{i}"), 100))
                .await?;
        }
        let full = counter
            .report_queue(report("loket-257", 100))
            .await
            .expect_err("a 257th counter");
        assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
        assert_eq!(error_reason(&full).as_deref(), Some("TOO_MANY_COUNTERS"));
        let known = counter
            .report_queue(report("loket-2", 15))
            .await?
            .into_inner();
        assert_eq!(known.quota.unwrap_or_default().waiting, 35 + 15 + 254 * 100);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_gets_a_snapshot_at_once_and_after_each_change() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 5, 100).await?;
        let mut watch =
            fixtures::watch_quota(&mut server.counter_client().await?, "3275", "main").await?;
        assert_eq!(next_snapshot(&mut watch).await?.remaining, 5);
        let mut counter = server.counter_client().await?;
        counter.reserve(reserve_request("3275", "main", 1)).await?;
        let mut snapshot = next_snapshot(&mut watch).await?;
        while snapshot.held < 1 {
            snapshot = next_snapshot(&mut watch).await?;
        }
        assert_eq!((snapshot.held, snapshot.remaining), (1, 4));
        // A shipment changes the office's stock, so the watcher hears of it too.
        fixtures::ship(&mut stock, "3275", 50).await?;
        let mut snapshot = next_snapshot(&mut watch).await?;
        while snapshot.on_hand < 150 {
            snapshot = next_snapshot(&mut watch).await?;
        }
        assert_eq!(snapshot.available, 149);
        let err = server
            .counter_client()
            .await?
            .watch_quota(WatchQuotaRequest {
                office_id: "3275".into(),
                service_point_id: "nope".into(),
            })
            .await
            .expect_err("unknown service point");
        assert_eq!(err.code(), tonic::Code::NotFound);
        Ok(())
    })
    .await
}

/// `--watch-refresh-ms`: the first change after a quiet moment goes out at once, the next one no
/// sooner than the refresh interval after it, and it shows the latest state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_gets_changes_at_most_once_per_refresh_interval() -> anyhow::Result<()> {
    const REFRESH: Duration = Duration::from_secs(2);
    let server = TestServer::start_on(
        blangko_e2e::TestDatabase::sqlite().await?,
        &["--watch-refresh-ms", "2000"],
    )
    .await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 5, 100).await?;
    let mut watch =
        fixtures::watch_quota(&mut server.counter_client().await?, "3275", "main").await?;
    assert_eq!(next_snapshot(&mut watch).await?.held, 0);
    let mut counter = server.counter_client().await?;
    counter.reserve(reserve_request("3275", "main", 1)).await?;
    let first = next_snapshot(&mut watch).await?;
    let first_at = std::time::Instant::now();
    assert_eq!(first.held, 1, "the first change, at once");
    counter.reserve(reserve_request("3275", "main", 2)).await?;
    counter.reserve(reserve_request("3275", "main", 3)).await?;
    let second = next_snapshot(&mut watch).await?;
    let gap = first_at.elapsed();
    assert_eq!(second.held, 3, "the next snapshot shows the latest state");
    // The server waits REFRESH after sending the first; only a late first arrival could
    // shorten the gap seen here, and not by half of it.
    assert!(
        gap >= REFRESH / 2,
        "the second snapshot came {gap:?} after the first"
    );
    Ok(())
}

async fn next_snapshot(
    w: &mut tonic::Streaming<WatchQuotaResponse>,
) -> anyhow::Result<QuotaSnapshot> {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .map_err(|_| anyhow::anyhow!("no snapshot within 5 s"))?
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?
        .map(|r| r.quota.unwrap_or_default())
        .map_err(anyhow::Error::from)
}

/// An UpsertOffice with an update mask changes only the settings it names: a supervisor who
/// moves the next-supply date does not reset the office's zone, cap, IKD rule or hold time. A
/// named zero value still means its default; the fields it does not name are neither taken nor
/// checked; bad paths are refused field by field; an office that does not exist yet is created
/// from the named settings and the defaults, and only when the mask names its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_office_update_with_a_mask_changes_only_the_settings_it_names() -> anyhow::Result<()> {
    use blangko_e2e::field_violations;
    use prost_types::FieldMask;

    async fn upsert(
        stock: &mut blangko_proto::v1::stock_service_client::StockServiceClient<
            tonic::transport::Channel,
        >,
        office: Office,
        paths: &[&str],
    ) -> Result<Office, tonic::Status> {
        let answer = stock
            .upsert_office(UpsertOfficeRequest {
                request_id: rid(),
                office: Some(office),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            })
            .await?
            .into_inner();
        Ok(answer.office.unwrap_or_default())
    }
    let only_id = |id: &str| Office {
        office_id: id.into(),
        ..Office::default()
    };

    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        let created = fixtures::office(&mut stock, "9171", |o| {
            o.name = "Kota Jayapura".into();
            o.time_zone = "Asia/Jayapura".into();
            o.daily_cap = 200;
            o.expected_next_supply_date = "2027-01-15".into();
            o.fallback_horizon_days = 20;
            o.ikd_first_required = true;
            o.hold_ttl_secs = 600;
        })
        .await?;

        // Only the date moves; the request's empty name and zone and zero cap are not taken.
        let moved = Office {
            expected_next_supply_date: "2027-02-01".into(),
            ..only_id("9171")
        };
        let updated = upsert(&mut stock, moved, &["expected_next_supply_date"]).await?;
        let want = Office {
            expected_next_supply_date: "2027-02-01".into(),
            ..created.clone()
        };
        assert_eq!(updated, want);
        // Named zero values: the IKD rule off, the date cleared, the hold back to its default.
        let zeros = ["ikd_first_required", "expected_next_supply_date", "hold_ttl_secs"];
        let updated = upsert(&mut stock, only_id("9171"), &zeros).await?;
        let want = Office {
            ikd_first_required: false,
            expected_next_supply_date: String::new(),
            hold_ttl_secs: 1800,
            ..created.clone()
        };
        assert_eq!(updated, want);
        // The ledger says which settings the change named.
        let entries = stock
            .list_ledger_entries(ListLedgerEntriesRequest {
                office_id: "9171".into(),
                kind: LedgerEntryKind::PolicyChange as i32,
                page_size: 0,
                page_token: String::new(),
            })
            .await?
            .into_inner()
            .entries;
        let notes: Vec<&str> = entries.iter().map(|e| e.note.as_str()).collect();
        assert!(
            notes.iter().any(|n| n.starts_with(
                "office settings changed (ikd_first_required, expected_next_supply_date, hold_ttl_secs): name 'Kota Jayapura', zone Asia/Jayapura, daily cap 200"
            )),
            "{notes:?}"
        );

        // Only the named settings are checked: a bad cap is refused, the empty name, the
        // unknown zone and the over-long hold that the mask leaves out are not looked at.
        let bad = Office {
            time_zone: "Mars/Olympus".into(),
            daily_cap: 100_001,
            hold_ttl_secs: 999_999,
            ..only_id("9171")
        };
        let err = upsert(&mut stock, bad, &["daily_cap"])
            .await
            .expect_err("cap above the limit");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let fields: Vec<String> = field_violations(&err).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["office.daily_cap"]);
        // Paths that are not settings, or named twice, are refused one by one.
        let err = upsert(
            &mut stock,
            only_id("9171"),
            &["stock", "name", "name", "province_code"],
        )
        .await
        .expect_err("bad paths");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let violations = field_violations(&err);
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "update_mask.paths[0]",
                "update_mask.paths[2]",
                "update_mask.paths[3]",
                "office.name"
            ],
            "{violations:?}"
        );
        assert!(violations[1].1.contains("twice"), "{violations:?}");
        assert!(
            violations[0]
                .1
                .starts_with("is not a setting of an office; one of: name, "),
            "{violations:?}"
        );
        // An unknown path is not echoed back, however long: the answer stays small.
        let long = "\u{1}".repeat(300_000);
        let err = upsert(&mut stock, only_id("9171"), &[long.as_str()])
            .await
            .expect_err("an unknown, long path");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().len() < 1_000, "{}", err.message().len());
        assert!(err.details().len() < 1_000, "{}", err.details().len());
        // More paths than there are settings: one violation, for the list.
        let eight = ["name"; 8];
        let err = upsert(&mut stock, only_id("9171"), &eight)
            .await
            .expect_err("too many paths");
        let fields: Vec<String> = field_violations(&err).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["update_mask.paths"]);
        // Nothing of the refused calls was stored.
        let renamed = Office {
            name: "Kota Jayapura (Papua)".into(),
            ..only_id("9171")
        };
        let updated = upsert(&mut stock, renamed, &["name"]).await?;
        assert_eq!(
            updated,
            Office {
                name: "Kota Jayapura (Papua)".into(),
                ..want.clone()
            }
        );

        // A new office from a mask: the mask must name the name; then the settings it leaves
        // out take their defaults, whatever the request carried in them.
        let new_office = Office {
            name: "Kabupaten Jayapura".into(),
            time_zone: "Asia/Jayapura".into(),
            daily_cap: 50,
            ..only_id("9103")
        };
        let err = upsert(&mut stock, new_office.clone(), &["daily_cap"])
            .await
            .expect_err("no name for a new office");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let violations = field_violations(&err);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].0, "update_mask");
        let missing = stock
            .get_stock(GetStockRequest {
                office_id: "9103".into(),
            })
            .await
            .expect_err("not created");
        assert_eq!(missing.code(), tonic::Code::NotFound);
        let made = upsert(&mut stock, new_office, &["name", "daily_cap"]).await?;
        assert_eq!(
            made,
            Office {
                office_id: "9103".into(),
                name: "Kabupaten Jayapura".into(),
                time_zone: "Asia/Jakarta".into(),
                province_code: "91".into(),
                daily_cap: 50,
                expected_next_supply_date: String::new(),
                fallback_horizon_days: 10,
                ikd_first_required: false,
                hold_ttl_secs: 1800,
            }
        );

        // Without a mask the office is replaced as sent, as before: the empty zone is the
        // default zone.
        let replaced = fixtures::office(&mut stock, "9171", |o| o.time_zone = String::new()).await?;
        assert_eq!(
            (replaced.time_zone.as_str(), replaced.daily_cap),
            ("Asia/Jakarta", 0)
        );
        Ok(())
    })
    .await
}

/// Two UpsertOffice calls that create the same office at once (two supervisors, two replicas):
/// on PostgreSQL neither sees the other's row until it commits. A masked call that finds the
/// office created meanwhile updates only the settings it names, keeping the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_masked_creation_that_meets_another_keeps_what_the_other_set()
-> anyhow::Result<()> {
    use blangko_e2e::{TestDatabase, TestServer};
    use sqlx::Connection;

    if blangko_e2e::postgres::skip_postgres() {
        return Ok(());
    }
    let db = TestDatabase::new(blangko_e2e::Backend::Postgres).await?;
    let server = TestServer::start_on(db, &[]).await?;
    let stock = server.stock_client().await?;

    // The other call's office, inserted and not committed yet.
    sqlx::any::install_default_drivers();
    let mut other = sqlx::AnyConnection::connect(&server.db.url).await?;
    let mut watcher = sqlx::AnyConnection::connect(&server.db.url).await?;
    sqlx::query("BEGIN").execute(&mut other).await?;
    sqlx::query(
        "INSERT INTO offices (office_id, name, time_zone, province_code, daily_cap, expected_next_supply_date, fallback_horizon_days, ikd_first_required, hold_ttl_secs, on_hand, held, ledger_seq, ledger_head) VALUES ('9103', 'Kabupaten Jayapura', 'Asia/Jayapura', '91', 50, '', 10, 1, 1800, 0, 0, 0, $1)",
    )
    .bind(blangko_server::engine::ledger::GENESIS_HASH)
    .execute(&mut other)
    .await?;

    let call = tokio::spawn({
        let mut stock = stock.clone();
        async move {
            stock
                .upsert_office(UpsertOfficeRequest {
                    request_id: rid(),
                    office: Some(Office {
                        office_id: "9103".into(),
                        name: "Kab. Jayapura".into(),
                        hold_ttl_secs: 600,
                        ..Office::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["name".into(), "hold_ttl_secs".into()],
                    }),
                })
                .await
        }
    });
    // The masked call's insert now waits for the other transaction.
    assert!(
        blangko_e2e::postgres::lock_waited(&mut watcher, "INSERT INTO offices%").await?,
        "the masked creation never met the other's row"
    );
    sqlx::query("COMMIT").execute(&mut other).await?;

    let office = call.await??.into_inner().office.unwrap_or_default();
    assert_eq!(
        office,
        Office {
            office_id: "9103".into(),
            name: "Kab. Jayapura".into(),
            time_zone: "Asia/Jayapura".into(),
            province_code: "91".into(),
            daily_cap: 50,
            expected_next_supply_date: String::new(),
            fallback_horizon_days: 10,
            ikd_first_required: true,
            hold_ttl_secs: 600,
        }
    );
    let notes: Vec<String> = stock
        .clone()
        .list_ledger_entries(ListLedgerEntriesRequest {
            office_id: "9103".into(),
            kind: LedgerEntryKind::PolicyChange as i32,
            page_size: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.note)
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("office settings changed (name, hold_ttl_secs)"),
        "{notes:?}"
    );
    other.close().await?;
    watcher.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_midnight_that_passes_in_the_pause_after_a_snapshot_is_not_skipped() -> anyhow::Result<()>
{
    // The server's clock runs 20 s before midnight WIB, and waits 10 s after each snapshot it
    // sends. A Reserve 3 s before midnight sends one; midnight passes during the pause. The
    // new day's snapshot comes once the pause ends, not an hour later.
    let started = std::time::Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    const DAY_MS: i64 = 86_400_000;
    const WIB_MS: i64 = 7 * 3_600_000;
    let next_midnight_wib = ((now + WIB_MS) / DAY_MS + 1) * DAY_MS - WIB_MS;
    let clock =
        blangko_server::clock::SystemClock::with_offset_ms(next_midnight_wib - 20_000 - now);
    let server = TestServer::start_with_clock(
        blangko_e2e::TestDatabase::sqlite().await?,
        &["--watch-refresh-ms", "10000"],
        std::sync::Arc::new(clock),
    )
    .await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 5, 100).await?;
    let mut watch =
        fixtures::watch_quota(&mut server.counter_client().await?, "3275", "main").await?;
    let before = next_snapshot(&mut watch).await?;
    let mut counter = server.counter_client().await?;
    // Midnight is 20 s after `started` on the server's clock.
    tokio::time::sleep(Duration::from_secs(17).saturating_sub(started.elapsed())).await;
    counter.reserve(reserve_request("3275", "main", 1)).await?;
    let held = next_snapshot(&mut watch).await?;
    assert_eq!(held.held, 1, "{held:?}");
    assert_eq!(
        held.local_date, before.local_date,
        "the Reserve's snapshot came after midnight: the test's set-up took too long"
    );
    let after = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .map_err(|_| anyhow::anyhow!("no snapshot for the new day within 30 s"))?
        .ok_or_else(|| anyhow::anyhow!("stream ended"))??
        .quota
        .unwrap_or_default();
    assert!(
        after.local_date > before.local_date,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.held, 0, "a new day starts with nothing held");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_quota_turns_over_at_local_midnight_with_no_write() -> anyhow::Result<()> {
    // The server's clock runs 10 s before midnight WIB (room for a slow set-up on a busy
    // machine). A counter screen left open overnight gets the new day's snapshot at midnight by
    // itself, with no Reserve or report to trigger it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    const DAY_MS: i64 = 86_400_000;
    const WIB_MS: i64 = 7 * 3_600_000;
    let next_midnight_wib = ((now + WIB_MS) / DAY_MS + 1) * DAY_MS - WIB_MS;
    let clock =
        blangko_server::clock::SystemClock::with_offset_ms(next_midnight_wib - 10_000 - now);
    let server = TestServer::start_with_clock(
        blangko_e2e::TestDatabase::sqlite().await?,
        &[],
        std::sync::Arc::new(clock),
    )
    .await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 5, 100).await?;
    let mut watch =
        fixtures::watch_quota(&mut server.counter_client().await?, "3275", "main").await?;
    let before = next_snapshot(&mut watch).await?;
    let as_of_ms = before
        .as_of
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .ok_or_else(|| anyhow::anyhow!("a snapshot without as_of"))?;
    assert!(
        as_of_ms < next_midnight_wib,
        "the set-up took past the server's midnight: nothing left to watch"
    );
    let after = tokio::time::timeout(Duration::from_secs(40), watch.next())
        .await
        .map_err(|_| anyhow::anyhow!("no snapshot after midnight"))?
        .ok_or_else(|| anyhow::anyhow!("stream ended"))??
        .quota
        .unwrap_or_default();
    assert_ne!(
        after.local_date, before.local_date,
        "{before:?} -> {after:?}"
    );
    assert!(after.local_date > before.local_date);
    Ok(())
}
