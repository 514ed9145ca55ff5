//! The NIK (Nomor Induk Kependudukan) on the client side: normalising what the officer typed,
//! masking it for everything the client prints, and a local pre-check so that a queue file's
//! obvious typos are reported with their line numbers before anything is sent. The server stays
//! the judge: it checks every NIK again and its BadRequest is what the officer finally sees.

use chrono::NaiveDate;

use blangko_domain::nik::mask_digits;
pub use blangko_domain::nik::{NIK_DIGITS as NIK_LEN, NikError};

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
        mask_digits(&nik)
    } else {
        // As many stars as characters (one at least): the server's mask always writes 16.
        "*".repeat(nik.chars().count().clamp(1, NIK_LEN))
    }
}

/// Checks a NIK by the server's own rules ([`blangko_domain::nik::Nik::parse`]) and returns it
/// normalised; any whitespace is a separator here too (a queue file's cell may hold a tab or a
/// no-break space between the groups). `today` is the office-local date, to pick the century
/// of the birth year. The error names the rule, never the digits.
pub fn validate(input: &str, today: NaiveDate) -> Result<String, NikError> {
    blangko_domain::nik::Nik::parse(&normalize(input), today).map(|nik| nik.as_str().to_string())
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
            Err(NikError::NonDigit)
        );
        assert_eq!(
            validate("327501410190001", today()),
            Err(NikError::WrongLength { digits: 15 })
        );
        assert!(matches!(
            validate("9975014101900001", today()),
            Err(NikError::UnknownProvince { .. })
        ));
        for impossible in [
            "3275013201900001",
            "3275017201900001",
            "3275014113900001",
            "3275013102900001",
        ] {
            assert_eq!(
                validate(impossible, today()),
                Err(NikError::ImpossibleBirthDate),
                "{impossible}"
            );
        }
        assert_eq!(
            validate("3275014101900000", today()),
            Err(NikError::ZeroSerial)
        );
        // Said in both languages, neither repeating the digits typed.
        let province = validate("9975014101900001", today()).expect_err("unknown province");
        assert!(!province.to_string().contains("99"), "{province}");
        assert!(
            !province.indonesian().contains("99"),
            "{}",
            province.indonesian()
        );
        assert!(
            NikError::WrongLength { digits: 15 }
                .indonesian()
                .contains("16 digit")
        );
    }

    #[test]
    fn any_whitespace_between_the_groups_is_a_separator() {
        for typed in [
            "3275\t0141\t0190\t0001",
            "3275\u{a0}0141\u{a0}0190\u{a0}0001",
            " 3275 0141 0190 0001\n",
        ] {
            assert_eq!(
                validate(typed, today()),
                Ok("3275014101900001".to_string()),
                "{typed:?}"
            );
        }
    }
}
