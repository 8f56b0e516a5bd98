//! Recording segments read straight off the socket.
//!
//! A segment's PUT (`/record/{session}/{seq}/{token}`: a camera's 5 MB
//! every 10 s) is nearly every byte a recording cloud takes in. Through
//! hyper, a body arrives as 64 KiB chunks handed from the connection to
//! the handler through a channel that lives in the same task: every chunk
//! made that task wake itself, which tokio treats as a yield and answers by
//! waking the runtime's other worker (an `eventfd` write and two context
//! switches, for a worker that finds nothing to do: 16 times a mebibyte),
//! and every chunk was copied once more into the aligned block of the
//! direct write (diskfile.rs).
//!
//! So a plain connection whose first bytes are `PUT /record/` is served
//! here: the head read and parsed (with httparse, hyper's own parser), the
//! upload URL's token claimed, and the body read with one `recv` per
//! wake-up straight into the aligned block, the socket's low-water mark set
//! to exactly the bytes wanted next (the reader knows them, so the mark
//! never waits for bytes that will not come). The answer is the router's
//! (same statuses, same JSON errors) and the connection then closes.
//!
//! What this does not serve exactly as the router would goes to hyper,
//! the bytes read so far put back in front of the stream ([`Rewind`]): no
//! `Content-Length`, a chunked body, HTTP/1.0, an `Expect` other than
//! `100-continue`, a percent-encoded or other path. TLS connections always
//! go through hyper.

use crate::error::ApiError;
use crate::listen::Ticket;
use crate::lowat::{ConnSocket, Lowat, STALL};
use crate::server::Cloud;
use crate::store::Store;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a segment's PUT starts.
const PREFIX: &[u8] = b"PUT /record/";
/// The most head this reads before leaving the connection to hyper (which
/// answers a head that large itself).
const MAX_HEAD: usize = 16 << 10;
/// Headers parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;
/// After an answer given before the whole body came, the rest is read and
/// dropped for at most this long, so that the sender (still writing) sees
/// the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(2);

/// Whether a fresh connection's first bytes are a segment's PUT; `None`
/// when nothing came within `wait` or the peer went away. Peeks, so the
/// bytes stay for whoever serves the connection.
pub(crate) async fn is_segment_put(tcp: &TcpStream, wait: Duration) -> Option<bool> {
    let mut b = [0u8; PREFIX.len()];
    match tokio::time::timeout(wait, tcp.peek(&mut b)).await {
        // A first packet shorter than the prefix is left to hyper.
        Ok(Ok(n)) if n > 0 => Some(b[..n] == *PREFIX),
        _ => None,
    }
}

/// What became of a connection given to [`serve`].
pub(crate) enum Served {
    Done,
    /// Not one to serve here: hyper's, with the bytes read so far.
    Hyper(TcpStream, Ticket, Bytes),
}

/// A head this module serves.
struct Head {
    token: String,
    len: u64,
    /// `Expect: 100-continue`.
    go_on: bool,
    /// Bytes of the head.
    size: usize,
}

/// Parses what came so far: `Ok(None)` for more, `Err(())` for a request
/// to leave to hyper.
fn parse(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let size = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    if req.method != Some("PUT") || req.version != Some(1) {
        return Err(());
    }
    let path = req.path.ok_or(())?;
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let parts: Vec<&str> = path.strip_prefix("/record/").ok_or(())?.split('/').collect();
    let [session, seq, token] = parts[..] else { return Err(()) };
    if [session, seq, token].iter().any(|p| p.is_empty() || p.contains('%')) {
        return Err(());
    }
    // What the router's `Path<(String, u64, String)>` would refuse.
    seq.parse::<u64>().map_err(|_| ())?;
    let (mut len, mut go_on) = (None, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| ())?.trim();
            if len.is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            len = Some(v.parse::<u64>().map_err(|_| ())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !h.value.eq_ignore_ascii_case(b"100-continue") {
                return Err(());
            }
            go_on = true;
        }
    }
    Ok(Some(Head { token: token.to_owned(), len: len.ok_or(())?, go_on, size }))
}

