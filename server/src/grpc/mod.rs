//! gRPC handlers: authenticate and authorize, decode and validate, call the engine, encode. No
//! rules live here.

pub mod counter;
pub mod health;
pub mod status;
pub mod stock;
pub mod validate;

use std::sync::Arc;

use prost::Message;
use tonic::Status;

use crate::auth::{Principal, Role, Rpc, Scope};
use crate::engine::Engine;

/// Keyed fingerprint of a request's content for idempotency.
pub fn fingerprint<M: Message>(engine: &Arc<Engine>, method: &str, message: &M) -> String {
    engine.nik_key.fingerprint(method, &message.encode_to_vec())
}

/// A request's `request_id` as the engine stores it, scoped to its caller (see
/// [`crate::nik_key::NikKey::request_key`]).
pub fn request_key(engine: &Engine, principal: &str, request_id: &str) -> String {
    engine.nik_key.request_key(principal, request_id)
}

/// The latest local date anywhere in Indonesia (WIT), the "today" a NIK's birth date may not pass.
pub fn nik_today(engine: &Engine) -> chrono::NaiveDate {
    crate::domain::calendar::OfficeZone::Wit.local_date(engine.clock.now_ms())
}

/// Ok when the caller's role may call `rpc` at all (its office is checked later, once known).
pub fn allow_role(who: &Principal, rpc: Rpc) -> Result<(), Status> {
    if rpc.roles().contains(&who.role) {
        Ok(())
    } else {
        who.allow(rpc, Scope::AllOffices)
    }
}

/// Authorizes a call on an existing reservation, whose office and service point come from the
/// reservation itself (one indexed read). An unknown reservation passes here: the engine then
/// answers NOT_FOUND, which tells a caller nothing about other offices.
pub async fn allow_on_reservation(
    engine: &Engine,
    who: &Principal,
    rpc: Rpc,
    reservation_id: &str,
) -> Result<(), Status> {
    allow_role(who, rpc)?;
    if who.role == Role::Admin {
        return Ok(());
    }
    match engine.reservation_place(reservation_id).await? {
        Some((office, point)) => who.allow(rpc, Scope::ServicePoint(&office, &point)),
        None => Ok(()),
    }
}
