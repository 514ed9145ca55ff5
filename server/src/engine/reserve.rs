//! Reserve: the hot path. One transaction decides and writes: the office row is locked first,
//! so no other transaction (connection, process or replica) can decide about the same office's
//! quota and stock between our read and our write.

use blangko_proto::v1::{
    IkdReferral, IkdStatus, LedgerEntryKind, QuotaPolicy, ReferralCause, ReserveResponse,
    reserve_response::Outcome,
};
use chrono::NaiveDate;
use prost::Message;
use sqlx::AnyConnection;

use super::ledger::{self, NewEntry};
use super::queries::{admission_input, snapshot};
use super::{
    Engine, EngineError, EngineResult, calendar_of, new_reservation_id, policy_of,
    priority_reasons, release_at_ms, reservation_to_proto, timestamp, zone_of,
};
use crate::domain::calendar::{OfficeZone, ServiceCalendar, format_local_date, parse_local_date};
use crate::domain::nik::Nik;
use crate::domain::quota::{self, CapUse};
use crate::domain::referral::{ReferralKind, referral_text_at};
use crate::store::rows::{self, OfficeRow, QuotaDayRow, ReservationRow};

/// A validated Reserve.
#[derive(Debug, Clone)]
pub struct ReserveCommand {
    /// Idempotency key.
    pub request_id: String,
    /// The office.
    pub office_id: String,
    /// The service point.
    pub service_point_id: String,
    /// The counter.
    pub counter_id: String,
    /// The applicant (Debug prints it masked).
    pub nik: Nik,
    /// Wire value of the reason (validated).
    pub reason: i32,
    /// Wire value of the IKD check (validated).
    pub ikd_status: i32,
    /// Who calls.
    pub principal: String,
    /// Keyed fingerprint of the request content.
    pub fingerprint: String,
}

/// The method name idempotency records carry.
pub const RESERVE: &str = "Reserve";

impl Engine {
    /// Reserves one blank for one applicant, or refers the applicant to IKD.
    #[tracing::instrument(skip_all, fields(office = %cmd.office_id, service_point = %cmd.service_point_id, nik = %cmd.nik.masked()))]
    pub async fn reserve(&self, cmd: &ReserveCommand) -> EngineResult<ReserveResponse> {
        let nik_hash = self.nik_key.hash_nik(cmd.nik.as_str());
        let (response, changed) = self
            .with_retry(|| self.reserve_once(cmd, &nik_hash))
            .await?;
        if changed {
            self.hub.office_changed(&cmd.office_id);
        }
        Ok(response)
    }

