//! Listening: plain HTTP or TLS, every connection counted against a cap
//! and held to a header deadline and an idle timeout; and the
//! once-a-second housekeeping (expired sessions, idle live streams, record
//! policies, retention).
//!
//! Why not `axum::serve`: it has no header-read timeout, no idle timeout and
//! no connection cap, so 2,000 idle or slow-header connections stay open for
//! ever and an exhausted open-file limit silently stops the API. Here each
//! connection holds a [`Ticket`] from the cloud's [`Gate`]; past the cap a
//! new connection is closed at once (and logged), and the last
//! `api_reserve` places are kept for the admin API.

use crate::api::router;
use crate::lowat::ConnSocket;
use crate::server::Cloud;
use crate::store::Store;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;

/// Connection limits (`ivr cloud --max-connections …`).
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Open connections (HTTP, WebSocket, RTMP) past which new ones are
    /// closed at once. Keep it under the process's open-file limit.
    pub max_connections: usize,
    /// The last places under the cap that only `/api/…` requests may use, so
    /// the admin API answers while devices fill the rest.
    pub api_reserve: usize,
    /// A request's headers must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// A connection with no byte read or written this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: default_max_connections(),
            api_reserve: 32,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The open-file limit less 512 for the database, recordings being written,
/// firmware being read and the rest (at least 64).
pub fn default_max_connections() -> usize {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0 { l.rlim_cur } else { 1024 };
    (cur.min(1 << 20) as usize).saturating_sub(512).max(64)
}

/// Counts open connections against [`ConnLimits`].
pub(crate) struct Gate {
    open: AtomicUsize,
    max: usize,
    reserve: usize,
    pub(crate) refused: AtomicU64,
    pub(crate) reserved_refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

/// One open connection; dropping it frees the place.
pub(crate) struct Ticket(Arc<Gate>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub(crate) fn new(l: &ConnLimits) -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            max: l.max_connections.max(1),
            reserve: l.api_reserve.min(l.max_connections.saturating_sub(1)),
            refused: AtomicU64::new(0),
            reserved_refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
        })
    }

    /// A place for a new connection, or `None` at the cap (logged at most
    /// every 10 s with the count refused so far).
    pub(crate) fn enter(self: &Arc<Self>, what: &str, peer: SocketAddr) -> Option<Ticket> {
        let n = self.open.fetch_add(1, Ordering::Relaxed);
        if n < self.max {
            return Some(Ticket(self.clone()));
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().expect("gate log lock");
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                %peer, open = n, max = self.max, refused_so_far = refused,
                "cloud: {what} connection refused: at the connection cap (--max-connections)"
            );
        }
        None
    }

    /// Open connections now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Whether only the admin API may be served (the reserve is in use).
    pub(crate) fn tight(&self) -> bool {
        self.open() > self.max - self.reserve
    }
}

/// An IO that fails with `TimedOut` after `idle` with no byte moved either
/// way, and holds its connection's [`Ticket`] (through a WebSocket upgrade
/// too: hyper hands this very IO to the socket).
pub(crate) struct IdleIo<T> {
    inner: T,
    idle: Duration,
    last: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
    _ticket: Ticket,
}

impl<T> IdleIo<T> {
    pub(crate) fn new(inner: T, idle: Duration, ticket: Ticket) -> Self {
        IdleIo { inner, idle, last: Instant::now(), sleep: Box::pin(tokio::time::sleep(idle)), _ticket: ticket }
    }

    /// After a `Pending`: whether the idle time is up (re-arming the timer
    /// when there was activity since it was set).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let since = self.last.elapsed();
            if since >= self.idle {
                return true;
            }
            let at = tokio::time::Instant::now() + (self.idle - since);
            self.sleep.as_mut().reset(at);
        }
    }
}

fn timed_out(idle: Duration) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no data either way for {idle:?}"))
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out(self.idle))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> IdleIo<T> {
    /// A write's outcome: bytes written count as activity; a write that
    /// cannot proceed past the idle time is the timeout.
    fn wrote(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out(self.idle))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, b);
        self.wrote(cx, r)
    }
    // Forwarded so that hyper writes a body's chunks with one writev
    // where they lie, instead of copying each (a live fragment to every
    // viewer) into its own buffer first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves plain HTTP until the process ends.
