//! What happens to a reservation after Reserve: commit (the card is printed), cancel, expiry,
//! spoiled blanks; and the IKD activations that let an applicant past an IKD-first office.

use blangko_proto::v1::{
    CancelReservationResponse, CommitReservationResponse, LedgerEntryKind,
    RecordIkdActivationResponse, ReportSpoiledBlankResponse,
};
use prost::Message;
use sqlx::AnyConnection;

use super::ledger::{self, NewEntry};
use super::queries::{admission_input, snapshot};
use super::reserve::{check_quota_invariant, referral};
use super::{
    EXPIRY_BATCH, Engine, EngineError, EngineResult, MAX_EXPIRY_ROUNDS, calendar_of, decode_answer,
    policy_of, priority_reasons, reservation_to_proto, timestamp, zone_of,
};
use crate::domain::calendar::{format_local_date, parse_local_date};
use crate::domain::nik::Nik;
use crate::domain::quota;
use crate::domain::referral::ReferralKind;
use crate::domain::reservation::{self as machine, CancelStep, CommitStep, State, TransitionError};
use crate::store::rows::{self, OfficeRow, ReservationRow};

/// The principal the ledger names for what time does (hold expiry).
pub const SYSTEM_PRINCIPAL: &str = "system";

/// Method names in idempotency records.
const COMMIT: &str = "CommitReservation";
const CANCEL: &str = "CancelReservation";
const SPOIL: &str = "ReportSpoiledBlank";
const IKD: &str = "RecordIkdActivation";

/// A validated ReportSpoiledBlank.
#[derive(Debug, Clone)]
pub struct SpoilCommand {
    /// Idempotency key.
    pub request_id: String,
    /// The office whose stock the blank came from.
    pub office_id: String,
    /// The reservation being printed, or empty.
    pub reservation_id: String,
    /// Wire value of the spoilage reason (validated).
    pub reason: i32,
    /// Destruction report reference.
    pub destruction_report_reference: String,
    /// Free text.
    pub note: String,
    /// Who calls.
    pub principal: String,
    /// Keyed fingerprint of the request content.
    pub fingerprint: String,
}

/// A validated RecordIkdActivation.
#[derive(Debug, Clone)]
pub struct IkdActivationCommand {
    /// Idempotency key.
    pub request_id: String,
    /// The office.
    pub office_id: String,
    /// The service point.
    pub service_point_id: String,
    /// The counter.
    pub counter_id: String,
    /// The applicant.
    pub nik: Nik,
    /// Who calls.
    pub principal: String,
    /// Keyed fingerprint of the request content.
    pub fingerprint: String,
}

fn state_of(r: &ReservationRow) -> EngineResult<State> {
    State::parse(&r.state)
        .ok_or_else(|| EngineError::Internal(format!("unknown stored state {}", r.state)))
}

impl Engine {
    /// Finds the office of a reservation, then locks that office and reads the reservation again
    /// under the lock.
    async fn lock_reservation(
        &self,
        conn: &mut AnyConnection,
        reservation_id: &str,
    ) -> EngineResult<(OfficeRow, ReservationRow)> {
        let not_found = || EngineError::NotFound {
            kind: "reservation",
            id: reservation_id.to_string(),
        };
        let first = rows::reservation(conn, reservation_id)
            .await?
            .ok_or_else(not_found)?;
        let office =
            Self::office_or_not_found(conn, &first.office_id, self.store.for_update()).await?;
        let r = rows::reservation(conn, reservation_id)
            .await?
            .ok_or_else(not_found)?;
        Ok((office, r))
    }

    /// Commits a reservation: the card is printed.
    #[tracing::instrument(skip_all, fields(reservation = %crate::domain::nik::mask_nik_stretches(reservation_id)))]
    pub async fn commit(
        &self,
        request_id: &str,
        reservation_id: &str,
        principal: &str,
        fingerprint: &str,
    ) -> EngineResult<CommitReservationResponse> {
        let (response, office_id) = self
            .with_retry(|| self.commit_once(request_id, reservation_id, principal, fingerprint))
            .await?;
        if let Some(office_id) = office_id {
            self.hub.office_changed(&office_id);
        }
        Ok(response)
    }

