//! Request validation: collects every bad field of a request (not just the first) so the caller
//! can fix them all at once. Limits are explicit here.

use chrono::NaiveDate;

use crate::domain::calendar::{OfficeZone, parse_local_date, parse_local_time};
use crate::domain::nik::{Nik, NikError, is_known_province};
use crate::engine::{EngineError, FieldViolation};

/// Longest request_id.
pub const MAX_REQUEST_ID_CHARS: usize = 64;
/// Longest service point or counter id.
pub const MAX_ID_CHARS: usize = 64;
/// Longest display name.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest reference (delivery, transfer, destruction report).
pub const MAX_REFERENCE_CHARS: usize = 128;
/// Longest free-text note.
pub const MAX_NOTE_CHARS: usize = 256;
/// Most blanks in one shipment or transfer.
pub const MAX_MOVEMENT: u32 = 1_000_000;
/// Highest stock-take count.
pub const MAX_COUNTED: u32 = 10_000_000;
/// Highest fixed daily quota.
pub const MAX_DAILY_QUOTA: u32 = 100_000;
/// Highest PACED weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Most reason caps per policy.
pub const MAX_REASON_CAPS: usize = 8;
/// Most holidays per service point.
pub const MAX_HOLIDAYS: usize = 64;
/// Longest hold.
pub const MAX_HOLD_TTL_SECS: u32 = 86_400;
/// Longest fallback horizon.
pub const MAX_HORIZON_DAYS: u32 = 60;
/// Longest queue a counter may report.
pub const MAX_WAITING: u32 = 100_000;
/// Most entries in a list of reasons (priority reasons, a cap's reasons): more than there are
/// reasons, so a longer list can only repeat one or name one that does not exist.
pub const MAX_LISTED_REASONS: usize = 16;
/// Most entries in a service point's list of weekdays.
pub const MAX_SERVICE_DAYS: usize = 7;
/// Most field violations one error lists; the last one says how many more there were.
pub const MAX_VIOLATIONS: usize = 32;
/// Most bytes of the violations' texts one error lists (field names, English and Bahasa
/// Indonesia reasons together), the note of those left out included. The whole error travels in
/// response headers, twice over (the English message, and the details base64-encoded), and
/// gRPC's C core (Python, C#, C++ clients) reads at most 8 KiB of headers by default: at this
/// bound an error stays under about 7 KiB.
pub const MAX_VIOLATION_BYTES: usize = 3072;
/// Room kept within [`MAX_VIOLATION_BYTES`] for the note of the violations left out.
const NOTE_BYTES: usize = 192;

/// "Is required", in Bahasa Indonesia.
pub const REQUIRED: &str = "wajib diisi";
/// "Is listed twice", in Bahasa Indonesia.
pub const LISTED_TWICE: &str = "tercantum dua kali";
/// "Is not a token this server issued", in Bahasa Indonesia.
pub const BAD_PAGE_TOKEN: &str = "bukan token yang diterbitkan server ini";

/// Collects field violations (at most [`MAX_VIOLATIONS`] of them, of at most
/// [`MAX_VIOLATION_BYTES`]).
#[derive(Default)]
pub struct Checker {
    violations: Vec<FieldViolation>,
    /// The bytes of the violations kept.
    bytes: usize,
    /// Violations past the limits, counted but not kept.
    dropped: usize,
}

impl Checker {
    /// A checker with no violations yet.
    pub fn new() -> Self {
        Checker::default()
    }

    /// Records a violation, said in English (`description`) and in Bahasa Indonesia
    /// (`indonesian`); past [`MAX_VIOLATIONS`] or [`MAX_VIOLATION_BYTES`] it is only counted
    /// (and so is every one after it, so that what is listed is always the first ones).
    pub fn fail(
        &mut self,
        field: &str,
        description: impl Into<String>,
        indonesian: impl Into<String>,
    ) {
        let violation = FieldViolation::new(field, description, indonesian);
        let bytes =
            violation.field.len() + violation.description.len() + violation.indonesian.len();
        let fits = self.bytes + bytes <= MAX_VIOLATION_BYTES - NOTE_BYTES;
        if self.dropped == 0 && self.violations.len() < MAX_VIOLATIONS && fits {
            self.violations.push(violation);
            self.bytes += bytes;
        } else {
            self.dropped += 1;
        }
    }

