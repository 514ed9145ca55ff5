//! Quota policies end to end, on every backend, at fixed instants (a manual clock): priority
//! share before and after the release time, reason caps, the office cap, PACED quotas, closed
//! days, and the local day in WIB, WITA and WIT.

use std::sync::Arc;

use blangko_e2e::fixtures::{self, rid};
use blangko_e2e::{TestDatabase, TestServer, on_each_backend};
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use blangko_server::clock::ManualClock;
use tonic::transport::Channel;

/// Tuesday 2026-12-01 08:00 WIB (01:00 UTC).
const TUESDAY_8AM_WIB_MS: i64 = 1_796_086_800_000;
const HOUR_MS: i64 = 3_600_000;

async fn server_at(db: Arc<TestDatabase>, at_ms: i64) -> anyhow::Result<(TestServer, ManualClock)> {
    let clock = ManualClock::at(at_ms);
    let server = TestServer::start_with_clock(db, &[], Arc::new(clock.clone())).await?;
    Ok((server, clock))
}

async fn try_reserve(
    counter: &mut CounterServiceClient<Channel>,
    office: &str,
    sp: &str,
    n: u32,
    reason: Reason,
) -> anyhow::Result<Result<Reservation, IkdReferral>> {
    let answer = counter
        .reserve(ReserveRequest {
            reason: reason as i32,
            ..fixtures::reserve_request(office, sp, n)
        })
        .await?
        .into_inner();
    match answer.outcome {
        Some(Outcome::Reservation(r)) => Ok(Ok(r)),
        Some(Outcome::IkdReferral(i)) => Ok(Err(i)),
        None => anyhow::bail!("no outcome"),
    }
}

async fn quota(server: &TestServer, office: &str, sp: &str) -> anyhow::Result<QuotaSnapshot> {
    Ok(server
        .counter_client()
        .await?
        .get_quota(GetQuotaRequest {
            office_id: office.into(),
            service_point_id: sp.into(),
        })
        .await?
        .into_inner()
        .quota
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_priority_share_is_kept_until_the_release_time() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let (server, clock) = server_at(db, TUESDAY_8AM_WIB_MS).await?;
        let mut stock = server.stock_client().await?;
        // Holds last all day here, so the morning's holds still count after 12:00.
        fixtures::office(&mut stock, "3275", |o| o.hold_ttl_secs = 86_400).await?;
        let policy = QuotaPolicy {
            priority_share_percent: 30,
            priority_release_local_time: "12:00".into(),
            ..fixtures::fixed(10)
        };
        fixtures::service_point(&mut stock, "3275", "main", policy).await?;
        fixtures::ship(&mut stock, "3275", 100).await?;
        let mut counter = server.counter_client().await?;
        // 08:00: 3 of 10 are kept for priority reasons, so data changes stop at 7.
        for n in 0..7 {
            try_reserve(&mut counter, "3275", "main", n, Reason::DataChange)
                .await?
                .map_err(|i| anyhow::anyhow!("non-priority #{n} refused: {i:?}"))?;
        }
        let refused = try_reserve(&mut counter, "3275", "main", 7, Reason::Lost)
            .await?
            .expect_err("the share is kept");
        assert_eq!(refused.cause(), ReferralCause::QuotaExhausted);
        // It says when the share opens: today 12:00 WIB = 05:00 UTC.
        assert_eq!(
            refused.next_quota_at.unwrap_or_default().seconds * 1000,
            TUESDAY_8AM_WIB_MS + 4 * HOUR_MS
        );
        let q = quota(&server, "3275", "main").await?;
        assert_eq!((q.remaining, q.remaining_non_priority), (3, 0));
        // A first-time voter (priority) may take a kept slot.
        try_reserve(&mut counter, "3275", "main", 8, Reason::FirstTimeVoter)
            .await?
            .map_err(|i| anyhow::anyhow!("priority refused: {i:?}"))?;
        // After 12:00 any reason takes any free slot.
        clock.advance_ms(4 * HOUR_MS + 1);
        for n in 9..11 {
            try_reserve(&mut counter, "3275", "main", n, Reason::DataChange)
                .await?
                .map_err(|i| anyhow::anyhow!("after release #{n} refused: {i:?}"))?;
        }
        let full = try_reserve(&mut counter, "3275", "main", 11, Reason::NewRecording)
            .await?
            .expect_err("all 10 used");
        assert_eq!(full.cause(), ReferralCause::QuotaExhausted);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reason_cap_limits_its_group_only() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let (server, _clock) = server_at(db, TUESDAY_8AM_WIB_MS).await?;
        let mut stock = server.stock_client().await?;
        fixtures::office(&mut stock, "3275", |_| {}).await?;
        let policy = QuotaPolicy {
            reason_caps: vec![ReasonCap {
                name: "cetak-ulang".into(),
                reasons: vec![Reason::Lost as i32, Reason::Damaged as i32],
                daily_cap: 2,
            }],
            ..fixtures::fixed(10)
        };
        fixtures::service_point(&mut stock, "3275", "main", policy).await?;
        fixtures::ship(&mut stock, "3275", 100).await?;
        let mut counter = server.counter_client().await?;
        assert!(
            try_reserve(&mut counter, "3275", "main", 1, Reason::Lost)
                .await?
                .is_ok()
        );
        assert!(
            try_reserve(&mut counter, "3275", "main", 2, Reason::Damaged)
                .await?
                .is_ok()
        );
        let capped = try_reserve(&mut counter, "3275", "main", 3, Reason::Damaged)
            .await?
            .expect_err("cap of 2 reached");
        assert_eq!(capped.cause(), ReferralCause::ReasonCapReached);
        assert!(
            try_reserve(&mut counter, "3275", "main", 4, Reason::DataChange)
                .await?
                .is_ok()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_office_cap_bounds_all_service_points_together() -> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let (server, _clock) = server_at(db, TUESDAY_8AM_WIB_MS).await?;
        let mut stock = server.stock_client().await?;
        fixtures::office(&mut stock, "3601", |o| o.daily_cap = 3).await?;
        fixtures::service_point(&mut stock, "3601", "main", fixtures::fixed(5)).await?;
        fixtures::service_point(&mut stock, "3601", "mpp", fixtures::fixed(5)).await?;
        fixtures::ship(&mut stock, "3601", 2000).await?;
        let mut counter = server.counter_client().await?;
        assert!(
            try_reserve(&mut counter, "3601", "main", 1, Reason::DataChange)
                .await?
                .is_ok()
        );
        assert!(
            try_reserve(&mut counter, "3601", "mpp", 2, Reason::DataChange)
                .await?
                .is_ok()
        );
        assert!(
            try_reserve(&mut counter, "3601", "main", 3, Reason::DataChange)
                .await?
                .is_ok()
        );
        let capped = try_reserve(&mut counter, "3601", "mpp", 4, Reason::DataChange)
            .await?
            .expect_err("office cap of 3");
        assert_eq!(capped.cause(), ReferralCause::QuotaExhausted);
        // The cap, not the priority share, is what ran out: the applicant is told the next
        // service day (Wednesday 00:00 WIB), not the release time at 12:00 today.
        assert_eq!(
            capped.next_quota_at.unwrap_or_default().seconds * 1000,
            TUESDAY_8AM_WIB_MS + 16 * HOUR_MS
        );
        let q = quota(&server, "3601", "mpp").await?;
        assert_eq!(
            (
                q.quota,
                q.held,
                q.office_daily_cap,
                q.office_used_today,
                q.remaining
            ),
            (5, 1, 3, 3, 0)
        );
        Ok(())
    })
    .await
}

