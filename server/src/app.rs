//! Builds the server and runs it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blangko_proto::v1::counter_service_server::CounterServiceServer;
use blangko_proto::v1::stock_service_server::StockServiceServer;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::tokens::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::engine::Engine;
use crate::grpc::counter::CounterApi;
use crate::grpc::stock::StockApi;
use crate::metrics::http::MetricsState;
use crate::nik_key::{NikKey, default_key_path};
use crate::overload::{ConcurrencyBudget, LoadShedLayer, RequestTimeoutLayer};
use crate::store::{DatabaseKind, Store, StoreOptions};
use crate::telemetry::RequestContextLayer;

/// Largest gRPC message accepted or sent (requests are small; the largest answers are pages).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest block of request headers (metadata) per call: a bearer token and a few small headers
/// fit many times over; a flood of headers is refused by HTTP/2 before any handler runs.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// How often the NIK retention purge runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// TCP keepalive on accepted connections: the first probe after this long without traffic...
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ...then one probe this often...
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection is closed after this many unanswered probes.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Longest wait for the database's close (the Reserve journal's fold, the pools) past the drain
/// deadline. What it cuts is kept: the next start folds the journal, SQLite recovers its WAL.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A built server: database open and migrated, socket bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    engine: Arc<Engine>,
    /// Who callers are: the token table (or none, on loopback).
    auth: Arc<Authenticator>,
    /// TLS, when a certificate was given.
    tls: Option<ServerTlsConfig>,
    /// The metrics endpoint's socket, when --metrics-listen is given.
    metrics_listener: Option<TcpListener>,
    config: Config,
}

