//! The operator's interface: every flag also reads an environment variable, and every default
//! is safe for a first start on one machine.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::store::SqliteSync;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// blangko-server: stock and daily-quota service for blank e-KTP cards.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "blangko-server",
    args_override_self = true,
    version,
    about = "gRPC stock and daily-quota service for blank e-KTP cards (blangko)",
    long_about = "Records shipments, spoiled blanks and stock-takes, and enforces each office's daily quota \
atomically. With no arguments it listens on 127.0.0.1:50051 and keeps its data in the embedded SQLite \
file ./blangko.db (created on first start).",
    after_help = "Examples:\n  blangko-server\n  blangko-server --demo\n  blangko-server --token-file tokens.txt token add loket-1 --role counter --office 3275 --service-points mpp\n  blangko-server backup --database sqlite:blangko.db --to /backup/blangko-2026-11-29.db\n  blangko-server --listen 0.0.0.0:50051 --token-file tokens.txt --tls-cert server.pem --tls-key server.key \\\n      --database postgres://blangko@db/blangko --nik-key-file /run/secrets/nik.key"
)]
pub struct Config {
    /// Address to listen on for gRPC (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "BLANGKO_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Database URL: sqlite:PATH (embedded, one server process per file) or postgres://USER@HOST/DB
    /// (several replicas).
    #[arg(
        long,
        env = "BLANGKO_DATABASE_URL",
        default_value = "sqlite:blangko.db",
        global = true
    )]
    pub database: String,

    /// Log format.
    #[arg(long, env = "BLANGKO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "blangko_server=debug".
    #[arg(long, env = "BLANGKO_LOG", default_value = "info", value_parser = log_filter)]
    pub log: String,

    /// File holding the 64-hex-character key that hashes NIKs. Required with PostgreSQL (every
    /// replica must use the same key). With SQLite it defaults to DATABASE_FILE.nikkey, generated
    /// on first start with mode 0600.
    #[arg(long, env = "BLANGKO_NIK_KEY_FILE", global = true)]
    pub nik_key_file: Option<PathBuf>,

    /// Seed demonstration offices on start (Kota Bekasi 3275, Kabupaten Bandung 3204, Kabupaten
    /// Pandeglang 3601) unless they exist.
    #[arg(long, env = "BLANGKO_DEMO", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,

    /// Most client connections open at once; one past it is closed as soon as it is accepted (the
    /// client retries, or tries another replica). Lowered at start, with a warning, to the
    /// open-file limit less the database connections and 128 more descriptors (Linux).
    #[arg(long, env = "BLANGKO_MAX_CONNECTIONS", default_value_t = crate::incoming::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Most client connections open at once from one IP address; one past it is closed as soon
    /// as it is accepted; 0: no bound of its own. No token is asked before a call, so without it
    /// one peer could hold every place among --max-connections with health Watch streams.
    #[arg(long, env = "BLANGKO_MAX_CONNECTIONS_PER_PEER", default_value_t = crate::incoming::DEFAULT_MAX_CONNECTIONS_PER_PEER, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_connections_per_peer: u32,

    /// Seconds a new connection may go without a call before it is closed: one that sends
    /// nothing, stops part way through its TLS or HTTP/2 set-up, or sets up and never calls (a
    /// gRPC channel connects again at its next call). Also bounds the TLS handshake.
    #[arg(long, env = "BLANGKO_FIRST_CALL_TIMEOUT_SECS", default_value_t = crate::incoming::DEFAULT_FIRST_CALL_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub first_call_timeout_secs: u64,

    /// Seconds a connection may go without a call in flight, after its first call, before it is
    /// closed (like gRPC's `MaxConnectionIdle`, without a GOAWAY); 0: no limit. A connection
    /// with a stream open (a WatchQuota, a health `Watch`) is never idle; a gRPC channel
    /// connects again at its next call.
    #[arg(long, env = "BLANGKO_IDLE_TIMEOUT_SECS", default_value_t = crate::incoming::DEFAULT_IDLE_SECS, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub idle_timeout_secs: u64,

    /// Longest time, in seconds, that shutdown waits for calls in flight and background tasks
    /// before it exits (closing the database gets at most 5 s more, blocking work then 1 s; a
    /// second signal stops at once).
    #[arg(long, env = "BLANGKO_DRAIN_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_timeout_secs: u64,

    /// Seconds between two passes of the sweeper that releases expired holds.
    #[arg(long, env = "BLANGKO_SWEEP_INTERVAL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sweep_interval_secs: u64,

    /// Most WatchQuota streams open at once on this server.
    #[arg(long, env = "BLANGKO_MAX_WATCHERS", default_value_t = 10_000, value_parser = max_watchers)]
    pub max_watchers: usize,

    /// Most WatchQuota streams one caller (one token's principal) may hold open at once, so that
    /// one token cannot take the whole of `--max-watchers` from every other office. Not applied
    /// without a token file (every caller is then the same anonymous one), nor to admins.
    #[arg(long, env = "BLANGKO_MAX_WATCHERS_PER_CALLER", default_value_t = 500, value_parser = max_watchers)]
    pub max_watchers_per_caller: usize,

    /// PostgreSQL: seconds without a change from other replicas after which the change listener
    /// checks its connection (a query, answered within as long again); a connection that does not
    /// answer (a database host gone without closing it, a failover behind one address) is
    /// replaced and every watched snapshot refreshed.
    #[arg(long, env = "BLANGKO_CHANGE_LISTENER_PROBE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub change_listener_probe_secs: u64,

    /// Shortest time in milliseconds between two WatchQuota snapshots of one service point during
    /// a burst of changes; a change after a quiet moment goes out at once.
    #[arg(long, env = "BLANGKO_WATCH_REFRESH_MS", default_value_t = crate::engine::watch::DEFAULT_REFRESH_MS, value_parser = clap::value_parser!(u64).range(20..=10_000))]
    pub watch_refresh_ms: u64,

    /// Most Reserves of one office decided in one transaction (group commit); 1 turns batching off.
    #[arg(long, env = "BLANGKO_RESERVE_BATCH_SIZE", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub reserve_batch_size: u32,

    /// SQLite: most Reserves (reservations and IKD referrals) a burst's batches may leave in the
    /// Reserve journal (their rows reach their tables when the burst pauses); 0 turns the
    /// journal off.
    #[arg(long, env = "BLANGKO_RESERVE_JOURNAL_MAX", default_value_t = crate::store::journal::DEFAULT_MAX_PENDING_RESERVATIONS, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub reserve_journal_max: u64,

    /// SQLite: milliseconds an office's Reserves must pause before the Reserve journal is
    /// folded into its tables (reads and other calls fold it before they run in any case).
    #[arg(long, env = "BLANGKO_RESERVE_JOURNAL_PAUSE_MS", default_value_t = crate::store::journal::DEFAULT_FOLD_AFTER_PAUSE_MS, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub reserve_journal_pause_ms: u64,

    /// Most database connections (PostgreSQL; SQLite uses one writer, four readers and the Reserve
    /// batches' own connection).
    #[arg(long, env = "BLANGKO_DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// Seconds a call waits for a free database connection before it fails with UNAVAILABLE.
    #[arg(long, env = "BLANGKO_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub db_acquire_timeout_secs: u64,

    /// PostgreSQL: seconds a statement waits for a row lock (an office's, held by another
    /// replica's transaction) before the call fails with UNAVAILABLE, which clients retry. Normal
    /// waits are milliseconds; a lock held longer means a transaction is stuck (a replica cut off
    /// mid-transaction), and without this bound every call of that office would wait for it,
    /// holding a connection each, until the pool ran dry.
    #[arg(long, env = "BLANGKO_DB_LOCK_TIMEOUT_SECS", default_value_t = crate::store::DEFAULT_LOCK_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub db_lock_timeout_secs: u64,

    /// SQLite durability: "full" survives power loss; "normal" survives a process crash only.
    #[arg(long, env = "BLANGKO_SQLITE_SYNCHRONOUS", value_enum, default_value_t = SqliteSync::Full)]
    pub sqlite_synchronous: SqliteSync,

    /// Shift the server's clock by this many seconds (drills and tests of a later hour or day;
    /// leave 0 in production).
    /// At most ten years either way ([`MAX_CLOCK_OFFSET_SECS`]).
    #[arg(
        long,
        env = "BLANGKO_CLOCK_OFFSET_SECS",
        default_value_t = 0,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(i64).range(-MAX_CLOCK_OFFSET_SECS..=MAX_CLOCK_OFFSET_SECS)
    )]
    pub clock_offset_secs: i64,

    /// The token file: one principal per line with the SHA-256 of its token (manage it with the
    /// `token` subcommand; the server re-reads it on SIGHUP). Without it the server runs without
    /// authentication, which it allows on a loopback address only.
    #[arg(long, env = "BLANGKO_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// Serve without authentication on a non-loopback address (never in production: anyone who
    /// reaches the port may do everything).
    #[arg(long, env = "BLANGKO_INSECURE_NO_AUTH", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_no_auth: bool,

    /// TLS certificate chain (PEM). With --tls-key the server speaks only TLS.
    #[arg(long, env = "BLANGKO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "BLANGKO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) that signs client certificates: mutual TLS, a client without a
    /// certificate from it cannot connect. Needs --tls-cert.
    #[arg(long, env = "BLANGKO_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Accept a NIK key other than the one this database's NIKs were hashed with, and remember
    /// it from now on (a deliberate key change after the service day; README, "The NIK key").
    /// Without it the server refuses to start on another key.
    #[arg(long, env = "BLANGKO_NIK_KEY_CHANGED", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub nik_key_changed: bool,

    /// Days a reservation's NIK hash (and an IKD activation's) is kept; older ones are purged,
    /// the counts and the ledger stay. 0 keeps them forever.
    #[arg(long, env = "BLANGKO_NIK_RETENTION_DAYS", default_value_t = 400, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub nik_retention_days: u32,

    /// Most concurrent HTTP/2 streams (calls) per client connection.
    #[arg(long, env = "BLANGKO_MAX_STREAMS_PER_CONNECTION", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,

    /// Address of the Prometheus metrics endpoint (plain HTTP, path /metrics), e.g.
    /// 127.0.0.1:9090. Off when not given. It needs no token: bind it where only monitoring
    /// reaches it.
    #[arg(long, env = "BLANGKO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Most calls in flight on this server, over all connections. Past it a call is refused at
    /// once with UNAVAILABLE and RetryInfo (load shedding) instead of waiting in a queue.
    /// WatchQuota, health and reflection do not count.
    #[arg(long, env = "BLANGKO_MAX_CONCURRENT_REQUESTS", default_value_t = crate::overload::DEFAULT_MAX_CONCURRENT_REQUESTS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_requests: u32,

    /// Seconds a call may take before it is answered DEADLINE_EXCEEDED (for WatchQuota: its
    /// setup, not the stream).
    #[arg(long, env = "BLANGKO_REQUEST_TIMEOUT_SECS", default_value_t = crate::overload::DEFAULT_REQUEST_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// Seconds between HTTP/2 keep-alive pings on an idle connection (finds dead clients and
    /// keeps NAT and load-balancer mappings alive).
    #[arg(long, env = "BLANGKO_HTTP2_KEEPALIVE_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http2_keepalive_interval_secs: u64,

    /// Seconds to wait for a keep-alive ping's answer before the connection is closed.
    #[arg(long, env = "BLANGKO_HTTP2_KEEPALIVE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub http2_keepalive_timeout_secs: u64,

    /// An administrative command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Administrative commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Manage the token file (--token-file): add, list or revoke principals.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Copy a SQLite database (--database) consistently while a server runs on it, and its NIK
    /// key beside the copy (FILE.nikkey, mode 0600). Never overwrites; PostgreSQL: use pg_dump.
    Backup {
        /// The new backup file (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
}

