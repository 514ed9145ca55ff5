//! CounterService: what counter terminals call.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use blangko_proto::v1::counter_service_server::CounterService;
use blangko_proto::v1::*;
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use super::validate::{self, Checker};
use super::{allow_on_reservation, allow_role, fingerprint, nik_today, request_key};
use crate::auth::layer::caller;
use crate::auth::tokens::Authenticator;
use crate::auth::{Role, Rpc, Scope};
use crate::domain::calendar::{format_local_date, parse_local_date};
use crate::engine::Engine;
use crate::engine::holds::{IkdActivationCommand, SpoilCommand};
use crate::engine::queries::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::engine::reserve::ReserveCommand;
use crate::telemetry::record_place;

/// The CounterService implementation.
pub struct CounterApi {
    engine: Arc<Engine>,
    /// Fires at shutdown so open WatchQuota streams end and the server can drain.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Who may call: a WatchQuota stream ends when a reload no longer admits its caller.
    auth: Arc<Authenticator>,
    /// The WatchQuota streams each caller holds open.
    seats: Arc<WatcherSeats>,
}

impl CounterApi {
    /// Handlers over `engine`; streams end when `shutdown` becomes true, or when the token file
    /// no longer admits their caller. With a token file, one caller holds at most
    /// `max_watchers_per_caller` WatchQuota streams.
    pub fn new(
        engine: Arc<Engine>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        auth: Arc<Authenticator>,
        max_watchers_per_caller: usize,
    ) -> Self {
        let limit = auth.is_enforcing().then_some(max_watchers_per_caller);
        CounterApi {
            engine,
            shutdown,
            auth,
            seats: Arc::new(WatcherSeats {
                held: std::sync::Mutex::new(HashMap::new()),
                limit,
            }),
        }
    }

    /// Reserve, apart from counting its outcome.
    async fn reserve_counted(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<ReserveResponse, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        record_place(&r.office_id, &r.service_point_id);
        who.allow(
            Rpc::Reserve,
            Scope::ServicePoint(&r.office_id, &r.service_point_id),
        )?;
        let principal = who.name;
        let nik = check_reserve(&r, nik_today(&self.engine))?;
        let cmd = ReserveCommand {
            fingerprint: fingerprint(&self.engine, "Reserve", &r),
            request_id: request_key(&self.engine, &principal, &r.request_id),
            office_id: r.office_id,
            service_point_id: r.service_point_id,
            counter_id: r.counter_id,
            nik,
            reason: r.reason,
            ikd_status: r.ikd_status,
            principal,
        };
        Ok(self.engine.reserve(cmd).await?)
    }
}

/// The most request ids one ListReservations may filter by.
const MAX_LISTED_REQUEST_IDS: usize = 500;

/// Parses a page size: 0 means the default; above the maximum is an error, not a silent cut.
pub fn page_size(c: &mut Checker, field: &str, value: u32, max: u32) -> u32 {
    if value == 0 {
        DEFAULT_PAGE_SIZE.min(max)
    } else {
        c.range(field, value, 1, max);
        value
    }
}

type WatchStreamOut = Pin<Box<dyn Stream<Item = Result<WatchQuotaResponse, Status>> + Send>>;

/// The WatchQuota streams each caller holds open, bounded per caller (`--max-watchers-per-caller`).
struct WatcherSeats {
    held: std::sync::Mutex<HashMap<String, usize>>,
    /// None: no bound (no token file: every caller is the same anonymous one).
    limit: Option<usize>,
}

/// One open WatchQuota stream of a caller; gives its seat back when dropped.
struct Seat {
    seats: Arc<WatcherSeats>,
    caller: String,
}

