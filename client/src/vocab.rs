//! The API's enums as officers type and read them: parsing from command-line words (English or
//! Indonesian, any case, dashes or underscores) and naming them in both languages and for JSON.

use blangko_proto::v1::{IkdStatus, Reason, ReferralCause, ReservationState, SpoilageReason};

use crate::output::Lang;

/// Every reason, in the ministry's order of priority (the numbers officers may type).
pub const REASONS: [Reason; 7] = [
    Reason::NewRecording,
    Reason::FirstTimeVoter,
    Reason::RegionSplit,
    Reason::DataChange,
    Reason::Vulnerable,
    Reason::Lost,
    Reason::Damaged,
];

/// Upper-case, `-` and spaces to `_`, an optional prefix removed.
fn canonical(word: &str, prefix: &str) -> String {
    let upper: String = word
        .trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    match upper.strip_prefix(prefix) {
        Some(rest) => rest.to_string(),
        None => upper,
    }
}

/// Parses a reason: its API name (`NEW_RECORDING`, `new-recording`, `REASON_LOST`), its
/// Indonesian name (`perekaman-baru`, `hilang`, ...) or its number 1..=7.
pub fn parse_reason(word: &str) -> Option<Reason> {
    let reason = match canonical(word, "REASON_").as_str() {
        "1" | "NEW_RECORDING" | "PEREKAMAN_BARU" | "PEREKAMAN" | "BARU" => Reason::NewRecording,
        "2" | "FIRST_TIME_VOTER" | "PEMILIH_PEMULA" | "PEMULA" => Reason::FirstTimeVoter,
        "3" | "REGION_SPLIT" | "PEMEKARAN" | "PEMEKARAN_WILAYAH" => Reason::RegionSplit,
        "4" | "DATA_CHANGE" | "PERUBAHAN_DATA" | "PERUBAHAN" => Reason::DataChange,
        "5" | "VULNERABLE" | "RENTAN" | "KELOMPOK_RENTAN" => Reason::Vulnerable,
        "6" | "LOST" | "HILANG" => Reason::Lost,
        "7" | "DAMAGED" | "RUSAK" => Reason::Damaged,
        _ => return None,
    };
    Some(reason)
}

/// For clap: a reason or a helpful error.
pub fn parse_reason_arg(word: &str) -> Result<Reason, String> {
    parse_reason(word).ok_or_else(|| {
        format!(
            "unknown reason {word:?}; use one of new-recording, first-time-voter, region-split, \
             data-change, vulnerable, lost, damaged (or 1-7, or perekaman-baru, pemilih-pemula, \
             pemekaran, perubahan-data, rentan, hilang, rusak)"
        )
    })
}

/// The API name without prefix, for JSON and results files: `NEW_RECORDING`.
pub fn reason_code(reason: Reason) -> &'static str {
    reason
        .as_str_name()
        .strip_prefix("REASON_")
        .unwrap_or("UNSPECIFIED")
}

/// The reason as officers say it.
pub fn reason_text(reason: Reason, lang: Lang) -> &'static str {
    match reason {
        Reason::NewRecording => lang.t("perekaman baru", "new recording"),
        Reason::FirstTimeVoter => lang.t("pemilih pemula", "first-time voter"),
        Reason::RegionSplit => lang.t("pemekaran wilayah", "region split"),
        Reason::DataChange => lang.t("perubahan data", "data change"),
        Reason::Vulnerable => lang.t("kelompok rentan", "vulnerable person"),
        Reason::Lost => lang.t("hilang", "lost"),
        Reason::Damaged => lang.t("rusak", "damaged"),
        Reason::Unspecified => lang.t("tidak disebut", "unspecified"),
    }
}

/// Parses the officer's IKD check: `active|not-active|exempt`, `aktif|belum-aktif|dikecualikan`,
/// or the single letters of the interactive prompt.
pub fn parse_ikd(word: &str) -> Option<IkdStatus> {
    let status = match canonical(word, "IKD_STATUS_").as_str() {
        "ACTIVE" | "AKTIF" | "A" | "Y" | "YA" | "YES" => IkdStatus::Active,
        "NOT_ACTIVE" | "INACTIVE" | "BELUM_AKTIF" | "TIDAK_AKTIF" | "BELUM" | "N" | "B" => {
            IkdStatus::NotActive
        }
        "EXEMPT" | "DIKECUALIKAN" | "KECUALI" | "E" | "D" => IkdStatus::Exempt,
        "" | "UNSPECIFIED" | "-" => IkdStatus::Unspecified,
        _ => return None,
    };
    Some(status)
}

/// For clap: an IKD status or a helpful error.
pub fn parse_ikd_arg(word: &str) -> Result<IkdStatus, String> {
    parse_ikd(word).ok_or_else(|| {
        format!("unknown IKD status {word:?}; use active, not-active or exempt (aktif, belum-aktif, dikecualikan)")
    })
}

/// Parses a spoilage reason: `misprint`, `chip-encoding-failure` (`chip`), `factory-defect`
/// (`defect`), `storage-damage` (`storage`), `other`, or the Indonesian words.
pub fn parse_spoilage(word: &str) -> Option<SpoilageReason> {
    let reason = match canonical(word, "SPOILAGE_REASON_").as_str() {
        "MISPRINT" | "SALAH_CETAK" => SpoilageReason::Misprint,
        "CHIP_ENCODING_FAILURE" | "CHIP" | "CHIP_GAGAL" | "GAGAL_CHIP" => {
            SpoilageReason::ChipEncodingFailure
        }
        "FACTORY_DEFECT" | "DEFECT" | "CACAT_PABRIK" | "CACAT" => SpoilageReason::FactoryDefect,
        "STORAGE_DAMAGE" | "STORAGE" | "RUSAK_PENYIMPANAN" | "PENYIMPANAN" => {
            SpoilageReason::StorageDamage
        }
        "OTHER" | "LAINNYA" | "LAIN" => SpoilageReason::Other,
        _ => return None,
    };
    Some(reason)
}

