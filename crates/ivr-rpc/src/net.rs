//! Connections out (ws/wss, http/https) and TLS for both ends: rustls with
//! the ring provider, certificates and keys from PEM files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types};

/// What is wrong with a TLS setting, and which file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("TLS: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<pki_types::CertificateDer<'static>>, TlsError> {
    use pki_types::pem::PemObject;
    let bad = |why: String| TlsError::File { path: path.to_owned(), why };
    let certs: Vec<_> = pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The server side: a certificate chain and its private key, both PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use pki_types::pem::PemObject;
    let chain = certs(cert)?;
    let key = pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::File { path: key.to_owned(), why: format!("no usable private key: {e}") })?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::File { path: cert.to_owned(), why: format!("certificate and key: {e}") })?;
    Ok(Arc::new(cfg))
}

/// The client side: trust the certificates in `ca_file` (PEM) if given,
/// else the system's roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::File { path: path.to_owned(), why: format!("not a usable CA: {e}") })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (ok, _) = roots.add_parsable_certificates(found.certs);
            if ok == 0 {
                return Err(TlsError::Config(format!(
                    "no trusted root certificates on this system ({} errors); give a CA file",
                    found.errors.len()
                )));
            }
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A connection out: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to reach the cloud: which local address to dial from, whom to
/// trust for TLS. Cheap to clone; TLS roots load on first use.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    pub bind: Option<IpAddr>,
    /// Trust only the certificates in this PEM file (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    tls: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

impl Dialer {
    pub fn new(bind: Option<IpAddr>, ca_file: Option<PathBuf>) -> Self {
        Dialer { bind, ca_file, tls: Arc::default() }
    }

    /// The TLS client configuration (loaded once; the system's roots are
    /// shared by every dialer of the process).
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let c = match &self.ca_file {
            Some(p) => client_config(Some(p))?,
            None => {
                static SYSTEM: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
                SYSTEM
                    .get_or_init(|| client_config(None).map_err(|e| e.to_string()))
                    .clone()
                    .map_err(TlsError::Config)?
            }
        };
        Ok(self.tls.get_or_init(|| c).clone())
    }

    /// Connects to `host:port`, with TLS (SNI and certificate checked for
    /// `host`) when `secure`.
    pub async fn connect(&self, host: &str, port: u16, secure: bool) -> std::io::Result<Stream> {
        let tcp = self.tcp(host, port).await?;
        let _ = tcp.set_nodelay(true);
        if !secure {
            return Ok(Stream::Plain(tcp));
        }
        let cfg = self.tls().map_err(std::io::Error::other)?;
        let name = pki_types::ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host:?}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    async fn tcp(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Some(ip) = self.bind else { return TcpStream::connect((host, port)).await };
        let mut last = None;
        for target in tokio::net::lookup_host((host, port)).await? {
            if target.is_ipv4() != ip.is_ipv4() {
                continue;
            }
            let sock = if ip.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
            sock.bind(std::net::SocketAddr::new(ip, 0))?;
            match sock.connect(target).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address of the family of {ip}"))
        }))
    }
}

/// A URL split for dialling: scheme, host, port, and the path with query.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// `ws`, `wss`, `http` or `https`.
    pub scheme: &'a str,
    /// `host[:port]` as written (the HTTP Host header).
    pub authority: &'a str,
    pub secure: bool,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
}

/// Why a URL cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A control character or space: in a request line or Host header it
    /// would let whoever wrote the URL add headers or requests of their own.
    #[error("the URL has a control character or space ({0:?}); refused")]
    Unsafe(char),
    #[error("no scheme")]
    NoScheme,
    #[error("scheme {0:?} is not ws, wss, http or https")]
    Scheme(String),
    #[error("unclosed [ in the host")]
    UnclosedBracket,
    #[error("port {0:?} is not a number")]
    Port(String),
    #[error("no host")]
    NoHost,
}

/// Splits `ws://`, `wss://`, `http://` or `https://` URLs.
pub fn target(url: &str) -> Result<Target<'_>, UrlError> {
    if let Some(c) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlError::Unsafe(c));
    }
    let (scheme, rest) = url.split_once("://").ok_or(UrlError::NoScheme)?;
    let (secure, default_port) = match scheme {
        "ws" | "http" => (false, 80),
        "wss" | "https" => (true, 443),
        other => return Err(UrlError::Scheme(other.to_owned())),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let port = |p: &str| p.parse().map_err(|_| UrlError::Port(p.to_owned()));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(UrlError::UnclosedBracket)?;
        match after.strip_prefix(':') {
            Some(p) => (h, port(p)?),
            None => (h, default_port),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, port(p)?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    Ok(Target { scheme, authority, secure, host, port, path: if path.is_empty() { "/" } else { path } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = target("wss://cloud.example:8443/ivc?a=b").unwrap();
        assert_eq!((t.scheme, t.authority), ("wss", "cloud.example:8443"));
        assert_eq!((t.secure, t.host, t.port, t.path), (true, "cloud.example", 8443, "/ivc?a=b"));
        let t = target("http://h").unwrap();
        assert_eq!((t.secure, t.host, t.port, t.path), (false, "h", 80, "/"));
        let t = target("https://[::1]/x").unwrap();
        assert_eq!((t.secure, t.host, t.port, t.path, t.authority), (true, "::1", 443, "/x", "[::1]"));
        assert_eq!(target("ftp://h/").unwrap_err().to_string(), "scheme \"ftp\" is not ws, wss, http or https");
        assert_eq!(target("ws://h:port/").unwrap_err(), UrlError::Port("port".into()));
        assert_eq!(target("ws:///ivc").unwrap_err(), UrlError::NoHost);
        assert_eq!(target("h:80").unwrap_err(), UrlError::NoScheme);
        for bad in ["http://h/x\r\nX-Evil: 1", "http://h/a b", "http://h\n/", "http://h/\u{0}"] {
            assert!(target(bad).unwrap_err().to_string().contains("control character or space"), "{bad:?}");
        }
    }

    #[test]
    fn pem_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("ivr-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM certificate"), "{e}");
        let e = server_config(&dir.join("missing.pem"), &empty).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
