//! Uploads to the URLs the cloud hands out (alarm pictures, previews): a
//! minimal HTTP/1.1 POST over TCP for `http://` URLs.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload URL {0:?} is not http://host[:port]/path (https comes with TLS)")]
    Url(String),
    #[error("upload to {url}: {cause}")]
    Io { url: String, cause: std::io::Error },
    #[error("upload to {url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

/// POSTs `body` to `url`; Ok on a 2xx answer.
pub async fn post(url: &str, content_type: &str, body: &[u8]) -> Result<(), UploadError> {
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
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.map_err(io)?;
        s.write_all(body).await.map_err(io)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(io)?;
        let line = String::from_utf8_lossy(resp.split(|&b| b == b'\n').next().unwrap_or_default()).to_string();
        let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(UploadError::Status { url: url.to_owned(), status })
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s")))?
}

/// GETs `url` (at most `max` bytes of body); the body on a 2xx answer.
pub async fn get(url: &str, max: usize) -> Result<Vec<u8>, UploadError> {
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
        let head = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.map_err(io)?;
        let mut resp = Vec::new();
        (&mut s).take((max + 64 * 1024) as u64).read_to_end(&mut resp).await.map_err(io)?;
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io(std::io::Error::other("no HTTP header")))?;
        let head = String::from_utf8_lossy(&resp[..end]).to_string();
        let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if !(200..300).contains(&status) {
            return Err(UploadError::Status { url: url.to_owned(), status });
        }
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            return Err(io(std::io::Error::other("chunked answers are not supported for downloads")));
        }
        let body = resp.split_off(end + 4);
        if body.len() > max {
            return Err(io(std::io::Error::other(format!("larger than {max} bytes"))));
        }
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(300), fut)
        .await
        .map_err(|_| io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 300 s")))?
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
