//! What the officer reads: texts in Bahasa Indonesia (the default) or English, times in the
//! office's local time, and the `--json` shapes (one JSON object per result, on stdout).
//!
//! NIKs appear here only as the server's `masked_nik` or masked with [`crate::nik::mask`].

use std::io::Write;

use blangko_proto::v1::{IkdReferral, QuotaSnapshot, ReferralCause, Reservation, ReservationState};
use chrono::{DateTime, FixedOffset, Offset, Utc};
use serde_json::{Value, json};

use crate::vocab;

/// The language of the human output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Lang {
    /// Bahasa Indonesia.
    #[default]
    Id,
    /// English.
    En,
}

impl Lang {
    /// Picks the text of this language.
    pub fn t<'a>(self, indonesian: &'a str, english: &'a str) -> &'a str {
        match self {
            Lang::Id => indonesian,
            Lang::En => english,
        }
    }
}

/// The office's time zone. Reserve answers carry UTC instants and no zone, so the officer names it
/// once (`--zone`, default Asia/Jakarta). None of the three has daylight saving time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// Asia/Jakarta, UTC+7 (Java, Sumatra, West and Central Kalimantan).
    #[default]
    Wib,
    /// Asia/Makassar, UTC+8 (Bali, Nusa Tenggara, Sulawesi, South/East/North Kalimantan).
    Wita,
    /// Asia/Jayapura, UTC+9 (Maluku, Papua).
    Wit,
}

impl Zone {
    /// Parses `Asia/Jakarta`, `WIB`, `+7` and the like.
    pub fn parse(word: &str) -> Option<Zone> {
        match word.trim().to_ascii_lowercase().as_str() {
            "asia/jakarta" | "wib" | "+7" | "+07:00" | "utc+7" => Some(Zone::Wib),
            "asia/makassar" | "wita" | "+8" | "+08:00" | "utc+8" => Some(Zone::Wita),
            "asia/jayapura" | "wit" | "+9" | "+09:00" | "utc+9" => Some(Zone::Wit),
            _ => None,
        }
    }

    /// For clap.
    pub fn parse_arg(word: &str) -> Result<Zone, String> {
        Zone::parse(word).ok_or_else(|| {
            format!("unknown zone {word:?}; use Asia/Jakarta (WIB), Asia/Makassar (WITA) or Asia/Jayapura (WIT)")
        })
    }

    /// Hours east of UTC.
    pub fn offset_hours(self) -> i32 {
        match self {
            Zone::Wib => 7,
            Zone::Wita => 8,
            Zone::Wit => 9,
        }
    }

    /// The abbreviation officers know: WIB, WITA, WIT.
    pub fn abbreviation(self) -> &'static str {
        match self {
            Zone::Wib => "WIB",
            Zone::Wita => "WITA",
            Zone::Wit => "WIT",
        }
    }

    /// The IANA name.
    pub fn iana(self) -> &'static str {
        match self {
            Zone::Wib => "Asia/Jakarta",
            Zone::Wita => "Asia/Makassar",
            Zone::Wit => "Asia/Jayapura",
        }
    }

    fn offset(self) -> FixedOffset {
        // 7..=9 hours are always a valid offset; UTC is the harmless fallback.
        FixedOffset::east_opt(self.offset_hours() * 3600).unwrap_or_else(|| Utc.fix())
    }

    /// A protobuf timestamp in this zone.
    pub fn local(self, ts: &prost_types::Timestamp) -> Option<DateTime<FixedOffset>> {
        let nanos = u32::try_from(ts.nanos).ok()?;
        let utc = DateTime::<Utc>::from_timestamp(ts.seconds, nanos)?;
        Some(utc.with_timezone(&self.offset()))
    }

    /// Now in this zone.
    pub fn now(self) -> DateTime<FixedOffset> {
        Utc::now().with_timezone(&self.offset())
    }

    /// `09:05 WIB`.
    pub fn time(self, ts: Option<&prost_types::Timestamp>) -> String {
        match ts.and_then(|t| self.local(t)) {
            Some(t) => format!("{} {}", t.format("%H:%M"), self.abbreviation()),
            None => "-".to_string(),
        }
    }

    /// `09:05:30` (no zone: for the start of `watch` lines).
    pub fn time_of_day(self, ts: Option<&prost_types::Timestamp>) -> String {
        match ts.and_then(|t| self.local(t)) {
            Some(t) => t.format("%H:%M:%S").to_string(),
            None => self.now().format("%H:%M:%S").to_string(),
        }
    }

    /// `2026-11-29 09:05 WIB`.
    pub fn date_time(self, ts: Option<&prost_types::Timestamp>) -> String {
        match ts.and_then(|t| self.local(t)) {
            Some(t) => format!("{} {}", t.format("%Y-%m-%d %H:%M"), self.abbreviation()),
            None => "-".to_string(),
        }
    }

    /// RFC 3339 with the zone's offset, for JSON: `2026-11-29T09:05:00+07:00`.
    pub fn rfc3339(self, ts: Option<&prost_types::Timestamp>) -> Value {
        match ts.and_then(|t| self.local(t)) {
            Some(t) => Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)),
            None => Value::Null,
        }
    }
}

