//! HTTP to the URLs the cloud hands out (alarm pictures, previews, firmware)
//! and to its API: a minimal HTTP/1.1 client over TCP for `http://` URLs.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("URL {0:?} is not http://host[:port]/path (https comes with TLS)")]
    Url(String),
    #[error("{url}: {cause}")]
    Io { url: String, cause: std::io::Error },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

/// One request (`Connection: close`); the status and at most `max` bytes of
/// body. Chunked answers are refused.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    max: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), UploadError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| UploadError::Url(url.to_owned()))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(UploadError::Url(url.to_owned()));
    }
    let addr = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:80") };
    let io = |cause| UploadError::Io { url: url.to_owned(), cause };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.map_err(io)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.map_err(io)?;
        s.write_all(body).await.map_err(io)?;
        let mut resp = Vec::new();
        (&mut s).take((max + 64 * 1024) as u64).read_to_end(&mut resp).await.map_err(io)?;
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
pub async fn post(url: &str, content_type: &str, body: &[u8]) -> Result<(), UploadError> {
    let r = request("POST", url, &[("Content-Type", content_type)], body, 64 * 1024, Duration::from_secs(30)).await?;
    ok(url, r).map(drop)
}

/// GETs `url` (at most `max` bytes of body); the body on a 2xx answer.
pub async fn get(url: &str, max: usize) -> Result<Vec<u8>, UploadError> {
    let r = request("GET", url, &[], &[], max, Duration::from_secs(300)).await?;
    ok(url, r)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn bad_urls_are_named() {
        let e = super::post("https://x/y", "image/jpeg", b"").await.unwrap_err();
        assert!(e.to_string().contains("https comes with TLS"), "{e}");
        assert!(super::post("http:///y", "image/jpeg", b"").await.is_err());
    }
}