    async fn reserve_once(
        &self,
        cmd: &ReserveCommand,
        nik_hash: &str,
    ) -> EngineResult<(ReserveResponse, bool)> {
        let lock = self.store.for_update();
        let mut tx = self.begin().await?;
        let conn: &mut AnyConnection = &mut tx;
        let mut office = Self::office_or_not_found(conn, &cmd.office_id, lock).await?;
        if let Some(stored) = self
            .stored_answer(conn, &cmd.request_id, RESERVE, &cmd.fingerprint)
            .await?
        {
            let mut response = ReserveResponse::decode(stored.as_slice())
                .map_err(|e| EngineError::Internal(format!("stored answer: {e}")))?;
            if let Some(Outcome::Reservation(r)) = response.outcome.as_mut() {
                r.replayed = true;
            }
            return Ok((response, false));
        }
        let sp =
            Self::service_point_or_not_found(conn, &cmd.office_id, &cmd.service_point_id).await?;
        let zone = zone_of(&office)?;
        let now = self.clock.now_ms();
        let today = zone.local_date(now);
        let date = format_local_date(today);
        let expired = self
            .expire_due_in_tx(conn, &mut office, now, &cmd.principal)
            .await?;
        let mut qd = super::quota_day_for_update(conn, lock, &office, &sp, today).await?;
        let policy = policy_of(&sp)?;
        let calendar = calendar_of(&sp);

        // One person, one blank a day (rule 7).
        if let Some(existing) = rows::live_reservation_of_nik(conn, nik_hash, &date).await? {
            if existing.office_id != cmd.office_id
                || existing.service_point_id != cmd.service_point_id
            {
                return Err(EngineError::FailedPrecondition {
                    reason: "ALREADY_RESERVED_ELSEWHERE",
                    message: format!(
                        "this applicant already holds a blank today at office {} service point {}",
                        existing.office_id, existing.service_point_id
                    ),
                });
            }
            let snap = snapshot(conn, &office, &sp, &policy, &qd, &calendar, zone, now).await?;
            let response = ReserveResponse {
                outcome: Some(Outcome::Reservation(reservation_to_proto(&existing, true))),
                quota: Some(snap),
            };
            self.finish(tx, cmd, &office, &response, expired > 0)
                .await?;
            return Ok((response, expired > 0));
        }

        let refusal = self
            .admission(conn, cmd, &office, &policy, &qd, zone, today, now)
            .await?;
        let outcome = match refusal {
            Some(cause) => Outcome::IkdReferral(referral(
                cause, zone, today, now, &office, &policy, &qd, &calendar,
            )),
            None => {
                let is_priority = priority_reasons(&policy).contains(&cmd.reason);
                let reservation_id = new_reservation_id();
                let masked_nik = cmd.nik.masked();
                qd.held += 1;
                if is_priority {
                    qd.priority_used += 1;
                }
                check_quota_invariant(&qd)?;
                rows::update_quota_day(conn, &qd).await?;
                let mut entry = NewEntry::of(LedgerEntryKind::Reserve);
                entry.held_delta = 1;
                entry.service_point_id = cmd.service_point_id.clone();
                entry.reservation_id = reservation_id.clone();
                entry.masked_nik = masked_nik.clone();
                ledger::append(conn, &mut office, entry, &cmd.principal, now, &date).await?;
                rows::update_office_stock(conn, &office).await?;
                let reservation = ReservationRow {
                    reservation_id,
                    office_id: cmd.office_id.clone(),
                    office_seq: office.ledger_seq,
                    service_point_id: cmd.service_point_id.clone(),
                    counter_id: cmd.counter_id.clone(),
                    local_date: date.clone(),
                    nik_hash: nik_hash.to_string(),
                    masked_nik,
                    reason: i64::from(cmd.reason),
                    priority: is_priority,
                    ikd_status: i64::from(cmd.ikd_status),
                    state: "HELD".to_string(),
                    created_ms: now,
                    expires_ms: now + office.hold_ttl_secs.max(1) * 1000,
                    committed_ms: 0,
                    spoiled_count: 0,
                };
                rows::insert_reservation(conn, &reservation).await?;
                Outcome::Reservation(reservation_to_proto(&reservation, false))
            }
        };
        let changed = matches!(outcome, Outcome::Reservation(_)) || expired > 0;
        let snap = snapshot(conn, &office, &sp, &policy, &qd, &calendar, zone, now).await?;
        let response = ReserveResponse {
            outcome: Some(outcome),
            quota: Some(snap),
        };
        self.finish(tx, cmd, &office, &response, changed).await?;
        Ok((response, changed))
    }