    /// Ok when nothing was recorded.
    pub fn finish(mut self) -> Result<(), EngineError> {
        if self.violations.is_empty() {
            return Ok(());
        }
        if self.dropped > 0 {
            let dropped = self.dropped;
            if let Some(last) = self.violations.last_mut() {
                last.description.push_str(&format!(
                    " (and {dropped} more violations, not listed: at most {MAX_VIOLATIONS} are, of at most {MAX_VIOLATION_BYTES} bytes)"
                ));
                last.indonesian.push_str(&format!(
                    " (dan {dropped} kesalahan lain tidak ditampilkan: paling banyak {MAX_VIOLATIONS} ditampilkan, sepanjang paling banyak {MAX_VIOLATION_BYTES} bita)"
                ));
            }
        }
        Err(EngineError::Invalid(self.violations))
    }

    /// The entries of a repeated field of at most `max` entries, to check one by one; none (and
    /// one violation) when it is longer.
    pub fn listed<'a, T>(&mut self, field: &str, list: &'a [T], max: usize) -> &'a [T] {
        if list.len() > max {
            self.fail(
                field,
                format!("must have at most {max} entries, got {}", list.len()),
                format!("paling banyak {max} butir, diisi {}", list.len()),
            );
            return &[];
        }
        list
    }

    /// A required text of 1..=max characters without control characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize) {
        if value.is_empty() {
            self.fail(field, "is required", REQUIRED);
        } else {
            self.optional_text(field, value, max);
        }
    }

    /// An optional text of 0..=max characters without control characters.
    pub fn optional_text(&mut self, field: &str, value: &str, max: usize) {
        let chars = value.chars().count();
        if chars > max {
            self.fail(
                field,
                format!("must be at most {max} characters, got {chars}"),
                format!("paling panjang {max} karakter, diisi {chars}"),
            );
        } else if let Some(c) = value.chars().find(|&c| c.is_control() || invisible(c)) {
            if c.is_control() {
                self.fail(
                    field,
                    "must not contain control characters",
                    "tidak boleh berisi karakter kontrol",
                );
            } else {
                self.fail(
                    field,
                    "must not contain invisible formatting characters (zero-width spaces, direction marks, a byte-order mark, line or paragraph separators)",
                    "tidak boleh berisi karakter format tak terlihat (spasi lebar nol, tanda arah, tanda BOM, pemisah baris atau paragraf)",
                );
            }
        }
    }

    /// A client-generated request id: also no space at its start or end, and not blank ("t-17 "
    /// and "t-17" would be two requests, and a retry would be done twice).
    pub fn request_id(&mut self, value: &str) {
        self.text("request_id", value, MAX_REQUEST_ID_CHARS);
        self.trimmed("request_id", value);
    }

    /// A text that must not begin or end with whitespace (nor be whitespace only, when not
    /// empty).
    pub fn trimmed(&mut self, field: &str, value: &str) {
        if !value.is_empty() && value.trim().is_empty() {
            self.fail(field, "must not be blank", "tidak boleh hanya berisi spasi");
        } else if value.trim() != value {
            self.fail(
                field,
                "must not begin or end with whitespace",
                "tidak boleh diawali atau diakhiri spasi",
            );
        }
    }

    /// An id of letters, digits, '-', '_' and '.', 1..=max characters.
    pub fn id(&mut self, field: &str, value: &str, max: usize) {
        if value.is_empty() {
            self.fail(field, "is required", REQUIRED);
        } else if value.chars().count() > max {
            self.fail(
                field,
                format!("must be at most {max} characters"),
                format!("paling panjang {max} karakter"),
            );
        } else if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.fail(
                field,
                "may contain only letters, digits, '-', '_' and '.'",
                "hanya boleh berisi huruf, angka, '-', '_' dan '.'",
            );
        }
    }

    /// A counter's id: an [`Checker::id`] that does not look like a NIK either. It is kept
    /// with every reservation and in the ledger's notes (for good), so a NIK typed into it, or
    /// a client that swapped two fields, would be stored in clear.
    pub fn counter_id(&mut self, value: &str) {
        self.id("counter_id", value, MAX_ID_CHARS);
        // 16 digits in a row, or typed with dashes, dots or underscores (which an id may contain).
        if crate::domain::nik::has_nik_stretch_any_separator(value) {
            self.fail(
                "counter_id",
                "must not contain 16 or more digits, in a row or split by dashes, dots or underscores (it could be a NIK, and the counter's id is kept with every reservation and in the ledger)",
                "tidak boleh berisi 16 angka atau lebih, berurutan atau dipisah tanda hubung, titik atau garis bawah (bisa jadi NIK, dan ID loket disimpan bersama setiap pemesanan dan di buku besar)",
            );
        }
    }

    /// An id that is published (metrics labels, logs, the public notice) must not look like a
    /// NIK: no 16 or more digits, in a row or split by dashes, dots or underscores (which an id
    /// may contain).
    pub fn not_nik_shaped(&mut self, field: &str, value: &str) {
        if crate::domain::nik::has_nik_stretch_any_separator(value) {
            self.fail(
                field,
                "must not contain 16 or more digits, in a row or split by dashes, dots or underscores (it could be a NIK, and this id is published in metrics and logs)",
                "tidak boleh berisi 16 angka atau lebih, berurutan atau dipisah tanda hubung, titik atau garis bawah (bisa jadi NIK, dan ID ini tampil di metrik dan log)",
            );
        }
    }

    /// An optional free-text note kept in the ledger ([`Checker::ledger_text`], at most
    /// [`MAX_NOTE_CHARS`]).
    pub fn ledger_note(&mut self, value: &str, today: NaiveDate) {
        self.ledger_text("note", value, MAX_NOTE_CHARS, true, today);
    }

    /// A document reference kept in the ledger ([`Checker::ledger_text`], at most
    /// [`MAX_REFERENCE_CHARS`]).
    pub fn ledger_reference(&mut self, field: &str, value: &str, optional: bool, today: NaiveDate) {
        self.ledger_text(field, value, MAX_REFERENCE_CHARS, optional, today);
        // A reference identifies a delivery: "SJ-001 " would be another one than "SJ-001", and
        // the same handover booked twice; so would "SJ-001" with a soft hyphen or a joiner in
        // it (the other invisible characters are refused with every text).
        if value
            .chars()
            .any(|c| matches!(c, '\u{00AD}' | '\u{200C}' | '\u{200D}'))
        {
            self.fail(
                field,
                "must not contain a soft hyphen or an invisible joiner: a reference names one document, write it as printed",
                "tidak boleh berisi tanda hubung lunak atau penyambung tak terlihat: nomor rujukan menunjuk satu dokumen, tulis persis seperti tercetak",
            );
        } else if value.trim() != value {
            self.fail(
                field,
                "must not begin or end with a space: a reference names one document, write it as printed",
                "tidak boleh diawali atau diakhiri spasi: nomor rujukan menunjuk satu dokumen, tulis persis seperti tercetak",
            );
        }
    }

    /// A note or reference kept in the ledger (for good: the hash chain cannot be rewritten) and
    /// shown to agencies: 0..=max characters, and no NIK in it
    /// ([`crate::domain::nik::holds_a_nik_any_separator`]: 16 digits that make a valid NIK,
    /// whatever separates them). Required unless `optional`.
    pub fn ledger_text(
        &mut self,
        field: &str,
        value: &str,
        max: usize,
        optional: bool,
        today: NaiveDate,
    ) {
        if optional {
            self.optional_text(field, value, max);
        } else {
            self.text(field, value, max);
        }
        if crate::domain::nik::holds_a_nik_any_separator(value, today) {
            self.fail(
                field,
                "must not contain a NIK (the ledger keeps this text for good); write the masked NIK or the reservation id instead",
                "tidak boleh berisi NIK (buku besar menyimpan teks ini selamanya); tulis NIK yang disamarkan atau ID pemesanan",
            );
        }
    }

    /// A 4-digit Kemendagri regency/city code with a known province.
    pub fn office_id(&mut self, field: &str, value: &str) {
        if value.len() != 4 || !value.bytes().all(|b| b.is_ascii_digit()) {
            self.fail(
                field,
                "must be a 4-digit Kemendagri regency/city code, e.g. \"3275\"",
                "harus berupa kode kabupaten/kota Kemendagri 4 angka, misalnya \"3275\"",
            );
        } else if !is_known_province(&value[..2]) {
            self.fail(
                field,
                format!("province code {} is not a known province", &value[..2]),
                format!("kode provinsi {} tidak dikenal", &value[..2]),
            );
        }
    }

    /// The usual pair `office_id` + `service_point_id` naming one service point.
    pub fn service_point_ref(&mut self, office_id: &str, service_point_id: &str) {
        self.office_id("office_id", office_id);
        self.id("service_point_id", service_point_id, MAX_ID_CHARS);
    }

    /// A NIK; None when invalid (recorded).
    pub fn nik(&mut self, field: &str, value: &str, today: NaiveDate) -> Option<Nik> {
        match Nik::parse(value, today) {
            Ok(nik) => Some(nik),
            Err(err) => {
                self.fail(field, nik_error_text(&err), err.indonesian());
                None
            }
        }
    }

    /// An enum field: a known number, and not UNSPECIFIED unless allowed.
    pub fn enumeration<E: TryFrom<i32>>(
        &mut self,
        field: &str,
        value: i32,
        allow_unspecified: bool,
    ) {
        if E::try_from(value).is_err() {
            self.fail(
                field,
                format!("unknown value {value}"),
                format!("nilai {value} tidak dikenal"),
            );
        } else if value == 0 && !allow_unspecified {
            self.fail(
                field,
                "is required (must not be UNSPECIFIED)",
                "wajib diisi (tidak boleh UNSPECIFIED)",
            );
        }
    }

    /// A number within min..=max.
    pub fn range(&mut self, field: &str, value: u32, min: u32, max: u32) {
        if value < min || value > max {
            self.fail(
                field,
                format!("must be between {min} and {max}, got {value}"),
                format!("harus antara {min} dan {max}, diisi {value}"),
            );
        }
    }

    /// An optional local date "YYYY-MM-DD".
    pub fn optional_date(&mut self, field: &str, value: &str) -> Option<NaiveDate> {
        if value.is_empty() {
            return None;
        }
        match parse_local_date(value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.fail(field, e.to_string(), e.indonesian());
                None
            }
        }
    }

    /// A required local date "YYYY-MM-DD".
    pub fn required_date(&mut self, field: &str, value: &str) -> Option<NaiveDate> {
        if value.is_empty() {
            self.fail(
                field,
                "is required (a local date, YYYY-MM-DD)",
                "wajib diisi (tanggal setempat, TTTT-BB-HH)",
            );
            return None;
        }
        self.optional_date(field, value)
    }

    /// An optional local time "HH:MM".
    pub fn optional_time(&mut self, field: &str, value: &str) {
        if !value.is_empty()
            && let Err(e) = parse_local_time(value)
        {
            self.fail(field, e.to_string(), e.indonesian());
        }
    }

    /// An office time zone.
    pub fn zone(&mut self, field: &str, value: &str) {
        if let Err(e) = OfficeZone::parse(value) {
            self.fail(field, e.to_string(), e.indonesian());
        }
    }
}

