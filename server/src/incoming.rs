//! Accepted connections, within bounds set by the operator:
//! - at most `max_connections` open at once: one past it is closed as soon as it is accepted
//!   (the client sees the connection end and retries, or tries another replica), with a warning
//!   in the log at most every [`WARN_EVERY`];
//! - a connection that sends nothing within `first_byte` of being accepted is closed. A gRPC
//!   client sends its HTTP/2 preface (or its TLS ClientHello) at once, so only a peer that
//!   holds a socket open without using it meets this. Without it such a peer held a descriptor
//!   and a task for ever, before any token was asked for.
//!
//! Connections that went quiet later are the TCP keepalive's and HTTP/2 keepalive's business
//! (`app.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default for the most connections open at once (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default for how long a new connection may stay silent (`--first-byte-timeout-secs`).
pub const DEFAULT_FIRST_BYTE_SECS: u64 = 10;
/// Shortest time between two warnings about refused connections.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a new connection may stay silent.
    pub first_byte: Duration,
}

/// The connections of `incoming` within `limits` (see the module's comment). Accept errors pass
/// through as they are (tonic logs them and goes on).
pub fn bounded<S>(incoming: S, limits: Limits) -> impl Stream<Item = io::Result<Bounded>>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    let permits = Arc::new(Semaphore::new(
        usize::try_from(limits.max_connections.max(1)).unwrap_or(usize::MAX),
    ));
    let refused = Arc::new(Refused::default());
    incoming.filter_map(move |accepted| {
        let answer = match accepted {
            Err(err) => Some(Err(err)),
            Ok(stream) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => Some(Ok(Bounded {
                    inner: stream,
                    _permit: permit,
                    first_byte: Some(Box::pin(tokio::time::sleep(limits.first_byte))),
                })),
                Err(_) => {
                    // Dropped here: closed at once.
                    drop(stream);
                    refused.note(limits.max_connections);
                    None
                }
            },
        };
        std::future::ready(answer)
    })
}

/// Connections refused at the bound, counted between two warnings.
#[derive(Default)]
struct Refused {
    since_warning: AtomicU64,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

impl Refused {
    fn note(&self, max: u32) {
        let count = self.since_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            self.since_warning.store(0, Ordering::Relaxed);
            tracing::warn!(
                refused = count,
                max_connections = max,
                "connections refused: --max-connections are open"
            );
        }
    }
}

/// An accepted connection holding its place among the `max_connections`, and closed if it
/// stays silent past its first-byte deadline.
pub struct Bounded {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first byte arrives; None after.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.first_byte = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = self
                    .first_byte
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection sent nothing before its first-byte deadline",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
