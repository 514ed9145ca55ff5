//! The outermost layer: every call gets a request id, a `tracing` span and, when it ends, a
//! log line and its place in the RPC metrics.
//!
//! - The request id comes from the caller's `x-request-id` metadata when it is 1 to
//!   [`MAX_REQUEST_ID_CHARS`] printable ASCII characters without spaces and holds no 16-digit
//!   run (a NIK sent by mistake is never logged or echoed); otherwise the server makes one.
//!   It is echoed in the answer's `x-request-id` metadata, on errors too.
//! - Every answer of the blangko services (not health or reflection) carries the server's clock
//!   in `x-server-time-ms` (milliseconds since the Unix epoch, UTC), on the errors it returns too
//!   (not on a CANCELLED tonic answers itself for a caller's `grpc-timeout`): a counter
//!   whose own clock is wrong judges a hold's expiry by the server's time, not by its own.
//! - The span `rpc` carries `method`, `request_id`, `office` and `service_point` (recorded by
//!   the handlers once they have decoded the request, see [`record_place`]), and at the end
//!   `code` (the gRPC status) and `latency_ms`. With `--log-format json` they are JSON fields.
//! - A call ends when its answer's last frame (the trailers with `grpc-status`) is sent; a
//!   stream that the client drops ends as CANCELLED.
//!
//! Log lines go to target `blangko_server::rpc`: calls that fail at INFO, calls that succeed
//! at DEBUG (`--log info,blangko_server::rpc=debug` logs every call; `…=warn` none).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tracing::Instrument;

use crate::clock::Clock;
use crate::metrics::Metrics;

/// The metadata key of the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The metadata key of the server's clock in every answer of the blangko services.
pub const SERVER_TIME_HEADER: &str = "x-server-time-ms";
/// The path prefix of the calls whose answers carry [`SERVER_TIME_HEADER`].
const BLANGKO_PATHS: &str = "/blangko.";
/// The longest request id accepted from a caller.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// The tracing target of the per-call log lines.
pub const RPC_TARGET: &str = "blangko_server::rpc";

/// The caller's request id when it is acceptable: bounded, printable ASCII, no spaces, and no
/// 16 digits in a row or split by dots, dashes, slashes or underscores (which could be a NIK).
pub fn accepted_request_id(value: &[u8]) -> Option<&str> {
    if value.is_empty() || value.len() > MAX_REQUEST_ID_CHARS {
        return None;
    }
    if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return None;
    }
    std::str::from_utf8(value)
        .ok()
        .filter(|id| !crate::domain::nik::has_nik_stretch_any_separator(id))
}

/// A fresh request id: `srv-` and three groups of 8 hex characters of randomness, joined by
/// `:`, which is neither a digit nor a separator a NIK is written with: even groups drawn all
/// decimal never read as a NIK's 16 digits, so a caller that sends the id back has it accepted.
pub fn new_request_id() -> String {
    let [a, b, c]: [u32; 3] = rand::random();
    format!("srv-{a:08x}:{b:08x}:{c:08x}")
}

/// Records the office and service point of the current call in its span (handlers call this
/// once the request is decoded). Values that are not well-formed ids are left out, so a
/// caller cannot put arbitrary text (or a NIK) into the log through these fields.
pub fn record_place(office_id: &str, service_point_id: &str) {
    let span = tracing::Span::current();
    if office_id.len() == 4 && office_id.bytes().all(|b| b.is_ascii_digit()) {
        span.record("office", office_id);
    }
    if is_loggable_id(service_point_id) {
        span.record("service_point", service_point_id);
    }
}

/// Records what a call decided in its span (`reserved`, `replayed`, an IKD referral cause, …: the
/// `outcome` label of `blangko_reservations_total`), beside its gRPC code.
pub fn record_outcome(outcome: &'static str) {
    tracing::Span::current().record("outcome", outcome);
}

/// A service point id fit for the log: 1 to 64 letters, digits, '-', '_' or '.', without 16
/// digits in a row or split by dots, dashes or underscores (as the id's own check refuses them:
/// a refused id is logged with its call, before the check has run).
fn is_loggable_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= crate::grpc::validate::MAX_ID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !crate::domain::nik::has_nik_stretch_any_separator(value)
}

/// Layer: request id, span, log line and RPC metrics.
#[derive(Clone)]
pub struct RequestContextLayer {
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl RequestContextLayer {
    /// Records finished calls in `metrics`; answers carry `clock`'s time.
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        RequestContextLayer { metrics, clock }
    }
}

impl<S> tower::Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> RequestContext<S> {
        RequestContext {
            inner,
            metrics: Arc::clone(&self.metrics),
            clock: Arc::clone(&self.clock),
        }
    }
}

