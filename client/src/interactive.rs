//! `counter`: the officer's screen. Line-based (no raw terminal mode), so it works on any
//! terminal, under tmux, and driven from stdin by a script or a test.
//!
//! Before every prompt it shows the remaining quota and this counter's queue forecast, kept
//! current by a WatchQuota stream in the background; the counter's waiting count is reported to
//! the server (ReportQueue) when it changes and refreshed before the server's 120 s expiry.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::{
    IkdStatus, QuotaSnapshot, Reason, ReferralCause, ReservationState, SpoilageReason,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::commands::reserve::{do_not_print, print_outcome};
use crate::commands::watch::follow;
use crate::connect::random_request_id;
use crate::error::EXIT_OK;
use crate::forecast::{expected_served, total_with_mine};
use crate::nik;
use crate::output::{
    Lang, Out, reservation_json, reservation_line, reservation_state_line, snapshot_line,
};
use crate::terminal::Terminal;
use crate::vocab;

/// Lines of input buffered ahead of the screen (typed ahead or piped in).
const INPUT_BUFFER_LINES: usize = 64;

/// How often the queue report is refreshed; the server forgets a report after 120 s.
const REPORT_REFRESH: Duration = Duration::from_secs(60);

/// The longest input line taken; anything longer is someone leaning on the keyboard.
const MAX_LINE_LEN: usize = 1024;
/// What the input thread sends for a line past [`MAX_LINE_LEN`] (a control character no typed
/// line holds: the reader keeps only text up to the newline).
const TOO_LONG: &str = "\u{0}too-long";

/// What the background tasks share with the screen.
#[derive(Default)]
struct Shared {
    /// The latest quota snapshot (from WatchQuota, Reserve answers or ReportQueue answers).
    snapshot: Mutex<Option<QuotaSnapshot>>,
    /// Applicants waiting at this counter.
    waiting: AtomicU32,
    /// The waiting count the server last heard from us.
    reported: AtomicU32,
}

impl Shared {
    /// Keeps the newer of the current and the given snapshot: a stream message may arrive after
    /// the answer of a later call.
    fn set_snapshot(&self, snapshot: Option<QuotaSnapshot>) {
        let as_of = |q: &QuotaSnapshot| q.as_of.as_ref().map(|t| (t.seconds, t.nanos));
        if let (Some(snapshot), Ok(mut slot)) = (snapshot, self.snapshot.lock()) {
            let older = slot
                .as_ref()
                .is_some_and(|current| as_of(&snapshot) < as_of(current));
            if !older {
                *slot = Some(snapshot);
            }
        }
    }

    fn snapshot(&self) -> Option<QuotaSnapshot> {
        self.snapshot.lock().ok().and_then(|s| s.clone())
    }
}

/// Lines from stdin, read on a plain thread (a blocked read never holds up the exit).
struct Input {
    lines: mpsc::Receiver<String>,
    out: Out,
}

impl Input {
    fn start(out: Out) -> Input {
        let (sender, lines) = mpsc::channel(INPUT_BUFFER_LINES);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut stdin = stdin.lock();
            // A line is read up to MAX_LINE_LEN bytes and its newline; what is longer is read
            // past and comes as TOO_LONG, never run cut short. Bytes that are not UTF-8 (a paste
            // from a Latin-1 terminal) become U+FFFD instead of ending the screen.
            let mut bytes = Vec::with_capacity(MAX_LINE_LEN + 1);
            loop {
                bytes.clear();
                let limit = (MAX_LINE_LEN + 1) as u64;
                match (&mut stdin).take(limit).read_until(b'\n', &mut bytes) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = if bytes.len() > MAX_LINE_LEN && !bytes.ends_with(b"\n") {
                    // Read past the rest of the line, a bounded chunk at a time.
                    let mut rest = Vec::with_capacity(MAX_LINE_LEN);
                    loop {
                        rest.clear();
                        match (&mut stdin).take(limit).read_until(b'\n', &mut rest) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if rest.ends_with(b"\n") => break,
                            Ok(_) => {}
                        }
                    }
                    TOO_LONG.to_string()
                } else {
                    String::from_utf8_lossy(&bytes)
                        .trim_end_matches(['\r', '\n'])
                        .to_string()
                };
                if sender.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        Input { lines, out }
    }

