//! The command line: every option also an environment variable (`BLANGKO_*`).

use std::path::PathBuf;

use blangko_proto::v1::{IkdStatus, Reason, SpoilageReason};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, Subcommand};

use crate::commands::report::ReportFormat;
use crate::output::{Lang, Zone};
use crate::vocab::{parse_ikd_arg, parse_reason_arg, parse_spoilage_arg};

const EXAMPLES: &str = "\
Examples / Contoh:
  # Is the server up, and how much of today's quota is left?
  blangko-counter --office 3275 --service-point mpp status

  # One applicant (exit 0 reserved, 3 referred to IKD, 4 already printed, held for another
  # counter, no longer held, or served at another service point: do not print here, 2 bad
  # input, 1 other error)
  export BLANGKO_SERVER=https://10.1.2.3:50051,https://10.1.2.4:50051 BLANGKO_CA=ca.pem
  export BLANGKO_OFFICE=3275 BLANGKO_SERVICE_POINT=mpp BLANGKO_COUNTER=loket-3
  blangko-counter reserve --nik 3275014101900001 --reason new-recording --ikd not-active
  blangko-counter commit R7270f87e62fd... # after the card is printed
  blangko-counter cancel R7270f87e62fd... # the applicant left
  blangko-counter spoiled R7270f87e62fd... --reason chip --report BA-2026/117
  blangko-counter holds                   # this counter's open holds, e.g. after a crash

  # Process the morning queue (ticket,nik,reason with a header row); safe to re-run
  blangko-counter queue antrean-2026-11-29.csv --results hasil.csv

  # Live quota, one line per change; the interactive counter screen
  blangko-counter watch
  blangko-counter counter --waiting 25

  # The month's stock report: table, CSV for a spreadsheet, SVG chart
  blangko-counter --office 3275 report --from 2026-11-01 --to 2026-11-29
  blangko-counter --office 3275 report --from 2026-11-01 --to 2026-11-29 --format csv --out stok.csv
  blangko-counter --office 3275 report --from 2026-11-01 --to 2026-11-29 --format svg --out stok.svg

  # Machine output, English texts, an office in WITA
  blangko-counter --json --lang en --zone Asia/Makassar status";

/// blangko-counter: the counter terminal of blangko (blank e-KTP rationing).
///
/// Reserves one blank card per applicant, or refers the applicant to IKD (digital ID) activation
/// when today's quota or the stock is gone. Every decision is the server's; this client spreads
/// calls over the servers given, fails over, and retries safely (same request id).
///
/// Times are shown in the office's local time: give --zone (Asia/Jakarta = WIB, the default;
/// Asia/Makassar = WITA; Asia/Jayapura = WIT), because reservation answers carry no time zone.
#[derive(Debug, Parser)]
#[command(name = "blangko-counter", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Server URL; repeat (or separate with commas) for several replicas: calls are spread over
    /// them and fail over when one is down.
    #[arg(
        long = "server",
        env = "BLANGKO_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub servers: Vec<String>,

    /// Office: the 4-digit Kemendagri regency/city code, e.g. 3275 (Kota Bekasi).
    #[arg(long, env = "BLANGKO_OFFICE", global = true)]
    pub office: Option<String>,

    /// Service point of the office, e.g. mpp.
    #[arg(long, env = "BLANGKO_SERVICE_POINT", global = true)]
    pub service_point: Option<String>,

    /// This counter (loket), e.g. loket-3. Needed to reserve and to list holds.
    #[arg(long, env = "BLANGKO_COUNTER", global = true)]
    pub counter: Option<String>,

    /// Language of the output: id (Bahasa Indonesia) or en.
    #[arg(long, env = "BLANGKO_LANG", value_enum, default_value_t = Lang::Id, global = true)]
    pub lang: Lang,

    /// Machine output: one JSON object per result on stdout.
    #[arg(long, env = "BLANGKO_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new(), global = true)]
    pub json: bool,

    /// Time-out of one call on one server, in seconds.
    #[arg(long = "timeout", env = "BLANGKO_TIMEOUT", default_value_t = 5.0, value_parser = parse_seconds, global = true)]
    pub timeout_secs: f64,

    /// Retry rounds over all servers after the first, for UNAVAILABLE and DEADLINE_EXCEEDED, and
    /// for a connection that broke before the server answered.
    #[arg(long, env = "BLANGKO_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10), global = true)]
    pub retries: u32,

    /// The office's time zone for the times shown: Asia/Jakarta (WIB), Asia/Makassar (WITA) or
    /// Asia/Jayapura (WIT).
    #[arg(long, env = "BLANGKO_ZONE", default_value = "Asia/Jakarta", value_parser = Zone::parse_arg, global = true)]
    pub zone: Zone,

    /// Bearer token, sent as `authorization: Bearer …` when given.
    #[arg(long, env = "BLANGKO_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// TLS: the CA certificate (PEM) that signs the server's certificate. Given, servers are
    /// reached over https (a bare host:port gets https://; an http:// URL is refused). An
    /// https:// server needs it. A token sent over http:// to a host other than this computer
    /// gets a warning on stderr.
    #[arg(long, env = "BLANGKO_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,

    /// Mutual TLS: this client's certificate (PEM), for a server started with --tls-client-ca.
    #[arg(
        long,
        env = "BLANGKO_CERT",
        global = true,
        requires = "ca",
        requires = "key"
    )]
    pub cert: Option<std::path::PathBuf>,

    /// Mutual TLS: the private key (PEM) of --cert.
    #[arg(long, env = "BLANGKO_KEY", global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A positive number of seconds, at most a day.
