//! Talking to the servers: one lazily connected channel per `--server` endpoint, calls spread
//! round-robin over them, failover to the next endpoint, a time-out per call, and bounded
//! exponential backoff with jitter between rounds.
//!
//! Only UNAVAILABLE, DEADLINE_EXCEEDED and a connection that broke before the server answered are
//! retried, always with the very same request (so the same `request_id`: the server replays its
//! first answer). Every status the server itself answered, INVALID_ARGUMENT above all, goes
//! straight back to the caller.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blangko_proto::v1::counter_service_client::CounterServiceClient;
use blangko_proto::v1::stock_service_client::StockServiceClient;
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;

/// The longest `request_id` the server accepts.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// How long an endpoint that just failed is tried only after the healthy ones. Long enough that a
/// dead replica does not cost every second call a connection attempt, short enough that a
/// restarted one is used again soon.
const DOWN_PENALTY: Duration = Duration::from_secs(5);

/// The deadline sent to the server (`grpc-timeout`) is the local time-out plus this margin, so
/// that the local time-out always fires first and the call is retried as DEADLINE_EXCEEDED: a
/// tonic server reports its own expired deadline as CANCELLED ("Timeout expired").
const SERVER_DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// Connection attempts never wait longer than this, whatever the per-call time-out.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait a server's RetryInfo can ask for before the next round; a longer (or hostile)
/// hint is cut to this, so a counter never stalls on one.
const MAX_RETRY_HINT: Duration = Duration::from_secs(10);

/// A counter-service client with the token and per-call time-out interceptor.
pub type CounterClient = CounterServiceClient<InterceptedService<Channel, CallMetadata>>;
/// A stock-service client with the token and per-call time-out interceptor.
pub type StockClient = StockServiceClient<InterceptedService<Channel, CallMetadata>>;
/// A grpc.health.v1 client with the token and per-call time-out interceptor.
pub type HealthCheckClient = HealthClient<InterceptedService<Channel, CallMetadata>>;

/// Settings of a [`Connection`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Server URLs (`http://host:port`; a bare `host:port` gets `http://`). At least one.
    pub servers: Vec<String>,
    /// The time-out of one call on one endpoint (sent as `grpc-timeout` and enforced locally).
    pub call_timeout: Duration,
    /// Sent as `authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Retry rounds after the first one (each round tries every endpoint once).
    pub retries: u32,
    /// TLS: the CA that signs the server's certificate, and the client's own certificate for
    /// mutual TLS. Set: every server is reached over https.
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA certificate that signs the servers' certificates (required).
    pub ca: std::path::PathBuf,
    /// The client's certificate, for servers that require mutual TLS.
    pub cert: Option<std::path::PathBuf>,
    /// The key of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig, ConnectError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Tls(
                    "--cert and --key go together".to_string(),
                ));
            }
        }
        Ok(tls)
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            servers: vec!["http://127.0.0.1:50051".to_string()],
            call_timeout: Duration::from_secs(5),
            token: None,
            retries: 3,
            tls: None,
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status that is not safe to retry.
    #[error("{0}")]
    Status(Status),
    /// No endpoint answered: every one was unavailable or timed out in every round.
    #[error("no server answered ({servers}): {detail}")]
    NoServer {
        /// The endpoints tried, comma-separated.
        servers: String,
        /// The last failure, one line.
        detail: String,
    },
}

/// Bad connection settings.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No `--server` given.
    #[error("no server given")]
    NoServers,
    /// A server URL that does not parse.
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A token that cannot be sent as a header.
    #[error("the token contains characters that cannot be sent in a header")]
    BadToken,
    /// Unusable TLS settings or files.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Adds the bearer token and the `grpc-timeout` of every call.
#[derive(Clone)]
pub struct CallMetadata {
    /// `Bearer <token>`, when a token was given.
    authorization: Option<MetadataValue<Ascii>>,
    /// The per-call deadline sent to the server; `None` for streams that stay open.
    timeout: Option<Duration>,
}