    /// Shows `prompt` and waits for a line; `None` at the end of input.
    async fn ask(&mut self, prompt: &str) -> Option<String> {
        // Prompts are for people: on stderr when stdout carries JSON.
        if self.out.json {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "{prompt}");
            let _ = stderr.flush();
        } else {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "{prompt}");
            let _ = stdout.flush();
        }
        loop {
            let line = self.lines.recv().await?;
            if line == TOO_LONG {
                let text = self.out.t(
                    "Baris terlalu panjang (lebih dari 1024 karakter): diabaikan, ketik lagi.",
                    "Line too long (over 1024 characters): ignored, type it again.",
                );
                if self.out.json {
                    self.out.notice(text);
                } else {
                    self.out.line(text);
                }
                continue;
            }
            return Some(line.trim().to_string());
        }
    }
}

/// The interactive screen.
struct Screen {
    term: Terminal,
    out: Out,
    shared: Arc<Shared>,
    input: Input,
    /// The current applicant's reservation, the default for `c`, `x` and `rusak` (cleared when
    /// the next applicant starts).
    last_reservation: Option<String>,
    /// This counter's newest hold that was neither marked printed (c) nor cancelled (x): told
    /// once when the next applicant starts or the screen closes, so a printed card whose c was
    /// forgotten does not run out unnoticed (its blank would then count as still in stock).
    open_hold: Option<String>,
    /// Spoiled-blank reports that got no answer, at most [`MAX_UNANSWERED`], each kept for
    /// [`UNANSWERED_SPOILED_FOR`]: the same report (reservation and reason) typed again offers to
    /// reuse its id, whatever came in between, so the blank is not written off twice; the
    /// officer says whether it is the same blank (two blanks spoiled alike are two reports).
    unanswered_spoiled: Vec<UnansweredSpoiled>,
    /// Reservations whose c got no answer, at most [`MAX_UNANSWERED`]: told at every next
    /// applicant and at the end until a c is answered, so a printed card is not forgotten (its
    /// hold would run out and its blank count as still in stock).
    unconfirmed_prints: Vec<String>,
    /// Where `unconfirmed_prints` is kept too ([`crate::unrecorded`]), if anywhere.
    unrecorded_file: Option<std::path::PathBuf>,
    /// Whether the officer was told that the file could not be written (told once).
    unrecorded_warned: bool,
}

/// The most unanswered spoiled reports and unconfirmed prints the screen keeps.
const MAX_UNANSWERED: usize = 16;

/// How long an unanswered spoiled report is offered again.
const UNANSWERED_SPOILED_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// A spoiled-blank report that got no answer.
#[derive(Debug, Clone, PartialEq)]
struct UnansweredSpoiled {
    /// The reservation ("" for a blank from stock).
    reservation_id: String,
    reason: SpoilageReason,
    request_id: String,
    sent: std::time::Instant,
}

/// Keeps `item` at the end of `list`, at most [`MAX_UNANSWERED`] long; gives back the oldest
/// when it had to go.
fn keep_last<T: PartialEq>(list: &mut Vec<T>, item: T) -> Option<T> {
    list.retain(|x| *x != item);
    let dropped = (list.len() >= MAX_UNANSWERED).then(|| list.remove(0));
    list.push(item);
    dropped
}

fn help_text(lang: Lang) -> &'static str {
    lang.t(
        "Perintah: [Enter] atau n = pemohon berikutnya · antrean N = jumlah yang menunggu di loket ini\n\
         \x20         c [ID] = kartu sudah dicetak · x [ID] = batalkan · rusak [ID|stok] ALASAN = blangko rusak (lainnya KETERANGAN)\n\
         \x20         hold = pemesanan yang masih ditahan · kuota = kuota saat ini · bantuan · keluar",
        "Commands: [Enter] or n = next applicant · queue N = applicants waiting at this counter\n\
         \x20         c [ID] = card printed (commit) · x [ID] = cancel · spoiled [ID|stock] REASON = spoiled blank (other NOTE)\n\
         \x20         holds = open holds · quota = current quota · help · quit",
    )
}

fn reason_menu(lang: Lang) -> String {
    let items: Vec<String> = vocab::REASONS
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{} {}", i + 1, vocab::reason_text(*r, lang)))
        .collect();
    format!("{} ({}): ", lang.t("Alasan", "Reason"), items.join(", "))
}

impl Screen {
    fn say(&self, text: &str) {
        if self.out.json {
            self.out.notice(text);
        } else {
            self.out.line(text);
        }
    }