async fn paced_point(
    stock: &mut blangko_proto::v1::stock_service_client::StockServiceClient<Channel>,
    office: &str,
    sp: &str,
    weight: u32,
) -> anyhow::Result<()> {
    stock
        .upsert_service_point(UpsertServicePointRequest {
            request_id: rid(),
            service_point: Some(ServicePoint {
                office_id: office.into(),
                service_point_id: sp.into(),
                name: sp.into(),
                kind: ServicePointKind::DistrictOffice as i32,
                service_days: vec![], // Monday to Friday
                holidays: vec![],
                policy: Some(QuotaPolicy {
                    mode: QuotaMode::Paced as i32,
                    weight,
                    ..QuotaPolicy::default()
                }),
            }),
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paced_quotas_spread_the_stock_by_weight_over_the_days_before_the_next_supply()
-> anyhow::Result<()> {
    on_each_backend(|db| async move {
        let (server, _clock) = server_at(db, TUESDAY_8AM_WIB_MS).await?;
        let mut stock = server.stock_client().await?;
        // Next supply Tuesday 8 Dec: Tue 1, Wed 2, Thu 3, Fri 4, Mon 7 = 5 service days left.
        fixtures::office(&mut stock, "3275", |o| {
            o.expected_next_supply_date = "2026-12-08".into()
        })
        .await?;
        paced_point(&mut stock, "3275", "utara", 3).await?;
        paced_point(&mut stock, "3275", "timur", 2).await?;
        fixtures::ship(&mut stock, "3275", 500).await?;
        let utara = quota(&server, "3275", "utara").await?;
        let timur = quota(&server, "3275", "timur").await?;
        assert_eq!(utara.quota, 500 * 3 / 5 / 5); // 60
        assert_eq!(timur.quota, 500 * 2 / 5 / 5); // 40
        assert!(!utara.supply_overdue);
        assert_eq!(utara.mode(), QuotaMode::Paced);

        // No date: the fallback horizon of 10 service days, flagged "supply overdue".
        fixtures::office(&mut stock, "3204", |_| {}).await?;
        paced_point(&mut stock, "3204", "main", 1).await?;
        fixtures::ship(&mut stock, "3204", 500).await?;
        let q = quota(&server, "3204", "main").await?;
        assert_eq!(q.quota, 50);
        assert!(q.supply_overdue);

        // The first transaction that touches the day fixes its quota: a later shipment does
        // not change today's number.
        let mut counter = server.counter_client().await?;
        try_reserve(&mut counter, "3204", "main", 1, Reason::DataChange)
            .await?
            .map_err(|i| anyhow::anyhow!("{i:?}"))?;
        fixtures::ship(&mut stock, "3204", 500).await?;
        assert_eq!(quota(&server, "3204", "main").await?.quota, 50);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_day_refers_with_the_next_service_day() -> anyhow::Result<()> {
    // Sunday 2026-12-06 10:00 WIB.
    let sunday = TUESDAY_8AM_WIB_MS + 5 * 24 * HOUR_MS + 2 * HOUR_MS;
    on_each_backend(|db| async move {
        let (server, _clock) = server_at(db, sunday).await?;
        let mut stock = server.stock_client().await?;
        fixtures::office(&mut stock, "3275", |_| {}).await?;
        stock
            .upsert_service_point(UpsertServicePointRequest {
                request_id: rid(),
                service_point: Some(ServicePoint {
                    office_id: "3275".into(),
                    service_point_id: "main".into(),
                    name: "main".into(),
                    kind: ServicePointKind::MainOffice as i32,
                    service_days: vec![],
                    holidays: vec!["2026-12-07".into()],
                    policy: Some(fixtures::fixed(10)),
                }),
            })
            .await?;
        fixtures::ship(&mut stock, "3275", 100).await?;
        let mut counter = server.counter_client().await?;
        let closed = try_reserve(&mut counter, "3275", "main", 1, Reason::DataChange)
            .await?
            .expect_err("closed on Sunday");
        assert_eq!(closed.cause(), ReferralCause::Closed);
        // Monday 7 Dec is a holiday: the next quota opens Tuesday 8 Dec 00:00 WIB.
        let tuesday_midnight_wib = TUESDAY_8AM_WIB_MS + 7 * 24 * HOUR_MS - 8 * HOUR_MS;
        assert_eq!(
            closed.next_quota_at.unwrap_or_default().seconds * 1000,
            tuesday_midnight_wib
        );
        assert!(
            closed.message_indonesian.contains("Selasa"),
            "{}",
            closed.message_indonesian
        );
        assert!(quota(&server, "3275", "main").await?.closed);

        // The supervisor opens the counter this Sunday after all: today's quota set to 5 opens
        // the day (the refusal above already made today's row, closed).
        let opened = stock
            .set_quota_policy(SetQuotaPolicyRequest {
                request_id: rid(),
                office_id: "3275".into(),
                service_point_id: "main".into(),
                policy: Some(fixtures::fixed(10)),
                todays_quota: Some(5),
            })
            .await?
            .into_inner()
            .quota
            .unwrap_or_default();
        assert_eq!(
            (opened.closed, opened.quota, opened.remaining),
            (false, 5, 5)
        );
        try_reserve(&mut counter, "3275", "main", 2, Reason::DataChange)
            .await?
            .map_err(|r| anyhow::anyhow!("still refused: {r:?}"))?;
        let q = quota(&server, "3275", "main").await?;
        assert_eq!((q.closed, q.held, q.remaining), (false, 1, 4));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_office_counts_its_own_local_day() -> anyhow::Result<()> {
    // 2026-12-01 15:30 UTC = 22:30 WIB and 23:30 WITA on the 1st, 00:30 WIT on the 2nd.
    let at = TUESDAY_8AM_WIB_MS + 14 * HOUR_MS + 30 * 60_000;
    on_each_backend(|db| async move {
        let (server, _clock) = server_at(db, at).await?;
        let mut stock = server.stock_client().await?;
        let mut counter = server.counter_client().await?;
        for (office, zone, date) in [
            ("3275", "Asia/Jakarta", "2026-12-01"),
            ("7371", "Asia/Makassar", "2026-12-01"),
            ("9471", "Asia/Jayapura", "2026-12-02"),
        ] {
            fixtures::office(&mut stock, office, |o| o.time_zone = zone.into()).await?;
            fixtures::service_point(&mut stock, office, "main", fixtures::fixed(5)).await?;
            fixtures::ship(&mut stock, office, 10).await?;
            let n = office.parse::<u32>()?;
            let r = try_reserve(&mut counter, office, "main", n, Reason::DataChange)
                .await?
                .map_err(|i| anyhow::anyhow!("{office}: {i:?}"))?;
            assert_eq!(r.local_date, date, "{office} in {zone}");
            let q = quota(&server, office, "main").await?;
            assert_eq!(q.local_date, date);
        }
        Ok(())
    })
    .await
}