impl CallMetadata {
    /// Only the bearer token, no per-call deadline: for tools that bound their calls themselves
    /// (the load generator, the end-to-end tests). None or an empty token sends no header.
    pub fn bearer(token: Option<&str>) -> Result<CallMetadata, ConnectError> {
        Ok(CallMetadata {
            authorization: authorization(token)?,
            timeout: None,
        })
    }
}

/// `authorization: Bearer <token>` as a header value; None for no (or an empty) token.
fn authorization(token: Option<&str>) -> Result<Option<MetadataValue<Ascii>>, ConnectError> {
    match token {
        Some(token) if !token.is_empty() => format!("Bearer {token}")
            .parse::<MetadataValue<Ascii>>()
            .map(Some)
            .map_err(|_| ConnectError::BadToken),
        _ => Ok(None),
    }
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout + SERVER_DEADLINE_MARGIN);
        }
        Ok(request)
    }
}

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay before the second round.
    pub base: Duration,
    /// No delay is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(3),
        }
    }
}

impl Backoff {
    /// The delay after `round` failed rounds (0-based): `min(max, base * 2^round)`, of which a
    /// random half is taken away so that many counters do not retry in step.
    pub fn delay(&self, round: u32, rng: &mut impl Rng) -> Duration {
        let cap = self.cap(round);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        let half = cap_ms / 2;
        let jitter = if half == 0 {
            0
        } else {
            rng.random_range(0..=half)
        };
        Duration::from_millis(cap_ms - half + jitter)
    }