/// A role in the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// CounterService at its office (and service points).
    Counter,
    /// StockService writes and CounterService at its office.
    Supervisor,
    /// Read-only across offices.
    Agency,
    /// Everything.
    Admin,
}

impl RoleArg {
    /// The role.
    pub fn role(self) -> crate::auth::Role {
        match self {
            RoleArg::Counter => crate::auth::Role::Counter,
            RoleArg::Supervisor => crate::auth::Role::Supervisor,
            RoleArg::Agency => crate::auth::Role::Agency,
            RoleArg::Admin => crate::auth::Role::Admin,
        }
    }
}

/// `blangko-server token …`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Adds a principal with a fresh token, printed once on stdout (the file keeps only its
    /// hash). Send SIGHUP to running servers to make it valid.
    Add {
        /// The principal's name, recorded in the ledger for every change it makes.
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Its office (counter and supervisor only).
        #[arg(long)]
        office: Option<String>,
        /// The service points a counter is limited to, comma-separated (default: all).
        #[arg(long)]
        service_points: Option<String>,
    },
    /// Lists the principals (names, roles, offices; never tokens).
    List,
    /// Removes a principal; its token stops working at the server's next SIGHUP.
    Revoke {
        /// The principal's name.
        name: String,
    },
}

impl Config {
    /// The defaults, as if started with no arguments (tests override fields).
    pub fn defaults() -> Config {
        Config::parse_from(["blangko-server"])
    }
}

/// The largest shift `--clock-offset-secs` allows either way: ten years (3,653 days). Past
/// year 9999 the server could not write a local date at all.
pub const MAX_CLOCK_OFFSET_SECS: i64 = 3_653 * 86_400;

/// Most WatchQuota streams `--max-watchers` may allow.
pub const MAX_WATCHERS_LIMIT: usize = 100_000;

/// `--log`: a filter `tracing` accepts (a typo fails the start instead of logging at `info`).
fn log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| value.to_string())
        .map_err(|err| {
            format!("not a log filter ({err}); e.g. \"info\" or \"info,blangko_server=debug\"")
        })
}

/// `--max-watchers`: 1..=[`MAX_WATCHERS_LIMIT`].
fn max_watchers(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_WATCHERS_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number from 1 to {MAX_WATCHERS_LIMIT}"
        )),
    }
}
