//! A day's queue from a CSV file: parsing (bad rows named by line number, never skipped
//! silently), the forecast, reserving in queue order, and the results file that doubles as the
//! journal a re-run resumes from.
//!
//! Re-running is always safe: each ticket's request id is derived from office, service point,
//! counter, local date and ticket ([`crate::connect::queue_request_id`]), so the server answers a
//! repeated ticket with its first answer and never reserves twice.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blangko_domain::nik::{has_nik_stretch_any_separator, mask_nik_stretches};
use blangko_proto::v1::{
    IkdStatus, QuotaSnapshot, Reason, ReservationState, ReserveResponse, reserve_response::Outcome,
};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::commands::reserve::{answer_line, do_not_print, lapsed};
use crate::connect::{queue_request_id, queue_retry_request_id};
use crate::error::{EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, Failure};
use crate::forecast::{expected_served, ticket_ranges, total_with_mine};
use crate::nik;
use crate::output::{Lang, Out, referral_lines, snapshot_line};
use crate::terminal::{MAX_LISTED_REQUEST_IDS, Terminal};
use crate::vocab;

/// The most rows a queue file may have: far above a day at any counter, low enough to keep
/// everything in memory.
pub const MAX_ROWS: usize = 100_000;

/// The longest ticket number accepted.
const MAX_TICKET_LEN: usize = 32;

/// How many times one ticket reserves again after its earlier reservations were cancelled or ran
/// out (see `Run::reserve_row`); past that the row is recorded as not to print.
const MAX_RESERVE_AGAIN: usize = 3;

/// How often the queue report is refreshed while reserving (reports expire after 120 s).
const REPORT_REFRESH: Duration = Duration::from_secs(30);

/// One applicant of the queue file.
#[derive(Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// The line in the file (1-based; the header is line 1).
    pub line: u64,
    /// The queue ticket, e.g. `A017` or `17`.
    pub ticket: String,
    /// The NIK, normalised (16 digits). Never printed: see [`nik::mask`].
    pub nik: String,
    /// Why a card is needed.
    pub reason: Reason,
    /// The officer's IKD check, if the file has an `ikd` column.
    pub ikd: IkdStatus,
}

impl std::fmt::Debug for QueueRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRow")
            .field("line", &self.line)
            .field("ticket", &self.ticket)
            .field("nik", &nik::mask(&self.nik))
            .field("reason", &self.reason)
            .field("ikd", &self.ikd)
            .finish()
    }
}

/// A row that cannot be used, with its line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// The line in the file.
    pub line: u64,
    /// The ticket, if it could be read.
    pub ticket: String,
    /// The offending column.
    pub field: String,
    /// Why, in Bahasa Indonesia.
    pub problem_id: String,
    /// Why, in English.
    pub problem_en: String,
}

impl BadRow {
    /// The problem in `lang`.
    pub fn problem(&self, lang: Lang) -> &str {
        match lang {
            Lang::Id => &self.problem_id,
            Lang::En => &self.problem_en,
        }
    }
}

/// A parsed queue file.
#[derive(Debug, Clone, Default)]
pub struct ParsedQueue {
    /// The usable rows, in queue order.
    pub rows: Vec<QueueRow>,
    /// The unusable ones.
    pub bad: Vec<BadRow>,
}

#[derive(Debug, Clone, Copy)]
struct Columns {
    ticket: usize,
    nik: usize,
    reason: usize,
    ikd: Option<usize>,
}

fn column_of(header: &str) -> Option<&'static str> {
    let name: String = header
        .trim()
        .trim_start_matches('\u{feff}')
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .collect();
    match name.as_str() {
        "ticket" | "ticket_number" | "tiket" | "no_tiket" | "nomor_tiket" | "no_antrean"
        | "nomor_antrean" | "antrean" | "no_antrian" | "nomor_antrian" | "antrian" | "queue"
        | "queue_number" => Some("ticket"),
        // A generic number column: the ticket only when no column names the ticket itself (an
        // export's running row number "No" often comes first, before "Nomor Antrian").
        "no" | "nomor" | "number" => Some("number"),
        "nik" => Some("nik"),
        "reason" | "alasan" => Some("reason"),
        "ikd" | "ikd_status" | "status_ikd" => Some("ikd"),
        _ => None,
    }
}

fn columns_from_header(header: &csv::StringRecord) -> Result<Columns, Failure> {
    let mut found: HashMap<&'static str, usize> = HashMap::new();
    for (i, cell) in header.iter().enumerate() {
        if let Some(name) = column_of(cell) {
            found.entry(name).or_insert(i);
        }
    }
    if found.is_empty() {
        // No known name: the first line may be an applicant rather than unknown column names
        // (a NIK, even one mistyped, is a long run of digits; a reason or IKD word is data).
        let looks_like_data = header.iter().any(|cell| {
            let cell = cell.trim();
            let digits = cell.chars().filter(char::is_ascii_digit).count();
            let numeric = cell.chars().all(|c| c.is_ascii_digit());
            digits >= 10
                || nik::normalize(cell).len() == nik::NIK_LEN
                || (!numeric && vocab::parse_reason(cell).is_some())
                // Not the prompt's single letters (A, B, ...), which could name columns.
                || (cell.len() >= 4 && vocab::parse_ikd(cell).is_some())
        });
        if looks_like_data {
            return Err(Failure::bad_field(
                "line 1",
                "the first line looks like an applicant, not a header row (ticket,nik,reason)",
                "baris 1 berisi data pemohon, bukan judul kolom (tiket,nik,alasan)",
            ));
        }
        // Unknown names: the documented order.
        return Ok(Columns {
            ticket: 0,
            nik: 1,
            reason: 2,
            ikd: (header.len() > 3).then_some(3),
        });
    }
    let need = |name: &str| {
        found.get(name).copied().ok_or_else(|| {
            Failure::bad_field(
                "header",
                format!("the header row has no {name} column"),
                format!("baris judul tidak punya kolom {name}"),
            )
        })
    };
    let ticket = match found.get("ticket") {
        Some(&i) => i,
        None => need("number").map_err(|_| {
            Failure::bad_field(
                "header",
                "the header row has no ticket column",
                "baris judul tidak punya kolom tiket (nomor antrean)",
            )
        })?,
    };
    Ok(Columns {
        ticket,
        nik: need("nik")?,
        reason: need("reason")?,
        ikd: found.get("ikd").copied(),
    })
}

fn bad(
    line: u64,
    ticket: &str,
    field: &str,
    id: impl Into<String>,
    en: impl Into<String>,
) -> BadRow {
    BadRow {
        line,
        ticket: ticket.to_string(),
        field: field.to_string(),
        problem_id: id.into(),
        problem_en: en.into(),
    }
}

fn ticket_ok(ticket: &str) -> bool {
    !ticket.is_empty()
        && ticket.len() <= MAX_TICKET_LEN
        && ticket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// The largest queue file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One line of CSV as fields (quotes handled; a quoted field cannot span lines in a queue file).
fn split_csv_line(line: &str, delimiter: u8) -> Result<csv::StringRecord, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(_) => {}
        Err(error) => return Err(error.to_string()),
    }
    // A second record means a quote opened a field that the line did not close.
    let mut extra = csv::StringRecord::new();
    if matches!(reader.read_record(&mut extra), Ok(true)) {
        return Err("unbalanced quotes".to_string());
    }
    Ok(record)
}