impl Application {
    /// Opens the database, loads the NIK key, binds the socket.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::with_offset_ms(
            config.clock_offset_secs.saturating_mul(1000),
        ));
        Self::build_with_clock(config, clock).await
    }

    /// As `build`, with an injected clock.
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Application> {
        // Refuse an unsafe configuration before touching the database.
        let auth = Arc::new(authenticator_for(&config)?);
        let tls = tls_config(&config)?;
        let store = Store::open(&StoreOptions {
            url: config.database.clone(),
            max_connections: config.db_max_connections,
            acquire_timeout: Duration::from_secs(config.db_acquire_timeout_secs),
            lock_timeout: Duration::from_secs(config.db_lock_timeout_secs),
            sqlite_sync: config.sqlite_synchronous,
            journal: crate::store::journal::Limits {
                max_reservations: config.reserve_journal_max,
                fold_after_pause: Duration::from_millis(config.reserve_journal_pause_ms),
            },
        })
        .await?;
        let nik_key = load_nik_key(&config, &store)?;
        check_nik_key(&store, &nik_key, config.nik_key_changed, clock.now_ms()).await?;
        crate::upgrades::run(&store, &nik_key, clock.now_ms())
            .await
            .context("cannot upgrade the stored data")?;
        let engine = Engine::shared(
            store,
            clock,
            nik_key,
            config.max_watchers,
            Duration::from_millis(config.watch_refresh_ms),
            config.reserve_batch_size as usize,
        );
        if config.demo {
            crate::demo::seed(&engine)
                .await
                .context("cannot seed the demo data")?;
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "the metrics endpoint has no authentication and shows every office's stock and quota figures: keep its port on an internal network (README: Metrics)");
                }
                Some(crate::metrics::http::bind(addr).await?)
            }
            None => None,
        };
        Ok(Application {
            listener,
            engine,
            auth,
            tls,
            metrics_listener,
            config,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The bound address of the metrics endpoint, when it is on.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        Ok(match &self.metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        })
    }

    /// The engine (tests inspect it).
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// The authenticator (tests reload its token file as SIGHUP does).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(&self.auth)
    }

    /// Serves until `shutdown` completes, then drains: health turns NOT_SERVING, open streams
    /// end, calls in flight finish, all within the drain time-out.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run_until_stopped_or_forced(shutdown, std::future::pending())
            .await
    }

    /// [`Application::run_until_stopped`], and when `stop_now` completes while it stops (an
    /// operator's second SIGINT or SIGTERM), it stops at once: the calls still running and the
    /// database's close are not waited for, and it returns an error. The stop is bounded either
    /// way: the drain and the background tasks by the drain time-out, the database's close by
    /// [`CLOSE_GRACE`] past it.
    pub async fn run_until_stopped_or_forced(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        stop_now: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            engine,
            auth,
            tls,
            metrics_listener,
            config,
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        let health_reporter = tonic_health::server::HealthReporter::new();
        // Its Watch streams end once the server drains (after NOT_SERVING).
        let health_service = crate::grpc::health::service(&health_reporter, stop_rx.clone());
        health_reporter
            .set_serving::<CounterServiceServer<CounterApi>>()
            .await;
        health_reporter
            .set_serving::<StockServiceServer<StockApi>>()
            .await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(blangko_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(blangko_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let counter = CounterServiceServer::new(CounterApi::new(
            Arc::clone(&engine),
            stop_rx.clone(),
            Arc::clone(&auth),
            config.max_watchers_per_caller,
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let stock = StockServiceServer::new(StockApi::new(Arc::clone(&engine)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let sweeper = tokio::spawn(Arc::clone(&engine).run_sweeper(
            Duration::from_secs(config.sweep_interval_secs),
            stop_rx.clone(),
        ));

        let reloader = auth
            .is_enforcing()
            .then(|| tokio::spawn(reload_tokens_on_sighup(Arc::clone(&auth), stop_rx.clone())));

        let retention = (config.nik_retention_days > 0).then(|| {
            tokio::spawn(run_retention(
                Arc::clone(&engine),
                config.nik_retention_days,
                stop_rx.clone(),
            ))
        });

        let budget = Arc::new(ConcurrencyBudget::new(
            config.max_concurrent_requests as usize,
        ));
        let metrics_server = metrics_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
            }
            let state = MetricsState::new(Arc::clone(&engine), Arc::clone(&budget));
            tokio::spawn(crate::metrics::http::serve(
                listener,
                state,
                stop_rx.clone(),
            ))
        });

        let change_listener = (engine.store.kind() == DatabaseKind::Postgres).then(|| {
            tokio::spawn(Arc::clone(&engine).run_change_listener(
                config.database.clone(),
                Duration::from_secs(config.change_listener_probe_secs),
                stop_rx.clone(),
            ))
        });

        // The signal: health goes NOT_SERVING first (load balancers stop sending), then the
        // stop flag ends open streams and starts tonic's graceful shutdown.
        let stopper = {
            let health_reporter = health_reporter.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutdown requested: draining");
                health_reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                health_reporter
                    .set_not_serving::<CounterServiceServer<CounterApi>>()
                    .await;
                health_reporter
                    .set_not_serving::<StockServiceServer<StockApi>>()
                    .await;
                let _ = stop_tx.send(true);
                stop_tx
            })
        };

        let mut stopped = stop_rx.clone();
        // The connection: HTTP/2 settings, the same for every client.
        let mut builder = tonic::transport::Server::builder()
            // Keep-alive: ping an idle connection every interval and close it when the ping is
            // not answered in time, so dead clients (a counter PC switched off) free their
            // connection and NAT mappings stay alive.
            .http2_keepalive_interval(Some(Duration::from_secs(
                config.http2_keepalive_interval_secs,
            )))
            .http2_keepalive_timeout(Some(Duration::from_secs(
                config.http2_keepalive_timeout_secs,
            )))
            // Streams per connection: at most this many calls at once on one connection
            // (HTTP/2 SETTINGS), so one client cannot open thousands of streams.
            .max_concurrent_streams(config.max_streams_per_connection)
            // Header size: a bounded metadata block per call.
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("cannot configure TLS")?;
        }
        // Every call passes these layers, outermost first. (Message size limits, the last
        // bound, are set per service above: MAX_MESSAGE_BYTES each way.)
        let layers = tower::ServiceBuilder::new()
            // 1. Request context: the request id (x-request-id, echoed back), the `rpc` span, one
            //    log line and the RPC metrics per call. Outermost, so it also sees the calls the
            //    layers below refuse.
            .layer(RequestContextLayer::new(
                Arc::clone(&engine.metrics),
                Arc::clone(&engine.clock),
            ))
            // 2. Concurrency limit with load shedding: past --max-concurrent-requests calls in
            //    flight (all connections together) a call is refused at once with UNAVAILABLE
            //    and RetryInfo, never queued. WatchQuota, health and reflection are exempt.
            .layer(LoadShedLayer::new(
                Arc::clone(&budget),
                Arc::clone(&engine.metrics),
            ))
            // 3. Request time-out: a call whose answer is not ready after
            //    --request-timeout-secs is answered DEADLINE_EXCEEDED and frees its slot.
            .layer(RequestTimeoutLayer::new(
                Duration::from_secs(config.request_timeout_secs),
                Arc::clone(&engine.metrics),
            ))
            // 4. Authentication: a call without a valid token is refused from its headers,
            //    before its body is read or decoded.
            .layer(crate::auth::layer::AuthLayer::new(Arc::clone(&auth)));
        let server = builder
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(counter)
            .add_service(stock)
            // TCP_NODELAY on every accepted connection: a small answer written in two pieces
            // (HEADERS, then DATA) otherwise waits for the client's delayed ACK, up to 40 ms, on
            // every call of a client with few calls in flight (a counter terminal).
            .serve_with_incoming_shutdown(
                crate::incoming::bounded(
                    tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        // A peer that vanished without closing (a counter PC switched off, a
                        // NAT that dropped the flow) is found and its connection closed after
                        // about 90 s instead of never.
                        .with_keepalive(Some(TCP_KEEPALIVE_IDLE))
                        .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
                        .with_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES)),
                    crate::incoming::Limits {
                        max_connections: crate::incoming::within_open_file_limit(
                            config.max_connections,
                            config.db_max_connections,
                        ),
                        max_per_peer: (config.max_connections_per_peer > 0)
                            .then_some(config.max_connections_per_peer),
                        first_call: Duration::from_secs(config.first_call_timeout_secs),
                        idle: (config.idle_timeout_secs > 0)
                            .then(|| Duration::from_secs(config.idle_timeout_secs)),
                    },
                ),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            );
        let mut server = Box::pin(server);
        let mut stopping = stop_rx.clone();
        let mut stop_now = StopNow::new(stop_now);
        let served = tokio::select! {
            result = &mut server => Some(result),
            _ = stopping.wait_for(|s| *s) => None,
        };
        // One deadline for the whole stop: the drain, then the background tasks; the database's
        // close has CLOSE_GRACE past it. A second signal cuts every wait at once.
        let drain = Duration::from_secs(config.drain_timeout_secs);
        let deadline = tokio::time::Instant::now() + drain;
        let result = match served {
            Some(result) => result.map_err(anyhow::Error::from),
            None => tokio::select! {
                drained = tokio::time::timeout_at(deadline, server) => match drained {
                    Ok(result) => result.map_err(anyhow::Error::from),
                    Err(_) => {
                        tracing::warn!(
                            ?drain,
                            "drain time-out reached; stopping with calls still running (they end with the process, unanswered)"
                        );
                        Ok(())
                    }
                },
                () = stop_now.wait() => Ok(()),
            },
        };
        stopper.abort();
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        if let Some(retention) = retention {
            // A pass can scan for long (every reservation past retention, after each start);
            // each chunk is a transaction of its own, so stopping it loses nothing: the next
            // pass finds what this one left.
            retention.abort();
            let _ = retention.await;
        }
        finish(sweeper, "the hold sweeper", deadline, &mut stop_now).await;
        if let Some(change_listener) = change_listener {
            finish(
                change_listener,
                "the change listener",
                deadline,
                &mut stop_now,
            )
            .await;
        }
        if let Some(metrics_server) = metrics_server {
            // A scrape in progress may finish; a scraper that holds on is cut at the deadline.
            finish(
                metrics_server,
                "the metrics endpoint",
                deadline,
                &mut stop_now,
            )
            .await;
        }
        // After a second signal the close is not begun: a fold started now would only be cut.
        if !stop_now.fired() {
            let close_by = deadline.max(tokio::time::Instant::now()) + CLOSE_GRACE;
            // A task of its own: the close folds the journal and closes SQLite's connections on
            // its thread (blocking), and the time limit and a second signal must be seen meanwhile.
            let mut closing = tokio::spawn({
                let engine = Arc::clone(&engine);
                async move { engine.store.close().await }
            });
            tokio::select! {
                biased;
                _ = &mut closing => {}
                () = tokio::time::sleep_until(close_by) => {
                    tracing::warn!(
                        grace = ?CLOSE_GRACE,
                        "the database did not close in time; stopping without it (committed work is kept: the next start folds the Reserve journal and recovers the WAL)"
                    );
                }
                () = stop_now.wait() => {}
            }
        }
        if stop_now.fired() {
            anyhow::bail!(
                "stopped on a second signal while draining; calls still running were not answered"
            );
        }
        tracing::info!("stopped");
        result
    }
}