    /// The line always in view: quota left and this counter's forecast.
    fn status_line(&self) -> String {
        let lang = self.out.lang;
        let waiting = self.shared.waiting.load(Ordering::Relaxed);
        let Some(q) = self.shared.snapshot() else {
            return lang
                .t("[kuota belum diketahui]", "[quota not known yet]")
                .to_string();
        };
        let total = total_with_mine(
            q.waiting,
            self.shared.reported.load(Ordering::Relaxed),
            waiting,
        );
        let served = expected_served(q.remaining, waiting, total);
        let closed = if q.closed {
            lang.t(" · TUTUP HARI INI", " · CLOSED TODAY")
        } else {
            ""
        };
        match lang {
            Lang::Id => format!(
                "[sisa kuota {}/{} · ditahan {} · dicetak {} · stok tersedia {} · antrean loket {} → {} dilayani, {} ke IKD{closed}]",
                q.remaining,
                q.quota,
                q.held,
                q.committed,
                q.available,
                waiting,
                served,
                waiting - served
            ),
            Lang::En => format!(
                "[quota left {}/{} · held {} · committed {} · stock available {} · queue here {} → {} served, {} to IKD{closed}]",
                q.remaining,
                q.quota,
                q.held,
                q.committed,
                q.available,
                waiting,
                served,
                waiting - served
            ),
        }
    }

    /// Reports the waiting count and shows the server's forecast.
    async fn report_waiting(&self, show: bool) {
        let waiting = self.shared.waiting.load(Ordering::Relaxed);
        match self.term.report_queue(waiting).await {
            Ok(answer) => {
                self.shared.reported.store(waiting, Ordering::Relaxed);
                self.shared.set_snapshot(answer.quota.clone());
                if !show {
                    return;
                }
                if self.out.json {
                    self.out.json(&json!({
                        "event": "forecast",
                        "waiting": waiting,
                        "expected_served": answer.expected_served,
                        "expected_referred": answer.expected_referred,
                        "remaining": answer.quota.as_ref().map(|q| q.remaining),
                    }));
                } else if waiting > 0 && answer.expected_served >= waiting {
                    self.say(&match self.out.lang {
                        Lang::Id => format!(
                            "Perkiraan: semua {waiting} yang menunggu di loket ini dapat dilayani hari ini."
                        ),
                        Lang::En => format!(
                            "Forecast: all {waiting} waiting at this counter can be served today."
                        ),
                    });
                } else if waiting > 0 {
                    let served = answer.expected_served.min(waiting);
                    self.say(&match self.out.lang {
                        Lang::Id => format!(
                            "Perkiraan: dari {waiting} yang menunggu di loket ini, {served} dapat dilayani hari ini; \
                             nomor ke-{} dst. sebaiknya diarahkan ke aktivasi IKD sekarang.",
                            served + 1
                        ),
                        Lang::En => format!(
                            "Forecast: of {waiting} waiting at this counter, {served} can be served today; \
                             from number {} on, send them to IKD activation now.",
                            served + 1
                        ),
                    });
                }
            }
            Err(failure) => self.out.notice(&failure.human(self.out.lang)),
        }
    }

    /// Asks for the NIK until it has 16 digits; `None` when the officer gives up (empty line).
    async fn ask_nik(&mut self) -> Option<String> {
        let lang = self.out.lang;
        loop {
            let line = self.input.ask("NIK: ").await?;
            if line.is_empty() {
                return None;
            }
            let normalized = nik::normalize(&line);
            if normalized.len() == nik::NIK_LEN && normalized.bytes().all(|b| b.is_ascii_digit()) {
                return Some(normalized);
            }
            self.say(lang.t(
                "NIK harus 16 digit angka. Ulangi (Enter kosong = batal).",
                "A NIK has 16 digits. Try again (empty line = back).",
            ));
        }
    }

    async fn ask_reason(&mut self) -> Option<Reason> {
        let lang = self.out.lang;
        loop {
            let line = self.input.ask(&reason_menu(lang)).await?;
            if line.is_empty() {
                return None;
            }
            if let Some(reason) = vocab::parse_reason(&line) {
                return Some(reason);
            }
            self.say(lang.t("Alasan tidak dikenal.", "Unknown reason."));
        }
    }

    async fn ask_ikd(&mut self) -> Option<IkdStatus> {
        let lang = self.out.lang;
        let prompt = lang.t(
            "IKD (a = aktif, b = belum aktif, d = dikecualikan, Enter = tidak dicek): ",
            "IKD (a = active, n = not active, e = exempt, Enter = not checked): ",
        );
        loop {
            let line = self.input.ask(prompt).await?;
            if let Some(status) = vocab::parse_ikd(&line) {
                return Some(status);
            }
            self.say(lang.t("Pilihan IKD tidak dikenal.", "Unknown IKD choice."));
        }
    }

    async fn yes(&mut self, prompt: &str) -> bool {
        matches!(
            self.input
                .ask(prompt)
                .await
                .map(|l| l.to_ascii_lowercase())
                .as_deref(),
            Some("y" | "ya" | "yes" | "iya")
        )
    }