fn parse_seconds(word: &str) -> Result<f64, String> {
    match word.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err(format!(
            "{word:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Server health and version, and today's quota of the service point (with --office and
    /// --service-point). Exit 1 when no server answers SERVING (a draining server answers
    /// NOT_SERVING).
    Status,

    /// Reserve a blank for one applicant (exit 0 reserved, 3 referred to IKD, 4 the applicant's
    /// earlier reservation, already printed, held for another counter, or, for a request sent
    /// again, cancelled or run out since: do not print here, 2 bad input).
    Reserve(ReserveArgs),

    /// Commit a reservation: the card was printed.
    Commit {
        /// The reservation id.
        #[arg(env = "BLANGKO_RESERVATION")]
        reservation_id: String,
    },

    /// Cancel a held reservation: the slot and the blank return.
    Cancel {
        /// The reservation id.
        #[arg(env = "BLANGKO_RESERVATION")]
        reservation_id: String,
        /// Why (kept in the ledger).
        #[arg(long, env = "BLANGKO_NOTE")]
        note: Option<String>,
    },

    /// Record a spoiled blank: on a held reservation (a reprint) or, without an id, a defective
    /// blank found in stock.
    Spoiled {
        /// The held reservation being printed; omit for a blank found defective in stock. (No
        /// environment variable: an id exported for commit or cancel would file a blank from
        /// stock against that applicant's hold.)
        reservation_id: Option<String>,
        /// misprint, chip-encoding-failure (chip), factory-defect (defect), storage-damage, other.
        #[arg(long, env = "BLANGKO_SPOILAGE_REASON", value_parser = parse_spoilage_arg)]
        reason: SpoilageReason,
        /// Reference of the destruction report (berita acara).
        #[arg(long = "report", env = "BLANGKO_REPORT")]
        report: Option<String>,
        /// Free text; required with --reason other (say what happened to the blank).
        #[arg(long, env = "BLANGKO_NOTE")]
        note: Option<String>,
        /// Idempotency key (default: a fresh random one). When a report got no answer, it is
        /// printed: run the command again with it, and the blank is not written off twice. (No
        /// environment variable: an exported id would make a second, real report a replay.)
        #[arg(long)]
        request_id: Option<String>,
    },

    /// This counter's open holds today, with the time left on each.
    Holds,

    /// Live quota snapshots, one line per change; reconnects after a server restart.
    Watch(WatchArgs),

    /// Process a queue file (CSV: ticket,nik,reason[,ikd] with a header row). Safe to re-run.
    ///
    /// First the forecast: this counter's waiting count is reported to the server (ReportQueue)
    /// and the applicants beyond this counter's share of today's remaining quota are told at once,
    /// by ticket number, to activate IKD. Then it reserves in queue order, keeps the forecast
    /// current from the live snapshot, and appends every outcome to the results file. Bad rows are
    /// reported with their line numbers, never skipped silently. Columns are found by their header
    /// names (ticket/tiket/antrean/antrian, or no/nomor when none of those is there; nik;
    /// reason/alasan; ikd); `,` `;` and tab separators are accepted. An applicant already printed
    /// today, or held for another counter, is recorded as do_not_print: no card is printed here;
    /// one holding a blank today at another service point or office as served_elsewhere (not
    /// printed here either; a re-run asks again, in case that hold was cancelled or ran out).
    /// Tickets an earlier run already served today (the server lists the reservations its
    /// tickets' request ids made) are left out of the forecast: they take no more quota.
    ///
    /// After a crash or a dropped connection, run the same command again: request ids are derived
    /// from office, service point, counter, local date and ticket
    /// (q-3275-mpp-loket-1-20261129-A017), so nobody is reserved twice, and tickets already
    /// handled today for the same applicant are skipped; a ticket number the results file shows
    /// used today for another applicant is refused with its line number. A results file changed
    /// by hand or by a spreadsheet stops the run (restore it: it says who was served or told).
    /// Without it, a re-run still reserves nobody twice; a ticket whose hold was cancelled or ran
    /// out since is reserved again.
    ///
    /// Exit 0 when every row was handled, 2 when some rows were invalid, 1 when the run stopped
    /// early or some rows ended in an error (the results file names them; a re-run tries them
    /// again).
    Queue(QueueArgs),

    /// The office's daily public notice of its blank stock (Bahasa Indonesia by default), with
    /// the verification code of its stock ledger. Needs --office.
    Announce,

    /// The office's (--office) audit ledger as JSON lines on stdout, one entry per line in chain
    /// order with its hashes; with --verify, the server recomputes the hash chain instead and
    /// the exit code is 0 when it is intact, 1 when not (the first broken entry is shown).
    Ledger {
        /// Verify the chain (VerifyLedger) instead of exporting it.
        #[arg(long)]
        verify: bool,
    },

    /// The office's (--office) daily stock report over a range of its local days (at most 366):
    /// opening stock, received, transfers in and out, printed, spoiled, stock-take differences,
    /// closing stock, IKD referrals and activations, and whether it all reconciles.
    ///
    /// As a table (Bahasa Indonesia by default; --json gives one JSON object), CSV with a header
    /// row and one row per day, or an SVG chart. Exit 0 when every day reconciles, 1 when some
    /// day does not (the days are named), 2 on bad input. Needs a supervisor, agency or admin
    /// token.
    Report(ReportArgs),

    /// Interactive counter screen, driven line by line from the keyboard (or stdin).
    ///
    /// Shows the remaining quota and this counter's forecast before every prompt. Commands:
    /// Enter or n (next applicant: NIK, reason, IKD check), antrean/queue N (applicants waiting
    /// here, reported to the server), c [ID] (card printed), x [ID] (cancel), rusak/spoiled [ID]
    /// REASON, hold/holds, kuota/quota, bantuan/help, keluar/quit. When the office requires IKD
    /// first, an IKD_REQUIRED referral offers to record the activation and reserve again at once.
    Counter {
        /// Applicants waiting at this counter at the start (reported to the server).
        #[arg(long, env = "BLANGKO_WAITING", default_value_t = 0)]
        waiting: u32,
        /// File that keeps the reservations whose "card printed" (c) got no answer, so that the
        /// screen still reminds of them after the PC restarts. Default:
        /// ~/.blangko-counter/belum-tercatat-OFFICE-COUNTER.txt.
        #[arg(long, env = "BLANGKO_UNRECORDED_FILE")]
        unrecorded_file: Option<std::path::PathBuf>,
    },
}

/// A NIK as the officer typed it. Its `Debug` shows the masked form only, so that no debug print
/// of the parsed arguments shows the NIK.
#[derive(Clone)]
pub struct TypedNik(pub String);

impl std::str::FromStr for TypedNik {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(TypedNik(text.to_string()))
    }
}

impl std::fmt::Debug for TypedNik {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", crate::nik::mask(&self.0))
    }
}

