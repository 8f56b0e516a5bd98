//! One-time upload URLs handed to devices: alarm pictures and channel
//! previews (POST the JPEG as the body). The token is the authorisation,
//! checked before a byte of the body is read; the body is streamed to disk
//! under a size cap, never held whole in memory.

use crate::diskfile::DiskFile;
use crate::error::{ApiError, ApiResult};
use crate::limits::Upload;
use crate::server::Cloud;
use crate::store::Store;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::path::Path as FsPath;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The largest picture taken.
pub(crate) const MAX_PICTURE: u64 = 8 << 20;
/// A picture upload must finish within this.
const PICTURE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
pub(crate) struct UploadQuery {
    /// Which channel a preview shows (ivr's addition; the seed's URL is per device).
    #[serde(default)]
    channel: u32,
}

/// `POST /upload/{token}`.
pub(crate) async fn upload<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path(t): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let (lc, target) = c.uploads.take(&t).ok_or_else(|| {
        c.counters.uploads_refused.fetch_add(1, Ordering::Relaxed);
        ApiError::not_found("unknown, used or expired upload URL")
    })?;
    let path = match &target {
        Upload::Alarm { event_id } => c.cfg.data_dir.join("pictures").join(format!("{event_id}.jpg")),
        Upload::Preview => preview_path(&c.cfg.data_dir, &lc, q.channel),
    };
    let stored = tokio::time::timeout(
        PICTURE_DEADLINE,
        store_body(body, &path, Size::AtMost(MAX_PICTURE), Some(is_jpeg), false, None),
    )
    .await;
    match stored {
        Ok(r) => r.map(|_| StatusCode::NO_CONTENT),
        Err(_) => {
            Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the picture took over {PICTURE_DEADLINE:?}")))
        }
    }
}

/// Where a channel's latest preview is kept: one file per (device,
/// channel), the name one-to-one with the login code.
pub(crate) fn preview_path(data: &FsPath, login_code: &str, channel: u32) -> std::path::PathBuf {
    data.join("previews").join(format!("{}-{channel}.jpg", crate::safe_name(login_code)))
}

/// A stored picture as a response: `nosniff`, so a browser never runs it
/// as anything but an image.
pub(crate) fn jpeg(b: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([("content-type", "image/jpeg"), ("x-content-type-options", "nosniff"), ("cache-control", "no-store")], b)
        .into_response()
}

/// A JPEG starts with its SOI marker (whatever follows is the viewer's
/// problem; what this keeps out is HTML, SVG and the like).
fn is_jpeg(head: &[u8]) -> Result<(), String> {
    if head.starts_with(&[0xff, 0xd8]) {
        Ok(())
    } else {
        Err("not a JPEG (pictures start with the SOI marker FF D8)".into())
    }
}

/// A check of an upload's first bytes (what the file claims to be).
pub(crate) type HeadCheck = fn(&[u8]) -> Result<(), String>;

/// How large an upload must be.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Size {
    AtMost(u64),
    /// What was announced beforehand (a recording segment).
    Exactly(u64),
}

/// A file that could not be written, as the answer: a full disk is 507,
/// anything else 500 (and logged: it is the cloud's problem, not the
/// uploader's).
pub(crate) fn disk_error(path: &FsPath, what: &str, e: std::io::Error) -> ApiError {
    let status =
        if e.raw_os_error() == Some(28) { StatusCode::INSUFFICIENT_STORAGE } else { StatusCode::INTERNAL_SERVER_ERROR };
    tracing::error!(path = %path.display(), error = %e, "cloud: an upload was not stored ({what})");
    ApiError::new(status, format!("storing the upload ({what}): {e}"))
}