/// Parses a queue: a header row, then one applicant per line (ticket, NIK, reason, optional IKD
/// status). `today` is the office-local date (for the birth-date check of NIKs). Line numbers
/// count every line of the file, blank ones included, as an editor shows them.
pub fn parse_queue<R: Read>(input: R, today: NaiveDate) -> Result<ParsedQueue, Failure> {
    let mut bytes = Vec::new();
    input
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            Failure::local(
                format!("berkas antrean tidak terbaca: {e}"),
                format!("cannot read queue file: {e}"),
            )
        })?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(Failure::bad_field(
            "file",
            format!("larger than {MAX_FILE_BYTES} bytes"),
            format!("lebih dari {MAX_FILE_BYTES} bita"),
        ));
    }
    let mut lines = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, raw)| (u64::try_from(i).unwrap_or(u64::MAX).saturating_add(1), raw));
    let mut parsed = ParsedQueue::default();
    // The header: the first line that is not blank.
    let (columns, delimiter) = loop {
        let Some((line, raw)) = lines.next() else {
            return Ok(parsed);
        };
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        // Spreadsheets in an Indonesian locale export with `;`: the header tells.
        let delimiter = [b',', b';', b'\t']
            .into_iter()
            .max_by_key(|d| text.bytes().filter(|b| b == d).count())
            .unwrap_or(b',');
        let header = split_csv_line(text, delimiter).map_err(|e| {
            Failure::bad_field(
                "header",
                format!("line {line}: {e}"),
                format!("baris {line}: {e}"),
            )
        })?;
        break (columns_from_header(&header)?, delimiter);
    };
    let mut tickets: HashMap<String, u64> = HashMap::new();
    let mut niks: HashMap<String, u64> = HashMap::new();
    for (line, raw) in lines {
        if parsed.rows.len() + parsed.bad.len() >= MAX_ROWS {
            return Err(Failure::bad_field(
                "file",
                format!("more than {MAX_ROWS} rows"),
                format!("lebih dari {MAX_ROWS} baris"),
            ));
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            parsed.bad.push(bad(
                line,
                "",
                "row",
                "baris bukan teks UTF-8 (simpan file sebagai CSV UTF-8)",
                "the line is not UTF-8 text (save the file as CSV UTF-8)",
            ));
            continue;
        };
        let text = text.trim();
        if text.is_empty()
            || text
                .chars()
                .all(|c| c == ',' || c == ';' || c.is_whitespace())
        {
            continue;
        }
        let record = match split_csv_line(text, delimiter) {
            Ok(record) => record,
            Err(error) => {
                parsed.bad.push(bad(
                    line,
                    "",
                    "row",
                    format!("baris tidak terbaca: {error}"),
                    format!("unreadable row: {error}"),
                ));
                continue;
            }
        };
        let cell = |i: usize| record.get(i).unwrap_or("");
        let ticket = cell(columns.ticket).to_string();
        if has_nik_stretch_any_separator(&ticket) {
            // A NIK in the ticket column (columns in another order), typed with or without
            // separators (underscores too): it must not reach the screen, the results file or a
            // request id.
            parsed.bad.push(bad(
                line,
                &mask_nik_stretches(&ticket),
                "ticket",
                "nomor tiket berisi 16 angka atau lebih (mungkin NIK): periksa urutan kolom",
                "the ticket holds 16 or more digits (it could be a NIK): check the column order",
            ));
            continue;
        }
        if !ticket_ok(&ticket) {
            parsed.bad.push(bad(
                line,
                &ticket,
                "ticket",
                format!("nomor tiket harus 1..={MAX_TICKET_LEN} huruf/angka"),
                format!("the ticket must be 1..={MAX_TICKET_LEN} letters or digits"),
            ));
            continue;
        }
        if let Some(first) = tickets.get(&ticket) {
            parsed.bad.push(bad(
                line,
                &ticket,
                "ticket",
                format!("tiket {ticket} sudah ada di baris {first}"),
                format!("ticket {ticket} already on line {first}"),
            ));
            continue;
        }
        let nik = match nik::validate(cell(columns.nik), today) {
            Ok(nik) => nik,
            Err(error) => {
                parsed.bad.push(bad(
                    line,
                    &ticket,
                    "nik",
                    error.indonesian(),
                    error.to_string(),
                ));
                continue;
            }
        };
        if let Some(first) = niks.get(&nik) {
            parsed.bad.push(bad(
                line,
                &ticket,
                "nik",
                format!("NIK yang sama sudah ada di baris {first}"),
                format!("the same NIK is already on line {first}"),
            ));
            continue;
        }
        let Some(reason) = vocab::parse_reason(cell(columns.reason)) else {
            let given = mask_nik_stretches(cell(columns.reason));
            parsed.bad.push(bad(
                line,
                &ticket,
                "reason",
                format!("alasan {given:?} tidak dikenal"),
                format!("unknown reason {given:?}"),
            ));
            continue;
        };
        let ikd_text = columns.ikd.map(cell).unwrap_or("");
        let Some(ikd) = vocab::parse_ikd(ikd_text) else {
            let ikd_text = mask_nik_stretches(ikd_text);
            parsed.bad.push(bad(
                line,
                &ticket,
                "ikd",
                format!("status IKD {ikd_text:?} tidak dikenal"),
                format!("unknown IKD status {ikd_text:?}"),
            ));
            continue;
        };
        tickets.insert(ticket.clone(), line);
        niks.insert(nik.clone(), line);
        parsed.rows.push(QueueRow {
            line,
            ticket,
            nik,
            reason,
            ikd,
        });
    }
    Ok(parsed)
}

/// What happened to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowOutcome {
    /// A blank is held for the applicant.
    Reserved,
    /// Told at once to activate IKD: beyond this counter's forecast cut-off.
    IkdForecast,
    /// The server referred the applicant to IKD.
    IkdReferral,
    /// The answer is the applicant's earlier reservation, already printed today or held for
    /// another counter: no card is printed at this counter (`detail` says which).
    DoNotPrint,
    /// The applicant holds (or was printed) a blank today at another service point or office
    /// (ALREADY_RESERVED_ELSEWHERE): no card is printed here now. Not final: that hold may be
    /// cancelled or run out, so a re-run asks again.
    ServedElsewhere,
    /// The row (or the server) rejected the input.
    Invalid,
    /// Another error; a re-run tries again.
    Error,
}

impl RowOutcome {
    /// Whether a re-run leaves the row alone.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RowOutcome::Reserved
                | RowOutcome::IkdForecast
                | RowOutcome::IkdReferral
                | RowOutcome::DoNotPrint
        )
    }
}

/// One line of the results file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// The office-local day.
    pub local_date: String,
    /// The line of the queue file.
    pub line: u64,
    /// The ticket.
    pub ticket: String,
    /// The NIK, masked.
    pub masked_nik: String,
    /// The reason, API name.
    pub reason: String,
    /// What happened.
    pub outcome: RowOutcome,
    /// The reservation, when reserved.
    #[serde(default)]
    pub reservation_id: String,
    /// The hold's expiry (RFC 3339, office time), when reserved.
    #[serde(default)]
    pub expires_at: String,
    /// True when the server replayed an earlier answer (a re-run).
    #[serde(default)]
    pub replayed: bool,
    /// The referral cause, when referred.
    #[serde(default)]
    pub cause: String,
    /// More about it (the problem of an invalid row, an error message).
    #[serde(default)]
    pub detail: String,
    /// The request id sent for the row.
    #[serde(default)]
    pub request_id: String,
}

/// The results file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultsFormat {
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl ResultsFormat {
    /// From the file name: `.json` and `.jsonl` give JSON lines.
    pub fn of(path: &Path) -> ResultsFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") || ext.eq_ignore_ascii_case("jsonl") => {
                ResultsFormat::JsonLines
            }
            _ => ResultsFormat::Csv,
        }
    }
}

/// `antrean.csv` → `antrean.results.csv`, next to it.
pub fn default_results_path(queue_file: &Path) -> PathBuf {
    let stem = queue_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "queue".to_string());
    queue_file.with_file_name(format!("{stem}.results.csv"))
}

/// The results file, appended to row by row and synced, so a crash loses at most the row in flight.
pub struct ResultsFile {
    path: PathBuf,
    format: ResultsFormat,
    file: File,
    has_header: bool,
}

