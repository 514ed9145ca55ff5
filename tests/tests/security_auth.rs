//! Authentication and roles, end to end: every RPC × every role × own office / other office gets
//! the code one table says; missing or unknown tokens are UNAUTHENTICATED; the ledger records
//! the principal; tokens are added and revoked by SIGHUP without a restart or a dropped
//! connection; a server refuses a non-loopback address without a token file.

use std::time::Duration;

use anyhow::Context;

use blangko_e2e::fixtures::{EVERY_DAY, fixed, nik, rid};
use blangko_e2e::{AuthedChannel, TestDatabase, TestServer, TestTokens};
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::stock_service_client::StockServiceClient;
use blangko_proto::v1::*;
use tonic::Code;

/// The office of the counter and supervisor tokens.
const OWN: &str = "3275";
/// Another office.
const OTHER: &str = "3204";
/// A third office, the receiving end of transfers (in the same province as the others).
const THIRD: &str = "3216";
/// An office of another province (Banten).
const ELSEWHERE: &str = "3601";
/// The service point every office has (and the counter token is limited to).
const POINT: &str = "main";

/// The roles of the matrix; each has one token.
const ROLES: [&str; 4] = ["counter", "supervisor", "agency", "admin"];

/// THE table: which roles may call each RPC on their own office and on another office. Every
/// other combination must be PERMISSION_DENIED; without a token, UNAUTHENTICATED.
const MATRIX: &[(&str, &[&str], &[&str])] = &[
    // CounterService
    ("Reserve", &["counter", "supervisor", "admin"], &["admin"]),
    (
        "CommitReservation",
        &["counter", "supervisor", "admin"],
        &["admin"],
    ),
    (
        "CancelReservation",
        &["counter", "supervisor", "admin"],
        &["admin"],
    ),
    (
        "ReportSpoiledBlank",
        &["counter", "supervisor", "admin"],
        &["admin"],
    ),
    (
        "RecordIkdActivation",
        &["counter", "supervisor", "admin"],
        &["admin"],
    ),
    (
        "ListReservations",
        &["counter", "supervisor", "admin"],
        &["admin"],
    ),
    (
        "GetQuota",
        &["counter", "supervisor", "agency", "admin"],
        &["agency", "admin"],
    ),
    (
        "WatchQuota",
        &["counter", "supervisor", "admin"],
        &["admin"],
    ),
    (
        "ReportQueue",
        &["counter", "supervisor", "admin"],
        &["admin"],
    ),
    // StockService
    ("UpsertOffice", &["supervisor", "admin"], &["admin"]),
    ("UpsertServicePoint", &["supervisor", "admin"], &["admin"]),
    ("RecordShipment", &["supervisor", "admin"], &["admin"]),
    ("TransferStock", &["supervisor", "admin"], &["admin"]),
    ("AdjustStock", &["supervisor", "admin"], &["admin"]),
    ("SetQuotaPolicy", &["supervisor", "admin"], &["admin"]),
    (
        "GetStock",
        &["supervisor", "agency", "admin"],
        &["agency", "admin"],
    ),
    ("ListStock", &["agency", "admin"], &["agency", "admin"]),
    (
        "ListLedgerEntries",
        &["supervisor", "agency", "admin"],
        &["agency", "admin"],
    ),
    (
        "VerifyLedger",
        &["supervisor", "agency", "admin"],
        &["agency", "admin"],
    ),
    (
        "GetStockReport",
        &["supervisor", "agency", "admin"],
        &["agency", "admin"],
    ),
    // Open to everyone.
    (
        "GetServerInfo",
        &["counter", "supervisor", "agency", "admin", "none"],
        &["counter", "supervisor", "agency", "admin", "none"],
    ),
];

struct Clients {
    counter: CounterServiceClient<AuthedChannel>,
    stock: StockServiceClient<AuthedChannel>,
}

async fn clients(server: &TestServer, token: Option<&str>) -> anyhow::Result<Clients> {
    Ok(Clients {
        counter: server.counter_client_as(token).await?,
        stock: server.stock_client_as(token).await?,
    })
}

