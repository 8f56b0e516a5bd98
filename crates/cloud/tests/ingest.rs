//! A recording segment's PUT as the cloud's own ingest reads it (ingest.rs):
//! byte for byte into the file however the body is cut, `Expect:
//! 100-continue`, the router's statuses for wrong sizes and used URLs,
//! nothing kept of a body that broke off, and what the ingest does not
//! serve itself (a chunked body, a head cut before its first word) still
//! served by hyper.

mod common;

use common::*;
use ivr_rpc::conn::Handler;
use ivr_testkit::wait_until;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ivr-ingest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A device that says yes to everything and keeps what StartCloudRecord
/// asked.
#[derive(Default)]
struct Recorder(Mutex<Option<Value>>);

impl Handler for Recorder {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, ivr_rpc::RpcError> {
        if method == "StartCloudRecord" {
            *self.0.lock().unwrap() = params;
        }
        Ok(json!({}))
    }
    async fn event(&self, _: String, _: Option<Value>) {}
}

/// What keeps a test's cloud and device alive.
type Alive = (ivr_rpc::conn::RpcHandle, Arc<ivr_cloud::Cloud<ivr_cloud::SqlStore>>, tokio::task::JoinHandle<()>);

/// A cloud, a device `ing` recording channel 0: the cloud's address and the
/// recording's session id.
async fn recording(dir: &std::path::Path) -> (SocketAddr, String, Alive) {
    let (addr, c, srv) = start_cloud_with(dir, |c| c).await;
    let (s, _) =
        api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "ing", "login_passwd": "12345678"}))).await;
    assert_eq!(s, 201);
    let url = format!("ws://{addr}/ivc?login_code=ing&login_passwd=12345678&hardware_model=hm&firmware_model=1");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let dev = Arc::new(Recorder::default());
    let (h, _) = ivr_rpc::conn::spawn(ivr_rpc::ws::WsFrames::new(ws), ivr_rpc::Peer::ivt(), dev.clone());
    h.call("Keepalive", Some(json!({"state": 1, "channels": [{"channel": 0, "state": 1}]}))).await.unwrap();
    let (s, j) = api(addr, "POST", "/api/v1/devices/ing/channels/0/recording", None).await;
    assert_eq!(s, 201, "{j}");
    let p = dev.0.lock().unwrap().clone().expect("StartCloudRecord");
    (addr, p["session_id"].as_str().unwrap().to_owned(), (h, c, srv))
}

/// The callback for segment `seq` of `size` bytes: the path to PUT it to.
async fn announce(addr: SocketAddr, session: &str, seq: u64, size: usize) -> String {
    let body = json!({"session_id": session, "channel": 0, "seq": seq, "size": size, "duration": 2.0,
        "start_ms": 1_764_000_000_000i64 + seq as i64 * 2000});
    let (s, j) = http(addr, "POST", &format!("/record/{session}"), None, Some(body.to_string().as_bytes())).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&j));
    let url: Value = serde_json::from_slice(&j).unwrap();
    let url = url["url"].as_str().unwrap();
    url[url.find("/record/").unwrap()..].to_owned()
}

/// Everything the cloud answers until it closes.
async fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("an answer");
    String::from_utf8_lossy(&out).into_owned()
}

fn data(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 11) as u8).collect()
}

fn stored(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("recordings")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_arrive_byte_for_byte_however_they_are_cut() {
    let dir = tmp("cut");
    let (addr, session, _h) = recording(&dir).await;
    let mut want = Vec::new();

    // 1. Over three blocks, in uneven pieces with pauses, the head in two
    // writes; `Expect: 100-continue` is answered before any body is sent.
    let body = data(3 * (1 << 20) + 12_345, 1);
    let path = announce(addr, &session, 0, body.len()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head =
        format!("PUT {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(&head.as_bytes()[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&head.as_bytes()[20..]).await.unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).await.unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    for (i, piece) in body.chunks(300_007).enumerate() {
        s.write_all(piece).await.unwrap();
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 201"), "{a}");
    want.push(body);

    // 2. Head and the whole body in one write (part of the body comes in
    // with the head).
    let body = data(70_000, 2);
    let path = announce(addr, &session, 1, body.len()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(&body);
    s.write_all(&req).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 201"), "{a}");
    // The URL was good for one PUT.
    s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&req).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 404") && a.contains("unknown or used upload URL"), "{a}");
    want.push(body);

    // 3. A first packet shorter than `PUT /record/`: hyper serves it.
    let body = data(5_000, 3);
    let path = announce(addr, &session, 2, body.len()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PU").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let head = format!("T {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 201"), "{a}");
    want.push(body);

    // 4. A chunked body: handed to hyper with the head already read.
    let body = data(40_000, 4);
    let path = announce(addr, &session, 3, body.len()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .into_bytes();
    for c in body.chunks(16_000) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 201"), "{a}");
    want.push(body);

    // Every one stored whole, and indexed.
    let files = stored(&dir);
    assert_eq!(files.len(), 4, "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
    for (i, w) in want.iter().enumerate() {
        let (name, got) = files.iter().find(|f| f.0.ends_with(&format!("-{i}.ts"))).expect("segment file");
        assert!(got == w, "{name}: {} bytes stored, {} sent", got.len(), w.len());
    }
    let (s, j) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(s, 200);
    assert_eq!(j["recordings"]["stored"], 4, "{j}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_sizes_and_broken_bodies_leave_nothing_behind() {
    let dir = tmp("broken");
    let (addr, session, _h) = recording(&dir).await;

    // Announced 1,000 bytes, the PUT says 999: refused before the body.
    let path = announce(addr, &session, 0, 1000).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n").as_bytes()).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 400") && a.contains("999 bytes, 1000 announced"), "{a}");
    let path = announce(addr, &session, 1, 1000).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n").as_bytes()).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 400") && a.contains("more bytes than the 1000 announced"), "{a}");

    // Half of a 2 MiB body, then the sender goes: no file, no `.part`, no row.
    let body = data(2 << 20, 5);
    let path = announce(addr, &session, 2, body.len()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(&body[..1 << 20]).await.unwrap();
    s.shutdown().await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 400") && a.contains("broke off after 1048576 of its 2097152 bytes"), "{a}");
    wait_until("the .part to go", async || stored(&dir).is_empty()).await;
    let (_, j) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(j["recordings"]["stored"], 0, "{j}");
    let _ = std::fs::remove_dir_all(&dir);
}
