//! The end-to-end harness: real server processes (or the same server in-process), each with its
//! own fresh database, and helpers that talk to them through the generated gRPC clients.
//!
//! - [`TestDatabase`]: a fresh SQLite file in a temporary directory (PostgreSQL: see `postgres`).
//! - [`TestServer`]: a server on a free port: `start` runs it inside the test process,
//!   `spawn_process` runs the real binary as a child (which tests may SIGKILL).
//! - [`fixtures`]: offices, service points and NIKs for tests.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod postgres;
pub mod proxy;
pub mod scrape;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blangko_counter::connect::CallMetadata;
use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::stock_service_client::StockServiceClient;
use blangko_server::app::Application;
use blangko_server::config::Config;
use blangko_server::engine::Engine;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long a server may take to start before a test gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the built binaries (`target/debug`), found from the test executable
/// (`target/debug/deps/TEST-HASH`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A test that cannot run here (a tool or a setting it needs is missing): passes with a note on a
/// developer's machine, fails under CI (`CI=true`), where a skipped test would read as a pass.
pub fn skipped(why: &str) -> anyhow::Result<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        anyhow::bail!("{why}: CI must run this test (CI=true)");
    }
    eprintln!("{why}: skipped");
    Ok(())
}

/// The server binary built by this package (the same program as `blangko-server`).
pub fn server_bin() -> PathBuf {
    bin_dir().join("e2e-blangko-server")
}

/// The counter client binary built by this package (the same program as `blangko-counter`).
pub fn counter_bin() -> PathBuf {
    bin_dir().join("e2e-blangko-counter")
}

/// Drops the test process's own `BLANGKO_*` settings from a child's environment: a server or
/// client the tests start is configured by the test's flags alone.
pub fn without_blangko_env(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("BLANGKO_")) {
        command.env_remove(key);
    }
    command
}

/// An address nothing listens on, and nothing will while a test runs (port 1 on loopback is
/// privileged and unused), for "dead endpoint" tests: a port [`free_port`] found free may be
/// taken by another test's server a moment later.
pub const DEAD_ENDPOINT: &str = "http://127.0.0.1:1";

/// A port nothing listens on right now (for a server started on it later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1)
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A database in a PostgreSQL server.
    Postgres,
}

/// A fresh, empty database for one test; removed when dropped.
pub struct TestDatabase {
    /// The URL servers connect to.
    pub url: String,
    /// A directory for this test's files (the SQLite file, logs, key files).
    pub dir: tempfile::TempDir,
    /// Which engine.
    pub backend: Backend,
    /// The NIK key file every server of this test shares.
    pub nik_key_file: PathBuf,
    /// Drops the PostgreSQL database at the end.
    _pg: Option<postgres::PgDatabase>,
}

impl TestDatabase {
    /// A fresh database of `backend`.
    pub async fn new(backend: Backend) -> anyhow::Result<Arc<TestDatabase>> {
        let dir = tempfile::Builder::new().prefix("blangko-test").tempdir()?;
        let nik_key_file = dir.path().join("nik.key");
        let key: [u8; 32] = rand::random();
        std::fs::write(&nik_key_file, hex(&key))?;
        let (url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite:{}", dir.path().join("blangko.db").display()),
                None,
            ),
            Backend::Postgres => {
                let db = postgres::PgDatabase::create().await?;
                (db.url.clone(), Some(db))
            }
        };
        Ok(Arc::new(TestDatabase {
            url,
            dir,
            backend,
            nik_key_file,
            _pg: pg,
        }))
    }

    /// A fresh SQLite database.
    pub async fn sqlite() -> anyhow::Result<Arc<TestDatabase>> {
        Self::new(Backend::Sqlite).await
    }

    /// The SQLite file (None for PostgreSQL).
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        (self.backend == Backend::Sqlite).then(|| self.dir.path().join("blangko.db"))
    }

    /// The URL a test's own pool opens the database with.
    pub fn pool_url(&self) -> String {
        match self.sqlite_file() {
            Some(path) => format!("sqlite://{}", path.display()),
            None => self.url.clone(),
        }
    }

    /// The plan the database makes for `sql` (its values written in), its steps joined by " | ":
    /// SQLite's EXPLAIN QUERY PLAN details, or PostgreSQL's EXPLAIN lines with sequential scans
    /// off, since a test's small tables would be scanned whole anyway and the question is which
    /// index can serve.
    pub async fn query_plan(&self, sql: &str) -> anyhow::Result<String> {
        use sqlx::{Connection, Row};
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.pool_url()).await?;
        let explain = if self.backend == Backend::Postgres {
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut conn)
                .await?;
            format!("EXPLAIN {sql}")
        } else {
            format!("EXPLAIN QUERY PLAN {sql}")
        };
        let column = if self.backend == Backend::Postgres {
            0
        } else {
            3
        };
        let steps: Vec<String> = sqlx::query(&explain)
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(column))
            .collect::<Result<_, _>>()?;
        conn.close().await?;
        Ok(steps.join(" | "))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum Running {
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
        engine: Arc<Engine>,
        auth: Arc<blangko_server::auth::tokens::Authenticator>,
    },
    Process {
        child: tokio::process::Child,
    },
}

