//! Accepted connections, within bounds set by the operator:
//! - at most `max_connections` open at once: one past it is closed as soon as it is accepted
//!   (the client sees the connection end and retries, or tries another replica), with a warning
//!   in the log at most every [`WARN_EVERY`];
//! - at most `max_per_peer` of them from one IP address, closed and warned about the same way:
//!   no token is asked before a call, and a health `Watch` or reflection stream needs none, so
//!   without it one peer could hold every place with streams left open (each keeps its
//!   connection from the idle limit below), and every counter would be refused;
//! - a connection that has made no call within `first_call` of being accepted is closed: one
//!   that sends nothing, or stops part way through its TLS or HTTP/2 set-up (neither has a
//!   deadline of its own, and HTTP/2 keepalive starts after it), or sets up and never calls. A
//!   gRPC client sets up and calls at once (a channel connects for its first call), and one
//!   that connected early and waited is connected again by its channel at its next call, as
//!   after any server's idle-connection limit. Without this a peer held a descriptor, a task
//!   and a place among `max_connections` for ever, before any token was asked for.
//!
//! - a connection that has had no call in flight for `idle` (after its first call) is closed,
//!   like gRPC's `MaxConnectionIdle`: a client that made one call (a health check will do, no
//!   token needed) and then kept its connection open did hold its place among
//!   `max_connections` for ever, answering the server's HTTP/2 keepalive pings. A connection
//!   with a call in flight (a WatchQuota or health `Watch` stream) is never idle, and one that
//!   read bytes since it was last looked at gets [`CALL_ON_ITS_WAY`] more. The close is a read
//!   or write error here, not an HTTP/2 GOAWAY (hyper's connection is out of reach of this
//!   wrapper): a gRPC channel
//!   connects again at its next call, and a call sent at the very moment of the close fails,
//!   never read, so never served (most gRPC libraries say UNAVAILABLE; tonic says CANCELLED or
//!   UNKNOWN with a transport error, which blangko-counter retries).
//!
//! After its first call a connection is also bounded by TCP keepalive (a peer that vanished) and
//! HTTP/2 keepalive (`app.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default for the most connections open at once (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default for the most connections open at once from one IP address
/// (`--max-connections-per-peer`): a sixteenth of the default bound, far above what an office's
/// counters behind one NAT address use (one channel each, a few for a load tool).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: u32 = 256;
/// Default for how long a new connection may go without a call (`--first-call-timeout-secs`).
pub const DEFAULT_FIRST_CALL_SECS: u64 = 30;
/// Default for how long a connection may go without a call in flight (`--idle-timeout-secs`):
/// longer than a counter's pause between two applicants, so a busy counter keeps its
/// connection.
pub const DEFAULT_IDLE_SECS: u64 = 300;
/// Shortest time between two warnings about refused connections.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: u32,
    /// Most connections open at once from one IP address (1 or more); None: no bound of its
    /// own.
    pub max_per_peer: Option<u32>,
    /// How long a new connection may go without a call.
    pub first_call: Duration,
    /// How long a connection may go without a call in flight, after its first call; None: no
    /// limit.
    pub idle: Option<Duration>,
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
    let refused_for_peer = Arc::new(Refused::default());
    let peers = Arc::new(Peers::default());
    incoming.filter_map(move |accepted| {
        let answer = match accepted {
            Err(err) => Some(Err(err)),
            Ok(stream) => {
                let place = match limits.max_per_peer {
                    None => Ok(None),
                    Some(max) => match stream.peer_addr() {
                        Ok(addr) => Peers::take(&peers, addr.ip(), max).map(Some),
                        // A peer already gone: its connection fails at its first read.
                        Err(_) => Ok(None),
                    },
                };
                match (place, Arc::clone(&permits).try_acquire_owned()) {
                    (Ok(peer), Ok(permit)) => Some(Ok(Bounded::new(stream, permit, peer, limits))),
                    // Dropped here: closed at once (with the place taken for its peer).
                    (Err(()), _) => {
                        drop(stream);
                        refused_for_peer.note_peer(limits.max_per_peer.unwrap_or_default());
                        None
                    }
                    (Ok(_), Err(_)) => {
                        drop(stream);
                        refused.note(limits.max_connections);
                        None
                    }
                }
            }
        };
        std::future::ready(answer)
    })
}

/// Connections open per peer IP address (only addresses with one open are kept).
#[derive(Default)]
struct Peers {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
}

