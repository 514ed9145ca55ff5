//! Overload protection: a server-wide concurrency limit that sheds load instead of queueing,
//! and a request time-out. Both answer with proper gRPC statuses (tonic would turn tower's own
//! `Overloaded` into RESOURCE_EXHAUSTED without RetryInfo, and tower's `Elapsed` into a reset
//! stream): past the limit a caller gets UNAVAILABLE with `google.rpc.RetryInfo` at once; past
//! the time-out, DEADLINE_EXCEEDED. The stack that puts them in order is in `app.rs` (`serve`).
//!
//! Both wrap the *response future* only: a call holds its slot, and its time-out runs, until its
//! answer's headers are ready. For a unary call that is the whole handler; for a server stream
//! (WatchQuota) it is the setup, after which the stream's messages flow without a slot and
//! without a time-out (streams have their own bound, --max-watchers). WatchQuota, health and
//! reflection are exempt from the limit altogether, so probes answer and counters keep their
//! live view while the server sheds Reserves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::codegen::http;

use crate::metrics::Metrics;

/// Default for `--max-concurrent-requests`. A Reserve keeps its slot while it waits in its
/// office's group-commit queue (up to a batch of 128 decided per transaction), so a burst of
/// N counters holds N slots for about one commit. 1024 leaves a 64-in-flight benchmark (and
/// eight full batches) far from the limit, while a call in flight costs a few kilobytes, so
/// 1024 of them is a few megabytes: the limit exists to stop an unbounded pile-up, not to
/// pace normal traffic.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 1024;
/// Default for `--request-timeout-secs`: longer than the database acquire time-out (5 s), so a
/// busy database answers UNAVAILABLE first, and longer than any batch commit, yet short enough
/// that a stuck call frees its slot.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// How long a shed caller is told to wait before it retries (RetryInfo).
pub const SHED_RETRY_DELAY: Duration = Duration::from_millis(250);

/// Methods that never take a slot: long-lived streams bounded elsewhere, and the probes and
/// tools that must answer while the server sheds load.
pub const EXEMPT_METHODS: &[&str] = &[
    "/blangko.v1.CounterService/WatchQuota",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Whether a request path bypasses the concurrency limit.
pub fn is_exempt(path: &str) -> bool {
    EXEMPT_METHODS.contains(&path)
}

/// The server-wide pool of call slots (shared by every connection).
#[derive(Debug)]
pub struct ConcurrencyBudget {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConcurrencyBudget {
    /// A budget of `max` calls in flight (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        ConcurrencyBudget {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Layer: the concurrency limit with load shedding.
#[derive(Clone)]
pub struct LoadShedLayer {
    budget: Arc<ConcurrencyBudget>,
    metrics: Arc<Metrics>,
}

impl LoadShedLayer {
    /// Sheds past `budget`, counting refusals in `metrics`.
    pub fn new(budget: Arc<ConcurrencyBudget>, metrics: Arc<Metrics>) -> Self {
        LoadShedLayer { budget, metrics }
    }
}

impl<S> tower::Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed {
            inner,
            budget: Arc::clone(&self.budget),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`LoadShedLayer`] wraps around the rest of the stack.
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    budget: Arc<ConcurrencyBudget>,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for LoadShed<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_exempt(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // Never wait for a slot: a queue in front of a saturated server only grows, and every
        // caller in it eventually times out anyway. Refuse now, with a hint when to come back.
        match Arc::clone(&self.budget.slots).try_acquire_owned() {
            Ok(slot) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let answer = call.await;
                    drop(slot);
                    answer
                })
            }
            Err(_) => {
                self.metrics.record_shed();
                let status = crate::grpc::status::overloaded(self.budget.max, SHED_RETRY_DELAY);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Layer: the request time-out.
#[derive(Clone)]
pub struct RequestTimeoutLayer {
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl RequestTimeoutLayer {
    /// Cuts calls whose answer is not ready after `timeout`.
    pub fn new(timeout: Duration, metrics: Arc<Metrics>) -> Self {
        RequestTimeoutLayer { timeout, metrics }
    }
}

impl<S> tower::Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout {
            inner,
            timeout: self.timeout,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`RequestTimeoutLayer`] wraps around the rest of the stack.
#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for RequestTimeout<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.inner.call(request);
        let timeout = self.timeout;
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(answer) => answer,
                // Dropping the call is safe: every mutating RPC is idempotent by request_id, so
                // a Reserve still queued is decided once and the caller's retry gets its answer.
                Err(_) => {
                    metrics.record_timeout();
                    Ok(crate::grpc::status::timed_out(timeout).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_probes_are_exempt_and_reserve_is_not() {
        assert!(is_exempt("/blangko.v1.CounterService/WatchQuota"));
        assert!(is_exempt("/grpc.health.v1.Health/Check"));
        assert!(!is_exempt("/blangko.v1.CounterService/Reserve"));
        assert!(!is_exempt("/blangko.v1.StockService/ListStock"));
    }

    #[test]
    fn the_budget_counts_slots_in_use() {
        let budget = ConcurrencyBudget::new(4);
        let held = Arc::clone(&budget.slots).try_acquire_many_owned(3);
        assert!(held.is_ok());
        assert_eq!(budget.in_flight(), 3);
        assert_eq!(budget.max(), 4);
        assert_eq!(ConcurrencyBudget::new(0).max(), 1);
    }
}