/// Arguments of `reserve`.
#[derive(Debug, clap::Args)]
pub struct ReserveArgs {
    /// The applicant's NIK (16 digits; spaces, dots and dashes are ignored). On a shared machine
    /// prefer BLANGKO_NIK or the interactive mode: other local users can read a command line.
    #[arg(long, env = "BLANGKO_NIK", hide_env_values = true)]
    pub nik: TypedNik,
    /// new-recording, first-time-voter, region-split, data-change, vulnerable, lost, damaged
    /// (or 1-7, or the Indonesian names: perekaman-baru, pemilih-pemula, ...).
    #[arg(long, env = "BLANGKO_REASON", value_parser = parse_reason_arg)]
    pub reason: Reason,
    /// The officer's IKD check: active, not-active or exempt.
    #[arg(long, env = "BLANGKO_IKD", value_parser = parse_ikd_arg)]
    pub ikd: Option<IkdStatus>,
    /// Idempotency key (default: a fresh random one). Re-using it replays the first answer. No
    /// environment variable, on purpose: an exported id would make every later applicant's
    /// Reserve a replay or a REQUEST_ID_REUSED refusal.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// First local day of the report, YYYY-MM-DD.
    #[arg(long, env = "BLANGKO_REPORT_FROM")]
    pub from: String,
    /// Last local day of the report, YYYY-MM-DD (inclusive; not after the office's today).
    #[arg(long, env = "BLANGKO_REPORT_TO")]
    pub to: String,
    /// table, csv or svg.
    #[arg(long, env = "BLANGKO_REPORT_FORMAT", value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Write the report to this file instead of stdout (an existing file is replaced).
    #[arg(long, env = "BLANGKO_REPORT_OUT")]
    pub out: Option<PathBuf>,
}