/// Seconds from now until `ts` (negative when past), now by the server's clock
/// ([`crate::server_clock`]).
pub fn seconds_until(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    let ts = ts?;
    Some(ts.seconds.saturating_sub(crate::server_clock::now_secs()))
}

/// "29 menit" / "29 min", "1 jam 5 menit" / "1 h 5 min", for a hold's time left.
pub fn duration_text(seconds: i64, lang: Lang) -> String {
    if seconds <= 0 {
        return lang.t("habis", "expired").to_string();
    }
    let minutes = seconds.saturating_add(59) / 60;
    let (h, m) = (minutes / 60, minutes % 60);
    match (lang, h) {
        (Lang::Id, 0) => format!("{m} menit"),
        (Lang::Id, _) => format!("{h} jam {m} menit"),
        (Lang::En, 0) => format!("{m} min"),
        (Lang::En, _) => format!("{h} h {m} min"),
    }
}

/// A server's uptime: "45 detik" / "45 s" under a minute, else like [`duration_text`].
pub fn uptime_text(seconds: u64, lang: Lang) -> String {
    if seconds < 60 {
        return match lang {
            Lang::Id => format!("{seconds} detik"),
            Lang::En => format!("{seconds} s"),
        };
    }
    let minutes = seconds / 60;
    let (h, m) = (minutes / 60, minutes % 60);
    match (lang, h) {
        (Lang::Id, 0) => format!("{m} menit"),
        (Lang::Id, _) => format!("{h} jam {m} menit"),
        (Lang::En, 0) => format!("{m} min"),
        (Lang::En, _) => format!("{h} h {m} min"),
    }
}

/// Where output goes and in which shape.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Language of human output.
    pub lang: Lang,
    /// One JSON object per result instead of text.
    pub json: bool,
    /// The office's zone for every time shown.
    pub zone: Zone,
}

impl Out {
    /// Shorthand for [`Lang::t`].
    pub fn t<'a>(&self, indonesian: &'a str, english: &'a str) -> &'a str {
        self.lang.t(indonesian, english)
    }

    /// Prints one line of human output on stdout.
    pub fn line(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) is not worth a panic.
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }

    /// Prints one JSON object on one line of stdout.
    pub fn json(&self, value: &Value) {
        self.line(&value.to_string());
    }

    /// Prints a notice on stderr (progress, reconnects): never mixed into machine output.
    pub fn notice(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{text}");
    }
}

/// A reservation as JSON.
pub fn reservation_json(r: &Reservation, zone: Zone) -> Value {
    json!({
        "reservation_id": r.reservation_id,
        "office_id": r.office_id,
        "service_point_id": r.service_point_id,
        "counter_id": r.counter_id,
        "local_date": r.local_date,
        "state": vocab::state_code(r.state()),
        "reason": vocab::reason_code(r.reason()),
        "masked_nik": r.masked_nik,
        "created_at": zone.rfc3339(r.created_at.as_ref()),
        "expires_at": zone.rfc3339(r.expires_at.as_ref()),
        "committed_at": zone.rfc3339(r.committed_at.as_ref()),
        "seconds_left": if r.state() == ReservationState::Held { seconds_until(r.expires_at.as_ref()).map(|s| s.max(0)) } else { None },
        "spoiled_count": r.spoiled_count,
        "replayed": r.replayed,
    })
}

