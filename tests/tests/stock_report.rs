//! The daily stock report, end to end on SQLite and PostgreSQL: three days of an office's life
//! (shipment, reservations, prints, spoiled blanks, transfers both ways, a stock-take, IKD
//! referrals and an activation) under a controlled clock, then `blangko-counter report` as a
//! user runs it: the table's figures per day and its reconciliation line, the CSV rows, the SVG
//! (parsed as XML) and the errors of a bad range. Finally one ledger balance is tampered with in
//! the database, and the report names the day that no longer adds up.

use std::sync::Arc;
use std::time::Duration;

use blangko_e2e::fixtures::{office, office_with_point, reserve_request, rid, ship};
use blangko_e2e::{TestDatabase, TestServer, counter_bin, field_violations, on_each_backend};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::stock_service_client::StockServiceClient;
use blangko_proto::v1::*;
use blangko_server::clock::ManualClock;
use sqlx::any::install_default_drivers;
use tonic::Code;
use tonic::transport::Channel;

/// Tuesday 2026-12-01 08:00 WIB.
const TUESDAY_8AM_WIB_MS: i64 = 1_796_086_800_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// Runs the client against `server` and gives (exit code, stdout, stderr).
async fn client(server: &TestServer, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(counter_bin())
            .args(["--server", &server.url, "--office", "3275"])
            .args(args)
            .output(),
    )
    .await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

async fn reserve(
    counter: &mut blangko_proto::v1::counter_service_client::CounterServiceClient<Channel>,
    n: u32,
) -> anyhow::Result<Outcome> {
    counter
        .reserve(reserve_request("3275", "main", n))
        .await?
        .into_inner()
        .outcome
        .ok_or_else(|| anyhow::anyhow!("no outcome"))
}

async fn held(
    counter: &mut blangko_proto::v1::counter_service_client::CounterServiceClient<Channel>,
    n: u32,
) -> anyhow::Result<String> {
    match reserve(counter, n).await? {
        Outcome::Reservation(r) => Ok(r.reservation_id),
        Outcome::IkdReferral(r) => anyhow::bail!("applicant {n} referred: {:?}", r.cause),
    }
}

fn commit(id: &str) -> CommitReservationRequest {
    CommitReservationRequest {
        request_id: rid(),
        reservation_id: id.into(),
    }
}

fn spoil(id: &str) -> ReportSpoiledBlankRequest {
    ReportSpoiledBlankRequest {
        request_id: rid(),
        office_id: "3275".into(),
        reservation_id: id.into(),
        reason: SpoilageReason::Misprint as i32,
        destruction_report_reference: "BA-07/2026".into(),
        note: String::new(),
    }
}

async fn transfer(
    stock: &mut StockServiceClient<Channel>,
    from: &str,
    to: &str,
    quantity: u32,
) -> anyhow::Result<()> {
    stock
        .transfer_stock(TransferStockRequest {
            request_id: rid(),
            from_office_id: from.into(),
            to_office_id: to.into(),
            quantity,
            reference: "SPT-1".into(),
            note: String::new(),
        })
        .await?;
    Ok(())
}

/// The cells of the table row of `date` (split on whitespace).
fn row<'a>(table: &'a str, date: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.starts_with(date))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default()
}