/// Serves a connection that starts with `PUT /record/` (see the module's
/// comment), or hands it back for hyper.
pub(crate) async fn serve<S: Store>(c: &Arc<Cloud<S>>, mut tcp: TcpStream, peer: SocketAddr, ticket: Ticket) -> Served {
    let deadline = Instant::now() + c.cfg.limits.header_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let head = loop {
        match parse(&buf) {
            Ok(Some(h)) => break h,
            Err(()) => return Served::Hyper(tcp, ticket, buf.into()),
            Ok(None) if buf.len() >= MAX_HEAD => return Served::Hyper(tcp, ticket, buf.into()),
            Ok(None) => {}
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Gone, or no whole head in time: what hyper does too (closes).
            _ => {
                tracing::debug!(%peer, "cloud: a segment upload's head did not come whole");
                return Served::Done;
            }
        }
    };
    let body = &buf[head.size..];
    let got = body.len().min(head.len as usize) as u64;
    let (answer, read) = match put(c, &mut tcp, &head, body).await {
        Ok(fresh) => {
            let status = if fresh { StatusCode::CREATED } else { StatusCode::OK };
            (status.into_response(), head.len)
        }
        Err((r, read)) => (r, read.max(got)),
    };
    let ok = answer.status().is_success();
    if let Err(e) = respond(&mut tcp, answer).await {
        tracing::debug!(%peer, error = %e, "cloud: a segment upload's answer was not delivered");
        return Served::Done;
    }
    if !ok && read < head.len {
        linger(&mut tcp, head.len - read).await;
    }
    drop(ticket);
    Served::Done
}

/// The upload's work: the token, the size, the body to disk, the index.
/// An error answer comes with the body bytes read before it.
async fn put<S: Store>(
    c: &Arc<Cloud<S>>,
    tcp: &mut TcpStream,
    head: &Head,
    first: &[u8],
) -> Result<bool, (Response, u64)> {
    let before = |e: ApiError| (e.into_response(), 0);
    if c.gate.tight() {
        // As the router's reserve layer answers devices then.
        return Err((crate::api::reserve_refused(&c.gate), 0));
    }
    let put = c.claim_segment(&head.token).map_err(before)?;
    if head.len > put.size {
        return Err(before(ApiError::bad_request(format!("more bytes than the {} announced", put.size))));
    }
    if head.len < put.size {
        return Err(before(ApiError::bad_request(format!("{} bytes, {} announced", head.len, put.size))));
    }
    if head.go_on {
        tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| before(ApiError::bad_request(format!("the upload broke off: {e}"))))?;
    }
    let idle = c.idle_timeout();
    let n = receive(tcp, first, &put.path, head.len, idle).await.map_err(|(e, read)| {
        c.count_disk_error(&e);
        (e.into_response(), read)
    })?;
    c.index_segment(put, n).await.map_err(|e| (e.into_response(), n))
}

/// Reads `len` body bytes (`first` of them already here) into `path`
/// through its `.part` file; on any error the `.part` is removed. The
/// error comes with the bytes read before it.
async fn receive(
    tcp: &mut TcpStream,
    first: &[u8],
    path: &Path,
    len: u64,
    idle: Duration,
) -> Result<u64, (ApiError, u64)> {
    let part = path.with_extension("part");
    let mut f = crate::diskfile::DiskFile::new(&part);
    let mut n = 0u64;
    let r = async {
        let disk = |what: &str, e: std::io::Error| crate::uploads::disk_error(path, what, e);
        let broke = |n: u64, why: String| {
            ApiError::bad_request(format!("the upload broke off after {n} of its {len} bytes: {why}"))
        };
        let k = first.len().min(len as usize);
        f.write(&first[..k]).await.map_err(|e| disk("writing", e))?;
        n = k as u64;
        let mut lw = Lowat::new(Some(ConnSocket(tcp.as_raw_fd())));
        let mut last = Instant::now();
        // One timer for the whole body, moved on only when it fires.
        let mut timer = Box::pin(tokio::time::sleep_until(last + STALL.min(idle)));
        while n < len {
            let room = f.spare().map_err(|e| disk("writing", e))?;
            let want = room.len().min((len - n) as usize);
            if let Some(l) = lw.as_mut() {
                l.exactly(want);
            }
            tokio::select! {
                biased;
                r = tcp.readable() => r.map_err(|e| broke(n, e.to_string()))?,
                () = timer.as_mut() => {
                    let quiet = last.elapsed();
                    if quiet >= idle {
                        return Err(ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            format!("no byte of the upload for {idle:?} after {n} of its {len} bytes"),
                        ));
                    }
                    // A slow sender: no mark for the rest of this body.
                    if let Some(l) = lw.as_mut().filter(|l| l.raised() && quiet >= STALL) {
                        l.stalled();
                    }
                    let next = if lw.as_ref().is_some_and(Lowat::raised) { STALL } else { idle };
                    timer.as_mut().reset(last + next);
                    continue;
                }
            }
            match tcp.try_read(&mut room[..want]) {
                Ok(0) => return Err(broke(n, "the sender closed the connection".into())),
                Ok(m) => {
                    f.filled(m).await.map_err(|e| disk("writing", e))?;
                    n += m as u64;
                    last = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(broke(n, e.to_string())),
            }
        }
        drop(lw);
        f.finish_as(path).await.map_err(|e| disk("writing, fsync and rename", e))
    }
    .await;
    match r {
        Ok(len) => Ok(len),
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err((e, n))
        }
    }
}

