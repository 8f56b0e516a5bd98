//! HTTP to the URLs the cloud hands out (alarm pictures, previews, firmware)
//! and to its API: a minimal HTTP/1.1 client for `http://` and `https://` URLs.

use ivr_rpc::net::{target, Dialer};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("URL {0:?} is not http(s)://host[:port]/path")]
    Url(String),
    #[error("{url}: {cause}")]
    Io { url: String, cause: std::io::Error },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

/// One request (`Connection: close`) over http or https; the status and
/// at most `max` bytes of body. Chunked answers are refused.
pub async fn request(
    dialer: &Dialer,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    max: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), UploadError> {
    let mut once = Some(body);
    let mut fill = |buf: &mut Vec<u8>| {
        if let Some(b) = once.take() {
            buf.extend_from_slice(b);
        }
        Ok(())
    };
    request_with(dialer, method, url, headers, body.len(), &mut fill, max, timeout).await
}

/// Fills the next piece of a streamed body into the (empty) buffer; nothing
/// added means the body is complete. An `Err` aborts the request.
pub type Fill<'a> = dyn FnMut(&mut Vec<u8>) -> Result<(), String> + Send + 'a;

/// [`request`] with a body of `len` bytes made piece by piece by `fill` (a
/// recording's segment is muxed as it is sent, never held whole twice).
/// A body that does not come to exactly `len` bytes is an error.
#[allow(clippy::too_many_arguments)]
pub async fn request_with(
    dialer: &Dialer,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    len: usize,
    fill: &mut Fill<'_>,
    max: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), UploadError> {
    let t = target(url)
        .ok()
        .filter(|t| matches!(t.scheme, "http" | "https"))
        .ok_or_else(|| UploadError::Url(url.to_owned()))?;
    let (hostport, path) = (t.authority, t.path);
    let io = |cause| UploadError::Io { url: url.to_owned(), cause };
    let fut = async {
        let mut s = dialer.connect(t.host, t.port, t.secure).await.map_err(io)?;
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {len}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        let mut sent = 0usize;
        loop {
            buf.clear();
            fill(&mut buf).map_err(|e| io(std::io::Error::other(e)))?;
            if buf.is_empty() {
                break;
            }
            sent += buf.len();
            if sent > len {
                return Err(io(std::io::Error::other(format!("the body is longer than the {len} bytes announced"))));
            }
            s.write_all(&buf).await.map_err(io)?;
        }
        if sent != len {
            return Err(io(std::io::Error::other(format!("the body is {sent} bytes, {len} announced"))));
        }
        let mut resp = Vec::new();
        match (&mut s).take((max + 64 * 1024) as u64).read_to_end(&mut resp).await {
            Ok(_) => {}
            // A TLS peer that closes without close_notify after a whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
            Err(e) => return Err(io(e)),
        }
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io(std::io::Error::other("no HTTP header")))?;
        let head = String::from_utf8_lossy(&resp[..end]).to_string();
        let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            return Err(io(std::io::Error::other("chunked answers are not supported")));
        }
        let body = resp.split_off(end + 4);
        if body.len() > max {
            return Err(io(std::io::Error::other(format!("larger than {max} bytes"))));
        }
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| io(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}"))))?
}

fn ok(url: &str, (status, body): (u16, Vec<u8>)) -> Result<Vec<u8>, UploadError> {
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(UploadError::Status { url: url.to_owned(), status })
    }
}

/// POSTs `body` to `url`; Ok on a 2xx answer.
pub async fn post(dialer: &Dialer, url: &str, content_type: &str, body: &[u8]) -> Result<(), UploadError> {
    let r = request(dialer, "POST", url, &[("Content-Type", content_type)], body, 64 * 1024, Duration::from_secs(30))
        .await?;
    ok(url, r).map(drop)
}

/// GETs `url` (at most `max` bytes of body); the body on a 2xx answer.
pub async fn get(dialer: &Dialer, url: &str, max: usize) -> Result<Vec<u8>, UploadError> {
    let r = request(dialer, "GET", url, &[], &[], max, Duration::from_secs(300)).await?;
    ok(url, r)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn bad_urls_are_named() {
        let d = super::Dialer::default();
        let e = super::post(&d, "ftp://x/y", "image/jpeg", b"").await.unwrap_err();
        assert!(e.to_string().contains("is not http(s)://"), "{e}");
        let e = super::post(&d, "ws://x/y", "image/jpeg", b"").await.unwrap_err();
        assert!(e.to_string().contains("is not http(s)://"), "{e}");
        assert!(super::post(&d, "http:///y", "image/jpeg", b"").await.is_err());
    }
}