/// For clap: a spoilage reason or a helpful error.
pub fn parse_spoilage_arg(word: &str) -> Result<SpoilageReason, String> {
    parse_spoilage(word).ok_or_else(|| {
        format!(
            "unknown spoilage reason {word:?}; use misprint, chip-encoding-failure, factory-defect, \
             storage-damage or other (salah-cetak, chip-gagal, cacat-pabrik, rusak-penyimpanan, lainnya)"
        )
    })
}

/// A reservation state as officers say it.
pub fn state_text(state: ReservationState, lang: Lang) -> &'static str {
    match state {
        ReservationState::Held => lang.t("DITAHAN", "HELD"),
        ReservationState::Committed => lang.t("DICETAK", "COMMITTED"),
        ReservationState::Cancelled => lang.t("DIBATALKAN", "CANCELLED"),
        ReservationState::Expired => lang.t("KEDALUWARSA", "EXPIRED"),
        ReservationState::Unspecified => lang.t("TIDAK DIKETAHUI", "UNKNOWN"),
    }
}

/// The API name without prefix, for JSON: `HELD`.
pub fn state_code(state: ReservationState) -> &'static str {
    state
        .as_str_name()
        .strip_prefix("RESERVATION_STATE_")
        .unwrap_or("UNSPECIFIED")
}

/// Why an applicant is referred to IKD, in one short phrase.
pub fn cause_text(cause: ReferralCause, lang: Lang) -> &'static str {
    match cause {
        ReferralCause::QuotaExhausted => lang.t(
            "kuota blangko hari ini sudah habis",
            "today's quota is used up",
        ),
        ReferralCause::OutOfStock => lang.t("stok blangko habis", "no blank cards are in stock"),
        ReferralCause::ReasonCapReached => lang.t(
            "batas harian untuk alasan ini sudah tercapai",
            "the daily cap for this reason is reached",
        ),
        ReferralCause::Closed => lang.t(
            "tempat layanan tidak melayani hari ini",
            "the service point does not serve today",
        ),
        ReferralCause::IkdRequired => lang.t(
            "kantor mewajibkan aktivasi IKD terlebih dahulu",
            "the office requires IKD activation first",
        ),
        ReferralCause::Unspecified => lang.t("tanpa keterangan", "no cause given"),
    }
}

/// The API name without prefix, for JSON: `QUOTA_EXHAUSTED`.
pub fn cause_code(cause: ReferralCause) -> &'static str {
    cause
        .as_str_name()
        .strip_prefix("REFERRAL_CAUSE_")
        .unwrap_or("UNSPECIFIED")
}

/// The API name without prefix, for JSON: `MISPRINT`.
pub fn spoilage_code(reason: SpoilageReason) -> &'static str {
    reason
        .as_str_name()
        .strip_prefix("SPOILAGE_REASON_")
        .unwrap_or("UNSPECIFIED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_in_both_languages_and_by_number() {
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(parse_reason(&(i + 1).to_string()), Some(*reason));
            assert_eq!(parse_reason(reason_code(*reason)), Some(*reason));
            assert_eq!(parse_reason(reason.as_str_name()), Some(*reason));
            let dashed = reason_code(*reason).to_lowercase().replace('_', "-");
            assert_eq!(parse_reason(&dashed), Some(*reason));
        }
        assert_eq!(parse_reason("perekaman-baru"), Some(Reason::NewRecording));
        assert_eq!(parse_reason("Hilang"), Some(Reason::Lost));
        assert_eq!(parse_reason("rusak"), Some(Reason::Damaged));
        assert_eq!(parse_reason("8"), None);
        assert_eq!(parse_reason("unspecified"), None);
        assert!(parse_reason_arg("stolen").is_err_and(|e| e.contains("new-recording")));
    }

    #[test]
    fn ikd_and_spoilage_parse() {
        assert_eq!(parse_ikd("active"), Some(IkdStatus::Active));
        assert_eq!(parse_ikd("not-active"), Some(IkdStatus::NotActive));
        assert_eq!(parse_ikd("belum aktif"), Some(IkdStatus::NotActive));
        assert_eq!(parse_ikd("exempt"), Some(IkdStatus::Exempt));
        assert_eq!(parse_ikd(""), Some(IkdStatus::Unspecified));
        assert_eq!(parse_ikd("maybe"), None);
        assert_eq!(
            parse_spoilage("chip"),
            Some(SpoilageReason::ChipEncodingFailure)
        );
        assert_eq!(
            parse_spoilage("salah-cetak"),
            Some(SpoilageReason::Misprint)
        );
        assert_eq!(parse_spoilage("nope"), None);
    }

    #[test]
    fn codes_drop_the_prefix() {
        assert_eq!(reason_code(Reason::FirstTimeVoter), "FIRST_TIME_VOTER");
        assert_eq!(state_code(ReservationState::Held), "HELD");
        assert_eq!(cause_code(ReferralCause::IkdRequired), "IKD_REQUIRED");
        assert_eq!(spoilage_code(SpoilageReason::Other), "OTHER");
    }
}