/// The warning for tokens sent in the clear: a token file, no TLS, and an address other hosts
/// reach. Not refused: TLS may end at a proxy in front of the server on a private network.
fn plaintext_warning(config: &Config) -> Option<&'static str> {
    (config.token_file.is_some() && config.tls_cert.is_none() && !config.listen.ip().is_loopback())
        .then_some(
            "serving WITHOUT TLS on a non-loopback address: bearer tokens and the NIKs in Reserve requests cross the network in the clear; give --tls-cert and --tls-key, or keep this port behind a TLS proxy on a private network",
        )
}

/// The authenticator the configuration asks for. Without a token file the server runs open, which
/// is allowed on a loopback address only (or with the explicit --insecure-no-auth).
fn authenticator_for(config: &Config) -> anyhow::Result<Authenticator> {
    if let Some(path) = &config.token_file {
        let auth = Authenticator::from_file(path)?;
        tracing::info!(path = %path.display(), "authentication: bearer tokens from the token file (SIGHUP reloads it)");
        if let Some(warning) = plaintext_warning(config) {
            tracing::warn!(listen = %config.listen, "{warning}");
        }
        return Ok(auth);
    }
    if config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "no --token-file: serving WITHOUT authentication (allowed on a loopback address only); every caller may do everything"
        );
        Ok(Authenticator::open())
    } else if config.insecure_no_auth {
        tracing::warn!(
            listen = %config.listen,
            "--insecure-no-auth: serving WITHOUT authentication on a non-loopback address; anyone who reaches the port may do everything"
        );
        Ok(Authenticator::open())
    } else {
        anyhow::bail!(
            "refusing to listen on {} without authentication: pass --token-file FILE (create one with \
`blangko-server --token-file FILE token add NAME --role admin`), listen on a loopback address, \
or pass --insecure-no-auth if you really mean it",
            config.listen
        )
    }
}

