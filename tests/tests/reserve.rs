//! Reserve end to end over gRPC, on every backend: the quota is exact under concurrency, one
//! person gets one blank a day, idempotency, and bad input.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use blangko_e2e::fixtures::{self, nik, office_with_point, reserve_request, rid};
use blangko_e2e::{TestServer, error_reason, field_violations, on_each_backend};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use tokio_stream::StreamExt;

/// Connections the concurrency tests spread their calls over.
const CONNECTIONS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reserve_holds_one_blank_and_answers_the_snapshot() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let expected_kind = match db.backend {
            blangko_e2e::Backend::Sqlite => "sqlite",
            blangko_e2e::Backend::Postgres => "postgres",
        };
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        let info = stock
            .get_server_info(GetServerInfoRequest {})
            .await?
            .into_inner();
        assert_eq!(info.database_kind, expected_kind);
        office_with_point(&mut stock, "3275", "main", 5, 10).await?;
        let mut counter = server.counter_client().await?;
        let answer = counter
            .reserve(reserve_request("3275", "main", 1))
            .await?
            .into_inner();
        let Some(Outcome::Reservation(r)) = answer.outcome else {
            anyhow::bail!("expected a reservation, got {:?}", answer.outcome);
        };
        assert_eq!(r.state(), ReservationState::Held);
        assert_eq!(r.masked_nik, fixtures::masked(1));
        assert!(!r.masked_nik.contains(&nik(1)[6..12]));
        let created = r.created_at.unwrap_or_default().seconds;
        let expires = r.expires_at.unwrap_or_default().seconds;
        assert_eq!(expires - created, 1800, "default hold is 30 minutes");
        assert!(!r.replayed);
        let q = answer.quota.unwrap_or_default();
        assert_eq!((q.quota, q.held, q.committed, q.remaining), (5, 1, 0, 4));
        assert_eq!((q.on_hand, q.available), (10, 9));
        assert_eq!(
            stock
                .get_stock(GetStockRequest {
                    office_id: "3275".into()
                })
                .await?
                .into_inner()
                .stock
                .unwrap_or_default()
                .held,
            1
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_hundred_concurrent_reserves_get_exactly_the_quota_of_137() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::spawn_process_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 137, 1000).await?;

        // A watcher records every snapshot it sees during the burst.
        let mut watch =
            fixtures::watch_quota(&mut server.counter_client().await?, "3275", "main").await?;
        let burst_over = Arc::new(AtomicBool::new(false));
        let watcher = {
            let burst_over = burst_over.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    // Snapshots come at most every 200 ms under a burst; the last one after it.
                    match tokio::time::timeout(std::time::Duration::from_secs(2), watch.next())
                        .await
                    {
                        Ok(Some(Ok(s))) => {
                            let q = s.quota.unwrap_or_default();
                            seen.push((q.quota, q.held, q.committed));
                        }
                        Ok(_) => break,
                        Err(_) if burst_over.load(Ordering::SeqCst) => break,
                        Err(_) => {}
                    }
                }
                seen
            })
        };

        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(server.counter_client().await?);
        }
        let mut tasks = Vec::new();
        for n in 0..600u32 {
            let mut client = clients[n as usize % CONNECTIONS].clone();
            tasks.push(tokio::spawn(async move {
                client.reserve(reserve_request("3275", "main", n)).await
            }));
        }
        let (mut reserved, mut referred) = (0, 0);
        let mut ids = HashSet::new();
        for task in tasks {
            let answer = task.await??.into_inner();
            match answer.outcome {
                Some(Outcome::Reservation(r)) => {
                    reserved += 1;
                    ids.insert(r.reservation_id);
                }
                Some(Outcome::IkdReferral(i)) => {
                    assert_eq!(i.cause(), ReferralCause::QuotaExhausted);
                    referred += 1;
                }
                None => anyhow::bail!("an answer without outcome"),
            }
            let q = answer.quota.unwrap_or_default();
            assert!(
                q.held + q.committed <= q.quota,
                "snapshot over quota: {q:?}"
            );
        }
        assert_eq!((reserved, referred), (137, 463));
        assert_eq!(ids.len(), 137, "every reservation has its own id");
        burst_over.store(true, Ordering::SeqCst);
        let seen = watcher.await?;
        assert!(!seen.is_empty(), "the watcher saw snapshots");
        // However few snapshots a burst sends, the last one shows where it ended.
        assert_eq!(
            seen.last(),
            Some(&(137, 137, 0)),
            "the watcher's last snapshot"
        );
        for (quota, held, committed) in &seen {
            assert!(
                held + committed <= *quota,
                "watcher saw {held}+{committed} > {quota}"
            );
        }
        let q = server
            .counter_client()
            .await?
            .get_quota(GetQuotaRequest {
                office_id: "3275".into(),
                service_point_id: "main".into(),
            })
            .await?
            .into_inner()
            .quota
            .unwrap_or_default();
        assert_eq!((q.held, q.remaining, q.available), (137, 0, 863));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reserves_of_one_nik_give_one_reservation() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 100, 100).await?;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(server.counter_client().await?);
        }
        let mut tasks = Vec::new();
        for i in 0..50usize {
            let mut client = clients[i % CONNECTIONS].clone();
            tasks.push(tokio::spawn(async move {
                client.reserve(reserve_request("3275", "main", 7)).await
            }));
        }
        let mut ids = HashSet::new();
        let fresh = AtomicU32::new(0);
        for task in tasks {
            match task.await??.into_inner().outcome {
                Some(Outcome::Reservation(r)) => {
                    if !r.replayed {
                        fresh.fetch_add(1, Ordering::SeqCst);
                    }
                    ids.insert(r.reservation_id);
                }
                other => anyhow::bail!("expected a reservation, got {other:?}"),
            }
        }
        assert_eq!(ids.len(), 1, "all 50 answers carry the same reservation");
        assert_eq!(
            fresh.load(Ordering::SeqCst),
            1,
            "49 answers are marked replayed"
        );
        let q = stock_quota(&server).await?;
        assert_eq!(q.held, 1);
        Ok(())
    })
    .await
}

