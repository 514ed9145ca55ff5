//! The NIK (Nomor Induk Kependudukan), the applicant's 16-digit population number.
//!
//! Layout `PP RR DD DDMMYY SSSS`: province, regency/city and district where the person was
//! first registered, the birth date (day + 40 for women) and a serial. There is no checksum, so
//! the only defences against a typo are the length, the province list, the birth date and the
//! serial. Regency and district codes are not checked: NIKs are permanent and regions split, so
//! an old prefix that no longer exists is still a valid NIK.
//!
//! A NIK is personal data (UU 27/2022 on personal data protection): `Debug` and every error
//! message show at most the masked form, so a NIK never lands in a log by accident.

use std::fmt;

use chrono::{Datelike, NaiveDate};

/// Number of digits in a NIK.
pub const NIK_DIGITS: usize = 16;

/// Inclusive ranges of the valid two-digit province codes (Kemendagri, 38 provinces).
const PROVINCE_RANGES: [(u8, u8); 9] = [
    (11, 19),
    (21, 21),
    (31, 36),
    (51, 53),
    (61, 65),
    (71, 76),
    (81, 81),
    (82, 82),
    (91, 96),
];

/// A validated NIK: exactly 16 ASCII digits, separators removed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Nik(String);

/// Why a typed NIK was rejected; messages name the rule and never repeat the input digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NikError {
    /// Nothing but separators was typed.
    #[error("must not be empty")]
    Empty,
    /// Wrong number of digits once separators are removed.
    #[error("must have 16 digits, got {digits}")]
    WrongLength {
        /// How many characters remained after removing separators.
        digits: usize,
    },
    /// A character other than a digit, space, dot or dash.
    #[error("must contain only digits")]
    NonDigit,
    /// The first two digits are not one of the 38 province codes.
    // The code stays out of the message: the message must never echo input digits.
    #[error("starts with an unknown province code")]
    UnknownProvince {
        /// The two-digit code found, for callers that want to report it.
        code: String,
    },
    /// Digits 7–12 do not form a real birth date (day 01–31, or 41–71 for women).
    #[error("birth date digits do not form a real date")]
    ImpossibleBirthDate,
    /// The last four digits are 0000; serials start at 0001.
    #[error("serial number must not be 0000")]
    ZeroSerial,
}

impl NikError {
    /// The same as the English `Display`, in Bahasa Indonesia (never repeating input digits).
    pub fn indonesian(&self) -> String {
        match self {
            NikError::Empty => "NIK tidak boleh kosong".to_string(),
            NikError::WrongLength { digits } => format!("NIK harus 16 digit, bukan {digits}"),
            NikError::NonDigit => "NIK hanya boleh berisi angka".to_string(),
            NikError::UnknownProvince { .. } => {
                "kode provinsi di awal NIK tidak dikenal".to_string()
            }
            NikError::ImpossibleBirthDate => "tanggal lahir dalam NIK tidak mungkin".to_string(),
            NikError::ZeroSerial => "nomor urut NIK tidak boleh 0000".to_string(),
        }
    }
}

impl Nik {
    /// Parses a NIK typed by an officer: spaces, dots and dashes removed; then 16 digits.
    ///
    /// `today` is the office's local date; it decides the century of the two-digit birth year.
    /// Surrounding whitespace (a pasted newline) is ignored too.
    pub fn parse(input: &str, today: NaiveDate) -> Result<Nik, NikError> {
        let digits: String = input
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-'))
            .collect();
        if digits.is_empty() {
            return Err(NikError::Empty);
        }
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(NikError::NonDigit);
        }
        // All ASCII from here on, so byte length is the digit count and slicing is safe.
        if digits.len() != NIK_DIGITS {
            return Err(NikError::WrongLength {
                digits: digits.len(),
            });
        }
        let province = &digits[0..2];
        if !is_known_province(province) {
            return Err(NikError::UnknownProvince {
                code: province.to_string(),
            });
        }
        birth_date(&digits[6..12], today).ok_or(NikError::ImpossibleBirthDate)?;
        if &digits[12..16] == "0000" {
            return Err(NikError::ZeroSerial);
        }
        Ok(Nik(digits))
    }

    /// The 16 digits, for storage and lookups; never for display or logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// "327501******0001": first 6 digits (province, regency, district) and last 4 (serial) kept.
    pub fn masked(&self) -> String {
        mask_digits(&self.0)
    }

    /// The two-digit province code, e.g. "32" for Jawa Barat.
    pub fn province_code(&self) -> &str {
        &self.0[0..2]
    }
}

