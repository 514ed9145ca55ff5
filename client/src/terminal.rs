//! [`Terminal`]: one counter's typed view of the API (office, service point and counter filled in,
//! request ids generated, failover and safe retries underneath). The commands, the queue runner
//! and the interactive screen all go through it; other Rust programs can too.

use blangko_proto::v1::{
    CancelReservationRequest, CancelReservationResponse, CommitReservationRequest,
    CommitReservationResponse, GetQuotaRequest, GetServerInfoRequest, GetServerInfoResponse,
    IkdStatus, ListReservationsRequest, QuotaSnapshot, Reason, RecordIkdActivationRequest,
    RecordIkdActivationResponse, ReportQueueRequest, ReportQueueResponse,
    ReportSpoiledBlankRequest, ReportSpoiledBlankResponse, Reservation, ReservationState,
    ReserveRequest, ReserveResponse, SpoilageReason, WatchQuotaRequest, WatchQuotaResponse,
};
use tonic::Streaming;

use crate::connect::{Connection, MAX_REQUEST_ID_LEN, random_request_id};
use crate::error::Failure;

/// ListReservations pages fetched at most for one listing (500 per page): a counter's day, or
/// the reservations of 500 request ids, never has more.
const MAX_LIST_PAGES: usize = 10;

/// The most request ids one ListReservations may filter by (the server's bound).
pub const MAX_LISTED_REQUEST_IDS: usize = 500;

/// Who is calling: the office, service point and counter given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The office (4-digit code).
    pub office: Option<String>,
    /// The service point.
    pub service_point: Option<String>,
    /// The counter (loket).
    pub counter: Option<String>,
}

/// One counter terminal's access to the servers.
#[derive(Clone)]
pub struct Terminal {
    /// The endpoints, with failover and retry.
    pub conn: Connection,
    /// Office, service point, counter.
    pub id: Identity,
}

fn required<'a>(value: &'a Option<String>, option: &str, env: &str) -> Result<&'a str, Failure> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Failure::bad_field(
            option.trim_start_matches('-'),
            format!("{option} (or {env}) is required"),
            format!("{option} (atau {env}) wajib diisi"),
        )),
    }
}

/// Checks a user-given request id.
pub fn check_request_id(id: &str) -> Result<(), Failure> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
        return Err(Failure::bad_field(
            "request_id",
            format!("must be 1..={MAX_REQUEST_ID_LEN} characters"),
            format!("harus 1..={MAX_REQUEST_ID_LEN} karakter"),
        ));
    }
    Ok(())
}

impl Terminal {
    /// A new request id for a spoiled-blank report.
    pub fn new_spoiled_request_id() -> String {
        random_request_id("s")
    }

    /// A terminal over `conn` for `id`.
    pub fn new(conn: Connection, id: Identity) -> Terminal {
        Terminal { conn, id }
    }

    /// The office, or a bad-input failure naming `--office`.
    pub fn office(&self) -> Result<&str, Failure> {
        required(&self.id.office, "--office", "BLANGKO_OFFICE")
    }

    /// The service point, or a bad-input failure naming `--service-point`.
    pub fn service_point(&self) -> Result<&str, Failure> {
        required(
            &self.id.service_point,
            "--service-point",
            "BLANGKO_SERVICE_POINT",
        )
    }

    /// The counter, or a bad-input failure naming `--counter`.
    pub fn counter(&self) -> Result<&str, Failure> {
        required(&self.id.counter, "--counter", "BLANGKO_COUNTER")
    }

    /// The server's version and database (failover over the endpoints).
    pub async fn server_info(&self) -> Result<GetServerInfoResponse, Failure> {
        Ok(self
            .conn
            .stock(|mut c| async move { c.get_server_info(GetServerInfoRequest {}).await })
            .await?)
    }

    /// Today's quota snapshot of the service point.
    pub async fn quota(&self) -> Result<QuotaSnapshot, Failure> {
        let request = GetQuotaRequest {
            office_id: self.office()?.to_string(),
            service_point_id: self.service_point()?.to_string(),
        };
        let response = self
            .conn
            .counter(|mut c| {
                let request = request.clone();
                async move { c.get_quota(request).await }
            })
            .await?;
        response.quota.ok_or_else(|| {
            Failure::local(
                "server tidak mengirim angka kuota",
                "the server sent no quota snapshot",
            )
        })
    }

    /// Reserves a blank for one applicant. `request_id` makes retries and re-runs safe: the same
    /// id always gets the first answer.
    pub async fn reserve(
        &self,
        nik: &str,
        reason: Reason,
        ikd: IkdStatus,
        request_id: &str,
    ) -> Result<ReserveResponse, Failure> {
        check_request_id(request_id)?;
        let request = ReserveRequest {
            request_id: request_id.to_string(),
            office_id: self.office()?.to_string(),
            service_point_id: self.service_point()?.to_string(),
            counter_id: self.counter()?.to_string(),
            nik: nik.to_string(),
            reason: reason as i32,
            ikd_status: ikd as i32,
        };
        Ok(self
            .conn
            .counter(|mut c| {
                let request = request.clone();
                async move { c.reserve(request).await }
            })
            .await?)
    }

    /// Commits a reservation (the card was printed).
    pub async fn commit(&self, reservation_id: &str) -> Result<CommitReservationResponse, Failure> {
        let request = CommitReservationRequest {
            request_id: random_request_id("c"),
            reservation_id: reservation_id.to_string(),
        };
        Ok(self
            .conn
            .counter(|mut c| {
                let request = request.clone();
                async move { c.commit_reservation(request).await }
            })
            .await?)
    }