    /// Reserves and shows the answer; None when no decision came (an error), else the referral
    /// cause, if referred.
    async fn reserve_once(
        &mut self,
        nik: &str,
        reason: Reason,
        ikd: IkdStatus,
    ) -> Option<Option<ReferralCause>> {
        let request_id = random_request_id("r");
        match self.term.reserve(nik, reason, ikd, &request_id).await {
            Ok(response) => {
                self.shared.set_snapshot(response.quota.clone());
                let counter = self.term.counter().unwrap_or_default().to_string();
                print_outcome(&response, &counter, &self.out);
                match response.outcome {
                    // The applicant's earlier reservation, printed already or another counter's:
                    // not this screen's to print, commit or cancel (print_outcome said so).
                    Some(Outcome::Reservation(reservation))
                        if do_not_print(&reservation, &counter, &self.out).is_some() =>
                    {
                        Some(None)
                    }
                    Some(Outcome::Reservation(reservation)) => {
                        if reservation.state() == ReservationState::Held {
                            self.open_hold = Some(reservation.reservation_id.clone());
                        }
                        self.last_reservation = Some(reservation.reservation_id);
                        self.say(self.out.t(
                            "Setelah kartu dicetak ketik c; jika pemohon pergi ketik x.",
                            "Type c once the card is printed; x if the applicant left.",
                        ));
                        Some(None)
                    }
                    Some(Outcome::IkdReferral(referral)) => Some(Some(referral.cause())),
                    None => None,
                }
            }
            Err(failure) => {
                failure.report(&self.out);
                if failure.unanswered() {
                    self.say(self.out.t(
                        "Belum ada keputusan: JANGAN cetak. Tekan Enter dan masukkan NIK yang sama lagi (aman, tidak akan dobel).",
                        "No decision yet: do NOT print. Press Enter and give the same NIK again (safe, never twice).",
                    ));
                }
                // Served today at another service point or office: decided, not to be served
                // here, so the applicant leaves this queue like any other decision.
                if failure.reason() == Some("ALREADY_RESERVED_ELSEWHERE") {
                    return Some(None);
                }
                None
            }
        }
    }

    /// Next applicant: NIK, reason, IKD check, Reserve; on IKD_REQUIRED, record the activation
    /// and retry in one step.
    async fn next_applicant(&mut self) {
        self.remind_open_hold();
        let Some(nik) = self.ask_nik().await else {
            return;
        };
        // c, x and rusak without an id act on this applicant's reservation only: never on the
        // one before, whose card may be printing (a reflexive x after this applicant's referral
        // would cancel it). Cleared once a new NIK is given, so an Enter too many keeps it.
        self.last_reservation = None;
        let Some(reason) = self.ask_reason().await else {
            return;
        };
        let Some(ikd) = self.ask_ikd().await else {
            return;
        };
        // No decision (an error): the same applicant is still waiting, and comes again.
        let Some(cause) = self.reserve_once(&nik, reason, ikd).await else {
            return;
        };
        // One applicant less in the queue, whatever the decision.
        let waiting = self.shared.waiting.load(Ordering::Relaxed);
        if waiting > 0 {
            self.shared.waiting.store(waiting - 1, Ordering::Relaxed);
            self.report_waiting(false).await;
        }
        if cause != Some(ReferralCause::IkdRequired) {
            return;
        }
        let prompt = self.out.t(
            "IKD sudah diaktifkan sekarang di loket? Catat aktivasi dan pesan ulang [y/T]: ",
            "IKD activated now at this counter? Record it and reserve again [y/N]: ",
        );
        if !self.yes(prompt).await {
            return;
        }
        match self.term.record_ikd_activation(&nik).await {
            Ok(answer) => {
                if self.out.json {
                    self.out.json(&json!({
                        "outcome": "ikd_activation_recorded",
                        "masked_nik": answer.masked_nik,
                        "activated_at": self.out.zone.rfc3339(answer.activated_at.as_ref()),
                    }));
                } else {
                    self.say(&format!(
                        "{} {} ({})",
                        self.out.t(
                            "Aktivasi IKD dicatat untuk NIK",
                            "IKD activation recorded for NIK"
                        ),
                        answer.masked_nik,
                        self.out.zone.time(answer.activated_at.as_ref())
                    ));
                }
                self.reserve_once(&nik, reason, IkdStatus::Active).await;
            }
            Err(failure) => failure.report(&self.out),
        }
    }

