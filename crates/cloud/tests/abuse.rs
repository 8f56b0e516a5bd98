//! The cloud tried as an attacker and a careless operator would, over real
//! sockets on loopback: each test reproduces one way the cloud broke (issue
//! 15) and asserts it holds now. Bounded in count and time.

mod common;

use common::{api, http, raw_ivt, start_cloud_with, TOKEN};
use ivr_cloud::{ConnLimits, DeviceLimits, Store};
use ivr_testkit::wait_until;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ivr-abuse-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Whether the peer closed `s` within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Idle and slow-header (slowloris) connections are closed at the header
/// deadline, not kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed() {
    let dir = tmp("slow");
    let (addr, c, _srv) = start_cloud_with(&dir, |cfg| ivr_cloud::CloudConfig {
        limits: ConnLimits { header_timeout: Duration::from_secs(1), ..ConnLimits::default() },
        ..cfg
    })
    .await;
    let mut idle = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(addr).await.unwrap());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    wait_until("all 100 are counted", async || c.connections().0 == 100).await;
    let t = Instant::now();
    for s in idle.iter_mut().chain(slow.iter_mut()) {
        // One more header line every 300 ms does not extend the deadline.
        let _ = s.write_all(b"X-Slow: 1\r\n").await;
        assert!(closed_within(s, Duration::from_secs(5)).await, "a connection outlived the header deadline");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    wait_until("the places are freed", async || c.connections().0 == 0).await;
    // A real request still works.
    assert_eq!(api(addr, "GET", "/api/v1/stats", None).await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Past the cap new connections are closed at once (and counted); the last
/// places answer the admin API only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_and_keeps_a_reserve_for_the_api() {
    let dir = tmp("cap");
    let (addr, c, _srv) = start_cloud_with(&dir, |cfg| ivr_cloud::CloudConfig {
        limits: ConnLimits { max_connections: 20, api_reserve: 5, ..ConnLimits::default() },
        ..cfg
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until("15 are open", async || c.connections().0 == 15).await;
    // In the reserve: a device login or an upload is told to come back …
    let (s, body) =
        http(addr, "GET", "/ivc?login_code=a&login_passwd=b&hardware_model=c&firmware_model=d", None, None).await;
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("connection cap"));
    // … the admin API answers.
    let (s, stats) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(s, 200);
    assert_eq!(stats["connections"]["max"], 20);
    assert!(stats["connections"]["refused_for_api_reserve"].as_u64().unwrap() >= 1);
    for _ in 0..5 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until("20 are open", async || c.connections().0 == 20).await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(2)).await, "the 21st was kept");
    drop(held);
    wait_until("the places are freed", async || c.connections().0 == 0).await;
    let (_, stats) = api(addr, "GET", "/api/v1/stats", None).await;
    assert!(stats["connections"]["refused"].as_u64().unwrap() >= 1, "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends headers announcing `len` bytes and no body; the status line, if one
/// comes back within 2 s.
async fn status_before_body(addr: SocketAddr, method: &str, path: &str, len: usize) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut b = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await.ok()?.ok()?;
    String::from_utf8_lossy(&b[..n]).lines().next().map(str::to_owned)
}

/// An unauthenticated body is never read: a bogus upload token, a missing
/// admin token, a bogus segment token are refused on the headers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    let dir = tmp("bodies");
    let (addr, _c, _srv) = start_cloud_with(&dir, |c| c).await;
    let big = (2 << 20) - 1;
    for (m, p, want) in [
        ("POST", "/upload/bogus", "404"),
        ("PUT", "/api/v1/firmware/h/1", "401"),
        ("POST", "/api/v1/devices", "401"),
        ("PUT", "/record/s/1/bogus", "404"),
    ] {
        let line = status_before_body(addr, m, p, big).await;
        assert!(line.as_deref().is_some_and(|l| l.contains(want)), "{m} {p}: {line:?}");
    }
    // JSON bodies have their own cap (1 MiB), said so.
    let (s, body) = http(addr, "POST", "/api/v1/devices", Some(TOKEN), Some(&vec![b' '; (1 << 20) + 10])).await;
    assert_eq!(s, 413, "{}", String::from_utf8_lossy(&body));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn device(addr: SocketAddr, code: &str) -> ivr_rpc::conn::RpcHandle {
    raw_ivt(format!("ws://{addr}/ivc?login_code={code}&login_passwd=12345678&hardware_model=hm&firmware_model=1")).await
}

/// No device stays online after the cloud dies (kill) or stops (clean):
/// the next start marks it offline, a clean stop closes its session, and
/// each says why in an `offline` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_is_left_online_by_a_restart_or_a_stop() {
    let dir = tmp("restart");
    let (addr, c, srv) = start_cloud_with(&dir, |c| c).await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "k1", "login_passwd": "12345678"}))).await;
    let h = device(addr, "k1").await;
    h.call("Keepalive", Some(json!({"state": 1, "channels": [{"channel": 0, "state": 2}]}))).await.unwrap();
    assert!(c.store().device("k1").await.unwrap().unwrap().online);
    // "kill -9": the serving stops, nothing is closed, the store says online.
    srv.abort();
    drop(h);
    let store = c.store().clone();
    drop(c);
    assert!(store.device("k1").await.unwrap().unwrap().online, "as a killed cloud leaves it");
    drop(store);
    let (addr, c, _srv) = start_cloud_with(&dir, |c| c).await;
    assert_eq!(c.reset_sessions().await.unwrap(), 1);
    let d = c.store().device("k1").await.unwrap().unwrap();
    assert!(!d.online && d.channels.iter().all(|ch| ch.state == 0), "{d:?}");
    let (_, ev) = api(addr, "GET", "/api/v1/events?login_code=k1&type=offline", None).await;
    assert!(ev[0]["data"]["reason"].as_str().unwrap().contains("restarted"), "{ev}");

    // A clean stop closes the session and records why.
    let h = device(addr, "k1").await;
    h.call("Keepalive", Some(json!({"state": 1, "channels": [{"channel": 0, "state": 1}]}))).await.unwrap();
    c.shutdown("the cloud stopped (SIGTERM)", Duration::from_secs(3)).await;
    assert_eq!(c.sessions(), 0);
    assert!(!c.store().device("k1").await.unwrap().unwrap().online);
    let (_, ev) = api(addr, "GET", "/api/v1/events?login_code=k1&type=offline", None).await;
    assert_eq!(ev[0]["data"]["reason"], "the cloud stopped (SIGTERM)", "{ev}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Firmware goes to disk and back in a stream with its SHA-256; a replaced
/// image's file is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_is_streamed_hashed_and_replaced_images_deleted() {
    let dir = tmp("fw");
    let (addr, _c, _srv) = start_cloud_with(&dir, |c| c).await;
    let image: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let (s, a) = http(addr, "PUT", "/api/v1/firmware/hm/2.0", Some(TOKEN), Some(&image)).await;
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&a));
    let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
    let want = ring_sha256(&image);
    assert_eq!(a["sha256"], want.as_str());
    let files = || std::fs::read_dir(dir.join("firmware")).unwrap().count();
    assert_eq!(files(), 1);
    // Replaced: one file, the new one.
    let (s, b) = http(addr, "PUT", "/api/v1/firmware/hm/2.0", Some(TOKEN), Some(&image[..1000])).await;
    assert_eq!(s, 201);
    let b: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(files(), 1, "the replaced image's file is gone");
    let url = b["url"].as_str().unwrap();
    let path = url.split_once(&addr.to_string()).unwrap().1;
    let (s, got) = http(addr, "GET", path, None, None).await;
    assert_eq!((s, got.len()), (200, 1000));
    assert_eq!(
        http(addr, "GET", a["url"].as_str().unwrap().split_once(&addr.to_string()).unwrap().1, None, None).await.0,
        404
    );
    // A device learns the hash with the URL.
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "f1", "login_passwd": "12345678"}))).await;
    let r = device(addr, "f1").await.call("GetFirmware", None).await.unwrap();
    assert_eq!((r["sha256"].as_str(), r["size"].as_u64()), (Some(ring_sha256(&image[..1000]).as_str()), Some(1000)));
    let _ = std::fs::remove_dir_all(&dir);
}