/// Day 1 (Tue 2026-12-01), day 2 (Wed) and day 3 (Thu, nothing happens) of office 3275, whose
/// one service point has a FIXED quota of 2 a day.
async fn three_days(server: &TestServer, clock: &ManualClock) -> anyhow::Result<()> {
    let mut stock = server.stock_client().await?;
    let mut counter = server.counter_client().await?;
    office_with_point(&mut stock, "3275", "main", 2, 100).await?;
    office(&mut stock, "3204", |_| {}).await?;
    ship(&mut stock, "3204", 20).await?;

    // Day 1: received 100; two holds, both printed, one reprint after a spoiled blank, one
    // defective blank found in stock; the third applicant is referred to IKD (quota 2) and
    // activates IKD; 10 blanks lent to 3204.
    let a = held(&mut counter, 0).await?;
    let b = held(&mut counter, 1).await?;
    match reserve(&mut counter, 2).await? {
        Outcome::IkdReferral(r) => assert_eq!(r.cause, ReferralCause::QuotaExhausted as i32),
        other => anyhow::bail!("expected a referral, got {other:?}"),
    }
    counter.commit_reservation(commit(&a)).await?;
    counter.report_spoiled_blank(spoil(&b)).await?;
    counter.commit_reservation(commit(&b)).await?;
    counter.report_spoiled_blank(spoil("")).await?;
    counter
        .record_ikd_activation(blangko_e2e::fixtures::ikd_activation("3275", "main", 2))
        .await?;
    transfer(&mut stock, "3275", "3204", 10).await?;

    // Day 2: 5 blanks come back from 3204; one printed; the stock-take counts 88 of 90 (two
    // missing); one hold stays open; the next applicant is referred.
    clock.advance_ms(DAY_MS);
    transfer(&mut stock, "3204", "3275", 5).await?;
    let c = held(&mut counter, 3).await?;
    counter.commit_reservation(commit(&c)).await?;
    stock
        .adjust_stock(AdjustStockRequest {
            request_id: rid(),
            office_id: "3275".into(),
            counted_on_hand: 88,
            note: "stock opname: two blanks missing".into(),
            counted_as_of_seq: None,
        })
        .await?;
    held(&mut counter, 4).await?;
    match reserve(&mut counter, 5).await? {
        Outcome::IkdReferral(_) => {}
        other => anyhow::bail!("expected a referral, got {other:?}"),
    }

    // Day 3: the open hold expires in the morning; no blank moves.
    clock.advance_ms(DAY_MS + HOUR_MS);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_adds_up_day_by_day_as_table_csv_and_svg() -> anyhow::Result<()> {
    on_each_backend(|db: Arc<TestDatabase>| async move {
        install_default_drivers();
        let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
        let server = TestServer::start_with_clock(db.clone(), &[], Arc::new(clock.clone())).await?;
        three_days(&server, &clock).await?;
        let range = ["--from", "2026-11-30", "--to", "2026-12-03"];

        // The table, in Bahasa Indonesia.
        let mut args = vec!["report"];
        args.extend(range);
        let (code, table, err) = client(&server, &args).await?;
        assert_eq!(code, 0, "{table}{err}");
        assert!(table.contains("LAPORAN STOK BLANGKO KTP-EL Kantor 3275 (3275)"), "{table}");
        //             date          open rcv in out print spoil take close ref act
        assert_eq!(
            row(&table, "2026-11-30"),
            ["2026-11-30", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0"],
            "{table}"
        );
        assert_eq!(
            row(&table, "2026-12-01"),
            ["2026-12-01", "0", "100", "0", "10", "2", "2", "0", "86", "1", "1"],
            "{table}"
        );
        assert_eq!(
            row(&table, "2026-12-02"),
            ["2026-12-02", "86", "0", "5", "0", "1", "0", "-2", "88", "1", "0"],
            "{table}"
        );
        assert_eq!(
            row(&table, "2026-12-03"),
            ["2026-12-03", "88", "0", "0", "0", "0", "0", "0", "88", "0", "0"],
            "{table}"
        );
        assert_eq!(
            row(&table, "Jumlah"),
            ["Jumlah", "0", "100", "5", "10", "3", "2", "-2", "88", "2", "1"],
            "{table}"
        );
        assert!(table.contains("Rekonsiliasi: sesuai"), "{table}");

        // English.
        let mut args = vec!["--lang", "en", "report"];
        args.extend(range);
        let (code, english, _) = client(&server, &args).await?;
        assert_eq!(code, 0);
        assert!(english.contains("Reconciliation: balanced"), "{english}");
        assert!(english.contains("IKD referrals"), "{english}");

        // CSV into a file: the header and one row per day.
        let csv_path = db.dir.path().join("stok.csv");
        let csv_arg = csv_path.display().to_string();
        let mut args = vec!["report", "--format", "csv", "--out", &csv_arg];
        args.extend(range);
        let (code, said, err) = client(&server, &args).await?;
        assert_eq!(code, 0, "{said}{err}");
        assert!(said.contains("Rekonsiliasi: sesuai"), "{said}");
        let csv = std::fs::read_to_string(&csv_path)?;
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "local_date,opening_on_hand,received,transferred_in,transferred_out,printed,spoiled,stock_take_difference,closing_on_hand,ikd_referrals,ikd_activations,balanced",
                "2026-11-30,0,0,0,0,0,0,0,0,0,0,true",
                "2026-12-01,0,100,0,10,2,2,0,86,1,1,true",
                "2026-12-02,86,0,5,0,1,0,-2,88,1,0,true",
                "2026-12-03,88,0,0,0,0,0,0,88,0,0,true",
            ]
        );

        // SVG on stdout: well-formed XML with a line of the closing stock and a bar per day.
        let mut args = vec!["report", "--format", "svg"];
        args.extend(range);
        let (code, svg, err) = client(&server, &args).await?;
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("Rekonsiliasi: sesuai"), "{err}");
        let doc = roxmltree::Document::parse(&svg)
            .map_err(|e| anyhow::anyhow!("the SVG is not well-formed XML: {e}\n{svg}"))?;
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
        let days: Vec<(String, String, String, String)> = root
            .descendants()
            .filter(|n| n.has_attribute("data-date"))
            .map(|n| {
                let a = |k| n.attribute(k).unwrap_or_default().to_string();
                (a("data-date"), a("data-printed"), a("data-spoiled"), a("data-closing"))
            })
            .collect();
        let expected = [
            ("2026-11-30", "0", "0", "0"),
            ("2026-12-01", "2", "2", "86"),
            ("2026-12-02", "1", "0", "88"),
            ("2026-12-03", "0", "0", "88"),
        ]
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()));
        assert_eq!(days, expected);
        let polyline = root
            .descendants()
            .find(|n| n.tag_name().name() == "polyline")
            .and_then(|n| n.attribute("points"))
            .unwrap_or_default();
        assert_eq!(polyline.split_whitespace().count(), 4, "{polyline}");
        let texts: Vec<&str> = root.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"Rekonsiliasi: sesuai"), "{texts:?}");
        assert!(texts.contains(&"2026-12-02"), "{texts:?}");

        // Bad ranges: the client exits 2 and names the field; the server's limits are explicit.
        let (code, _, err) =
            client(&server, &["report", "--from", "2026-12-03", "--to", "2026-12-01"]).await?;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("to_date"), "{err}");
        let mut stock = server.stock_client().await?;
        let ask = |from: &str, to: &str| GetStockReportRequest {
            office_id: "3275".into(),
            from_date: from.into(),
            to_date: to.into(),
        };
        for (from, to, field) in [
            ("2025-12-01", "2026-12-03", "to_date"), // 368 days
            ("2026-12-01", "2026-12-04", "to_date"), // tomorrow
            ("2026-13-01", "2026-12-03", "from_date"),
            ("", "2026-12-03", "from_date"),
        ] {
            let status = stock
                .get_stock_report(ask(from, to))
                .await
                .err()
                .ok_or_else(|| anyhow::anyhow!("{from}..{to} accepted"))?;
            assert_eq!(status.code(), Code::InvalidArgument, "{from}..{to}");
            let fields: Vec<String> = field_violations(&status).into_iter().map(|f| f.0).collect();
            assert!(fields.contains(&field.to_string()), "{from}..{to}: {fields:?}");
        }
        let mut unknown = ask("2026-12-01", "2026-12-01");
        unknown.office_id = "3201".into();
        let status = stock.get_stock_report(unknown).await.err();
        assert_eq!(status.map(|s| s.code()), Some(Code::NotFound));
        let year = stock
            .get_stock_report(ask("2025-12-03", "2026-12-03"))
            .await?
            .into_inner();
        assert_eq!(year.days.len(), 366);
        assert!(year.reconciled);

        // Someone edits one balance of day 2 in the database: the report names that day.
        let url = match db.sqlite_file() {
            Some(path) => format!("sqlite://{}", path.display()),
            None => db.url.clone(),
        };
        let pool = sqlx::AnyPool::connect(&url).await?;
        // The last entry recorded before day 3 began carries day 2's closing balance.
        let day3_starts_ms = TUESDAY_8AM_WIB_MS - 8 * HOUR_MS + 2 * DAY_MS;
        sqlx::query(
            "UPDATE ledger SET on_hand_after = on_hand_after + 1 WHERE office_id = '3275'
             AND seq = (SELECT MAX(seq) FROM ledger WHERE office_id = '3275' AND recorded_ms < $1)",
        )
        .bind(day3_starts_ms)
        .execute(&pool)
        .await?;
        pool.close().await;
        let mut args = vec!["report"];
        args.extend(range);
        let (code, table, _) = client(&server, &args).await?;
        assert_eq!(code, 1, "{table}");
        assert!(
            table.contains("Rekonsiliasi: TIDAK SESUAI pada 2026-12-02"),
            "{table}"
        );
        assert!(!table.contains("Rekonsiliasi: sesuai"), "{table}");
        Ok(())
    })
    .await
}

