//! `blangko-bench`: a load generator for blangko-server.
//!
//! It sets up its own offices and service points (quota large enough that the quota is not what
//! stops Reserve, unless `--quota` says otherwise), then runs, in ONE process and one run so the
//! figures compare as ratios:
//! - closed loop (`--concurrency` calls in flight) for throughput;
//! - open loop (`--rate` calls per second, arrivals on a fixed schedule) for latency, so that
//!   queueing delay shows instead of hiding behind a slowed-down client;
//!
//! for Reserve, GetQuota and grpc.health.v1 Health/Check, and prints throughput and
//! p50/p99/p99.9. Afterwards it checks the quota invariant on every service point it used, and
//! that the server's held and committed counts grew by exactly the reservations it acknowledged.
//! Any unexpected status, a Reserve answered with an earlier reservation (a NIK reserved before
//! the run), an over-issue or a count that does not match makes it exit 1. It never fails on a
//! timing.
//!
//! `--disk-probe DIR` measures the disk instead: the latency of `fdatasync` after each write, the
//! wait under every acknowledged Reserve on SQLite.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use blangko_counter::connect::CallMetadata;
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::stock_service_client::StockServiceClient;
use blangko_proto::v1::*;
use clap::Parser;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Most calls in flight the closed loop allows.
const MAX_CONCURRENCY: usize = 4096;
/// Longest phase.
const MAX_SECONDS: f64 = 600.0;
/// Most rounds of the phases (`--rounds`).
const MAX_ROUNDS: u32 = 50;
/// Longest wait for the server's fold of its Reserve journal between two rounds (a fold of a
/// few hundred thousand reservations takes seconds).
const FOLD_WAIT: Duration = Duration::from_secs(120);
/// The server's default limit of concurrent streams per connection
/// (`--max-streams-per-connection`): streams past it wait in the client for a free one.
const SERVER_STREAMS_PER_CONNECTION: usize = 256;
/// Most offices: ids 3201 + i must stay in a known province (32 to 36).
const MAX_OFFICES: u32 = 499;

/// A channel that sends the bearer token (`--token`) with every call.
type Ch = InterceptedService<Channel, CallMetadata>;

#[derive(Debug, Parser)]
#[command(
    name = "blangko-bench",
    version,
    about = "Load generator for blangko-server"
)]
struct Args {
    /// Server URL; repeat for several replicas (calls are spread round-robin).
    #[arg(
        long = "server",
        env = "BLANGKO_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    servers: Vec<String>,
    /// Calls in flight in the closed loop.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per closed-loop phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Arrivals per second in the open-loop phase (0 skips it).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// gRPC connections per server (HTTP/2 multiplexes calls over each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Offices to spread Reserves over (ids 3201, 3202, ...).
    #[arg(long, default_value_t = 1)]
    offices: u32,
    /// Service points per office.
    #[arg(long, default_value_t = 16)]
    service_points: u32,
    /// Daily quota of each service point (large by default, so the quota does not stop Reserve).
    #[arg(long, default_value_t = 100_000)]
    quota: u32,
    /// First NIK serial used (use a different one on each run against the same database: a NIK
    /// reserved before is answered with its earlier reservation at the same service point, or
    /// refused as reserved elsewhere at another, and this tool counts both as unexpected).
    #[arg(long, default_value_t = 0)]
    nik_offset: u64,
    /// Only check the quota invariant of the bench offices (no set-up, no load).
    #[arg(long)]
    check_only: bool,
    /// With --check-only: the reservations (held plus committed) the bench service points must
    /// hold today in all, e.g. the Reserves another load tool had answered with a reservation.
    #[arg(long, requires = "check_only")]
    expect_issued: Option<u64>,
    /// With --expect-issued: the office-local day (YYYY-MM-DD) the load began on. When the
    /// service points are on another day by now (the run crossed the office's midnight), the
    /// count is not compared, since the reservations are split over two days.
    #[arg(long, requires = "expect_issued", value_parser = parse_day)]
    expect_date: Option<chrono::NaiveDate>,
    /// Bearer token sent with every call (a server started with --token-file requires one).
    #[arg(long, env = "BLANGKO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// WatchQuota streams to hold open (spread over the bench service points) through all
    /// phases; each must deliver its first snapshot and stay open to the end.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    watchers: u32,
    /// The server's process id (same machine): its peak and current RSS are printed at the end.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Measure the disk instead of a server: for --seconds, write --disk-probe-kib to a file in
    /// this directory and fsync it (`fdatasync`, as the server's group commit does), then print
    /// the fsync latencies and remove the file. No server is needed.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["check_only", "watchers", "rate"])]
    disk_probe: Option<std::path::PathBuf>,
    /// KiB written before each fsync of the disk probe (the default is about what one Reserve
    /// batch adds to SQLite's WAL at 64 calls in flight).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(4..=4096))]
    disk_probe_kib: u32,
    /// Phases to run, comma separated: health, quota, reserve.
    #[arg(long, value_delimiter = ',', default_value = "health,quota,reserve", value_parser = ["health", "quota", "reserve"])]
    phases: Vec<String>,
    /// Runs the phases this many times in turn (health, reserve, health, reserve, ...), each for
    /// --seconds, and prints each round's ratios and their median. On a shared machine, whose
    /// speed drifts over tens of seconds, phases side by side in time compare better than one
    /// long phase of each. After a Reserve phase the next waits until the server has folded its
    /// Reserve journal (SQLite), so that work lands in neither phase.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_ROUNDS as i64))]
    rounds: u32,
}

