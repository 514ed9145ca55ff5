//! gRPC handlers: decode and validate, call the engine, encode. No rules live here.

pub mod counter;
pub mod status;
pub mod stock;
pub mod validate;

use std::sync::Arc;

use prost::Message;

use crate::engine::Engine;

/// The principal a request acts as. Until authentication lands every caller is "anonymous";
/// the ledger records this name.
pub fn principal<T>(_request: &tonic::Request<T>) -> String {
    "anonymous".to_string()
}

/// Keyed fingerprint of a request's content for idempotency.
pub fn fingerprint<M: Message>(engine: &Arc<Engine>, method: &str, message: &M) -> String {
    engine.nik_key.fingerprint(method, &message.encode_to_vec())
}

/// The latest local date anywhere in Indonesia (WIT), the "today" a NIK's birth date may not pass.
pub fn nik_today(engine: &Engine) -> chrono::NaiveDate {
    crate::domain::calendar::OfficeZone::Wit.local_date(engine.clock.now_ms())
}