    /// Tells, once, of the newest hold that was neither marked printed nor cancelled, and of
    /// every c that got no answer, until one does.
    fn remind_open_hold(&mut self) {
        if !self.unconfirmed_prints.is_empty() {
            let ids = self.unconfirmed_prints.join(", ");
            self.say(&format!(
                "{} {ids}: {}",
                self.out.t(
                    "Perhatian: cetak BELUM tercatat untuk",
                    "Note: printing is NOT recorded yet for",
                ),
                self.out.t(
                    "ketik c ID untuk masing-masing saat server menjawab (aman, tidak tercatat dua kali).",
                    "type c ID for each once a server answers (safe, never recorded twice).",
                ),
            ));
            if self
                .open_hold
                .as_ref()
                .is_some_and(|id| self.unconfirmed_prints.contains(id))
            {
                self.open_hold = None;
            }
        }
        if let Some(id) = self.open_hold.take() {
            self.say(&format!(
                "{} {id} {} {id}.",
                self.out.t("Perhatian: pemesanan", "Note: reservation"),
                self.out.t(
                    "belum ditandai dicetak (c) atau dibatalkan (x). Jika kartunya sudah dicetak, ketik c",
                    "was neither marked printed (c) nor cancelled (x). If its card is printed, type c",
                ),
            ));
        }
    }

    /// Reads the prints left unrecorded by an earlier screen of this counter, and tells of them.
    fn load_unrecorded(&mut self) {
        let Some(path) = self.unrecorded_file.clone() else {
            return;
        };
        match crate::unrecorded::load(&path, MAX_UNANSWERED) {
            Ok(ids) if !ids.is_empty() => {
                self.unconfirmed_prints = ids;
                self.remind_open_hold();
            }
            Ok(_) => {}
            Err(err) => self.say(&format!(
                "{} {}: {err}",
                self.out.t(
                    "Daftar cetak yang belum tercatat tidak terbaca dari",
                    "Cannot read the list of unrecorded prints from",
                ),
                path.display()
            )),
        }
    }

    /// Keeps the list of unrecorded prints in its file after it changed; a file that cannot be
    /// written is told once (the list stays on screen).
    fn save_unrecorded(&mut self) {
        let Some(path) = &self.unrecorded_file else {
            return;
        };
        if let Err(err) = crate::unrecorded::save(path, &self.unconfirmed_prints)
            && !self.unrecorded_warned
        {
            self.unrecorded_warned = true;
            let text = format!(
                "{} {}: {err}",
                self.out.t(
                    "Daftar cetak yang belum tercatat tidak bisa disimpan ke",
                    "Cannot keep the list of unrecorded prints in",
                ),
                path.display()
            );
            self.say(&text);
        }
    }

    /// After c or x on `id` answered: no longer an open hold.
    fn settled(&mut self, id: &str) {
        if self.open_hold.as_deref() == Some(id) {
            self.open_hold = None;
        }
    }

    fn target(&self, given: Option<&str>) -> Option<String> {
        match given {
            Some(id) => Some(id.to_string()),
            None => {
                if self.last_reservation.is_none() {
                    self.say(self.out.t(
                        "Sebutkan ID pemesanan (pemohon ini belum punya pemesanan; lihat: hold).",
                        "Give the reservation id (this applicant has no reservation; see: holds).",
                    ));
                }
                self.last_reservation.clone()
            }
        }
    }

    async fn commit(&mut self, given: Option<&str>) {
        let Some(id) = self.target(given) else { return };
        let answer = self.term.commit(&id).await;
        // Any answer settles an unconfirmed print: recorded, or refused for good.
        if !matches!(&answer, Err(failure) if failure.unanswered()) {
            self.unconfirmed_prints.retain(|x| *x != id);
        }
        match answer {
            Ok(answer) => {
                self.settled(&id);
                self.shared.set_snapshot(answer.quota.clone());
                if let Some(r) = &answer.reservation {
                    if self.out.json {
                        self.out.json(&json!({"outcome": "committed", "reservation": reservation_json(r, self.out.zone)}));
                    } else {
                        self.say(&reservation_line(r, &self.out));
                    }
                }
            }
            Err(failure) => {
                if self.out.json {
                    failure.report(&self.out);
                } else {
                    self.out.notice(&failure.human_for_commit(self.out.lang));
                }
                if failure.unanswered() {
                    self.say(self.out.t(
                        "Cetak belum tercatat: ketik c lagi (aman, tidak tercatat dua kali).",
                        "The print is not recorded yet: type c again (safe, never recorded twice).",
                    ));
                    if let Some(dropped) = keep_last(&mut self.unconfirmed_prints, id) {
                        self.say(&format!(
                            "{} {dropped}: {}",
                            self.out.t(
                                "Terlalu banyak cetak yang belum tercatat; tidak lagi diingatkan untuk",
                                "Too many unrecorded prints; no longer reminded of",
                            ),
                            self.out.t(
                                "catat sendiri (c ID) atau beri tahu supervisor.",
                                "record it yourself (c ID) or tell the supervisor.",
                            ),
                        ));
                    }
                }
            }
        }
    }

