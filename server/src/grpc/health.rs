//! `grpc.health.v1.Health` as tonic-health serves it, except that a `Watch` stream ends once the
//! server drains: it first delivers NOT_SERVING (which the shutdown sets before it stops), then
//! ends. Without that, one open `Watch` (a gRPC client doing client-side health checks, a load
//! balancer) kept the graceful shutdown waiting for the whole drain time-out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The health service over `reporter`'s statuses; its `Watch` streams end once `stop` is true.
pub fn service(
    reporter: &HealthReporter,
    stop: watch::Receiver<bool>,
) -> HealthServer<DrainingHealth> {
    HealthServer::new(DrainingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        stop,
    })
}

/// See the module documentation.
pub struct DrainingHealth {
    inner: HealthService,
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilDrained<tonic_health::server::WatchStream>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        let mut stop = self.stop.clone();
        Ok(Response::new(UntilDrained {
            inner,
            stopped: Box::pin(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            }),
            draining: false,
        }))
    }
}

/// A stream that, once `stopped` has completed, yields what `inner` has ready and then ends.
/// (`take_until`, which ends WatchQuota streams, would end it before the NOT_SERVING it has
/// ready.)
pub struct UntilDrained<S> {
    inner: S,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    draining: bool,
}

impl<S: Stream + Unpin> Stream for UntilDrained<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if !self.draining && self.stopped.as_mut().poll(cx).is_ready() {
            self.draining = true;
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending if self.draining => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;
    use tonic_health::ServingStatus;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;

    #[tokio::test]
    async fn a_watch_sees_not_serving_and_then_ends_when_the_server_drains() {
        let reporter = HealthReporter::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let health = DrainingHealth {
            inner: HealthService::from_health_reporter(reporter.clone()),
            stop: stop_rx,
        };
        let mut stream = health
            .watch(Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .expect("watch")
            .into_inner();
        let first = stream.next().await.expect("first").expect("ok");
        assert_eq!(first.status, Wire::Serving as i32);
        // The shutdown: NOT_SERVING first, then the stop flag.
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        stop_tx.send(true).expect("send");
        let last = stream.next().await.expect("NOT_SERVING").expect("ok");
        assert_eq!(last.status, Wire::NotServing as i32);
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends instead of waiting");
        assert!(end.is_none());
    }
}
