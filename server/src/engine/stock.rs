//! Supervisor operations: offices and service points, stock movements (shipments, transfers,
//! stock-takes) and quota policies; and the counters' queue reports.

use blangko_proto::v1::{
    AdjustStockResponse, LedgerEntryKind, Office, QuotaPolicy, RecordShipmentResponse,
    ReportQueueResponse, ServicePoint, SetQuotaPolicyResponse, TransferStockResponse,
    UpsertOfficeResponse, UpsertServicePointResponse,
};
use prost::Message;
use sqlx::AnyConnection;

use super::ledger::{self, GENESIS_HASH, NewEntry};
use super::queries::snapshot;
use super::reserve::check_quota_invariant;
use super::{
    Engine, EngineError, EngineResult, MAX_COUNTERS_PER_POINT, QUEUE_REPORT_TTL_MS, calendar_of,
    decode_answer, zone_of,
};
use crate::domain::calendar::format_local_date;
use crate::domain::forecast::forecast;
use crate::store::rows::{self, OfficeRow, ServicePointRow};

/// Common fields of every validated mutating stock command.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Idempotency key.
    pub request_id: String,
    /// Who calls.
    pub principal: String,
    /// Keyed fingerprint of the request content.
    pub fingerprint: String,
}

/// The settings of an office that UpsertOffice's `update_mask` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfficeField {
    Name,
    TimeZone,
    DailyCap,
    ExpectedNextSupplyDate,
    FallbackHorizonDays,
    IkdFirstRequired,
    HoldTtlSecs,
}

impl OfficeField {
    /// Every setting, in the proto's field order.
    pub const ALL: [OfficeField; 7] = [
        OfficeField::Name,
        OfficeField::TimeZone,
        OfficeField::DailyCap,
        OfficeField::ExpectedNextSupplyDate,
        OfficeField::FallbackHorizonDays,
        OfficeField::IkdFirstRequired,
        OfficeField::HoldTtlSecs,
    ];

    /// The field's name in `blangko.v1.Office`, as a mask path.
    pub fn path(self) -> &'static str {
        match self {
            OfficeField::Name => "name",
            OfficeField::TimeZone => "time_zone",
            OfficeField::DailyCap => "daily_cap",
            OfficeField::ExpectedNextSupplyDate => "expected_next_supply_date",
            OfficeField::FallbackHorizonDays => "fallback_horizon_days",
            OfficeField::IkdFirstRequired => "ikd_first_required",
            OfficeField::HoldTtlSecs => "hold_ttl_secs",
        }
    }

    /// The setting a mask path names.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.path() == path)
    }

    /// Copies this setting from a request's office into a row.
    fn set(self, row: &mut OfficeRow, from: &Office) {
        match self {
            OfficeField::Name => row.name = from.name.clone(),
            OfficeField::TimeZone => row.time_zone = from.time_zone.clone(),
            OfficeField::DailyCap => row.daily_cap = i64::from(from.daily_cap),
            OfficeField::ExpectedNextSupplyDate => {
                row.expected_next_supply_date = from.expected_next_supply_date.clone();
            }
            OfficeField::FallbackHorizonDays => {
                row.fallback_horizon_days = i64::from(from.fallback_horizon_days);
            }
            OfficeField::IkdFirstRequired => row.ikd_first_required = from.ikd_first_required,
            OfficeField::HoldTtlSecs => row.hold_ttl_secs = i64::from(from.hold_ttl_secs),
        }
    }
}

/// The office with the defaults the proto documents for zero values.
pub fn office_with_defaults(mut office: Office) -> Office {
    if office.time_zone.is_empty() {
        office.time_zone = "Asia/Jakarta".into();
    }
    if office.fallback_horizon_days == 0 {
        office.fallback_horizon_days = 10;
    }
    if office.hold_ttl_secs == 0 {
        office.hold_ttl_secs = 1800;
    }
    office
}

