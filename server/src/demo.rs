//! `--demo`: seeds three offices so a new user can try the client at once. Seeding goes through
//! the engine like any supervisor's calls, so the ledger shows it. The demo service points serve
//! every day of the week, so the demo works on a weekend too.

use blangko_proto::v1::{Office, QuotaMode, QuotaPolicy, ServicePointKind};
use prost::Message;

use crate::engine::Engine;
use crate::engine::stock::Meta;
use crate::store::rows::{self, ServicePointRow};

const EVERY_DAY: &str = "1111111";

fn meta(request_id: &str) -> Meta {
    Meta {
        request_id: request_id.to_string(),
        principal: "demo".to_string(),
        fingerprint: format!("demo:{request_id}"),
    }
}

fn office(id: &str, name: &str, daily_cap: u32) -> Office {
    Office {
        office_id: id.into(),
        name: name.into(),
        time_zone: "Asia/Jakarta".into(),
        province_code: String::new(),
        daily_cap,
        expected_next_supply_date: String::new(),
        fallback_horizon_days: 10,
        ikd_first_required: false,
        hold_ttl_secs: 1800,
    }
}

fn service_point(
    office_id: &str,
    id: &str,
    name: &str,
    kind: ServicePointKind,
    policy: QuotaPolicy,
) -> ServicePointRow {
    ServicePointRow {
        office_id: office_id.into(),
        service_point_id: id.into(),
        name: name.into(),
        kind: kind as i64,
        service_days: EVERY_DAY.into(),
        holidays: String::new(),
        quota_mode: i64::from(policy.mode),
        weight: i64::from(policy.weight),
        policy: policy.encode_to_vec(),
    }
}

fn paced(weight: u32) -> QuotaPolicy {
    QuotaPolicy {
        mode: QuotaMode::Paced as i32,
        weight,
        priority_share_percent: 20,
        priority_release_local_time: "12:00".into(),
        ..QuotaPolicy::default()
    }
}

fn fixed(n: u32) -> QuotaPolicy {
    QuotaPolicy {
        mode: QuotaMode::Fixed as i32,
        fixed_daily_quota: n,
        ..QuotaPolicy::default()
    }
}

/// Seeds the demo offices unless Kota Bekasi (3275) already exists.
pub async fn seed(engine: &Engine) -> anyhow::Result<()> {
    {
        let mut conn = engine.store.reader().await?.acquire().await?;
        if rows::office(&mut conn, "3275", "").await?.is_some() {
            tracing::info!("demo data already present");
            return Ok(());
        }
    }
    let err = |e: crate::engine::EngineError| anyhow::anyhow!("{e}");
    // Kota Bekasi: 500 blanks per pick-up, paced over the main office, the MPP and two districts.
    let mut bekasi = office("3275", "Kota Bekasi", 0);
    bekasi.expected_next_supply_date = String::new();
    engine
        .upsert_office(&meta("demo-office-3275"), &bekasi, None)
        .await
        .map_err(err)?;
    for (id, name, kind, weight) in [
        (
            "main",
            "Kantor Disdukcapil Kota Bekasi",
            ServicePointKind::MainOffice,
            3,
        ),
        (
            "mpp",
            "Mal Pelayanan Publik Bekasi",
            ServicePointKind::Mpp,
            4,
        ),
        (
            "kec-bekasi-utara",
            "Kecamatan Bekasi Utara",
            ServicePointKind::DistrictOffice,
            1,
        ),
        (
            "kec-bekasi-timur",
            "Kecamatan Bekasi Timur",
            ServicePointKind::DistrictOffice,
            1,
        ),
    ] {
        engine
            .upsert_service_point(
                &meta(&format!("demo-sp-3275-{id}")),
                &service_point("3275", id, name, kind, paced(weight)),
            )
            .await
            .map_err(err)?;
    }
    engine
        .record_shipment(
            &meta("demo-ship-3275"),
            "3275",
            500,
            "DEMO-3275-001",
            "pengambilan blangko dari Ditjen Dukcapil",
        )
        .await
        .map_err(err)?;
    // Kabupaten Bandung: one main office with a fixed quota.
    engine
        .upsert_office(
            &meta("demo-office-3204"),
            &office("3204", "Kabupaten Bandung", 0),
            None,
        )
        .await
        .map_err(err)?;
    engine
        .upsert_service_point(
            &meta("demo-sp-3204-main"),
            &service_point(
                "3204",
                "main",
                "Kantor Disdukcapil Kabupaten Bandung",
                ServicePointKind::MainOffice,
                fixed(50),
            ),
        )
        .await
        .map_err(err)?;
    engine
        .record_shipment(&meta("demo-ship-3204"), "3204", 300, "DEMO-3204-001", "")
        .await
        .map_err(err)?;
    // Kabupaten Pandeglang: 2,000 blanks, printing capped at 200 a day over the office.
    engine
        .upsert_office(
            &meta("demo-office-3601"),
            &office("3601", "Kabupaten Pandeglang", 200),
            None,
        )
        .await
        .map_err(err)?;
    for (id, name, kind, n) in [
        (
            "main",
            "Kantor Disdukcapil Kabupaten Pandeglang",
            ServicePointKind::MainOffice,
            150,
        ),
        (
            "mpp",
            "Mal Pelayanan Publik Pandeglang",
            ServicePointKind::Mpp,
            100,
        ),
    ] {
        engine
            .upsert_service_point(
                &meta(&format!("demo-sp-3601-{id}")),
                &service_point("3601", id, name, kind, fixed(n)),
            )
            .await
            .map_err(err)?;
    }
    engine
        .record_shipment(&meta("demo-ship-3601"), "3601", 2000, "DEMO-3601-001", "")
        .await
        .map_err(err)?;
    tracing::info!("demo data seeded: offices 3275, 3204, 3601");
    Ok(())
}