/// A shipment recorded at 23:30 WIB on 1 December, after which the office moves to WIT (UTC+9):
/// its ledger entry keeps the local date it was recorded on (1 December), while the report cuts
/// days in the office's zone now, where that instant is 01:30 on 2 December. The report reads
/// the ledger by stored local date, widened by a day, then by the instant: the shipment is
/// counted once, on 2 December. The office's ledger starts five days earlier, so the reports
/// below read their days through the index, not the whole ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_counts_on_the_day_of_the_office_zone_after_the_zone_changed() -> anyhow::Result<()>
{
    on_each_backend(|db: Arc<TestDatabase>| async move {
        let clock = ManualClock::at(TUESDAY_8AM_WIB_MS - 5 * DAY_MS);
        let server = TestServer::start_with_clock(db, &[], Arc::new(clock.clone())).await?;
        let mut stock = server.stock_client().await?;
        office(&mut stock, "3275", |_| {}).await?;
        ship(&mut stock, "3275", 3).await?;
        clock.advance_ms(5 * DAY_MS + 15 * HOUR_MS + HOUR_MS / 2);
        ship(&mut stock, "3275", 7).await?;
        office(&mut stock, "3275", |o| o.time_zone = "Asia/Jayapura".into()).await?;

        let report = |from: &str, to: &str| GetStockReportRequest {
            office_id: "3275".into(),
            from_date: from.into(),
            to_date: to.into(),
        };
        let days = stock
            .get_stock_report(report("2026-12-01", "2026-12-02"))
            .await?
            .into_inner();
        assert_eq!(days.time_zone, "Asia/Jayapura");
        let figures: Vec<(&str, u64, u64, u64)> = days
            .days
            .iter()
            .map(|d| {
                (
                    d.local_date.as_str(),
                    d.opening_on_hand,
                    d.received,
                    d.closing_on_hand,
                )
            })
            .collect();
        assert_eq!(
            figures,
            [("2026-12-01", 3, 0, 3), ("2026-12-02", 3, 7, 10)],
            "{days:?}"
        );
        assert!(days.reconciled, "{days:?}");

        // The one day alone: the window starts on the entry's stored date only with the margin.
        let one = stock
            .get_stock_report(report("2026-12-02", "2026-12-02"))
            .await?
            .into_inner();
        assert_eq!(one.days.len(), 1);
        assert_eq!((one.days[0].received, one.days[0].closing_on_hand), (7, 10));
        assert!(one.reconciled, "{one:?}");
        Ok(())
    })
    .await
}

