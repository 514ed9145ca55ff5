//! blangko-counter: the counter-terminal client of blangko.
//!
//! The client is thin (every decision is the server's) and queue-aware. Map of the crate:
//!
//! - [`cli`]: the command line (clap; every option also a `BLANGKO_*` environment variable).
//! - [`connect`]: endpoints, failover, per-call time-out, safe retries with backoff, request ids.
//! - [`terminal`]: [`Terminal`], one counter's typed calls (what other programs and tests use).
//! - [`commands`]: one file per one-shot command (`status`, `reserve`, `commit`, ..., `watch`).
//! - [`queue`]: a day's queue from a CSV file: forecast, reservations, results file, resume.
//! - [`interactive`]: the line-based officer screen (`counter`).
//! - [`forecast`]: the queue forecast rule and ticket ranges.
//! - [`output`]: texts in Bahasa Indonesia and English, local times, the JSON shapes.
//! - [`error`]: failures and exit codes; [`nik`]: masking and checks; [`vocab`]: enum words.
//! - [`server_clock`]: the server's time from its answers, for a hold's time left.

// A `Failure` is made once per failed command and carries what the officer is shown (the
// server's message, reason, retry delay, the call's id): its size does not matter on that path,
// and boxing it would only add an allocation.
#![allow(clippy::result_large_err)]
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod connect;
pub mod error;
pub mod forecast;
pub mod interactive;
pub mod nik;
pub mod output;
pub mod queue;
pub mod server_clock;
pub mod terminal;
pub mod unrecorded;
pub mod vocab;

use std::process::ExitCode;
use std::time::Duration;

pub use cli::{Cli, Command};
pub use connect::{ConnectOptions, Connection};
pub use error::Failure;
pub use output::{Lang, Out, Zone};
pub use terminal::{Identity, Terminal};

/// The JSON library of the `--json` shapes, for programs (and tests) that read them.
pub use serde_json;

/// The whole program: the command line of this process, parsed and run; its exit code.
pub async fn main() -> ExitCode {
    use clap::Parser;
    match Cli::try_parse() {
        Ok(cli) => run(cli).await,
        Err(err) => refused(&err),
    }
}

/// Prints clap's answer to a command line it did not run (help, version, or an error) and gives
/// its exit code. An error repeats the words it refused, and a NIK typed in the wrong place
/// (`reserve 3275014101900001` without `--nik`) is one of them: it is masked, as everywhere else.
/// Help and version (on stdout) are printed as they are: their example NIK is made up.
fn refused(err: &clap::Error) -> ExitCode {
    use std::io::Write;
    let rendered = err.render().to_string();
    let written = if err.use_stderr() {
        let masked = blangko_domain::nik::mask_nik_stretches(&rendered);
        std::io::stderr().write_all(masked.as_bytes())
    } else {
        std::io::stdout().write_all(rendered.as_bytes())
    };
    // A closed pipe (`| head`) is no reason for a different code.
    drop(written);
    ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2))
}

/// Runs one parsed command line and gives the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let out = Out {
        lang: cli.lang,
        json: cli.json,
        zone: cli.zone,
    };
    let options = ConnectOptions {
        servers: cli.servers.clone(),
        call_timeout: Duration::from_secs_f64(cli.timeout_secs),
        token: cli.token.clone(),
        retries: cli.retries,
        tls: cli.ca.clone().map(|ca| connect::TlsFiles {
            ca,
            cert: cli.cert.clone(),
            key: cli.key.clone(),
        }),
    };
    let conn = match Connection::new(&options) {
        Ok(conn) => conn,
        Err(error) => {
            let error = error.to_string();
            return Failure::bad_field("server", &error, &error).exit(&out);
        }
    };
    for url in conn.plaintext_token_urls() {
        out.notice(&format!(
            "{} {url}: {}",
            out.t("PERINGATAN:", "WARNING:"),
            out.t(
                "token dan NIK dikirim TANPA enkripsi (http://) ke host di luar komputer ini; pakai https:// dengan --ca",
                "the token and NIKs go UNENCRYPTED (http://) to a host outside this computer; use https:// with --ca"
            )
        ));
    }
    let term = Terminal::new(
        conn,
        Identity {
            office: cli.office.clone(),
            service_point: cli.service_point.clone(),
            counter: cli.counter.clone(),
        },
    );
    match &cli.command {
        Command::Status => commands::status::run(&term, out).await,
        Command::Announce => commands::announce::run(&term, out).await,
        Command::Reserve(args) => commands::reserve::run(&term, out, args).await,
        Command::Commit { reservation_id } => {
            commands::reservation::commit(&term, out, reservation_id).await
        }
        Command::Cancel {
            reservation_id,
            note,
        } => {
            commands::reservation::cancel(&term, out, reservation_id, note.as_deref().unwrap_or(""))
                .await
        }
        Command::Spoiled {
            reservation_id,
            reason,
            report,
            note,
            request_id,
        } => {
            commands::reservation::spoiled(
                &term,
                out,
                reservation_id.as_deref().unwrap_or(""),
                *reason,
                report.as_deref().unwrap_or(""),
                note.as_deref().unwrap_or(""),
                request_id.as_deref(),
            )
            .await
        }
        Command::Holds => commands::holds::run(&term, out).await,
        Command::Report(args) => {
            let options = commands::report::ReportOptions {
                from: args.from.clone(),
                to: args.to.clone(),
                format: args.format,
                out: args.out.clone(),
            };
            commands::report::run(&term, out, &options).await
        }
        Command::Ledger { verify } => commands::ledger::run(&term, out, *verify).await,
        Command::Watch(args) => commands::watch::run(&term, out, args).await,
        Command::Queue(args) => {
            let options = queue::QueueOptions {
                file: args.file.clone(),
                results: args.results.clone(),
                forecast_only: args.forecast_only,
                pace: Duration::from_millis(args.pace_ms),
            };
            queue::run_queue(&term, out, &options).await
        }
        Command::Counter {
            waiting,
            unrecorded_file,
        } => interactive::run_counter(&term, out, *waiting, unrecorded_file.as_deref()).await,
    }
}