/// What went wrong with the queue or results file (`path`), in both languages: the system's
/// own text in English, its common cases said in Bahasa Indonesia.
fn local_failure<E>(path: &Path, what: FileStep, error: E) -> Failure
where
    E: std::error::Error + 'static,
{
    let path = path.display();
    let (indonesian, english) = match what {
        FileStep::ReadQueue => (
            format!("berkas antrean {path} tidak terbaca"),
            format!("cannot read queue file {path}"),
        ),
        FileStep::OpenResults => (
            format!("berkas hasil {path} tidak bisa dibuka"),
            format!("cannot open results file {path}"),
        ),
        FileStep::ReadResults => (
            format!("berkas hasil {path} tidak terbaca"),
            format!("cannot read results file {path}"),
        ),
        FileStep::WriteResults => (
            format!("berkas hasil {path} tidak bisa ditulis"),
            format!("cannot write results file {path}"),
        ),
    };
    let why = (&error as &(dyn std::error::Error + 'static))
        .downcast_ref::<std::io::Error>()
        .and_then(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Some("tidak ditemukan"),
            std::io::ErrorKind::PermissionDenied => Some("tidak ada izin"),
            std::io::ErrorKind::StorageFull => Some("disk penuh"),
            std::io::ErrorKind::ReadOnlyFilesystem => Some("disk hanya bisa dibaca"),
            _ => None,
        })
        .map_or_else(|| error.to_string(), str::to_string);
    Failure::local(
        format!("{indonesian}: {why}"),
        format!("{english}: {error}"),
    )
}

/// The records of a results file's whole lines, or the first line that is not one (its number
/// and why). Skipped: a header line met again (two runs that started the file at once), and a
/// record cut short (fewer fields, or JSON that ends early): a crash tore it, and an older
/// version of this program ended it with a newline instead of cutting it off.
fn parse_results(text: &str, format: ResultsFormat) -> Result<Vec<ResultRecord>, (u64, String)> {
    let mut records = Vec::new();
    match format {
        ResultsFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(text.as_bytes());
            let headers = reader.headers().map_err(|e| (1, e.to_string()))?.clone();
            for row in reader.records() {
                let row = row.map_err(|e| {
                    let line = e.position().map_or(0, csv::Position::line);
                    (line, e.to_string())
                })?;
                if row.iter().eq(headers.iter()) || row.len() < headers.len() {
                    continue;
                }
                let line = row.position().map_or(0, csv::Position::line);
                records.push(
                    row.deserialize::<ResultRecord>(Some(&headers))
                        .map_err(|e| (line, e.to_string()))?,
                );
            }
        }
        ResultsFormat::JsonLines => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<ResultRecord>(line) {
                    Ok(record) => records.push(record),
                    Err(e) if e.is_eof() => {}
                    Err(e) => return Err((i as u64 + 1, e.to_string())),
                }
            }
        }
    }
    Ok(records)
}

/// A results file with a line that is no result: changed by hand or by a spreadsheet (which
/// rewrites `false` as `FALSE`, dates and separators). Skipping it would forget who was served
/// or told already, so the run stops and says what to do.
fn unreadable_results(path: &Path, line: u64, why: &str) -> Failure {
    let path = path.display();
    Failure::local(
        format!(
            "berkas hasil {path} baris {line} bukan hasil antrean (diubah, mis. disimpan ulang oleh spreadsheet?): \
             kembalikan berkas aslinya. Bila tidak ada, jalankan dengan --results berkas baru: perkiraan lalu tidak tahu siapa yang sudah dilayani \
             (tidak ada yang dipesan dua kali), jadi periksa dulu pemohon yang disuruh aktivasi IKD"
        ),
        format!(
            "results file {path} line {line} is not a queue result ({why}; changed, e.g. saved again by a spreadsheet?): \
             restore the original file. If there is none, run with a new --results file: the forecast then does not know who was already served \
             (nobody is reserved twice), so check the applicants it tells to activate IKD"
        ),
    )
}

/// What the counter was doing with a file when it failed.
#[derive(Debug, Clone, Copy)]
enum FileStep {
    ReadQueue,
    OpenResults,
    ReadResults,
    WriteResults,
}

impl ResultsFile {
    /// Opens (or creates) the results file and reads the records already in it.
    pub fn open(path: &Path) -> Result<(ResultsFile, Vec<ResultRecord>), Failure> {
        let format = ResultsFormat::of(path);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| local_failure(path, FileStep::OpenResults, e))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| local_failure(path, FileStep::ReadResults, e))?;
        // Every record is one write that ends with its newline: text after the last newline is
        // half a record a crash left, unless it reads as a whole record (a file saved by an
        // editor that drops the last newline), which is kept and ended. Half a record is cut
        // off, not kept: a CSV field torn inside its quotes would otherwise swallow every
        // record appended after it.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        let mut records = parse_results(&text[..whole], format)
            .map_err(|(line, why)| unreadable_results(path, line, &why))?;
        if whole < text.len() {
            let mut ended = text.clone();
            ended.push('\n');
            match parse_results(&ended, format) {
                Ok(more) if more.len() == records.len() + 1 => {
                    file.write_all(b"\n")
                        .map_err(|e| local_failure(path, FileStep::WriteResults, e))?;
                    text = ended;
                    records = more;
                }
                _ => {
                    file.set_len(whole as u64)
                        .map_err(|e| local_failure(path, FileStep::WriteResults, e))?;
                    text.truncate(whole);
                }
            }
        }
        let _ = file.seek(SeekFrom::End(0));
        let has_header = format == ResultsFormat::Csv && !text.trim().is_empty();
        Ok((
            ResultsFile {
                path: path.to_path_buf(),
                format,
                file,
                has_header,
            },
            records,
        ))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it to disk.
    pub fn append(&mut self, record: &ResultRecord) -> Result<(), Failure> {
        let bytes = match self.format {
            ResultsFormat::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .has_headers(!self.has_header)
                    .from_writer(Vec::new());
                writer
                    .serialize(record)
                    .map_err(|e| local_failure(&self.path, FileStep::WriteResults, e))?;
                self.has_header = true;
                writer
                    .into_inner()
                    .map_err(|e| local_failure(&self.path, FileStep::WriteResults, e))?
            }
            ResultsFormat::JsonLines => {
                let mut line = serde_json::to_vec(record)
                    .map_err(|e| local_failure(&self.path, FileStep::WriteResults, e))?;
                line.push(b'\n');
                line
            }
        };
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| local_failure(&self.path, FileStep::WriteResults, e))
    }
}

/// A progress indicator on stderr, drawn only on a terminal.
struct Progress {
    total: usize,
    enabled: bool,
}

impl Progress {
    fn new(total: usize, out: &Out) -> Progress {
        Progress {
            total,
            enabled: !out.json && std::io::stderr().is_terminal() && total > 0,
        }
    }

    fn show(&self, done: usize, remaining_quota: u32, lang: Lang) {
        if !self.enabled {
            return;
        }
        const WIDTH: usize = 30;
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let bar = format!(
            "{}{}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled.min(WIDTH))
        );
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r[{bar}] {done}/{} {} {remaining_quota}   ",
            self.total,
            lang.t("· sisa kuota", "· quota left")
        );
        let _ = stderr.flush();
    }

    /// Wipes the bar so that a result line can take its place.
    fn clear(&self) {
        if self.enabled {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

/// Settings of one queue run.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// The queue file.
    pub file: PathBuf,
    /// The results file (default: next to the queue file).
    pub results: Option<PathBuf>,
    /// Tell the applicants beyond the cut-off, reserve nobody.
    pub forecast_only: bool,
    /// A pause between two applicants (0 in normal use; tests use it to stop a run half-way).
    pub pace: Duration,
}

/// Counts for the summary.
#[derive(Debug, Default)]
struct Tally {
    reserved: u32,
    replayed: u32,
    told_ikd: u32,
    referred: u32,
    /// Answered with their earlier reservation, printed or held for another counter.
    do_not_print: u32,
    invalid: u32,
    errors: u32,
    earlier: u32,
}

/// One queue run.
struct Run<'a> {
    term: &'a Terminal,
    out: Out,
    results: ResultsFile,
    local_date: String,
    office: String,
    service_point: String,
    /// This counter: two counters of a service point may number their tickets alike.
    counter: String,
    tally: Tally,
    /// The waiting count last reported to the server.
    last_reported: u32,
    last_report_at: Instant,
}

