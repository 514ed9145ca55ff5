//! Who may call what. A caller presents a bearer token (`authorization: Bearer …`); the token
//! table (`tokens`) maps it to a [`Principal`] with a [`Role`] and, for offices' staff, an
//! office and its service points. The layer in front of the services (`layer`) authenticates
//! from the headers, before the body is decoded (UNAUTHENTICATED), and hands the principal to
//! the handler; each handler names its RPC and the office (and service point) the request
//! touches, and [`Principal::allow`] answers PERMISSION_DENIED when the role or office does not
//! fit. Calls that name only a reservation are authorized against the reservation's office and
//! service point, read from the database (`grpc::allow_on_reservation`).
//!
//! The rules, one line per role:
//! - `counter`: CounterService for its own office, limited to its service points when the token
//!   names some;
//! - `supervisor`: StockService writes and reads and CounterService, for its own office only;
//! - `agency`: read-only across offices: GetStock, ListStock, ListLedgerEntries, VerifyLedger,
//!   GetStockReport and GetQuota;
//! - `admin`: everything.
//!
//! Health, reflection and GetServerInfo need no token. Without a token file (allowed on a
//! loopback address only, or with `--insecure-no-auth`) every caller is the admin "anonymous".

pub mod layer;
pub mod tokens;

use tonic::{Code, Status};

use crate::grpc::status::localized;

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A counter terminal: CounterService at its own office and service points.
    Counter,
    /// An office supervisor: StockService writes and CounterService at its own office.
    Supervisor,
    /// Another agency (ministry, auditors): read-only, across offices.
    Agency,
    /// An operator: everything.
    Admin,
}

impl Role {
    /// The role named `text` (as written in the token file).
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "counter" => Some(Role::Counter),
            "supervisor" => Some(Role::Supervisor),
            "agency" => Some(Role::Agency),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The name written in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Counter => "counter",
            Role::Supervisor => "supervisor",
            Role::Agency => "agency",
            Role::Admin => "admin",
        }
    }

    /// Whether the role belongs to one office (and so the token file must name it).
    pub fn is_office_staff(self) -> bool {
        matches!(self, Role::Counter | Role::Supervisor)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name the ledger records for every change the caller makes.
    pub name: String,
    /// What the caller may do.
    pub role: Role,
    /// The office of a counter or supervisor; None for agency and admin.
    pub office_id: Option<String>,
    /// The service points a counter is limited to; None means all of its office's.
    pub service_points: Option<Vec<String>>,
}

impl Principal {
    /// Its office and service points as the token file writes them: `*` for "all".
    pub fn scope_fields(&self) -> (&str, String) {
        (
            self.office_id.as_deref().unwrap_or("*"),
            self.service_points
                .as_ref()
                .map(|v| v.join(","))
                .unwrap_or_else(|| "*".to_string()),
        )
    }

    /// The caller of a server that runs without authentication (loopback only, or explicitly
    /// insecure): may do everything, recorded as "anonymous".
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".to_string(),
            role: Role::Admin,
            office_id: None,
            service_points: None,
        }
    }
}

/// Every RPC that needs a principal (GetServerInfo, health and reflection are open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// CounterService.Reserve.
    Reserve,
    /// CounterService.CommitReservation.
    CommitReservation,
    /// CounterService.CancelReservation.
    CancelReservation,
    /// CounterService.ReportSpoiledBlank.
    ReportSpoiledBlank,
    /// CounterService.RecordIkdActivation.
    RecordIkdActivation,
    /// CounterService.ListReservations.
    ListReservations,
    /// CounterService.GetQuota.
    GetQuota,
    /// CounterService.WatchQuota.
    WatchQuota,
    /// CounterService.ReportQueue.
    ReportQueue,
    /// StockService.UpsertOffice.
    UpsertOffice,
    /// StockService.UpsertServicePoint.
    UpsertServicePoint,
    /// StockService.RecordShipment.
    RecordShipment,
    /// StockService.TransferStock (the lending office is the scope).
    TransferStock,
    /// StockService.AdjustStock.
    AdjustStock,
    /// StockService.SetQuotaPolicy.
    SetQuotaPolicy,
    /// StockService.GetStock.
    GetStock,
    /// StockService.ListStock.
    ListStock,
    /// StockService.ListLedgerEntries.
    ListLedgerEntries,
    /// StockService.VerifyLedger.
    VerifyLedger,
    /// StockService.GetStockReport.
    GetStockReport,
}