/// Latencies of one phase, in microseconds.
#[derive(Default)]
struct Sample {
    micros: Vec<u64>,
    errors: u64,
    /// Reserves answered with a new reservation.
    reserved: u64,
    /// Reserves answered with an IKD referral, by cause (`ReferralCause` wire values, counts).
    referred_by: std::collections::BTreeMap<i32, u64>,
    /// Reserves answered with an earlier answer (a NIK reserved before this run): unexpected,
    /// since every call of a run uses a NIK and a request_id of its own.
    replayed: u64,
    /// When the last call ended.
    last_end: Option<Instant>,
}

impl Sample {
    /// Counts one call's answer and when it ended.
    fn record(&mut self, answer: Answer, micros: u64, ended: Instant) {
        self.micros.push(micros);
        match answer {
            Answer::Other => {}
            Answer::Reserved => self.reserved += 1,
            Answer::Referred(cause) => *self.referred_by.entry(cause).or_insert(0) += 1,
            Answer::Replayed => self.replayed += 1,
        }
        self.last_end = self.last_end.max(Some(ended));
    }

    /// A failed call: counted, and the first few statuses printed.
    fn fail(&mut self, status: &tonic::Status) {
        self.errors += 1;
        if self.errors <= 3 {
            // A NIK reserved before this run, at another service point or office.
            let hint = if status.code() == tonic::Code::FailedPrecondition {
                " (a NIK reserved before this run? use a fresh database or another --nik-offset)"
            } else {
                ""
            };
            eprintln!(
                "unexpected status: {:?} {}{hint}",
                status.code(),
                status.message()
            );
        }
    }

    fn merge(&mut self, other: Sample) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        self.reserved += other.reserved;
        for (cause, n) in other.referred_by {
            *self.referred_by.entry(cause).or_insert(0) += n;
        }
        self.replayed += other.replayed;
        self.last_end = self.last_end.max(other.last_end);
    }

    /// Reserves answered with an IKD referral, whatever the cause.
    fn referred(&self) -> u64 {
        self.referred_by.values().sum()
    }

    /// Unexpected outcomes: failed calls and replayed answers.
    fn unexpected(&self) -> bool {
        self.errors > 0 || self.replayed > 0
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
        sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
    }
}

/// What one call was answered.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Health/Check, GetQuota.
    Other,
    Reserved,
    /// Referred to IKD, with the cause's wire value.
    Referred(i32),
    Replayed,
}

/// Where the calls go: the bench offices and their service points.
#[derive(Debug, Clone, Copy)]
struct Layout {
    offices: u32,
    service_points: u32,
}