    async fn cancel(&mut self, given: Option<&str>) {
        let Some(id) = self.target(given) else { return };
        // x sits beside c: a cancel of a card already printed would put a blank that is gone
        // back into the stock. Asked, and only y cancels.
        let prompt = format!(
            "{} {id}? {} ",
            self.out.t("Batalkan pemesanan", "Cancel reservation"),
            self.out.t(
                "Hanya jika kartu BELUM dicetak [y/T]:",
                "Only if the card is NOT printed [y/N]:",
            ),
        );
        if !self.yes(&prompt).await {
            self.say(self.out.t("Tidak dibatalkan.", "Not cancelled."));
            return;
        }
        let answer = self.term.cancel(&id, "cancelled at the counter").await;
        // Answered either way (cancelled, or refused as printed): not an unrecorded print any
        // more.
        if !matches!(&answer, Err(failure) if failure.unanswered()) {
            self.unconfirmed_prints.retain(|x| *x != id);
        }
        match answer {
            Ok(answer) => {
                self.settled(&id);
                self.shared.set_snapshot(answer.quota.clone());
                if let Some(r) = &answer.reservation {
                    if self.out.json {
                        self.out.json(&json!({"outcome": "cancelled", "reservation": reservation_json(r, self.out.zone)}));
                    } else {
                        self.say(&reservation_line(r, &self.out));
                    }
                }
            }
            Err(failure) => failure.report(&self.out),
        }
    }