    /// The upper bound of [`Backoff::delay`] for `round`.
    pub fn cap(&self, round: u32) -> Duration {
        let factor = 1u32.checked_shl(round.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// The wait the server asked for in a `google.rpc.RetryInfo` detail (an overloaded server sends
/// one with UNAVAILABLE), at most [`MAX_RETRY_HINT`].
pub fn retry_hint(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .map(|delay| delay.min(MAX_RETRY_HINT))
}

/// The wait before the next round: our own backoff, or longer when a server asked for longer.
pub fn round_delay(backoff: Duration, server_hint: Option<Duration>) -> Duration {
    server_hint.map_or(backoff, |hint| backoff.max(hint))
}

/// A retryable status that a working server decided, with its reason (ErrorInfo), such as
/// EARLIER_HOLD_RELEASING: the applicant's hold elsewhere is being released. Load shedding
/// (OVERLOADED) counts as the server's trouble: another replica is tried first next time.
fn is_decided_by_server(status: &Status) -> bool {
    use tonic_types::StatusExt;
    status.code() == Code::Unavailable
        && status
            .get_details_error_info()
            .is_some_and(|info| !info.reason.is_empty() && info.reason != "OVERLOADED")
}

/// Whether a status is safe to retry with the same request: the call may not have happened, and
/// if it did the server replays its answer for the same request_id.
pub fn is_retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
        || is_server_deadline(status)
        || is_broken_call(status)
}

/// A status made on this side because the connection broke before the server answered: a
/// replica killed or restarted in the middle of a call, a network reset. tonic then gives
/// UNKNOWN ("transport error"), or INTERNAL or CANCELLED for an HTTP/2 reset, and keeps the
/// transport's error as the status's source; a status the server answered (read from its
/// trailers) has no source. The call may or may not have been done: the same request is safe
/// to send again, here or to another server.
fn is_broken_call(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unknown | Code::Internal | Code::Cancelled
    ) && std::error::Error::source(status).is_some()
}

/// A tonic server answers CANCELLED "Timeout expired" when the call's `grpc-timeout` ran out on
/// its side: that is a DEADLINE_EXCEEDED in all but name.
fn is_server_deadline(status: &Status) -> bool {
    status.code() == Code::Cancelled && status.message() == "Timeout expired"
}

/// One server endpoint.
struct Target {
    /// The URL as shown to the officer.
    url: String,
    /// A lazily connected channel: creating it never blocks, the first call connects.
    channel: Channel,
    /// Until when this endpoint is tried last because it just failed.
    down_until: Mutex<Option<Instant>>,
}

impl Target {
    /// Whether calls to this endpoint cross the network without TLS: an http:// URL whose host
    /// is not loopback.
    fn channel_is_plaintext_to_remote(&self) -> bool {
        let Ok(uri) = self.url.parse::<tonic::codegen::http::Uri>() else {
            return false;
        };
        uri.scheme_str() == Some("http") && !uri.host().is_some_and(is_loopback_host)
    }
}

/// `localhost`, or a loopback IP address (127.0.0.0/8, ::1, bracketed or not).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

struct Inner {
    targets: Vec<Target>,
    /// Round-robin position: each call starts at the next endpoint.
    next: AtomicUsize,
    call_timeout: Duration,
    authorization: Option<MetadataValue<Ascii>>,
    retries: u32,
    backoff: Backoff,
}

/// The client's connection to one or several server replicas. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

/// Puts `http://` before a bare `host:port`.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

impl Connection {
    /// Sets up one lazy channel per server. Nothing is connected yet, so this never fails because
    /// a server is down; it fails only on bad settings.
    pub fn new(options: &ConnectOptions) -> Result<Connection, ConnectError> {
        let servers: Vec<String> = options
            .servers
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|url| match (&options.tls, url.contains("://")) {
                (Some(_), false) => format!("https://{url}"),
                _ => normalize_url(url),
            })
            .collect();
        if servers.is_empty() {
            return Err(ConnectError::NoServers);
        }
        let connect_timeout = options.call_timeout.min(MAX_CONNECT_TIMEOUT);
        let tls = options
            .tls
            .as_ref()
            .map(TlsFiles::client_config)
            .transpose()?;
        let mut targets = Vec::with_capacity(servers.len());
        for url in servers {
            let endpoint =
                Endpoint::from_shared(url.clone()).map_err(|error| ConnectError::BadUrl {
                    url: url.clone(),
                    reason: error.to_string(),
                })?;
            if endpoint.uri().host().is_none() {
                return Err(ConnectError::BadUrl {
                    url,
                    reason: "no host".to_string(),
                });
            }
            // tonic speaks TLS only to an https:// URL: with --ca and http:// the calls would go
            // in the clear while the officer believes them protected. And there is no built-in
            // list of authorities: an https:// URL without --ca could never connect.
            match (endpoint.uri().scheme_str(), tls.is_some()) {
                (Some("http"), false) | (Some("https"), true) => {}
                (Some("http"), true) => {
                    return Err(ConnectError::BadUrl {
                        url,
                        reason: "--ca is given, so the URL must start with https:// (with http:// the calls would not use TLS)".to_string(),
                    });
                }
                (Some("https"), false) => {
                    return Err(ConnectError::BadUrl {
                        url,
                        reason: "an https:// server needs --ca (the certificate of the authority that signed the server's certificate)".to_string(),
                    });
                }
                _ => {
                    return Err(ConnectError::BadUrl {
                        url,
                        reason: "the URL must start with http:// or https://".to_string(),
                    });
                }
            }
            let endpoint = match &tls {
                Some(tls) => endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| ConnectError::Tls(e.to_string()))?,
                None => endpoint,
            };
            let channel = endpoint
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                // Keep-alive pings notice a vanished server on an idle watch stream.
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .connect_lazy();
            targets.push(Target {
                url,
                channel,
                down_until: Mutex::new(None),
            });
        }
        let authorization = authorization(options.token.as_deref())?;
        Ok(Connection {
            inner: Arc::new(Inner {
                targets,
                next: AtomicUsize::new(0),
                call_timeout: options.call_timeout,
                authorization,
                retries: options.retries,
                backoff: Backoff::default(),
            }),
        })
    }

    /// The endpoints a bearer token would cross the network to in the clear: http:// URLs of a
    /// host that is not loopback (`localhost`, 127.0.0.0/8, ::1), when a token is set. Empty
    /// without a token or with TLS.
    pub fn plaintext_token_urls(&self) -> Vec<&str> {
        if self.inner.authorization.is_none() {
            return Vec::new();
        }
        self.inner
            .targets
            .iter()
            .filter(|t| t.channel_is_plaintext_to_remote())
            .map(|t| t.url.as_str())
            .collect()
    }

    /// The endpoint URLs, in the order given.
    pub fn urls(&self) -> Vec<String> {
        self.inner.targets.iter().map(|t| t.url.clone()).collect()
    }

    /// The per-call time-out.
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    fn metadata(&self, timeout: Option<Duration>) -> CallMetadata {
        CallMetadata {
            authorization: self.inner.authorization.clone(),
            timeout,
        }
    }

    /// A counter-service client on endpoint `index` (no failover), for streams and per-endpoint checks.
    pub fn counter_client_at(
        &self,
        index: usize,
        timeout: Option<Duration>,
    ) -> Option<CounterClient> {
        let target = self.inner.targets.get(index)?;
        Some(CounterServiceClient::with_interceptor(
            target.channel.clone(),
            self.metadata(timeout),
        ))
    }

    /// A stock-service client on endpoint `index` (no failover).
    pub fn stock_client_at(&self, index: usize) -> Option<StockClient> {
        let target = self.inner.targets.get(index)?;
        Some(StockServiceClient::with_interceptor(
            target.channel.clone(),
            self.metadata(Some(self.inner.call_timeout)),
        ))
    }

    /// A health client on endpoint `index` (no failover).
    pub fn health_client_at(&self, index: usize) -> Option<HealthCheckClient> {
        let target = self.inner.targets.get(index)?;
        Some(HealthClient::with_interceptor(
            target.channel.clone(),
            self.metadata(Some(self.inner.call_timeout)),
        ))
    }

    /// Runs one counter-service call with time-out, failover and retry. `call` builds the request
    /// anew for every attempt from the same data (same request_id).
    pub async fn counter<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: FnMut(CounterClient) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let timeout = Some(self.inner.call_timeout);
        self.with_failover(
            |channel| CounterServiceClient::with_interceptor(channel, self.metadata(timeout)),
            call,
        )
        .await
    }

    /// Runs one stock-service call with time-out, failover and retry.
    pub async fn stock<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: FnMut(StockClient) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let timeout = Some(self.inner.call_timeout);
        self.with_failover(
            |channel| StockServiceClient::with_interceptor(channel, self.metadata(timeout)),
            call,
        )
        .await
    }

    /// Opens a server stream (e.g. WatchQuota) on the first endpoint that answers, with the same
    /// failover and retry as a unary call; the stream itself has no deadline.
    pub async fn counter_stream<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: FnMut(CounterClient) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.with_failover(
            |channel| CounterServiceClient::with_interceptor(channel, self.metadata(None)),
            call,
        )
        .await
    }

    /// The order in which to try the endpoints for one call: round-robin start, endpoints that
    /// failed recently last.
    fn order(&self) -> Vec<usize> {
        let count = self.inner.targets.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % count;
        let now = Instant::now();
        let mut healthy = Vec::with_capacity(count);
        let mut down = Vec::new();
        for offset in 0..count {
            let index = (start + offset) % count;
            let is_down = self.inner.targets[index]
                .down_until
                .lock()
                .map(|until| until.is_some_and(|t| t > now))
                .unwrap_or(false);
            if is_down {
                down.push(index);
            } else {
                healthy.push(index);
            }
        }
        healthy.extend(down);
        healthy
    }

    fn mark(&self, index: usize, failed: bool) {
        if let Some(target) = self.inner.targets.get(index)
            && let Ok(mut until) = target.down_until.lock()
        {
            *until = failed.then(|| Instant::now() + DOWN_PENALTY);
        }
    }

    async fn with_failover<C, T, M, F, Fut>(&self, make: M, mut call: F) -> Result<T, CallError>
    where
        M: Fn(Channel) -> C,
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut last_failure = String::new();
        // The last "not now" a server decided (an UNAVAILABLE with an ErrorInfo reason other
        // than OVERLOADED: the server is up and said why), given back as it is when the retries
        // run out, rather than "no server answered".
        let mut last_decided: Option<Status> = None;
        // The longest RetryInfo delay the servers asked for in the last round.
        let mut server_hint: Option<Duration> = None;
        for round in 0..=self.inner.retries {
            if round > 0 {
                let backoff = self.inner.backoff.delay(round - 1, &mut rand::rng());
                tokio::time::sleep(round_delay(backoff, server_hint.take())).await;
            }
            for index in self.order() {
                let target = &self.inner.targets[index];
                let client = make(target.channel.clone());
                let outcome = tokio::time::timeout(self.inner.call_timeout, call(client)).await;
                let status = match outcome {
                    Ok(Ok(response)) => {
                        self.mark(index, false);
                        let _ = crate::server_clock::observe(response.metadata());
                        return Ok(response.into_inner());
                    }
                    Ok(Err(status)) => {
                        let _ = crate::server_clock::observe(status.metadata());
                        status
                    }
                    Err(_elapsed) => Status::deadline_exceeded(format!(
                        "no answer within {} ms",
                        self.inner.call_timeout.as_millis()
                    )),
                };
                if !is_retryable(&status) {
                    return Err(CallError::Status(status));
                }
                if let Some(hint) = retry_hint(&status) {
                    server_hint = Some(server_hint.map_or(hint, |h| h.max(hint)));
                }
                last_failure = format!("{}: {}", target.url, one_line(status.message()));
                if is_decided_by_server(&status) {
                    // A healthy server: not put at the end of the order.
                    last_decided = Some(status);
                } else {
                    self.mark(index, true);
                    last_decided = None;
                }
            }
        }
        match last_decided {
            Some(status) => Err(CallError::Status(status)),
            None => Err(CallError::NoServer {
                servers: self.urls().join(", "),
                detail: last_failure,
            }),
        }
    }
}