#[derive(Clone)]
struct Clients {
    counter: Vec<CounterServiceClient<Ch>>,
    /// Reserve on the same connections, read as a [`ReserveAnswer`].
    reserve: Vec<tonic::client::Grpc<Ch>>,
    health: Vec<tonic_health::pb::health_client::HealthClient<Ch>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=MAX_CONCURRENCY).contains(&args.concurrency),
        "--concurrency must be 1..={MAX_CONCURRENCY}"
    );
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= MAX_SECONDS,
        "--seconds must be in (0, {MAX_SECONDS}]"
    );
    anyhow::ensure!(
        (1..=MAX_OFFICES).contains(&args.offices) && (1..=64).contains(&args.service_points),
        "--offices 1..={MAX_OFFICES}, --service-points 1..=64"
    );
    if let Some(dir) = &args.disk_probe {
        let (dir, seconds, kib) = (dir.clone(), args.seconds, args.disk_probe_kib);
        return tokio::task::spawn_blocking(move || disk_probe(&dir, seconds, kib)).await?;
    }
    let token = CallMetadata::bearer(args.token.as_deref())?;
    // Watchers and calls in flight share the connections; past the server's stream limit the
    // calls would queue in this process, and their latency would be the client's. (The open
    // loop's calls in flight come on top, as many as its rate and the server's latency make.)
    let connections = args.servers.len() * args.connections.max(1);
    let all_streams = args.watchers as usize + args.concurrency;
    let streams = all_streams.div_ceil(connections);
    if streams > SERVER_STREAMS_PER_CONNECTION {
        println!(
            "warning: {streams} streams per connection (watchers and calls in flight over {connections} connections), above a server's default limit of {SERVER_STREAMS_PER_CONNECTION}: calls may wait in this client; give --connections {} or more",
            all_streams.div_ceil(SERVER_STREAMS_PER_CONNECTION * args.servers.len())
        );
    }
    let mut channels = Vec::new();
    for url in &args.servers {
        for _ in 0..args.connections.max(1) {
            let channel = Endpoint::from_shared(url.clone())?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            channels.push(InterceptedService::new(channel, token.clone()));
        }
    }
    let clients = Clients {
        counter: channels
            .iter()
            .cloned()
            .map(CounterServiceClient::new)
            .collect(),
        reserve: channels
            .iter()
            .cloned()
            .map(tonic::client::Grpc::new)
            .collect(),
        health: channels
            .iter()
            .cloned()
            .map(tonic_health::pb::health_client::HealthClient::new)
            .collect(),
    };
    let layout = Layout {
        offices: args.offices,
        service_points: args.service_points,
    };
    let mut counter = CounterServiceClient::new(channels[0].clone());
    if args.check_only {
        let totals = check_invariant(&mut counter, layout).await?;
        anyhow::ensure!(
            totals.over == 0,
            "{} service point(s) over quota",
            totals.over
        );
        println!("invariant held: held + committed <= quota on every service point");
        // The day the server keeps the counters under, for a script's later --expect-date.
        if let [day] = Vec::from_iter(&totals.dates)[..] {
            println!("office day: {day}");
        }
        if day_after(args.expect_date, &totals.dates)? {
            println!(
                "the office day changed since {} (now {:?}): the reservations of two days are not compared",
                args.expect_date.map(|d| d.to_string()).unwrap_or_default(),
                totals.dates
            );
        } else if let Some(expected) = args.expect_issued {
            anyhow::ensure!(
                totals.issued == expected,
                "the bench service points hold {} reservations today, expected {expected}",
                totals.issued
            );
            println!("reservations today: {expected}, as expected");
        }
        return Ok(());
    }
    let mut stock = StockServiceClient::new(channels[0].clone());
    setup(&mut stock, &args).await?;
    println!(
        "blangko-bench: {} server(s), {} connection(s), concurrency {}, {} s per phase, {} office(s) x {} service point(s)",
        args.servers.len(),
        channels.len(),
        args.concurrency,
        args.seconds,
        args.offices,
        args.service_points
    );
    let watchers = open_watchers(&clients, &args).await?;
    let before = check_invariant(&mut counter, layout).await?;
    let nik_counter = Arc::new(AtomicU64::new(args.nik_offset));
    // Closed-loop throughput of each phase, one entry per round.
    let mut throughput: Vec<(String, Vec<f64>)> = args
        .phases
        .iter()
        .map(|p| (p.clone(), Vec::new()))
        .collect();
    let mut failed = false;
    let mut reserved = 0;
    for round in 1..=args.rounds {
        let suffix = if args.rounds > 1 {
            format!(", round {round}")
        } else {
            String::new()
        };
        for (phase, rates) in throughput.iter_mut() {
            let cpu = CpuUse::start(args.server_pid);
            let sample = closed_loop(&clients, &args, layout, phase, nik_counter.clone()).await?;
            let rps = sample.micros.len() as f64 / args.seconds;
            report(&format!("{phase} (closed loop{suffix})"), &sample, rps);
            cpu.report(sample.micros.len() as u64);
            failed |= sample.unexpected();
            reserved += sample.reserved;
            rates.push(rps);
            if args.rate > 0.0 {
                let start = Instant::now();
                let sample = open_loop(&clients, &args, layout, phase, nik_counter.clone()).await?;
                // Calls answered over the time until the last answer: below the arrival rate
                // when the server fell behind.
                let elapsed = sample
                    .last_end
                    .map_or(args.seconds, |end| end.duration_since(start).as_secs_f64());
                report(
                    &format!("{phase} (open loop, {} /s{suffix})", args.rate),
                    &sample,
                    sample.micros.len() as f64 / elapsed.max(f64::EPSILON),
                );
                failed |= sample.unexpected();
                reserved += sample.reserved;
            }
            if args.rounds > 1 && phase == "reserve" {
                fold_wait(&mut counter, layout).await?;
            }
        }
    }
    print_ratios(&throughput);
    if let Some(w) = watchers {
        failed |= !w.report();
    }
    if let Some(pid) = args.server_pid {
        print_server_memory(pid);
    }
    let after = check_invariant(&mut counter, layout).await?;
    // Every reservation acknowledged to this run, and no other, is on the server's counters
    // (holds last a day, so none expired meanwhile). A run across the office's midnight starts
    // a new day's counters: then only the quota invariant is checked.
    let counted = if after.dates == before.dates {
        // Signed: counters that fell are a mismatch too.
        let issued = after.issued as i128 - before.issued as i128;
        println!("reservations acknowledged {reserved}, on the server's counters {issued}");
        issued == i128::from(reserved)
    } else {
        println!("the office day changed during the run: the counts of two days are not compared");
        true
    };
    if after.over > 0 || failed || !counted {
        println!(
            "FAILED: {} service point(s) over quota; unexpected statuses or replayed answers: {failed}; counters match the answers: {counted}",
            after.over
        );
        std::process::exit(1);
    }
    println!(
        "invariant held: held + committed <= quota on every service point; no unexpected status"
    );
    Ok(())
}