impl Rpc {
    /// The roles that may call the RPC at all (the office is checked separately).
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Rpc::Reserve
            | Rpc::CommitReservation
            | Rpc::CancelReservation
            | Rpc::ReportSpoiledBlank
            | Rpc::RecordIkdActivation
            | Rpc::ListReservations
            | Rpc::WatchQuota
            | Rpc::ReportQueue => &[Counter, Supervisor, Admin],
            Rpc::GetQuota => &[Counter, Supervisor, Agency, Admin],
            Rpc::UpsertOffice
            | Rpc::UpsertServicePoint
            | Rpc::RecordShipment
            | Rpc::TransferStock
            | Rpc::AdjustStock
            | Rpc::SetQuotaPolicy => &[Supervisor, Admin],
            Rpc::GetStock | Rpc::ListLedgerEntries | Rpc::VerifyLedger | Rpc::GetStockReport => {
                &[Supervisor, Agency, Admin]
            }
            Rpc::ListStock => &[Agency, Admin],
        }
    }
}

/// What a request touches, as far as authorization is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// One service point of one office.
    ServicePoint(&'a str, &'a str),
    /// An office as a whole, at any of its service points (e.g. a defective blank in stock).
    Office(&'a str),
    /// Every service point of an office at once (e.g. listing all reservations of the office).
    AllServicePoints(&'a str),
    /// Every office (e.g. ListStock, VerifyLedger of all chains).
    AllOffices,
}

impl Principal {
    /// Ok when the principal may call `rpc` on `scope`; PERMISSION_DENIED otherwise, naming
    /// what is missing (never anything of the request's content).
    pub fn allow(&self, rpc: Rpc, scope: Scope<'_>) -> Result<(), Status> {
        if !rpc.roles().contains(&self.role) {
            return Err(localized(
                Code::PermissionDenied,
                format!(
                    "the role '{}' of '{}' may not call {rpc:?}",
                    self.role.as_str(),
                    self.name
                ),
                format!(
                    "peran '{}' milik '{}' tidak boleh memanggil {rpc:?}",
                    self.role.as_str(),
                    self.name
                ),
            ));
        }
        if matches!(self.role, Role::Agency | Role::Admin) {
            return Ok(());
        }
        let own = self.office_id.as_deref().unwrap_or("");
        let (office, point, all_points) = match scope {
            Scope::ServicePoint(o, sp) => (o, Some(sp), false),
            Scope::Office(o) => (o, None, false),
            Scope::AllServicePoints(o) => (o, None, true),
            Scope::AllOffices => {
                return Err(self.denied(
                    "this call reads every office",
                    "panggilan ini membaca semua kantor",
                ));
            }
        };
        if office != own {
            return Err(self.denied(
                "the request is for another office",
                "permintaan ini untuk kantor lain",
            ));
        }
        if self.role == Role::Counter
            && let Some(points) = &self.service_points
        {
            if all_points {
                return Err(self.denied(
                    "name one of the counter's service points",
                    "sebutkan salah satu tempat layanan loket ini",
                ));
            }
            if let Some(sp) = point
                && !points.iter().any(|p| p == sp)
            {
                return Err(self.denied(
                    "the request is for another service point",
                    "permintaan ini untuk tempat layanan lain",
                ));
            }
        }
        Ok(())
    }

    /// TransferStock's receiving end: a supervisor lends only to an office of its own province
    /// (the province arranges lending between its regencies); a transfer to another province is
    /// the ministry's, with an admin token. Called once both office ids are valid.
    pub fn allow_transfer_to(
        &self,
        from_office_id: &str,
        to_office_id: &str,
    ) -> Result<(), Status> {
        let province = |office: &str| office.get(..2).map(str::to_string);
        if self.role == Role::Supervisor && province(from_office_id) != province(to_office_id) {
            return Err(self.denied(
                "a transfer to an office of another province is arranged by the ministry (an admin token)",
                "pemindahan ke kantor di provinsi lain diatur oleh kementerian (token admin)",
            ));
        }
        Ok(())
    }

    /// PERMISSION_DENIED, saying `why` in English and `mengapa` in Bahasa Indonesia.
    fn denied(&self, why: &str, mengapa: &str) -> Status {
        let office = self.office_id.as_deref().unwrap_or("-");
        localized(
            Code::PermissionDenied,
            format!(
                "'{}' ({} of office {office}) may not do this: {why}",
                self.name,
                self.role.as_str(),
            ),
            format!(
                "'{}' ({} kantor {office}) tidak boleh melakukan ini: {mengapa}",
                self.name,
                self.role.as_str(),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(points: Option<Vec<&str>>) -> Principal {
        Principal {
            name: "loket-1".into(),
            role: Role::Counter,
            office_id: Some("3275".into()),
            service_points: points.map(|p| p.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn a_counter_is_kept_to_its_office_and_service_points() {
        let c = counter(Some(vec!["mpp"]));
        assert!(
            c.allow(Rpc::Reserve, Scope::ServicePoint("3275", "mpp"))
                .is_ok()
        );
        assert!(
            c.allow(Rpc::Reserve, Scope::ServicePoint("3275", "main"))
                .is_err()
        );
        assert!(
            c.allow(Rpc::Reserve, Scope::ServicePoint("3204", "mpp"))
                .is_err()
        );
        assert!(
            c.allow(Rpc::ListReservations, Scope::AllServicePoints("3275"))
                .is_err()
        );
        assert!(
            c.allow(Rpc::ReportSpoiledBlank, Scope::Office("3275"))
                .is_ok()
        );
        assert!(c.allow(Rpc::GetStock, Scope::Office("3275")).is_err());
        let all = counter(None);
        assert!(
            all.allow(Rpc::ListReservations, Scope::AllServicePoints("3275"))
                .is_ok()
        );
    }

    #[test]
    fn agency_reads_everywhere_and_writes_nowhere() {
        let a = Principal {
            name: "kemendagri".into(),
            role: Role::Agency,
            office_id: None,
            service_points: None,
        };
        assert!(a.allow(Rpc::ListStock, Scope::AllOffices).is_ok());
        assert!(
            a.allow(Rpc::GetQuota, Scope::ServicePoint("3204", "x"))
                .is_ok()
        );
        assert!(a.allow(Rpc::RecordShipment, Scope::Office("3275")).is_err());
        assert!(
            a.allow(Rpc::Reserve, Scope::ServicePoint("3275", "x"))
                .is_err()
        );
    }

    #[test]
    fn a_supervisor_lends_within_its_province_and_an_admin_anywhere() {
        let supervisor = Principal {
            name: "kabid-3275".into(),
            role: Role::Supervisor,
            office_id: Some("3275".into()),
            service_points: None,
        };
        assert!(supervisor.allow_transfer_to("3275", "3216").is_ok());
        let refused = supervisor
            .allow_transfer_to("3275", "3601")
            .expect_err("Banten is another province");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let admin = Principal {
            name: "ministry".into(),
            role: Role::Admin,
            office_id: None,
            service_points: None,
        };
        assert!(admin.allow_transfer_to("3275", "3601").is_ok());
    }
}