/// Squeezes a possibly multi-line error message onto one line.
pub fn one_line(message: &str) -> String {
    let joined: Vec<&str> = message.split_whitespace().collect();
    let text = joined.join(" ");
    if text.is_empty() {
        "no details".to_string()
    } else {
        text
    }
}

/// A new request id for a one-shot command: `{prefix}-{32 hex digits}`, the first 12 the time in
/// unix milliseconds and the other 20 random (80 bits). Time first, as in a UUIDv7, so that ids
/// made one after another sort one after another: the server's idempotency index then grows at
/// its end instead of at a random page (`bench/sqlite-schema.py` measured about a fifth less
/// SQLite work per Reserve with such ids).
pub fn random_request_id(prefix: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random: [u8; 10] = rand::rng().random();
    let id = format!(
        "{prefix}-{:012x}{}",
        millis & 0xffff_ffff_ffff,
        hex::encode(random)
    );
    fit_request_id(id)
}

/// The request id of a queue ticket: the same office, service point, counter, local date and
/// ticket give the same id on every run, so a re-run after a crash can never reserve twice. The
/// counter is in it because two counters of a service point may number their tickets alike
/// (each its own 1, 2, 3): without it the second counter's ticket 1 got REQUEST_ID_REUSED.
/// Readable (`q-3275-mpp-loket-1-20261129-A017`) when it fits in 64 characters, else hashed.
pub fn queue_request_id(
    office: &str,
    service_point: &str,
    counter: &str,
    local_date: &str,
    ticket: &str,
) -> String {
    let date: String = local_date.chars().filter(|c| c.is_ascii_digit()).collect();
    let readable = format!("q-{office}-{service_point}-{counter}-{date}-{ticket}");
    if readable.len() <= MAX_REQUEST_ID_LEN && readable.is_ascii() {
        return readable;
    }
    let mut hasher = Sha256::new();
    for part in [office, service_point, counter, local_date, ticket] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hex::encode(hasher.finalize());
    let office_part: String = office
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    fit_request_id(format!("q-{office_part}-{date}-{}", &digest[..32]))
}