    /// `rusak`: the same report (reservation and reason) as one sent earlier without an answer
    /// reuses that report's request id, whatever came in between.
    async fn spoiled(&mut self, words: &[&str]) {
        let mut reason = None;
        let mut id = None;
        // `rusak stok ALASAN`: a blank spoiled outside any reservation (found defective in
        // stock, or printed on a hold that is no longer held).
        let mut from_stock = false;
        // `rusak ID lainnya KETERANGAN...`: with the reason OTHER, the rest of the line says
        // what happened (the server requires it).
        let mut note = String::new();
        for (at, word) in words.iter().enumerate() {
            match vocab::parse_spoilage(word) {
                Some(r) if reason.is_none() => {
                    reason = Some(r);
                    if r == SpoilageReason::Other {
                        note = words[at + 1..].join(" ");
                        break;
                    }
                }
                _ if matches!(word.to_lowercase().as_str(), "stok" | "stock") => from_stock = true,
                _ => id = Some(*word),
            }
        }
        let Some(reason) = reason else {
            self.say(self.out.t(
                "Sebutkan alasannya: salah-cetak, chip-gagal, cacat-pabrik, rusak-penyimpanan, lainnya.",
                "Give the reason: misprint, chip, defect, storage, other.",
            ));
            return;
        };
        if reason == SpoilageReason::Other && note.trim().is_empty() {
            self.say(self.out.t(
                "Dengan alasan lainnya, tulis keterangannya sesudahnya: rusak <ID> lainnya <apa yang terjadi>.",
                "With the reason other, say what happened after it: spoiled <ID> other <what happened>.",
            ));
            return;
        }
        let id = if from_stock {
            String::new()
        } else {
            let Some(id) = self.target(id) else { return };
            id
        };
        self.unanswered_spoiled
            .retain(|u| u.sent.elapsed() < UNANSWERED_SPOILED_FOR);
        let mut earlier = None;
        if let Some(at) = self
            .unanswered_spoiled
            .iter()
            .position(|u| u.reservation_id == id && u.reason == reason)
        {
            let prompt = format!(
                "{} ",
                self.out.t(
                    "Laporan rusak yang sama sebelumnya belum terjawab. Apakah ini blangko yang SAMA (kirim ulang laporan itu)? [y/T]:",
                    "An earlier report like this got no answer. Is this the SAME blank (send that report again)? [y/N]:",
                )
            );
            if self.yes(&prompt).await {
                earlier = Some(self.unanswered_spoiled.remove(at));
            }
        }
        let request_id = match earlier {
            Some(UnansweredSpoiled { request_id, .. }) => {
                self.say(&format!(
                    "{} {request_id})",
                    self.out.t(
                        "Mengulang laporan sebelumnya yang belum terjawab (ID",
                        "Sending the earlier unanswered report again (id",
                    )
                ));
                request_id
            }
            _ => Terminal::new_spoiled_request_id(),
        };
        match self.term.spoiled(&id, reason, "", &note, &request_id).await {
            Ok(answer) => {
                if self.out.json {
                    self.out.json(&json!({
                        "outcome": if answer.ikd_referral.is_some() { "ikd_referral" } else { "spoiled_recorded" },
                        "reservation": answer.reservation.as_ref().map(|r| reservation_json(r, self.out.zone)),
                        "on_hand": answer.on_hand,
                        "available": answer.available,
                        "replayed": answer.replayed,
                    }));
                } else {
                    if answer.replayed {
                        self.say(self.out.t(
                            "Laporan ini sudah tercatat sebelumnya (sekali saja, blangko tidak dicatat dua kali); berikut keadaannya sekarang:",
                            "This report was already recorded (once: the blank is not written off twice); here is how things are now:",
                        ));
                    }
                    self.say(&format!(
                        "{} · {} {}",
                        self.out
                            .t("Blangko rusak dicatat", "Spoiled blank recorded"),
                        self.out.t("tersedia", "available"),
                        answer.available
                    ));
                    if let Some(r) = &answer.reservation {
                        // Said above when the report is a repeat: the reservation as it is now.
                        self.say(&reservation_state_line(r, &self.out));
                    }
                    if let Some(referral) = &answer.ikd_referral {
                        for line in crate::output::referral_lines(referral, &self.out) {
                            self.say(&line);
                        }
                    }
                }
            }
            Err(failure) => {
                if self.out.json {
                    failure.report(&self.out);
                } else {
                    self.out.notice(&failure.human_for_spoiled(self.out.lang));
                }
                if failure.unanswered() {
                    self.say(self.out.t(
                        "Laporan ini mungkin sudah tercatat: saat server menjawab (dalam 30 menit), ketik perintah yang sama lagi dan jawab y (blangko yang sama); blangko tidak akan tercatat rusak dua kali.",
                        "This report may have been recorded: once a server answers (within 30 minutes), type the same command again and answer y (the same blank); the blank will not be written off twice.",
                    ));
                    let unanswered = UnansweredSpoiled {
                        reservation_id: id,
                        reason,
                        request_id,
                        sent: std::time::Instant::now(),
                    };
                    if let Some(dropped) = keep_last(&mut self.unanswered_spoiled, unanswered) {
                        self.say(&format!(
                            "{} {}",
                            self.out.t(
                                "Terlalu banyak laporan rusak tanpa jawaban; tidak lagi diingat: ID permintaan",
                                "Too many unanswered spoiled reports; no longer kept: request id",
                            ),
                            dropped.request_id
                        ));
                    }
                }
            }
        }
    }

    async fn holds(&mut self) {
        match self.term.holds().await {
            Ok(holds) if holds.is_empty() => {
                self.say(
                    self.out
                        .t("Tidak ada pemesanan yang ditahan.", "No open holds."),
                );
            }
            Ok(holds) => {
                for hold in &holds {
                    self.say(&format!("  {}", reservation_line(hold, &self.out)));
                }
            }
            Err(failure) => failure.report(&self.out),
        }
    }

    async fn show_quota(&mut self) {
        match self.term.quota().await {
            Ok(q) => {
                self.say(&snapshot_line(&q, &self.out));
                self.shared.set_snapshot(Some(q));
            }
            Err(failure) => failure.report(&self.out),
        }
    }

    /// One command line; false to quit.
    async fn command(&mut self, line: &str) -> bool {
        // The unrecorded prints are kept in their file whenever a command changed them.
        let before = self.unconfirmed_prints.clone();
        let go_on = self.run_command(line).await;
        if self.unconfirmed_prints != before {
            self.save_unrecorded();
        }
        go_on
    }

