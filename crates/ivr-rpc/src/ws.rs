//! WebSocket adapters: tokio-tungstenite streams as [`Frame`] streams, and
//! the login URL the IVT dials. (The cloud's axum adapter comes with the
//! cloud.)

use crate::conn::Frame;
use crate::net::{self, target, Dialer};
use futures_util::{Sink, Stream};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// The URL an IVT dials: `<base>?login_code=…&login_passwd=…&hardware_model=…&firmware_model=…`,
/// each value percent-encoded.
pub fn login_url(
    base: &str,
    login_code: &str,
    login_passwd: &str,
    hardware_model: &str,
    firmware_model: &str,
) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}login_code={}&login_passwd={}&hardware_model={}&firmware_model={}",
        encode(login_code),
        encode(login_passwd),
        encode(hardware_model),
        encode(firmware_model)
    )
}

/// Why dialling failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{url:?} is not a ws:// or wss:// URL: {why}")]
    Url { url: String, why: String },
    #[error("cannot connect to {addr}: {err}")]
    Connect { addr: String, err: std::io::Error },
    #[error("the cloud refused the login (HTTP 401)")]
    Refused,
    /// HTTP 429 or 503: too many failed logins, a full login queue or a
    /// cloud at its connection cap; try again after `retry_after` seconds.
    #[error("the cloud asked to come back later (HTTP {status}, Retry-After {retry_after} s)")]
    Later { status: u16, retry_after: u64 },
    #[error("WebSocket handshake with {addr}: {err}")]
    Handshake { addr: String, err: Box<tokio_tungstenite::tungstenite::Error> },
}

/// The WebSocket message limits both ends use: IVR RPC messages are a few
/// hundred bytes, so a small first read buffer, no write batching, and a
/// 1 MiB cap on anything the other end sends.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The first read buffer of a WebSocket (tungstenite's default is 128 KiB,
/// zero-filled on first read: most of an idle session's memory).
pub const READ_BUFFER: usize = 1024;
/// The largest IVR RPC message either end reads.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Dials `url` (the login URL, ws:// or wss://) and completes the
/// WebSocket handshake.
pub async fn dial(url: &str, dialer: &Dialer) -> Result<WsFrames<net::Stream>, DialError> {
    let t = target(url).map_err(|why| DialError::Url { url: url.to_owned(), why: why.to_string() })?;
    if !matches!(t.scheme, "ws" | "wss") {
        return Err(DialError::Url { url: url.to_owned(), why: "the scheme is neither ws nor wss".into() });
    }
    let addr = format!("{}:{}", t.host, t.port);
    let stream =
        dialer.connect(t.host, t.port, t.secure).await.map_err(|err| DialError::Connect { addr: addr.clone(), err })?;
    match tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await {
        Ok((ws, _)) => Ok(WsFrames::new(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401 => Err(DialError::Refused),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if matches!(r.status().as_u16(), 429 | 503) => {
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(5);
            Err(DialError::Later { status: r.status().as_u16(), retry_after })
        }
        Err(err) => Err(DialError::Handshake { addr, err: Box::new(err) }),
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A tungstenite WebSocket seen as frames: text in and out; pings are
/// answered by tungstenite itself; binary frames are malformed packets
/// (they reach the peer as text that fails to parse: rule 5).
pub struct WsFrames<S> {
    inner: WebSocketStream<S>,
}

impl<S> WsFrames<S> {
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsFrames { inner }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsFrames<S> {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        loop {
            return match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => Poll::Ready(None),
                Poll::Ready(Some(Ok(m))) => match m {
                    WsMessage::Text(t) => Poll::Ready(Some(Frame::Text(t.as_str().to_owned()))),
                    WsMessage::Binary(b) => {
                        Poll::Ready(Some(Frame::Text(format!("<binary frame of {} bytes>", b.len()))))
                    }
                    WsMessage::Close(c) => Poll::Ready(Some(Frame::Close(c.map(|c| c.reason.as_str().to_owned())))),
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
                },
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Frame> for WsFrames<S> {
    type Error = tokio_tungstenite::tungstenite::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, f: Frame) -> Result<(), Self::Error> {
        let m = match f {
            Frame::Text(t) => WsMessage::Text(t.into()),
            Frame::Close(reason) => WsMessage::Close(Some(CloseFrame {
                code: if reason.is_some() { CloseCode::Policy } else { CloseCode::Normal },
                reason: reason.unwrap_or_default().into(),
            })),
        };
        Pin::new(&mut self.inner).start_send(m)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_url_encodes_its_four_parameters() {
        assert_eq!(
            login_url("ws://127.0.0.1:8080/ivc", "site 1", "p&w=d", "ivr-edge", "0.1.0"),
            "ws://127.0.0.1:8080/ivc?login_code=site%201&login_passwd=p%26w%3Dd&hardware_model=ivr-edge&firmware_model=0.1.0"
        );
    }
}