/// Writes `r` as an HTTP/1.1 answer that closes the connection.
async fn respond(tcp: &mut TcpStream, r: Response) -> std::io::Result<()> {
    let (parts, body) = r.into_parts();
    let body = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let mut out = format!("HTTP/1.1 {} {}\r\n", parts.status.as_u16(), parts.status.canonical_reason().unwrap_or(""))
        .into_bytes();
    for (k, v) in &parts.headers {
        if k != "content-length" && k != "connection" {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    tcp.write_all(&out).await?;
    tcp.shutdown().await
}

/// Reads and drops up to `left` bytes for at most [`LINGER`].
async fn linger(tcp: &mut TcpStream, mut left: u64) {
    let mut sink = vec![0u8; 64 << 10];
    let until = Instant::now() + LINGER;
    while left > 0 {
        match tokio::time::timeout_at(until, tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
            _ => return,
        }
    }
}

/// A stream with bytes already read from it put back in front.
pub(crate) struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(pre: Bytes, inner: T) -> Rewind<T> {
        Rewind { pre, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pre.has_remaining() {
            let k = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..k]);
            self.pre.advance(k);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(13) ^ (i >> 9) as u8).collect()
    }

    /// A connected pair on loopback: (the cloud's side, the sender's).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tx = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, tx)
    }

    /// Sends `body` in uneven pieces, with one pause longer than `STALL`
    /// (the mark is dropped and the read goes on), or only `cut` bytes of
    /// it before closing.
    async fn send(mut tx: TcpStream, body: Vec<u8>, cut: Option<usize>) {
        let end = cut.unwrap_or(body.len());
        for (i, piece) in body[..end].chunks(200_003).enumerate() {
            tx.write_all(piece).await.unwrap();
            if i == 3 {
                tokio::time::sleep(STALL + Duration::from_millis(200)).await;
            }
        }
        if cut.is_some() {
            drop(tx);
        } else {
            // Held open until the reader is done (it closes first).
            let _ = tx.read(&mut [0u8; 1]).await;
        }
    }

    /// The reader stores exactly the body (its first bytes having come with
    /// the head), goes on after a stall, and leaves nothing of a body that
    /// broke off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_body_is_stored_exactly_and_nothing_of_a_broken_one() {
        let dir = std::env::temp_dir().join(format!("ivr-ingest-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let body = data(2 * (1 << 20) + 4321);
        let idle = Duration::from_secs(10);
        for cut in [None, Some(1_500_000)] {
            let (rx, tx) = pair().await;
            let path = dir.join(format!("s-{cut:?}.ts"));
            let (first, rest) = body.split_at(1000);
            let sender = tokio::spawn(send(tx, rest.to_vec(), cut.map(|c| c - 1000)));
            let len = body.len() as u64;
            let mut rx = rx;
            let r = receive(&mut rx, first, &path, len, idle).await;
            sender.abort();
            match cut {
                None => {
                    assert_eq!(r.map_err(|(e, _)| e.msg).unwrap(), len);
                    assert!(std::fs::read(&path).unwrap() == body, "bytes differ");
                }
                Some(c) => {
                    let (e, read) = r.expect_err("a broken body");
                    assert_eq!(read, c as u64);
                    assert!(e.msg.contains(&format!("after {c} of its {len} bytes")), "{}", e.msg);
                    assert!(!path.exists() && !path.with_extension("part").exists());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