/// The service [`RequestContextLayer`] wraps around the rest of the stack.
#[derive(Clone)]
pub struct RequestContext<S> {
    inner: S,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for RequestContext<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let in_flight = crate::incoming::mark_called(request.extensions());
        let started = Instant::now();
        let method = self.metrics.method_label(request.uri().path());
        let clock = request
            .uri()
            .path()
            .starts_with(BLANGKO_PATHS)
            .then(|| Arc::clone(&self.clock));
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| accepted_request_id(v.as_bytes()))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        // Handlers see the id the server uses, not a rejected one.
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            request.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        let span = tracing::info_span!(
            target: RPC_TARGET,
            "rpc",
            method = %method,
            request_id = %request_id,
            office = tracing::field::Empty,
            service_point = tracing::field::Empty,
            outcome = tracing::field::Empty,
            code = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        let call = span.in_scope(|| self.inner.call(request));
        let mut end = CallEnd {
            metrics: Arc::clone(&self.metrics),
            method,
            span: span.clone(),
            started,
            finished: false,
            _in_flight: in_flight,
        };
        Box::pin(
            async move {
                let mut response = match call.await {
                    Ok(response) => response,
                    Err(err) => {
                        end.finish(Code::Unknown);
                        return Err(err);
                    }
                };
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                if let Some(clock) = clock {
                    response
                        .headers_mut()
                        .insert(SERVER_TIME_HEADER, HeaderValue::from(clock.now_ms()));
                }
                // A trailers-only answer (every error) carries its status in the headers; any
                // other answer carries it in the trailers at the end of its body.
                if let Some(code) = grpc_status(response.headers()) {
                    end.finish(code);
                    return Ok(response);
                }
                Ok(response.map(|body| tonic::body::Body::new(ObservedBody { inner: body, end })))
            }
            .instrument(span),
        )
    }
}

/// The `grpc-status` in a header or trailer block.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// What it takes to close a call's books. Dropped unfinished — the answer's future or body
/// dropped before the status was sent: the client went away, its `grpc-timeout` ran out (tonic
/// then answers CANCELLED), or the server is stopping — the call ends as CANCELLED.
struct CallEnd {
    metrics: Arc<Metrics>,
    method: String,
    span: tracing::Span,
    started: Instant,
    finished: bool,
    /// The call keeps its connection from counting as idle until it ends (this is dropped
    /// with the answer's body, or with its future).
    _in_flight: Option<crate::incoming::CallInFlight>,
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

impl CallEnd {
    /// Logs and counts the call once (later calls do nothing).
    fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.started.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let code_name = crate::metrics::code_name(code);
        self.span.record("code", code_name);
        self.span.record("latency_ms", latency_ms);
        // Failures at INFO, successes at DEBUG: a line per call cut the throughput of cheap
        // calls (Health/Check) by about 30% in blangko-bench (BENCHMARKS.md) and would fill the
        // log with health probes; `--log info,blangko_server::rpc=debug` logs every call.
        self.span.in_scope(|| {
            if code == Code::Ok {
                tracing::debug!(target: RPC_TARGET, code = code_name, latency_ms, "rpc finished");
            } else {
                tracing::info!(target: RPC_TARGET, code = code_name, latency_ms, "rpc finished");
            }
        });
        self.metrics.record_rpc(
            std::mem::take(&mut self.method),
            code,
            elapsed.as_secs_f64(),
        );
    }
}

/// An answer body that notices its trailers (the call's status); dropped before them, its
/// [`CallEnd`] ends the call as CANCELLED.
struct ObservedBody {
    inner: tonic::body::Body,
    end: CallEnd,
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| grpc_status(trailers).unwrap_or(Code::Unknown)),
            Poll::Ready(Some(Err(status))) => Some(status.code()),
            Poll::Ready(None) => Some(Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code {
            this.end.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_printable_and_never_a_nik() {
        assert_eq!(accepted_request_id(b"abc-123"), Some("abc-123"));
        assert_eq!(accepted_request_id(b""), None);
        assert_eq!(accepted_request_id(b"has space"), None);
        assert_eq!(accepted_request_id("caf\u{e9}".as_bytes()), None);
        assert_eq!(accepted_request_id(&[b'a'; 129]), None);
        assert!(accepted_request_id(&[b'a'; 128]).is_some());
        assert_eq!(accepted_request_id(b"id-3275014101900001"), None);
        assert!(accepted_request_id(b"id-327501410190000").is_some());
        assert_eq!(accepted_request_id(b"id-3275.0141.0190.0001"), None);
        assert_eq!(accepted_request_id(b"3275-0141-0190-0001"), None);
        // Underscores, as a program joins the parts of an id: a NIK all the same.
        assert_eq!(accepted_request_id(b"q_3275_0141_0190_0001"), None);
        assert!(accepted_request_id(b"q_3275_0141_0190_000").is_some());
    }

    #[test]
    fn generated_ids_are_acceptable_ids() {
        let id = new_request_id();
        assert_eq!(accepted_request_id(id.as_bytes()), Some(id.as_str()));
        // Even when every hex digit drawn is a decimal one.
        let digits = "srv-12345678:90123456:78901234";
        assert_eq!(accepted_request_id(digits.as_bytes()), Some(digits));
        assert_ne!(new_request_id(), id);
    }
}
