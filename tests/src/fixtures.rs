//! Test fixtures: offices and service points set up through the API, and valid NIKs.

use blangko_proto::v1::stock_service_client::StockServiceClient;
use blangko_proto::v1::*;
use tonic::transport::Channel;

/// Every weekday, so tests pass on any day of the week.
pub const EVERY_DAY: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

/// A unique request id.
pub fn rid() -> String {
    format!("t-{:016x}", rand::random::<u64>())
}

/// A valid NIK, distinct for each `n` in 0..279,972: province 32, regency 75, district 01, a
/// woman born on day 1..=28 of January 1990, serial 0001..=9999.
pub fn nik(n: u32) -> String {
    let serial = n % 9999 + 1;
    let day = (n / 9999) % 28 + 1 + 40;
    format!("327501{day:02}0190{serial:04}")
}

/// The masked form the server shows for `nik(n)`.
pub fn masked(n: u32) -> String {
    let full = nik(n);
    format!("{}******{}", &full[..6], &full[12..])
}

/// A FIXED quota policy of `n` per day.
pub fn fixed(n: u32) -> QuotaPolicy {
    QuotaPolicy {
        mode: QuotaMode::Fixed as i32,
        fixed_daily_quota: n,
        ..QuotaPolicy::default()
    }
}

/// Creates (or updates) an office.
pub async fn office(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
    adjust: impl FnOnce(&mut Office),
) -> anyhow::Result<Office> {
    let mut office = Office {
        office_id: office_id.into(),
        name: format!("Kantor {office_id}"),
        time_zone: "Asia/Jakarta".into(),
        ..Office::default()
    };
    adjust(&mut office);
    let response = stock
        .upsert_office(UpsertOfficeRequest {
            request_id: rid(),
            office: Some(office),
            update_mask: None,
        })
        .await?
        .into_inner();
    response
        .office
        .ok_or_else(|| anyhow::anyhow!("no office in answer"))
}

/// Creates (or updates) a service point named `name`, FIXED 10, serving every day.
pub async fn service_point_named(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
    service_point_id: &str,
    name: &str,
) -> anyhow::Result<()> {
    upsert_point(stock, office_id, service_point_id, name, fixed(10)).await
}

/// Creates (or updates) a service point serving every day with `policy`.
pub async fn service_point(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
    service_point_id: &str,
    policy: QuotaPolicy,
) -> anyhow::Result<()> {
    let name = format!("Loket {service_point_id}");
    upsert_point(stock, office_id, service_point_id, &name, policy).await
}

async fn upsert_point(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
    service_point_id: &str,
    name: &str,
    policy: QuotaPolicy,
) -> anyhow::Result<()> {
    stock
        .upsert_service_point(UpsertServicePointRequest {
            request_id: rid(),
            service_point: Some(ServicePoint {
                office_id: office_id.into(),
                service_point_id: service_point_id.into(),
                name: name.into(),
                kind: ServicePointKind::MainOffice as i32,
                service_days: EVERY_DAY.iter().map(|d| *d as i32).collect(),
                holidays: vec![],
                policy: Some(policy),
            }),
        })
        .await?;
    Ok(())
}

/// Records a shipment.
pub async fn ship(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
    quantity: u32,
) -> anyhow::Result<StockLevel> {
    let response = stock
        .record_shipment(RecordShipmentRequest {
            request_id: rid(),
            office_id: office_id.into(),
            quantity,
            reference: format!("DO-{:08x}", rand::random::<u32>()),
            note: String::new(),
        })
        .await?
        .into_inner();
    response
        .stock
        .ok_or_else(|| anyhow::anyhow!("no stock in answer"))
}

/// An office with one service point of FIXED `quota` and `stock` blanks on hand.
pub async fn office_with_point(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
    service_point_id: &str,
    quota: u32,
    blanks: u32,
) -> anyhow::Result<()> {
    office(stock, office_id, |_| {}).await?;
    service_point(stock, office_id, service_point_id, fixed(quota)).await?;
    if blanks > 0 {
        ship(stock, office_id, blanks).await?;
    }
    Ok(())
}

/// A Reserve request for `nik(n)` with a fresh request id.
pub fn reserve_request(office_id: &str, service_point_id: &str, n: u32) -> ReserveRequest {
    ReserveRequest {
        request_id: rid(),
        office_id: office_id.into(),
        service_point_id: service_point_id.into(),
        counter_id: "loket-1".into(),
        nik: nik(n),
        reason: Reason::DataChange as i32,
        ikd_status: IkdStatus::Active as i32,
    }
}

/// A RecordIkdActivation request from counter `loket-1` for `nik(n)`, with a fresh request id.
pub fn ikd_activation(
    office_id: &str,
    service_point_id: &str,
    n: u32,
) -> RecordIkdActivationRequest {
    RecordIkdActivationRequest {
        request_id: rid(),
        office_id: office_id.into(),
        service_point_id: service_point_id.into(),
        counter_id: "loket-1".into(),
        nik: nik(n),
    }
}

/// Counter `loket-1`'s queue report: `waiting` applicants.
pub fn queue_report(office_id: &str, service_point_id: &str, waiting: u32) -> ReportQueueRequest {
    ReportQueueRequest {
        office_id: office_id.into(),
        service_point_id: service_point_id.into(),
        counter_id: "loket-1".into(),
        waiting,
    }
}

/// Every reservation of an office on its local today, all pages.
pub async fn all_reservations(
    counter: &mut blangko_proto::v1::counter_service_client::CounterServiceClient<Channel>,
    office_id: &str,
) -> anyhow::Result<Vec<Reservation>> {
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = counter
            .list_reservations(ListReservationsRequest {
                office_id: office_id.into(),
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        found.extend(page.reservations);
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        token = page.next_page_token;
    }
}

/// An office's stock level (GetStock).
pub async fn stock_level(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
) -> anyhow::Result<StockLevel> {
    stock
        .get_stock(GetStockRequest {
            office_id: office_id.into(),
        })
        .await?
        .into_inner()
        .stock
        .ok_or_else(|| anyhow::anyhow!("no stock in answer"))
}

/// Whether an office's ledger verifies as one intact hash chain (VerifyLedger).
pub async fn ledger_intact(
    stock: &mut StockServiceClient<Channel>,
    office_id: &str,
) -> anyhow::Result<bool> {
    let answer = stock
        .verify_ledger(VerifyLedgerRequest {
            office_id: office_id.into(),
            published_head_hash: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(answer.intact)
}

/// A service point's quota snapshot now (GetQuota).
pub async fn quota_snapshot(
    counter: &mut blangko_proto::v1::counter_service_client::CounterServiceClient<Channel>,
    office_id: &str,
    service_point_id: &str,
) -> anyhow::Result<QuotaSnapshot> {
    counter
        .get_quota(GetQuotaRequest {
            office_id: office_id.into(),
            service_point_id: service_point_id.into(),
        })
        .await?
        .into_inner()
        .quota
        .ok_or_else(|| anyhow::anyhow!("no quota in answer"))
}

/// Opens a WatchQuota stream on a service point.
pub async fn watch_quota(
    counter: &mut blangko_proto::v1::counter_service_client::CounterServiceClient<Channel>,
    office_id: &str,
    service_point_id: &str,
) -> anyhow::Result<tonic::Streaming<WatchQuotaResponse>> {
    Ok(counter
        .watch_quota(WatchQuotaRequest {
            office_id: office_id.into(),
            service_point_id: service_point_id.into(),
        })
        .await?
        .into_inner())
}