/// The settings an UpsertOffice stores: all of `office`'s (no mask), or the named ones over the
/// stored office's, or over the defaults when there is none yet (then the name must be named).
fn office_settings(
    office: &Office,
    mask: Option<&[OfficeField]>,
    existing: Option<&OfficeRow>,
) -> EngineResult<OfficeRow> {
    let new_row = |o: &Office| OfficeRow {
        office_id: o.office_id.clone(),
        name: o.name.clone(),
        time_zone: o.time_zone.clone(),
        province_code: o.office_id.chars().take(2).collect(),
        daily_cap: i64::from(o.daily_cap),
        expected_next_supply_date: o.expected_next_supply_date.clone(),
        fallback_horizon_days: i64::from(o.fallback_horizon_days),
        ikd_first_required: o.ikd_first_required,
        hold_ttl_secs: i64::from(o.hold_ttl_secs),
        on_hand: 0,
        held: 0,
        ledger_seq: 0,
        ledger_head: GENESIS_HASH.to_string(),
    };
    let Some(fields) = mask else {
        return Ok(new_row(office));
    };
    let mut row = match existing {
        Some(stored) => stored.clone(),
        None if !fields.contains(&OfficeField::Name) => {
            return Err(EngineError::invalid(
                "update_mask",
                format!(
                    "office {} does not exist yet: to create it, the mask must name \"name\"",
                    office.office_id
                ),
                format!(
                    "kantor {} belum ada: untuk membuatnya, update_mask harus memuat \"name\"",
                    office.office_id
                ),
            ));
        }
        None => new_row(&office_with_defaults(Office {
            office_id: office.office_id.clone(),
            ..Office::default()
        })),
    };
    for field in fields {
        field.set(&mut row, office);
    }
    Ok(row)
}

/// The wire form of an office row.
pub(crate) fn office_to_proto(o: &OfficeRow) -> Office {
    Office {
        office_id: o.office_id.clone(),
        name: o.name.clone(),
        time_zone: o.time_zone.clone(),
        province_code: o.province_code.clone(),
        daily_cap: o.daily_cap as u32,
        expected_next_supply_date: o.expected_next_supply_date.clone(),
        fallback_horizon_days: o.fallback_horizon_days as u32,
        ikd_first_required: o.ikd_first_required,
        hold_ttl_secs: o.hold_ttl_secs as u32,
    }
}

/// The wire form of a service point row.
pub(crate) fn service_point_to_proto(sp: &ServicePointRow) -> EngineResult<ServicePoint> {
    let service_days = sp
        .service_days
        .chars()
        .enumerate()
        .filter(|(_, c)| *c == '1')
        .map(|(i, _)| i as i32 + 1)
        .collect();
    Ok(ServicePoint {
        office_id: sp.office_id.clone(),
        service_point_id: sp.service_point_id.clone(),
        name: sp.name.clone(),
        kind: sp.kind as i32,
        service_days,
        holidays: sp
            .holidays
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        policy: Some(super::policy_of(sp)?),
    })
}

/// The longest a stock-take counted as of an earlier ledger entry may have taken: from the
/// first movement after that entry to now.
pub const MAX_COUNT_MS: i64 = 24 * 3_600_000;

impl Engine {
    async fn begin_office(&self, office_id: &str) -> EngineResult<(crate::store::Tx, OfficeRow)> {
        let mut tx = self.begin().await?;
        let office = Self::office_or_not_found(&mut tx, office_id, self.store.for_update()).await?;
        Ok((tx, office))
    }

    fn today_of(&self, office: &OfficeRow) -> EngineResult<(i64, String)> {
        let now = self.clock.now_ms();
        Ok((now, date_at(office, now)?))
    }

