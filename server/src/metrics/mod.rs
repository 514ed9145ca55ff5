//! Metrics for operators: counters and histograms kept in memory (atomics, cheap on the hot
//! path) and, at scrape time, gauges read from the database (stock, quota, days of cover).
//! Exposed in the Prometheus / OpenMetrics text format at `--metrics-listen ADDR` under
//! `/metrics` (see `http.rs`); the README's "Metrics" section lists every metric.
//!
//! No label ever carries a NIK, a token or a request id: labels are method names (from a fixed
//! list), gRPC codes, outcome and cause names (fixed lists), and office and service point ids
//! (bounded by [`gauges::MAX_EXPORTED_OFFICES`] and [`gauges::MAX_EXPORTED_SERVICE_POINTS`]).

pub mod gauges;
pub mod http;

use std::collections::HashSet;

use blangko_proto::v1::{IkdReferral, ReferralCause, ReserveResponse, reserve_response::Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::{Code, Status};

/// The method label of calls to paths this server does not serve (scanners, typos): one label
/// value for all of them, so a caller cannot grow the label set.
pub const OTHER_METHOD: &str = "other";

/// Labels of the per-call metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`, or [`OTHER_METHOD`].
    pub method: String,
    /// The gRPC status code name (`OK`, `UNAVAILABLE`, …).
    pub code: &'static str,
}

/// Labels of the Reserve outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `reserved`, `replayed`, a referral cause or an error reason (see [`reserve_outcome`]).
    pub outcome: &'static str,
}

/// Labels of the IKD referral counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// The referral cause, lower case (`quota_exhausted`, `out_of_stock`, …).
    pub cause: &'static str,
}

/// Labels of the counters by path (Reserve batches, quota reads).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `direct` (SQLite, a connection of the server's own) or `general` (through sqlx).
    pub path: &'static str,
}

/// Latency buckets in seconds: 0.5 ms doubling to about 16 s (16 buckets), wide enough for a
/// Reserve that waits for a group commit on a busy SQLite disk.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// Every counter and histogram of the process. Cloning a metric shares it (they are `Arc`s
/// inside), so the scrape registers clones.
#[derive(Debug)]
pub struct Metrics {
    /// Finished calls by method and gRPC code.
    rpc_requests: Family<RpcLabels, Counter>,
    /// Call latency (until the last byte of the answer) by method and gRPC code.
    rpc_latency: HistogramFamily,
    /// Reserve answers by outcome.
    reservations: Family<OutcomeLabels, Counter>,
    /// IKD referrals given (Reserve and spoiled blanks) by cause.
    ikd_referrals: Family<CauseLabels, Counter>,
    /// IKD activations recorded.
    ikd_activations: Counter,
    /// Reserve batches decided, by the path that decided them.
    reserve_batches: Family<PathLabels, Counter>,
    /// Reserves per batch (one transaction each).
    reserve_batch_size: Histogram,
    /// Reserves that joined a batch once it held its office's row lock (queued while it waited).
    reserve_top_ups: Counter,
    /// Quota snapshots read (GetQuota, WatchQuota, ReportQueue), by the path that read them.
    quota_reads: Family<PathLabels, Counter>,
    /// Sweeper passes that ran.
    sweeper_runs: Counter,
    /// Sweeper passes that failed.
    sweeper_failures: Counter,
    /// Holds the sweeper expired.
    sweeper_holds_expired: Counter,
    /// Calls refused by load shedding (UNAVAILABLE with RetryInfo).
    load_shed: Counter,
    /// Calls cut by the request time-out (DEADLINE_EXCEEDED).
    request_timeouts: Counter,
    /// The method paths this server serves (the only method label values besides "other").
    known_methods: HashSet<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Zeroed metrics that know the methods of every service this server registers.
    pub fn new() -> Self {
        Metrics {
            rpc_requests: Family::default(),
            rpc_latency: Family::new_with_constructor(latency_histogram),
            reservations: Family::default(),
            ikd_referrals: Family::default(),
            ikd_activations: Counter::default(),
            reserve_batches: Family::default(),
            reserve_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            reserve_top_ups: Counter::default(),
            quota_reads: Family::default(),
            sweeper_runs: Counter::default(),
            sweeper_failures: Counter::default(),
            sweeper_holds_expired: Counter::default(),
            load_shed: Counter::default(),
            request_timeouts: Counter::default(),
            known_methods: known_methods(),
        }
    }