/// A running server.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The database it uses (shared with other servers of the same test).
    pub db: Arc<TestDatabase>,
    /// Where a child process writes its log (stderr).
    pub log_file: Option<PathBuf>,
    /// TLS settings for connections to a server started with --tls-cert (the url is https).
    pub client_tls: Option<ClientTlsConfig>,
    /// The metrics endpoint, when started with --metrics-listen.
    pub metrics_addr: Option<SocketAddr>,
    running: Running,
}

impl TestServer {
    /// A server inside the test process, on a fresh SQLite database.
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_on(TestDatabase::sqlite().await?, &[]).await
    }

    /// A server inside the test process on `db`, with extra flags.
    pub async fn start_on(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
    ) -> anyhow::Result<TestServer> {
        let clock = Arc::new(blangko_server::clock::SystemClock::default());
        Self::start_with_clock(db, extra_args, clock).await
    }

    /// A server inside the test process on `db` whose time comes from `clock`.
    pub async fn start_with_clock(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
        clock: Arc<dyn blangko_server::clock::Clock>,
    ) -> anyhow::Result<TestServer> {
        Self::start_full(db, extra_args, clock, None, || Ok(())).await
    }

    /// A server inside the test process on `db` with extra flags that include --tls-cert and
    /// --tls-key; `client_tls` is how test connections reach it (https).
    pub async fn start_tls(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
        client_tls: ClientTlsConfig,
    ) -> anyhow::Result<TestServer> {
        let clock = Arc::new(blangko_server::clock::SystemClock::default());
        Self::start_full(db, extra_args, clock, Some(client_tls), || Ok(())).await
    }

    /// A server inside the test process on `db`; `between` runs after the server was built (its
    /// database opened, its token file read) and before it starts serving.
    pub async fn start_with_step_before_serving(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
        between: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<TestServer> {
        let clock = Arc::new(blangko_server::clock::SystemClock::default());
        Self::start_full(db, extra_args, clock, None, between).await
    }

    async fn start_full(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
        clock: Arc<dyn blangko_server::clock::Clock>,
        client_tls: Option<ClientTlsConfig>,
        between: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<TestServer> {
        let args = server_args(&db, extra_args);
        let config =
            Config::try_parse_from(std::iter::once("blangko-server".to_string()).chain(args))?;
        let app = Application::build_with_clock(config, clock).await?;
        between()?;
        let addr = app.local_addr()?;
        let metrics_addr = app.metrics_addr()?;
        let engine = app.engine();
        let auth = app.authenticator();
        let scheme = if client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stop_rx.await;
        }));
        let server = TestServer {
            url: format!("{scheme}://{addr}"),
            addr,
            db,
            log_file: None,
            client_tls,
            metrics_addr,
            running: Running::InProcess {
                stop: Some(stop_tx),
                task: Some(task),
                engine,
                auth,
            },
        };
        server.wait_until_serving().await?;
        Ok(server)
    }

    /// The real binary as a child process, on a fresh SQLite database.
    pub async fn spawn_process(extra_args: &[&str]) -> anyhow::Result<TestServer> {
        Self::spawn_process_on(TestDatabase::sqlite().await?, extra_args).await
    }

    /// The real binary as a child process on `db`, with extra flags.
    pub async fn spawn_process_on(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
    ) -> anyhow::Result<TestServer> {
        Self::spawn_process_keyed(db, extra_args, true, None).await
    }

    /// [`TestServer::spawn_process_on`], connecting to `db` through `database_url` instead of
    /// its own URL (a proxy in front of the same database, for failure tests).
    pub async fn spawn_process_via(
        db: Arc<TestDatabase>,
        database_url: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<TestServer> {
        Self::spawn_process_keyed(db, extra_args, true, Some(database_url)).await
    }

    /// The real binary as a child process on `db`, with extra flags and without the harness's
    /// `--nik-key-file`: the server finds its NIK key where it looks by default (SQLite:
    /// beside the database named in `extra_args`), as an operator's restore does.
    pub async fn spawn_process_with_default_key(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
    ) -> anyhow::Result<TestServer> {
        Self::spawn_process_keyed(db, extra_args, false, None).await
    }

    async fn spawn_process_keyed(
        db: Arc<TestDatabase>,
        extra_args: &[&str],
        harness_key: bool,
        database_url: Option<&str>,
    ) -> anyhow::Result<TestServer> {
        let mut args = if harness_key {
            server_args(&db, extra_args)
        } else {
            server_args_without_key(&db, extra_args)
        };
        if let Some(url) = database_url
            && let Some(at) = args.iter().position(|a| a == "--database")
            && let Some(value) = args.get_mut(at + 1)
        {
            *value = url.to_string();
        }
        let log_file = db
            .dir
            .path()
            .join(format!("server-{}.log", rand::random::<u32>()));
        let log = std::fs::File::create(&log_file)?;
        let mut child = without_blangko_env(&mut tokio::process::Command::new(server_bin()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", server_bin().display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("server did not start in time")??;
        let Some(line) = first else {
            let status = child.wait().await?;
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            anyhow::bail!("server exited ({status}) before listening:\n{log}");
        };
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("unexpected first line: {line}"))?;
        // With --metrics-listen the second line names the metrics endpoint.
        let metrics_addr = if extra_args.contains(&"--metrics-listen") {
            let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
                .await
                .context("no metrics line in time")??
                .context("no metrics line")?;
            let addr = line
                .rsplit(' ')
                .next()
                .and_then(|u| u.strip_prefix("http://"))
                .and_then(|u| u.strip_suffix("/metrics"))
                .unwrap_or_default();
            Some(
                addr.parse()
                    .with_context(|| format!("unexpected metrics line: {line}"))?,
            )
        } else {
            None
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let server = TestServer {
            url: format!("http://{addr}"),
            addr,
            db,
            log_file: Some(log_file),
            client_tls: None,
            metrics_addr,
            running: Running::Process { child },
        };
        server.wait_until_serving().await?;
        Ok(server)
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(status) = self.health_status("").await
                && status == tonic_health::pb::health_check_response::ServingStatus::Serving
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("server at {} never became SERVING", self.url);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut endpoint =
            Endpoint::from_shared(self.url.clone())?.connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.client_tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect().await?)
    }

    /// A CounterService client that sends `token` as `authorization: Bearer …` (None: no header).
    pub async fn counter_client_as(
        &self,
        token: Option<&str>,
    ) -> anyhow::Result<CounterServiceClient<AuthedChannel>> {
        Ok(CounterServiceClient::with_interceptor(
            self.channel().await?,
            CallMetadata::bearer(token)?,
        ))
    }

    /// A StockService client that sends `token` as `authorization: Bearer …` (None: no header).
    pub async fn stock_client_as(
        &self,
        token: Option<&str>,
    ) -> anyhow::Result<StockServiceClient<AuthedChannel>> {
        Ok(StockServiceClient::with_interceptor(
            self.channel().await?,
            CallMetadata::bearer(token)?,
        ))
    }

    /// Re-reads the token file of an in-process server, as SIGHUP does for a process.
    pub fn reload_tokens(&self) -> anyhow::Result<usize> {
        match &self.running {
            Running::InProcess { auth, .. } => auth.reload(),
            Running::Process { .. } => anyhow::bail!("send SIGHUP to a child process instead"),
        }
    }

    /// The process id of a child-process server.
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Process { child } => child.id(),
            Running::InProcess { .. } => None,
        }
    }

    /// A CounterService client on a new connection.
    pub async fn counter_client(&self) -> anyhow::Result<CounterServiceClient<Channel>> {
        Ok(CounterServiceClient::new(self.channel().await?))
    }

    /// A StockService client on a new connection.
    pub async fn stock_client(&self) -> anyhow::Result<StockServiceClient<Channel>> {
        Ok(StockServiceClient::new(self.channel().await?))
    }

    /// grpc.health.v1 status of `service` ("" for the whole server).
    pub async fn health_status(
        &self,
        service: &str,
    ) -> anyhow::Result<tonic_health::pb::health_check_response::ServingStatus> {
        let mut client = tonic_health::pb::health_client::HealthClient::new(self.channel().await?);
        let response = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await?
            .into_inner();
        Ok(response.status())
    }

    /// The engine of an in-process server.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        match &self.running {
            Running::InProcess { engine, .. } => Some(Arc::clone(engine)),
            Running::Process { .. } => None,
        }
    }

    /// SIGKILL for a child process (no chance to clean up); an in-process server is aborted.
    pub fn kill(&mut self) {
        match &mut self.running {
            Running::Process { child } => {
                let _ = child.start_kill();
            }
            Running::InProcess { task, .. } => {
                if let Some(task) = task.take() {
                    task.abort();
                }
            }
        }
    }

    /// The exit status of a child process that ends by itself within `limit`; None when it is
    /// still running then.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let Running::Process { child } = &mut self.running else {
            return None;
        };
        tokio::time::timeout(limit, child.wait()).await.ok()?.ok()
    }

    /// Waits until a killed child process is gone.
    pub async fn wait_killed(&mut self) {
        if let Running::Process { child } = &mut self.running {
            let _ = child.wait().await;
        }
    }

    /// A graceful stop (SIGTERM for a child process); returns whether it exited successfully.
    pub async fn stop(&mut self) -> anyhow::Result<bool> {
        match &mut self.running {
            Running::Process { child } => {
                let pid = child.id().context("process already gone")?;
                let status = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await?;
                anyhow::ensure!(status.success(), "kill -TERM failed");
                let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
                Ok(exit.success())
            }
            Running::InProcess { stop, task, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                match task.take() {
                    Some(task) => Ok(tokio::time::timeout(Duration::from_secs(30), task)
                        .await??
                        .is_ok()),
                    None => Ok(false),
                }
            }
        }
    }

    /// A graceful stop via SIGTERM that returns the process's exit status and how long it took.
    pub async fn terminate(&mut self) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        let Running::Process { child } = &mut self.running else {
            anyhow::bail!("terminate is for child processes");
        };
        let pid = child.id().context("process already gone")?;
        let started = std::time::Instant::now();
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
        Ok((exit, started.elapsed()))
    }

    /// The metrics endpoint's text (GET /metrics), failing unless it answers 200.
    pub async fn scrape_metrics(&self) -> anyhow::Result<String> {
        let addr = self
            .metrics_addr
            .context("start the server with --metrics-listen 127.0.0.1:0")?;
        scrape::get(addr, "/metrics").await
    }

    /// The child process's log so far.
    pub fn log(&self) -> String {
        self.log_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Process { child } => {
                let _ = child.start_kill();
            }
            Running::InProcess { stop, task, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                if let Some(task) = task.take() {
                    task.abort();
                }
            }
        }
    }
}