    /// Creates or updates an office (settings only; stock changes only by movements): every
    /// setting of `office` (defaults already applied), or only those `mask` names.
    pub async fn upsert_office(
        &self,
        meta: &Meta,
        office: &Office,
        mask: Option<&[OfficeField]>,
    ) -> EngineResult<UpsertOfficeResponse> {
        let response = self
            .with_retry(|| async {
                let mut tx = self.begin().await?;
                let conn: &mut AnyConnection = &mut tx;
                if let Some(stored) = self
                    .stored_answer(conn, &meta.request_id, "UpsertOffice", &meta.fingerprint)
                    .await?
                {
                    let mut answer: UpsertOfficeResponse = decode_answer(&stored)?;
                    answer.replayed = true;
                    return Ok(answer);
                }
                let lock = self.store.for_update();
                let mut existing = rows::office(conn, &office.office_id, lock).await?;
                if existing.is_none() {
                    let row = office_settings(office, mask, None)?;
                    if !rows::insert_office(conn, &row).await? {
                        // Created by another call since the read (PostgreSQL: FOR UPDATE finds
                        // no row to lock): update it instead, so a mask keeps what that call set.
                        existing =
                            Some(Self::office_or_not_found(conn, &office.office_id, lock).await?);
                    }
                }
                if let Some(stored) = &existing {
                    let row = office_settings(office, mask, Some(stored))?;
                    rows::update_office_settings(conn, &row).await?;
                }
                let mut stored = Self::office_or_not_found(conn, &office.office_id, "").await?;
                let (now, date) = self.today_of(&stored)?;
                let mut entry = NewEntry::of(LedgerEntryKind::PolicyChange);
                entry.note = if existing.is_some() {
                    let named = mask.map(|fields| {
                        let paths: Vec<&str> = fields.iter().map(|f| f.path()).collect();
                        format!(" ({})", paths.join(", "))
                    });
                    format!(
                        "office settings changed{}: {}",
                        named.unwrap_or_default(),
                        describe_office(&stored)
                    )
                } else {
                    format!("office created: {}", describe_office(&stored))
                };
                ledger::append(conn, &mut stored, entry, &meta.principal, now, &date).await?;
                rows::update_office_stock(conn, &stored).await?;
                let response = UpsertOfficeResponse {
                    office: Some(office_to_proto(&stored)),
                    stock: Some(self.stock_level(conn, &stored).await?),
                    replayed: false,
                };
                rows::store_answer(
                    conn,
                    &meta.request_id,
                    "UpsertOffice",
                    &meta.fingerprint,
                    &response.encode_to_vec(),
                    now,
                )
                .await?;
                self.announce_in_tx(conn, &office.office_id).await?;
                self.commit_durably(tx).await?;
                Ok(response)
            })
            .await?;
        self.hub.office_changed(&office.office_id);
        Ok(response)
    }

    /// Creates or updates a service point (with its policy).
    pub async fn upsert_service_point(
        &self,
        meta: &Meta,
        sp: &ServicePointRow,
    ) -> EngineResult<UpsertServicePointResponse> {
        let response = self
            .with_retry(|| async {
                let (mut tx, mut office) = self.begin_office(&sp.office_id).await?;
                let conn: &mut AnyConnection = &mut tx;
                if let Some(stored) = self
                    .stored_answer(
                        conn,
                        &meta.request_id,
                        "UpsertServicePoint",
                        &meta.fingerprint,
                    )
                    .await?
                {
                    let mut answer: UpsertServicePointResponse = decode_answer(&stored)?;
                    answer.replayed = true;
                    return Ok(answer);
                }
                rows::upsert_service_point(conn, sp).await?;
                let (now, date) = self.today_of(&office)?;
                let mut entry = NewEntry::of(LedgerEntryKind::PolicyChange);
                entry.service_point_id = sp.service_point_id.clone();
                entry.note = format!(
                    "service point '{}' set: days {}, mode {}, weight {}",
                    sp.name, sp.service_days, sp.quota_mode, sp.weight
                );
                ledger::append(conn, &mut office, entry, &meta.principal, now, &date).await?;
                rows::update_office_stock(conn, &office).await?;
                let zone = zone_of(&office)?;
                let today = zone.local_date(now);
                let qd = match rows::quota_day(conn, &sp.office_id, &sp.service_point_id, &date, "")
                    .await?
                {
                    Some(q) => q,
                    None => super::compute_quota_day(conn, &office, sp, today).await?,
                };
                let policy = super::policy_of(sp)?;
                let snap =
                    snapshot(conn, &office, sp, &policy, &qd, &calendar_of(sp), zone, now).await?;
                let response = UpsertServicePointResponse {
                    service_point: Some(service_point_to_proto(sp)?),
                    quota: Some(snap),
                    replayed: false,
                };
                rows::store_answer(
                    conn,
                    &meta.request_id,
                    "UpsertServicePoint",
                    &meta.fingerprint,
                    &response.encode_to_vec(),
                    now,
                )
                .await?;
                self.announce_in_tx(conn, &sp.office_id).await?;
                self.commit_durably(tx).await?;
                Ok(response)
            })
            .await?;
        self.hub.office_changed(&sp.office_id);
        Ok(response)
    }