    async fn commit_once(
        &self,
        request_id: &str,
        reservation_id: &str,
        principal: &str,
        fingerprint: &str,
    ) -> EngineResult<(CommitReservationResponse, Option<String>)> {
        let mut tx = self.begin().await?;
        let conn: &mut AnyConnection = &mut tx;
        let (mut office, mut r) = self.lock_reservation(conn, reservation_id).await?;
        if let Some(stored) = self
            .stored_answer(conn, request_id, COMMIT, fingerprint)
            .await?
        {
            let mut response: CommitReservationResponse = decode_answer(&stored)?;
            if let Some(res) = response.reservation.as_mut() {
                res.replayed = true;
            }
            return Ok((response, None));
        }
        let sp = Self::service_point_or_not_found(conn, &r.office_id, &r.service_point_id).await?;
        let policy = policy_of(&sp)?;
        let zone = zone_of(&office)?;
        let now = self.clock.now_ms();
        let day =
            parse_local_date(&r.local_date).map_err(|e| EngineError::Internal(e.to_string()))?;
        let lock = self.store.for_update();
        let mut qd = super::quota_day_for_update(conn, lock, &office, &sp, day).await?;
        let step = machine::on_commit(state_of(&r)?, now, r.expires_ms).map_err(|e| match e {
            TransitionError::Cancelled => EngineError::FailedPrecondition {
                reason: "RESERVATION_CANCELLED",
                message: "the reservation was cancelled; reserve again".into(),
                indonesian: "pemesanan ini sudah dibatalkan; pesan lagi".into(),
            },
            other => EngineError::FailedPrecondition {
                reason: "INVALID_TRANSITION",
                message: other.to_string(),
                indonesian: other.indonesian().into(),
            },
        })?;
        let mut replayed = false;
        match step {
            CommitStep::Replay => replayed = true,
            CommitStep::Commit => {
                r.state = State::Committed.as_str().to_string();
                r.committed_ms = now;
                qd.held -= 1;
                qd.committed += 1;
                check_quota_invariant(&qd)?;
                rows::update_quota_day(conn, &qd).await?;
                rows::update_reservation(conn, &r).await?;
                let mut entry = NewEntry::of(LedgerEntryKind::Commit);
                entry.on_hand_delta = -1;
                entry.held_delta = -1;
                entry.service_point_id = r.service_point_id.clone();
                entry.reservation_id = r.reservation_id.clone();
                entry.masked_nik = r.masked_nik.clone();
                ledger::append(conn, &mut office, entry, principal, now, &r.local_date).await?;
            }
            CommitStep::Retake => {
                // The hold ran out. First release it and every other hold of the office that
                // ran out, as a Reserve batch does, whether or not the sweeper came by: the
                // slots, blanks and cap room they free count for this retake, and the sweeper's
                // timing must not decide the answer. Then try to take a slot and a blank again,
                // all in this transaction.
                if r.state == State::Held.as_str() {
                    self.expire_hold(conn, &mut office, &mut r, now).await?;
                }
                self.expire_due_in_tx(conn, &mut office, now).await?;
                qd = super::quota_day_for_update(conn, lock, &office, &sp, day).await?;
                let today = zone.local_date(now);
                let expired_err = |why: &str, mengapa: &str| EngineError::FailedPrecondition {
                    reason: "RESERVATION_EXPIRED",
                    message: format!("the hold expired and {why}; do not print — reserve again"),
                    indonesian: format!(
                        "masa tahan sudah habis dan {mengapa}; jangan cetak — pesan lagi"
                    ),
                };
                if day != today {
                    return Err(expired_err("its day is over", "harinya sudah lewat"));
                }
                if rows::live_reservation_of_nik(conn, &r.nik_hash, &r.local_date)
                    .await?
                    .is_some()
                {
                    return Err(expired_err(
                        "the applicant holds another blank today",
                        "pemohon sudah mendapat blangko lain hari ini",
                    ));
                }
                let is_priority = priority_reasons(&policy).contains(&(r.reason as i32));
                let mut input =
                    admission_input(conn, &office, &policy, &qd, zone, today, now, is_priority)
                        .await?;
                // The reason-group caps too, as for a Reserve: the slot this hold had may have
                // gone to another applicant of the same group meanwhile.
                if !policy.reason_caps.is_empty() {
                    let by_reason = rows::live_counts_by_reason(
                        conn,
                        &r.office_id,
                        &r.service_point_id,
                        &r.local_date,
                    )
                    .await?;
                    input.reason_caps =
                        super::reserve::cap_uses(&policy, r.reason as i32, &by_reason);
                }
                if quota::decide(&input).is_err() {
                    return Err(expired_err(
                        "no slot or blank is free now",
                        "tidak ada slot atau blangko yang kosong sekarang",
                    ));
                }
                r.state = State::Committed.as_str().to_string();
                r.committed_ms = now;
                qd.committed += 1;
                if is_priority {
                    qd.priority_used += 1;
                }
                check_quota_invariant(&qd)?;
                rows::update_quota_day(conn, &qd).await?;
                rows::update_reservation(conn, &r).await?;
                let mut entry = NewEntry::of(LedgerEntryKind::Commit);
                entry.on_hand_delta = -1;
                entry.service_point_id = r.service_point_id.clone();
                entry.reservation_id = r.reservation_id.clone();
                entry.masked_nik = r.masked_nik.clone();
                entry.note = "committed after the hold expired: slot and blank taken again".into();
                ledger::append(conn, &mut office, entry, principal, now, &r.local_date).await?;
            }
        }
        rows::update_office_stock(conn, &office).await?;
        let calendar = calendar_of(&sp);
        let snap = snapshot(conn, &office, &sp, &policy, &qd, &calendar, zone, now).await?;
        let response = CommitReservationResponse {
            reservation: Some(reservation_to_proto(&r, replayed)),
            quota: Some(snap),
        };
        rows::store_answer(
            conn,
            request_id,
            COMMIT,
            fingerprint,
            &response.encode_to_vec(),
            now,
        )
        .await?;
        self.announce_in_tx(conn, &office.office_id).await?;
        self.commit_durably(tx).await?;
        Ok((response, Some(office.office_id)))
    }