/// A channel whose calls carry a bearer token.
pub type AuthedChannel = InterceptedService<Channel, CallMetadata>;

/// A token file for a test: principals added through the server's own `token add` code.
pub struct TestTokens {
    /// The file (pass it with --token-file).
    pub path: PathBuf,
    tokens: std::collections::HashMap<String, String>,
}

impl TestTokens {
    /// An empty token file in the test's directory.
    pub fn new(db: &TestDatabase) -> TestTokens {
        TestTokens {
            path: db
                .dir
                .path()
                .join(format!("tokens-{:08x}.txt", rand::random::<u32>())),
            tokens: Default::default(),
        }
    }

    /// Adds a principal (`role`: counter, supervisor, agency or admin) and returns its token.
    pub fn add(
        &mut self,
        name: &str,
        role: &str,
        office: Option<&str>,
        service_points: Option<&str>,
    ) -> anyhow::Result<String> {
        let role = blangko_server::auth::Role::parse(role).context("unknown role")?;
        let token = blangko_server::auth::tokens::add_to_file(
            &self.path,
            name,
            role,
            office,
            service_points,
        )?;
        self.tokens.insert(name.to_string(), token.clone());
        Ok(token)
    }

    /// Removes a principal from the file (the server notices at its next reload).
    pub fn revoke(&mut self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            blangko_server::auth::tokens::revoke_in_file(&self.path, name)?,
            "no principal {name}"
        );
        Ok(())
    }

    /// The token of `name`.
    pub fn token(&self, name: &str) -> &str {
        self.tokens.get(name).map(String::as_str).unwrap_or("")
    }

    /// The --token-file argument value.
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