    /// Records a shipment (idempotent by request id and by delivery reference).
    pub async fn record_shipment(
        &self,
        meta: &Meta,
        office_id: &str,
        quantity: u32,
        reference: &str,
        note: &str,
    ) -> EngineResult<RecordShipmentResponse> {
        // The reference's own fingerprint covers what a delivery is: office, quantity, reference.
        let reference_fingerprint = self.nik_key.fingerprint(
            "ShipmentReference",
            format!("{office_id}\0{quantity}\0{reference}").as_bytes(),
        );
        let response = self
            .with_retry(|| async {
                let (mut tx, mut office) = self.begin_office(office_id).await?;
                let conn: &mut AnyConnection = &mut tx;
                if let Some(stored) = self
                    .stored_answer(conn, &meta.request_id, "RecordShipment", &meta.fingerprint)
                    .await?
                {
                    let mut r: RecordShipmentResponse = decode_answer(&stored)?;
                    r.replayed = true;
                    ledger::fill_local_date(conn, r.entry.as_mut()).await?;
                    return Ok(r);
                }
                let (now, date) = self.today_of(&office)?;
                let previous = sqlx::query_as::<_, (String, i64)>(
                    "SELECT fingerprint, ledger_seq FROM shipments WHERE office_id = $1 AND reference = $2",
                )
                .bind(office_id)
                .bind(reference)
                .fetch_optional(&mut *conn)
                .await?;
                let response = if let Some((fingerprint, seq)) = previous {
                    if fingerprint != reference_fingerprint {
                        return Err(EngineError::AlreadyExists {
                            reason: "REFERENCE_REUSED",
                            message: format!("delivery reference '{reference}' was already recorded with another quantity"),
                            indonesian: format!("nomor rujukan pengiriman '{reference}' sudah tercatat dengan jumlah lain"),
                        });
                    }
                    let entry = ledger::entries_after(conn, office_id, 0, seq - 1, seq, 1)
                        .await?
                        .into_iter()
                        .next()
                        .map(|e| e.entry);
                    RecordShipmentResponse {
                        entry,
                        stock: Some(self.stock_level(conn, &office).await?),
                        replayed: true,
                    }
                } else {
                    let mut entry = NewEntry::of(LedgerEntryKind::Shipment);
                    entry.on_hand_delta = i64::from(quantity);
                    entry.reference = reference.to_string();
                    entry.note = note.to_string();
                    let e = ledger::append(conn, &mut office, entry, &meta.principal, now, &date).await?;
                    sqlx::query("INSERT INTO shipments (office_id, reference, fingerprint, ledger_seq) VALUES ($1, $2, $3, $4)")
                        .bind(office_id)
                        .bind(reference)
                        .bind(&reference_fingerprint)
                        .bind(e.sequence as i64)
                        .execute(&mut *conn)
                        .await?;
                    rows::update_office_stock(conn, &office).await?;
                    RecordShipmentResponse {
                        entry: Some(e),
                        stock: Some(self.stock_level(conn, &office).await?),
                        replayed: false,
                    }
                };
                rows::store_answer(conn, &meta.request_id, "RecordShipment", &meta.fingerprint, &response.encode_to_vec(), now).await?;
                self.announce_in_tx(conn, office_id).await?;
                self.commit_durably(tx).await?;
                Ok(response)
            })
            .await?;
        self.hub.office_changed(office_id);
        Ok(response)
    }

