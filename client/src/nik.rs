//! The NIK (Nomor Induk Kependudukan) on the client side: normalising what the officer typed,
//! masking it for everything the client prints, and a local pre-check so that a queue file's
//! obvious typos are reported with their line numbers before anything is sent. The server stays
//! the judge: it checks every NIK again and its BadRequest is what the officer finally sees.

use chrono::{Datelike, NaiveDate};

/// Digits in a NIK.
pub const NIK_LEN: usize = 16;

/// The 38 province codes (Kemendagri) a NIK may start with.
const PROVINCE_CODES: [u8; 38] = [
    11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 31, 32, 33, 34, 35, 36, 51, 52, 53, 61, 62, 63, 64, 65,
    71, 72, 73, 74, 75, 76, 81, 82, 91, 92, 93, 94, 95, 96,
];

/// Why a NIK is not valid, in both languages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NikError {
    /// Empty input.
    #[error("NIK is empty")]
    Empty,
    /// Something other than digits (after dropping spaces, dots and dashes).
    #[error("NIK must contain digits only")]
    NotDigits,
    /// Not 16 digits.
    #[error("NIK must have 16 digits, not {0}")]
    WrongLength(usize),
    /// The first two digits are no province.
    #[error("unknown province code {0:02}")]
    UnknownProvince(u8),
    /// Day/month/year do not form a real birth date.
    #[error("impossible birth date")]
    BadBirthDate,
    /// Serial 0000.
    #[error("serial number 0000 is not valid")]
    ZeroSerial,
}

impl NikError {
    /// The reason in Bahasa Indonesia.
    pub fn indonesian(&self) -> String {
        match self {
            NikError::Empty => "NIK kosong".to_string(),
            NikError::NotDigits => "NIK hanya boleh berisi angka".to_string(),
            NikError::WrongLength(n) => format!("NIK harus 16 digit, bukan {n}"),
            NikError::UnknownProvince(p) => format!("kode provinsi {p:02} tidak dikenal"),
            NikError::BadBirthDate => "tanggal lahir dalam NIK tidak mungkin".to_string(),
            NikError::ZeroSerial => "nomor urut 0000 tidak sah".to_string(),
        }
    }
}

/// Drops the separators people type inside a NIK (spaces, dots, dashes).
pub fn normalize(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '.' && *c != '-')
        .collect()
}

/// The masked form for printing: region (first 6) and serial (last 4) kept, the birth date hidden,
/// e.g. `327501******0001`. Anything that is not 16 digits is hidden completely.
pub fn mask(input: &str) -> String {
    let nik = normalize(input);
    if nik.len() == NIK_LEN && nik.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}******{}", &nik[..6], &nik[12..])
    } else {
        "*".repeat(nik.chars().count().clamp(1, NIK_LEN))
    }
}

/// Checks a NIK by the rules of DESIGN.md (the same the server applies) and returns it normalised.
/// `today` is the office-local date, to pick the century of the birth year.
pub fn validate(input: &str, today: NaiveDate) -> Result<String, NikError> {
    let nik = normalize(input);
    if nik.is_empty() {
        return Err(NikError::Empty);
    }
    if !nik.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NikError::NotDigits);
    }
    if nik.len() != NIK_LEN {
        return Err(NikError::WrongLength(nik.len()));
    }
    let two = |at: usize| -> u32 {
        let b = nik.as_bytes();
        u32::from(b[at] - b'0') * 10 + u32::from(b[at + 1] - b'0')
    };
    let province = two(0);
    // Two digits are at most 99, so this never saturates.
    let province = u8::try_from(province).unwrap_or(u8::MAX);
    if !PROVINCE_CODES.contains(&province) {
        return Err(NikError::UnknownProvince(province));
    }
    let raw_day = two(6);
    let day = match raw_day {
        1..=31 => raw_day,
        41..=71 => raw_day - 40,
        _ => return Err(NikError::BadBirthDate),
    };
    let month = two(8);
    let yy = i32::try_from(two(10)).unwrap_or(0);
    let this_century = today.year() - today.year().rem_euclid(100);
    let birth_date = NaiveDate::from_ymd_opt(this_century + yy, month, day)
        .filter(|d| *d <= today)
        .or_else(|| NaiveDate::from_ymd_opt(this_century - 100 + yy, month, day));
    if birth_date.is_none() {
        return Err(NikError::BadBirthDate);
    }
    if &nik[12..] == "0000" {
        return Err(NikError::ZeroSerial);
    }
    Ok(nik)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 29).unwrap_or_default()
    }

    #[test]
    fn masks_keep_region_and_serial() {
        assert_eq!(mask("3275014101900001"), "327501******0001");
        assert_eq!(mask("3275.0141.0190.0001"), "327501******0001");
        assert_eq!(mask("3275 0141 0190 0001"), "327501******0001");
        assert_eq!(mask("12345"), "*****");
        assert_eq!(mask("32750141019000019999"), "*".repeat(16));
        assert!(!mask("abc3275014101900001").contains("3275"));
    }

    #[test]
    fn valid_niks_pass_normalised() {
        assert_eq!(
            validate("3275014101900001", today()),
            Ok("3275014101900001".to_string())
        );
        assert_eq!(
            validate("32-75-01 150690 0002", today()),
            Ok("3275011506900002".to_string())
        );
        // Born 29 Feb 2000 (a woman: day + 40): 2000 is a leap year.
        assert!(validate("3275016902000003", today()).is_ok());
    }

    #[test]
    fn invalid_niks_are_rejected_with_the_reason() {
        assert_eq!(validate("", today()), Err(NikError::Empty));
        assert_eq!(
            validate("32750141019000a1", today()),
            Err(NikError::NotDigits)
        );
        assert_eq!(
            validate("327501410190001", today()),
            Err(NikError::WrongLength(15))
        );
        assert_eq!(
            validate("9975014101900001", today()),
            Err(NikError::UnknownProvince(99))
        );
        assert_eq!(
            validate("3275013201900001", today()),
            Err(NikError::BadBirthDate)
        );
        assert_eq!(
            validate("3275017201900001", today()),
            Err(NikError::BadBirthDate)
        );
        assert_eq!(
            validate("3275014113900001", today()),
            Err(NikError::BadBirthDate)
        );
        assert_eq!(
            validate("3275013102900001", today()),
            Err(NikError::BadBirthDate)
        );
        assert_eq!(
            validate("3275014101900000", today()),
            Err(NikError::ZeroSerial)
        );
        assert!(NikError::WrongLength(15).indonesian().contains("16 digit"));
    }
}