pub async fn serve<S: Store>(c: Arc<Cloud<S>>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    spawn_housekeeping(&c);
    let app = router(c.clone());
    loop {
        let Some((tcp, peer)) = accept(&listener, "HTTP").await else { continue };
        let Some(ticket) = c.gate.enter("HTTP", peer) else { continue };
        let (c, app) = (c.clone(), app.clone());
        tokio::spawn(async move {
            let header = c.cfg.limits.header_timeout;
            // Recording segments are read by the ingest's own loop (see
            // ingest.rs); the rest, and what it hands back, by hyper.
            match crate::ingest::is_segment_put(&tcp, header).await {
                None => return,
                Some(false) => {}
                Some(true) => match Box::pin(crate::ingest::serve(&c, tcp, peer, ticket)).await {
                    crate::ingest::Served::Done => return,
                    crate::ingest::Served::Hyper(tcp, ticket, head) => {
                        let sock = ConnSocket(tcp.as_raw_fd());
                        let io = crate::ingest::Rewind::new(head, IdleIo::new(tcp, c.idle_timeout(), ticket));
                        return Box::pin(serve_conn(app, io, peer, sock, header)).await;
                    }
                },
            }
            let sock = ConnSocket(tcp.as_raw_fd());
            serve_conn(app, IdleIo::new(tcp, c.idle_timeout(), ticket), peer, sock, header).await
        });
    }
}

/// Serves HTTPS (devices dial wss://…/ivc), each TLS handshake on its own
/// task within the header deadline, so a slow or broken client holds up
/// nobody.
pub async fn serve_tls<S: Store>(
    c: Arc<Cloud<S>>,
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
) -> std::io::Result<()> {
    spawn_housekeeping(&c);
    let app = router(c.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Some((tcp, peer)) = accept(&listener, "HTTPS").await else { continue };
        let Some(ticket) = c.gate.enter("HTTPS", peer) else { continue };
        let sock = ConnSocket(tcp.as_raw_fd());
        let io = IdleIo::new(tcp, c.idle_timeout(), ticket);
        let (acceptor, app, deadline) = (acceptor.clone(), app.clone(), c.cfg.limits.header_timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(deadline, acceptor.accept(io)).await {
                Ok(Ok(s)) => serve_conn(app, s, peer, sock, deadline).await,
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "cloud: TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "cloud: TLS handshake timed out"),
            }
        });
    }
}

/// The next connection; `None` after an accept error (out of descriptors
/// and the like), logged, after a pause so the loop does not spin.
async fn accept(listener: &tokio::net::TcpListener, what: &str) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((tcp, peer)) => {
            let _ = tcp.set_nodelay(true);
            Some((tcp, peer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cloud: {what} accept failed (open-file limit? see --max-connections)");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// HTTP/1.1 on one connection (WebSocket upgrades included), the peer's
/// address given to handlers as `ConnectInfo`, its socket as `ConnSocket`
/// (for long uploads, see lowat.rs).
pub(crate) async fn serve_conn<I>(
    app: axum::Router,
    io: I,
    peer: SocketAddr,
    sock: ConnSocket,
    header_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(sock);
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(64 << 10);
    if let Err(e) = b.serve_connection(TokioIo::new(io), svc).with_upgrades().await {
        tracing::debug!(%peer, error = %e, "cloud: connection ended");
    }
}

fn spawn_housekeeping<S: Store>(c: &Arc<Cloud<S>>) {
    let expiry = c.clone();
    tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            expiry.expire();
            expiry.live_reap().await;
            expiry.heartbeat(tick).await;
            if tick.is_multiple_of(2) {
                expiry.keep_policies().await;
            }
            if tick.is_multiple_of(10) {
                expiry.uploads.expire();
                match expiry.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "cloud: retention deleted segments"),
                    Err(e) => tracing::error!(error = %e, "cloud: retention sweep failed"),
                }
                expiry.sweep_events().await;
            }
            if tick.is_multiple_of(600) {
                expiry.mark_reconciled();
            }
        }
    });
}
