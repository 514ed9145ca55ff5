//! A TCP proxy for failure tests: it forwards every connection both ways, until the test freezes
//! the connections that sent a marker (for example `LISTEN`). From then on a frozen connection's
//! bytes are neither forwarded nor answered, and it is not closed either: to both ends it looks
//! like a peer that vanished without a word (a host powered off, a NAT that forgot the flow).
//! Connections made after the freeze are forwarded as usual. Loopback only; everything stops
//! when the proxy is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One proxied connection's flags.
#[derive(Default)]
struct Flow {
    /// The client sent the marker on it.
    marked: AtomicBool,
    /// Nothing passes any more.
    frozen: AtomicBool,
}

/// A running proxy.
pub struct FreezingProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    flows: Arc<Mutex<Vec<Arc<Flow>>>>,
    accept: JoinHandle<()>,
}

impl FreezingProxy {
    /// Listens on a free loopback port and forwards to `target` (host:port); a connection whose
    /// client sends `marker` is marked.
    pub async fn start(target: String, marker: &'static [u8]) -> anyhow::Result<FreezingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let flows: Arc<Mutex<Vec<Arc<Flow>>>> = Arc::default();
        let registry = Arc::clone(&flows);
        let accept = tokio::spawn(async move {
            let mut tasks = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let flow = Arc::new(Flow::default());
                registry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Arc::clone(&flow));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tasks.push(AbortOnDrop(tokio::spawn(pipe(
                    client_read,
                    server_write,
                    Arc::clone(&flow),
                    Some(marker),
                ))));
                tasks.push(AbortOnDrop(tokio::spawn(pipe(
                    server_read,
                    client_write,
                    flow,
                    None,
                ))));
            }
        });
        Ok(FreezingProxy {
            port,
            flows,
            accept,
        })
    }

    /// How many connections have sent the marker so far.
    pub fn marked(&self) -> usize {
        self.flows()
            .iter()
            .filter(|f| f.marked.load(Ordering::SeqCst))
            .count()
    }

    /// Freezes every connection marked so far; returns how many.
    pub fn freeze_marked(&self) -> usize {
        let flows = self.flows();
        let marked: Vec<&Arc<Flow>> = flows
            .iter()
            .filter(|f| f.marked.load(Ordering::SeqCst))
            .collect();
        for flow in &marked {
            flow.frozen.store(true, Ordering::SeqCst);
        }
        marked.len()
    }

    fn flows(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Flow>>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Aborts its task when dropped (the accept task holds the pipes: aborting it ends them too).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies one direction of a flow until either end closes; once the flow is frozen, it holds
/// both sockets open and moves nothing.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    flow: Arc<Flow>,
    marker: Option<&'static [u8]>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(marker) = marker
            && buffer[..n].windows(marker.len()).any(|w| w == marker)
        {
            flow.marked.store(true, Ordering::SeqCst);
        }
        if flow.frozen.load(Ordering::SeqCst) {
            // Vanished: keep both sockets, answer nothing, until the proxy is dropped.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