/// Sets up an office with one service point, a big stock and a big quota (as admin).
async fn setup_office(admin: &mut Clients, office_id: &str) -> anyhow::Result<()> {
    admin.stock.upsert_office(upsert_office(office_id)).await?;
    admin
        .stock
        .upsert_service_point(upsert_point(office_id))
        .await?;
    admin.stock.record_shipment(shipment(office_id)).await?;
    Ok(())
}

fn upsert_office(office_id: &str) -> UpsertOfficeRequest {
    UpsertOfficeRequest {
        request_id: rid(),
        office: Some(Office {
            office_id: office_id.into(),
            name: format!("Kantor {office_id}"),
            time_zone: "Asia/Jakarta".into(),
            ..Office::default()
        }),
        update_mask: None,
    }
}

fn upsert_point(office_id: &str) -> UpsertServicePointRequest {
    UpsertServicePointRequest {
        request_id: rid(),
        service_point: Some(ServicePoint {
            office_id: office_id.into(),
            service_point_id: POINT.into(),
            name: "Loket".into(),
            kind: ServicePointKind::MainOffice as i32,
            service_days: EVERY_DAY.iter().map(|d| *d as i32).collect(),
            holidays: vec![],
            policy: Some(fixed(10_000)),
        }),
    }
}

fn shipment(office_id: &str) -> RecordShipmentRequest {
    RecordShipmentRequest {
        request_id: rid(),
        office_id: office_id.into(),
        quantity: 10_000,
        reference: format!("DO-{}", rid()),
        note: String::new(),
    }
}

fn reserve(office_id: &str, n: u32) -> ReserveRequest {
    ReserveRequest {
        request_id: rid(),
        office_id: office_id.into(),
        service_point_id: POINT.into(),
        counter_id: "loket-1".into(),
        nik: nik(n),
        reason: Reason::DataChange as i32,
        ikd_status: IkdStatus::Active as i32,
    }
}

/// A fresh HELD reservation at `office_id`, made by the admin.
async fn held(admin: &mut Clients, office_id: &str, n: u32) -> anyhow::Result<String> {
    let answer = admin
        .counter
        .reserve(reserve(office_id, n))
        .await?
        .into_inner();
    match answer.outcome {
        Some(Outcome::Reservation(r)) => Ok(r.reservation_id),
        other => anyhow::bail!("expected a reservation, got {other:?}"),
    }
}