impl Run<'_> {
    fn record(&mut self, row: &QueueRow, outcome: RowOutcome) -> ResultRecord {
        ResultRecord {
            local_date: self.local_date.clone(),
            line: row.line,
            ticket: row.ticket.clone(),
            masked_nik: nik::mask(&row.nik),
            reason: vocab::reason_code(row.reason).to_string(),
            outcome,
            reservation_id: String::new(),
            expires_at: String::new(),
            replayed: false,
            cause: String::new(),
            detail: String::new(),
            request_id: String::new(),
        }
    }

    fn emit_json(&self, record: &ResultRecord, extra: serde_json::Value) {
        let mut value = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
        if let (Some(map), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
            map.extend(extra);
        }
        self.out.json(&value);
    }

    /// Reports the waiting count and returns how many of them the server expects to serve.
    async fn report(&mut self, waiting: u32) -> Result<(u32, Option<QuotaSnapshot>), Failure> {
        let answer = self.term.report_queue(waiting).await?;
        self.last_reported = waiting;
        self.last_report_at = Instant::now();
        Ok((answer.expected_served.min(waiting), answer.quota))
    }

    /// Tells the given rows at once to activate IKD, and records it: told first, so that a
    /// run cut while it records (a full disk, a kill) never leaves a row recorded as told that
    /// nobody was told of; a row told but not recorded is told again by the next run.
    fn tell_ikd(&mut self, rows: &[QueueRow]) -> Result<(), Failure> {
        if rows.is_empty() {
            return Ok(());
        }
        let tickets: Vec<&str> = rows.iter().map(|r| r.ticket.as_str()).collect();
        let lang = self.out.lang;
        if !self.out.json {
            self.out.line(&match lang {
                Lang::Id => format!(
                    "AKTIVASI IKD SEKARANG: tiket {} ({} orang): kuota hari ini tidak cukup untuk mereka; \
                     silakan aktivasi IKD di loket, tidak perlu menunggu.",
                    ticket_ranges(&tickets),
                    rows.len()
                ),
                Lang::En => format!(
                    "ACTIVATE IKD NOW: tickets {} ({} people): today's quota will not reach them; \
                     please activate IKD at the counter instead of waiting.",
                    ticket_ranges(&tickets),
                    rows.len()
                ),
            });
        }
        for row in rows {
            let mut record = self.record(row, RowOutcome::IkdForecast);
            record.cause = "FORECAST".to_string();
            record.detail = "beyond this counter's share of today's remaining quota".to_string();
            if self.out.json {
                self.emit_json(&record, json!({"event": "ikd_forecast"}));
            }
            self.results.append(&record)?;
            self.tally.told_ikd += 1;
        }
        Ok(())
    }

    fn forecast_line(&self, waiting: u32, served: u32, snapshot: Option<&QuotaSnapshot>) {
        let (remaining, sp_waiting) = snapshot.map(|q| (q.remaining, q.waiting)).unwrap_or((0, 0));
        if self.out.json {
            self.out.json(&json!({
                "event": "forecast",
                "local_date": self.local_date,
                "waiting": waiting,
                "service_point_waiting": sp_waiting,
                "remaining": remaining,
                "expected_served": served,
                "expected_referred": waiting - served,
            }));
            return;
        }
        self.out.line(&match self.out.lang {
            Lang::Id => format!(
                "Perkiraan: {waiting} menunggu di loket ini ({sp_waiting} di tempat layanan), sisa kuota {remaining} \
                 → {served} dilayani, {} dirujuk ke IKD",
                waiting - served
            ),
            Lang::En => format!(
                "Forecast: {waiting} waiting at this counter ({sp_waiting} at the service point), {remaining} quota left \
                 → {served} served, {} referred to IKD",
                waiting - served
            ),
        });
    }

    /// The request id of a row's first Reserve.
    fn request_id_of(&self, row: &QueueRow) -> String {
        queue_request_id(
            &self.office,
            &self.service_point,
            &self.counter,
            &self.local_date,
            &row.ticket,
        )
    }

    /// Reserves one row and records the answer. `Err` only for failures that stop the run.
    async fn reserve_row(&mut self, row: &QueueRow) -> Result<Option<QuotaSnapshot>, Failure> {
        let mut request_id = self.request_id_of(row);
        let mut answer = self
            .term
            .reserve(&row.nik, row.reason, row.ikd, &request_id)
            .await;
        // The ticket's reservation from an earlier run whose results are lost was cancelled or
        // ran out since: its id only ever replays that, so the ticket reserves again under an id
        // derived from it (the same on every re-run, so never twice).
        // The same reservation again under the new id, still held, means the server still holds
        // it (this clock ran ahead of the server's): no further id is spent on it. Once the
        // server has it cancelled or run out, the next id reserves.
        let mut last_gone: Option<String> = None;
        for _ in 0..MAX_RESERVE_AGAIN {
            let Some(gone) = gone_hold(&answer, last_gone.as_deref()) else {
                break;
            };
            request_id = queue_retry_request_id(&request_id, &gone);
            last_gone = Some(gone);
            answer = self
                .term
                .reserve(&row.nik, row.reason, row.ikd, &request_id)
                .await;
        }
        let mut record = self.record(row, RowOutcome::Error);
        record.request_id = request_id;
        let zone = self.out.zone;
        let (snapshot, human): (Option<QuotaSnapshot>, Vec<String>) = match answer {
            Ok(response) => match response.outcome {
                Some(Outcome::Reservation(reservation)) => {
                    let warning = do_not_print(&reservation, &self.counter, &self.out);
                    record.outcome = RowOutcome::Reserved;
                    record.reservation_id = reservation.reservation_id.clone();
                    record.masked_nik = reservation.masked_nik.clone();
                    record.replayed = reservation.replayed;
                    record.expires_at = zone
                        .rfc3339(reservation.expires_at.as_ref())
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let mut lines = vec![answer_line(&reservation, warning.is_some(), &self.out)];
                    match warning {
                        // The applicant was served elsewhere (or earlier): the worklist must not
                        // show a blank to print at this counter.
                        Some(warning) => {
                            record.outcome = RowOutcome::DoNotPrint;
                            let english = Out {
                                lang: Lang::En,
                                ..self.out
                            };
                            record.detail = do_not_print(&reservation, &self.counter, &english)
                                .unwrap_or_default();
                            self.tally.do_not_print += 1;
                            lines.push(warning);
                        }
                        None => {
                            self.tally.reserved += 1;
                            if reservation.replayed {
                                self.tally.replayed += 1;
                            }
                        }
                    }
                    (response.quota, lines)
                }
                Some(Outcome::IkdReferral(referral)) => {
                    record.outcome = RowOutcome::IkdReferral;
                    record.cause = vocab::cause_code(referral.cause()).to_string();
                    record.detail = referral.message_english.clone();
                    self.tally.referred += 1;
                    (response.quota, referral_lines(&referral, &self.out))
                }
                None => {
                    record.detail = "the server answered without an outcome".to_string();
                    self.tally.errors += 1;
                    let shown = self.out.t(
                        "server menjawab tanpa hasil (tidak ada pemesanan atau rujukan IKD)",
                        "the server answered without an outcome",
                    );
                    (response.quota, vec![shown.to_string()])
                }
            },
            // Only an answer about this row's own data lets the queue go on; anything else
            // (no server, a broken connection, an unknown office) stops the run for a re-run.
            // So does an applicant whose hold at another office is still being released after
            // the retries: a re-run reserves them.
            Err(failure)
                if !matches!(failure, Failure::BadInput { .. })
                    && !matches!(
                        failure.code(),
                        Some("FAILED_PRECONDITION" | "ALREADY_EXISTS" | "OUT_OF_RANGE")
                    )
                    && !matches!(
                        &failure,
                        Failure::Server { reason: Some(reason), .. }
                            if reason == "EARLIER_HOLD_RELEASING"
                    ) =>
            {
                return Err(failure);
            }
            // The applicant holds (or was printed) a blank today at another service point or
            // office: no card is printed here now, like a replayed reservation of another
            // counter; a re-run asks again (that hold may be cancelled or run out).
            Err(failure) if failure.reason() == Some("ALREADY_RESERVED_ELSEWHERE") => {
                record.outcome = RowOutcome::ServedElsewhere;
                record.detail = failure.human(Lang::En);
                self.tally.do_not_print += 1;
                let lines = vec![
                    failure.human(self.out.lang),
                    self.out
                        .t(
                            "JANGAN cetak di loket ini: pemohon sudah dilayani hari ini di tempat layanan atau kantor lain.",
                            "Do NOT print at this counter: the applicant was already served today at another service point or office.",
                        )
                        .to_string(),
                ];
                (None, lines)
            }
            Err(failure) => {
                record.outcome = if matches!(failure, Failure::BadInput { .. }) {
                    self.tally.invalid += 1;
                    RowOutcome::Invalid
                } else {
                    self.tally.errors += 1;
                    RowOutcome::Error
                };
                record.detail = failure.human(Lang::En);
                let mut lines = vec![failure.human(self.out.lang)];
                // The ticket's request id is made from the office, service point, counter,
                // date and ticket: REQUEST_ID_REUSED here means the ticket was already used
                // today at this counter for another applicant (a second list that numbers its
                // tickets from 1 again).
                if failure.reason() == Some("REQUEST_ID_REUSED") {
                    lines.push(self.out.t(
                        "Nomor tiket ini sudah dipakai hari ini di loket ini untuk pemohon lain: beri nomor tiket yang unik (mis. awalan B) lalu jalankan lagi.",
                        "This ticket number was used today at this counter for another applicant: give the ticket a unique number (e.g. a B prefix) and run again.",
                    ).to_string());
                }
                (None, lines)
            }
        };
        self.results.append(&record)?;
        if self.out.json {
            self.emit_json(&record, json!({"event": "row"}));
        } else {
            for (i, text) in human.iter().enumerate() {
                if i == 0 {
                    self.out.line(&format!("[{}] {text}", row.ticket));
                } else {
                    self.out.line(text);
                }
            }
        }
        Ok(snapshot)
    }
}