/// Prints each phase's throughput against Health/Check's: for one round, the ratio; for more,
/// each round's ratio (the phases of one round ran side by side) and their median, which the
/// "ratio ...:" line then gives.
fn print_ratios(throughput: &[(String, Vec<f64>)]) {
    let Some((_, health)) = throughput.iter().find(|(p, _)| p == "health") else {
        return;
    };
    for (phase, rates) in throughput {
        if phase == "health" {
            continue;
        }
        let ratios: Vec<f64> = rates
            .iter()
            .zip(health)
            .filter(|(_, h)| **h > 0.0)
            .map(|(r, h)| r / h)
            .collect();
        let Some(median) = median(&ratios) else {
            continue;
        };
        if ratios.len() > 1 {
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            println!(
                "ratio {phase}/health throughput by round: {}",
                each.join(" ")
            );
            println!(
                "ratio {phase}/health throughput: {median:.3} (median of {} rounds)",
                ratios.len()
            );
        } else {
            println!("ratio {phase}/health throughput: {median:.3}");
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); None when empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Waits until the server has folded its Reserve journal (SQLite; at once on PostgreSQL): a
/// ListReservations call reads the tables, and the server folds the journal before any such
/// read. Bounded by FOLD_WAIT.
async fn fold_wait(counter: &mut CounterServiceClient<Ch>, layout: Layout) -> anyhow::Result<()> {
    for office in 0..layout.offices {
        let mut request = tonic::Request::new(ListReservationsRequest {
            office_id: office_id(office),
            page_size: 1,
            ..Default::default()
        });
        request.set_timeout(FOLD_WAIT);
        counter
            .list_reservations(request)
            .await
            .context("waiting for the server to fold its Reserve journal")?;
    }
    Ok(())
}

/// A day as the server writes it, `YYYY-MM-DD`.
fn parse_day(text: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| d.format("%Y-%m-%d").to_string() == text)
        .ok_or_else(|| format!("'{text}' is not a day written YYYY-MM-DD"))
}

/// Whether the service points' day (`dates`, from their snapshots) is the day after `start`, the
/// day a load began (a run across the office's midnight); false when it is `start` itself or no
/// day was given; an error for any other day, which is a wrong `--expect-date` rather than a
/// midnight.
fn day_after(
    start: Option<chrono::NaiveDate>,
    dates: &std::collections::BTreeSet<String>,
) -> anyhow::Result<bool> {
    let Some(start) = start else {
        return Ok(false);
    };
    let is = |day: Option<chrono::NaiveDate>| {
        day.is_some_and(|d| dates.iter().all(|date| *date == d.to_string()))
    };
    if is(Some(start)) {
        Ok(false)
    } else if is(start.succ_opt()) {
        Ok(true)
    } else {
        anyhow::bail!(
            "the bench service points are on {dates:?}, neither {start} (--expect-date) nor the day after"
        )
    }
}

/// The disk probe's file wraps around at this size, so a long probe stays bounded.
const PROBE_FILE_BYTES: u64 = 64 << 20;

/// Writes `kib` KiB and fsyncs (`fdatasync`) in a loop for `seconds`, as a Reserve batch's
/// group commit does, and prints the fsync latencies: every acknowledged Reserve waits for one,
/// so the disk's fsync tail is a floor under the Reserve tail.
fn disk_probe(dir: &std::path::Path, seconds: f64, kib: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!(".blangko-disk-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // Removed at once: the open file stays writable, and nothing is left behind however the
    // probe ends (an interrupt included).
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    let block = vec![0x5a_u8; kib as usize * 1024];
    let mut sample = Sample::default();
    let mut offset = 0_u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        file.write_all_at(&block, offset)?;
        offset = (offset + block.len() as u64) % PROBE_FILE_BYTES;
        let began = Instant::now();
        file.sync_data()?;
        let ended = Instant::now();
        sample.record(
            Answer::Other,
            ended.duration_since(began).as_micros() as u64,
            ended,
        );
    }
    let over = |ms: u64| sample.micros.iter().filter(|&&m| m > ms * 1000).count();
    println!(
        "disk probe {}: {} fsyncs of {kib} KiB writes in {seconds} s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  over 10 ms {}  over 100 ms {}",
        dir.display(),
        sample.micros.len(),
        sample.percentile(50.0),
        sample.percentile(99.0),
        sample.percentile(99.9),
        sample.percentile(100.0),
        over(10),
        over(100),
    );
    Ok(())
}

fn office_id(i: u32) -> String {
    format!("{}", 3201 + i)
}

async fn setup(stock: &mut StockServiceClient<Ch>, args: &Args) -> anyhow::Result<()> {
    let all_days: Vec<i32> = (1..=7).collect();
    for i in 0..args.offices {
        let office = office_id(i);
        stock
            .upsert_office(UpsertOfficeRequest {
                request_id: format!("bench-office-{office}-{}", rand::random::<u32>()),
                office: Some(Office {
                    office_id: office.clone(),
                    name: format!("Bench {office}"),
                    time_zone: "Asia/Jakarta".into(),
                    hold_ttl_secs: 86_400,
                    ..Office::default()
                }),
                update_mask: None,
            })
            .await?;
        for sp in 0..args.service_points {
            stock
                .upsert_service_point(UpsertServicePointRequest {
                    request_id: format!("bench-sp-{office}-{sp}-{}", rand::random::<u32>()),
                    service_point: Some(ServicePoint {
                        office_id: office.clone(),
                        service_point_id: format!("sp{sp}"),
                        name: format!("Bench {sp}"),
                        kind: ServicePointKind::Other as i32,
                        service_days: all_days.clone(),
                        holidays: vec![],
                        policy: Some(QuotaPolicy {
                            mode: QuotaMode::Fixed as i32,
                            fixed_daily_quota: args.quota,
                            ..QuotaPolicy::default()
                        }),
                    }),
                })
                .await?;
        }
        // Enough blanks for the whole day's quota of the office's bench service points, so that
        // stock does not stop a long run before the quota does.
        for quantity in shipments(args.quota, args.service_points) {
            stock
                .record_shipment(RecordShipmentRequest {
                    request_id: format!("bench-ship-{office}-{}", rand::random::<u32>()),
                    office_id: office.clone(),
                    quantity,
                    reference: format!("BENCH-{}", rand::random::<u64>()),
                    note: String::new(),
                })
                .await?;
        }
    }
    Ok(())
}

/// The largest shipment the server records (the contract's bound on a stock movement).
const MAX_SHIPMENT: u32 = 1_000_000;

/// The shipments (each at most [`MAX_SHIPMENT`]) that cover one day's quota of `points` service
/// points of `quota` each, and at least one full shipment: the stock runs out after the quota.
fn shipments(quota: u32, points: u32) -> Vec<u32> {
    let mut left = (u64::from(quota) * u64::from(points)).max(u64::from(MAX_SHIPMENT));
    let mut lots = Vec::new();
    while left > 0 {
        let lot = left.min(u64::from(MAX_SHIPMENT));
        lots.push(lot as u32);
        left -= lot;
    }
    lots
}

/// A valid NIK for serial `n`: province 32, regency 01, a birth date varied with n.
fn nik(n: u64) -> String {
    let serial = n % 9999 + 1;
    let day = (n / 9999) % 28 + 1;
    let month = (n / (9999 * 28)) % 12 + 1;
    let year = 60 + (n / (9999 * 28 * 12)) % 40;
    format!("320101{day:02}{month:02}{year:02}{serial:04}")
}

async fn one_call(
    clients: &Clients,
    layout: Layout,
    phase: &str,
    i: u64,
    nik_counter: &AtomicU64,
) -> Result<Answer, tonic::Status> {
    let k = (i as usize) % clients.counter.len();
    match phase {
        "health" => {
            clients.health[k]
                .clone()
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            Ok(Answer::Other)
        }
        "quota" => {
            let office = office_id((i % u64::from(layout.offices)) as u32);
            clients.counter[k]
                .clone()
                .get_quota(GetQuotaRequest {
                    office_id: office,
                    service_point_id: format!(
                        "sp{}",
                        (i / u64::from(layout.offices)) % u64::from(layout.service_points)
                    ),
                })
                .await?;
            Ok(Answer::Other)
        }
        // "reserve": `--phases` accepts only the three names.
        _ => {
            let n = nik_counter.fetch_add(1, Ordering::Relaxed);
            let office = office_id((n % u64::from(layout.offices)) as u32);
            let sp = (n / u64::from(layout.offices)) % u64::from(layout.service_points);
            let request = ReserveRequest {
                request_id: format!("bench-{n}-{:08x}", rand::random::<u32>()),
                office_id: office,
                service_point_id: format!("sp{sp}"),
                counter_id: "bench".into(),
                nik: nik(n),
                reason: Reason::DataChange as i32,
                ikd_status: IkdStatus::Active as i32,
            };
            let answer = reserve(clients.reserve[k].clone(), request).await?;
            Ok(match answer.outcome {
                Some(Seen::Reservation(r)) if r.replayed => Answer::Replayed,
                Some(Seen::Reservation(_)) => Answer::Reserved,
                Some(Seen::IkdReferral(r)) if r.replayed => Answer::Replayed,
                Some(Seen::IkdReferral(r)) => Answer::Referred(r.cause),
                None => {
                    return Err(tonic::Status::internal(
                        "a Reserve answer without an outcome",
                    ));
                }
            })
        }
    }
}

/// What the load generator reads of a Reserve answer: the outcome, whether it was replayed, and
/// a referral's cause. The same bytes as `ReserveResponse` on the wire; its other fields are
/// skipped while decoding instead of being built as strings nobody reads. The generator shares
/// the cores with the server, and decoding the whole answer cost it about 8,000 instructions per
/// Reserve (callgrind on blangko-bench, BENCHMARKS.md).
#[derive(Clone, PartialEq, prost::Message)]
struct ReserveAnswer {
    /// `ReserveResponse.outcome`.
    #[prost(oneof = "Seen", tags = "1, 2")]
    outcome: Option<Seen>,
}

/// `ReserveResponse.outcome`, as much of it as is read.
#[derive(Clone, PartialEq, prost::Oneof)]
enum Seen {
    /// `Reservation`: field 13, `replayed`.
    #[prost(message, tag = "1")]
    Reservation(ReservationSeen),
    /// `IkdReferral`: field 1, `cause`, and field 7, `replayed`.
    #[prost(message, tag = "2")]
    IkdReferral(ReferralSeen),
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReservationSeen {
    #[prost(bool, tag = "13")]
    replayed: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReferralSeen {
    #[prost(int32, tag = "1")]
    cause: i32,
    #[prost(bool, tag = "7")]
    replayed: bool,
}

/// CounterService/Reserve, as the generated client calls it (same path, codec and connection),
/// with the answer read as a [`ReserveAnswer`].
async fn reserve(
    mut grpc: tonic::client::Grpc<Ch>,
    request: ReserveRequest,
) -> Result<ReserveAnswer, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
    let mut request = tonic::Request::new(request);
    request.extensions_mut().insert(tonic::GrpcMethod::new(
        "blangko.v1.CounterService",
        "Reserve",
    ));
    let codec = blangko_proto::codec::BlangkoCodec::<ReserveRequest, ReserveAnswer>::default();
    let path = PathAndQuery::from_static("/blangko.v1.CounterService/Reserve");
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

async fn closed_loop(
    clients: &Clients,
    args: &Args,
    layout: Layout,
    phase: &str,
    nik_counter: Arc<AtomicU64>,
) -> anyhow::Result<Sample> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let clients = clients.clone();
        let args_phase = phase.to_string();
        let issued = issued.clone();
        let nik_counter = nik_counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Sample::default();
            while Instant::now() < deadline {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                match one_call(&clients, layout, &args_phase, i, &nik_counter).await {
                    Ok(answer) => {
                        let ended = Instant::now();
                        s.record(answer, (ended - start).as_micros() as u64, ended);
                    }
                    Err(status) => s.fail(&status),
                }
            }
            s
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        all.merge(t.await?);
    }
    Ok(all)
}

async fn open_loop(
    clients: &Clients,
    args: &Args,
    layout: Layout,
    phase: &str,
    nik_counter: Arc<AtomicU64>,
) -> anyhow::Result<Sample> {
    let total = (args.rate * args.seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        // Arrivals follow the schedule, whatever the server's speed: latency is measured from the
        // scheduled arrival, so queueing delay counts.
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let clients = clients.clone();
        let phase = phase.to_string();
        let nik_counter = nik_counter.clone();
        tasks.push(tokio::spawn(async move {
            let r = one_call(&clients, layout, &phase, i, &nik_counter).await;
            let ended = Instant::now();
            ((ended - due).as_micros() as u64, ended, r)
        }));
    }
    let mut s = Sample::default();
    for t in tasks {
        match t.await? {
            (micros, ended, Ok(answer)) => s.record(answer, micros, ended),
            (_, _, Err(status)) => s.fail(&status),
        }
    }
    Ok(s)
}

fn report(name: &str, s: &Sample, rps: f64) {
    println!(
        "{name:<32} {rps:>9.0} calls/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  ok {}  errors {}{}",
        s.percentile(50.0),
        s.percentile(99.0),
        s.percentile(99.9),
        s.micros.len(),
        s.errors,
        reserve_answers(s)
    );
}

/// What the bench service points hold today.
#[derive(Debug, Default)]
struct Totals {
    /// Service points with held + committed above their quota.
    over: u32,
    /// Held plus committed over all of them.
    issued: u64,
    /// The office-local days of the snapshots.
    dates: std::collections::BTreeSet<String>,
}

/// The Reserve answers of a phase, for its report line (empty for other phases).
fn reserve_answers(s: &Sample) -> String {
    if s.reserved + s.referred() + s.replayed == 0 {
        return String::new();
    }
    let mut line = format!("  reserved {}  referred {}", s.reserved, s.referred());
    if !s.referred_by.is_empty() {
        // Which limit stopped them: with the default quota, a referral means the figure is not
        // Reserve throughput alone (e.g. the office ran out of stock).
        let causes: Vec<String> = s
            .referred_by
            .iter()
            .map(|(cause, n)| {
                let name = ReferralCause::try_from(*cause).map_or_else(
                    |_| format!("cause {cause}"),
                    |c| c.as_str_name().to_string(),
                );
                format!("{name} {n}")
            })
            .collect();
        line += &format!(" ({})", causes.join(", "));
    }
    if s.replayed > 0 {
        line += &format!(
            "  REPLAYED {} (NIKs reserved before this run: use a fresh database or another --nik-offset)",
            s.replayed
        );
    }
    line
}

async fn check_invariant(
    counter: &mut CounterServiceClient<Ch>,
    layout: Layout,
) -> anyhow::Result<Totals> {
    let mut totals = Totals::default();
    for i in 0..layout.offices {
        for sp in 0..layout.service_points {
            let q = counter
                .get_quota(GetQuotaRequest {
                    office_id: office_id(i),
                    service_point_id: format!("sp{sp}"),
                })
                .await?
                .into_inner()
                .quota
                .with_context(|| {
                    format!("GetQuota of {}/sp{sp} answered no snapshot", office_id(i))
                })?;
            if q.held + q.committed > q.quota {
                totals.over += 1;
                println!(
                    "OVER QUOTA: {} {}: {} + {} > {}",
                    q.office_id, q.service_point_id, q.held, q.committed, q.quota
                );
            }
            totals.issued += u64::from(q.held) + u64::from(q.committed);
            totals.dates.insert(q.local_date);
        }
    }
    Ok(totals)
}

/// The WatchQuota streams held open during the run.
struct Watchers {
    open: u32,
    updates: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watchers {
    /// Prints what the streams received; false when one of them ended before the run did.
    fn report(self) -> bool {
        let ended = self.ended.load(Ordering::SeqCst);
        println!(
            "watchers: {} streams open through the run, {} snapshots received, {} ended early",
            self.open,
            self.updates.load(Ordering::SeqCst),
            ended
        );
        for task in self.tasks {
            task.abort();
        }
        ended == 0
    }
}

/// Most time to wait for every watcher's first snapshot.
const WATCHERS_READY_TIMEOUT: Duration = Duration::from_secs(30);

async fn open_watchers(clients: &Clients, args: &Args) -> anyhow::Result<Option<Watchers>> {
    if args.watchers == 0 {
        return Ok(None);
    }
    let updates = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers as usize);
    let mut tasks = Vec::new();
    for i in 0..args.watchers {
        let mut client = clients.counter[i as usize % clients.counter.len()].clone();
        let request = WatchQuotaRequest {
            office_id: office_id(i % args.offices),
            service_point_id: format!("sp{}", (i / args.offices) % args.service_points),
        };
        let (updates, ended, ready) = (updates.clone(), ended.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(response) = client.watch_quota(request).await else {
                ended.fetch_add(1, Ordering::SeqCst);
                return;
            };
            let mut stream = response.into_inner();
            let mut first = true;
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {
                        updates.fetch_add(1, Ordering::SeqCst);
                        if first {
                            first = false;
                            let _ = ready.send(()).await;
                        }
                    }
                    _ => {
                        ended.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + WATCHERS_READY_TIMEOUT;
    while ready < args.watchers {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => break,
        }
    }
    anyhow::ensure!(
        ready == args.watchers,
        "only {ready} of {} WatchQuota streams delivered a first snapshot",
        args.watchers
    );
    println!("watchers: {ready} WatchQuota streams open");
    Ok(Some(Watchers {
        open: args.watchers,
        updates,
        ended,
        tasks,
    }))
}

/// CPU time spent during a phase, from Linux's `/proc`: this process's (the load generator's),
/// the server's (with `--server-pid`) and the whole machine's. Per call it shows where a call's
/// cost lies, and the machine's busy cores show whether the phase was limited by CPU (both
/// processes share the cores) or by waiting. Nothing is printed where `/proc` is unreadable.
struct CpuUse {
    server_pid: Option<u32>,
    bench: Option<u64>,
    server: Option<u64>,
    machine: Option<(u64, u64)>,
    started: Instant,
}

/// Clock ticks per second of `/proc`'s CPU times (USER_HZ: 100 on every Linux architecture's
/// user-space interface).
const TICKS_PER_SECOND: f64 = 100.0;

impl CpuUse {
    fn start(server_pid: Option<u32>) -> Self {
        CpuUse {
            server_pid,
            bench: process_ticks("self"),
            server: server_pid.and_then(|pid| process_ticks(&pid.to_string())),
            machine: machine_ticks(),
            started: Instant::now(),
        }
    }

    fn report(&self, calls: u64) {
        let seconds = self.started.elapsed().as_secs_f64();
        let per_call = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) if calls > 0 && a >= b => Some(format!(
                "{:.0} µs/call ({:.2} cores)",
                (a - b) as f64 / TICKS_PER_SECOND * 1e6 / calls as f64,
                (a - b) as f64 / TICKS_PER_SECOND / seconds
            )),
            _ => None,
        };
        let mut parts = Vec::new();
        if let Some(bench) = per_call(self.bench, process_ticks("self")) {
            parts.push(format!("load generator {bench}"));
        }
        let server_now = self
            .server_pid
            .and_then(|pid| process_ticks(&pid.to_string()));
        if let Some(server) = per_call(self.server, server_now) {
            parts.push(format!("server {server}"));
        }
        if let (Some((busy0, all0)), Some((busy1, all1))) = (self.machine, machine_ticks())
            && all1 > all0
        {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            parts.push(format!(
                "machine {:.2} of {cores} cores busy",
                (busy1 - busy0) as f64 / (all1 - all0) as f64 * cores as f64
            ));
        }
        if !parts.is_empty() {
            println!("{:<32} {}", "  cpu", parts.join(", "));
        }
    }
}

/// User + system CPU ticks of a process (all its threads), from `/proc/{pid}/stat`.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces), counted from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's busy and total CPU ticks over all cores, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Prints a local process's peak (VmHWM) and current (VmRSS) resident memory.
fn print_server_memory(pid: u32) {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => {
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .map(|l| l[name.len()..].trim().to_string())
                    .unwrap_or_else(|| "?".into())
            };
            println!(
                "server memory: peak RSS {}, current RSS {}",
                field("VmHWM:"),
                field("VmRSS:")
            );
        }
        Err(err) => println!("server memory: cannot read /proc/{pid}/status: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipments_cover_the_day_in_lots_the_server_accepts() {
        // The default layout: 16 x 100,000 = 1,600,000 blanks, in two lots.
        assert_eq!(shipments(100_000, 16), vec![1_000_000, 600_000]);
        // A small quota: one full shipment, so the quota is what runs out.
        assert_eq!(shipments(5, 4), vec![1_000_000]);
        // The largest layout the flags allow: 64 x 100,000, no lot above the bound.
        let lots = shipments(100_000, 64);
        assert_eq!(lots.iter().map(|&l| u64::from(l)).sum::<u64>(), 6_400_000);
        assert!(lots.iter().all(|&l| (1..=MAX_SHIPMENT).contains(&l)));
    }

    #[test]
    fn a_reserve_answer_reads_the_outcome_replayed_and_cause_of_a_whole_response() {
        use blangko_proto::v1::reserve_response::Outcome;
        use prost::Message;
        let quota = Some(QuotaSnapshot {
            office_id: "3201".into(),
            service_point_id: "sp3".into(),
            local_date: "2026-12-06".into(),
            quota: 100,
            held: 7,
            ..Default::default()
        });
        let reservation = |replayed| ReserveResponse {
            outcome: Some(Outcome::Reservation(Reservation {
                reservation_id: "r-1".into(),
                office_id: "3201".into(),
                service_point_id: "sp3".into(),
                counter_id: "bench".into(),
                local_date: "2026-12-06".into(),
                state: ReservationState::Held as i32,
                reason: Reason::DataChange as i32,
                masked_nik: "3201**********0001".into(),
                created_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 2,
                }),
                expires_at: Some(prost_types::Timestamp {
                    seconds: 3,
                    nanos: 4,
                }),
                committed_at: None,
                spoiled_count: 2,
                replayed,
            })),
            quota: quota.clone(),
        };
        let referral = |replayed| ReserveResponse {
            outcome: Some(Outcome::IkdReferral(IkdReferral {
                cause: ReferralCause::QuotaExhausted as i32,
                message_indonesian: "Kuota hari ini habis".into(),
                message_english: "Today's quota is used up".into(),
                activation_steps_indonesian: vec!["Unduh IKD".into()],
                activation_steps_english: vec!["Install IKD".into()],
                next_quota_at: Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                }),
                replayed,
            })),
            quota: quota.clone(),
        };
        let read = |response: ReserveResponse| {
            ReserveAnswer::decode(response.encode_to_vec().as_slice()).unwrap()
        };
        for replayed in [false, true] {
            assert_eq!(
                read(reservation(replayed)).outcome,
                Some(Seen::Reservation(ReservationSeen { replayed }))
            );
            assert_eq!(
                read(referral(replayed)).outcome,
                Some(Seen::IkdReferral(ReferralSeen {
                    cause: ReferralCause::QuotaExhausted as i32,
                    replayed
                }))
            );
        }
        let none = ReserveResponse {
            outcome: None,
            quota,
        };
        assert_eq!(read(none).outcome, None);
    }

    #[test]
    fn the_median_of_the_rounds_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.4]), Some(0.4));
        // Odd: the middle one, whatever the order.
        assert_eq!(median(&[0.55, 0.41, 0.47]), Some(0.47));
        // Even: the mean of the middle two.
        assert_eq!(median(&[0.5, 0.4, 0.6, 0.3]), Some(0.45));
    }

    #[test]
    fn a_start_day_skips_the_count_only_for_the_next_day() {
        let dates = |days: &[&str]| days.iter().map(|d| d.to_string()).collect();
        let start = Some(parse_day("2026-12-31").unwrap());
        assert!(!day_after(start, &dates(&["2026-12-31"])).unwrap());
        assert!(day_after(start, &dates(&["2027-01-01"])).unwrap());
        // Any other day, or service points on two days, is an error, not a skipped check.
        assert!(day_after(start, &dates(&["2026-12-30"])).is_err());
        assert!(day_after(start, &dates(&["2026-12-31", "2027-01-01"])).is_err());
        assert!(!day_after(None, &dates(&["2000-01-01"])).unwrap());
        for bad in ["2026-2-01", "2026-02-30", "02/12/2026", ""] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_disk_probe_measures_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("blangko-probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        disk_probe(&dir, 0.2, 4).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "probe file left"
        );
        // A directory that does not exist is an error naming the file, not a panic.
        let err = disk_probe(&dir.join("missing"), 0.1, 4).unwrap_err();
        assert!(err.to_string().contains("cannot create"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
