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
//! p50/p99/p99.9. Afterwards it checks the quota invariant on every service point it used and
//! counts statuses: any unexpected status or over-issue makes it exit 1. It never fails on a
//! timing.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::stock_service_client::StockServiceClient;
use blangko_proto::v1::*;
use clap::Parser;
use tonic::transport::{Channel, Endpoint};

/// Most calls in flight the closed loop allows.
const MAX_CONCURRENCY: usize = 4096;
/// Longest phase.
const MAX_SECONDS: f64 = 600.0;

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
    /// First NIK serial used (use a different one on each run against the same database).
    #[arg(long, default_value_t = 0)]
    nik_offset: u64,
    /// Only check the quota invariant of the bench offices (no set-up, no load).
    #[arg(long)]
    check_only: bool,
    /// WatchQuota streams to hold open (spread over the bench service points) through all
    /// phases; each must deliver its first snapshot and stay open to the end.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    watchers: u32,
    /// The server's process id (same machine): its peak and current RSS are printed at the end.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Phases to run, comma separated: health, quota, reserve.
    #[arg(long, value_delimiter = ',', default_value = "health,quota,reserve", value_parser = ["health", "quota", "reserve"])]
    phases: Vec<String>,
}

/// Latencies of one phase, in microseconds.
#[derive(Default)]
struct Sample {
    micros: Vec<u64>,
    errors: u64,
    reserved: u64,
    referred: u64,
}

impl Sample {
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

#[derive(Clone)]
struct Clients {
    counter: Vec<CounterServiceClient<Channel>>,
    health: Vec<tonic_health::pb::health_client::HealthClient<Channel>>,
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
        (1..=1000).contains(&args.offices) && (1..=64).contains(&args.service_points),
        "--offices 1..=1000, --service-points 1..=64"
    );
    let mut channels = Vec::new();
    for url in &args.servers {
        for _ in 0..args.connections.max(1) {
            channels.push(
                Endpoint::from_shared(url.clone())?
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {url}"))?,
            );
        }
    }
    let clients = Clients {
        counter: channels
            .iter()
            .cloned()
            .map(CounterServiceClient::new)
            .collect(),
        health: channels
            .iter()
            .cloned()
            .map(tonic_health::pb::health_client::HealthClient::new)
            .collect(),
    };
    if args.check_only {
        let over =
            check_invariant(&mut CounterServiceClient::new(channels[0].clone()), &args).await?;
        anyhow::ensure!(over == 0, "{over} service point(s) over quota");
        println!("invariant held: held + committed <= quota on every service point");
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
    let nik_counter = Arc::new(AtomicU64::new(args.nik_offset));
    let mut throughput = Vec::new();
    let mut failed = false;
    for phase in &args.phases {
        let cpu = CpuUse::start(args.server_pid);
        let sample = closed_loop(&clients, &args, phase, nik_counter.clone()).await?;
        let rps = sample.micros.len() as f64 / args.seconds;
        report(&format!("{phase} (closed loop)"), &sample, rps);
        cpu.report(sample.micros.len() as u64);
        failed |= sample.errors > 0;
        throughput.push((phase.clone(), rps));
        if args.rate > 0.0 {
            let sample = open_loop(&clients, &args, phase, nik_counter.clone()).await?;
            report(
                &format!("{phase} (open loop, {} /s)", args.rate),
                &sample,
                sample.micros.len() as f64 / args.seconds,
            );
            failed |= sample.errors > 0;
        }
    }
    if let Some((_, health)) = throughput.iter().find(|(p, _)| p == "health") {
        for (phase, rps) in &throughput {
            if phase != "health" && *health > 0.0 {
                println!("ratio {phase}/health throughput: {:.3}", rps / health);
            }
        }
    }
    if let Some(w) = watchers {
        failed |= !w.report();
    }
    if let Some(pid) = args.server_pid {
        print_server_memory(pid);
    }
    let over = check_invariant(&mut CounterServiceClient::new(channels[0].clone()), &args).await?;
    if over > 0 || failed {
        println!("FAILED: {over} service point(s) over quota; unexpected statuses: {failed}");
        std::process::exit(1);
    }
    println!(
        "invariant held: held + committed <= quota on every service point; no unexpected status"
    );
    Ok(())
}

fn office_id(i: u32) -> String {
    format!("{}", 3201 + i)
}

async fn setup(stock: &mut StockServiceClient<Channel>, args: &Args) -> anyhow::Result<()> {
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
        stock
            .record_shipment(RecordShipmentRequest {
                request_id: format!("bench-ship-{office}-{}", rand::random::<u32>()),
                office_id: office.clone(),
                quantity: 1_000_000,
                reference: format!("BENCH-{}", rand::random::<u64>()),
                note: String::new(),
            })
            .await?;
    }
    Ok(())
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
    args: &Args,
    phase: &str,
    i: u64,
    nik_counter: &AtomicU64,
) -> Result<Option<bool>, tonic::Status> {
    let k = (i as usize) % clients.counter.len();
    match phase {
        "health" => {
            clients.health[k]
                .clone()
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            Ok(None)
        }
        "quota" => {
            let office = office_id((i % u64::from(args.offices)) as u32);
            clients.counter[k]
                .clone()
                .get_quota(GetQuotaRequest {
                    office_id: office,
                    service_point_id: format!(
                        "sp{}",
                        (i / u64::from(args.offices)) % u64::from(args.service_points)
                    ),
                })
                .await?;
            Ok(None)
        }
        // "reserve": `--phases` accepts only the three names.
        _ => {
            let n = nik_counter.fetch_add(1, Ordering::Relaxed);
            let office = office_id((n % u64::from(args.offices)) as u32);
            let sp = (n / u64::from(args.offices)) % u64::from(args.service_points);
            let answer = clients.counter[k]
                .clone()
                .reserve(ReserveRequest {
                    request_id: format!("bench-{n}-{:08x}", rand::random::<u32>()),
                    office_id: office,
                    service_point_id: format!("sp{sp}"),
                    counter_id: "bench".into(),
                    nik: nik(n),
                    reason: Reason::DataChange as i32,
                    ikd_status: IkdStatus::Active as i32,
                })
                .await?
                .into_inner();
            Ok(Some(matches!(
                answer.outcome,
                Some(Outcome::Reservation(_))
            )))
        }
    }
}