/// The longest hold (24 hours) made at 23:59 WIB on 1 December and printed just before it runs
/// out, after the office moved to WIT: the Commit entry carries the reservation's day (1
/// December), while its instant is 01:58 WIT on 3 December. The report of 3 December alone
/// counts the print there: its window reaches two days back for such entries. The office's
/// ledger starts five days earlier, so the report reads its days through the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_printed_a_day_later_in_another_zone_counts_on_the_day_it_was_printed()
-> anyhow::Result<()> {
    on_each_backend(|db: Arc<TestDatabase>| async move {
        let clock = ManualClock::at(TUESDAY_8AM_WIB_MS - 5 * DAY_MS);
        let server = TestServer::start_with_clock(db, &[], Arc::new(clock.clone())).await?;
        let mut stock = server.stock_client().await?;
        let mut counter = server.counter_client().await?;
        office_with_point(&mut stock, "3275", "main", 2, 10).await?;
        office(&mut stock, "3275", |o| o.hold_ttl_secs = 86_400).await?;
        clock.advance_ms(5 * DAY_MS + 15 * HOUR_MS + 59 * 60_000); // 23:59 WIB, 1 December
        let id = held(&mut counter, 0).await?;
        office(&mut stock, "3275", |o| {
            o.time_zone = "Asia/Jayapura".into();
            o.hold_ttl_secs = 86_400;
        })
        .await?;
        clock.advance_ms(DAY_MS - 60_000); // 23:58 WIB 2 December = 01:58 WIT 3 December
        counter.commit_reservation(commit(&id)).await?;

        let (day, one) = one_day(&mut stock, "2026-12-03").await?;
        assert_eq!(
            (day.opening_on_hand, day.printed, day.closing_on_hand),
            (10, 1, 9),
            "{one:?}"
        );
        assert!(one.reconciled, "{one:?}");
        // The next day opens after that print, though its entry is stored on 1 December.
        clock.advance_ms(DAY_MS);
        let (day, next) = one_day(&mut stock, "2026-12-04").await?;
        assert_eq!(
            (day.opening_on_hand, day.closing_on_hand),
            (9, 9),
            "{next:?}"
        );
        Ok(())
    })
    .await
}

