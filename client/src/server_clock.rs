//! The server's clock, as this terminal last saw it: every answer of the blangko services
//! carries it (`x-server-time-ms`), and a hold's time left and whether it ran out are judged by
//! it. A counter PC whose clock runs an hour ahead would otherwise call every fresh 30-minute
//! hold run out, and tell the officer not to print.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Utc;
use tonic::metadata::MetadataMap;

use crate::output::Lang;

/// The metadata key of the server's clock (milliseconds since the Unix epoch, UTC).
pub const HEADER: &str = "x-server-time-ms";

/// The largest difference taken from a server (ten years, the bound of the server's own clock
/// offset); a value past it is not a clock and is ignored.
const MAX_OFFSET_MS: i64 = 10 * 366 * 24 * 3600 * 1000;

/// A difference this large is worth telling the officer ([`warning`]).
pub const NOTABLE_OFFSET_SECS: i64 = 60;

/// Server time minus this machine's time, in milliseconds, from the last answer that said;
/// [`UNKNOWN`] until one has.
static OFFSET_MS: AtomicI64 = AtomicI64::new(UNKNOWN);
/// No answer has said yet (never a plausible offset: see [`MAX_OFFSET_MS`]).
const UNKNOWN: i64 = i64::MIN;

/// The server's clock in `metadata` minus this machine's clock now, when the answer carries a
/// plausible one.
pub fn offset_in(metadata: &MetadataMap) -> Option<i64> {
    let server_ms: i64 = metadata.get(HEADER)?.to_str().ok()?.parse().ok()?;
    let offset = server_ms.checked_sub(Utc::now().timestamp_millis())?;
    (offset.abs() <= MAX_OFFSET_MS).then_some(offset)
}

/// Takes the server's clock from an answer's metadata (headers, or the trailers of an error);
/// the offset it found ([`offset_in`]).
pub fn observe(metadata: &MetadataMap) -> Option<i64> {
    let offset = offset_in(metadata)?;
    OFFSET_MS.store(offset, Ordering::Relaxed);
    Some(offset)
}

/// Server time minus this machine's time, in milliseconds, once an answer has said (else None).
pub fn offset_ms() -> Option<i64> {
    let offset = OFFSET_MS.load(Ordering::Relaxed);
    (offset != UNKNOWN).then_some(offset)
}

/// Now by the server's clock (this machine's until a server has answered), in Unix seconds.
pub fn now_secs() -> i64 {
    Utc::now()
        .timestamp_millis()
        .saturating_add(offset_ms().unwrap_or(0))
        .div_euclid(1000)
}

/// What the officer reads when this PC's clock differs from the server's by a minute or more:
/// holds are judged by the server's clock either way, but the PC's clock should be set right.
pub fn warning(offset_secs: i64, lang: Lang) -> Option<String> {
    if offset_secs.abs() < NOTABLE_OFFSET_SECS {
        return None;
    }
    let minutes = (offset_secs.abs() + 30) / 60;
    // The server's clock is ahead: this PC's is behind, and the other way round.
    let text = match (lang, offset_secs > 0) {
        (Lang::Id, true) => {
            format!("jam komputer ini {minutes} menit lebih lambat dari jam server")
        }
        (Lang::Id, false) => {
            format!("jam komputer ini {minutes} menit lebih cepat dari jam server")
        }
        (Lang::En, true) => format!("this PC's clock is {minutes} min behind the server's"),
        (Lang::En, false) => format!("this PC's clock is {minutes} min ahead of the server's"),
    };
    Some(format!(
        "{text}; {}",
        lang.t(
            "sisa waktu tahanan dihitung dengan jam server, tetapi betulkan jam komputer ini",
            "a hold's time left is counted by the server's clock, but set this PC's clock right"
        )
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_a_minute_or_more_off_is_named_with_its_direction() {
        assert_eq!(warning(59, Lang::Id), None);
        assert_eq!(warning(-59, Lang::En), None);
        let behind = warning(3600, Lang::Id).unwrap();
        assert!(
            behind.starts_with("jam komputer ini 60 menit lebih lambat"),
            "{behind}"
        );
        let ahead = warning(-90, Lang::En).unwrap();
        assert!(
            ahead.starts_with("this PC's clock is 2 min ahead"),
            "{ahead}"
        );
    }

    fn with_server_ms(ms: i64) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(HEADER, ms.to_string().parse().unwrap());
        metadata
    }

    #[test]
    fn the_offset_is_the_servers_time_minus_ours() {
        let hour = 3_600_000;
        let behind = offset_in(&with_server_ms(Utc::now().timestamp_millis() - hour)).unwrap();
        assert!((-hour - 5_000..=-hour).contains(&behind), "{behind}");
        let ahead = offset_in(&with_server_ms(Utc::now().timestamp_millis() + hour)).unwrap();
        assert!((hour - 5_000..=hour).contains(&ahead), "{ahead}");
    }

    #[test]
    fn answers_without_a_plausible_clock_say_nothing() {
        assert_eq!(offset_in(&MetadataMap::new()), None);
        let mut text = MetadataMap::new();
        text.insert(HEADER, "noon".parse().unwrap());
        assert_eq!(offset_in(&text), None);
        assert_eq!(offset_in(&with_server_ms(i64::MIN)), None);
        assert_eq!(
            offset_in(&with_server_ms(0)),
            None,
            "1970 is not a server's clock"
        );
    }
}