/// Streams `body` into `path` (through a `.part` file, fsynced with its
/// directory, renamed, so a crash leaves the old file or the new one and at
/// worst a `.part`), its size checked against `size`, the first chunk by
/// `check`. Returns the size and the SHA-256. A full disk is 507.
pub(crate) async fn store_body(
    body: Body,
    path: &FsPath,
    size: Size,
    check: Option<HeadCheck>,
    digest: bool,
    sock: Option<crate::lowat::ConnSocket>,
) -> ApiResult<(u64, Option<String>)> {
    let max = match size {
        Size::AtMost(m) | Size::Exactly(m) => m,
    };
    let part = path.with_extension("part");
    let disk = |what: &str, e: std::io::Error| disk_error(path, what, e);
    // The body's small chunks are gathered into 1 MiB direct writes (a
    // trip to a blocking thread each; see diskfile.rs).
    let mut f = DiskFile::new(&part);
    let mut sha = digest.then(|| ring::digest::Context::new(&ring::digest::SHA256));
    let mut n = 0u64;
    let mut stream = body.into_data_stream();
    // A body of known length wakes this task once a mebibyte has arrived
    // rather than for every piece the network delivers (see lowat.rs).
    let exact = match size {
        Size::Exactly(want) => Some(want),
        Size::AtMost(_) => None,
    };
    let mut lowat = exact.and_then(|want| {
        let mut l = crate::lowat::Lowat::new(sock)?;
        l.left(want);
        Some(l)
    });
    let r: ApiResult<()> = async {
        while let Some(chunk) = crate::lowat::next(lowat.as_mut(), &mut stream).await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
            if n == 0 && !chunk.is_empty() {
                if let Some(check) = check {
                    check(&chunk).map_err(|e| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e))?;
                }
            }
            n += chunk.len() as u64;
            if n > max {
                return Err(match size {
                    Size::Exactly(_) => ApiError::bad_request(format!("more bytes than the {max} announced")),
                    Size::AtMost(_) => {
                        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {max} bytes"))
                    }
                });
            }
            if let Some(sha) = sha.as_mut() {
                sha.update(&chunk);
            }
            if let (Some(l), Some(want)) = (lowat.as_mut(), exact) {
                l.left(want.saturating_sub(n));
            }
            f.write(&chunk).await.map_err(|e| disk("writing", e))?;
        }
        drop(lowat.take());
        if n == 0 {
            return Err(ApiError::bad_request("the body is empty"));
        }
        if let Some(want) = exact {
            if n != want {
                return Err(ApiError::bad_request(format!("{n} bytes, {want} announced")));
            }
        }
        f.finish_as(path).await.map_err(|e| disk("writing, fsync and rename", e))?;
        Ok(())
    }
    .await;
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    let hex = sha.map(|s| s.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect());
    Ok((n, hex))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lowat::ConnSocket;
    use axum::extract::Path;
    use axum::routing::put;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// A cloud's HTTP stack (plain and TLS) with one route that stores a
    /// body of announced length the way segments are stored.
    async fn server(dir: &FsPath) -> (u16, u16, std::path::PathBuf) {
        let d = dir.to_owned();
        let app = axum::Router::new().route(
            "/up/{name}/{n}",
            put(move |Path((name, n)): Path<(String, u64)>, sock: Option<axum::Extension<ConnSocket>>, body: Body| {
                let path = d.join(name);
                async move {
                    store_body(body, &path, Size::Exactly(n), None, false, sock.map(|s| s.0))
                        .await
                        .map(|(n, _)| n.to_string())
                }
            }),
        );
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(ivr_rpc::net::server_config(&cert, &key).unwrap());
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ports = (plain.local_addr().unwrap().port(), secure.local_addr().unwrap().port());
        let a = app.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = plain.accept().await {
                let sock = ConnSocket(tcp.as_raw_fd());
                tokio::spawn(crate::listen::serve_conn(a.clone(), tcp, peer, sock, Duration::from_secs(10)));
            }
        });
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = secure.accept().await {
                let sock = ConnSocket(tcp.as_raw_fd());
                let (tls, app) = (tls.clone(), app.clone());
                tokio::spawn(async move {
                    let s = tls.accept(tcp).await.unwrap();
                    crate::listen::serve_conn(app, s, peer, sock, Duration::from_secs(10)).await
                });
            }
        });
        (ports.0, ports.1, cert)
    }

    /// One response's status line and body, read by its Content-Length.
    async fn response<S: AsyncRead + Unpin>(s: &mut S) -> (String, String) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        (head.lines().next().unwrap().to_owned(), String::from_utf8(body).unwrap())
    }

    /// Two long bodies on one kept-alive connection, the first in one
    /// burst, the second trickled; then a short one. Each is stored whole,
    /// and each answer comes at once: the low-water mark raised for a body
    /// never outlives it, nor waits for bytes that are not coming.
    async fn uploads_on<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, dir: &FsPath, tag: &str) {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 + i / 4096) as u8).collect();
        for (k, trickle) in [(0, false), (1, true)] {
            let name = format!("{tag}-{k}.ts");
            let head =
                format!("PUT /up/{name}/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", data.len(), data.len());
            s.write_all(head.as_bytes()).await.unwrap();
            if trickle {
                // About 100 Mbit/s in 16 KiB writes.
                for piece in data.chunks(16 << 10) {
                    s.write_all(piece).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_micros(1300)).await;
                }
            } else {
                s.write_all(&data).await.unwrap();
            }
            s.flush().await.unwrap();
            let (status, body) = tokio::time::timeout(Duration::from_secs(20), response(&mut s))
                .await
                .unwrap_or_else(|_| panic!("{tag}: no answer to upload {k}"));
            // The mark never waited for bytes that were not coming (the
            // backstop would have hidden it behind a pause).
            assert_eq!(crate::lowat::STALLS.load(std::sync::atomic::Ordering::Relaxed), 0, "{tag} {k}");
            assert!(status.contains(" 200 "), "{tag} {k}: {status} {body}");
            assert_eq!(body, data.len().to_string());
            assert!(std::fs::read(dir.join(&name)).unwrap() == data, "{tag} {k}: stored bytes differ");
        }
        let name = format!("{tag}-short.ts");
        s.write_all(format!("PUT /up/{name}/5 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").as_bytes())
            .await
            .unwrap();
        s.flush().await.unwrap();
        let (status, _) = tokio::time::timeout(Duration::from_secs(5), response(&mut s)).await.unwrap();
        assert!(status.contains(" 200 "), "{tag}: {status}");
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), b"hello");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_bodies_arrive_whole_and_the_connection_goes_on_over_tcp_and_tls() {
        let dir = std::env::temp_dir().join(format!("ivr-lowat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (plain, secure, cert) = server(&dir).await;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", plain)).await.unwrap();
        uploads_on(tcp, &dir, "plain").await;
        let dialer = ivr_rpc::net::Dialer::new(None, Some(cert));
        let tls = dialer.connect("localhost", secure, true).await.unwrap();
        uploads_on(tls, &dir, "tls").await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