    /// Cancels a held reservation.
    #[tracing::instrument(skip_all, fields(reservation = %crate::domain::nik::mask_nik_stretches(reservation_id)))]
    pub async fn cancel(
        &self,
        request_id: &str,
        reservation_id: &str,
        note: &str,
        principal: &str,
        fingerprint: &str,
    ) -> EngineResult<CancelReservationResponse> {
        let (response, office_id) = self
            .with_retry(|| {
                self.cancel_once(request_id, reservation_id, note, principal, fingerprint)
            })
            .await?;
        if let Some(office_id) = office_id {
            self.hub.office_changed(&office_id);
        }
        Ok(response)
    }

    async fn cancel_once(
        &self,
        request_id: &str,
        reservation_id: &str,
        note: &str,
        principal: &str,
        fingerprint: &str,
    ) -> EngineResult<(CancelReservationResponse, Option<String>)> {
        let mut tx = self.begin().await?;
        let conn: &mut AnyConnection = &mut tx;
        let (mut office, mut r) = self.lock_reservation(conn, reservation_id).await?;
        if let Some(stored) = self
            .stored_answer(conn, request_id, CANCEL, fingerprint)
            .await?
        {
            let mut response: CancelReservationResponse = decode_answer(&stored)?;
            if let Some(res) = response.reservation.as_mut() {
                res.replayed = true;
            }
            return Ok((response, None));
        }
        let now = self.clock.now_ms();
        let step = machine::on_cancel(state_of(&r)?, now, r.expires_ms).map_err(|_| EngineError::FailedPrecondition {
            reason: "RESERVATION_COMMITTED",
            message: "the card was already printed; a printed card cannot be cancelled (report a spoiled blank instead)".into(),
            indonesian: "kartu sudah dicetak; kartu yang sudah dicetak tidak dapat dibatalkan (laporkan blangko rusak)".into(),
        })?;
        let replayed = match step {
            CancelStep::Cancel => {
                let mut note_text = note.to_string();
                if note_text.is_empty() {
                    note_text = "cancelled at the counter".into();
                }
                self.release_hold_with_note(
                    conn,
                    &mut office,
                    &mut r,
                    State::Cancelled,
                    now,
                    principal,
                    &note_text,
                )
                .await?;
                false
            }
            CancelStep::Overdue => {
                self.expire_hold(conn, &mut office, &mut r, now).await?;
                true
            }
            CancelStep::Replay | CancelStep::AlreadyExpired => true,
        };
        // The office's other holds that ran out go first, as in every transaction that may
        // create today's quota row: a PACED quota is computed from the blanks available, and
        // would be fixed for the day with the lapsed holds still counted.
        self.expire_due_in_tx(conn, &mut office, now).await?;
        rows::update_office_stock(conn, &office).await?;
        let sp = Self::service_point_or_not_found(conn, &r.office_id, &r.service_point_id).await?;
        let zone = zone_of(&office)?;
        let policy = policy_of(&sp)?;
        let calendar = calendar_of(&sp);
        let day = zone.local_date(now);
        let qd =
            super::quota_day_for_update(conn, self.store.for_update(), &office, &sp, day).await?;
        let snap = snapshot(conn, &office, &sp, &policy, &qd, &calendar, zone, now).await?;
        let response = CancelReservationResponse {
            reservation: Some(reservation_to_proto(&r, replayed)),
            quota: Some(snap),
        };
        rows::store_answer(
            conn,
            request_id,
            CANCEL,
            fingerprint,
            &response.encode_to_vec(),
            now,
        )
        .await?;
        self.announce_in_tx(conn, &office.office_id).await?;
        self.commit_durably(tx).await?;
        Ok((response, Some(office.office_id)))
    }