/// The request id of a queue ticket's Reserve made again after the reservation its first id
/// made (`after`) was cancelled or ran out: the server replays that first answer for ever, so the
/// ticket needs a new id, and a re-run must derive the same one (it replays the first id, sees
/// the same reservation, and so sends this id again instead of reserving twice).
pub fn queue_retry_request_id(first: &str, after: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(first.as_bytes());
    hasher.update([0u8]);
    hasher.update(after.as_bytes());
    let digest = hex::encode(hasher.finalize());
    let suffix = format!("-again-{}", &digest[..20]);
    let keep = MAX_REQUEST_ID_LEN - suffix.len();
    let prefix: String = first.chars().take(keep).collect();
    format!("{prefix}{suffix}")
}

/// Cuts an id to [`MAX_REQUEST_ID_LEN`] characters (on a character boundary).
fn fit_request_id(id: String) -> String {
    if id.len() <= MAX_REQUEST_ID_LEN {
        return id;
    }
    let mut cut = String::with_capacity(MAX_REQUEST_ID_LEN);
    for c in id.chars() {
        if cut.len() + c.len_utf8() > MAX_REQUEST_ID_LEN {
            break;
        }
        cut.push(c);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut rng = rand::rng();
        assert_eq!(backoff.cap(0), Duration::from_millis(100));
        assert_eq!(backoff.cap(1), Duration::from_millis(200));
        assert_eq!(backoff.cap(3), Duration::from_millis(800));
        assert_eq!(backoff.cap(10), Duration::from_secs(2));
        assert_eq!(backoff.cap(u32::MAX), Duration::from_secs(2));
        for round in 0..40 {
            for _ in 0..50 {
                let delay = backoff.delay(round, &mut rng);
                let cap = backoff.cap(round);
                assert!(delay <= cap, "round {round}: {delay:?} > {cap:?}");
                assert!(
                    delay >= cap / 2,
                    "round {round}: {delay:?} < half of {cap:?}"
                );
            }
        }
    }

    #[test]
    fn a_server_asking_for_a_longer_wait_gets_it_within_a_bound() {
        use tonic_types::{ErrorDetails, StatusExt};
        let overloaded = |delay: Duration| {
            Status::with_error_details(
                Code::Unavailable,
                "overloaded",
                ErrorDetails::with_retry_info(Some(delay)),
            )
        };
        assert_eq!(
            retry_hint(&overloaded(Duration::from_millis(1500))),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_hint(&overloaded(Duration::from_secs(3600))),
            Some(MAX_RETRY_HINT)
        );
        assert_eq!(retry_hint(&Status::unavailable("down")), None);
        let backoff = Duration::from_millis(200);
        assert_eq!(round_delay(backoff, None), backoff);
        assert_eq!(
            round_delay(backoff, Some(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
        assert_eq!(
            round_delay(backoff, Some(Duration::from_millis(50))),
            backoff
        );
    }

    #[test]
    fn backoff_has_jitter() {
        let backoff = Backoff::default();
        let mut rng = rand::rng();
        let delays: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff.delay(3, &mut rng)).collect();
        assert!(delays.len() > 1, "50 delays were all equal: no jitter");
    }

    #[test]
    fn only_unavailable_deadline_and_a_broken_connection_are_retried() {
        assert!(is_retryable(&Status::unavailable("down")));
        assert!(is_retryable(&Status::deadline_exceeded("slow")));
        assert!(is_retryable(&Status::cancelled("Timeout expired")));
        for status in [
            Status::invalid_argument("bad nik"),
            Status::not_found("no office"),
            Status::failed_precondition("expired"),
            Status::already_exists("reused"),
            Status::resource_exhausted("shed"),
            Status::internal("bug"),
            Status::cancelled("cancelled"),
            Status::unknown("the server's own UNKNOWN"),
        ] {
            assert!(
                !is_retryable(&status),
                "{:?} must not be retried",
                status.code()
            );
        }
        // The same codes made here from a transport failure (tonic keeps it as the source).
        let broken = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for code in [Code::Unknown, Code::Internal, Code::Cancelled] {
            let mut status = Status::new(code, "transport error");
            status.set_source(std::sync::Arc::new(broken()));
            assert!(is_retryable(&status), "{code:?} from a broken connection");
        }
    }

    #[test]
    fn queue_request_ids_are_stable_readable_and_short() {
        let q = |sp: &str, counter: &str, date: &str, ticket: &str| {
            queue_request_id("3275", sp, counter, date, ticket)
        };
        let id = q("mpp", "loket-1", "2026-11-29", "A017");
        assert_eq!(id, "q-3275-mpp-loket-1-20261129-A017");
        assert_eq!(id, q("mpp", "loket-1", "2026-11-29", "A017"));
        assert_ne!(id, q("mpp", "loket-1", "2026-11-30", "A017"));
        assert_ne!(id, q("kec-1", "loket-1", "2026-11-29", "A017"));
        assert_ne!(id, q("mpp", "loket-2", "2026-11-29", "A017"));
        assert_ne!(
            id,
            queue_request_id("3204", "mpp", "loket-1", "2026-11-29", "A017")
        );

        let long_sp = "kecamatan-bekasi-utara-pelayanan-keliling-sekolah-menengah-atas";
        let long = q(long_sp, "loket-1", "2026-11-29", "A017");
        assert!(long.len() <= MAX_REQUEST_ID_LEN, "{long}");
        assert!(long.starts_with("q-3275-20261129-"), "{long}");
        assert_eq!(long, q(long_sp, "loket-1", "2026-11-29", "A017"));
        assert_ne!(long, q(long_sp, "loket-1", "2026-11-29", "A018"));
        assert_ne!(long, q(long_sp, "loket-2", "2026-11-29", "A017"));
    }

    #[test]
    fn a_ticket_reserving_again_gets_a_stable_id_of_its_own() {
        let first = queue_request_id("3275", "mpp", "loket-1", "2026-11-29", "A017");
        let again = queue_retry_request_id(&first, "R019abc");
        assert_eq!(again, queue_retry_request_id(&first, "R019abc"));
        assert_ne!(again, queue_retry_request_id(&first, "R019abd"));
        assert_ne!(again, first);
        assert!(
            again.starts_with("q-3275-mpp-loket-1-20261129-A017-again-"),
            "{again}"
        );
        let long = "q".repeat(MAX_REQUEST_ID_LEN);
        let cut = queue_retry_request_id(&long, "R019abc");
        assert_eq!(cut.len(), MAX_REQUEST_ID_LEN);
        assert_ne!(cut, queue_retry_request_id(&long, "R019abd"));
        // Again after again: each lapse gives the ticket a new id.
        let twice = queue_retry_request_id(&again, "R01ffff");
        assert_ne!(twice, again);
        assert!(twice.len() <= MAX_REQUEST_ID_LEN);
    }

    #[test]
    fn random_request_ids_differ_and_fit() {
        let a = random_request_id("r");
        let b = random_request_id("r");
        assert_ne!(a, b);
        assert!(a.starts_with("r-"));
        assert_eq!(a.len(), 2 + 32);
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        // Time first: an id made later sorts after (a millisecond apart at least).
        std::thread::sleep(std::time::Duration::from_millis(2));
        let c = random_request_id("r");
        assert!(a[2..14] < c[2..14], "{a} then {c}");
        let long = random_request_id(&"x".repeat(60));
        assert_eq!(long.len(), MAX_REQUEST_ID_LEN);
    }

    #[test]
    fn urls_get_a_scheme_and_bad_ones_are_rejected() {
        assert_eq!(normalize_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(
            normalize_url("https://a.example:443"),
            "https://a.example:443"
        );
        let options = ConnectOptions {
            servers: vec!["http://exa mple:1".to_string()],
            ..ConnectOptions::default()
        };
        assert!(matches!(
            Connection::new(&options),
            Err(ConnectError::BadUrl { .. })
        ));
        let none = ConnectOptions {
            servers: vec![" ".to_string()],
            ..ConnectOptions::default()
        };
        assert!(matches!(
            Connection::new(&none),
            Err(ConnectError::NoServers)
        ));
        let other_scheme = ConnectOptions {
            servers: vec!["ftp://127.0.0.1:21".to_string()],
            ..ConnectOptions::default()
        };
        assert!(matches!(
            Connection::new(&other_scheme),
            Err(ConnectError::BadUrl { reason, .. }) if reason.contains("http:// or https://")
        ));
    }

    #[tokio::test]
    async fn a_token_to_a_remote_host_over_http_is_named_and_loopback_or_no_token_is_not() {
        let with = |servers: &[&str], token: Option<&str>| {
            let options = ConnectOptions {
                servers: servers.iter().map(|s| s.to_string()).collect(),
                token: token.map(str::to_string),
                ..ConnectOptions::default()
            };
            let conn = Connection::new(&options).unwrap();
            conn.plaintext_token_urls()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let local = [
            "http://127.0.0.1:50051",
            "127.0.0.2:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
        ];
        assert!(with(&local, Some("t")).is_empty());
        assert_eq!(
            with(
                &[
                    "http://127.0.0.1:1",
                    "http://10.1.2.3:50051",
                    "db.example:50051"
                ],
                Some("t")
            ),
            ["http://10.1.2.3:50051", "http://db.example:50051"]
        );
        assert!(with(&["http://10.1.2.3:50051"], None).is_empty());
        assert!(with(&["http://10.1.2.3:50051"], Some("")).is_empty());
    }

    /// One GetQuota through a connection to `server` with the given time-out and retries.
    async fn get_quota_from(
        server: &str,
        call_timeout: Duration,
        retries: u32,
    ) -> Result<blangko_proto::v1::GetQuotaResponse, CallError> {
        let options = ConnectOptions {
            servers: vec![server.to_string()],
            call_timeout,
            token: None,
            retries,
            tls: None,
        };
        let connection = match Connection::new(&options) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        connection
            .counter(|mut client| async move {
                client
                    .get_quota(blangko_proto::v1::GetQuotaRequest::default())
                    .await
            })
            .await
    }

    /// A server that answers every call "not now": UNAVAILABLE with ErrorInfo
    /// EARLIER_HOLD_RELEASING and a short RetryInfo, as blangko-server does for an applicant whose
    /// hold at another office is being released.
    #[derive(Clone, Default)]
    struct NotNow {
        /// Calls answered so far.
        calls: Arc<AtomicUsize>,
    }

    impl tonic::server::NamedService for NotNow {
        const NAME: &'static str = "blangko.v1.CounterService";
    }

    impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for NotNow {
        type Response = tonic::codegen::http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
            use tonic_types::{ErrorDetails, StatusExt};
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(10)));
            details.set_error_info(
                "EARLIER_HOLD_RELEASING",
                "blangko.v1",
                std::collections::HashMap::new(),
            );
            let status = Status::with_error_details(
                Code::Unavailable,
                "the hold at another office is being released",
                details,
            );
            std::future::ready(Ok(status.into_http()))
        }
    }

    #[tokio::test]
    async fn a_servers_not_now_is_given_back_with_its_reason_when_the_retries_run_out() {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let not_now = NotNow::default();
        let calls = Arc::clone(&not_now.calls);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(not_now)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let result = get_quota_from(&addr.to_string(), Duration::from_secs(5), 2).await;
        server.abort();
        // Asked again after the delay the server gave, as many times as --retries says: 1 + 2.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        // The server's own answer, with its reason: not "no server answered".
        match result {
            Err(CallError::Status(status)) => {
                use tonic_types::StatusExt;
                assert_eq!(status.code(), Code::Unavailable);
                assert_eq!(
                    status.get_details_error_info().map(|i| i.reason).as_deref(),
                    Some("EARLIER_HOLD_RELEASING")
                );
            }
            other => panic!("expected the server's status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dead_server_gives_one_no_server_error() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let result = get_quota_from("127.0.0.1:1", Duration::from_millis(500), 1).await;
        match result {
            Err(CallError::NoServer { servers, detail }) => {
                assert_eq!(servers, "http://127.0.0.1:1");
                assert!(detail.starts_with("http://127.0.0.1:1: "), "{detail}");
                assert!(!detail.contains('\n'));
            }
            other => panic!("expected NoServer, got {other:?}"),
        }
    }
}