    /// The method label for a request path: the path itself when this server serves it.
    pub fn method_label(&self, path: &str) -> String {
        if self.known_methods.contains(path) {
            path.to_string()
        } else {
            OTHER_METHOD.to_string()
        }
    }

    /// One finished call.
    pub fn record_rpc(&self, method: String, code: Code, latency_secs: f64) {
        let labels = RpcLabels {
            method,
            code: code_name(code),
        };
        self.rpc_latency
            .get_or_create(&labels)
            .observe(latency_secs);
        self.rpc_requests.get_or_create(&labels).inc();
    }

    /// One Reserve answer (or error).
    pub fn record_reserve(&self, result: &Result<ReserveResponse, Status>) {
        if let Ok(ReserveResponse {
            outcome: Some(Outcome::IkdReferral(referral)),
            ..
        }) = result
            && !referral.replayed
        {
            self.record_referral(referral);
        }
        let outcome = reserve_outcome(result);
        self.reservations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// One IKD referral given.
    pub fn record_referral(&self, referral: &IkdReferral) {
        let cause = cause_name(referral.cause);
        self.ikd_referrals
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    /// One Reserve batch of `size` Reserves decided on `path` (`direct` or `general`).
    pub fn record_reserve_batch(&self, path: &'static str, size: usize) {
        self.reserve_batches
            .get_or_create(&PathLabels { path })
            .inc();
        self.reserve_batch_size.observe(size as f64);
    }

    /// `n` Reserves joined a batch once it held its office's row lock.
    pub fn record_reserve_top_up(&self, n: usize) {
        self.reserve_top_ups.inc_by(n as u64);
    }

    /// One quota snapshot read on `path` (`direct` or `general`).
    pub fn record_quota_read(&self, path: &'static str) {
        self.quota_reads.get_or_create(&PathLabels { path }).inc();
    }

    /// One IKD activation recorded.
    pub fn record_ikd_activation(&self) {
        self.ikd_activations.inc();
    }

    /// One sweeper pass: how many holds it expired, or that it failed.
    pub fn record_sweep(&self, expired: Option<usize>) {
        self.sweeper_runs.inc();
        match expired {
            Some(n) => {
                self.sweeper_holds_expired.inc_by(n as u64);
            }
            None => {
                self.sweeper_failures.inc();
            }
        }
    }

    /// One call refused by load shedding.
    pub fn record_shed(&self) {
        self.load_shed.inc();
    }

    /// One call cut by the request time-out.
    pub fn record_timeout(&self) {
        self.request_timeouts.inc();
    }

    /// Registers (clones of) the in-memory metrics in a scrape's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "blangko_rpc_requests",
            "Finished gRPC calls by method and status code",
            self.rpc_requests.clone(),
        );
        registry.register(
            "blangko_rpc_latency_seconds",
            "gRPC call latency, from the request headers to the end of the answer, by method and status code",
            self.rpc_latency.clone(),
        );
        registry.register(
            "blangko_reservations",
            "Reserve answers by outcome: reserved, replayed, an IKD referral cause, or an error reason",
            self.reservations.clone(),
        );
        registry.register(
            "blangko_ikd_referrals",
            "IKD referrals given (Reserve, and spoiled blanks without stock) by cause",
            self.ikd_referrals.clone(),
        );
        registry.register(
            "blangko_ikd_activations",
            "IKD activations recorded (RecordIkdActivation answered OK)",
            self.ikd_activations.clone(),
        );
        registry.register(
            "blangko_reserve_batches",
            "Reserve batches (one transaction each) by path: direct (SQLite, the whole batch on the hot-path connection) or general (the first batch of a day at a service point, batches that release due holds, PostgreSQL)",
            self.reserve_batches.clone(),
        );
        registry.register(
            "blangko_reserve_batch_size",
            "Reserves per batch (one transaction each), on either path, counted once per decided batch (a retried batch once)",
            self.reserve_batch_size.clone(),
        );
        registry.register(
            "blangko_reserve_top_ups",
            "Reserves that joined a batch once it held its office's row lock, having been queued while the batch waited for it (general path)",
            self.reserve_top_ups.clone(),
        );
        registry.register(
            "blangko_quota_reads",
            "Quota snapshots read (GetQuota, WatchQuota, ReportQueue) by path: direct (SQLite, on a read connection of the server's own) or general (unknown offices or service points, no free read connection, PostgreSQL)",
            self.quota_reads.clone(),
        );
        registry.register(
            "blangko_sweeper_runs",
            "Passes of the sweeper that releases expired holds",
            self.sweeper_runs.clone(),
        );
        registry.register(
            "blangko_sweeper_failures",
            "Sweeper passes that failed (database errors; the next pass tries again)",
            self.sweeper_failures.clone(),
        );
        registry.register(
            "blangko_sweeper_holds_expired",
            "Holds released by the sweeper because their time ran out",
            self.sweeper_holds_expired.clone(),
        );
        registry.register(
            "blangko_load_shed",
            "Calls refused with UNAVAILABLE (and RetryInfo) because --max-concurrent-requests calls were already in flight",
            self.load_shed.clone(),
        );
        registry.register(
            "blangko_request_timeouts",
            "Calls answered DEADLINE_EXCEEDED because they ran past --request-timeout-secs",
            self.request_timeouts.clone(),
        );
    }
}