impl WatcherSeats {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Only whole increments and decrements happen under this lock.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A seat for `caller`, or RESOURCE_EXHAUSTED when it holds its limit already (`unbounded`:
    /// counted, never refused).
    fn take(seats: &Arc<WatcherSeats>, caller: &str, unbounded: bool) -> Result<Seat, Status> {
        let mut held = seats.held();
        let n = held.entry(caller.to_string()).or_insert(0);
        if let Some(limit) = seats.limit
            && !unbounded
            && *n >= limit
        {
            return Err(Status::from(crate::engine::EngineError::Exhausted {
                reason: "TOO_MANY_WATCHERS",
                message: format!(
                    "'{caller}' already holds {limit} quota watchers open (--max-watchers-per-caller); close one or try later"
                ),
                indonesian: format!(
                    "'{caller}' sudah membuka {limit} pemantau kuota (--max-watchers-per-caller); tutup satu atau coba nanti"
                ),
                retry_after: crate::engine::watch::WATCHERS_FULL_RETRY,
            }));
        }
        *n += 1;
        Ok(Seat {
            seats: Arc::clone(seats),
            caller: caller.to_string(),
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut held = self.seats.held();
        if let Some(n) = held.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

#[tonic::async_trait]
impl CounterService for CounterApi {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let result = self.reserve_counted(request).await;
        self.engine.metrics.record_reserve(&result);
        crate::telemetry::record_outcome(crate::metrics::reserve_outcome(&result));
        result.map(Response::new)
    }

    async fn commit_reservation(
        &self,
        request: Request<CommitReservationRequest>,
    ) -> Result<Response<CommitReservationResponse>, Status> {
        let who = caller(&request)?;
        allow_role(&who, Rpc::CommitReservation)?;
        let r = request.into_inner();
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.id("reservation_id", &r.reservation_id, validate::MAX_ID_CHARS);
        c.finish()?;
        allow_on_reservation(
            &self.engine,
            &who,
            Rpc::CommitReservation,
            &r.reservation_id,
        )
        .await?;
        let principal = who.name;
        let fp = fingerprint(&self.engine, "CommitReservation", &r);
        Ok(Response::new(
            self.engine
                .commit(
                    &request_key(&self.engine, &principal, &r.request_id),
                    &r.reservation_id,
                    &principal,
                    &fp,
                )
                .await?,
        ))
    }

    async fn cancel_reservation(
        &self,
        request: Request<CancelReservationRequest>,
    ) -> Result<Response<CancelReservationResponse>, Status> {
        let who = caller(&request)?;
        allow_role(&who, Rpc::CancelReservation)?;
        let r = request.into_inner();
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.id("reservation_id", &r.reservation_id, validate::MAX_ID_CHARS);
        c.ledger_note(&r.note, nik_today(&self.engine));
        c.finish()?;
        allow_on_reservation(
            &self.engine,
            &who,
            Rpc::CancelReservation,
            &r.reservation_id,
        )
        .await?;
        let principal = who.name;
        let fp = fingerprint(&self.engine, "CancelReservation", &r);
        Ok(Response::new(
            self.engine
                .cancel(
                    &request_key(&self.engine, &principal, &r.request_id),
                    &r.reservation_id,
                    &r.note,
                    &principal,
                    &fp,
                )
                .await?,
        ))
    }

    async fn report_spoiled_blank(
        &self,
        request: Request<ReportSpoiledBlankRequest>,
    ) -> Result<Response<ReportSpoiledBlankResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        record_place(&r.office_id, "");
        who.allow(Rpc::ReportSpoiledBlank, Scope::Office(&r.office_id))?;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.office_id("office_id", &r.office_id);
        if !r.reservation_id.is_empty() {
            c.id("reservation_id", &r.reservation_id, validate::MAX_ID_CHARS);
        }
        c.enumeration::<SpoilageReason>("reason", r.reason, false);
        // "Anything else; say what in the note": a blank written off as OTHER with no word of
        // why would leave the ledger unable to say where it went.
        if r.reason == SpoilageReason::Other as i32 && r.note.trim().is_empty() {
            c.fail(
                "note",
                "is required when the reason is OTHER: say what happened to the blank",
                "wajib diisi bila alasannya OTHER: sebutkan apa yang terjadi pada blangko itu",
            );
        }
        let today = nik_today(&self.engine);
        c.ledger_reference(
            "destruction_report_reference",
            &r.destruction_report_reference,
            true,
            today,
        );
        c.ledger_note(&r.note, today);
        c.finish()?;
        if !r.reservation_id.is_empty() {
            allow_on_reservation(
                &self.engine,
                &who,
                Rpc::ReportSpoiledBlank,
                &r.reservation_id,
            )
            .await?;
        }
        let principal = who.name;
        let cmd = SpoilCommand {
            fingerprint: fingerprint(&self.engine, "ReportSpoiledBlank", &r),
            request_id: request_key(&self.engine, &principal, &r.request_id),
            office_id: r.office_id,
            reservation_id: r.reservation_id,
            reason: r.reason,
            destruction_report_reference: r.destruction_report_reference,
            note: r.note,
            principal,
        };
        let answer = self.engine.report_spoiled(&cmd).await?;
        if let Some(referral) = answer.ikd_referral.as_ref().filter(|r| !r.replayed) {
            self.engine.metrics.record_referral(referral);
        }
        Ok(Response::new(answer))
    }

    async fn record_ikd_activation(
        &self,
        request: Request<RecordIkdActivationRequest>,
    ) -> Result<Response<RecordIkdActivationResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        record_place(&r.office_id, &r.service_point_id);
        who.allow(
            Rpc::RecordIkdActivation,
            Scope::ServicePoint(&r.office_id, &r.service_point_id),
        )?;
        let principal = who.name;
        let mut c = Checker::new();
        c.request_id(&r.request_id);
        c.service_point_ref(&r.office_id, &r.service_point_id);
        c.counter_id(&r.counter_id);
        let nik = c.nik("nik", &r.nik, nik_today(&self.engine));
        c.finish()?;
        let Some(nik) = nik else {
            return Err(Status::internal("validated NIK missing"));
        };
        let cmd = IkdActivationCommand {
            fingerprint: fingerprint(&self.engine, "RecordIkdActivation", &r),
            request_id: request_key(&self.engine, &principal, &r.request_id),
            office_id: r.office_id,
            service_point_id: r.service_point_id,
            counter_id: r.counter_id,
            nik,
            principal,
        };
        let answer = self.engine.record_ikd_activation(&cmd).await?;
        if !answer.replayed {
            self.engine.metrics.record_ikd_activation();
        }
        Ok(Response::new(answer))
    }

    async fn list_reservations(
        &self,
        request: Request<ListReservationsRequest>,
    ) -> Result<Response<ListReservationsResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        record_place(&r.office_id, &r.service_point_id);
        let scope = if r.service_point_id.is_empty() {
            Scope::AllServicePoints(&r.office_id)
        } else {
            Scope::ServicePoint(&r.office_id, &r.service_point_id)
        };
        who.allow(Rpc::ListReservations, scope)?;
        let mut c = Checker::new();
        c.office_id("office_id", &r.office_id);
        if !r.service_point_id.is_empty() {
            c.id(
                "service_point_id",
                &r.service_point_id,
                validate::MAX_ID_CHARS,
            );
        }
        if !r.counter_id.is_empty() {
            c.counter_id(&r.counter_id);
        }
        c.enumeration::<ReservationState>("state", r.state, true);
        let mut date = c.optional_date("local_date", &r.local_date);
        let size = page_size(&mut c, "page_size", r.page_size, MAX_PAGE_SIZE);
        let token = if r.page_token.is_empty() {
            None
        } else {
            let token = parse_reservation_token(&r.page_token);
            if token.is_none() {
                c.fail(
                    "page_token",
                    "is not a token this server issued",
                    validate::BAD_PAGE_TOKEN,
                );
            }
            token
        };
        // The token's day: a listing of "today" stays on the day it began.
        if let Some((Some(day), _)) = token {
            match date {
                Some(asked) if asked != day => c.fail(
                    "page_token",
                    "belongs to a listing of another local_date",
                    "milik daftar local_date yang lain",
                ),
                _ => date = Some(day),
            }
        }
        let before = token.map(|(_, seq)| seq);
        #[allow(deprecated)]
        if !r.niks.is_empty() {
            c.fail(
                "niks",
                "is withdrawn: a filter by NIK would let a caller test NIKs against the office's reservations; filter by request_ids instead",
                "sudah ditarik: saringan menurut NIK memungkinkan pemanggil menguji NIK terhadap pemesanan kantor; saring menurut request_ids",
            );
        }
        if r.request_ids.len() > MAX_LISTED_REQUEST_IDS {
            c.fail(
                "request_ids",
                format!(
                    "has {} ids; at most {MAX_LISTED_REQUEST_IDS} at once",
                    r.request_ids.len()
                ),
                format!(
                    "berisi {} ID; paling banyak {MAX_LISTED_REQUEST_IDS} sekaligus",
                    r.request_ids.len()
                ),
            );
        }
        for (i, id) in r
            .request_ids
            .iter()
            .take(MAX_LISTED_REQUEST_IDS)
            .enumerate()
        {
            c.text(
                &format!("request_ids[{i}]"),
                id,
                validate::MAX_REQUEST_ID_CHARS,
            );
        }
        c.finish()?;
        // The caller's own calls only: the keys their answers are stored under.
        let made_by: Vec<(String, &str)> = r
            .request_ids
            .iter()
            .map(|id| (request_key(&self.engine, &who.name, id), id.as_str()))
            .collect();
        let state = ReservationState::try_from(r.state).unwrap_or(ReservationState::Unspecified);
        let listed = self
            .engine
            .list_reservations(
                &r.office_id,
                &r.service_point_id,
                &r.counter_id,
                state,
                date,
                before,
                size,
                &made_by,
            )
            .await?;
        Ok(Response::new(ListReservationsResponse {
            reservations: listed.reservations,
            next_page_token: listed
                .next
                .map(|(day, seq)| format!("{}:{seq}", format_local_date(day)))
                .unwrap_or_default(),
            made_by: listed.made_by,
        }))
    }

    async fn get_quota(
        &self,
        request: Request<GetQuotaRequest>,
    ) -> Result<Response<GetQuotaResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        record_place(&r.office_id, &r.service_point_id);
        who.allow(
            Rpc::GetQuota,
            Scope::ServicePoint(&r.office_id, &r.service_point_id),
        )?;
        let mut c = Checker::new();
        c.service_point_ref(&r.office_id, &r.service_point_id);
        c.finish()?;
        let quota = self
            .engine
            .get_quota(&r.office_id, &r.service_point_id)
            .await?;
        Ok(Response::new(GetQuotaResponse { quota: Some(quota) }))
    }