    /// Stores the answer for the request id, announces the change to other replicas, commits.
    async fn finish(
        &self,
        mut tx: crate::store::Tx,
        cmd: &ReserveCommand,
        office: &OfficeRow,
        response: &ReserveResponse,
        changed: bool,
    ) -> EngineResult<()> {
        let now = self.clock.now_ms();
        rows::store_answer(
            &mut tx,
            &cmd.request_id,
            RESERVE,
            &cmd.fingerprint,
            &response.encode_to_vec(),
            now,
        )
        .await?;
        if changed {
            self.announce_in_tx(&mut tx, &office.office_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Decides whether the applicant may have a blank: None admits, Some names the referral.
    #[allow(clippy::too_many_arguments)]
    async fn admission(
        &self,
        conn: &mut AnyConnection,
        cmd: &ReserveCommand,
        office: &OfficeRow,
        policy: &QuotaPolicy,
        qd: &QuotaDayRow,
        zone: OfficeZone,
        today: NaiveDate,
        now: i64,
    ) -> EngineResult<Option<ReferralKind>> {
        // IKD first (rule 8): the office requires an active IKD, an exemption, or a recorded activation.
        if office.ikd_first_required {
            if cmd.ikd_status == IkdStatus::Unspecified as i32 {
                return Err(EngineError::invalid(
                    "ikd_status",
                    "this office requires IKD first: say whether the applicant's IKD is ACTIVE, NOT_ACTIVE or EXEMPT",
                ));
            }
            if cmd.ikd_status == IkdStatus::NotActive as i32
                && !self
                    .ikd_activated(conn, &self.nik_key.hash_nik(cmd.nik.as_str()))
                    .await?
            {
                return Ok(Some(ReferralKind::IkdRequired));
            }
        }
        let is_priority = priority_reasons(policy).contains(&cmd.reason);
        let mut input =
            admission_input(conn, office, policy, qd, zone, today, now, is_priority).await?;
        for cap in &policy.reason_caps {
            if cap.reasons.contains(&cmd.reason) {
                let used = rows::live_count_for_reasons(
                    conn,
                    &office.office_id,
                    &qd.service_point_id,
                    &qd.local_date,
                    &cap.reasons
                        .iter()
                        .map(|r| i64::from(*r))
                        .collect::<Vec<_>>(),
                )
                .await?;
                input.reason_caps.push(CapUse {
                    cap: u64::from(cap.daily_cap),
                    used: used.max(0) as u64,
                });
            }
        }
        Ok(quota::decide(&input).err().map(ReferralKind::from))
    }

    async fn ikd_activated(&self, conn: &mut AnyConnection, nik_hash: &str) -> EngineResult<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM ikd_activations WHERE nik_hash = $1")
            .bind(nik_hash)
            .fetch_optional(conn)
            .await?;
        Ok(row.is_some())
    }

    /// The answer stored for `request_id`, if any; ALREADY_EXISTS if it was for other content.
    pub(crate) async fn stored_answer(
        &self,
        conn: &mut AnyConnection,
        request_id: &str,
        method: &str,
        fingerprint: &str,
    ) -> EngineResult<Option<Vec<u8>>> {
        match rows::stored_answer(conn, request_id).await? {
            None => Ok(None),
            Some(a) if a.method == method && a.fingerprint == fingerprint => Ok(Some(a.response)),
            Some(a) => Err(EngineError::AlreadyExists {
                reason: "REQUEST_ID_REUSED",
                message: format!(
                    "request_id '{request_id}' was already used for another {} request; use a new request_id for a new request",
                    a.method
                ),
            }),
        }
    }

    /// Tells other replicas (PostgreSQL NOTIFY, delivered at commit) that an office changed.
    pub(crate) async fn announce_in_tx(
        &self,
        conn: &mut AnyConnection,
        office_id: &str,
    ) -> EngineResult<()> {
        if self.store.kind() == crate::store::DatabaseKind::Postgres {
            sqlx::query("SELECT pg_notify('blangko_office_changed', $1)")
                .bind(office_id)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// Asserts the quota invariant before writing a quota day (the database checks it too).
pub(crate) fn check_quota_invariant(qd: &QuotaDayRow) -> EngineResult<()> {
    if qd.held < 0 || qd.committed < 0 || qd.held + qd.committed > qd.quota {
        return Err(EngineError::Internal(format!(
            "quota invariant broken at {}/{} on {}: held {} + committed {} > quota {}",
            qd.office_id, qd.service_point_id, qd.local_date, qd.held, qd.committed, qd.quota
        )));
    }
    Ok(())
}

/// The IKD referral for a refusal, with when quota opens again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn referral(
    kind: ReferralKind,
    zone: OfficeZone,
    today: NaiveDate,
    now: i64,
    office: &OfficeRow,
    policy: &QuotaPolicy,
    qd: &QuotaDayRow,
    calendar: &ServiceCalendar,
) -> IkdReferral {
    let next_day = calendar
        .next_service_day_after(today)
        .map(|d| zone.start_of_day_ms(d));
    let release = release_at_ms(zone, today, policy);
    let next_ms = match kind {
        ReferralKind::IkdRequired => None,
        // The priority share is what stopped a non-priority reason: it opens at the release time.
        ReferralKind::QuotaExhausted if qd.used() < qd.quota && now < release => Some(release),
        // No blanks: the next supply, when one is expected after today.
        ReferralKind::OutOfStock => parse_local_date(&office.expected_next_supply_date)
            .ok()
            .filter(|d| *d > today)
            .map(|d| zone.start_of_day_ms(d)),
        _ => next_day,
    };
    let text = referral_text_at(kind, zone, next_ms);
    let cause = match kind {
        ReferralKind::Closed => ReferralCause::Closed,
        ReferralKind::OutOfStock => ReferralCause::OutOfStock,
        ReferralKind::QuotaExhausted => ReferralCause::QuotaExhausted,
        ReferralKind::ReasonCapReached => ReferralCause::ReasonCapReached,
        ReferralKind::IkdRequired => ReferralCause::IkdRequired,
    };
    IkdReferral {
        cause: cause as i32,
        message_indonesian: text.indonesian,
        message_english: text.english,
        activation_steps_indonesian: text.steps_indonesian,
        activation_steps_english: text.steps_english,
        next_quota_at: next_ms.map(timestamp),
    }
}