impl Peers {
    fn open(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, u32>> {
        // Only whole increments and decrements happen under this lock.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection of `ip`, or Err when it holds `max` already.
    fn take(peers: &Arc<Peers>, ip: std::net::IpAddr, max: u32) -> Result<PeerPlace, ()> {
        let mut open = peers.open();
        if open.get(&ip).is_some_and(|n| *n >= max) {
            return Err(());
        }
        *open.entry(ip).or_insert(0) += 1;
        Ok(PeerPlace {
            peers: Arc::clone(peers),
            ip,
        })
    }
}

/// One open connection of a peer; gives its place back when the connection is dropped.
struct PeerPlace {
    peers: Arc<Peers>,
    ip: std::net::IpAddr,
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut open = self.peers.open();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Connections refused at the bound, counted between two warnings.
#[derive(Default)]
struct Refused {
    since_warning: AtomicU64,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

impl Refused {
    /// Counts a connection refused at `--max-connections-per-peer`, warning at most every
    /// [`WARN_EVERY`] (the peer's address is not named: a log is no place to collect them).
    fn note_peer(&self, max: u32) {
        if let Some(count) = self.due() {
            tracing::warn!(
                refused = count,
                max_connections_per_peer = max,
                "connections refused: a peer address holds --max-connections-per-peer"
            );
        }
    }

    /// The refusals since the last warning, when a warning is due.
    fn due(&self) -> Option<u64> {
        let count = self.since_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            self.since_warning.store(0, Ordering::Relaxed);
            return Some(count);
        }
        None
    }

    /// Counts a connection refused at `--max-connections`, warning at most every
    /// [`WARN_EVERY`].
    fn note(&self, max: u32) {
        if let Some(count) = self.due() {
            tracing::warn!(
                refused = count,
                max_connections = max,
                "connections refused: --max-connections are open"
            );
        }
    }
}

/// An accepted connection holding its place among the `max_connections`, and closed if it has
/// made no call by its first-call deadline, or has had no call in flight for its idle limit.
pub struct Bounded {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Its place among its peer's connections (None: no bound per peer).
    _peer: Option<PeerPlace>,
    /// Its calls, shared with them ([`mark_called`]).
    activity: Arc<Activity>,
    /// The first-call deadline (`first_call` plus [`GRACE`]), then the idle one; None when
    /// neither applies any more (a call was made and there is no idle limit).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker `deadline` was last polled with since it was last set: it wakes that task when
    /// it passes. While reads and writes come with a waker that wakes the same task, only
    /// [`tokio::time::Sleep::is_elapsed`] is looked at; another task (the TLS handshake's runs
    /// before the connection's) polls it again.
    armed_for: Option<Waker>,
    /// The first-call deadline.
    first_call_by: Instant,
    /// How long the connection may go without a call in flight.
    idle: Option<Duration>,
    /// Whether bytes were read since the deadline was last looked at: a request read but not
    /// yet counted as a call in flight ([`mark_called`] runs on the call's own task, a moment
    /// later) keeps an idle connection open for [`CALL_ON_ITS_WAY`] more. A flag, not a time:
    /// every read of every call passes here.
    read_since_look: bool,
}

/// How long bytes read since the last look keep an otherwise idle connection open: ample for a
/// request read to reach [`mark_called`].
pub const CALL_ON_ITS_WAY: Duration = Duration::from_secs(1);

/// What a connection and the calls made on it share.
struct Activity {
    /// When the connection was accepted: the origin of `idle_since_ms`.
    accepted: Instant,
    /// Set at the connection's first call.
    called: AtomicBool,
    /// Calls begun and not yet ended (their answer sent, or dropped).
    in_flight: AtomicU32,
    /// When the last call in flight ended, in milliseconds after `accepted`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            called: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// When the connection last had a call in flight ended; None while one is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)))
    }
}

/// What every call of a [`Bounded`] connection carries in its request extensions (tonic puts it
/// there, over TLS too, beside its `TlsConnectInfo`).
#[derive(Clone)]
pub struct ConnectionInfo {
    /// The addresses.
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl Connected for Bounded {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            tcp: self.inner.connect_info(),
            activity: Arc::clone(&self.activity),
        }
    }
}

/// A call in flight on its connection, from [`mark_called`] until dropped: while one is held,
/// the connection is not idle.
pub struct CallInFlight {
    activity: Arc<Activity>,
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        // If this is the last call in flight, the idle time starts now. Stored before the count
        // falls, by every call that ends: a look in between sees a call in flight, never no
        // call and an older idle time.
        let since = self.activity.accepted.elapsed().as_millis();
        self.activity
            .idle_since_ms
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks the connection a request came on as having made a call (its first-call deadline no
/// longer applies), and as busy until the returned guard is dropped, at the call's end. Called
/// for every request, by the outermost layer. None for a request that came on no [`Bounded`]
/// connection (a test's in-process server).
pub fn mark_called(extensions: &tonic::codegen::http::Extensions) -> Option<CallInFlight> {
    let info = extensions.get::<ConnectionInfo>()?;
    let activity = &info.activity;
    activity.in_flight.fetch_add(1, Ordering::AcqRel);
    if !activity.called.load(Ordering::Acquire) {
        activity.called.store(true, Ordering::Release);
    }
    Some(CallInFlight {
        activity: Arc::clone(activity),
    })
}

/// Polls a connection's deadline outside tokio's cooperative budget: with the task's budget
/// spent, a plain poll answers Pending without registering the waker, and since the waker is
/// then taken as registered (`armed_for`), the deadline would be found only at the next read or
/// write (an HTTP/2 keepalive ping, up to its interval later).
fn poll_deadline(deadline: Pin<&mut tokio::time::Sleep>, cx: &mut Context<'_>) -> Poll<()> {
    std::pin::pin!(tokio::task::coop::unconstrained(deadline)).poll(cx)
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// No call by the first-call deadline.
    FirstCall,
    /// No call in flight for the idle limit.
    Idle,
}

impl Bounded {
    fn new(
        inner: TcpStream,
        permit: OwnedSemaphorePermit,
        peer: Option<PeerPlace>,
        limits: Limits,
    ) -> Bounded {
        let activity = Activity::new();
        let accepted = activity.accepted;
        let first_call_by = accepted + limits.first_call + GRACE;
        // The first look comes at the earlier of the two limits: a connection that calls at
        // once and then goes idle is closed after its idle limit, not after the first-call one.
        let first_look = limits
            .idle
            .map_or(first_call_by, |idle| first_call_by.min(accepted + idle));
        Bounded {
            inner,
            _permit: permit,
            _peer: peer,
            activity: Arc::new(activity),
            deadline: Some(Box::pin(tokio::time::sleep_until(first_look.into()))),
            armed_for: None,
            first_call_by,
            idle: limits.idle,
            read_since_look: false,
        }
    }

    /// Whether the connection has run out of time (see [`Expired`]). When its deadline has
    /// passed but the connection is within its limits (it has called, or had calls in flight
    /// meanwhile), the deadline is moved to the end of the current idle time, or dropped when
    /// there is no idle limit.
    fn out_of_time(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        let deadline = self.deadline.as_mut()?;
        let passed = if self
            .armed_for
            .as_ref()
            .is_none_or(|waker| !waker.will_wake(cx.waker()))
        {
            self.arm(cx)
        } else {
            deadline.is_elapsed()
        };
        if !passed {
            return None;
        }
        let now = Instant::now();
        let read_since_look = std::mem::take(&mut self.read_since_look);
        let until = if !self.activity.called.load(Ordering::Relaxed) {
            if now >= self.first_call_by {
                return Some(Expired::FirstCall);
            }
            self.first_call_by
        } else {
            let Some(idle) = self.idle else {
                self.deadline = None;
                return None;
            };
            match self.activity.idle_since() {
                Some(since) if since + idle > now => since + idle,
                Some(_) if read_since_look => now + CALL_ON_ITS_WAY,
                Some(_) => return Some(Expired::Idle),
                // A call in flight: looked at again one idle limit from now.
                None => now + idle,
            }
        };
        // Moved to `until`, and polled at once, so that it wakes this task. Should it have
        // passed already, the task is woken to look again.
        if let Some(deadline) = self.deadline.as_mut() {
            deadline.as_mut().reset(until.into());
            if self.arm(cx) {
                cx.waker().wake_by_ref();
            }
        }
        None
    }

    /// Polls the deadline with this task's waker, so that it wakes this task when it passes;
    /// whether it has passed.
    fn arm(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline.as_mut() else {
            return false;
        };
        self.armed_for = Some(cx.waker().clone());
        poll_deadline(deadline.as_mut(), cx).is_ready()
    }

    fn timed_out(why: Expired) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            match why {
                Expired::FirstCall => "the connection made no call before its first-call deadline",
                Expired::Idle => "the connection had no call in flight for its idle limit",
            },
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
        match self.out_of_time(cx) {
            Some(Expired::FirstCall) => Poll::Ready(Err(Bounded::timed_out(Expired::FirstCall))),
            // An idle connection is closed only when there is nothing to read: bytes that came
            // may be a call on its way (`read_since_look`), and it goes on.
            expired => {
                let filled = buf.filled().len();
                let read = Pin::new(&mut self.inner).poll_read(cx, buf);
                let got_bytes = buf.filled().len() > filled;
                self.read_since_look |= got_bytes;
                match read {
                    Poll::Pending | Poll::Ready(Ok(())) if expired.is_some() && !got_bytes => {
                        Poll::Ready(Err(Bounded::timed_out(Expired::Idle)))
                    }
                    read => read,
                }
            }
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Also here: a peer that never reads stops the server's reads (its writes wait first).
        if let Some(why) = self.out_of_time(cx) {
            return Poll::Ready(Err(Bounded::timed_out(why)));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(why) = self.out_of_time(cx) {
            return Poll::Ready(Err(Bounded::timed_out(why)));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(why) = self.out_of_time(cx) {
            return Poll::Ready(Err(Bounded::timed_out(why)));
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