/// TLS settings from --tls-cert/--tls-key (and --tls-client-ca for mutual TLS).
fn tls_config(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read the TLS {what} {}", path.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read(cert, "certificate")?,
        read(key, "key")?,
    ));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    // A handshake that stops part way is given up at the first-call deadline, as a silent
    // connection is (`incoming.rs`).
    Ok(Some(tls.timeout(Duration::from_secs(
        config.first_call_timeout_secs,
    ))))
}

/// Re-reads the token file on every SIGHUP, without a restart or a dropped connection. A bad
/// file keeps the previous table in force.
async fn reload_tokens_on_sighup(
    auth: Arc<Authenticator>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGHUP: the token file will not be reloaded");
                return;
            }
        };
        // A SIGHUP sent while the server was starting (after it read the token file, before
        // this listener existed) was ignored: read the file once more now, so a token revoked
        // meanwhile is not served until the next SIGHUP.
        match auth.reload() {
            Ok(principals) => tracing::debug!(principals, "token file read again after start"),
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "token file NOT read again after start; the tokens read at start stay valid")
            }
        }
        loop {
            tokio::select! {
                got = hangup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    match auth.reload() {
                        Ok(principals) => tracing::info!(principals, "SIGHUP: token file reloaded"),
                        Err(err) => tracing::error!(error = %format!("{err:#}"), "SIGHUP: token file NOT reloaded; the previous tokens stay valid"),
                    }
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (auth, stop.wait_for(|s| *s).await);
    }
}