/// The summary's part for rows answered with an earlier reservation, when there are any.
fn served_elsewhere(count: u32, words: &str) -> String {
    if count == 0 {
        String::new()
    } else {
        format!("{count} {words}, ")
    }
}

/// Reports why the run stopped and how to resume; gives the exit code.
fn stopped(failure: &Failure, out: &Out) -> u8 {
    failure.report(out);
    if !out.json {
        out.notice(out.t(
            "Antrean berhenti. Jalankan perintah yang sama lagi untuk melanjutkan: tidak ada yang dipesan dua kali.",
            "The queue stopped. Run the same command again to resume: nobody is reserved twice.",
        ));
    }
    EXIT_ERROR
}

/// The reservation a replayed Reserve answer names when no blank is held for it any more, so the
/// ticket reserves again; None otherwise. `last_gone`: the one the ticket's previous id named,
/// which counts only once the server itself says it is cancelled or run out.
fn gone_hold(answer: &Result<ReserveResponse, Failure>, last_gone: Option<&str>) -> Option<String> {
    let Ok(ReserveResponse {
        outcome: Some(Outcome::Reservation(r)),
        ..
    }) = answer
    else {
        return None;
    };
    let over = matches!(
        r.state(),
        ReservationState::Cancelled | ReservationState::Expired
    );
    (r.replayed && lapsed(r) && (over || last_gone != Some(r.reservation_id.as_str())))
        .then(|| r.reservation_id.clone())
}

/// The lines of the `pending` rows that an earlier run of this queue today already served (a
/// hold or a printed card), as the server answers a listing by their tickets' request ids: they
/// take no more quota (their Reserve replays that reservation). A ticket whose reservation was
/// cancelled or ran out is followed to the id it reserves again under (`Run::reserve_row`), at
/// most [`MAX_RESERVE_AGAIN`] times. A reservation counts for a row only when it is that row's
/// applicant's (the same masked NIK): a ticket number used earlier today for someone else (a
/// second list numbered from 1 again) does not make its new applicant served.
async fn served_earlier(run: &Run<'_>, pending: &[QueueRow]) -> Result<HashSet<u64>, Failure> {
    let mut known = HashSet::new();
    let mut asking: Vec<(&QueueRow, String)> = pending
        .iter()
        .map(|row| (row, run.request_id_of(row)))
        .collect();
    for _ in 0..=MAX_RESERVE_AGAIN {
        let mut again = Vec::new();
        for chunk in asking.chunks(MAX_LISTED_REQUEST_IDS) {
            let row_of: HashMap<&str, &QueueRow> =
                chunk.iter().map(|(row, id)| (id.as_str(), *row)).collect();
            let ids: Vec<&str> = chunk.iter().map(|(_, id)| id.as_str()).collect();
            let listed = run.term.reservations_made_by(&ids, &run.local_date).await?;
            for (reservation, by) in &listed {
                let Some(row) = row_of.get(by.as_str()) else {
                    continue;
                };
                if reservation.masked_nik != nik::mask(&row.nik) {
                    continue;
                }
                if lapsed(reservation) {
                    again.push((
                        *row,
                        queue_retry_request_id(by, &reservation.reservation_id),
                    ));
                } else if matches!(
                    reservation.state(),
                    ReservationState::Held | ReservationState::Committed
                ) {
                    known.insert(row.line);
                }
            }
        }
        asking = again;
        if asking.is_empty() {
            break;
        }
    }
    Ok(known)
}

/// How many of `rows` still need a blank: those not in `known` (already served, see
/// [`served_earlier`]).
fn needing(rows: &[QueueRow], known: &HashSet<u64>) -> u32 {
    let count = rows.iter().filter(|r| !known.contains(&r.line)).count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Splits off the rows of `rows[from..]` past the first `served` that need a blank, to be told
/// to activate IKD. Rows in `known` stay where they are: they take no quota.
fn split_beyond(
    rows: &mut Vec<QueueRow>,
    from: usize,
    served: u32,
    known: &HashSet<u64>,
) -> Vec<QueueRow> {
    let mut keep = usize::try_from(served).unwrap_or(usize::MAX);
    let tail = rows.split_off(from.min(rows.len()));
    let mut beyond = Vec::new();
    for row in tail {
        if known.contains(&row.line) {
            rows.push(row);
        } else if keep > 0 {
            keep -= 1;
            rows.push(row);
        } else {
            beyond.push(row);
        }
    }
    beyond
}

/// Runs a queue file: forecast, IKD notices for the applicants beyond the cut-off, reservations
/// in queue order, results file. Exit code 0 when every row was handled, 2 when some rows were
/// invalid, 1 when the run stopped early or some rows ended in an error (re-run it to resume).
pub async fn run_queue(term: &Terminal, out: Out, options: &QueueOptions) -> ExitCode {
    match run_queue_inner(term, out, options).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.exit(&out),
    }
}