impl fmt::Debug for Nik {
    // Debug output ends up in logs and panics; only the masked form may appear there.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Nik").field(&self.masked()).finish()
    }
}

/// True for the 38 Kemendagri province codes (11–19, 21, 31–36, 51–53, 61–65, 71–76, 81, 82, 91–96).
pub fn is_known_province(code: &str) -> bool {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(n) = code.parse::<u8>() else {
        return false;
    };
    PROVINCE_RANGES
        .iter()
        .any(|&(low, high)| (low..=high).contains(&n))
}

/// Masks a 16-digit NIK as "327501******0001"; anything else becomes 16 stars, so a malformed
/// value cannot leak either.
pub fn mask_digits(nik16: &str) -> String {
    if nik16.len() == NIK_DIGITS && nik16.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}******{}", &nik16[0..6], &nik16[12..16])
    } else {
        "*".repeat(NIK_DIGITS)
    }
}

/// True when free text holds a NIK: a stretch of digits, with the spaces, dots, dashes and
/// slashes people type inside a NIK ([`has_nik_stretch`]), in which some run of whole digit
/// groups has exactly [`NIK_DIGITS`] digits and is a valid NIK by [`Nik::parse`]. So a NIK is
/// found beside a date or a count typed in the same stretch (`01.12.2026 3275014101900001`,
/// `3275014101900001 - 2 lembar`), while longer numbers (an 18-digit pallet code) and shorter
/// ones (a phone number) are not NIKs. Private: callers use [`holds_a_nik_any_separator`].
fn holds_a_nik(text: &str, today: NaiveDate) -> bool {
    nik_stretches(text).any(|stretch| {
        let groups: Vec<&str> = text[stretch]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|g| !g.is_empty())
            .collect();
        (0..groups.len()).any(|start| {
            let mut digits = String::with_capacity(NIK_DIGITS);
            for group in &groups[start..] {
                digits.push_str(group);
                if digits.len() >= NIK_DIGITS {
                    break;
                }
            }
            digits.len() == NIK_DIGITS && Nik::parse(&digits, today).is_ok()
        })
    })
}

/// True when `text` has a stretch of digits, with the spaces, dots, dashes and slashes people
/// type inside a NIK, that holds [`NIK_DIGITS`] or more digits: it could hold a NIK however it
/// was typed (`3275-0141-0190-0001`). Private: ids and other text that is stored, logged or
/// echoed are checked with [`has_nik_stretch_any_separator`], which also counts underscores and
/// every kind of space; this narrow form is its base for text outside ASCII.
fn has_nik_stretch(text: &str) -> bool {
    nik_stretches(text).next().is_some()
}

/// As [`has_nik_stretch`], with underscores and every kind of whitespace (a no-break space, a
/// tab) counted as separators inside a NIK too (`3275_0141_0190_0001`). Commas, colons and the
/// like still end a stretch: they keep apart the dates, times and counts a note is made of
/// ("11/12/2026 09:30, 1.200 keping"). For text that is refused when it could hold a NIK (a
/// counter's id, an id published in metrics, a caller's `x-request-id`), and for the request ids
/// stored hashed instead of in clear.
pub fn has_nik_stretch_any_separator(text: &str) -> bool {
    // Ids are ASCII (every Reserve checks its counter id): no copy of the text for them.
    if text.is_ascii() {
        nik_stretches_by(text, in_nik_widely).next().is_some()
    } else {
        has_nik_stretch(&separators_as_spaces(text))
    }
}

/// As [`holds_a_nik`], with underscores and every kind of whitespace counted as separators
/// inside a NIK too. For the notes and references the ledger keeps for good.
pub fn holds_a_nik_any_separator(text: &str, today: NaiveDate) -> bool {
    holds_a_nik(&separators_as_spaces(text), today)
}