/// Purges NIK hashes past retention at start and then every hour.
async fn run_retention(
    engine: Arc<Engine>,
    retention_days: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(err) = engine
            .purge_nik_hashes(engine.clock.now_ms(), retention_days)
            .await
        {
            tracing::warn!(error = %err, "NIK retention purge failed; trying again later");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Refuses a NIK key other than the one the database's NIKs were hashed with (its fingerprint is
/// stored by the first server to start), unless `changed` says the change is deliberate. `now_ms`
/// (the server's clock, `--clock-offset-secs` included) stamps when the fingerprint was set.
async fn check_nik_key(
    store: &Store,
    key: &NikKey,
    changed: bool,
    now_ms: i64,
) -> anyhow::Result<()> {
    let fingerprint = key.check_fingerprint();
    let mut tx = store.begin().await?;
    sqlx::query(
        "INSERT INTO nik_key_check (id, fingerprint, set_ms) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&fingerprint)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    let stored: String = sqlx::query_scalar("SELECT fingerprint FROM nik_key_check WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    if stored != fingerprint {
        if !changed {
            anyhow::bail!(
                "this database's NIKs were hashed with another NIK key (check {}…, this key's {}…): \
                 give every replica the key the database was started with (--nik-key-file or \
                 BLANGKO_NIK_KEY), or, to change the key on purpose after the service day, start \
                 once with --nik-key-changed (README, \"The NIK key\")",
                stored.chars().take(12).collect::<String>(),
                fingerprint.chars().take(12).collect::<String>()
            );
        }
        sqlx::query("UPDATE nik_key_check SET fingerprint = $1, set_ms = $2 WHERE id = 1")
            .bind(&fingerprint)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tracing::warn!(
            "the NIK key was changed (--nik-key-changed): NIKs reserved or activated before no longer match"
        );
    }
    tx.commit().await?;
    store.sync().await?;
    Ok(())
}

/// The NIK key: from the configured file, or (SQLite only) generated beside the database.
fn load_nik_key(config: &Config, store: &Store) -> anyhow::Result<NikKey> {
    if let Ok(hex) = std::env::var("BLANGKO_NIK_KEY") {
        return NikKey::from_hex(&hex).context("BLANGKO_NIK_KEY");
    }
    match (&config.nik_key_file, store.kind()) {
        (Some(path), _) => NikKey::load_or_create(path, store.kind() == DatabaseKind::Sqlite),
        (None, DatabaseKind::Sqlite) => {
            let db = store
                .sqlite_path()
                .context("SQLite store without a file path")?;
            NikKey::load_or_create(&default_key_path(db), true)
        }
        (None, DatabaseKind::Postgres) => anyhow::bail!(
            "with PostgreSQL every replica must hash NIKs with the same key: pass --nik-key-file FILE \
(or BLANGKO_NIK_KEY_FILE / BLANGKO_NIK_KEY with 64 hex characters); create one with: openssl rand -hex 32 > nik.key"
        ),
    }
}

/// Initializes logging (call once, from main).
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a log shipper gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        crate::config::LogFormat::Text => builder.init(),
        crate::config::LogFormat::Json => builder.json().init(),
    }
}

/// An operator's "stop now" while the server stops (a second SIGINT or SIGTERM); remembered once
/// it has come, so that every later wait of the stop returns at once.
struct StopNow {
    signal: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl StopNow {
    fn new(signal: impl Future<Output = ()> + Send + 'static) -> StopNow {
        StopNow {
            signal: Some(Box::pin(signal)),
        }
    }

    /// Completes when the signal has come (at once after the first time); logs it once.
    async fn wait(&mut self) {
        if let Some(signal) = self.signal.as_mut() {
            signal.await;
            self.signal = None;
            tracing::warn!(
                "second signal while draining: stopping now; calls still running end unanswered (a retry with the same request_id after the restart gets what was recorded)"
            );
        }
    }

    fn fired(&self) -> bool {
        self.signal.is_none()
    }
}

/// Waits for a background task of the stop until `deadline` or a second signal; a task still
/// running then is aborted (with a warning at the deadline).
async fn finish<T>(
    mut task: tokio::task::JoinHandle<T>,
    what: &str,
    deadline: tokio::time::Instant,
    stop_now: &mut StopNow,
) {
    tokio::select! {
        // A task that has ended is not cut, even past the deadline.
        biased;
        _ = &mut task => return,
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!("{what} was still running at the drain time-out; stopped");
        }
        () = stop_now.wait() => {}
    }
    task.abort();
}

/// SIGINT and SIGTERM, taken over from their default (ending the process at once) when made:
/// made before the server is built, a signal that arrives while it starts (its migrations, a
/// journal fold, a database lock it waits for) is kept, and the server stops cleanly as soon
/// as it serves (`cli::serve`); a second one during the start ends it at once, for a start that
/// waits for ever (another replica stuck holding the migration lock). Before, the first signal
/// ended the process by its default action, or, as PID 1 in a container, was ignored and lost
/// until the SIGKILL.
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Takes SIGINT and SIGTERM over (Ctrl-C elsewhere, listened for at the first wait); one
    /// that cannot be is logged and keeps its default.
    pub fn take_over() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let take = |kind: SignalKind, name: &str| {
                signal(kind)
                    .inspect_err(|err| {
                        tracing::warn!(error = %err, "cannot take {name} over: a {name} ends this process at once");
                    })
                    .ok()
            };
            ShutdownSignals {
                interrupt: take(SignalKind::interrupt(), "SIGINT"),
                terminate: take(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Completes on the next SIGINT or SIGTERM (one received since the last, or since
    /// [`ShutdownSignals::take_over`], included); never for a signal that was not taken over.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(self.interrupt.as_mut()) => {},
                () = next(self.terminate.as_mut()) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_the_clear_on_a_reachable_address_are_warned_about() {
        let mut config = Config::defaults();
        config.token_file = Some("tokens.txt".into());
        config.listen = "0.0.0.0:50051".parse().unwrap();
        assert!(plaintext_warning(&config).is_some_and(|w| w.contains("WITHOUT TLS")));
        // With TLS, on a loopback address, or without tokens (refused elsewhere): no warning.
        config.tls_cert = Some("cert.pem".into());
        assert_eq!(plaintext_warning(&config), None);
        config.tls_cert = None;
        config.listen = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(plaintext_warning(&config), None);
        config.listen = "0.0.0.0:50051".parse().unwrap();
        config.token_file = None;
        assert_eq!(plaintext_warning(&config), None);
    }
}