fn server_args(db: &TestDatabase, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--nik-key-file".into(),
        db.nik_key_file.display().to_string(),
    ];
    args.extend(server_args_without_key(db, extra));
    args
}

fn server_args_without_key(db: &TestDatabase, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--database".into(),
        db.url.clone(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `scenario` once per backend (SQLite, then PostgreSQL unless opted out), each on a
/// fresh database, naming the backend in any failure.
pub async fn on_each_backend<F, Fut>(scenario: F) -> anyhow::Result<()>
where
    F: Fn(Arc<TestDatabase>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for backend in postgres::backends() {
        let db = TestDatabase::new(backend).await?;
        scenario(db)
            .await
            .with_context(|| format!("scenario failed on {backend:?}"))?;
    }
    Ok(())
}

/// The field violations of an INVALID_ARGUMENT status, as (field, description).
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// A status's `google.rpc.LocalizedMessage`, as (locale, message), if it has one.
pub fn localized_message(status: &tonic::Status) -> Option<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_localized_message()
        .map(|m| (m.locale, m.message))
}

/// The field violations of an INVALID_ARGUMENT status, as (field, locale, localized message):
/// each field's reason in the caller's language beside the English description.
pub fn localized_violations(status: &tonic::Status) -> Vec<(String, String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| {
                    let (locale, message) = v
                        .localized_message
                        .map(|m| (m.locale, m.message))
                        .unwrap_or_default();
                    (v.field, locale, message)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status, if it has one.
pub fn error_reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|i| i.reason)
}
