//! Fuzzes NIK parsing and request validation with arbitrary bytes:
//! - as a NIK string: parsing never panics; an accepted NIK is 16 digits whose masked form hides
//!   the birth date; a rejection's text never repeats the input's digits;
//! - as encoded requests (Reserve, RecordIkdActivation, SetQuotaPolicy): decoding never panics,
//!   and validation either accepts or names bad fields, never echoing a NIK.
#![no_main]

use blangko_proto::v1::{RecordIkdActivationRequest, ReserveRequest, SetQuotaPolicyRequest};
use blangko_server::domain::nik::Nik;
use blangko_server::engine::EngineError;
use blangko_server::grpc::counter::check_reserve;
use blangko_server::grpc::stock::check_policy;
use blangko_server::grpc::validate::{Checker, nik_error_text};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn today() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 6, 1).unwrap_or_default()
}

/// The 16-digit runs of `text` (candidate NIKs).
fn digit_runs(text: &str) -> Vec<String> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 16 {
        vec![digits[..16].to_string()]
    } else {
        Vec::new()
    }
}

fn assert_no_echo(err: &EngineError, secret: &str) {
    if let EngineError::Invalid(violations) = err {
        for v in violations {
            for nik in digit_runs(secret) {
                assert!(!v.description.contains(&nik), "{v:?} echoes a NIK");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Nik::parse(text, today()) {
            Ok(nik) => {
                assert_eq!(nik.as_str().len(), 16);
                assert!(nik.as_str().bytes().all(|b| b.is_ascii_digit()));
                let masked = nik.masked();
                assert_eq!(masked.get(6..12), Some("******"), "{masked}");
                assert_eq!(masked.get(..6), nik.as_str().get(..6));
                assert_eq!(masked.get(12..), nik.as_str().get(12..));
            }
            Err(err) => {
                let message = nik_error_text(&err);
                for nik in digit_runs(text) {
                    assert!(!message.contains(&nik), "the error echoes the NIK");
                }
            }
        }
    }
    if let Ok(r) = ReserveRequest::decode(data) {
        match check_reserve(&r, today()) {
            Ok(nik) => assert_eq!(nik.as_str().len(), 16),
            Err(err) => assert_no_echo(&err, &r.nik),
        }
    }
    if let Ok(r) = RecordIkdActivationRequest::decode(data) {
        let mut c = Checker::new();
        c.office_id("office_id", &r.office_id);
        let _ = c.nik("nik", &r.nik, today());
        if let Err(err) = c.finish() {
            assert_no_echo(&err, &r.nik);
        }
    }
    if let Ok(r) = SetQuotaPolicyRequest::decode(data) {
        let mut c = Checker::new();
        if let Some(policy) = &r.policy {
            check_policy(&mut c, "policy", policy);
        }
        let _ = c.finish();
    }
});