    /// Ends a HELD reservation that ran out as EXPIRED: time's doing, so the ledger names
    /// `system`, not whoever noticed it (the sweeper, a batch, a late commit or cancel).
    async fn expire_hold(
        &self,
        conn: &mut AnyConnection,
        office: &mut OfficeRow,
        r: &mut ReservationRow,
        now: i64,
    ) -> EngineResult<()> {
        self.release_hold_with_note(
            conn,
            office,
            r,
            State::Expired,
            now,
            SYSTEM_PRINCIPAL,
            "hold expired",
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn release_hold_with_note(
        &self,
        conn: &mut AnyConnection,
        office: &mut OfficeRow,
        r: &mut ReservationRow,
        end: State,
        now: i64,
        principal: &str,
        note: &str,
    ) -> EngineResult<()> {
        // Every check that can refuse (EngineError::Internal: rows that do not add up) comes
        // before the first write, and the office changes in memory only once they all passed:
        // a hold that cannot be released leaves nothing half done, so the expiry rounds need no
        // savepoint per hold (on PostgreSQL, over 64 subtransactions in one transaction slow
        // every session's snapshots).
        let mut qd = rows::quota_day(conn, &r.office_id, &r.service_point_id, &r.local_date, "")
            .await?
            .ok_or_else(|| {
                EngineError::Internal(format!("reservation {} has no quota day", r.reservation_id))
            })?;
        qd.held -= 1;
        if r.priority {
            qd.priority_used -= 1;
        }
        check_quota_invariant(&qd)?;
        let kind = if end == State::Expired {
            LedgerEntryKind::Expiry
        } else {
            LedgerEntryKind::Cancel
        };
        let mut entry = NewEntry::of(kind);
        entry.held_delta = -1;
        entry.service_point_id = r.service_point_id.clone();
        entry.reservation_id = r.reservation_id.clone();
        entry.masked_nik = r.masked_nik.clone();
        entry.note = note.to_string();
        let zone = zone_of(office)?;
        let date = format_local_date(zone.local_date(now));
        // `chain` refuses before it changes the office; a failed write below fails the whole
        // transaction, office row and all.
        let stored = ledger::chain(office, entry, principal, now, &date)?;
        rows::update_quota_day(conn, &qd).await?;
        r.state = end.as_str().to_string();
        rows::update_reservation(conn, r).await?;
        ledger::insert_entries(conn, std::slice::from_ref(&stored)).await?;
        Ok(())
    }

    /// Releases every hold of `office` that ran out by `now`, in rounds of [`EXPIRY_BATCH`], at
    /// most [`MAX_EXPIRY_ROUNDS`] (the rest, if any, counts as held until the sweeper, woken
    /// now, releases it: a refusal too many, never a card too many). The caller holds the office
    /// lock. Returns how many expired. The ledger names the principal "system": time, not the
    /// caller whose transaction noticed, ended them.
    pub(crate) async fn expire_due_in_tx(
        &self,
        conn: &mut AnyConnection,
        office: &mut OfficeRow,
        now: i64,
    ) -> EngineResult<usize> {
        self.expire_due_bounded(conn, office, now, None).await
    }

    /// [`Self::expire_due_in_tx`], whose first round is `first` when the caller read it already
    /// (a Reserve batch reads the due holds with its other rows).
    pub(crate) async fn expire_due_bounded(
        &self,
        conn: &mut AnyConnection,
        office: &mut OfficeRow,
        now: i64,
        first: Option<Vec<ReservationRow>>,
    ) -> EngineResult<usize> {
        let (released, more) = self
            .expire_due_rounds(conn, office, now, first, MAX_EXPIRY_ROUNDS)
            .await?;
        if more {
            self.sweep_soon.notify_one();
        }
        Ok(released)
    }

    /// Up to `rounds` rounds of at most [`EXPIRY_BATCH`] due holds each (`first`, when given, is
    /// the first round). Returns how many were released, and whether more may be due: the last
    /// round was full and released some. A full round that released none (holds whose rows do
    /// not add up, read first every time) ends the rounds: no loop on them. (So 500 or more such
    /// holds, only possible in a database edited by hand, keep the office's later holds from
    /// being released until they are mended; each is named in the log.)
    pub(crate) async fn expire_due_rounds(
        &self,
        conn: &mut AnyConnection,
        office: &mut OfficeRow,
        now: i64,
        mut first: Option<Vec<ReservationRow>>,
        rounds: usize,
    ) -> EngineResult<(usize, bool)> {
        let mut released = 0;
        for _ in 0..rounds {
            let due = match first.take() {
                Some(due) => due,
                None => rows::due_holds(conn, &office.office_id, now, EXPIRY_BATCH).await?,
            };
            let full = i64::try_from(due.len()).unwrap_or(i64::MAX) >= EXPIRY_BATCH;
            let count = self.expire_holds_in_tx(conn, office, due, now).await?;
            released += count;
            if !full || count == 0 {
                return Ok((released, false));
            }
        }
        Ok((released, true))
    }

    /// Releases `due`, holds of `office` that ran out by `now`, read under the office lock; one
    /// round of [`Self::expire_due_rounds`].
    async fn expire_holds_in_tx(
        &self,
        conn: &mut AnyConnection,
        office: &mut OfficeRow,
        due: Vec<ReservationRow>,
        now: i64,
    ) -> EngineResult<usize> {
        let mut count = 0;
        for mut r in due {
            // A hold whose rows do not add up (its quota row gone, counts that would go
            // negative: a database edited by hand) is left held, with nothing written for it
            // (`release_hold_with_note` refuses before its first write), and named in the log,
            // instead of failing every Reserve of its office, batch after batch, and the
            // sweeper's pass.
            match self.expire_hold(conn, office, &mut r, now).await {
                Ok(()) => count += 1,
                Err(EngineError::Internal(problem)) => {
                    // Met again by every batch of the office until mended: logged once.
                    if first_report_of(&r.reservation_id) {
                        tracing::error!(
                            office = %office.office_id,
                            reservation = %r.reservation_id,
                            %problem,
                            "cannot release an expired hold: it stays held until its rows are mended (VerifyLedger, the quota rows)"
                        );
                    }
                }
                Err(other) => return Err(other),
            }
        }
        if count > 0 {
            rows::update_office_stock(conn, office).await?;
            tracing::info!(office = %office.office_id, count, "released expired holds");
        }
        Ok(count)
    }

    /// Expires the due holds of one office in a transaction of its own (the sweeper).
    pub async fn expire_office(&self, office_id: &str) -> EngineResult<usize> {
        let count = self
            .with_retry(|| async {
                let mut tx = self.begin().await?;
                let conn: &mut AnyConnection = &mut tx;
                let mut office =
                    Self::office_or_not_found(conn, office_id, self.store.for_update()).await?;
                let now = self.clock.now_ms();
                // One round per transaction, so that Reserves of the office go between rounds;
                // when more may be due, the next pass comes soon (SWEEP_SOON_GAP).
                let (count, more) = self
                    .expire_due_rounds(conn, &mut office, now, None, 1)
                    .await?;
                if count > 0 {
                    self.announce_in_tx(conn, office_id).await?;
                }
                self.commit_durably(tx).await?;
                Ok((count, more))
            })
            .await?;
        let (count, more) = count;
        if more {
            self.sweep_soon.notify_one();
        }
        if count > 0 {
            self.hub.office_changed(office_id);
        }
        Ok(count)
    }

    /// Records a spoiled blank.
    #[tracing::instrument(skip_all, fields(office = %cmd.office_id, reservation = %crate::domain::nik::mask_nik_stretches(&cmd.reservation_id)))]
    pub async fn report_spoiled(
        &self,
        cmd: &SpoilCommand,
    ) -> EngineResult<ReportSpoiledBlankResponse> {
        let response = self.with_retry(|| self.report_spoiled_once(cmd)).await?;
        self.hub.office_changed(&cmd.office_id);
        Ok(response)
    }

    async fn report_spoiled_once(
        &self,
        cmd: &SpoilCommand,
    ) -> EngineResult<ReportSpoiledBlankResponse> {
        let mut tx = self.begin().await?;
        let conn: &mut AnyConnection = &mut tx;
        let mut office =
            Self::office_or_not_found(conn, &cmd.office_id, self.store.for_update()).await?;
        if let Some(stored) = self
            .stored_answer(conn, &cmd.request_id, SPOIL, &cmd.fingerprint)
            .await?
        {
            let mut response: ReportSpoiledBlankResponse = decode_answer(&stored)?;
            response.replayed = true;
            // As things are now: a reservation printed or cancelled since must not read as a
            // hold to reprint on.
            if let Some(res) = response.reservation.as_mut() {
                if let Some(row) = rows::reservation(conn, &res.reservation_id).await? {
                    *res = reservation_to_proto(&row, true);
                }
                res.replayed = true;
            }
            if let Some(referral) = response.ikd_referral.as_mut() {
                referral.replayed = true;
            }
            response.on_hand = u32::try_from(office.on_hand.max(0)).unwrap_or(u32::MAX);
            response.available = u32::try_from(office.available().max(0)).unwrap_or(u32::MAX);
            return Ok(response);
        }
        let now = self.clock.now_ms();
        // Holds that ran out earmark no blank any more, whether or not the sweeper came by.
        self.expire_due_in_tx(conn, &mut office, now).await?;
        let zone = zone_of(&office)?;
        let today = zone.local_date(now);
        let date = format_local_date(today);
        let reason_name = blangko_proto::v1::SpoilageReason::try_from(cmd.reason)
            .map(|r| r.as_str_name())
            .unwrap_or("SPOILAGE_REASON_OTHER");
        let mut note = reason_name
            .trim_start_matches("SPOILAGE_REASON_")
            .to_string();
        if !cmd.note.is_empty() {
            note = format!("{note}: {}", cmd.note);
        }
        let mut entry = NewEntry::of(LedgerEntryKind::Spoiled);
        entry.on_hand_delta = -1;
        entry.reference = cmd.destruction_report_reference.clone();
        let mut response = ReportSpoiledBlankResponse::default();
        if cmd.reservation_id.is_empty() {
            // A defective blank found in stock: it must be one that no hold earmarks.
            if office.available() < 1 {
                return Err(EngineError::FailedPrecondition {
                    reason: "INSUFFICIENT_STOCK",
                    message: "no unheld blank is on hand to write off".into(),
                    indonesian:
                        "tidak ada blangko bebas (tidak sedang ditahan) untuk dicatat rusak".into(),
                });
            }
            entry.note = note;
            ledger::append(conn, &mut office, entry, &cmd.principal, now, &date).await?;
        } else {
            let mut r = rows::reservation(conn, &cmd.reservation_id)
                .await?
                .filter(|r| r.office_id == cmd.office_id)
                .ok_or_else(|| EngineError::NotFound {
                    kind: "reservation",
                    id: cmd.reservation_id.clone(),
                })?;
            machine::on_spoil(state_of(&r)?, now, r.expires_ms, r.spoiled_count as u32).map_err(
                |e| {
                    let reason = match e {
                        TransitionError::SpoilageLimit => "SPOILAGE_LIMIT_REACHED",
                        TransitionError::Expired => "RESERVATION_EXPIRED",
                        TransitionError::Committed => "RESERVATION_COMMITTED",
                        TransitionError::Cancelled => "RESERVATION_CANCELLED",
                        TransitionError::NotHeld => "RESERVATION_NOT_HELD",
                    };
                    EngineError::FailedPrecondition {
                        reason,
                        message: format!("cannot record a spoiled blank on this reservation: {e}"),
                        indonesian: format!(
                            "blangko rusak tidak dapat dicatat pada pemesanan ini: {}",
                            e.indonesian()
                        ),
                    }
                },
            )?;
            entry.service_point_id = r.service_point_id.clone();
            entry.reservation_id = r.reservation_id.clone();
            entry.masked_nik = r.masked_nik.clone();
            r.spoiled_count += 1;
            if office.available() >= 1 {
                // One more blank leaves the stock for the reprint; the hold keeps its slot.
                entry.note = note;
                ledger::append(conn, &mut office, entry, &cmd.principal, now, &date).await?;
                rows::update_reservation(conn, &r).await?;
            } else {
                // The spoiled blank was the held one and no other is free: the hold ends.
                entry.held_delta = -1;
                entry.note =
                    format!("{note}; no blank left for the reprint, reservation cancelled");
                let mut qd =
                    rows::quota_day(conn, &r.office_id, &r.service_point_id, &r.local_date, "")
                        .await?
                        .ok_or_else(|| {
                            EngineError::Internal("reservation without quota day".into())
                        })?;
                qd.held -= 1;
                if r.priority {
                    qd.priority_used -= 1;
                }
                rows::update_quota_day(conn, &qd).await?;
                r.state = State::Cancelled.as_str().to_string();
                rows::update_reservation(conn, &r).await?;
                ledger::append(conn, &mut office, entry, &cmd.principal, now, &date).await?;
                let sp = Self::service_point_or_not_found(conn, &r.office_id, &r.service_point_id)
                    .await?;
                let policy = policy_of(&sp)?;
                let referral = referral(
                    ReferralKind::OutOfStock,
                    false,
                    zone,
                    today,
                    &office,
                    &policy,
                    &calendar_of(&sp),
                );
                rows::add_ikd_referrals(conn, &office.office_id, &date, referral.cause, 1).await?;
                response.ikd_referral = Some(referral);
            }
            response.reservation = Some(reservation_to_proto(&r, false));
        }
        rows::update_office_stock(conn, &office).await?;
        response.on_hand = super::queries::count(office.on_hand);
        response.available = super::queries::count(office.available());
        rows::store_answer(
            conn,
            &cmd.request_id,
            SPOIL,
            &cmd.fingerprint,
            &response.encode_to_vec(),
            now,
        )
        .await?;
        self.announce_in_tx(conn, &office.office_id).await?;
        self.commit_durably(tx).await?;
        Ok(response)
    }

    /// Records an IKD activation for an applicant.
    #[tracing::instrument(skip_all, fields(office = %cmd.office_id, nik = %cmd.nik.masked()))]
    pub async fn record_ikd_activation(
        &self,
        cmd: &IkdActivationCommand,
    ) -> EngineResult<RecordIkdActivationResponse> {
        self.with_retry(|| async {
            let mut tx = self.begin().await?;
            let conn: &mut AnyConnection = &mut tx;
            let mut office =
                Self::office_or_not_found(conn, &cmd.office_id, self.store.for_update()).await?;
            if let Some(stored) = self
                .stored_answer(conn, &cmd.request_id, IKD, &cmd.fingerprint)
                .await?
            {
                let mut response: RecordIkdActivationResponse = decode_answer(&stored)?;
                response.replayed = true;
                return Ok(response);
            }
            Self::service_point_or_not_found(conn, &cmd.office_id, &cmd.service_point_id).await?;
            let now = self.clock.now_ms();
            let nik_hash = self.nik_key.hash_nik(cmd.nik.as_str());
            let masked = cmd.nik.masked();
            let zone = zone_of(&office)?;
            let today = zone.local_date(now);
            // Already recorded here today (the officer sent it again under a new request id,
            // after no answer came): the same activation, not a second one in the ledger.
            let earlier: Option<(String, i64)> = sqlx::query_as(
                "SELECT office_id, activated_ms FROM ikd_activations WHERE nik_hash = $1",
            )
            .bind(&nik_hash)
            .fetch_optional(&mut *conn)
            .await?;
            let earlier_today = earlier.and_then(|(office_id, activated_ms)| {
                (office_id == cmd.office_id && zone.local_date(activated_ms) == today)
                    .then_some(activated_ms)
            });
            let activated_ms = match earlier_today {
                Some(activated_ms) => activated_ms,
                None => {
                    sqlx::query(
                        "INSERT INTO ikd_activations (nik_hash, office_id, masked_nik, activated_ms) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (nik_hash) DO UPDATE SET office_id = $2, activated_ms = $4",
                    )
                    .bind(&nik_hash)
                    .bind(&cmd.office_id)
                    .bind(&masked)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    let date = format_local_date(today);
                    let mut entry = NewEntry::of(LedgerEntryKind::IkdActivation);
                    entry.service_point_id = cmd.service_point_id.clone();
                    entry.masked_nik = masked.clone();
                    entry.note = format!("IKD activated at counter {}", cmd.counter_id);
                    ledger::append(conn, &mut office, entry, &cmd.principal, now, &date).await?;
                    rows::update_office_stock(conn, &office).await?;
                    now
                }
            };
            let response = RecordIkdActivationResponse {
                masked_nik: masked,
                activated_at: Some(timestamp(activated_ms)),
                replayed: earlier_today.is_some(),
            };
            rows::store_answer(conn, &cmd.request_id, IKD, &cmd.fingerprint, &response.encode_to_vec(), now)
                .await?;
            self.commit_durably(tx).await?;
            Ok(response)
        })
        .await
    }
}

/// Whether `reservation_id` is reported as a hold that cannot be released for the first time in
/// this process (a bounded memory: past [`MAX_REPORTED_HOLDS`] ids it starts afresh).
fn first_report_of(reservation_id: &str) -> bool {
    static REPORTED: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let mut reported = REPORTED.lock().unwrap_or_else(|p| p.into_inner());
    let set = reported.get_or_insert_with(Default::default);
    if set.len() >= MAX_REPORTED_HOLDS {
        set.clear();
    }
    set.insert(reservation_id.to_string())
}

/// Most holds that cannot be released remembered as already logged.
const MAX_REPORTED_HOLDS: usize = 1024;