/// An IKD referral as JSON.
pub fn referral_json(referral: &IkdReferral, zone: Zone) -> Value {
    json!({
        "cause": vocab::cause_code(referral.cause()),
        "message_indonesian": referral.message_indonesian,
        "message_english": referral.message_english,
        "activation_steps_indonesian": referral.activation_steps_indonesian,
        "activation_steps_english": referral.activation_steps_english,
        "next_quota_at": zone.rfc3339(referral.next_quota_at.as_ref()),
    })
}

/// A quota snapshot as JSON.
pub fn snapshot_json(q: &QuotaSnapshot, zone: Zone) -> Value {
    json!({
        "office_id": q.office_id,
        "service_point_id": q.service_point_id,
        "local_date": q.local_date,
        "quota": q.quota,
        "held": q.held,
        "committed": q.committed,
        "remaining": q.remaining,
        "remaining_non_priority": q.remaining_non_priority,
        "on_hand": q.on_hand,
        "available": q.available,
        "office_daily_cap": q.office_daily_cap,
        "office_used_today": q.office_used_today,
        "waiting": q.waiting,
        "mode": q.mode().as_str_name().strip_prefix("QUOTA_MODE_").unwrap_or("UNSPECIFIED"),
        "supply_overdue": q.supply_overdue,
        "closed": q.closed,
        "next_reset_at": zone.rfc3339(q.next_reset_at.as_ref()),
        "priority_release_at": zone.rfc3339(q.priority_release_at.as_ref()),
        "as_of": zone.rfc3339(q.as_of.as_ref()),
    })
}

/// One line for a reservation: id, state, masked NIK, reason, hold expiry and time left, and for
/// a replayed Reserve answer what that means (see [`reservation_state_line`] for the line alone).
pub fn reservation_line(r: &Reservation, out: &Out) -> String {
    let mut text = reservation_state_line(r, out);
    let lang = out.lang;
    if r.replayed {
        if r.state() == ReservationState::Held {
            // The same hold again: its card may have been printed meanwhile (a c that got no
            // answer, a colleague at this counter).
            text.push_str(&format!(
                "  [{} {}: {}]",
                lang.t(
                    "sudah dipesan sebelumnya pukul",
                    "already reserved earlier at"
                ),
                out.zone.time(r.created_at.as_ref()),
                lang.t(
                    "jika kartunya sudah dicetak, tandai dicetak (c), jangan cetak lagi",
                    "if its card is already printed, mark it printed (c), do not print again",
                ),
            ));
        } else {
            text.push_str(lang.t(
                "  [sudah dipesan sebelumnya: jawaban yang sama]",
                "  [already reserved earlier: same answer]",
            ));
        }
    }
    text
}

/// One line for a reservation, as it is: id, state, masked NIK, reason, hold expiry and time
/// left (beside a do-not-print warning, or in an answer that says it is a repeat already).
pub fn reservation_state_line(r: &Reservation, out: &Out) -> String {
    let lang = out.lang;
    let mut text = format!(
        "{} {}  NIK {}  {} {}",
        vocab::state_text(r.state(), lang),
        r.reservation_id,
        r.masked_nik,
        lang.t("alasan", "reason"),
        vocab::reason_text(r.reason(), lang),
    );
    match r.state() {
        ReservationState::Held => {
            let left = seconds_until(r.expires_at.as_ref()).unwrap_or(0);
            let left = match lang {
                Lang::Id => format!("sisa {}", duration_text(left, lang)),
                Lang::En => format!("{} left", duration_text(left, lang)),
            };
            text.push_str(&format!(
                "  {} {} ({left})",
                lang.t("ditahan sampai", "held until"),
                out.zone.time(r.expires_at.as_ref()),
            ));
        }
        ReservationState::Committed => {
            text.push_str(&format!(
                "  {} {}",
                lang.t("dicetak", "printed"),
                out.zone.time(r.committed_at.as_ref())
            ));
        }
        _ => {}
    }
    if r.spoiled_count > 0 {
        text.push_str(&format!(
            "  {} {}",
            lang.t("blangko rusak:", "spoiled blanks:"),
            r.spoiled_count
        ));
    }
    text
}