/// `text` with every underscore and whitespace character turned into a plain space.
fn separators_as_spaces(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '_' || c.is_whitespace() {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `text` with every digit of each stretch that [`has_nik_stretch_any_separator`] finds (so of
/// every one [`has_nik_stretch`] finds too) turned into a star: for ids and text a caller gave
/// that are echoed in an error or written to a log, however the NIK in them was joined.
pub fn mask_nik_stretches(text: &str) -> std::borrow::Cow<'_, str> {
    if !has_nik_stretch_any_separator(text) {
        return std::borrow::Cow::Borrowed(text);
    }
    let chars: Vec<char> = text.chars().collect();
    let stretches: Vec<std::ops::Range<usize>> =
        stretches_in(&chars, |c: char| c.is_ascii_digit(), in_nik_widely_char).collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let masked = c.is_ascii_digit() && stretches.iter().any(|r| r.contains(&i));
        out.push(if masked { '*' } else { c });
    }
    std::borrow::Cow::Owned(out)
}

/// The separators people type inside a NIK: spaces, dots, dashes and slashes.
fn in_nik(b: u8) -> bool {
    matches!(b, b' ' | b'.' | b'-' | b'/')
}

/// [`in_nik`], and underscores and ASCII whitespace (see [`has_nik_stretch_any_separator`]).
fn in_nik_widely(b: u8) -> bool {
    // `char::is_whitespace` of ASCII: `is_ascii_whitespace` leaves out the vertical tab.
    in_nik(b) || b == b'_' || b.is_ascii_whitespace() || b == 0x0b
}

/// [`in_nik_widely`] for any character: underscores and every kind of whitespace.
fn in_nik_widely_char(c: char) -> bool {
    c == '_' || c.is_whitespace() || matches!(c, '.' | '-' | '/')
}

/// The byte ranges of the stretches of digits and in-NIK separators that hold at least
/// [`NIK_DIGITS`] digits.
fn nik_stretches(text: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    nik_stretches_by(text, in_nik)
}

/// [`nik_stretches`] with `separator` telling which bytes may stand between a NIK's digits.
fn nik_stretches_by(
    text: &str,
    separator: fn(u8) -> bool,
) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    stretches_in(text.as_bytes(), |b: u8| b.is_ascii_digit(), separator)
}

/// The index ranges of `items` that are stretches of digits and separators (each beginning at a
/// digit) holding at least [`NIK_DIGITS`] digits: over bytes, or over characters.
fn stretches_in<'a, T: Copy>(
    items: &'a [T],
    digit: impl Fn(T) -> bool + 'a,
    separator: impl Fn(T) -> bool + 'a,
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < items.len() {
            if !digit(items[at]) {
                at += 1;
                continue;
            }
            let start = at;
            let mut digits = 0;
            while at < items.len() && (digit(items[at]) || separator(items[at])) {
                digits += usize::from(digit(items[at]));
                at += 1;
            }
            if digits >= NIK_DIGITS {
                return Some(start..at);
            }
        }
        None
    })
}