    /// Moves available blanks from one office to another, in one transaction.
    pub async fn transfer_stock(
        &self,
        meta: &Meta,
        from_office_id: &str,
        to_office_id: &str,
        quantity: u32,
        reference: &str,
        note: &str,
    ) -> EngineResult<TransferStockResponse> {
        let response = self
            .with_retry(|| async {
                let mut tx = self.begin().await?;
                let conn: &mut AnyConnection = &mut tx;
                // Lock both offices in id order, so two opposite transfers cannot deadlock.
                let lock = self.store.for_update();
                let (first, second) = if from_office_id < to_office_id {
                    (from_office_id, to_office_id)
                } else {
                    (to_office_id, from_office_id)
                };
                let a = Self::office_or_not_found(conn, first, lock).await?;
                let b = Self::office_or_not_found(conn, second, lock).await?;
                let (mut from, mut to) = if a.office_id == from_office_id {
                    (a, b)
                } else {
                    (b, a)
                };
                if let Some(stored) = self
                    .stored_answer(conn, &meta.request_id, "TransferStock", &meta.fingerprint)
                    .await?
                {
                    let mut answer: TransferStockResponse = decode_answer(&stored)?;
                    answer.replayed = true;
                    ledger::fill_local_date(conn, answer.out_entry.as_mut()).await?;
                    ledger::fill_local_date(conn, answer.in_entry.as_mut()).await?;
                    return Ok(answer);
                }
                // Holds that ran out earmark no blank any more, whether or not the sweeper came.
                let (now, from_date) = self.today_of(&from)?;
                self.expire_due_in_tx(conn, &mut from, now).await?;
                if from.available() < i64::from(quantity) {
                    return Err(EngineError::FailedPrecondition {
                        reason: "INSUFFICIENT_STOCK",
                        message: format!(
                            "office {} has {} available blanks, fewer than the {} to transfer",
                            from.office_id,
                            from.available(),
                            quantity
                        ),
                        indonesian: format!(
                            "kantor {} hanya punya {} blangko tersedia, kurang dari {} yang akan dipindahkan",
                            from.office_id,
                            from.available(),
                            quantity
                        ),
                    });
                }
                // The receiving office's day at the same instant as both entries' recorded_ms.
                let to_date = date_at(&to, now)?;
                let mut out = NewEntry::of(LedgerEntryKind::TransferOut);
                out.on_hand_delta = -i64::from(quantity);
                out.reference = reference.to_string();
                out.counterpart_office_id = to.office_id.clone();
                out.note = note.to_string();
                let out_entry =
                    ledger::append(conn, &mut from, out, &meta.principal, now, &from_date).await?;
                let mut inn = NewEntry::of(LedgerEntryKind::TransferIn);
                inn.on_hand_delta = i64::from(quantity);
                inn.reference = reference.to_string();
                inn.counterpart_office_id = from.office_id.clone();
                inn.note = note.to_string();
                let in_entry =
                    ledger::append(conn, &mut to, inn, &meta.principal, now, &to_date).await?;
                rows::update_office_stock(conn, &from).await?;
                rows::update_office_stock(conn, &to).await?;
                let response = TransferStockResponse {
                    out_entry: Some(out_entry),
                    in_entry: Some(in_entry),
                    from_stock: Some(self.stock_level(conn, &from).await?),
                    to_stock: Some(self.stock_level(conn, &to).await?),
                    replayed: false,
                };
                rows::store_answer(
                    conn,
                    &meta.request_id,
                    "TransferStock",
                    &meta.fingerprint,
                    &response.encode_to_vec(),
                    now,
                )
                .await?;
                self.announce_in_tx(conn, from_office_id).await?;
                self.announce_in_tx(conn, to_office_id).await?;
                self.commit_durably(tx).await?;
                Ok(response)
            })
            .await?;
        self.hub.office_changed(from_office_id);
        self.hub.office_changed(to_office_id);
        Ok(response)
    }