/// The referral in a few lines: why, the server's message, the activation steps, when quota reopens.
pub fn referral_lines(referral: &IkdReferral, out: &Out) -> Vec<String> {
    let lang = out.lang;
    let cause = referral.cause();
    let mut lines = vec![format!(
        "{}: {} ({})",
        lang.t("RUJUK KE AKTIVASI IKD", "REFER TO IKD ACTIVATION"),
        vocab::cause_text(cause, lang),
        vocab::cause_code(cause)
    )];
    let message = match lang {
        Lang::Id => &referral.message_indonesian,
        Lang::En => &referral.message_english,
    };
    if !message.is_empty() {
        lines.push(format!("  {message}"));
    }
    let steps = match lang {
        Lang::Id => &referral.activation_steps_indonesian,
        Lang::En => &referral.activation_steps_english,
    };
    if !steps.is_empty() {
        lines.push(format!(
            "  {}",
            lang.t("Langkah aktivasi IKD:", "How to activate IKD:")
        ));
        for (i, step) in steps.iter().enumerate() {
            lines.push(format!("    {}. {step}", i + 1));
        }
    }
    if referral.next_quota_at.is_some() {
        lines.push(format!(
            "  {} {}",
            lang.t("Kuota dibuka lagi:", "Quota reopens:"),
            out.zone.date_time(referral.next_quota_at.as_ref())
        ));
    }
    if cause == ReferralCause::IkdRequired {
        lines.push(format!(
            "  {}",
            lang.t(
                "Setelah IKD diaktifkan di loket, catat aktivasinya lalu pesan lagi.",
                "Once IKD is activated at the counter, record the activation and reserve again."
            )
        ));
    }
    lines
}