/// The birth date encoded in `ddmmyy` (6 ASCII digits), or None if it is not a real date.
///
/// Women have 40 added to the day. The two-digit year takes the latest century that does not
/// put the birth date after `today` (a newborn registered today is valid).
fn birth_date(ddmmyy: &str, today: NaiveDate) -> Option<NaiveDate> {
    let dd: u32 = ddmmyy.get(0..2)?.parse().ok()?;
    let mm: u32 = ddmmyy.get(2..4)?.parse().ok()?;
    let yy: i32 = ddmmyy.get(4..6)?.parse().ok()?;
    let day = match dd {
        1..=31 => dd,
        41..=71 => dd - 40,
        _ => return None,
    };
    if !(1..=12).contains(&mm) {
        return None;
    }
    // Compare as (year, month, day) tuples first: the candidate may not be a real date in one
    // century and real in the other (29 February 2000 vs 1900), so the century is chosen on
    // the digits and validity is checked once, on the chosen year.
    let mut year = today.year() - today.year().rem_euclid(100) + yy;
    if (year, mm, day) > (today.year(), today.month(), today.day()) {
        year -= 100;
    }
    NaiveDate::from_ymd_opt(year, mm, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nik_is_found_in_free_text_with_or_without_separators_and_other_numbers_are_not() {
        let today = date(2026, 12, 1);
        assert!(holds_a_nik("pemohon 3275014101900001 pergi", today));
        assert!(holds_a_nik("NIK 3275 0141 0190 0001.", today));
        assert!(holds_a_nik("nik=3275.01.410190.0001", today));
        assert!(
            !holds_a_nik("BENCH-12345678901234567890", today),
            "20 digits"
        );
        assert!(!holds_a_nik("SSCC 003456789012345675", today), "18 digits");
        assert!(!holds_a_nik("telp 0812-3456-7890, BA-2026/117", today));
        assert!(!holds_a_nik("3275017201900001", today), "day 72 is no date");
        assert!(
            !holds_a_nik("periode 2026-12-01 - 2026-12-31", today),
            "no province 20"
        );
        // A NIK beside a date or a count typed in the same stretch.
        assert!(holds_a_nik("tgl 01.12.2026 3275014101900001 rusak", today));
        assert!(holds_a_nik("3275014101900001 - 2 lembar", today));
        assert!(holds_a_nik("BA 17 3275014101900001", today));
        assert!(holds_a_nik("BA 17 3275 0141 0190 0001 - 2", today));
    }

    #[test]
    fn a_nik_split_by_any_separator_is_found_where_it_would_be_refused() {
        let today = date(2026, 12, 1);
        assert!(has_nik_stretch_any_separator("3275_0141_0190_0001"));
        assert!(has_nik_stretch_any_separator("loket_3275014101900001"));
        assert!(!has_nik_stretch_any_separator("loket_12_b"));
        assert!(holds_a_nik_any_separator("NIK 3275_0141_0190_0001", today));
        assert!(holds_a_nik_any_separator(
            "NIK 3275\u{a0}0141\u{a0}0190\u{a0}0001",
            today
        ));
        assert!(holds_a_nik_any_separator(
            "NIK 3275\t0141 0190\t0001",
            today
        ));
        assert!(!holds_a_nik_any_separator(
            "telp 0812_3456_7890, BA-2026/117",
            today
        ));
        // The dates, times and counts of an ordinary note stay apart.
        for note in [
            "Diterima 11/12/2026 09:30, 1.200 keping",
            "stock opname 31/12/2026 10:30, 1.250",
            "BA 470/1234/2026, 11/12/2026",
            "Libur 17/08/2026, 01/09/2026",
        ] {
            assert!(!holds_a_nik_any_separator(note, today), "{note}");
        }
        // Underscores are no separator of the narrow form (ids are joined with them); the wide
        // form, which decides what is hashed, refused or masked, counts them.
        assert!(!has_nik_stretch("3275_0141_0190_0001"));
        assert!(has_nik_stretch_any_separator("3275_0141_0190_0001"));
        assert_eq!(
            mask_nik_stretches("q_3275_0141_0190_0001_x"),
            "q_****_****_****_****_x"
        );
        assert_eq!(
            mask_nik_stretches("q 3275\u{a0}0141\u{a0}0190\u{a0}0001"),
            "q ****\u{a0}****\u{a0}****\u{a0}****"
        );
        assert_eq!(
            mask_nik_stretches("srv-12345678:12345678"),
            "srv-12345678:12345678"
        );
    }

    #[test]
    fn sixteen_digits_in_a_row_or_split_are_found_and_masked_and_fewer_kept() {
        assert!(has_nik_stretch("pemohon 3275014101900001 pergi"));
        assert!(has_nik_stretch("32750141019000012"));
        assert!(has_nik_stretch("327501-4101900001"));
        assert!(has_nik_stretch("id-3275.0141.0190.0001"));
        assert!(!has_nik_stretch("nota 470/123/2026 telp 081234567890"));
        // The server's own request ids, even drawn all decimal, are neither.
        assert!(!has_nik_stretch("srv-12345678:12345678:12345678"));
        assert!(!has_nik_stretch_any_separator(
            "srv-12345678:12345678:12345678"
        ));
        assert_eq!(
            mask_nik_stretches("q-3275-mpp-3275014101900001"),
            "q-3275-mpp-****************"
        );
        assert_eq!(
            mask_nik_stretches("r-3275-0141-0190-0001-x"),
            "r-****-****-****-****-x"
        );
        assert_eq!(
            mask_nik_stretches("a32750141019000012b1"),
            "a*****************b1"
        );
        assert_eq!(mask_nik_stretches("3275014101900001"), "*".repeat(16));
        assert!(matches!(
            mask_nik_stretches("py-4f1c-2026"),
            std::borrow::Cow::Borrowed("py-4f1c-2026")
        ));
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test date")
    }

    fn today() -> NaiveDate {
        date(2026, 11, 28)
    }

    #[test]
    fn valid_niks() {
        // (input, normalized)
        let cases = [
            ("3275010101900001", "3275010101900001"),
            // Separators an officer types or copies from a photocopy.
            ("3275.0101-0190 0001", "3275010101900001"),
            (" 3275 0101 0190 0001\n", "3275010101900001"),
            // Woman born 1 January 1990: day 01 + 40.
            ("3275014101900001", "3275014101900001"),
            // Woman born 31 March 1990: day 71.
            ("3275017103900001", "3275017103900001"),
            // 29 February 2000 and 2024 (leap years).
            ("3201012902000001", "3201012902000001"),
            ("3201012902240001", "3201012902240001"),
            // Woman born 29 February 2024.
            ("3201016902240001", "3201016902240001"),
            // Born today (2026-11-28): not in the future, so 2026.
            ("3201012811260001", "3201012811260001"),
            // First and last province codes; serial 9999.
            ("1101010101909999", "1101010101909999"),
            ("9601010101900001", "9601010101900001"),
            // Unknown regency/district prefix (99 99) is accepted: regions split.
            ("3299990101900001", "3299990101900001"),
        ];
        for (input, normalized) in cases {
            let nik = Nik::parse(input, today()).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(nik.as_str(), normalized, "{input:?}");
        }
    }

    #[test]
    fn invalid_niks() {
        let cases = [
            ("", NikError::Empty),
            (" . - ", NikError::Empty),
            ("327501010190001", NikError::WrongLength { digits: 15 }),
            ("32750101019000012", NikError::WrongLength { digits: 17 }),
            ("3275O10101900001", NikError::NonDigit),
            ("abcdefghijklmnop", NikError::NonDigit),
            ("3275/0101/900001", NikError::NonDigit),
            // Non-ASCII digits (Arabic-Indic one) are not NIK digits.
            ("327501010190000\u{0661}", NikError::NonDigit),
            (
                "2075010101900001",
                NikError::UnknownProvince { code: "20".into() },
            ),
            (
                "9775010101900001",
                NikError::UnknownProvince { code: "97".into() },
            ),
            (
                "0075010101900001",
                NikError::UnknownProvince { code: "00".into() },
            ),
            // 31 April does not exist, for men (31) or women (71).
            ("3275013104900001", NikError::ImpossibleBirthDate),
            ("3275017104900001", NikError::ImpossibleBirthDate),
            // 29 February 2023: not a leap year.
            ("3275012902230001", NikError::ImpossibleBirthDate),
            // Day 00, 32..40 and 72+; month 00 and 13.
            ("3275010001900001", NikError::ImpossibleBirthDate),
            ("3275013201900001", NikError::ImpossibleBirthDate),
            ("3275014001900001", NikError::ImpossibleBirthDate),
            ("3275017201900001", NikError::ImpossibleBirthDate),
            ("3275010100900001", NikError::ImpossibleBirthDate),
            ("3275010113900001", NikError::ImpossibleBirthDate),
            ("3275010101900000", NikError::ZeroSerial),
        ];
        for (input, expected) in cases {
            assert_eq!(Nik::parse(input, today()), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn century_rule() {
        // Born 28-11-26 with today 2026-11-28: 2026. Born in December 26: 1926, a real date.
        assert!(Nik::parse("3275012811260001", today()).is_ok());
        assert_eq!(
            birth_date("281126", today()),
            Some(date(2026, 11, 28)),
            "today itself is not in the future"
        );
        assert_eq!(birth_date("291126", today()), Some(date(1926, 11, 29)));
        assert_eq!(birth_date("011226", today()), Some(date(1926, 12, 1)));
        assert_eq!(birth_date("010199", today()), Some(date(1999, 1, 1)));
        assert_eq!(birth_date("710300", today()), Some(date(2000, 3, 31)));
        // Seen from 31 December 1999, "00" means 1900, and 29 February 1900 did not exist.
        let eve = date(1999, 12, 31);
        assert_eq!(birth_date("290200", eve), None);
        assert_eq!(
            Nik::parse("3275012902000001", eve),
            Err(NikError::ImpossibleBirthDate)
        );
        // The same digits seen from 2026 are 29 February 2000, a leap day.
        assert_eq!(birth_date("290200", today()), Some(date(2000, 2, 29)));
    }

    #[test]
    fn masking_keeps_region_and_serial_only() {
        let nik = Nik::parse("3275.0101-0190 0001", today()).expect("valid");
        assert_eq!(nik.masked(), "327501******0001");
        assert_eq!(nik.province_code(), "32");
        assert_eq!(mask_digits("3275010101900001"), "327501******0001");
        assert_eq!(mask_digits("12345"), "****************");
        assert_eq!(mask_digits("327501010190000x"), "****************");
    }

    #[test]
    fn debug_does_not_leak_the_birth_date() {
        let nik = Nik::parse("3275014507850123", today()).expect("valid");
        let shown = format!("{nik:?} {:?}", Some(&nik));
        assert_eq!(format!("{nik:?}"), "Nik(\"327501******0123\")");
        assert!(!shown.contains("450785"), "{shown}");
        assert!(!shown.contains("3275014507850123"), "{shown}");
    }

    #[test]
    fn error_messages_name_the_rule_without_digits() {
        let cases = [
            (
                "327501010190001",
                "must have 16 digits, got 15",
                "NIK harus 16 digit, bukan 15",
            ),
            (
                "9775010101900001",
                "starts with an unknown province code",
                "kode provinsi di awal NIK tidak dikenal",
            ),
            (
                "3275013104900001",
                "birth date digits do not form a real date",
                "tanggal lahir dalam NIK tidak mungkin",
            ),
            (
                "3275010101900000",
                "serial number must not be 0000",
                "nomor urut NIK tidak boleh 0000",
            ),
            (
                "3275O10101900001",
                "must contain only digits",
                "NIK hanya boleh berisi angka",
            ),
            ("  ", "must not be empty", "NIK tidak boleh kosong"),
        ];
        for (input, message, indonesian) in cases {
            let err = Nik::parse(input, today()).expect_err(input);
            assert_eq!(err.to_string(), message);
            assert_eq!(err.indonesian(), indonesian);
        }
    }

    #[test]
    fn province_list_has_38_codes() {
        let known: Vec<u8> = (0..100u8)
            .filter(|n| is_known_province(&format!("{n:02}")))
            .collect();
        assert_eq!(known.len(), 38);
        for code in [
            "11", "19", "21", "31", "36", "51", "53", "61", "65", "71", "76",
        ] {
            assert!(is_known_province(code), "{code}");
        }
        for code in ["81", "82", "91", "96"] {
            assert!(is_known_province(code), "{code}");
        }
        for code in [
            "10", "20", "22", "30", "37", "50", "54", "77", "83", "90", "97",
        ] {
            assert!(!is_known_province(code), "{code}");
        }
        assert!(!is_known_province("3"));
        assert!(!is_known_province("+3"));
        assert!(!is_known_province("321"));
    }

    #[test]
    fn a_province_code_is_exactly_two_digits() {
        assert!(is_known_province("32"));
        for bad in ["011", "032", "3", "", "3a", "+3", " 32"] {
            assert!(!is_known_province(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_nik_typed_with_separators_is_found_and_masked() {
        for text in [
            "3275-0141-0190-0001",
            "3275.0141.0190.0001",
            "3275 0141 0190 0001",
            "327501/410190/0001",
            "3275014101900001",
            "tiket 3275-0141-0190-0001 ok",
        ] {
            assert!(has_nik_stretch(text), "{text}");
            let masked = mask_nik_stretches(text);
            assert_eq!(
                masked.bytes().filter(u8::is_ascii_digit).count(),
                0,
                "{text} -> {masked}"
            );
        }
        assert_eq!(
            mask_nik_stretches("A-3275-0141-0190-0001-x"),
            "A-****-****-****-****-x"
        );
        for text in [
            "A017",
            "2026-12-06",
            "B-0001/2026",
            "loket 12, antrean 345",
            "",
        ] {
            assert!(!has_nik_stretch(text), "{text}");
            assert_eq!(mask_nik_stretches(text), text);
        }
    }
}