/// What is wrong with a NIK, never repeating its digits.
pub fn nik_error_text(err: &NikError) -> String {
    err.to_string()
}

/// Characters that change nothing a reader sees (Unicode format characters and the line and
/// paragraph separators): "SJ-001" with a zero-width space would be a second delivery
/// reference that looks like the first, and direction overrides reorder what the ledger shows.
/// Not the soft hyphen and the joiners, which text pasted from a word processor or emoji carry
/// in notes and names (references refuse them: [`Checker::ledger_reference`]).
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Checker {
        /// One of the longest violations there is (a NIK-shaped id), on `field`.
        fn counter_id_field(&mut self, field: &str) {
            self.not_nik_shaped(field, "3275-0101-9000-0001");
        }
    }

    /// One call of a check with bad input.
    type Check<'a> = Box<dyn FnOnce(&mut Checker) + 'a>;

    fn violations(check: impl FnOnce(&mut Checker)) -> Vec<FieldViolation> {
        let mut c = Checker::new();
        check(&mut c);
        match c.finish() {
            Err(EngineError::Invalid(violations)) => violations,
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn every_check_says_why_in_bahasa_indonesia_as_well_as_in_english() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).expect("a date");
        let long = "x".repeat(300);
        let checks: Vec<Check> = vec![
            Box::new(|c| c.text("name", "", 10)),
            Box::new(|c| c.text("name", &long, 10)),
            Box::new(|c| c.text("name", "a\u{7}b", 10)),
            Box::new(|c| c.text("name", "a\u{200B}b", 10)),
            Box::new(|c| c.trimmed("name", "   ")),
            Box::new(|c| c.trimmed("name", " a")),
            Box::new(|c| c.id("service_point_id", "", 10)),
            Box::new(|c| c.id("service_point_id", &long, 10)),
            Box::new(|c| c.id("service_point_id", "a b", 10)),
            Box::new(|c| c.counter_id("3275-0101-9000-0001")),
            Box::new(|c| c.not_nik_shaped("name", "3275010190000001")),
            Box::new(|c| c.ledger_reference("reference", "SJ\u{00AD}1", false, today)),
            Box::new(|c| c.ledger_reference("reference", "SJ-1 ", false, today)),
            Box::new(|c| c.ledger_note("3275 0101 0190 0001", today)),
            Box::new(|c| c.office_id("office_id", "32")),
            Box::new(|c| c.office_id("office_id", "9901")),
            Box::new(|c| {
                c.nik("nik", "32750101019", today);
            }),
            Box::new(|c| c.range("quantity", 0, 1, 10)),
            Box::new(|c| {
                c.required_date("from_date", "");
            }),
            Box::new(|c| {
                c.optional_date("from_date", "2026-02-30");
            }),
            Box::new(|c| c.optional_time("release_time", "25:00")),
            Box::new(|c| c.zone("time_zone", "Europe/Paris")),
            Box::new(|c| {
                c.listed("reasons", &[1; 20], 16);
            }),
            Box::new(|c| c.enumeration::<blangko_proto::v1::Reason>("reason", 999, false)),
            Box::new(|c| c.enumeration::<blangko_proto::v1::Reason>("reason", 0, false)),
        ];
        for check in checks {
            for v in violations(check) {
                assert!(!v.indonesian.is_empty(), "{v:?}");
                assert_ne!(v.indonesian, v.description, "{v:?}");
            }
        }
        // The 33rd and later are counted in the last one kept, in both languages.
        let many = violations(|c| {
            for i in 0..40 {
                c.range(&format!("f{i}"), 0, 1, 2);
            }
        });
        assert_eq!(many.len(), MAX_VIOLATIONS);
        let last = &many[MAX_VIOLATIONS - 1];
        assert!(
            last.description.ends_with(
                "(and 8 more violations, not listed: at most 32 are, of at most 3072 bytes)"
            ),
            "{last:?}"
        );
        assert!(
            last.indonesian.ends_with(
                "(dan 8 kesalahan lain tidak ditampilkan: paling banyak 32 ditampilkan, sepanjang paling banyak 3072 bita)"
            ),
            "{last:?}"
        );
    }

    #[test]
    fn long_violations_are_listed_up_to_a_byte_bound_and_the_rest_counted() {
        // 40 of the longest texts: far fewer than 32 fit in the bound.
        let many = violations(|c| {
            for i in 0..40 {
                c.counter_id_field(&format!("request_ids[{i}]"));
            }
        });
        let bytes: usize = many
            .iter()
            .map(|v| v.field.len() + v.description.len() + v.indonesian.len())
            .sum();
        assert!(bytes <= MAX_VIOLATION_BYTES, "{bytes} bytes");
        assert!(many.len() < 20, "{} listed", many.len());
        // The first ones, in order, and the last says how many were left out.
        assert_eq!(many[0].field, "request_ids[0]");
        assert_eq!(
            many[many.len() - 1].field,
            format!("request_ids[{}]", many.len() - 1)
        );
        let left_out = 40 - many.len();
        assert!(
            many[many.len() - 1]
                .description
                .contains(&format!("(and {left_out} more violations, not listed")),
            "{:?}",
            many.last()
        );
        // A short one after a long one that did not fit is not listed either.
        let mut c = Checker::new();
        for i in 0..40 {
            c.counter_id_field(&format!("request_ids[{i}]"));
        }
        c.fail("z", "short", "pendek");
        match c.finish() {
            Err(EngineError::Invalid(v)) => {
                assert!(v.iter().all(|v| v.field != "z"));
                assert!(
                    v[v.len() - 1]
                        .description
                        .contains(&format!("(and {} more", left_out + 1))
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
