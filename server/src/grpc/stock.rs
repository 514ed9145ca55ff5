//! StockService: what supervisors, administrators and other agencies call.

use std::sync::Arc;

use blangko_proto::v1::stock_service_server::StockService;
use blangko_proto::v1::*;
use prost::Message;
use prost_types::FieldMask;
use tonic::{Request, Response, Status};

use super::counter::page_size;
use super::validate::{self, Checker};
use super::{fingerprint, nik_today, request_key};
use crate::auth::layer::caller;
use crate::auth::{Rpc, Scope};
use crate::engine::Engine;
use crate::engine::queries::{MAX_LEDGER_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::engine::stock::{Meta, OfficeField, office_with_defaults};
use crate::store::rows::ServicePointRow;

/// The StockService implementation.
pub struct StockApi {
    engine: Arc<Engine>,
    /// The version GetServerInfo reports.
    version: String,
}

impl StockApi {
    /// Handlers over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        StockApi {
            engine,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn meta<M: Message>(&self, method: &str, request_id: &str, principal: String, m: &M) -> Meta {
        Meta {
            request_id: request_key(&self.engine, &principal, request_id),
            principal,
            fingerprint: fingerprint(&self.engine, method, m),
        }
    }
}

/// Checks a quota policy; `prefix` names the field that holds it.
pub fn check_policy(c: &mut Checker, prefix: &str, p: &QuotaPolicy) {
    c.enumeration::<QuotaMode>(&format!("{prefix}.mode"), p.mode, false);
    // Both fields are checked whatever the mode: a value out of range is refused, not stored
    // and shown back as if it meant something.
    c.range(
        &format!("{prefix}.fixed_daily_quota"),
        p.fixed_daily_quota,
        0,
        validate::MAX_DAILY_QUOTA,
    );
    let min_weight = if p.mode == QuotaMode::Paced as i32 {
        1
    } else {
        0
    };
    c.range(
        &format!("{prefix}.weight"),
        p.weight,
        min_weight,
        validate::MAX_WEIGHT,
    );
    check_reasons(
        c,
        &format!("{prefix}.priority_reasons"),
        &p.priority_reasons,
    );
    c.range(
        &format!("{prefix}.priority_share_percent"),
        p.priority_share_percent,
        0,
        100,
    );
    c.optional_time(
        &format!("{prefix}.priority_release_local_time"),
        &p.priority_release_local_time,
    );
    let caps = c.listed(
        &format!("{prefix}.reason_caps"),
        &p.reason_caps,
        validate::MAX_REASON_CAPS,
    );
    for (i, cap) in caps.iter().enumerate() {
        let field = format!("{prefix}.reason_caps[{i}]");
        c.text(&format!("{field}.name"), &cap.name, validate::MAX_ID_CHARS);
        c.trimmed(&format!("{field}.name"), &cap.name);
        // Stored with the policy and shown back to every caller: no NIK in it either.
        c.not_nik_shaped(&format!("{field}.name"), &cap.name);
        if cap.reasons.is_empty() {
            c.fail(
                &format!("{field}.reasons"),
                "must name at least one reason",
                "harus menyebut paling sedikit satu alasan",
            );
        }
        check_reasons(c, &format!("{field}.reasons"), &cap.reasons);
        c.range(
            &format!("{field}.daily_cap"),
            cap.daily_cap,
            0,
            validate::MAX_DAILY_QUOTA,
        );
    }
}

/// A list of distinct known reasons, at most [`validate::MAX_LISTED_REASONS`] long (a longer list
/// is refused as a whole, without a violation per entry).
fn check_reasons(c: &mut Checker, field: &str, reasons: &[i32]) {
    let reasons = c.listed(field, reasons, validate::MAX_LISTED_REASONS);
    for (i, r) in reasons.iter().enumerate() {
        let entry = format!("{field}[{i}]");
        c.enumeration::<Reason>(&entry, *r, false);
        if reasons[..i].contains(r) {
            c.fail(&entry, "is listed twice", validate::LISTED_TWICE);
        }
    }
}

/// The settings an UpsertOffice mask names (None: no mask, all of them), each known and named once.
fn office_mask(c: &mut Checker, mask: Option<&FieldMask>) -> Option<Vec<OfficeField>> {
    let paths = &mask?.paths;
    if paths.is_empty() {
        return None;
    }
    // Past the limit: refused, with no violations for the settings the mask did not name.
    let paths = c.listed("update_mask.paths", paths, OfficeField::ALL.len());
    let mut fields = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let entry = format!("update_mask.paths[{i}]");
        match OfficeField::from_path(path) {
            Some(field) if fields.contains(&field) => {
                c.fail(&entry, "is listed twice", validate::LISTED_TWICE)
            }
            Some(field) => fields.push(field),
            None => {
                let known: Vec<&str> = OfficeField::ALL.iter().map(|f| f.path()).collect();
                // The path is not echoed: it is the caller's text, of any length (its index
                // in the field name says which it was).
                c.fail(
                    &entry,
                    format!(
                        "is not a setting of an office; one of: {}",
                        known.join(", ")
                    ),
                    format!(
                        "bukan pengaturan kantor; salah satu dari: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    Some(fields)
}

#[tonic::async_trait]
impl StockService for StockApi {
    async fn upsert_office(
        &self,
        request: Request<UpsertOfficeRequest>,
    ) -> Result<Response<UpsertOfficeResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let office_id = r
            .office
            .as_ref()
            .map(|o| o.office_id.as_str())
            .unwrap_or("");
        who.allow(Rpc::UpsertOffice, Scope::Office(office_id))?;
        let principal = who.name;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        let Some(office) = r.office.clone() else {
            c.fail("office", "is required", validate::REQUIRED);
            c.finish()?;
            return Err(Status::internal("unreachable: office missing"));
        };
        c.office_id("office.office_id", &office.office_id);
        let mask = office_mask(&mut c, r.update_mask.as_ref());
        let named = |field| mask.as_ref().is_none_or(|m| m.contains(&field));
        if named(OfficeField::Name) {
            // The name goes into the ledger's note of the change, kept for good: no NIK in it.
            c.ledger_text(
                "office.name",
                &office.name,
                validate::MAX_NAME_CHARS,
                false,
                nik_today(&self.engine),
            );
            c.trimmed("office.name", &office.name);
        }
        if named(OfficeField::TimeZone) {
            c.zone("office.time_zone", &office.time_zone);
        }
        if named(OfficeField::ExpectedNextSupplyDate) {
            c.optional_date(
                "office.expected_next_supply_date",
                &office.expected_next_supply_date,
            );
        }
        if named(OfficeField::DailyCap) {
            c.range(
                "office.daily_cap",
                office.daily_cap,
                0,
                validate::MAX_DAILY_QUOTA,
            );
        }
        if named(OfficeField::FallbackHorizonDays) {
            c.range(
                "office.fallback_horizon_days",
                office.fallback_horizon_days,
                0,
                validate::MAX_HORIZON_DAYS,
            );
        }
        if named(OfficeField::HoldTtlSecs) {
            c.range(
                "office.hold_ttl_secs",
                office.hold_ttl_secs,
                0,
                validate::MAX_HOLD_TTL_SECS,
            );
        }
        c.finish()?;
        let office = office_with_defaults(office);
        let meta = self.meta("UpsertOffice", &r.request_id, principal, &r);
        Ok(Response::new(
            self.engine
                .upsert_office(&meta, &office, mask.as_deref())
                .await?,
        ))
    }

    async fn upsert_service_point(
        &self,
        request: Request<UpsertServicePointRequest>,
    ) -> Result<Response<UpsertServicePointResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let office_id = r
            .service_point
            .as_ref()
            .map(|sp| sp.office_id.as_str())
            .unwrap_or("");
        who.allow(Rpc::UpsertServicePoint, Scope::Office(office_id))?;
        let principal = who.name;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        let Some(sp) = r.service_point.clone() else {
            c.fail("service_point", "is required", validate::REQUIRED);
            c.finish()?;
            return Err(Status::internal("unreachable: service point missing"));
        };
        c.office_id("service_point.office_id", &sp.office_id);
        c.id(
            "service_point.service_point_id",
            &sp.service_point_id,
            validate::MAX_ID_CHARS,
        );
        c.not_nik_shaped("service_point.service_point_id", &sp.service_point_id);
        // The name goes into the ledger's note of the change, kept for good: no NIK in it.
        c.ledger_text(
            "service_point.name",
            &sp.name,
            validate::MAX_NAME_CHARS,
            false,
            nik_today(&self.engine),
        );
        c.trimmed("service_point.name", &sp.name);
        c.enumeration::<ServicePointKind>("service_point.kind", sp.kind, false);
        let mut days = ['0'; 7];
        let days_listed = c.listed(
            "service_point.service_days",
            &sp.service_days,
            validate::MAX_SERVICE_DAYS,
        );
        for (i, d) in days_listed.iter().enumerate() {
            let field = format!("service_point.service_days[{i}]");
            c.enumeration::<Weekday>(&field, *d, false);
            if (1..=7).contains(d) {
                days[(*d - 1) as usize] = '1';
            }
        }
        if sp.service_days.is_empty() {
            days = ['1', '1', '1', '1', '1', '0', '0'];
        }
        let holidays_listed = c.listed(
            "service_point.holidays",
            &sp.holidays,
            validate::MAX_HOLIDAYS,
        );
        let mut holidays = Vec::new();
        for (i, h) in holidays_listed.iter().enumerate() {
            let field = format!("service_point.holidays[{i}]");
            if h.is_empty() {
                c.fail(
                    &field,
                    "must be a date YYYY-MM-DD",
                    "harus berupa tanggal TTTT-BB-HH",
                );
            } else if let Some(d) = c.optional_date(&field, h) {
                holidays.push(crate::domain::calendar::format_local_date(d));
            }
        }
        match &sp.policy {
            Some(p) => check_policy(&mut c, "service_point.policy", p),
            None => c.fail("service_point.policy", "is required", validate::REQUIRED),
        }
        c.finish()?;
        let policy = sp.policy.clone().unwrap_or_default();
        let row = ServicePointRow {
            office_id: sp.office_id.clone(),
            service_point_id: sp.service_point_id.clone(),
            name: sp.name.clone(),
            kind: i64::from(sp.kind),
            service_days: days.iter().collect(),
            holidays: holidays.join(","),
            quota_mode: i64::from(policy.mode),
            weight: i64::from(policy.weight),
            policy: policy.encode_to_vec(),
        };
        let meta = self.meta("UpsertServicePoint", &r.request_id, principal, &r);
        Ok(Response::new(
            self.engine.upsert_service_point(&meta, &row).await?,
        ))
    }

    async fn record_shipment(
        &self,
        request: Request<RecordShipmentRequest>,
    ) -> Result<Response<RecordShipmentResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        crate::telemetry::record_place(&r.office_id, "");
        who.allow(Rpc::RecordShipment, Scope::Office(&r.office_id))?;
        let principal = who.name;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.office_id("office_id", &r.office_id);
        c.range("quantity", r.quantity, 1, validate::MAX_MOVEMENT);
        let today = nik_today(&self.engine);
        c.ledger_reference("reference", &r.reference, false, today);
        c.ledger_note(&r.note, today);
        c.finish()?;
        let meta = self.meta("RecordShipment", &r.request_id, principal, &r);
        Ok(Response::new(
            self.engine
                .record_shipment(&meta, &r.office_id, r.quantity, &r.reference, &r.note)
                .await?,
        ))
    }

    async fn transfer_stock(
        &self,
        request: Request<TransferStockRequest>,
    ) -> Result<Response<TransferStockResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        who.allow(Rpc::TransferStock, Scope::Office(&r.from_office_id))?;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.office_id("from_office_id", &r.from_office_id);
        c.office_id("to_office_id", &r.to_office_id);
        if r.from_office_id == r.to_office_id {
            c.fail(
                "to_office_id",
                "must differ from from_office_id",
                "harus berbeda dari from_office_id",
            );
        }
        c.range("quantity", r.quantity, 1, validate::MAX_MOVEMENT);
        let today = nik_today(&self.engine);
        c.ledger_reference("reference", &r.reference, true, today);
        c.ledger_note(&r.note, today);
        c.finish()?;
        who.allow_transfer_to(&r.from_office_id, &r.to_office_id)?;
        let principal = who.name;
        let meta = self.meta("TransferStock", &r.request_id, principal, &r);
        Ok(Response::new(
            self.engine
                .transfer_stock(
                    &meta,
                    &r.from_office_id,
                    &r.to_office_id,
                    r.quantity,
                    &r.reference,
                    &r.note,
                )
                .await?,
        ))
    }

    async fn adjust_stock(
        &self,
        request: Request<AdjustStockRequest>,
    ) -> Result<Response<AdjustStockResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        crate::telemetry::record_place(&r.office_id, "");
        who.allow(Rpc::AdjustStock, Scope::Office(&r.office_id))?;
        let principal = who.name;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.office_id("office_id", &r.office_id);
        c.range(
            "counted_on_hand",
            r.counted_on_hand,
            0,
            validate::MAX_COUNTED,
        );
        c.ledger_text(
            "note",
            &r.note,
            validate::MAX_NOTE_CHARS,
            false,
            nik_today(&self.engine),
        );
        c.finish()?;
        let meta = self.meta("AdjustStock", &r.request_id, principal, &r);
        Ok(Response::new(
            self.engine
                .adjust_stock(
                    &meta,
                    &r.office_id,
                    r.counted_on_hand,
                    &r.note,
                    r.counted_as_of_seq,
                )
                .await?,
        ))
    }

    async fn set_quota_policy(
        &self,
        request: Request<SetQuotaPolicyRequest>,
    ) -> Result<Response<SetQuotaPolicyResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        crate::telemetry::record_place(&r.office_id, "");
        who.allow(Rpc::SetQuotaPolicy, Scope::Office(&r.office_id))?;
        let principal = who.name;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.office_id("office_id", &r.office_id);
        c.id(
            "service_point_id",
            &r.service_point_id,
            validate::MAX_ID_CHARS,
        );
        match &r.policy {
            Some(p) => check_policy(&mut c, "policy", p),
            None => c.fail("policy", "is required", validate::REQUIRED),
        }
        if let Some(q) = r.todays_quota {
            c.range("todays_quota", q, 0, validate::MAX_DAILY_QUOTA);
        }
        c.finish()?;
        let policy = r.policy.clone().unwrap_or_default();
        let meta = self.meta("SetQuotaPolicy", &r.request_id, principal, &r);
        Ok(Response::new(
            self.engine
                .set_quota_policy(
                    &meta,
                    &r.office_id,
                    &r.service_point_id,
                    &policy,
                    r.todays_quota,
                )
                .await?,
        ))
    }

    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<GetStockResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        crate::telemetry::record_place(&r.office_id, "");
        who.allow(Rpc::GetStock, Scope::Office(&r.office_id))?;
        let mut c = Checker::new();
        c.office_id("office_id", &r.office_id);
        c.finish()?;
        let stock = self.engine.get_stock(&r.office_id).await?;
        Ok(Response::new(GetStockResponse { stock: Some(stock) }))
    }

    async fn list_stock(
        &self,
        request: Request<ListStockRequest>,
    ) -> Result<Response<ListStockResponse>, Status> {
        let who = caller(&request)?;
        who.allow(Rpc::ListStock, Scope::AllOffices)?;
        let r = request.into_inner();
        let mut c = Checker::new();
        if !r.province_code.is_empty() && !crate::domain::nik::is_known_province(&r.province_code) {
            c.fail(
                "province_code",
                "is not a known 2-digit province code",
                "bukan kode provinsi 2 angka yang dikenal",
            );
        }
        let size = page_size(&mut c, "page_size", r.page_size, MAX_PAGE_SIZE);
        if !r.page_token.is_empty() {
            c.office_id("page_token", &r.page_token);
        }
        c.finish()?;
        let (stocks, next_page_token) = self
            .engine
            .list_stock(&r.province_code, &r.page_token, size)
            .await?;
        Ok(Response::new(ListStockResponse {
            stocks,
            next_page_token,
        }))
    }

    async fn list_ledger_entries(
        &self,
        request: Request<ListLedgerEntriesRequest>,
    ) -> Result<Response<ListLedgerEntriesResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        crate::telemetry::record_place(&r.office_id, "");
        who.allow(Rpc::ListLedgerEntries, Scope::Office(&r.office_id))?;
        let mut c = Checker::new();
        c.office_id("office_id", &r.office_id);
        c.enumeration::<LedgerEntryKind>("kind", r.kind, true);
        let size = page_size(&mut c, "page_size", r.page_size, MAX_LEDGER_PAGE_SIZE);
        let after = if r.page_token.is_empty() {
            0
        } else {
            match r.page_token.parse::<i64>() {
                Ok(n) if n >= 0 => n,
                _ => {
                    c.fail(
                        "page_token",
                        "is not a token this server issued",
                        validate::BAD_PAGE_TOKEN,
                    );
                    0
                }
            }
        };
        c.finish()?;
        let (entries, next) = self
            .engine
            .list_ledger(&r.office_id, r.kind, after, size)
            .await?;
        // A token only when more entries exist; it stays valid as the ledger only grows.
        let next_page_token = next.map(|seq| seq.to_string()).unwrap_or_default();
        Ok(Response::new(ListLedgerEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn verify_ledger(
        &self,
        request: Request<VerifyLedgerRequest>,
    ) -> Result<Response<VerifyLedgerResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let scope = if r.office_id.is_empty() {
            Scope::AllOffices
        } else {
            Scope::Office(&r.office_id)
        };
        who.allow(Rpc::VerifyLedger, scope)?;
        let mut c = Checker::new();
        let limit = page_size(
            &mut c,
            "page_size",
            r.page_size,
            crate::engine::verify::MAX_VERIFY_OFFICES,
        );
        if !r.office_id.is_empty() {
            c.office_id("office_id", &r.office_id);
            if r.page_size != 0 {
                c.fail(
                    "page_size",
                    "only without office_id (one office is one chain)",
                    "hanya boleh tanpa office_id (satu kantor adalah satu rantai)",
                );
            }
            if !r.page_token.is_empty() {
                c.fail(
                    "page_token",
                    "only without office_id",
                    "hanya boleh tanpa office_id",
                );
            }
        } else if !r.page_token.is_empty() {
            c.office_id("page_token", &r.page_token);
        }
        if !r.published_head_hash.is_empty() {
            if r.office_id.is_empty() {
                c.fail(
                    "published_head_hash",
                    "needs office_id",
                    "memerlukan office_id",
                );
            }
            if r.published_head_hash.len() != 64
                || !r.published_head_hash.bytes().all(|b| b.is_ascii_hexdigit())
            {
                c.fail(
                    "published_head_hash",
                    "must be 64 hex characters",
                    "harus 64 karakter heksadesimal",
                );
            }
        }
        c.finish()?;
        let (chains, next_page_token) = if r.office_id.is_empty() {
            self.engine
                .verify_ledgers_page(&r.page_token, limit)
                .await?
        } else {
            let chain = self
                .engine
                .verify_ledger(&r.office_id, &r.published_head_hash.to_ascii_lowercase())
                .await?;
            (vec![chain], String::new())
        };
        for chain in chains.iter().filter(|c| !c.intact) {
            tracing::warn!(
                office_id = %chain.office_id,
                first_broken_sequence = chain.first_broken_sequence,
                problem = %chain.problem,
                "ledger verification found a broken chain"
            );
        }
        let intact = chains.iter().all(|c| c.intact);
        Ok(Response::new(VerifyLedgerResponse {
            chains,
            intact,
            next_page_token,
        }))
    }

    async fn get_stock_report(
        &self,
        request: Request<GetStockReportRequest>,
    ) -> Result<Response<GetStockReportResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        who.allow(Rpc::GetStockReport, Scope::Office(&r.office_id))?;
        let mut c = Checker::new();
        c.office_id("office_id", &r.office_id);
        let from = c.required_date("from_date", &r.from_date);
        let to = c.required_date("to_date", &r.to_date);
        c.finish()?;
        let (Some(from), Some(to)) = (from, to) else {
            return Err(Status::internal("validated dates are missing"));
        };
        let report = self.engine.stock_report(&r.office_id, from, to).await?;
        Ok(Response::new(report))
    }

    async fn get_server_info(
        &self,
        _request: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        let now = self.engine.clock.now_ms();
        Ok(Response::new(GetServerInfoResponse {
            version: self.version.clone(),
            database_kind: self.engine.store.kind().as_str().to_string(),
            started_at: Some(crate::engine::timestamp(self.engine.started_ms)),
            uptime_secs: ((now - self.engine.started_ms).max(0) / 1000) as u64,
            api_version: blangko_proto::API_VERSION.to_string(),
        }))
    }
}
