//! What the applicant is told when no blank can be reserved: an IKD referral.
//!
//! Running out is a normal part of the day, so the answer is a polite, actionable message
//! rather than an error: activate IKD (the digital ID) at the same counter now, and when the
//! physical card can be printed. Bahasa Indonesia first, as the counter speaks it; English
//! beside it.

use chrono::Datelike;

use crate::calendar::OfficeZone;
use crate::quota::Refusal;

/// The message and the IKD activation steps, in Bahasa Indonesia and English.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralText {
    /// The message in Bahasa Indonesia, read to or shown to the applicant.
    pub indonesian: String,
    /// The same message in English.
    pub english: String,
    /// IKD activation steps in Bahasa Indonesia, in order.
    pub steps_indonesian: Vec<String>,
    /// IKD activation steps in English, in order.
    pub steps_english: Vec<String>,
}

/// Why the applicant is referred to IKD: a refusal of the quota decision, or office policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferralKind {
    /// Not a service day at this service point.
    Closed,
    /// The office has no available blank.
    OutOfStock,
    /// Today's quota is used up.
    QuotaExhausted,
    /// Today's cap for the applicant's reason group is used up.
    ReasonCapReached,
    /// The office requires IKD activation before printing (DESIGN rule 8).
    IkdRequired,
}

impl ReferralKind {
    /// The wire spelling of the cause, e.g. "QUOTA_EXHAUSTED".
    pub fn as_str(self) -> &'static str {
        match self {
            ReferralKind::Closed => "CLOSED",
            ReferralKind::OutOfStock => "OUT_OF_STOCK",
            ReferralKind::QuotaExhausted => "QUOTA_EXHAUSTED",
            ReferralKind::ReasonCapReached => "REASON_CAP_REACHED",
            ReferralKind::IkdRequired => "IKD_REQUIRED",
        }
    }
}

impl From<Refusal> for ReferralKind {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Closed => ReferralKind::Closed,
            Refusal::OutOfStock => ReferralKind::OutOfStock,
            Refusal::QuotaExhausted => ReferralKind::QuotaExhausted,
            Refusal::ReasonCapReached => ReferralKind::ReasonCapReached,
        }
    }
}

/// IKD activation steps, as the officer walks the applicant through them.
const STEPS_INDONESIAN: [&str; 5] = [
    "Pasang aplikasi resmi \"Identitas Kependudukan Digital\" dari Play Store atau App Store di ponsel pintar Anda.",
    "Buka aplikasi, lalu isi NIK, alamat e-mail, dan nomor ponsel Anda.",
    "Lakukan verifikasi wajah dengan swafoto sesuai petunjuk di aplikasi.",
    "Pindai kode QR yang ditunjukkan petugas di loket.",
    "Setelah petugas memverifikasi, IKD Anda aktif dan dapat digunakan.",
];

/// The same steps in English.
const STEPS_ENGLISH: [&str; 5] = [
    "Install the official \"Identitas Kependudukan Digital\" app from the Play Store or App Store on your smartphone.",
    "Open the app and enter your NIK, e-mail address and phone number.",
    "Take a selfie for face verification as the app instructs.",
    "Scan the QR code the officer shows you at the counter.",
    "Once the officer has verified it, your IKD is active and ready to use.",
];

/// Indonesian day names, Monday first.
const DAYS_INDONESIAN: [&str; 7] = [
    "Senin", "Selasa", "Rabu", "Kamis", "Jumat", "Sabtu", "Minggu",
];

/// English day names, Monday first.
const DAYS_ENGLISH: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The referral for `kind`; `next_quota_local` (from [`format_next_quota`]) goes into both
/// languages as given. IkdRequired ignores it: the applicant can reserve again right away.
pub fn referral_text(kind: ReferralKind, next_quota_local: Option<&str>) -> ReferralText {
    build(kind, next_quota_local, next_quota_local)
}

/// The referral for `kind` with the next quota time formatted per language (Senin / Monday).
pub fn referral_text_at(
    kind: ReferralKind,
    zone: OfficeZone,
    next_quota_ms: Option<i64>,
) -> ReferralText {
    let next_indonesian = next_quota_ms.map(|ms| format_next_quota(zone, ms, false));
    let next_english = next_quota_ms.map(|ms| format_next_quota(zone, ms, true));
    build(kind, next_indonesian.as_deref(), next_english.as_deref())
}

/// Local time of `at_ms` as "Senin, 30-11-2026 00:00 WIB" (or "Monday, …" when `english`).
pub fn format_next_quota(zone: OfficeZone, at_ms: i64, english: bool) -> String {
    let date = zone.local_date(at_ms);
    let time = zone.local_time(at_ms);
    let names = if english {
        &DAYS_ENGLISH
    } else {
        &DAYS_INDONESIAN
    };
    let day = names[date.weekday().num_days_from_monday() as usize];
    format!(
        "{day}, {} {} {}",
        date.format("%d-%m-%Y"),
        time.format("%H:%M"),
        zone.label()
    )
}