fn ring_sha256(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// A WebSocket upgrade request to `path`: the status and the body.
async fn ws_login(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut b = vec![0u8; 4096];
    let n = s.read(&mut b).await.unwrap();
    let text = String::from_utf8_lossy(&b[..n]).to_string();
    let status = text.split(' ').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Guessing passwords is throttled per login_code and per address, with
/// Retry-After; a throttled code refuses even the right password until the
/// window ends; refusals are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_throttled() {
    let dir = tmp("brute");
    let (addr, _c, _srv) = start_cloud_with(&dir, |c| c).await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "b1", "login_passwd": "12345678"}))).await;
    let login = |pw: String| {
        let path = format!("/ivc?login_code=b1&login_passwd={pw}&hardware_model=h&firmware_model=1");
        async move { ws_login(addr, &path).await }
    };
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(login(format!("wrong{i:04}")).await.0);
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429, 429], "{statuses:?}");
    let (s, body) = login("12345678".into()).await;
    assert_eq!(s, 429, "the right password waits out the window too");
    assert!(body.contains("try again in") && body.to_ascii_lowercase().contains("retry-after: "), "{body}");
    // Per address: other codes from here are cut off after 30 failures.
    let mut last = 0;
    for i in 0..40 {
        let path = format!("/ivc?login_code=nobody{i}&login_passwd=x&hardware_model=h&firmware_model=1");
        last = ws_login(addr, &path).await.0;
    }
    assert_eq!(last, 429);
    let (_, stats) = api(addr, "GET", "/api/v1/stats", None).await;
    assert!(stats["logins_throttled"].as_u64().unwrap() >= 3, "{stats}");
    assert!(stats["logins_refused"].as_u64().unwrap() >= 30, "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One device cannot grow the database without bound: alarms and previews
/// are rate-limited per session (refusals counted), channels capped, one
/// Keepalive of 30,000 channels refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_cannot_flood_the_store() {
    let dir = tmp("flood");
    let (addr, c, _srv) = start_cloud_with(&dir, |cfg| ivr_cloud::CloudConfig {
        device_limits: DeviceLimits { alarms_per_sec: 1.0, alarm_burst: 10.0, ..DeviceLimits::default() },
        ..cfg
    })
    .await;
    api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "f1", "login_passwd": "12345678"}))).await;
    let h = device(addr, "f1").await;
    let mut refused = 0;
    for _ in 0..200 {
        let r = h.call("AlarmNotify", Some(json!({"channel": 0, "type": 3, "state": "start", "desc": "x"}))).await;
        if let Err(e) = r {
            assert!(e.to_string().contains("rate limit"), "{e}");
            refused += 1;
        }
    }
    assert!(refused >= 180, "{refused} refused");
    let (_, ev) = api(addr, "GET", "/api/v1/events?login_code=f1&type=alarm&limit=1000", None).await;
    assert!(ev.as_array().unwrap().len() <= 20, "{} alarms stored", ev.as_array().unwrap().len());
    let many: Vec<_> = (0..30_000).map(|i| json!({"channel": i, "state": 1})).collect();
    let e = h.call("Keepalive", Some(json!({"state": 1, "channels": many}))).await.unwrap_err();
    assert!(e.to_string().contains("at most 256"), "{e}");
    assert!(c.store().device("f1").await.unwrap().unwrap().channels.is_empty());
    let (_, stats) = api(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(stats["alarms_refused"].as_u64(), Some(refused));
    assert_eq!(stats["keepalives_refused"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Names: one device's preview is never served for another (`cam.x` vs
/// `cam_x`) nor for a device that does not exist; login codes with `/`,
/// control or bidi characters are refused; a password's length is counted
/// in characters; a 60 KB hardware_model is refused at login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_one_to_one_and_checked() {
    let dir = tmp("names");
    let (addr, _c, _srv) = start_cloud_with(&dir, |c| c).await;
    for code in ["cam.x", "cam_x"] {
        let (s, _) =
            api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": code, "login_passwd": "12345678"}))).await;
        assert_eq!(s, 201);
    }
    let h = device(addr, "cam.x").await;
    let url = h.call("preview_server", None).await.unwrap()["url"].as_str().unwrap().to_owned();
    let path = format!("{}?channel=0", url.split_once(&addr.to_string()).unwrap().1);
    // HTML is not a picture.
    assert_eq!(http(addr, "POST", &path, None, Some(b"<html><script>alert(1)</script>")).await.0, 415);
    let url = h.call("preview_server", None).await.unwrap()["url"].as_str().unwrap().to_owned();
    let path = format!("{}?channel=0", url.split_once(&addr.to_string()).unwrap().1);
    assert_eq!(http(addr, "POST", &path, None, Some(b"\xff\xd8\xff\xe0pic")).await.0, 204);
    assert_eq!(http(addr, "GET", "/api/v1/devices/cam.x/channels/0/preview", Some(TOKEN), None).await.0, 200);
    assert_eq!(http(addr, "GET", "/api/v1/devices/cam_x/channels/0/preview", Some(TOKEN), None).await.0, 404);
    assert_eq!(http(addr, "GET", "/api/v1/devices/ghost/channels/0/preview", Some(TOKEN), None).await.0, 404);
    for bad in ["a/b", "evil\u{202e}gpj", "nul\u{0}x", "cr\rlf"] {
        let (s, e) =
            api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": bad, "login_passwd": "12345678"}))).await;
        assert_eq!(s, 400, "{bad:?}: {e}");
        assert!(e["error"].as_str().unwrap().contains("not allowed"), "{e}");
    }
    let (s, e) = api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": "pw", "login_passwd": "ééé"}))).await;
    assert_eq!(s, 400, "three characters (six bytes) are not eight: {e}");
    let path =
        format!("/ivc?login_code=cam.x&login_passwd=12345678&hardware_model={}&firmware_model=1", "m".repeat(60_000));
    let (s, body) = ws_login(addr, &path).await;
    assert!(s == 400 && body.contains("hardware_model: at most 128 bytes"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Upload URLs expire and die with their device; pictures come back with
/// `nosniff`; the device list is paged with a `Link: rel="next"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_urls_expire_pictures_are_nosniff_and_devices_are_paged() {
    let dir = tmp("misc");
    let (addr, _c, _srv) = start_cloud_with(&dir, |cfg| ivr_cloud::CloudConfig {
        // Long enough that a fresh URL is used in time on a loaded machine.
        device_limits: DeviceLimits { upload_url_ttl: Duration::from_millis(1000), ..DeviceLimits::default() },
        ..cfg
    })
    .await;
    for i in 0..5 {
        let code = format!("p{i}");
        api(addr, "POST", "/api/v1/devices", Some(json!({"login_code": code, "login_passwd": "12345678"}))).await;
    }
    let h = device(addr, "p0").await;
    let upload_path = async || {
        let url = h.call("preview_server", None).await.unwrap()["url"].as_str().unwrap().to_owned();
        url.split_once(&addr.to_string()).unwrap().1.to_owned()
    };
    let stale = upload_path().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(http(addr, "POST", &stale, None, Some(b"\xff\xd8\xff\xe0")).await.0, 404, "expired");
    let fresh = upload_path().await;
    assert_eq!(http(addr, "POST", &fresh, None, Some(b"\xff\xd8\xff\xe0")).await.0, 204);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /api/v1/devices/p0/channels/0/preview HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let head = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let gone = upload_path().await;
    assert_eq!(api(addr, "DELETE", "/api/v1/devices/p0", None).await.0, 204);
    assert_eq!(http(addr, "POST", &gone, None, Some(b"\xff\xd8\xff\xe0")).await.0, 404, "died with its device");

    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/v1/devices?limit=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.contains("link: </api/v1/devices?after=p2&limit=2>; rel=\"next\""), "{text}");
    let (_, page) = api(addr, "GET", "/api/v1/devices?after=p2&limit=2", None).await;
    let codes: Vec<_> = page.as_array().unwrap().iter().map(|d| d["login_code"].as_str().unwrap().to_owned()).collect();
    assert_eq!(codes, ["p3", "p4"]);
    assert_eq!(api(addr, "GET", "/api/v1/devices?limit=0", None).await.0, 400);
    let _ = std::fs::remove_dir_all(&dir);
}