async fn run_queue_inner(term: &Terminal, out: Out, options: &QueueOptions) -> Result<u8, Failure> {
    let office = term.office()?.to_string();
    let service_point = term.service_point()?.to_string();
    let counter = term.counter()?.to_string();
    let file = File::open(&options.file)
        .map_err(|e| local_failure(&options.file, FileStep::ReadQueue, e))?;
    let today = out.zone.now().date_naive();
    let parsed = parse_queue(file, today)?;
    let lang = out.lang;

    // The server's local date names the day in request ids and the journal.
    let snapshot = term.quota().await?;
    let local_date = snapshot.local_date.clone();
    let results_path = options
        .results
        .clone()
        .unwrap_or_else(|| default_results_path(&options.file));
    let (results, earlier) = ResultsFile::open(&results_path)?;
    let earlier: Vec<ResultRecord> = earlier
        .into_iter()
        .filter(|r| r.local_date == local_date)
        .collect();
    // A ticket is done when an earlier run today settled it for the same applicant (the NIK as
    // the results file keeps it, masked). The same ticket settled for another applicant is not
    // skipped: a second list of the day that numbers its tickets from 1 again, or a results
    // file shared with another list, would otherwise leave its applicants unserved and untold.
    let done: HashSet<(&str, &str)> = earlier
        .iter()
        .filter(|r| r.outcome.is_final())
        .map(|r| (r.ticket.as_str(), r.masked_nik.as_str()))
        .collect();
    let settled_for: HashMap<&str, &ResultRecord> = earlier
        .iter()
        .filter(|r| r.outcome.is_final())
        .map(|r| (r.ticket.as_str(), r))
        .collect();
    // Rows whose ticket an earlier run settled for someone else: refused by line number.
    let mut parsed = parsed;
    let (reused, rows): (Vec<QueueRow>, Vec<QueueRow>) = std::mem::take(&mut parsed.rows)
        .into_iter()
        .partition(|row| {
            let mine = nik::mask(&row.nik);
            !done.contains(&(row.ticket.as_str(), mine.as_str()))
                && settled_for.contains_key(row.ticket.as_str())
        });
    parsed.rows = rows;
    for row in reused {
        let before = settled_for.get(row.ticket.as_str()).map_or(0, |r| r.line);
        parsed.bad.push(BadRow {
            line: row.line,
            ticket: row.ticket.clone(),
            field: "ticket".to_string(),
            problem_id: format!(
                "tiket {} sudah dipakai hari ini untuk pemohon lain (baris {before} pada proses sebelumnya); beri nomor tiket yang unik (mis. awalan B) atau pakai --results lain untuk daftar ini",
                row.ticket
            ),
            problem_en: format!(
                "ticket {} was used today for another applicant (line {before} in an earlier run); give it a unique number (e.g. a B prefix) or use another --results file for this list",
                row.ticket
            ),
        });
    }
    parsed.bad.sort_by_key(|b| b.line);
    let invalid_seen: HashSet<(u64, &str)> = earlier
        .iter()
        .filter(|r| r.outcome == RowOutcome::Invalid)
        .map(|r| (r.line, r.detail.as_str()))
        .collect();

    let mut run = Run {
        term,
        out,
        results,
        local_date: local_date.clone(),
        office,
        service_point,
        counter,
        tally: Tally::default(),
        last_reported: 0,
        last_report_at: Instant::now(),
    };

    if !out.json {
        out.line(&snapshot_line(&snapshot, &out));
    }

    // Bad rows first, each with its line number; they stay in the results file too.
    for row in &parsed.bad {
        run.tally.invalid += 1;
        let record = ResultRecord {
            local_date: local_date.clone(),
            line: row.line,
            ticket: row.ticket.clone(),
            masked_nik: String::new(),
            reason: String::new(),
            outcome: RowOutcome::Invalid,
            reservation_id: String::new(),
            expires_at: String::new(),
            replayed: false,
            cause: String::new(),
            detail: format!("{}: {}", row.field, row.problem_en),
            request_id: String::new(),
        };
        if !invalid_seen.contains(&(record.line, record.detail.as_str())) {
            run.results.append(&record)?;
        }
        if out.json {
            run.emit_json(
                &record,
                json!({"event": "invalid_row", "field": row.field, "problem": row.problem(lang)}),
            );
        } else {
            out.notice(&format!(
                "{} {}{}: {} — {}",
                lang.t("Baris", "Line"),
                row.line,
                if row.ticket.is_empty() {
                    String::new()
                } else {
                    format!(" ({} {})", lang.t("tiket", "ticket"), row.ticket)
                },
                row.field,
                row.problem(lang)
            ));
        }
    }

    let mut pending: Vec<QueueRow> = parsed
        .rows
        .iter()
        .filter(|r| !settled_for.contains_key(r.ticket.as_str()))
        .cloned()
        .collect();
    run.tally.earlier = u32::try_from(parsed.rows.len() - pending.len()).unwrap_or(u32::MAX);
    if run.tally.earlier > 0 && !out.json {
        out.line(&match lang {
            Lang::Id => format!(
                "Melanjutkan: {} tiket sudah ditangani pada proses sebelumnya hari ini (tidak dipesan ulang).",
                run.tally.earlier
            ),
            Lang::En => format!(
                "Resuming: {} tickets were already handled by an earlier run today (not reserved again).",
                run.tally.earlier
            ),
        });
    }

    // Tickets an earlier run of this queue today already served, though the results file does
    // not say so (it was lost, or restored from an older copy): they take no quota when reached
    // (the server replays their reservation), so they are left out of the forecast; otherwise
    // they would push the last applicants in the list to IKD.
    let known = match served_earlier(&run, &pending).await {
        Ok(known) => known,
        // An older server: the forecast counts every pending ticket, as it always did.
        Err(failure @ Failure::Local { .. }) => {
            failure.report(&out);
            HashSet::new()
        }
        Err(failure) => return Err(failure),
    };
    if !known.is_empty() {
        if out.json {
            out.json(&json!({"event": "served_earlier", "count": known.len()}));
        } else {
            out.line(&match lang {
                Lang::Id => format!(
                    "Menurut server, {} tiket dalam daftar ini sudah dijawab hari ini dengan blangko (ditahan atau dicetak) oleh proses sebelumnya: tidak dihitung dalam perkiraan.",
                    known.len()
                ),
                Lang::En => format!(
                    "The server shows {} tickets on this list already answered today with a blank (held or printed) by an earlier run: they are left out of the forecast.",
                    known.len()
                ),
            });
        }
    }

    // A resumed run first settles the first pending ticket that the results file does not name
    // at all: rows are reserved in queue order, so it is the one that may have been in flight
    // when the earlier run died (reserved, but not yet recorded). Rows recorded with an error
    // come before it and are not it. Its request id makes the server replay that answer instead
    // of reserving again, and the forecast below is exact.
    if !earlier.is_empty() && !options.forecast_only {
        let recorded: HashSet<&str> = earlier.iter().map(|r| r.ticket.as_str()).collect();
        if let Some(at) = pending
            .iter()
            .position(|r| !recorded.contains(r.ticket.as_str()))
        {
            let first = pending.remove(at);
            if let Err(failure) = run.reserve_row(&first).await {
                return Ok(stopped(&failure, &out));
            }
        }
    }

    let mut waiting = needing(&pending, &known);
    let (served, quota) = match run.report(waiting).await {
        Ok(answer) => answer,
        Err(failure) => return Ok(stopped(&failure, &out)),
    };
    run.forecast_line(waiting, served, quota.as_ref());
    let beyond = split_beyond(&mut pending, 0, served, &known);
    waiting = waiting.min(served);
    run.tell_ikd(&beyond)?;

    if options.forecast_only {
        // A preview reserves nobody: its waiting count must not stay in the other counters'
        // forecasts for the report's lifetime.
        if let Err(failure) = run.report(0).await {
            failure.report(&out);
        }
        return Ok(if run.tally.invalid > 0 {
            EXIT_BAD_INPUT
        } else {
            EXIT_OK
        });
    }

    let progress = Progress::new(pending.len(), &out);
    let mut index = 0;
    let mut refresh_failed_at: Option<Instant> = None;
    while index < pending.len() {
        let row = pending[index].clone();
        progress.clear();
        let snapshot = match run.reserve_row(&row).await {
            Ok(snapshot) => snapshot,
            Err(failure) => {
                progress.clear();
                return Ok(stopped(&failure, &out));
            }
        };
        index += 1;
        if !known.contains(&row.line) {
            waiting = waiting.saturating_sub(1);
        }
        progress.show(
            index,
            snapshot.as_ref().map(|q| q.remaining).unwrap_or(0),
            lang,
        );
        if index == pending.len() {
            break;
        }
        // Keep the forecast current from the live snapshot: when other counters have taken
        // quota meanwhile, ask the server again and tell the new tail at once.
        let shrinking = waiting > 0
            && snapshot.as_ref().is_some_and(|q| {
                let total = total_with_mine(q.waiting, run.last_reported, waiting);
                expected_served(q.remaining, waiting, total) < waiting
            });
        let failed_lately = refresh_failed_at.is_some_and(|at| at.elapsed() < REPORT_REFRESH);
        if (shrinking && !failed_lately)
            || (waiting > 0 && run.last_report_at.elapsed() >= REPORT_REFRESH)
        {
            // A refresh only keeps the forecast current: when it fails, the queue goes on with
            // the forecast it has (the next Reserve's answer says whether a blank is left).
            let (served, quota) = match run.report(waiting).await {
                Ok(answer) => answer,
                Err(failure) => {
                    progress.clear();
                    failure.report(&out);
                    // Not again before the refresh interval, even while the quota shrinks.
                    run.last_report_at = Instant::now();
                    refresh_failed_at = Some(Instant::now());
                    (waiting, None)
                }
            };
            if served < waiting {
                progress.clear();
                run.forecast_line(waiting, served, quota.as_ref());
                let beyond = split_beyond(&mut pending, index, served, &known);
                waiting = served;
                run.tell_ikd(&beyond)?;
            }
        }
        if !options.pace.is_zero() {
            tokio::time::sleep(options.pace).await;
        }
    }
    progress.clear();
    // The queue is done: withdraw this counter's report so others get the whole remainder.
    if let Err(failure) = run.report(0).await {
        failure.report(&out);
    }

    let t = &run.tally;
    if out.json {
        out.json(&json!({
            "event": "summary",
            "local_date": local_date,
            "reserved": t.reserved,
            "replayed": t.replayed,
            "told_ikd": t.told_ikd,
            "referred": t.referred,
            "do_not_print": t.do_not_print,
            "invalid": t.invalid,
            "errors": t.errors,
            "earlier": t.earlier,
            "results_file": run.results.path().display().to_string(),
        }));
    } else {
        out.line(&match lang {
            Lang::Id => format!(
                "Selesai: {} dipesan ({} ulang), {} diberi tahu aktivasi IKD, {} dirujuk server, {}{} tidak valid, {} galat, {} dari proses sebelumnya. Hasil: {}",
                t.reserved, t.replayed, t.told_ikd, t.referred,
                served_elsewhere(t.do_not_print, "sudah dilayani di loket lain atau sudah dicetak (JANGAN cetak)"),
                t.invalid, t.errors, t.earlier,
                run.results.path().display()
            ),
            Lang::En => format!(
                "Done: {} reserved ({} replayed), {} told to activate IKD, {} referred by the server, {}{} invalid, {} errors, {} from an earlier run. Results: {}",
                t.reserved, t.replayed, t.told_ikd, t.referred,
                served_elsewhere(t.do_not_print, "already served at another counter or printed (do NOT print)"),
                t.invalid, t.errors, t.earlier,
                run.results.path().display()
            ),
        });
    }
    Ok(if t.errors > 0 {
        EXIT_ERROR
    } else if t.invalid > 0 {
        EXIT_BAD_INPUT
    } else {
        EXIT_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 29).unwrap_or_default()
    }

    fn parse(text: &str) -> ParsedQueue {
        match parse_queue(text.as_bytes(), today()) {
            Ok(parsed) => parsed,
            Err(failure) => panic!("{failure:?}"),
        }
    }

    #[test]
    fn rows_keep_queue_order_and_line_numbers() {
        let parsed = parse(
            "ticket,nik,reason\n\
             A001,3275014101900001,new-recording\n\
             A002, 3275 0141 0190 0002 ,hilang\n\
             \n\
             A003,3275014101900003,7\n",
        );
        assert!(parsed.bad.is_empty(), "{:?}", parsed.bad);
        let summary: Vec<(u64, &str, Reason)> = parsed
            .rows
            .iter()
            .map(|r| (r.line, r.ticket.as_str(), r.reason))
            .collect();
        assert_eq!(
            summary,
            [
                (2, "A001", Reason::NewRecording),
                (3, "A002", Reason::Lost),
                (5, "A003", Reason::Damaged)
            ]
        );
        assert_eq!(parsed.rows[1].nik, "3275014101900002");
        assert_eq!(parsed.rows[0].ikd, IkdStatus::Unspecified);
    }

    #[test]
    fn bad_rows_are_reported_with_line_numbers_never_skipped_silently() {
        let parsed = parse(
            "tiket,nik,alasan,ikd\n\
             1,3275014101900001,perekaman-baru,aktif\n\
             2,327501410190001,hilang,\n\
             3,3275014101900003,stolen,\n\
             1,3275014101900004,rusak,\n\
             5,3275014101900001,rusak,\n\
             6,3275014101900006,rusak,maybe\n\
             ,3275014101900007,rusak,\n\
             8,3275014101900008\n\
             9,3275014101900009,rentan,exempt\n",
        );
        let bad: Vec<(u64, &str)> = parsed
            .bad
            .iter()
            .map(|b| (b.line, b.field.as_str()))
            .collect();
        assert_eq!(
            bad,
            [
                (3, "nik"),
                (4, "reason"),
                (5, "ticket"),
                (6, "nik"),
                (7, "ikd"),
                (8, "ticket"),
                (9, "reason"),
            ]
        );
        assert!(parsed.bad[0].problem_en.contains("16 digits"));
        assert!(
            parsed.bad[2].problem_en.contains("already on line 2"),
            "{:?}",
            parsed.bad[2]
        );
        assert!(parsed.bad[3].problem_id.contains("baris 2"));
        let good: Vec<&str> = parsed.rows.iter().map(|r| r.ticket.as_str()).collect();
        assert_eq!(good, ["1", "9"]);
        assert_eq!(parsed.rows[0].ikd, IkdStatus::Active);
        assert_eq!(parsed.rows[1].ikd, IkdStatus::Exempt);
        assert_eq!(
            parsed.rows.len() + parsed.bad.len(),
            9,
            "every data line is accounted for"
        );
    }

    #[test]
    fn a_nik_in_the_ticket_reason_or_ikd_column_is_refused_and_never_echoed() {
        // Unknown column names: the documented order ticket, nik, reason, ikd is assumed, but
        // this file has the NIK first.
        let parsed = parse(
            "kolom1,kolom2,kolom3,kolom4\n\
             3275014101900001,A001,perekaman-baru,aktif\n\
             A002,3275014101900002,3275014101900012,aktif\n\
             A003,3275014101900003,hilang,3275014101900013\n",
        );
        assert!(parsed.rows.is_empty(), "{parsed:?}");
        let fields: Vec<&str> = parsed.bad.iter().map(|b| b.field.as_str()).collect();
        assert_eq!(fields, ["ticket", "reason", "ikd"]);
        assert!(parsed.bad[0].problem_en.contains("check the column order"));
        let shown = format!("{:?}", parsed.bad);
        for nik in ["3275014101900001", "3275014101900012", "3275014101900013"] {
            assert!(!shown.contains(nik), "{shown}");
        }
        assert_eq!(parsed.bad[0].ticket, "*".repeat(16));

        // The same with the NIK typed with dashes, dots or slashes: refused and masked too.
        let parsed = parse(
            "kolom1,kolom2,kolom3,kolom4\n\
             3275-0141-0190-0001,A001,perekaman-baru,aktif\n\
             3275.0141.0190.0002,A002,perekaman-baru,aktif\n\
             A003,3275014101900003,3275-0141-0190-0013,aktif\n\
             A004,3275014101900004,hilang,327501/410190/0014\n\
             A_3275_0141_0190_0005,3275014101900005,hilang,aktif\n\
             A006,3275014101900006,3275_0141_0190_0016,aktif\n",
        );
        assert!(parsed.rows.is_empty(), "{parsed:?}");
        let fields: Vec<&str> = parsed.bad.iter().map(|b| b.field.as_str()).collect();
        assert_eq!(
            fields,
            ["ticket", "ticket", "reason", "ikd", "ticket", "reason"]
        );
        assert_eq!(parsed.bad[0].ticket, "****-****-****-****");
        assert_eq!(parsed.bad[4].ticket, "A_****_****_****_****");
        let shown = format!("{:?}", parsed.bad);
        for digits in [
            "3275", "0141", "0190", "0001", "0002", "0013", "0014", "410190", "0005", "0016",
        ] {
            assert!(!shown.contains(digits), "{digits} in {shown}");
        }
    }

    #[test]
    fn windows_exports_with_bom_crlf_and_quotes_parse() {
        let parsed = parse(
            "\u{feff}\"Ticket\";\"NIK\";\"Reason\"\r\n\r\n1;\"3275014101900001\";\"lost\"\r\n2;32750141019;lost\r\n",
        );
        assert_eq!((parsed.rows.len(), parsed.bad.len()), (1, 1), "{parsed:?}");
        assert_eq!(parsed.rows[0].reason, Reason::Lost);
        let parsed = parse(
            "\u{feff}Ticket,NIK,Reason\r\n\r\n1,\"3275014101900001\",\"lost\"\r\n2,\"32750141019\r\n",
        );
        assert_eq!(parsed.rows.len(), 1, "{parsed:?}");
        assert_eq!(parsed.rows[0].line, 3);
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].line, 4);
        let latin1 = parse_queue(
            &b"ticket,nik,reason\n1,3275014101900001,p\xe9rdida\n"[..],
            today(),
        );
        match latin1 {
            Ok(q) => assert_eq!(
                (q.bad.len(), q.bad[0].line, q.bad[0].field.as_str()),
                (1, 2, "row")
            ),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn headers_map_columns_by_name_or_refuse_data_as_header() {
        let parsed = parse("Reason,NIK,No Antrean\nlost,3275014101900001,B12\n");
        assert_eq!(parsed.rows[0].ticket, "B12");
        assert_eq!(parsed.rows[0].reason, Reason::Lost);
        let headerless = parse_queue(
            "1,3275014101900001,lost\n2,3275014101900002,lost\n".as_bytes(),
            today(),
        );
        assert!(matches!(headerless, Err(Failure::BadInput { .. })));
        let missing = parse_queue("ticket,nik\n1,3275014101900001\n".as_bytes(), today());
        assert!(matches!(missing, Err(Failure::BadInput { .. })));
        assert!(parse("").rows.is_empty());
        // An export's running number comes first: the queue number is the ticket.
        let export = parse(
            "No,Nomor Antrian,Nama,NIK,Alasan\n1,A045,Budi,3275014101900001,hilang\n2,B012,Sari,3275014101900002,rusak\n",
        );
        let tickets: Vec<&str> = export.rows.iter().map(|r| r.ticket.as_str()).collect();
        assert_eq!(tickets, ["A045", "B012"]);
        // A generic number column alone is still the ticket.
        assert_eq!(
            parse("No,NIK,Alasan\n7,3275014101900001,hilang\n").rows[0].ticket,
            "7"
        );
        // No header, and the first applicant's NIK one digit short: refused as data, not used
        // up as a header row (that applicant would have been skipped without a word).
        for first in [
            "1,327501410190001,hilang\n",
            "1,3275-0141-0190,baru\n",
            "A1,x,rusak\n",
        ] {
            let text = format!("{first}2,3275014101900002,hilang\n");
            let refused = parse_queue(text.as_bytes(), today());
            assert!(matches!(refused, Err(Failure::BadInput { .. })), "{first}");
        }
        // Said in the officer's language, one language at a time.
        let Err(refused) = parse_queue("1,327501410190001,hilang\n".as_bytes(), today()) else {
            panic!("a first line of data is refused");
        };
        assert_eq!(
            refused.human(crate::output::Lang::Id),
            "Masukan ditolak: line 1: baris 1 berisi data pemohon, bukan judul kolom (tiket,nik,alasan)"
        );
        assert_eq!(
            refused.human(crate::output::Lang::En),
            "Input rejected: line 1: the first line looks like an applicant, not a header row (ticket,nik,reason)"
        );
        let Err(no_nik) = parse_queue("tiket,alasan\nA1,hilang\n".as_bytes(), today()) else {
            panic!("a header without a NIK column is refused");
        };
        assert_eq!(
            no_nik.human(crate::output::Lang::Id),
            "Masukan ditolak: header: baris judul tidak punya kolom nik"
        );
        // Unknown names that are no data: the documented order.
        assert_eq!(
            parse("A,B,C\nT1,3275014101900001,hilang\n").rows[0].ticket,
            "T1"
        );
    }

    #[test]
    fn a_results_file_with_a_line_that_is_no_result_stops_the_run() {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("{e}"),
        };
        // Saved again by a spreadsheet: `false` became `FALSE`.
        let path = dir.path().join("r.csv");
        let header = "local_date,line,ticket,masked_nik,reason,outcome,reservation_id,expires_at,replayed,cause,detail,request_id";
        let good = "2026-11-29,2,A001,327501******0001,LOST,reserved,res-1,,false,,,q-1";
        let edited = "2026-11-29,3,A002,327501******0002,LOST,reserved,res-2,,FALSE,,,q-2";
        let write = |text: String| std::fs::write(&path, text).map_err(|e| panic!("{e}"));
        let _ = write(format!("{header}\n{good}\n{edited}\n"));
        match ResultsFile::open(&path) {
            Err(Failure::Local { english, .. }) => {
                assert!(
                    english.contains("line 3 is not a queue result"),
                    "{english}"
                )
            }
            other => panic!("{:?}", other.map(|(_, r)| r)),
        }
        // A header written twice (two runs that started the file at once) and a record cut
        // short by an older version's crash are no results, and no reason to stop.
        let _ = write(format!(
            "{header}\n{good}\n{header}\n2026-11-29,3,A0\n{good}\n"
        ));
        let (_, records) = match ResultsFile::open(&path) {
            Ok(x) => x,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(records.len(), 2);
        // JSON lines: an edited line stops the run; a line cut short does not.
        let path = dir.path().join("r.jsonl");
        let record = r#"{"local_date":"2026-11-29","line":2,"ticket":"A001","masked_nik":"327501******0001","reason":"LOST","outcome":"reserved"}"#;
        let _ = std::fs::write(
            &path,
            format!("{record}\n{{\"local_date\":\"2026\n{record}\n"),
        );
        assert!(matches!(ResultsFile::open(&path), Ok((_, ref r)) if r.len() == 2));
        // A whole last record whose newline an editor dropped is kept (and ended).
        let _ = std::fs::write(&path, format!("{record}\n{record}"));
        assert!(matches!(ResultsFile::open(&path), Ok((_, ref r)) if r.len() == 2));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            format!("{record}\n{record}\n")
        );
        let _ = std::fs::write(
            &path,
            format!("{record}\n{}\n", record.replace("reserved", "RESERVED")),
        );
        assert!(matches!(
            ResultsFile::open(&path),
            Err(Failure::Local { .. })
        ));
    }

    #[test]
    fn results_file_round_trips_and_survives_a_torn_line() {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("{e}"),
        };
        for name in ["r.csv", "r.jsonl"] {
            let path = dir.path().join(name);
            let record = ResultRecord {
                local_date: "2026-11-29".to_string(),
                line: 2,
                ticket: "A001".to_string(),
                masked_nik: "327501******0001".to_string(),
                reason: "LOST".to_string(),
                outcome: RowOutcome::Reserved,
                reservation_id: "res-1".to_string(),
                expires_at: "2026-11-29T09:05:00+07:00".to_string(),
                replayed: false,
                cause: String::new(),
                detail: "a, \"quoted\" detail".to_string(),
                request_id: "q-3275-mpp-loket-1-20261129-A001".to_string(),
            };
            {
                let (mut file, earlier) = match ResultsFile::open(&path) {
                    Ok(x) => x,
                    Err(e) => panic!("{e:?}"),
                };
                assert!(earlier.is_empty());
                assert!(file.append(&record).is_ok());
            }
            // A crash in the middle of the next line, inside a quoted field.
            if let Ok(mut f) = OpenOptions::new().append(true).open(&path) {
                let _ = f.write_all(
                    b"2026-11-29,3,A0,x,LOST,ikd_referral,,,false,QUOTA,\"We are sorry, tod",
                );
            }
            let (mut file, earlier) = match ResultsFile::open(&path) {
                Ok(x) => x,
                Err(e) => panic!("{e:?}"),
            };
            assert_eq!(earlier, vec![record.clone()], "{name}");
            let second = ResultRecord {
                ticket: "A002".to_string(),
                line: 3,
                ..record.clone()
            };
            assert!(file.append(&second).is_ok());
            let (_, again) = match ResultsFile::open(&path) {
                Ok(x) => x,
                Err(e) => panic!("{e:?}"),
            };
            assert_eq!(again, vec![record.clone(), second], "{name}");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !text.contains("We are sorry"),
                "the torn line was cut off: {text}"
            );
        }
        let text = std::fs::read_to_string(dir.path().join("r.csv")).unwrap_or_default();
        assert!(
            text.starts_with("local_date,line,ticket,masked_nik,reason,outcome,"),
            "{text}"
        );
        assert!(!text.contains("3275014101900001"), "no NIK in clear");
    }

    #[test]
    fn the_cut_counts_only_rows_that_need_a_blank() {
        let mut text = String::from("ticket,nik,reason\n");
        for i in 1..=6 {
            text.push_str(&format!("{i},3275014101900{:03},new-recording\n", i));
        }
        let rows = parse(&text).rows;
        let tickets =
            |rows: &[QueueRow]| -> Vec<String> { rows.iter().map(|r| r.ticket.clone()).collect() };
        // Tickets 2 and 5 were served already (lines 3 and 6).
        let known: HashSet<u64> = [3, 6].into();
        assert_eq!(needing(&rows, &known), 4);
        let mut pending = rows.clone();
        let beyond = split_beyond(&mut pending, 0, 2, &known);
        assert_eq!(tickets(&pending), ["1", "2", "3", "5"]);
        assert_eq!(tickets(&beyond), ["4", "6"]);
        // Later in the run (two rows done), one more slot is lost.
        let beyond = split_beyond(&mut pending, 2, 0, &known);
        assert_eq!(tickets(&pending), ["1", "2", "5"]);
        assert_eq!(tickets(&beyond), ["3"]);
        // With nothing known the cut is where it always was.
        let mut pending = rows;
        let beyond = split_beyond(&mut pending, 0, 4, &HashSet::new());
        assert_eq!(tickets(&pending), ["1", "2", "3", "4"]);
        assert_eq!(tickets(&beyond), ["5", "6"]);
    }

    #[test]
    fn results_paths_and_formats() {
        assert_eq!(
            default_results_path(Path::new("/q/antrean.csv")),
            PathBuf::from("/q/antrean.results.csv")
        );
        assert_eq!(
            ResultsFormat::of(Path::new("x.json")),
            ResultsFormat::JsonLines
        );
        assert_eq!(
            ResultsFormat::of(Path::new("x.JSONL")),
            ResultsFormat::JsonLines
        );
        assert_eq!(ResultsFormat::of(Path::new("x.csv")), ResultsFormat::Csv);
    }
}