/// Calls `rpc` as `who` on `office_id`; Ok(()) or the status code. Needed state (a HELD
/// reservation to commit, ...) is prepared by the admin first, so an allowed call succeeds.
async fn call(
    rpc: &str,
    who: &mut Clients,
    admin: &mut Clients,
    office_id: &str,
    n: &mut u32,
) -> anyhow::Result<Result<(), Code>> {
    *n += 1;
    let n = *n;
    let to = if office_id == OWN { OTHER } else { OWN };
    let result = match rpc {
        "Reserve" => who.counter.reserve(reserve(office_id, n)).await.map(drop),
        "CommitReservation" => {
            let id = held(admin, office_id, n).await?;
            who.counter
                .commit_reservation(CommitReservationRequest {
                    request_id: rid(),
                    reservation_id: id,
                })
                .await
                .map(drop)
        }
        "CancelReservation" => {
            let id = held(admin, office_id, n).await?;
            who.counter
                .cancel_reservation(CancelReservationRequest {
                    request_id: rid(),
                    reservation_id: id,
                    note: String::new(),
                })
                .await
                .map(drop)
        }
        "ReportSpoiledBlank" => {
            let id = held(admin, office_id, n).await?;
            who.counter
                .report_spoiled_blank(ReportSpoiledBlankRequest {
                    request_id: rid(),
                    office_id: office_id.into(),
                    reservation_id: id,
                    reason: SpoilageReason::Misprint as i32,
                    destruction_report_reference: String::new(),
                    note: String::new(),
                })
                .await
                .map(drop)
        }
        "RecordIkdActivation" => who
            .counter
            .record_ikd_activation(RecordIkdActivationRequest {
                request_id: rid(),
                office_id: office_id.into(),
                service_point_id: POINT.into(),
                counter_id: "loket-1".into(),
                nik: nik(n),
            })
            .await
            .map(drop),
        "ListReservations" => who
            .counter
            .list_reservations(ListReservationsRequest {
                office_id: office_id.into(),
                service_point_id: POINT.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetQuota" => who
            .counter
            .get_quota(GetQuotaRequest {
                office_id: office_id.into(),
                service_point_id: POINT.into(),
            })
            .await
            .map(drop),
        "WatchQuota" => match who
            .counter
            .watch_quota(WatchQuotaRequest {
                office_id: office_id.into(),
                service_point_id: POINT.into(),
            })
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_secs(10), stream.message()).await? {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => anyhow::bail!("WatchQuota ended without a snapshot"),
                    Err(status) => Err(status),
                }
            }
            Err(status) => Err(status),
        },
        "ReportQueue" => who
            .counter
            .report_queue(ReportQueueRequest {
                office_id: office_id.into(),
                service_point_id: POINT.into(),
                counter_id: "loket-1".into(),
                waiting: 1,
            })
            .await
            .map(drop),
        "UpsertOffice" => who
            .stock
            .upsert_office(upsert_office(office_id))
            .await
            .map(drop),
        "UpsertServicePoint" => who
            .stock
            .upsert_service_point(upsert_point(office_id))
            .await
            .map(drop),
        "RecordShipment" => who
            .stock
            .record_shipment(shipment(office_id))
            .await
            .map(drop),
        "TransferStock" => who
            .stock
            .transfer_stock(TransferStockRequest {
                request_id: rid(),
                from_office_id: office_id.into(),
                to_office_id: if to == office_id {
                    THIRD.into()
                } else {
                    to.into()
                },
                quantity: 1,
                reference: String::new(),
                note: String::new(),
            })
            .await
            .map(drop),
        "AdjustStock" => who
            .stock
            .adjust_stock(AdjustStockRequest {
                request_id: rid(),
                office_id: office_id.into(),
                counted_on_hand: 50_000,
                note: "stock-take".into(),
                counted_as_of_seq: None,
            })
            .await
            .map(drop),
        "SetQuotaPolicy" => who
            .stock
            .set_quota_policy(SetQuotaPolicyRequest {
                request_id: rid(),
                office_id: office_id.into(),
                service_point_id: POINT.into(),
                policy: Some(fixed(10_000)),
                todays_quota: None,
            })
            .await
            .map(drop),
        "GetStock" => who
            .stock
            .get_stock(GetStockRequest {
                office_id: office_id.into(),
            })
            .await
            .map(drop),
        "ListStock" => who
            .stock
            .list_stock(ListStockRequest::default())
            .await
            .map(drop),
        "ListLedgerEntries" => who
            .stock
            .list_ledger_entries(ListLedgerEntriesRequest {
                office_id: office_id.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "VerifyLedger" => who
            .stock
            .verify_ledger(VerifyLedgerRequest {
                office_id: office_id.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetStockReport" => {
            // The office's today, whatever the machine's date: the range must not be in the future.
            let today = admin
                .stock
                .get_stock(GetStockRequest {
                    office_id: office_id.into(),
                })
                .await?
                .into_inner()
                .stock
                .unwrap_or_default()
                .local_date;
            who.stock
                .get_stock_report(GetStockReportRequest {
                    office_id: office_id.into(),
                    from_date: today.clone(),
                    to_date: today,
                })
                .await
                .map(drop)
        }
        "GetServerInfo" => who
            .stock
            .get_server_info(GetServerInfoRequest {})
            .await
            .map(drop),
        other => anyhow::bail!("no call for {other} in the test"),
    };
    Ok(result.map_err(|s| s.code()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_every_role_own_and_other_office_gets_the_expected_code() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    tokens.add("counter", "counter", Some(OWN), Some(POINT))?;
    tokens.add("supervisor", "supervisor", Some(OWN), None)?;
    tokens.add("agency", "agency", None, None)?;
    tokens.add("admin", "admin", None, None)?;
    let server = TestServer::start_on(db, &["--token-file", &tokens.arg()]).await?;
    let mut admin = clients(&server, Some(tokens.token("admin"))).await?;
    for office in [OWN, OTHER, THIRD] {
        setup_office(&mut admin, office).await?;
    }

    let mut n = 0;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (rpc, own_roles, other_roles) in MATRIX {
        for role in ROLES.iter().chain(std::iter::once(&"none")) {
            let token = (*role != "none").then(|| tokens.token(role).to_string());
            let mut who = clients(&server, token.as_deref()).await?;
            for (office, allowed) in [(OWN, own_roles), (OTHER, other_roles)] {
                let expected = if allowed.contains(role) {
                    Ok(())
                } else if *role == "none" {
                    Err(Code::Unauthenticated)
                } else {
                    Err(Code::PermissionDenied)
                };
                let got = call(rpc, &mut who, &mut admin, office, &mut n).await?;
                checked += 1;
                if got != expected {
                    failures.push(format!(
                        "{rpc} as {role} on {}: expected {expected:?}, got {got:?}",
                        if office == OWN {
                            "own office"
                        } else {
                            "other office"
                        }
                    ));
                }
            }
        }
    }
    assert_eq!(checked, MATRIX.len() * 5 * 2);
    assert!(
        failures.is_empty(),
        "{} wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Lending to another province is the ministry's: the supervisor is refused, nothing moves,
    // and an admin may.
    setup_office(&mut admin, ELSEWHERE).await?;
    let before = stock_of(&mut admin, ELSEWHERE).await?;
    let lend = || TransferStockRequest {
        request_id: rid(),
        from_office_id: OWN.into(),
        to_office_id: ELSEWHERE.into(),
        quantity: 1,
        reference: String::new(),
        note: String::new(),
    };
    let mut supervisor = clients(&server, Some(tokens.token("supervisor"))).await?;
    let refused = supervisor
        .stock
        .transfer_stock(lend())
        .await
        .expect_err("another province");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("another province"),
        "{refused:?}"
    );
    // The reason in Bahasa Indonesia too, not only that it was refused.
    let (locale, indonesian) =
        blangko_e2e::localized_message(&refused).context("no LocalizedMessage")?;
    assert_eq!(locale, "id-ID");
    assert!(
        indonesian.ends_with(
            "tidak boleh melakukan ini: pemindahan ke kantor di provinsi lain diatur oleh kementerian (token admin)"
        ),
        "{indonesian}"
    );
    assert_eq!(stock_of(&mut admin, ELSEWHERE).await?, before);
    admin.stock.transfer_stock(lend()).await?;
    assert_eq!(stock_of(&mut admin, ELSEWHERE).await?, before + 1);
    Ok(())
}

/// The blanks on hand at `office`.
async fn stock_of(who: &mut Clients, office: &str) -> anyhow::Result<u32> {
    Ok(who
        .stock
        .get_stock(GetStockRequest {
            office_id: office.into(),
        })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default()
        .on_hand)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_malformed_and_revoked_tokens_are_unauthenticated_and_the_ledger_names_the_principal()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    tokens.add("ops", "admin", None, None)?;
    tokens.add("spv-bekasi", "supervisor", Some(OWN), None)?;
    // A token revoked before the server starts: a well-formed token of a principal it no
    // longer knows.
    tokens.add("leaver", "admin", None, None)?;
    let revoked = tokens.token("leaver").to_string();
    tokens.revoke("leaver")?;
    let server = TestServer::start_on(db, &["--token-file", &tokens.arg()]).await?;
    let mut admin = clients(&server, Some(tokens.token("ops"))).await?;
    setup_office(&mut admin, OWN).await?;

    for bad in [
        "blk_0000",
        "",
        "Basic abc",
        &format!("{}x", tokens.token("ops")),
        revoked.as_str(),
    ] {
        let mut channel = server.channel().await?;
        let mut client = StockServiceClient::new(&mut channel);
        let mut request = tonic::Request::new(GetStockRequest {
            office_id: OWN.into(),
        });
        let value = if bad.starts_with("Basic") {
            bad.to_string()
        } else {
            format!("Bearer {bad}")
        };
        if let Ok(v) = value.parse() {
            request.metadata_mut().insert("authorization", v);
        }
        let status = client
            .get_stock(request)
            .await
            .expect_err("a bad token must fail");
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}: {status:?}");
        assert!(!status.message().contains(tokens.token("ops")));
        // Said in Bahasa Indonesia too, for the counter screen or kiosk that shows it.
        let (locale, indonesian) =
            blangko_e2e::localized_message(&status).context("no LocalizedMessage")?;
        assert_eq!(locale, "id-ID");
        assert!(
            [
                "kredensial tidak ada",
                "format kredensial salah",
                "token tidak dikenal"
            ]
            .iter()
            .any(|start| indonesian.starts_with(start)),
            "{bad:?}: {indonesian}"
        );
        assert!(!indonesian.contains(tokens.token("ops")));
    }

    // The ledger records who did it.
    let mut spv = clients(&server, Some(tokens.token("spv-bekasi"))).await?;
    spv.stock.record_shipment(shipment(OWN)).await?;
    let entries = admin
        .stock
        .list_ledger_entries(ListLedgerEntriesRequest {
            office_id: OWN.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries;
    let principals: Vec<&str> = entries.iter().map(|e| e.principal.as_str()).collect();
    assert_eq!(principals.first(), Some(&"ops"), "{principals:?}");
    assert_eq!(principals.last(), Some(&"spv-bekasi"), "{principals:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_adds_and_revokes_tokens_without_a_restart_or_a_dropped_connection()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    tokens.add("ops", "admin", None, None)?;
    let server = TestServer::spawn_process_on(db, &["--token-file", &tokens.arg()]).await?;
    let pid = server.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let mut ops = clients(&server, Some(tokens.token("ops"))).await?;
    setup_office(&mut ops, OWN).await?;

    // A new token is not valid before the reload...
    let new = tokens.add("kemendagri", "agency", None, None)?;
    let mut agency = clients(&server, Some(&new)).await?;
    let get = || GetStockRequest {
        office_id: OWN.into(),
    };
    assert_eq!(
        agency
            .stock
            .get_stock(get())
            .await
            .map(drop)
            .map_err(|s| s.code()),
        Err(Code::Unauthenticated)
    );
    let hup = || async {
        let status = tokio::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -HUP failed");
        Ok(())
    };
    hup().await?;
    // ...and valid after it, on the very same connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match agency.stock.get_stock(get()).await {
            Ok(_) => break,
            Err(s)
                if s.code() == Code::Unauthenticated && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => anyhow::bail!("the added token never became valid: {s:?}"),
        }
    }

    // Revoked: refused at the next call on the same connection, while others keep working.
    tokens.revoke("kemendagri")?;
    hup().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match agency.stock.get_stock(get()).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => anyhow::bail!("the revoked token still works: {other:?}"),
        }
    }
    ops.stock.get_stock(get()).await?;

    // A broken file on reload keeps the previous tokens (and the server alive).
    std::fs::write(&tokens.path, "garbage line\n")?;
    hup().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains("NOT reloaded") {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the broken file was never reported: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // After the failed reload, the tokens from before it still work.
    ops.stock.get_stock(get()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_revoked_while_the_server_starts_is_refused_without_another_sighup()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    tokens.add("ops", "admin", None, None)?;
    let leaked = tokens.add("leaked", "admin", None, None)?;
    let ops_token = tokens.token("ops").to_string();
    let file = tokens.arg();
    // The server has read the file with both tokens; the operator revokes one (and sends a
    // SIGHUP, which a starting server cannot act on) before it serves.
    let server =
        TestServer::start_with_step_before_serving(db, &["--token-file", &file], move || {
            tokens.revoke("leaked")
        })
        .await?;
    let get = || GetStockRequest {
        office_id: OWN.into(),
    };
    let mut ops = clients(&server, Some(&ops_token)).await?;
    let mut gone = clients(&server, Some(&leaked)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match gone.stock.get_stock(get()).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            // Served before the re-read (NOT_FOUND: no such office yet) while the server
            // starts; bounded.
            Err(s) if s.code() == Code::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => anyhow::bail!("the token revoked during start still works: {other:?}"),
        }
    }
    let kept = ops.stock.get_stock(get()).await.map_err(|s| s.code());
    assert_eq!(kept.map(drop), Err(Code::NotFound), "ops is still let in");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_only_loopback_is_allowed() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    // Non-loopback without a token file: refused, with the reason.
    let refused = TestServer::spawn_process_on(Arc::clone(&db), &["--listen", "0.0.0.0:0"]).await;
    let err = match refused {
        Ok(_) => anyhow::bail!("a server without a token file started on 0.0.0.0"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("without authentication"), "{err}");
    // Explicitly insecure: starts.
    let mut open = TestServer::spawn_process_on(
        Arc::clone(&db),
        &["--listen", "0.0.0.0:0", "--insecure-no-auth"],
    )
    .await?;
    assert!(
        open.log().contains("WITHOUT authentication"),
        "{}",
        open.log()
    );
    open.stop().await?;
    // The metrics endpoint has no authentication of its own: on an address other machines
    // reach, the start says so.
    let mut metrics =
        TestServer::spawn_process_on(Arc::clone(&db), &["--metrics-listen", "0.0.0.0:0"]).await?;
    assert!(
        metrics
            .log()
            .contains("the metrics endpoint has no authentication"),
        "{}",
        metrics.log()
    );
    metrics.stop().await?;
    let mut local =
        TestServer::spawn_process_on(Arc::clone(&db), &["--metrics-listen", "127.0.0.1:0"]).await?;
    assert!(
        !local
            .log()
            .contains("the metrics endpoint has no authentication"),
        "{}",
        local.log()
    );
    local.stop().await?;
    // Loopback without a token file: starts, warns, and every caller is "anonymous".
    let server = TestServer::start_on(db, &[]).await?;
    let mut anyone = clients(&server, None).await?;
    setup_office(&mut anyone, OWN).await?;
    let entries = anyone
        .stock
        .list_ledger_entries(ListLedgerEntriesRequest {
            office_id: OWN.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries;
    assert!(entries.iter().all(|e| e.principal == "anonymous"));
    Ok(())
}

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_subcommand_adds_lists_and_revokes_and_keeps_only_hashes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.txt");
    let file_arg = file.display().to_string();
    let server = |args: &[&str]| {
        let mut all = vec!["--token-file", file_arg.as_str(), "token"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        async move {
            anyhow::Ok(
                tokio::process::Command::new(blangko_e2e::server_bin())
                    .args(all)
                    .output()
                    .await?,
            )
        }
    };
    let out = server(&[
        "add",
        "loket-1",
        "--role",
        "counter",
        "--office",
        "3275",
        "--service-points",
        "mpp,main",
    ])
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    assert!(token.starts_with("blk_") && token.len() == 68, "{token}");
    let text = std::fs::read_to_string(&file)?;
    assert!(!text.contains(&token), "the file holds the token in clear");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file)?.permissions().mode() & 0o777,
            0o600
        );
    }
    // A counter without an office is refused, naming why.
    let out = server(&["add", "loket-2", "--role", "counter"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("office"));
    let out = server(&["list"]).await?;
    let listed = String::from_utf8(out.stdout)?;
    assert!(
        listed.contains("loket-1\tcounter\t3275\tmpp,main"),
        "{listed}"
    );
    assert!(!listed.contains(&token));
    let out = server(&["revoke", "loket-1"]).await?;
    assert!(out.status.success());
    let out = server(&["revoke", "loket-1"]).await?;
    assert!(!out.status.success(), "revoking twice must fail");
    let out = server(&["list"]).await?;
    assert!(String::from_utf8(out.stdout)?.trim().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_ids_are_the_callers_own_and_an_older_servers_answers_still_count()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    tokens.add("spv-bekasi", "supervisor", Some(OWN), None)?;
    tokens.add("spv-bandung", "supervisor", Some(OTHER), None)?;
    tokens.add("admin", "admin", None, None)?;
    let server = TestServer::start_on(db, &["--token-file", &tokens.arg()]).await?;
    let mut admin = clients(&server, Some(tokens.token("admin"))).await?;
    for office in [OWN, OTHER, THIRD] {
        setup_office(&mut admin, office).await?;
    }
    let mut bekasi = clients(&server, Some(tokens.token("spv-bekasi"))).await?;
    let mut bandung = clients(&server, Some(tokens.token("spv-bandung"))).await?;

    // Two offices' integrations that both number their deliveries "r1": each is recorded.
    let delivery = |office: &str| RecordShipmentRequest {
        request_id: "r1".into(),
        office_id: office.into(),
        quantity: 100,
        reference: format!("DO-{office}-1"),
        note: String::new(),
    };
    bekasi.stock.record_shipment(delivery(OWN)).await?;
    bandung.stock.record_shipment(delivery(OTHER)).await?;
    assert_eq!(stock_of(&mut admin, OWN).await?, 10_100);
    assert_eq!(stock_of(&mut admin, OTHER).await?, 10_100);
    // A retry by the same caller gets its first answer; nothing is recorded twice.
    bekasi.stock.record_shipment(delivery(OWN)).await?;
    assert_eq!(stock_of(&mut admin, OWN).await?, 10_100);
    // The same caller's id with other content is refused, naming only its own id.
    let reused = bekasi
        .stock
        .record_shipment(RecordShipmentRequest {
            quantity: 5,
            ..delivery(OWN)
        })
        .await
        .expect_err("r1 again, other content");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().contains("request_id 'r1'"), "{reused:?}");
    // An id that spells another caller's scope is just an id: no row of that caller is met.
    bandung
        .stock
        .record_shipment(RecordShipmentRequest {
            request_id: "spv-bekasi:r1".into(),
            reference: format!("DO-{OTHER}-2"),
            ..delivery(OTHER)
        })
        .await?;
    assert_eq!(stock_of(&mut admin, OTHER).await?, 10_200);

    // An answer stored by an older server, under the id alone (as if before an upgrade): a
    // retry of that transfer still gets it, and the blanks move once.
    let transfer = TransferStockRequest {
        request_id: "pinjam-7".into(),
        from_office_id: OWN.into(),
        to_office_id: THIRD.into(),
        quantity: 3,
        reference: "PINJAM-7".into(),
        note: String::new(),
    };
    bekasi.stock.transfer_stock(transfer.clone()).await?;
    assert_eq!(stock_of(&mut admin, THIRD).await?, 10_003);
    let file = server
        .db
        .sqlite_file()
        .ok_or_else(|| anyhow::anyhow!("SQLite"))?;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", file.display())).await?;
    let renamed =
        sqlx::query("UPDATE idempotency SET request_id = 'pinjam-7' WHERE request_id = $1")
            .bind("spv-bekasi\u{1f}pinjam-7")
            .execute(&pool)
            .await?;
    assert_eq!(renamed.rows_affected(), 1);
    pool.close().await;
    let again = bekasi.stock.transfer_stock(transfer).await?.into_inner();
    assert_eq!(again.to_stock.unwrap_or_default().on_hand, 10_003);
    assert_eq!(stock_of(&mut admin, THIRD).await?, 10_003);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_ends_when_its_token_is_revoked_and_one_caller_holds_a_bounded_number()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    tokens.add("loket-1", "counter", Some(OWN), None)?;
    tokens.add("loket-2", "counter", Some(OWN), None)?;
    tokens.add("admin", "admin", None, None)?;
    let server = TestServer::start_on(
        db,
        &[
            "--token-file",
            &tokens.arg(),
            "--max-watchers-per-caller",
            "2",
        ],
    )
    .await?;
    let mut admin = clients(&server, Some(tokens.token("admin"))).await?;
    setup_office(&mut admin, OWN).await?;
    let watch = || WatchQuotaRequest {
        office_id: OWN.into(),
        service_point_id: POINT.into(),
    };
    let mut one = clients(&server, Some(tokens.token("loket-1"))).await?;
    let mut first = one.counter.watch_quota(watch()).await?.into_inner();
    first.message().await?.context("a first snapshot")?;
    let second = one.counter.watch_quota(watch()).await?.into_inner();

    // A third stream of the same caller is refused; another caller is not held back by it.
    let refused = one
        .counter
        .watch_quota(watch())
        .await
        .expect_err("a third stream of one caller");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        blangko_e2e::error_reason(&refused).as_deref(),
        Some("TOO_MANY_WATCHERS")
    );
    let mut two = clients(&server, Some(tokens.token("loket-2"))).await?;
    let mut other = two.counter.watch_quota(watch()).await?.into_inner();
    other.message().await?.context("a first snapshot")?;
    // Admins (the ministry's dashboards) are bound by --max-watchers alone.
    let mut dashboards = Vec::new();
    for _ in 0..3 {
        let mut stream = admin.counter.watch_quota(watch()).await?.into_inner();
        stream.message().await?.context("a first snapshot")?;
        dashboards.push(stream);
    }

    // A stream closed gives its seat back (once the server has seen it go).
    drop(second);
    let mut reopened = None;
    for _ in 0..200 {
        match one.counter.watch_quota(watch()).await {
            Ok(stream) => {
                reopened = Some(stream.into_inner());
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
    let mut reopened = reopened.context("the closed stream's seat never came back")?;
    reopened.message().await?.context("a first snapshot")?;

    // loket-1's token is revoked: at the reload its streams end, saying why; loket-2's go on.
    tokens.revoke("loket-1")?;
    server.reload_tokens()?;
    for stream in [&mut first, &mut reopened] {
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .context("the revoked caller's stream did not end")?;
        let status = end.expect_err("ended with a status");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    admin.counter.reserve(reserve(OWN, 1)).await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let snapshot = other.message().await?.context("loket-2's stream ended")?;
            if snapshot.quota.is_some_and(|q| q.held == 1) {
                return anyhow::Ok(());
            }
        }
    })
    .await;
    assert!(
        matches!(seen, Ok(Ok(()))),
        "loket-2 saw the Reserve: {seen:?}"
    );
    Ok(())
}

/// `token revoke` (and `token add`) replace the token file by a rename, and a rename lasts
/// through a power loss only once the directory is synced: without it a revoked token could be
/// back in the file after the power came back. Seen with `strace` (`-y` names each descriptor's
/// file): the rename onto the token file, then an fsync of its directory, before the command
/// ends.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_token_revoke_syncs_the_directory_after_its_rename() -> anyhow::Result<()> {
    let have_strace = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_strace {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI must have strace (.ci/run installs it)"
        );
        return blangko_e2e::skipped("strace is not installed");
    }
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    tokens.add("leaver", "counter", Some("3275"), None)?;
    tokens.add("stays", "counter", Some("3275"), None)?;
    let dir = std::fs::canonicalize(db.dir.path())?;
    let file = std::fs::canonicalize(&tokens.path)?;
    let trace = dir.join("revoke.trace");
    let mut command = tokio::process::Command::new("strace");
    blangko_e2e::without_blangko_env(&mut command);
    let run = command
        .args([
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=fsync,rename,renameat,renameat2",
            "-o",
        ])
        .arg(&trace)
        .arg(blangko_e2e::server_bin())
        .arg("--token-file")
        .arg(&file)
        .args(["token", "revoke", "leaver"])
        .output()
        .await?;
    assert!(run.status.success(), "{run:?}");
    let text = std::fs::read_to_string(&trace)?;
    let renamed = text
        .lines()
        .position(|l| l.contains("rename") && l.contains(&format!("\"{}\"", file.display())))
        .with_context(|| format!("no rename onto {}:\n{text}", file.display()))?;
    let dir_synced = text
        .lines()
        .skip(renamed)
        .any(|l| l.contains("fsync(") && l.contains(&format!("<{}>)", dir.display())));
    assert!(
        dir_synced,
        "the directory {} was not synced after the rename:\n{text}",
        dir.display()
    );
    let left = std::fs::read_to_string(&file)?;
    assert!(!left.contains("leaver") && left.contains("stays"), "{left}");
    Ok(())
}