/// Arguments of `watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Stop after this many snapshots.
    #[arg(long, env = "BLANGKO_MAX_UPDATES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_updates: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long = "for", env = "BLANGKO_WATCH_FOR", value_parser = parse_seconds)]
    pub for_secs: Option<f64>,
    /// Give up after this many failed reconnects in a row.
    #[arg(long, env = "BLANGKO_MAX_RECONNECTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_reconnects: u32,
}

/// Arguments of `queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The queue: CSV with a header row; columns ticket, nik, reason and optionally ikd.
    #[arg(env = "BLANGKO_QUEUE_FILE")]
    pub file: PathBuf,
    /// Results file; `.json`/`.jsonl` gives JSON lines, anything else CSV. Default: next to the
    /// queue file, `<name>.results.csv`. Also the journal a re-run resumes from.
    #[arg(long, env = "BLANGKO_RESULTS")]
    pub results: Option<PathBuf>,
    /// Show the forecast and tell the applicants beyond the cut-off, but reserve nothing.
    #[arg(long, env = "BLANGKO_FORECAST_ONLY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub forecast_only: bool,
    /// Wait this many milliseconds between two applicants (0: as fast as the server answers).
    #[arg(long, env = "BLANGKO_PACE_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub pace_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_debug_print_of_the_parsed_arguments_shows_the_nik_masked() {
        let cli = Cli::try_parse_from([
            "blangko-counter",
            "reserve",
            "--nik",
            "3275014101900001",
            "--reason",
            "lost",
        ])
        .expect("valid arguments");
        let shown = format!("{cli:?}");
        assert!(!shown.contains("3275014101900001"), "{shown}");
        assert!(shown.contains("327501******0001"), "{shown}");
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn several_servers_and_defaults() {
        let cli = Cli::try_parse_from([
            "blangko-counter",
            "--server",
            "http://a:1",
            "--server",
            "http://b:2,http://c:3",
            "status",
        ]);
        let cli = match cli {
            Ok(cli) => cli,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cli.servers, ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(cli.lang, Lang::Id);
        assert_eq!(cli.zone, Zone::Wib);
        assert!(!cli.json);
    }

    #[test]
    fn reserve_parses_reason_and_ikd() {
        let cli = Cli::try_parse_from([
            "blangko-counter",
            "--lang",
            "en",
            "reserve",
            "--nik",
            "3275014101900001",
            "--reason",
            "pemilih-pemula",
            "--ikd",
            "not-active",
        ]);
        match cli.map(|c| c.command) {
            Ok(Command::Reserve(args)) => {
                assert_eq!(args.reason, Reason::FirstTimeVoter);
                assert_eq!(args.ikd, Some(IkdStatus::NotActive));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["blangko-counter", "reserve", "--nik", "1", "--reason", "x"])
                .is_err()
        );
    }
}