/// Assembles the texts; `next_*` is the already formatted next quota time per language.
fn build(kind: ReferralKind, next_id: Option<&str>, next_en: Option<&str>) -> ReferralText {
    const ACTIVATE_ID: &str = "Silakan aktivasi IKD (Identitas Kependudukan Digital) di loket ini";
    const ACTIVATE_EN: &str =
        "Please activate IKD (Identitas Kependudukan Digital, the digital ID) at this counter";
    let print_from_id = match next_id {
        Some(next) => format!("KTP fisik dapat dicetak mulai {next}."),
        None => "KTP fisik dapat dicetak pada hari layanan berikutnya.".to_string(),
    };
    let print_from_en = match next_en {
        Some(next) => format!("the physical card can be printed from {next}."),
        None => "the physical card can be printed on the next service day.".to_string(),
    };
    let (indonesian, english) = match kind {
        ReferralKind::QuotaExhausted => (
            format!(
                "Mohon maaf, kuota blangko e-KTP hari ini sudah habis. {ACTIVATE_ID}; {print_from_id}"
            ),
            format!(
                "We are sorry, today's quota of blank e-KTP cards is used up. {ACTIVATE_EN}; {print_from_en}"
            ),
        ),
        ReferralKind::ReasonCapReached => (
            format!(
                "Mohon maaf, kuota hari ini untuk jenis permohonan Anda sudah habis. {ACTIVATE_ID}; {print_from_id}"
            ),
            format!(
                "We are sorry, today's quota for your type of request is used up. {ACTIVATE_EN}; {print_from_en}"
            ),
        ),
        ReferralKind::Closed => (
            format!(
                "Mohon maaf, hari ini bukan hari layanan pencetakan e-KTP di tempat ini. {ACTIVATE_ID}; {print_from_id}"
            ),
            format!(
                "We are sorry, e-KTP cards are not printed here today. {ACTIVATE_EN}; {print_from_en}"
            ),
        ),
        ReferralKind::OutOfStock => {
            // Stock depends on the next supply, not the next quota day: promise no date for
            // the card, only when the next quota opens.
            let next_quota_id = next_id
                .map(|next| format!(" Kuota berikutnya dibuka {next}."))
                .unwrap_or_default();
            let next_quota_en = next_en
                .map(|next| format!(" The next quota opens {next}."))
                .unwrap_or_default();
            (
                format!(
                    "Mohon maaf, stok blangko e-KTP sedang habis. {ACTIVATE_ID}; KTP fisik dapat dicetak setelah blangko tersedia kembali.{next_quota_id}"
                ),
                format!(
                    "We are sorry, blank e-KTP cards are out of stock. {ACTIVATE_EN}; the physical card can be printed once blanks are available again.{next_quota_en}"
                ),
            )
        }
        ReferralKind::IkdRequired => (
            "Kantor ini mewajibkan aktivasi IKD (Identitas Kependudukan Digital) sebelum pencetakan e-KTP. Silakan aktivasi IKD sekarang di loket ini, lalu ajukan kembali pencetakan e-KTP Anda.".to_string(),
            "This office requires IKD (Identitas Kependudukan Digital, the digital ID) to be activated before an e-KTP card is printed. Please activate IKD now at this counter, then request the card again.".to_string(),
        ),
    };
    ReferralText {
        indonesian,
        english,
        steps_indonesian: STEPS_INDONESIAN.iter().map(|s| s.to_string()).collect(),
        steps_english: STEPS_ENGLISH.iter().map(|s| s.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, NaiveTime};

    use super::*;

    fn monday_30_midnight(zone: OfficeZone) -> i64 {
        let date = NaiveDate::from_ymd_opt(2026, 11, 30).expect("date");
        zone.at_ms(date, NaiveTime::MIN)
    }

    #[test]
    fn next_quota_in_local_time() {
        let wib = monday_30_midnight(OfficeZone::Wib);
        assert_eq!(
            format_next_quota(OfficeZone::Wib, wib, false),
            "Senin, 30-11-2026 00:00 WIB"
        );
        assert_eq!(
            format_next_quota(OfficeZone::Wib, wib, true),
            "Monday, 30-11-2026 00:00 WIB"
        );
        // The same instant is 01:00 WITA and 02:00 WIT.
        assert_eq!(
            format_next_quota(OfficeZone::Wita, wib, false),
            "Senin, 30-11-2026 01:00 WITA"
        );
        assert_eq!(
            format_next_quota(OfficeZone::Wit, wib, false),
            "Senin, 30-11-2026 02:00 WIT"
        );
        // One minute earlier in WIB is still Sunday.
        assert_eq!(
            format_next_quota(OfficeZone::Wib, wib - 60_000, false),
            "Minggu, 29-11-2026 23:59 WIB"
        );
        let friday = NaiveDate::from_ymd_opt(2026, 12, 4).expect("date");
        let at = OfficeZone::Wit.at_ms(friday, NaiveTime::from_hms_opt(7, 30, 0).expect("time"));
        assert_eq!(
            format_next_quota(OfficeZone::Wit, at, false),
            "Jumat, 04-12-2026 07:30 WIT"
        );
    }

    #[test]
    fn quota_exhausted_message() {
        let text = referral_text(
            ReferralKind::QuotaExhausted,
            Some("Senin, 30-11-2026 00:00 WIB"),
        );
        assert_eq!(
            text.indonesian,
            "Mohon maaf, kuota blangko e-KTP hari ini sudah habis. Silakan aktivasi IKD \
             (Identitas Kependudukan Digital) di loket ini; KTP fisik dapat dicetak mulai \
             Senin, 30-11-2026 00:00 WIB."
        );
        assert!(
            text.english
                .ends_with("the physical card can be printed from Senin, 30-11-2026 00:00 WIB."),
            "{}",
            text.english
        );
        let without = referral_text(ReferralKind::QuotaExhausted, None);
        assert!(
            without
                .indonesian
                .ends_with("KTP fisik dapat dicetak pada hari layanan berikutnya."),
            "{}",
            without.indonesian
        );
    }

    #[test]
    fn per_language_next_quota() {
        let text = referral_text_at(
            ReferralKind::Closed,
            OfficeZone::Wita,
            Some(monday_30_midnight(OfficeZone::Wita)),
        );
        assert!(
            text.indonesian
                .ends_with("mulai Senin, 30-11-2026 00:00 WITA."),
            "{}",
            text.indonesian
        );
        assert!(
            text.english
                .ends_with("from Monday, 30-11-2026 00:00 WITA."),
            "{}",
            text.english
        );
    }

    #[test]
    fn every_kind_refers_to_ikd_at_the_counter() {
        let kinds = [
            ReferralKind::Closed,
            ReferralKind::OutOfStock,
            ReferralKind::QuotaExhausted,
            ReferralKind::ReasonCapReached,
            ReferralKind::IkdRequired,
        ];
        for kind in kinds {
            let text = referral_text(kind, Some("Senin, 30-11-2026 00:00 WIB"));
            assert!(text.indonesian.contains("IKD"), "{kind:?}");
            assert!(text.indonesian.contains("di loket ini"), "{kind:?}");
            assert!(text.english.contains("at this counter"), "{kind:?}");
            assert_eq!(text.steps_indonesian.len(), 5, "{kind:?}");
            assert_eq!(text.steps_english.len(), 5, "{kind:?}");
            assert!(text.steps_indonesian[0].contains("Identitas Kependudukan Digital"));
            assert!(text.steps_indonesian[3].contains("kode QR"));
        }
        // The office policy case asks to reserve again and names no date.
        let required = referral_text(ReferralKind::IkdRequired, Some("Senin, 30-11-2026"));
        assert!(required.indonesian.contains("mewajibkan aktivasi IKD"));
        assert!(required.english.contains("then request the card again"));
        assert!(!required.indonesian.contains("30-11-2026"));
        // Out of stock promises no printing date, only the next quota.
        let out = referral_text(
            ReferralKind::OutOfStock,
            Some("Senin, 30-11-2026 00:00 WIB"),
        );
        assert!(out.indonesian.contains("stok blangko e-KTP sedang habis"));
        assert!(
            out.indonesian
                .ends_with("Kuota berikutnya dibuka Senin, 30-11-2026 00:00 WIB.")
        );
        let out = referral_text(ReferralKind::OutOfStock, None);
        assert!(
            out.indonesian
                .ends_with("setelah blangko tersedia kembali.")
        );
    }

    #[test]
    fn refusals_map_to_kinds() {
        assert_eq!(ReferralKind::from(Refusal::Closed), ReferralKind::Closed);
        assert_eq!(
            ReferralKind::from(Refusal::OutOfStock),
            ReferralKind::OutOfStock
        );
        assert_eq!(
            ReferralKind::from(Refusal::QuotaExhausted),
            ReferralKind::QuotaExhausted
        );
        assert_eq!(
            ReferralKind::from(Refusal::ReasonCapReached),
            ReferralKind::ReasonCapReached
        );
        assert_eq!(ReferralKind::QuotaExhausted.as_str(), "QUOTA_EXHAUSTED");
        assert_eq!(ReferralKind::IkdRequired.as_str(), "IKD_REQUIRED");
    }
}
