//! Listening: plain HTTP or TLS (each handshake on its own task), and the
//! once-a-second housekeeping (expired sessions, idle live streams, record
//! policies, retention).

use crate::api::router;
use crate::server::Cloud;
use crate::store::Store;
use axum::serve::ListenerExt;
use std::sync::Arc;
use std::time::Duration;

/// Serves until the listener fails, expiring silent sessions every second.
pub async fn serve<S: Store>(c: Arc<Cloud<S>>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    spawn_housekeeping(&c);
    axum::serve(listener.tap_io(|tcp| drop(tcp.set_nodelay(true))), router(c)).await
}

/// Serves HTTPS (devices dial wss://…/ivc), each TLS handshake on its own
/// task so a slow or broken client holds up nobody.
pub async fn serve_tls<S: Store>(
    c: Arc<Cloud<S>>,
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
) -> std::io::Result<()> {
    spawn_housekeeping(&c);
    let local = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "cloud: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => drop(tx.send((s, peer)).await),
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "cloud: TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "cloud: TLS handshake timed out"),
                }
            });
        }
    });
    axum::serve(TlsListener { rx, local }, router(c)).await
}

fn spawn_housekeeping<S: Store>(c: &Arc<Cloud<S>>) {
    let expiry = c.clone();
    tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            expiry.expire();
            expiry.live_reap();
            if tick.is_multiple_of(2) {
                expiry.keep_policies();
            }
            if tick.is_multiple_of(10) {
                let c = expiry.clone();
                // Deleting files blocks: not on the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || match c.sweep() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "cloud: retention deleted segments"),
                    Err(e) => tracing::error!(error = %e, "cloud: retention sweep failed"),
                })
                .await;
            }
        }
    });
}

/// Finished TLS handshakes, as axum's listener.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (it does not): wait forever.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
