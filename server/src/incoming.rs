//! Accepted connections, within bounds set by the operator:
//! - at most `max_connections` open at once: one past it is closed as soon as it is accepted
//!   (the client sees the connection end and retries, or tries another replica), with a warning
//!   in the log at most every [`WARN_EVERY`];
//! - a connection that has made no call within `first_call` of being accepted is closed: one
//!   that sends nothing, or stops part way through its TLS or HTTP/2 set-up (neither has a
//!   deadline of its own, and HTTP/2 keepalive starts after it), or sets up and never calls. A
//!   gRPC client sets up and calls at once (a channel connects for its first call), and one
//!   that connected early and waited is connected again by its channel at its next call, as
//!   after any server's idle-connection limit. Without this a peer held a descriptor, a task
//!   and a place among `max_connections` for ever, before any token was asked for.
//!
//! After its first call a connection is bounded by TCP keepalive (a peer that vanished) and
//! HTTP/2 keepalive (`app.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default for the most connections open at once (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default for how long a new connection may go without a call (`--first-call-timeout-secs`).
pub const DEFAULT_FIRST_CALL_SECS: u64 = 30;
/// Shortest time between two warnings about refused connections.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a new connection may go without a call.
    pub first_call: Duration,
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
                    called: Arc::default(),
                    deadline: Some(Box::pin(tokio::time::sleep(limits.first_call + GRACE))),
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

/// An accepted connection holding its place among the `max_connections`, and closed if it has
/// made no call by its first-call deadline.
pub struct Bounded {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Set by [`mark_called`] at the connection's first call.
    called: Arc<AtomicBool>,
    /// Until the first call (`first_call` plus [`GRACE`]); None after.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What every call of a [`Bounded`] connection carries in its request extensions (tonic puts it
/// there, over TLS too, beside its `TlsConnectInfo`).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The addresses.
    pub tcp: TcpConnectInfo,
    called: Arc<AtomicBool>,
}

impl Connected for Bounded {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            tcp: self.inner.connect_info(),
            called: Arc::clone(&self.called),
        }
    }
}

/// Marks the connection a request came on as having made a call: its first-call deadline no
/// longer applies. Called for every request, by the outermost layer.
pub fn mark_called(extensions: &tonic::codegen::http::Extensions) {
    if let Some(info) = extensions.get::<ConnectionInfo>()
        && !info.called.load(Ordering::Relaxed)
    {
        info.called.store(true, Ordering::Relaxed);
    }
}

impl Bounded {
    /// Whether the first-call deadline has passed with no call (and drops it after a call).
    fn out_of_time(&mut self, cx: &mut Context<'_>) -> bool {
        if self.called.load(Ordering::Relaxed) {
            self.deadline = None;
        }
        self.deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready())
    }

    fn timed_out() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the connection made no call before its first-call deadline",
        )
    }
}

/// Added to `--first-call-timeout-secs`. A call is marked when its own task first runs, a moment
/// after its request was read: a first call read in the last instant before the deadline can
/// still be cut (its client connects again and retries), and the second keeps that rare.
pub const GRACE: Duration = Duration::from_secs(1);

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Checked on every read, not only when one waits: a peer that trickles a byte now and
        // then without ever calling is out of time too.
        if self.out_of_time(cx) {
            return Poll::Ready(Err(Bounded::timed_out()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Also here: a peer that never reads stops the server's reads (its writes wait first).
        if self.out_of_time(cx) {
            return Poll::Ready(Err(Bounded::timed_out()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.out_of_time(cx) {
            return Poll::Ready(Err(Bounded::timed_out()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out_of_time(cx) {
            return Poll::Ready(Err(Bounded::timed_out()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Descriptors kept for everything but client connections: the database's files and
/// connections, the metrics listener, the token, key and log files.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// `max` within this process's open-file limit. Above it, accepting a connection fails (EMFILE)
/// before the bound is reached, and the accept loop retries at once, busy: the bound is lowered
/// to the limit less [`RESERVED_DESCRIPTORS`], with a warning that says how to allow more.
pub fn within_open_file_limit(max: u32, database_connections: u32) -> u32 {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_file_limit(&text))
    else {
        return max;
    };
    let lowered = lowered_to(max, soft.saturating_sub(u64::from(database_connections)));
    if lowered < max {
        tracing::warn!(
            max_connections = max,
            open_file_limit = soft,
            lowered,
            "--max-connections is above the open-file limit less the database connections and {RESERVED_DESCRIPTORS} descriptors kept for the rest: lowered; raise the limit (ulimit -n, systemd LimitNOFILE) to allow more"
        );
    }
    lowered
}

/// The bound within a soft open-file limit of `soft`.
fn lowered_to(max: u32, soft: u64) -> u32 {
    let room = soft.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    u32::try_from(room).map_or(max, |room| max.min(room))
}

/// The soft limit on open files in the text of `/proc/self/limits` (None when unlimited or not
/// found).
fn open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_stays_within_the_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_file_limit(limits), Some(1024));
        assert_eq!(
            open_file_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(open_file_limit(""), None);
        // 1024 descriptors: 896 connections at most.
        assert_eq!(lowered_to(4096, 1024), 896);
        assert_eq!(lowered_to(500, 1024), 500);
        assert_eq!(lowered_to(4096, 1_048_576), 4096);
        assert_eq!(lowered_to(4096, 100), 1);
    }
}