async fn stock_quota(server: &TestServer) -> anyhow::Result<QuotaSnapshot> {
    fixtures::quota_snapshot(&mut server.counter_client().await?, "3275", "main").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_nik_elsewhere_is_already_reserved_elsewhere() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 100).await?;
        fixtures::service_point(&mut stock, "3275", "mpp", fixtures::fixed(10)).await?;
        office_with_point(&mut stock, "3204", "main", 10, 100).await?;
        let mut counter = server.counter_client().await?;
        counter.reserve(reserve_request("3275", "main", 9)).await?;
        for (office, sp) in [("3275", "mpp"), ("3204", "main")] {
            let err = counter
                .reserve(reserve_request(office, sp, 9))
                .await
                .expect_err("a second blank for the same person");
            assert_eq!(err.code(), tonic::Code::FailedPrecondition);
            assert_eq!(
                error_reason(&err).as_deref(),
                Some("ALREADY_RESERVED_ELSEWHERE")
            );
        }
        // Nothing was taken by the refused calls: 3275 holds the first blank only, its MPP
        // none, and 3204 none.
        assert_eq!(fixtures::stock_level(&mut stock, "3275").await?.held, 1);
        assert_eq!(fixtures::stock_level(&mut stock, "3204").await?.held, 0);
        let mpp = fixtures::quota_snapshot(&mut counter, "3275", "mpp").await?;
        assert_eq!((mpp.held, mpp.committed), (0, 0));
        let main = fixtures::quota_snapshot(&mut counter, "3275", "main").await?;
        assert_eq!(main.held, 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_replays_its_first_answer_and_refuses_other_content() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 100).await?;
        let mut counter = server.counter_client().await?;
        let request = reserve_request("3275", "main", 11);
        let first = counter.reserve(request.clone()).await?.into_inner();
        let again = counter.reserve(request.clone()).await?.into_inner();
        let (Some(Outcome::Reservation(a)), Some(Outcome::Reservation(b))) =
            (first.outcome, again.outcome)
        else {
            anyhow::bail!("expected reservations");
        };
        assert_eq!(a.reservation_id, b.reservation_id);
        assert!(b.replayed && !a.replayed);
        let mut other = request.clone();
        other.nik = nik(12);
        let err = counter
            .reserve(other)
            .await
            .expect_err("same id, other content");
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert_eq!(error_reason(&err).as_deref(), Some("REQUEST_ID_REUSED"));
        assert_eq!(stock_quota(&server).await?.held, 1);

        // A delivery reference behaves the same way.
        let shipment = RecordShipmentRequest {
            request_id: rid(),
            office_id: "3275".into(),
            quantity: 500,
            reference: "BA-2026-11-500".into(),
            note: String::new(),
        };
        let s1 = stock.record_shipment(shipment.clone()).await?.into_inner();
        let mut retry = shipment.clone();
        retry.request_id = rid();
        let s2 = stock.record_shipment(retry).await?.into_inner();
        assert!(!s1.replayed && s2.replayed);
        assert_eq!(s2.stock.unwrap_or_default().on_hand, 600, "counted once");
        let mut wrong = shipment.clone();
        wrong.request_id = rid();
        wrong.quantity = 50;
        let err = stock
            .record_shipment(wrong)
            .await
            .expect_err("reference reused");
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert_eq!(error_reason(&err).as_deref(), Some("REFERENCE_REUSED"));
        // The same reference with a space after it is not another delivery: refused, naming
        // the field, and nothing is booked.
        let mut spaced = shipment.clone();
        spaced.request_id = rid();
        spaced.reference = "BA-2026-11-500 ".into();
        let err = stock
            .record_shipment(spaced)
            .await
            .expect_err("a reference with a trailing space");
        assert_eq!(
            blangko_e2e::field_violations(&err)[0].0,
            "reference",
            "{err:?}"
        );
        assert_eq!(
            fixtures::stock_level(&mut stock, "3275").await?.on_hand,
            600,
            "booked once"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_names_every_bad_field_and_changes_nothing() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 100).await?;
        let mut counter = server.counter_client().await?;
        let cases: Vec<(ReserveRequest, Vec<&str>)> = vec![
            (
                ReserveRequest {
                    request_id: String::new(),
                    nik: "3275".into(),
                    reason: 0,
                    ..reserve_request("3275", "main", 1)
                },
                vec!["request_id", "nik", "reason"],
            ),
            (
                ReserveRequest {
                    nik: "9775014101900001".into(),
                    ..reserve_request("3275", "main", 1)
                },
                vec!["nik"],
            ),
            (
                ReserveRequest {
                    nik: "3275013104900001".into(),
                    ..reserve_request("3275", "main", 1)
                },
                vec!["nik"],
            ),
            (
                ReserveRequest {
                    nik: "3275014101900000".into(),
                    ..reserve_request("3275", "main", 1)
                },
                vec!["nik"],
            ),
            (
                ReserveRequest {
                    reason: 99,
                    ikd_status: 42,
                    ..reserve_request("3275", "main", 1)
                },
                vec!["reason", "ikd_status"],
            ),
            (
                ReserveRequest {
                    office_id: "20AB".into(),
                    counter_id: "x".repeat(65),
                    ..reserve_request("3275", "main", 1)
                },
                vec!["office_id", "counter_id"],
            ),
            (
                ReserveRequest {
                    request_id: "r".repeat(65),
                    ..reserve_request("3275", "main", 1)
                },
                vec!["request_id"],
            ),
        ];
        for (request, fields) in cases {
            let err = counter.reserve(request).await.expect_err("invalid request");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            let violations = field_violations(&err);
            let named: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
            assert_eq!(named, fields, "{violations:?}");
            assert!(violations.iter().all(|(_, why)| !why.is_empty()));
            assert!(
                !err.message().contains("327501"),
                "no NIK in messages: {}",
                err.message()
            );
        }
        // Separators are accepted.
        let ok = counter
            .reserve(ReserveRequest {
                nik: "3275.0141-0190 0001".into(),
                ..reserve_request("3275", "main", 0)
            })
            .await?
            .into_inner();
        assert!(matches!(ok.outcome, Some(Outcome::Reservation(_))));
        // Unknown office and service point: NOT_FOUND.
        let err = counter
            .reserve(reserve_request("3204", "main", 2))
            .await
            .expect_err("unknown office");
        assert_eq!(err.code(), tonic::Code::NotFound);
        let err = counter
            .reserve(reserve_request("3275", "nowhere", 2))
            .await
            .expect_err("unknown sp");
        assert_eq!(err.code(), tonic::Code::NotFound);
        // Out-of-range quantities and an unknown zone.
        let err = stock
            .record_shipment(RecordShipmentRequest {
                request_id: rid(),
                office_id: "3275".into(),
                quantity: 1_000_001,
                reference: "X".into(),
                note: String::new(),
            })
            .await
            .expect_err("too many");
        assert_eq!(field_violations(&err)[0].0, "quantity");
        let err = stock
            .record_shipment(RecordShipmentRequest {
                request_id: rid(),
                office_id: "3275".into(),
                quantity: 0,
                reference: String::new(),
                note: String::new(),
            })
            .await
            .expect_err("zero");
        let named: Vec<String> = field_violations(&err).into_iter().map(|(f, _)| f).collect();
        assert_eq!(named, vec!["quantity", "reference"]);
        let err = fixtures::office(&mut stock, "3276", |o| {
            o.time_zone = "Asia/Singapore".into()
        })
        .await
        .expect_err("zone");
        let status = err
            .downcast_ref::<tonic::Status>()
            .cloned()
            .unwrap_or_else(|| tonic::Status::unknown(""));
        assert_eq!(field_violations(&status)[0].0, "office.time_zone");
        // Nothing above changed the stock: one reservation held, 100 on hand.
        let s = stock
            .get_stock(GetStockRequest {
                office_id: "3275".into(),
            })
            .await?
            .into_inner()
            .stock
            .unwrap_or_default();
        assert_eq!((s.on_hand, s.held), (100, 1));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_stock_runs_out_the_applicant_is_referred_out_of_stock() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let server = TestServer::start_on(db, &[]).await?;
        let mut stock = server.stock_client().await?;
        office_with_point(&mut stock, "3275", "main", 10, 2).await?;
        let mut counter = server.counter_client().await?;
        for n in 0..2 {
            let a = counter
                .reserve(reserve_request("3275", "main", n))
                .await?
                .into_inner();
            assert!(matches!(a.outcome, Some(Outcome::Reservation(_))));
        }
        let a = counter
            .reserve(reserve_request("3275", "main", 3))
            .await?
            .into_inner();
        let Some(Outcome::IkdReferral(referral)) = a.outcome else {
            anyhow::bail!("expected a referral");
        };
        assert_eq!(referral.cause(), ReferralCause::OutOfStock);
        assert!(
            referral.message_indonesian.contains("IKD"),
            "{}",
            referral.message_indonesian
        );
        assert!(!referral.message_english.is_empty());
        assert!(referral.activation_steps_indonesian.len() >= 3);
        assert_eq!(a.quota.unwrap_or_default().available, 0);
        Ok(())
    })
    .await
}