    /// A stock-take: the difference between the counted number and the stock as of
    /// `as_of_seq` (the ledger's newest entry when the count began; None: now) is booked, so
    /// blanks that moved during the count stay recorded. Refused when a stock-take was booked
    /// since that entry (its count saw the vault later, or corrected the same blanks: booking
    /// this one too would take them off twice, and letting it replace that one could undo a
    /// loss found since), and when the first movement after the entry is over
    /// [`MAX_COUNT_MS`] old (a count takes hours).
    pub async fn adjust_stock(
        &self,
        meta: &Meta,
        office_id: &str,
        counted: u32,
        note: &str,
        as_of_seq: Option<u64>,
    ) -> EngineResult<AdjustStockResponse> {
        let response = self
            .with_retry(|| async {
                let (mut tx, mut office) = self.begin_office(office_id).await?;
                let conn: &mut AnyConnection = &mut tx;
                if let Some(stored) = self
                    .stored_answer(conn, &meta.request_id, "AdjustStock", &meta.fingerprint)
                    .await?
                {
                    let mut answer: AdjustStockResponse = decode_answer(&stored)?;
                    answer.replayed = true;
                    ledger::fill_local_date(conn, answer.entry.as_mut()).await?;
                    return Ok(answer);
                }
                let (now, date) = self.today_of(&office)?;
                self.expire_due_in_tx(conn, &mut office, now).await?;
                // The stock the count is compared with: at the entry the count began, or now.
                let (at_count, note) = match as_of_seq {
                    None => (office.on_hand, note.to_string()),
                    Some(seq) => {
                        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                        if seq > office.ledger_seq {
                            return Err(EngineError::invalid(
                                "counted_as_of_seq",
                                format!(
                                    "is past the newest ledger entry of the office ({})",
                                    office.ledger_seq
                                ),
                                format!(
                                    "melewati entri buku besar terbaru kantor ini ({})",
                                    office.ledger_seq
                                ),
                            ));
                        }
                        if seq == 0 {
                            return Err(EngineError::invalid(
                                "counted_as_of_seq",
                                "is a ledger entry's number, 1 or more (StockLevel.ledger_seq when the count began)",
                                "harus nomor entri buku besar, 1 atau lebih (StockLevel.ledger_seq saat penghitungan dimulai)",
                            ));
                        }
                        let (next_recorded, stock_take) =
                            ledger::after_entry(conn, office_id, seq).await?;
                        if let Some(first) = next_recorded
                            && now - first > MAX_COUNT_MS
                        {
                            return Err(EngineError::FailedPrecondition {
                                reason: "COUNT_TOO_OLD",
                                message: format!(
                                    "ledger entry {seq} is followed by movements of more than {} hours ago: a count takes hours, so this is not the entry the count began at; count again, or send the count as the stock now",
                                    MAX_COUNT_MS / 3_600_000
                                ),
                                indonesian: format!(
                                    "entri buku besar {seq} diikuti mutasi lebih dari {} jam lalu: penghitungan butuh beberapa jam, jadi ini bukan entri saat penghitungan dimulai; hitung lagi, atau kirim hitungan sebagai stok sekarang",
                                    MAX_COUNT_MS / 3_600_000
                                ),
                            });
                        }
                        if let Some(since) = stock_take {
                            return Err(EngineError::FailedPrecondition {
                                reason: "STOCK_TAKE_SINCE",
                                message: format!(
                                    "a stock-take was booked after ledger entry {seq} (entry {since}), while this count was under way: count again, as of the newest entry"
                                ),
                                indonesian: format!(
                                    "stock opname dicatat setelah entri buku besar {seq} (entri {since}) selagi penghitungan ini berjalan: hitung lagi, per entri terbaru"
                                ),
                            });
                        }
                        let at = ledger::on_hand_after(conn, office_id, seq).await?;
                        (at, format!("{note} (counted as of ledger entry {seq})"))
                    }
                };
                let on_hand_delta = i64::from(counted) - at_count;
                if office.on_hand + on_hand_delta < office.held {
                    return Err(EngineError::FailedPrecondition {
                        reason: "COUNT_BELOW_HELD",
                        message: format!(
                            "counted {counted} blanks, which leaves {} on hand, but {} are held by live reservations; finish or cancel those holds first",
                            office.on_hand + on_hand_delta,
                            office.held
                        ),
                        indonesian: format!(
                            "terhitung {counted} blangko, sehingga stok fisik menjadi {}, tetapi {} ditahan oleh pemesanan aktif; selesaikan atau batalkan tahanan itu dulu",
                            office.on_hand + on_hand_delta,
                            office.held
                        ),
                    });
                }
                let mut entry = NewEntry::of(LedgerEntryKind::StockTake);
                entry.on_hand_delta = on_hand_delta;
                entry.note = note;
                let e = ledger::append(conn, &mut office, entry, &meta.principal, now, &date).await?;
                rows::update_office_stock(conn, &office).await?;
                let response = AdjustStockResponse {
                    entry: Some(e),
                    stock: Some(self.stock_level(conn, &office).await?),
                    replayed: false,
                };
                rows::store_answer(conn, &meta.request_id, "AdjustStock", &meta.fingerprint, &response.encode_to_vec(), now).await?;
                self.announce_in_tx(conn, office_id).await?;
                self.commit_durably(tx).await?;
                Ok(response)
            })
            .await?;
        self.hub.office_changed(office_id);
        Ok(response)
    }

