//! The client's retry and failover rules against a scripted fake server: what is retried (only
//! UNAVAILABLE, DEADLINE_EXCEEDED and a connection dropped before the answer, always with the
//! same request_id), what is not, how calls are spread over endpoints, and the bearer token.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blangko_counter::connect::{ConnectOptions, Connection};
use blangko_counter::error::Failure;
use blangko_counter::terminal::{Identity, Terminal};
use blangko_proto::v1::counter_service_server::{CounterService, CounterServiceServer};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What the fake does with one Reserve.
enum Step {
    Fail(Status),
    Stall(Duration),
}

/// (request_id, authorization header) of every Reserve the fake received.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A CounterService whose Reserve follows a script, then succeeds; it records what it was sent.
#[derive(Clone, Default)]
struct Fake {
    script: Arc<Mutex<VecDeque<Step>>>,
    seen: Seen,
}

impl Fake {
    fn with(steps: Vec<Step>) -> Fake {
        Fake {
            script: Arc::new(Mutex::new(steps.into())),
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

type Stream = Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchQuotaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CounterService for Fake {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let request = request.into_inner();
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((request.request_id.clone(), auth));
        }
        let step = self.script.lock().ok().and_then(|mut s| s.pop_front());
        match step {
            Some(Step::Fail(status)) => return Err(status),
            Some(Step::Stall(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        Ok(Response::new(ReserveResponse {
            outcome: Some(Outcome::Reservation(Reservation {
                reservation_id: format!("res-{}", request.request_id),
                masked_nik: "327501******0001".into(),
                ..Reservation::default()
            })),
            quota: None,
        }))
    }
    async fn commit_reservation(
        &self,
        _: Request<CommitReservationRequest>,
    ) -> Result<Response<CommitReservationResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cancel_reservation(
        &self,
        _: Request<CancelReservationRequest>,
    ) -> Result<Response<CancelReservationResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn report_spoiled_blank(
        &self,
        _: Request<ReportSpoiledBlankRequest>,
    ) -> Result<Response<ReportSpoiledBlankResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn record_ikd_activation(
        &self,
        _: Request<RecordIkdActivationRequest>,
    ) -> Result<Response<RecordIkdActivationResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_reservations(
        &self,
        _: Request<ListReservationsRequest>,
    ) -> Result<Response<ListReservationsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_quota(
        &self,
        _: Request<GetQuotaRequest>,
    ) -> Result<Response<GetQuotaResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchQuotaStream = Stream;
    async fn watch_quota(&self, _: Request<WatchQuotaRequest>) -> Result<Response<Stream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn report_queue(
        &self,
        _: Request<ReportQueueRequest>,
    ) -> Result<Response<ReportQueueResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn serve(fake: Fake) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CounterServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

fn terminal(
    addrs: &[SocketAddr],
    timeout: Duration,
    token: Option<&str>,
) -> anyhow::Result<Terminal> {
    let conn = Connection::new(&ConnectOptions {
        servers: addrs.iter().map(|a| format!("http://{a}")).collect(),
        call_timeout: timeout,
        token: token.map(str::to_string),
        retries: 3,
        tls: None,
    })?;
    Ok(Terminal::new(
        conn,
        Identity {
            office: Some("3275".into()),
            service_point: Some("mpp".into()),
            counter: Some("loket-1".into()),
        },
    ))
}

async fn reserve(term: &Terminal, request_id: &str) -> Result<ReserveResponse, Failure> {
    term.reserve(
        "3275014101900001",
        Reason::Lost,
        IkdStatus::Active,
        request_id,
    )
    .await
}

#[tokio::test]
async fn unavailable_is_retried_with_the_same_request_id() -> anyhow::Result<()> {
    let fake = Fake::with(vec![
        Step::Fail(Status::unavailable("shedding load")),
        Step::Fail(Status::unavailable("shedding load")),
    ]);
    let addr = serve(fake.clone()).await?;
    let term = terminal(&[addr], Duration::from_secs(2), None)?;
    let answer = reserve(&term, "req-1").await;
    assert!(answer.is_ok(), "{answer:?}");
    let ids: Vec<String> = fake.seen().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["req-1", "req-1", "req-1"]);
    Ok(())
}

#[tokio::test]
async fn a_deadline_is_retried_with_the_same_request_id() -> anyhow::Result<()> {
    let fake = Fake::with(vec![Step::Stall(Duration::from_millis(1500))]);
    let addr = serve(fake.clone()).await?;
    let term = terminal(&[addr], Duration::from_millis(300), None)?;
    let answer = reserve(&term, "req-slow").await;
    assert!(answer.is_ok(), "{answer:?}");
    let ids: Vec<String> = fake.seen().into_iter().map(|(id, _)| id).collect();
    // At least the stalled call and its retry (a loaded machine may need one more), all alike.
    assert!(ids.len() >= 2, "{ids:?}");
    assert!(ids.iter().all(|id| id == "req-slow"), "{ids:?}");
    Ok(())
}

#[tokio::test]
async fn invalid_argument_and_other_errors_are_never_retried() -> anyhow::Result<()> {
    for status in [
        Status::invalid_argument("bad nik"),
        Status::failed_precondition("already reserved elsewhere"),
        Status::resource_exhausted("busy"),
        Status::already_exists("request id reused"),
    ] {
        let code = status.code();
        let fake = Fake::with(vec![Step::Fail(status)]);
        let addr = serve(fake.clone()).await?;
        let term = terminal(&[addr], Duration::from_secs(2), None)?;
        let answer = reserve(&term, "req-x").await;
        assert!(answer.is_err(), "{code:?}");
        assert_eq!(fake.seen().len(), 1, "{code:?} must not be retried");
        if code == tonic::Code::InvalidArgument {
            assert!(matches!(answer, Err(Failure::BadInput { .. })));
        }
    }
    Ok(())
}

#[tokio::test]
async fn retries_are_bounded_and_end_in_one_no_server_failure() -> anyhow::Result<()> {
    let fake = Fake::with(
        (0..10)
            .map(|_| Step::Fail(Status::unavailable("down")))
            .collect(),
    );
    let addr = serve(fake.clone()).await?;
    let term = terminal(&[addr], Duration::from_secs(2), None)?;
    let started = std::time::Instant::now();
    let answer = reserve(&term, "req-down").await;
    assert!(
        matches!(answer, Err(Failure::NoServer { .. })),
        "{answer:?}"
    );
    // 1 try + 3 retry rounds, with backoff between them (at least 100 + 200 + 400 ms).
    assert_eq!(fake.seen().len(), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn calls_are_spread_over_endpoints_and_fail_over() -> anyhow::Result<()> {
    let a = Fake::default();
    let b = Fake::default();
    let addr_a = serve(a.clone()).await?;
    let addr_b = serve(b.clone()).await?;
    let term = terminal(&[addr_a, addr_b], Duration::from_secs(2), None)?;
    for i in 0..6 {
        assert!(reserve(&term, &format!("spread-{i}")).await.is_ok());
    }
    assert_eq!((a.seen().len(), b.seen().len()), (3, 3), "round-robin");

    // One endpoint answers UNAVAILABLE: the same request goes to the other at once.
    let sick = Fake::with(vec![Step::Fail(Status::unavailable("restarting"))]);
    let well = Fake::default();
    let addr_sick = serve(sick.clone()).await?;
    let addr_well = serve(well.clone()).await?;
    let term = terminal(&[addr_sick, addr_well], Duration::from_secs(2), None)?;
    assert!(reserve(&term, "fo-1").await.is_ok());
    let all: Vec<String> = sick
        .seen()
        .into_iter()
        .chain(well.seen())
        .map(|(id, _)| id)
        .collect();
    assert!(all.iter().all(|id| id == "fo-1"), "{all:?}");
    assert_eq!(well.seen().len(), 1);
    Ok(())
}

#[tokio::test]
async fn the_token_is_sent_as_bearer_metadata() -> anyhow::Result<()> {
    let fake = Fake::default();
    let addr = serve(fake.clone()).await?;
    let with = terminal(&[addr], Duration::from_secs(2), Some("s3cret"))?;
    assert!(reserve(&with, "tok-1").await.is_ok());
    let without = terminal(&[addr], Duration::from_secs(2), None)?;
    assert!(reserve(&without, "tok-2").await.is_ok());
    let seen = fake.seen();
    assert_eq!(seen[0].1.as_deref(), Some("Bearer s3cret"));
    assert_eq!(seen[1].1, None);
    Ok(())
}

/// An endpoint that accepts each connection, reads what the client sends until a request has
/// arrived (the HTTP/2 preface, settings, and the call's headers and message), and then drops
/// the connection without a word: a replica killed in the middle of a call.
async fn dropper() -> anyhow::Result<(SocketAddr, Arc<Mutex<usize>>)> {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let dropped = Arc::new(Mutex::new(0usize));
    let count = Arc::clone(&dropped);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                // The preface and settings are about 60 bytes; a Reserve's headers and message
                // bring it past 150.
                while got < 150 {
                    match tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => got += n,
                        _ => break,
                    }
                }
                if let Ok(mut c) = count.lock() {
                    *c += 1;
                }
                drop(socket);
            });
        }
    });
    Ok((addr, dropped))
}

#[tokio::test]
async fn a_connection_dropped_in_the_middle_of_a_call_fails_over_with_the_same_request_id()
-> anyhow::Result<()> {
    let (addr_dead, dropped) = dropper().await?;
    let well = Fake::default();
    let addr_well = serve(well.clone()).await?;
    let term = terminal(&[addr_dead, addr_well], Duration::from_secs(2), None)?;
    let answer = reserve(&term, "drop-1").await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(
        *dropped.lock().unwrap() >= 1,
        "the first endpoint took the call"
    );
    let ids: Vec<String> = well.seen().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["drop-1"]);
    Ok(())
}