async fn closed_loop(
    clients: &Clients,
    args: &Args,
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
        let offices = args.offices;
        let sps = args.service_points;
        tasks.push(tokio::spawn(async move {
            let local_args = Args {
                offices,
                service_points: sps,
                ..Args::parse_from(["blangko-bench"])
            };
            let mut s = Sample::default();
            while Instant::now() < deadline {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                match one_call(&clients, &local_args, &args_phase, i, &nik_counter).await {
                    Ok(r) => {
                        s.micros.push(start.elapsed().as_micros() as u64);
                        match r {
                            Some(true) => s.reserved += 1,
                            Some(false) => s.referred += 1,
                            None => {}
                        }
                    }
                    Err(status) => {
                        s.errors += 1;
                        if s.errors <= 3 {
                            eprintln!(
                                "unexpected status: {:?} {}",
                                status.code(),
                                status.message()
                            );
                        }
                    }
                }
            }
            s
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        let s = t.await?;
        all.micros.extend(s.micros);
        all.errors += s.errors;
        all.reserved += s.reserved;
        all.referred += s.referred;
    }
    Ok(all)
}

async fn open_loop(
    clients: &Clients,
    args: &Args,
    phase: &str,
    nik_counter: Arc<AtomicU64>,
) -> anyhow::Result<Sample> {
    let total = (args.rate * args.seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let offices = args.offices;
    let sps = args.service_points;
    for i in 0..total {
        // Arrivals follow the schedule, whatever the server's speed: latency is measured from the
        // scheduled arrival, so queueing delay counts.
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let clients = clients.clone();
        let phase = phase.to_string();
        let nik_counter = nik_counter.clone();
        tasks.push(tokio::spawn(async move {
            let local_args = Args {
                offices,
                service_points: sps,
                ..Args::parse_from(["blangko-bench"])
            };
            let r = one_call(&clients, &local_args, &phase, i, &nik_counter).await;
            (due.elapsed().as_micros() as u64, r)
        }));
    }
    let mut s = Sample::default();
    for t in tasks {
        let (micros, r) = t.await?;
        match r {
            Ok(Some(true)) => {
                s.reserved += 1;
                s.micros.push(micros)
            }
            Ok(Some(false)) => {
                s.referred += 1;
                s.micros.push(micros)
            }
            Ok(None) => s.micros.push(micros),
            Err(_) => s.errors += 1,
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
        if s.reserved + s.referred > 0 {
            format!("  reserved {}  referred {}", s.reserved, s.referred)
        } else {
            String::new()
        }
    );
}

async fn check_invariant(
    counter: &mut CounterServiceClient<Channel>,
    args: &Args,
) -> anyhow::Result<u32> {
    let mut over = 0;
    for i in 0..args.offices {
        for sp in 0..args.service_points {
            let q = counter
                .get_quota(GetQuotaRequest {
                    office_id: office_id(i),
                    service_point_id: format!("sp{sp}"),
                })
                .await?
                .into_inner()
                .quota
                .unwrap_or_default();
            if q.held + q.committed > q.quota {
                over += 1;
                println!(
                    "OVER QUOTA: {} {}: {} + {} > {}",
                    q.office_id, q.service_point_id, q.held, q.committed, q.quota
                );
            }
        }
    }
    Ok(over)
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