    /// Sets a service point's policy and, optionally, today's quota.
    pub async fn set_quota_policy(
        &self,
        meta: &Meta,
        office_id: &str,
        service_point_id: &str,
        policy: &QuotaPolicy,
        todays_quota: Option<u32>,
    ) -> EngineResult<SetQuotaPolicyResponse> {
        let response = self
            .with_retry(|| async {
                let (mut tx, mut office) = self.begin_office(office_id).await?;
                let conn: &mut AnyConnection = &mut tx;
                if let Some(stored) = self
                    .stored_answer(conn, &meta.request_id, "SetQuotaPolicy", &meta.fingerprint)
                    .await?
                {
                    let mut answer: SetQuotaPolicyResponse = decode_answer(&stored)?;
                    answer.replayed = true;
                    return Ok(answer);
                }
                let mut sp = Self::service_point_or_not_found(conn, office_id, service_point_id).await?;
                sp.policy = policy.encode_to_vec();
                sp.quota_mode = i64::from(policy.mode);
                sp.weight = i64::from(policy.weight);
                rows::upsert_service_point(conn, &sp).await?;
                let (now, date) = self.today_of(&office)?;
                let zone = zone_of(&office)?;
                let today = zone.local_date(now);
                self.expire_due_in_tx(conn, &mut office, now).await?;
                let mut qd = super::quota_day_for_update(conn, self.store.for_update(), &office, &sp, today).await?;
                let mut note = format!("quota policy of '{service_point_id}' changed");
                if let Some(q) = todays_quota {
                    if i64::from(q) < qd.used() {
                        return Err(EngineError::FailedPrecondition {
                            reason: "QUOTA_BELOW_USE",
                            message: format!(
                                "today's quota cannot go below what is already held or printed today ({})",
                                qd.used()
                            ),
                            indonesian: format!(
                                "kuota hari ini tidak boleh di bawah yang sudah ditahan atau dicetak hari ini ({})",
                                qd.used()
                            ),
                        });
                    }
                    note = format!("{note}; today's quota {} -> {q}", qd.quota);
                    qd.quota = i64::from(q);
                    check_quota_invariant(&qd)?;
                    rows::update_quota_day(conn, &qd).await?;
                    // A quota set for today on a day computed closed (not a service day, a
                    // holiday) opens it: the supervisor decided to serve today after all.
                    if qd.closed && q > 0 {
                        qd.closed = false;
                        rows::open_quota_day(conn, &qd).await?;
                        note = format!("{note}; opened today (not a service day by its calendar)");
                    }
                }
                let mut entry = NewEntry::of(LedgerEntryKind::PolicyChange);
                entry.service_point_id = service_point_id.to_string();
                entry.note = note;
                ledger::append(conn, &mut office, entry, &meta.principal, now, &date).await?;
                rows::update_office_stock(conn, &office).await?;
                let snap = snapshot(conn, &office, &sp, policy, &qd, &calendar_of(&sp), zone, now).await?;
                let response = SetQuotaPolicyResponse {
                    policy: Some(policy.clone()),
                    quota: Some(snap),
                    replayed: false,
                };
                rows::store_answer(conn, &meta.request_id, "SetQuotaPolicy", &meta.fingerprint, &response.encode_to_vec(), now).await?;
                self.announce_in_tx(conn, office_id).await?;
                self.commit_durably(tx).await?;
                Ok(response)
            })
            .await?;
        self.hub.office_changed(office_id);
        Ok(response)
    }