/// The outcome label of a Reserve answer: `reserved`, `replayed`, the referral cause, the
/// ErrorInfo reason of an error (`already_reserved_elsewhere`, `request_id_reused`), or the
/// error's kind (`invalid`, `not_found`, `denied`, `unavailable`, `error`).
pub fn reserve_outcome(result: &Result<ReserveResponse, Status>) -> &'static str {
    match result {
        Ok(response) => match &response.outcome {
            Some(Outcome::Reservation(r)) if r.replayed => "replayed",
            Some(Outcome::Reservation(_)) => "reserved",
            Some(Outcome::IkdReferral(referral)) if referral.replayed => "replayed",
            Some(Outcome::IkdReferral(referral)) => cause_name(referral.cause),
            None => "error",
        },
        Err(status) => {
            use tonic_types::StatusExt;
            match status.get_details_error_info().map(|i| i.reason) {
                Some(reason) if reason == "ALREADY_RESERVED_ELSEWHERE" => {
                    "already_reserved_elsewhere"
                }
                Some(reason) if reason == "REQUEST_ID_REUSED" => "request_id_reused",
                _ => match status.code() {
                    Code::InvalidArgument => "invalid",
                    Code::NotFound => "not_found",
                    Code::Unauthenticated | Code::PermissionDenied => "denied",
                    Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => {
                        "unavailable"
                    }
                    _ => "error",
                },
            }
        }
    }
}

/// The label of a referral cause.
pub fn cause_name(cause: i32) -> &'static str {
    match ReferralCause::try_from(cause) {
        Ok(ReferralCause::QuotaExhausted) => "quota_exhausted",
        Ok(ReferralCause::OutOfStock) => "out_of_stock",
        Ok(ReferralCause::ReasonCapReached) => "reason_cap_reached",
        Ok(ReferralCause::Closed) => "closed",
        Ok(ReferralCause::IkdRequired) => "ikd_required",
        _ => "unspecified",
    }
}

pub use blangko_proto::code_name;

/// The reflection services (their descriptors are not in the sets below).
const REFLECTION_METHODS: &[&str] = &[
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Every method path of the blangko and health services, read from their file descriptors so
/// a new RPC gets its own label without a change here.
fn known_methods() -> HashSet<String> {
    let mut methods: HashSet<String> = REFLECTION_METHODS.iter().map(|m| m.to_string()).collect();
    for set in [
        blangko_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.insert(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_keep_their_name_and_others_share_one_label() {
        let m = Metrics::new();
        assert_eq!(
            m.method_label("/blangko.v1.CounterService/Reserve"),
            "/blangko.v1.CounterService/Reserve"
        );
        assert_eq!(
            m.method_label("/blangko.v1.StockService/GetStock"),
            "/blangko.v1.StockService/GetStock"
        );
        assert_eq!(
            m.method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(m.method_label("/blangko.v1.CounterService/Nope"), "other");
        assert_eq!(m.method_label("/3275014101900001"), "other");
    }

    #[test]
    fn error_reasons_name_the_reserve_outcome() {
        let status = crate::engine::EngineError::FailedPrecondition {
            reason: "ALREADY_RESERVED_ELSEWHERE",
            message: "x".into(),
            indonesian: "x".into(),
        }
        .into();
        assert_eq!(reserve_outcome(&Err(status)), "already_reserved_elsewhere");
        assert_eq!(
            reserve_outcome(&Err(Status::invalid_argument("bad"))),
            "invalid"
        );
    }
}
