//! What the cloud's integration tests share: a cloud on loopback, a raw
//! HTTP/1.1 client, a bare device over IVR RPC.
#![allow(dead_code)]

use ivr_cloud::{serve, Cloud, CloudConfig, SqlStore};
use ivr_edge::{Backoff, ChannelBackend, Edge, EdgeConfig, SimChannel};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TOKEN: &str = "test-admin-token";

/// The edge agent as a device with one simulated channel (0), retrying
/// fast.
pub fn edge(addr: SocketAddr, code: &str, pw: &str) -> (Arc<Edge>, Arc<SimChannel>) {
    let cfg = EdgeConfig::parse(&format!(
        "[cloud]\nurl = \"ws://{addr}/ivc\"\nlogin_code = \"{code}\"\nlogin_passwd = \"{pw}\"\nkeepalive_secs = 1\n\n[[channels]]\nchannel = 0\nsource = \"sim\"\n"
    ))
    .unwrap();
    let ch = Arc::new(SimChannel::new(0));
    let e = Edge::with_backoff(
        cfg,
        vec![ch.clone() as Arc<dyn ChannelBackend>],
        Backoff::new(Duration::from_millis(50), Duration::from_millis(300)),
    );
    (e, ch)
}

/// A bare IVT over ivr-rpc that answers every call with `{}` (for calling
/// the cloud's methods directly, as a device would).
pub async fn raw_ivt(url: String) -> ivr_rpc::conn::RpcHandle {
    struct Nop;
    impl ivr_rpc::conn::Handler for Nop {
        async fn request(&self, _: String, _: Option<Value>) -> Result<Value, ivr_rpc::RpcError> {
            Ok(json!({}))
        }
        async fn event(&self, _: String, _: Option<Value>) {}
    }
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ivr_rpc::conn::spawn(ivr_rpc::ws::WsFrames::new(ws), ivr_rpc::Peer::ivt(), Arc::new(Nop)).0
}

/// A minimal HTTP/1.1 client: one request per connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| ("Authorization", a)).into_iter().collect();
    let (status, _, body) = http_with(addr, method, path, &headers, body).await;
    (status, body)
}

/// One request with any headers; status, response head, body.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or_default();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = resp[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

pub async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let b = body.map(|v| v.to_string());
    let (status, bytes) = http(addr, method, path, Some(TOKEN), b.as_deref().map(str::as_bytes)).await;
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub async fn start_cloud(dir: &std::path::Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (addr, _, server) = start_cloud_with(dir, |c| c).await;
    (addr, server)
}

/// A cloud on loopback with test timings, `tweak`ed; its address, itself
/// and the serving task.
pub async fn start_cloud_with(
    dir: &std::path::Path,
    tweak: impl FnOnce(CloudConfig) -> CloudConfig,
) -> (SocketAddr, Arc<Cloud<SqlStore>>, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let store = Arc::new(SqlStore::open(dir).unwrap());
    let cfg = CloudConfig {
        keepalive: Duration::from_secs(1),
        rpc_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(3),
        ..CloudConfig::new(TOKEN.into(), format!("http://{addr}"), dir.to_path_buf())
    };
    let c = Cloud::new(store, tweak(cfg));
    let c2 = c.clone();
    (addr, c, tokio::spawn(async move { serve(c2, l).await.unwrap() }))
}

/// An open `GET /api/v1/stream` with `auth` (a header line, without its
/// CRLF), returned once the response's head has come: the node answers
/// only after it has subscribed, so every event from then on is on it.
/// Also returns what came with the head.
pub async fn open_stream(addr: SocketAddr, auth: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /api/v1/stream HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("a head in time").unwrap();
        assert!(n > 0, "the stream closed before its head: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
    (s, seen)
}