    /// A counter's queue report; answers the forecast for that counter.
    pub async fn report_queue(
        &self,
        office_id: &str,
        service_point_id: &str,
        counter_id: &str,
        waiting: u32,
    ) -> EngineResult<ReportQueueResponse> {
        // One row per counter, upserted; long-expired rows are the sweeper's to delete. (This
        // transaction once deleted them too, from every office: on PostgreSQL two counters
        // reporting over yesterday's rows at 08:00 each locked their own row and then waited
        // for the other's, and one got a deadlock as INTERNAL.)
        self.with_retry(|| async {
            let mut tx = self.begin().await?;
            let conn: &mut AnyConnection = &mut tx;
            Self::office_or_not_found(conn, office_id, "").await?;
            Self::service_point_or_not_found(conn, office_id, service_point_id).await?;
            let now = self.clock.now_ms();
            // A bounded number of counters per service point, so that invented counter ids
            // cannot inflate the queue that every counter's forecast divides by. A report of 0
            // waiting (a counter that finished, withdrew a preview, or asks for the forecast
            // alone) takes no place: it is never counted, nor refused.
            let others: i64 = if waiting == 0 {
                0
            } else {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM queue_reports WHERE office_id = $1 AND service_point_id = $2 \
                     AND reported_ms >= $3 AND counter_id <> $4 AND waiting > 0",
                )
                .bind(office_id)
                .bind(service_point_id)
                .bind(now - QUEUE_REPORT_TTL_MS)
                .bind(counter_id)
                .fetch_one(&mut *conn)
                .await?
            };
            if others >= MAX_COUNTERS_PER_POINT {
                return Err(EngineError::Exhausted {
                    reason: "TOO_MANY_COUNTERS",
                    message: format!(
                        "service point {office_id}/{service_point_id} already has {MAX_COUNTERS_PER_POINT} counters reporting their queues; a report expires {} s after it was sent",
                        QUEUE_REPORT_TTL_MS / 1000
                    ),
                    indonesian: format!(
                        "tempat layanan {office_id}/{service_point_id} sudah punya {MAX_COUNTERS_PER_POINT} loket yang melaporkan antreannya; laporan kedaluwarsa {} detik setelah dikirim",
                        QUEUE_REPORT_TTL_MS / 1000
                    ),
                    retry_after: std::time::Duration::from_millis(QUEUE_REPORT_TTL_MS as u64),
                });
            }
            rows::upsert_queue_report(
                conn,
                office_id,
                service_point_id,
                counter_id,
                i64::from(waiting),
                now,
            )
            .await?;
            self.announce_in_tx(conn, office_id).await?;
            self.commit_durably(tx).await?;
            Ok(())
        })
        .await?;
        self.hub.office_changed(office_id);
        let quota = self.get_quota(office_id, service_point_id).await?;
        let total = u64::from(quota.waiting).max(u64::from(waiting));
        let (served, referred) = forecast(u64::from(quota.remaining), u64::from(waiting), total);
        Ok(ReportQueueResponse {
            quota: Some(quota),
            expected_served: served as u32,
            expected_referred: referred as u32,
        })
    }
}

fn describe_office(o: &OfficeRow) -> String {
    format!(
        "name '{}', zone {}, daily cap {}, next supply '{}', horizon {} days, IKD first {}, hold {} s",
        o.name,
        o.time_zone,
        o.daily_cap,
        o.expected_next_supply_date,
        o.fallback_horizon_days,
        o.ikd_first_required,
        o.hold_ttl_secs
    )
}

/// The office's local date at the instant `now_ms`, as the ledger stores it.
fn date_at(office: &OfficeRow, now_ms: i64) -> EngineResult<String> {
    Ok(format_local_date(zone_of(office)?.local_date(now_ms)))
}