/// One line for a quota snapshot.
pub fn snapshot_line(q: &QuotaSnapshot, out: &Out) -> String {
    let lang = out.lang;
    let mut text = format!(
        "{} {} {}/{}: {} {}  {} {}  {} {}  {} {}  {} {}  {} {}  {} {}",
        lang.t("Kuota", "Quota"),
        q.local_date,
        q.office_id,
        q.service_point_id,
        lang.t("kuota", "quota"),
        q.quota,
        lang.t("ditahan", "held"),
        q.held,
        lang.t("dicetak", "committed"),
        q.committed,
        lang.t("sisa", "remaining"),
        q.remaining,
        lang.t("stok tersedia", "available stock"),
        q.available,
        lang.t("menunggu", "waiting"),
        q.waiting,
        lang.t("reset", "resets"),
        out.zone.date_time(q.next_reset_at.as_ref()),
    );
    if q.remaining_non_priority != q.remaining {
        text.push_str(&format!(
            "  {} {}",
            lang.t("sisa non-prioritas", "remaining non-priority"),
            q.remaining_non_priority
        ));
    }
    if q.office_daily_cap > 0 {
        text.push_str(&format!(
            "  {} {}/{}",
            lang.t("batas kantor", "office cap"),
            q.office_used_today,
            q.office_daily_cap
        ));
    }
    if q.closed {
        text.push_str(lang.t("  [TUTUP HARI INI]", "  [CLOSED TODAY]"));
    }
    if q.supply_overdue {
        text.push_str(lang.t("  [PASOKAN TERLAMBAT]", "  [SUPPLY OVERDUE]"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use blangko_proto::v1::Reason;

    fn ts(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn times_far_off_from_a_server_are_shown_without_overflow() {
        // A broken or hostile answer: no panic (debug) or wrapped figure (release).
        assert_eq!(seconds_until(Some(&ts(i64::MIN))), Some(i64::MIN));
        assert_eq!(
            duration_text(i64::MAX, Lang::En),
            format!("{} h {} min", i64::MAX / 60 / 60, (i64::MAX / 60) % 60)
        );
        assert_eq!(duration_text(60, Lang::Id), "1 menit");
        assert_eq!(duration_text(61, Lang::Id), "2 menit");
    }

    #[test]
    fn times_are_shown_in_the_office_zone() {
        // 2026-11-29T02:05:00Z
        let t = ts(1_795_917_900);
        assert_eq!(Zone::Wib.time(Some(&t)), "09:05 WIB");
        assert_eq!(Zone::Wita.time(Some(&t)), "10:05 WITA");
        assert_eq!(Zone::Wit.date_time(Some(&t)), "2026-11-29 11:05 WIT");
        assert_eq!(
            Zone::Wib.rfc3339(Some(&t)),
            json!("2026-11-29T09:05:00+07:00")
        );
        assert_eq!(Zone::Wib.time(None), "-");
        assert_eq!(Zone::parse("Asia/Makassar"), Some(Zone::Wita));
        assert_eq!(Zone::parse("wit"), Some(Zone::Wit));
        assert_eq!(Zone::parse("Europe/Paris"), None);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(29 * 60, Lang::Id), "29 menit");
        assert_eq!(duration_text(29 * 60 + 1, Lang::En), "30 min");
        assert_eq!(duration_text(3900, Lang::Id), "1 jam 5 menit");
        assert_eq!(duration_text(0, Lang::En), "expired");
        assert_eq!(uptime_text(2, Lang::Id), "2 detik");
        assert_eq!(uptime_text(3 * 3600 + 61, Lang::En), "3 h 1 min");
    }

    fn held() -> Reservation {
        let mut r = Reservation {
            reservation_id: "res-1".to_string(),
            office_id: "3275".to_string(),
            service_point_id: "mpp".to_string(),
            counter_id: "L1".to_string(),
            local_date: "2026-11-29".to_string(),
            masked_nik: "327501******0001".to_string(),
            expires_at: Some(ts(Utc::now().timestamp() + 1800)),
            ..Reservation::default()
        };
        r.set_state(ReservationState::Held);
        r.set_reason(Reason::NewRecording);
        r
    }

    #[test]
    fn reservation_line_in_both_languages() {
        let r = held();
        let id = reservation_line(
            &r,
            &Out {
                lang: Lang::Id,
                json: false,
                zone: Zone::Wib,
            },
        );
        assert!(
            id.starts_with("DITAHAN res-1  NIK 327501******0001  alasan perekaman baru"),
            "{id}"
        );
        assert!(id.contains("sisa 30 menit"), "{id}");
        let en = reservation_line(
            &r,
            &Out {
                lang: Lang::En,
                json: false,
                zone: Zone::Wib,
            },
        );
        assert!(
            en.starts_with("HELD res-1  NIK 327501******0001  reason new recording"),
            "{en}"
        );
        assert!(
            en.contains("held until") && en.contains("(30 min left)"),
            "{en}"
        );
    }

    #[test]
    fn reservation_json_shape() {
        let v = reservation_json(&held(), Zone::Wib);
        assert_eq!(v["reservation_id"], "res-1");
        assert_eq!(v["state"], "HELD");
        assert_eq!(v["reason"], "NEW_RECORDING");
        assert_eq!(v["masked_nik"], "327501******0001");
        assert_eq!(v["replayed"], false);
        assert!(
            v["expires_at"]
                .as_str()
                .is_some_and(|s| s.ends_with("+07:00"))
        );
        assert!(
            v["seconds_left"]
                .as_i64()
                .is_some_and(|s| (1790..=1800).contains(&s))
        );
        assert_eq!(v["committed_at"], Value::Null);
    }

    #[test]
    fn referral_lines_carry_cause_steps_and_reopening() {
        let mut referral = IkdReferral {
            message_indonesian: "Kuota habis.".to_string(),
            message_english: "Quota used up.".to_string(),
            activation_steps_indonesian: vec!["Unduh aplikasi IKD".to_string()],
            activation_steps_english: vec!["Install the IKD app".to_string()],
            next_quota_at: Some(ts(1_795_971_600)),
            ..IkdReferral::default()
        };
        referral.set_cause(ReferralCause::QuotaExhausted);
        let out = Out {
            lang: Lang::Id,
            json: false,
            zone: Zone::Wib,
        };
        let lines = referral_lines(&referral, &out).join("\n");
        assert!(
            lines.contains(
                "RUJUK KE AKTIVASI IKD: kuota blangko hari ini sudah habis (QUOTA_EXHAUSTED)"
            ),
            "{lines}"
        );
        assert!(lines.contains("1. Unduh aplikasi IKD"));
        assert!(
            lines.contains("Kuota dibuka lagi: 2026-11-30 00:00 WIB"),
            "{lines}"
        );
        let en = referral_lines(
            &referral,
            &Out {
                lang: Lang::En,
                ..out
            },
        )
        .join("\n");
        assert!(
            en.contains("Quota used up.") && en.contains("Install the IKD app"),
            "{en}"
        );
        let v = referral_json(&referral, Zone::Wib);
        assert_eq!(v["cause"], "QUOTA_EXHAUSTED");
        assert_eq!(v["next_quota_at"], "2026-11-30T00:00:00+07:00");
    }
}