    type WatchQuotaStream = WatchStreamOut;

    async fn watch_quota(
        &self,
        request: Request<WatchQuotaRequest>,
    ) -> Result<Response<Self::WatchQuotaStream>, Status> {
        let who = caller(&request)?;
        // Told of every token reload from now on; marked so that the caller is checked once
        // more as soon as the stream runs (a reload between the layer's check and this line
        // would otherwise go unseen until the next one).
        let mut reloads = self.auth.reloads();
        reloads.mark_changed();
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = request.into_inner();
        record_place(&r.office_id, &r.service_point_id);
        who.allow(
            Rpc::WatchQuota,
            Scope::ServicePoint(&r.office_id, &r.service_point_id),
        )?;
        let mut c = Checker::new();
        c.service_point_ref(&r.office_id, &r.service_point_id);
        c.finish()?;
        // Admins (the ministry's dashboards) are bound by --max-watchers alone.
        let seat = WatcherSeats::take(&self.seats, &who.name, who.role == Role::Admin)?;
        let receiver = self
            .engine
            .watch_quota(&r.office_id, &r.service_point_id)
            .await?;
        let mut shutdown = self.shutdown.clone();
        let auth = Arc::clone(&self.auth);
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noticed = Arc::clone(&revoked);
        let ended = async move {
            let stopping = shutdown.wait_for(|stopping| *stopping);
            // After each reload of the token file: is the caller still who it was?
            let dismissed = async {
                while reloads.changed().await.is_ok() {
                    if !auth.still_admits(authorization.as_deref(), &who) {
                        noticed.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
                std::future::pending::<()>().await
            };
            // Ends when the server shuts down (or the shutdown channel is gone), or the caller
            // is no longer admitted.
            tokio::select! {
                _ = stopping => {}
                () = dismissed => {}
            }
        };
        let stream = WatchStream::new(receiver).filter_map(move |snapshot| {
            // The stream holds its caller's seat until it is dropped.
            let _seat = &seat;
            snapshot.map(|quota| Ok(WatchQuotaResponse { quota: Some(quota) }))
        });
        let stream = futures::StreamExt::take_until(stream, ended);
        // A caller that lost its token is told why its stream ended.
        let last = futures::stream::iter([()]).filter_map(move |()| {
            revoked
                .load(std::sync::atomic::Ordering::SeqCst)
                .then(|| {
                    Err(super::status::localized(
                        tonic::Code::Unauthenticated,
                        "the token of this stream was revoked or its rights changed; open the stream again with a valid token",
                        "token aliran ini dicabut atau haknya berubah; buka aliran lagi dengan token yang sah",
                    ))
                })
        });
        Ok(Response::new(Box::pin(stream.chain(last))))
    }

    async fn report_queue(
        &self,
        request: Request<ReportQueueRequest>,
    ) -> Result<Response<ReportQueueResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        record_place(&r.office_id, &r.service_point_id);
        who.allow(
            Rpc::ReportQueue,
            Scope::ServicePoint(&r.office_id, &r.service_point_id),
        )?;
        let mut c = Checker::new();
        c.service_point_ref(&r.office_id, &r.service_point_id);
        c.counter_id(&r.counter_id);
        c.range("waiting", r.waiting, 0, validate::MAX_WAITING);
        c.finish()?;
        Ok(Response::new(
            self.engine
                .report_queue(&r.office_id, &r.service_point_id, &r.counter_id, r.waiting)
                .await?,
        ))
    }
}

/// Validates a Reserve request (every bad field at once) and returns its parsed NIK. Pure, so
/// the fuzz target runs the very same checks.
pub fn check_reserve(
    r: &ReserveRequest,
    today: chrono::NaiveDate,
) -> Result<crate::domain::nik::Nik, crate::engine::EngineError> {
    let mut c = Checker::new();
    c.request_id(&r.request_id);
    c.office_id("office_id", &r.office_id);
    c.id(
        "service_point_id",
        &r.service_point_id,
        validate::MAX_ID_CHARS,
    );
    c.counter_id(&r.counter_id);
    let nik = c.nik("nik", &r.nik, today);
    c.enumeration::<Reason>("reason", r.reason, false);
    c.enumeration::<IkdStatus>("ikd_status", r.ikd_status, true);
    c.finish()?;
    nik.ok_or_else(|| crate::engine::EngineError::Internal("validated NIK missing".into()))
}

/// A ListReservations page token: `YYYY-MM-DD:SEQ` (the listing's day and the last office
/// sequence number given), or a bare `SEQ` from servers before the day was in it.
fn parse_reservation_token(token: &str) -> Option<(Option<chrono::NaiveDate>, i64)> {
    let (day, seq) = match token.split_once(':') {
        Some((day, seq)) => (Some(parse_local_date(day).ok()?), seq),
        None => (None, token),
    };
    let seq = seq.parse().ok().filter(|seq: &i64| *seq > 0)?;
    Some((day, seq))
}
