//! blangko-server: the stock and daily-quota service for blank e-KTP cards.
//!
//! A request flows top to bottom through these modules:
//! - `config`: the operator's flags and environment (clap);
//! - `app`: builds the server (database, NIK key, gRPC services, health, reflection) and runs
//!   it until a shutdown signal, draining within a bounded time;
//! - `grpc`: thin handlers: validate and decode, call the engine, encode; one place maps engine
//!   errors to gRPC statuses with rich details;
//! - `engine`: every operation as one database transaction, applying the rules of `domain`;
//! - `domain`: the pure rules (NIK, calendar day, quota policy, reservation states), a crate of
//!   its own (`domain/`) with no I/O dependency at all;
//! - `store`: the database (embedded SQLite or PostgreSQL), migrations embedded;
//! - `auth`: bearer tokens → principals and roles; who may call what;
//! - `telemetry`, `overload`: the layers in front of every call (request id, span, log line
//!   and RPC metrics; load shedding and the request time-out), stacked in `app`;
//! - `metrics`: counters, histograms and scrape-time gauges, served at `--metrics-listen`;
//! - `clock`, `nik_key`: injected time and the key that hashes NIKs;
//! - `upgrades`: one-off changes to stored data made at start, once per database, that need the
//!   NIK key.
#![forbid(unsafe_code)]

/// The pure rules (crate `blangko-domain`), under the name the rest of the server uses.
pub use blangko_domain as domain;

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod engine;
pub mod grpc;
pub mod incoming;
pub mod metrics;
pub mod nik_key;
pub mod overload;
pub mod store;
pub mod telemetry;
pub mod upgrades;

/// Lower-case hex of `bytes`, the same text as `hex::encode`, without its iterator of `char`s:
/// every hex string the server writes goes through it. On the Reserve path that is the NIK
/// hash, the request's fingerprint, the ledger entry's hash, the reservation id and, when tokens
/// are required, the caller's token hash (`hex::encode` was about 1% of a Reserve's server CPU
/// under `perf`).
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    let mut text = Vec::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        text.extend_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    // Every byte pushed is one of "0123456789abcdef": the text is ASCII.
    String::from_utf8(text).expect("hex digits are ASCII")
}

/// The two lower-case hex digits of every byte: one table look-up and one two-byte copy per
/// byte, where pushing each digit as a `char` took a capacity check and a UTF-8 length test per
/// digit (about 7,000 instructions per Reserve in `bench/instructions.sh`).
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0x0f]];
        byte += 1;
    }
    pairs
};

#[cfg(test)]
mod tests {
    #[test]
    fn lower_hex_writes_what_hex_encode_writes() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(super::lower_hex(&all), hex::encode(&all));
        assert_eq!(super::lower_hex(&[]), "");
        assert_eq!(super::lower_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