    /// [`Screen::command`] without the keeping of the unrecorded prints.
    async fn run_command(&mut self, line: &str) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        let command = words.first().map(|w| w.to_lowercase()).unwrap_or_default();
        let rest = words.get(1..).unwrap_or(&[]);
        match command.as_str() {
            "" | "n" | "next" | "berikut" | "berikutnya" => self.next_applicant().await,
            "antrean" | "antrian" | "queue" | "q" | "a" => {
                match rest.first().and_then(|w| w.parse::<u32>().ok()) {
                    Some(n) if n <= 100_000 => {
                        self.shared.waiting.store(n, Ordering::Relaxed);
                        self.report_waiting(true).await;
                    }
                    _ => self.say(self.out.t(
                        "Contoh: antrean 25 (jumlah yang menunggu di loket ini).",
                        "Example: queue 25 (applicants waiting at this counter).",
                    )),
                }
            }
            "c" | "commit" | "cetak" => self.commit(rest.first().copied()).await,
            "x" | "cancel" | "batal" => self.cancel(rest.first().copied()).await,
            "rusak" | "spoiled" | "s" => self.spoiled(rest).await,
            "h" | "hold" | "holds" => self.holds().await,
            "kuota" | "quota" | "status" => self.show_quota().await,
            "?" | "help" | "bantuan" => self.say(help_text(self.out.lang)),
            // No one-letter alias: k is a slip away from kuota.
            "keluar" | "quit" | "exit" => {
                self.remind_open_hold();
                return false;
            }
            _ => self.say(self.out.t(
                "Perintah tidak dikenal; ketik bantuan.",
                "Unknown command; type help.",
            )),
        }
        true
    }
}

/// Runs the interactive counter screen until `keluar`/`quit` or the end of input.
pub async fn run_counter(
    term: &Terminal,
    out: Out,
    waiting: u32,
    unrecorded_file: Option<&std::path::Path>,
) -> ExitCode {
    let (office, service_point, counter) =
        match (term.office(), term.service_point(), term.counter()) {
            (Ok(o), Ok(s), Ok(c)) => (o.to_string(), s.to_string(), c.to_string()),
            (Err(f), _, _) | (_, Err(f), _) | (_, _, Err(f)) => return f.exit(&out),
        };
    let first = match term.quota().await {
        Ok(q) => q,
        Err(failure) => return failure.exit(&out),
    };
    // The first answer brought the server's clock: a PC clock a minute or more off is said once.
    if let Some(warning) = crate::server_clock::offset_ms()
        .and_then(|ms| crate::server_clock::warning(ms / 1000, out.lang))
    {
        out.notice(&warning);
    }
    let shared = Arc::new(Shared::default());
    shared.waiting.store(waiting, Ordering::Relaxed);
    let local_date = first.local_date.clone();
    shared.set_snapshot(Some(first));

    // Live quota in the background.
    let watcher = {
        let term = term.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let followed = follow(
                &term,
                u32::MAX,
                |snapshot| {
                    shared.set_snapshot(Some(snapshot.clone()));
                    true
                },
                |_, _| {},
            )
            .await;
            // Refused for good (the service point gone, say): the screen's quota is then only
            // refreshed with the queue report, and the officer is told.
            if let Err(failure) = followed {
                out.notice(&format!(
                    "{} {}",
                    out.t(
                        "Tampilan kuota tidak lagi diperbarui seketika; kini hanya tiap 60 detik:",
                        "The quota on screen no longer updates at once; now only every 60 seconds:",
                    ),
                    failure.human(out.lang)
                ));
            }
        })
    };
    // Keep the queue report alive.
    let refresher = {
        let term = term.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(REPORT_REFRESH);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let waiting = shared.waiting.load(Ordering::Relaxed);
                if let Ok(answer) = term.report_queue(waiting).await {
                    shared.reported.store(waiting, Ordering::Relaxed);
                    shared.set_snapshot(answer.quota);
                }
            }
        })
    };

    let mut screen = Screen {
        term: term.clone(),
        out,
        shared,
        input: Input::start(out),
        last_reservation: None,
        open_hold: None,
        unanswered_spoiled: Vec::new(),
        unconfirmed_prints: Vec::new(),
        unrecorded_file: unrecorded_file
            .map(std::path::Path::to_path_buf)
            .or_else(|| crate::unrecorded::default_path(&office, &counter)),
        unrecorded_warned: false,
    };
    screen.say(&format!(
        "== blangko-counter · {} {counter} · {office}/{service_point} · {local_date} ({}) ==",
        out.t("loket", "counter"),
        out.zone.abbreviation()
    ));
    screen.say(help_text(out.lang));
    // Prints left unrecorded when this counter's screen last closed (or its PC stopped).
    screen.load_unrecorded();
    screen.report_waiting(waiting > 0).await;

    loop {
        let status = screen.status_line();
        screen.say(&status);
        let Some(line) = screen.input.ask("> ").await else {
            break;
        };
        if !screen.command(&line).await {
            break;
        }
    }
    // This counter closes: its queue report no longer counts.
    screen.shared.waiting.store(0, Ordering::Relaxed);
    screen.report_waiting(false).await;
    watcher.abort();
    refresher.abort();
    screen.say(out.t("Sampai jumpa.", "Goodbye."));
    ExitCode::from(EXIT_OK)
}