/// Office 3275's stock report of one day: the day, and the whole answer (for messages).
async fn one_day(
    stock: &mut StockServiceClient<Channel>,
    date: &str,
) -> anyhow::Result<(StockReportDay, GetStockReportResponse)> {
    let answer = stock
        .get_stock_report(GetStockReportRequest {
            office_id: "3275".into(),
            from_date: date.into(),
            to_date: date.into(),
        })
        .await?
        .into_inner();
    let day = answer
        .days
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no day in {answer:?}"))?;
    Ok((day, answer))
}

/// Reports of days far from the office's entries: a day weeks after the last entry opens and
/// closes with the balance the last entry left, and a week before the first entry is empty and
/// reconciled. The opening balance is found through the stored dates, not by walking back from
/// the newest entry, so these must come out the same as a report that starts at the ledger's
/// first day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_far_from_the_entries_open_with_the_balance_left_before_them() -> anyhow::Result<()> {
    on_each_backend(|db: Arc<TestDatabase>| async move {
        let clock = ManualClock::at(TUESDAY_8AM_WIB_MS);
        let server = TestServer::start_with_clock(db, &[], Arc::new(clock.clone())).await?;
        three_days(&server, &clock).await?;
        // Five weeks later (Thursday 2027-01-07), 10 blanks arrive.
        clock.advance_ms(35 * DAY_MS);
        let mut stock = server.stock_client().await?;
        ship(&mut stock, "3275", 10).await?;
        let report = |from: &str, to: &str| {
            let mut stock = stock.clone();
            let (from, to) = (from.to_string(), to.to_string());
            async move {
                let answer = stock
                    .get_stock_report(GetStockReportRequest {
                        office_id: "3275".into(),
                        from_date: from,
                        to_date: to,
                    })
                    .await?
                    .into_inner();
                let days: Vec<(String, u64, u64, u64)> = answer
                    .days
                    .iter()
                    .map(|d| {
                        (
                            d.local_date.clone(),
                            d.opening_on_hand,
                            d.received,
                            d.closing_on_hand,
                        )
                    })
                    .collect();
                anyhow::ensure!(answer.reconciled, "{answer:?}");
                anyhow::Ok(days)
            }
        };
        let day = |date: &str, open, received, close| (date.to_string(), open, received, close);
        assert_eq!(
            report("2026-12-20", "2026-12-20").await?,
            [day("2026-12-20", 88, 0, 88)]
        );
        assert_eq!(
            report("2027-01-06", "2027-01-07").await?,
            [day("2027-01-06", 88, 0, 88), day("2027-01-07", 88, 10, 98)]
        );
        assert_eq!(
            report("2026-12-02", "2026-12-02").await?,
            [day("2026-12-02", 86, 0, 88)]
        );
        assert_eq!(
            report("2026-11-20", "2026-11-21").await?,
            [day("2026-11-20", 0, 0, 0), day("2026-11-21", 0, 0, 0)]
        );
        Ok(())
    })
    .await
}

/// The opening balance of a report is found along `ledger_by_day` on both databases, not by
/// walking the primary key back from the newest entry (which a report of a day long ago would
/// pay for with everything recorded since).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opening_balance_is_read_along_the_stored_dates() -> anyhow::Result<()> {
    use blangko_server::engine::report::{LAST_BALANCE_BETWEEN, LAST_DATE_BEFORE};
    on_each_backend(|db: Arc<TestDatabase>| async move {
        let mut server = TestServer::start_on(db.clone(), &[]).await?;
        for (query, values) in [
            (LAST_DATE_BEFORE, ["'3275'", "'2026-01-05'", "1"].as_slice()),
            (
                LAST_BALANCE_BETWEEN,
                ["'3275'", "'2026-01-01'", "'2026-01-05'", "1"].as_slice(),
            ),
        ] {
            let mut literal = query.to_string();
            for (i, value) in values.iter().enumerate() {
                literal = literal.replace(&format!("${}", i + 1), value);
            }
            let plan = db.query_plan(&literal).await?;
            assert!(plan.contains("ledger_by_day"), "{query}: {plan}");
        }
        assert!(server.stop().await?);
        Ok(())
    })
    .await
}