    /// Cancels a held reservation.
    pub async fn cancel(
        &self,
        reservation_id: &str,
        note: &str,
    ) -> Result<CancelReservationResponse, Failure> {
        let request = CancelReservationRequest {
            request_id: random_request_id("x"),
            reservation_id: reservation_id.to_string(),
            note: note.to_string(),
        };
        Ok(self
            .conn
            .counter(|mut c| {
                let request = request.clone();
                async move { c.cancel_reservation(request).await }
            })
            .await?)
    }

    /// Records a spoiled blank, on a held reservation or (empty id) found in stock. Unlike a
    /// Reserve (one per NIK a day) or a commit, a spoilage is not the same twice by its content:
    /// a second report with a new `request_id` writes off a second blank. So a caller that got no
    /// answer sends the same `request_id` again ([`Terminal::new_spoiled_request_id`]).
    pub async fn spoiled(
        &self,
        reservation_id: &str,
        reason: SpoilageReason,
        report: &str,
        note: &str,
        request_id: &str,
    ) -> Result<ReportSpoiledBlankResponse, Failure> {
        check_request_id(request_id)?;
        let request = ReportSpoiledBlankRequest {
            request_id: request_id.to_string(),
            office_id: self.office()?.to_string(),
            reservation_id: reservation_id.to_string(),
            reason: reason as i32,
            destruction_report_reference: report.to_string(),
            note: note.to_string(),
        };
        Ok(self
            .conn
            .counter(|mut c| {
                let request = request.clone();
                async move { c.report_spoiled_blank(request).await }
            })
            .await?)
    }

    /// Records that the officer activated IKD for the applicant.
    pub async fn record_ikd_activation(
        &self,
        nik: &str,
    ) -> Result<RecordIkdActivationResponse, Failure> {
        let request = RecordIkdActivationRequest {
            request_id: random_request_id("ikd"),
            office_id: self.office()?.to_string(),
            service_point_id: self.service_point()?.to_string(),
            counter_id: self.counter()?.to_string(),
            nik: nik.to_string(),
        };
        Ok(self
            .conn
            .counter(|mut c| {
                let request = request.clone();
                async move { c.record_ikd_activation(request).await }
            })
            .await?)
    }

    /// Reports this counter's waiting count; the answer carries the forecast (rule 12).
    pub async fn report_queue(&self, waiting: u32) -> Result<ReportQueueResponse, Failure> {
        let request = ReportQueueRequest {
            office_id: self.office()?.to_string(),
            service_point_id: self.service_point()?.to_string(),
            counter_id: self.counter()?.to_string(),
            waiting,
        };
        Ok(self
            .conn
            .counter(|mut c| {
                let request = request.clone();
                async move { c.report_queue(request).await }
            })
            .await?)
    }

    /// This counter's HELD reservations today, newest first, at this service point when one is
    /// given.
    pub async fn holds(&self) -> Result<Vec<Reservation>, Failure> {
        let listed = self
            .pages(ListReservationsRequest {
                office_id: self.office()?.to_string(),
                service_point_id: self.id.service_point.clone().unwrap_or_default(),
                counter_id: self.counter()?.to_string(),
                state: ReservationState::Held as i32,
                ..ListReservationsRequest::default()
            })
            .await?;
        Ok(listed.into_iter().map(|(r, _)| r).collect())
    }

    /// The reservations that this terminal's Reserve calls with these request ids (at most
    /// [`MAX_LISTED_REQUEST_IDS`]) made or were answered with at its service point on
    /// `local_date` ("YYYY-MM-DD"), as they are now, in every state, each with the request id of
    /// its call.
    pub async fn reservations_made_by(
        &self,
        request_ids: &[&str],
        local_date: &str,
    ) -> Result<Vec<(Reservation, String)>, Failure> {
        self.pages(ListReservationsRequest {
            office_id: self.office()?.to_string(),
            service_point_id: self.service_point()?.to_string(),
            local_date: local_date.to_string(),
            request_ids: request_ids.iter().map(|id| id.to_string()).collect(),
            ..ListReservationsRequest::default()
        })
        .await
    }

    /// Every page of a listing, at most [`MAX_LIST_PAGES`] of 500, each reservation with the
    /// request id that made it (when the listing is by request id; else empty).
    async fn pages(
        &self,
        first: ListReservationsRequest,
    ) -> Result<Vec<(Reservation, String)>, Failure> {
        let mut found = Vec::new();
        let mut request = ListReservationsRequest {
            page_size: 500,
            ..first
        };
        for _ in 0..MAX_LIST_PAGES {
            let page = self
                .conn
                .counter(|mut c| {
                    let request = request.clone();
                    async move { c.list_reservations(request).await }
                })
                .await?;
            // A server that predates the filter by request id lists everything, unnamed: not an
            // answer to this question.
            if !request.request_ids.is_empty() && page.made_by.len() != page.reservations.len() {
                return Err(Failure::local(
                    "server ini belum mendukung daftar menurut ID permintaan (perbarui server)",
                    "this server does not list reservations by request id (update the server)",
                ));
            }
            let mut made_by = page.made_by.into_iter();
            found.extend(
                page.reservations
                    .into_iter()
                    .map(|r| (r, made_by.next().unwrap_or_default())),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        Ok(found)
    }

    /// Opens a WatchQuota stream on the first endpoint that answers.
    pub async fn watch(&self) -> Result<Streaming<WatchQuotaResponse>, Failure> {
        let request = WatchQuotaRequest {
            office_id: self.office()?.to_string(),
            service_point_id: self.service_point()?.to_string(),
        };
        Ok(self
            .conn
            .counter_stream(|mut c| {
                let request = request.clone();
                async move { c.watch_quota(request).await }
            })
            .await?)
    }
}
