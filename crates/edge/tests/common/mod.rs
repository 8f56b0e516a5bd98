//! A small HTTP server speaking the recording callback protocol of
//! docs/ivr-rpc.md (POST cbk_url → {"url"}, PUT the segment there), shared
//! by the edge's recording tests.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
pub struct Store {
    /// Callbacks announced, by token.
    pub announced: Vec<Value>,
    /// (description, bytes) of every segment PUT.
    pub stored: Vec<(Value, Vec<u8>)>,
    pub fail_next_callbacks: AtomicU32,
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut first = head.split_whitespace();
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((method, path, buf[head_end..head_end + len].to_vec()))
}

/// The server's base URL (`{base}/cbk` is the callback) and what it stored.
pub async fn server() -> (String, Arc<Mutex<Store>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let store = Arc::new(Mutex::new(Store::default()));
    let (st, b) = (store.clone(), base.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let (st, b) = (st.clone(), b.clone());
            tokio::spawn(async move {
                let Some((method, path, body)) = read_request(&mut s).await else { return };
                let (status, answer) = {
                    let mut g = st.lock().unwrap();
                    match (method.as_str(), path.as_str()) {
                        ("POST", "/cbk") => {
                            if g.fail_next_callbacks.load(Ordering::SeqCst) > 0 {
                                g.fail_next_callbacks.fetch_sub(1, Ordering::SeqCst);
                                (503, String::new())
                            } else {
                                g.announced.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                                (200, json!({"url": format!("{b}/up/{}", g.announced.len() - 1)}).to_string())
                            }
                        }
                        ("PUT", p) if p.starts_with("/up/") => {
                            let i: usize = p[4..].parse().unwrap();
                            let desc = g.announced[i].clone();
                            g.stored.push((desc, body));
                            (201, String::new())
                        }
                        _ => (404, String::new()),
                    }
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (base, store)
}

/// Seconds of H.264 at 640 wide in an MPEG-TS, judged by ffprobe.
pub fn ffprobe_seconds(path: &std::path::Path, width: u64) -> (u64, f64) {
    let j = ivr_testkit::ffprobe(path, "stream=codec_name,width,nb_read_frames").unwrap_or_else(|e| panic!("{e}"));
    let s = &j["streams"][0];
    assert_eq!((s["codec_name"].as_str(), s["width"].as_u64()), (Some("h264"), Some(width)), "{j}");
    let frames: u64 = s["nb_read_frames"].as_str().unwrap().parse().unwrap();
    (frames, frames as f64 / 25.0)
}
