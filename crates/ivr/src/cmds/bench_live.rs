//! `ivr bench live`: the cloud's live view, measured. `ivr cloud` runs as
//! its own process with its RTMP ingest; this process is the device (an
//! IVR RPC client that answers RTMPPublish by publishing a 4 Mbit/s H.264
//! stream paced at 25 fps over RTMP, noting when each frame left) and the
//! viewers:
//!
//! - time from `POST …/live` to the first fMP4 fragment at a viewer, with
//!   the device not yet publishing (cold) and already publishing (warm);
//! - glass-to-glass latency on the `ws` path: a frame leaves the device →
//!   its fragment arrives at a WebSocket viewer (matched by decode time);
//! - fan-out: N viewers of the `mp4` URL at once, the cloud's CPU per
//!   Gbit/s served, and whether every viewer kept up (received ≥ 90 % of
//!   the stream's rate).

use super::bench_ivc::{cpu, free_port, rss};
use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use futures_util::StreamExt;
use ivr_media::{rtmp::Publisher, Codec, Frame};
use ivr_rpc::conn::Handler;
use ivr_rpc::RpcError;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

#[derive(ClapArgs)]
pub struct LiveBench {
    /// Tries for each first-fragment figure (cold and warm).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    tries: u32,
    /// Viewer counts for the fan-out, comma-separated.
    #[arg(long, default_value = "100,500,1000", value_delimiter = ',')]
    viewers: Vec<u32>,
    /// Seconds each fan-out step is measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The stream's bitrate, bit/s.
    #[arg(long, default_value_t = 4_000_000)]
    bitrate: u64,
    /// The nginx binary (with libnginx-mod-rtmp) measured side by side.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
}

/// (decode time, when it left, keyframe) of every frame published.
type Sent = Arc<Mutex<Vec<(u64, Instant, bool)>>>;

/// The device: answers RTMPPublish by publishing the padded clip.
struct Device {
    bitrate: u64,
    sent: Sent,
    publishing: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Handler for Device {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        match method.as_str() {
            "RTMPPublish" => {
                let url = params.as_ref().and_then(|p| p["url"].as_str()).unwrap_or_default().to_owned();
                let mut p = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
                if p.as_ref().is_none_or(|h| h.is_finished()) {
                    *p = Some(tokio::spawn(publish(url, self.bitrate, self.sent.clone())));
                }
                Ok(json!({}))
            }
            "RTMPStopPublish" => {
                if let Some(h) = self.publishing.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    h.abort();
                }
                Ok(json!({}))
            }
            _ => Ok(json!({})),
        }
    }
    async fn event(&self, _: String, _: Option<Value>) {}
}

/// N viewers reading for `seconds` after a 3 s warm-up; the bytes each got
/// in the window, and the window.
async fn fan_out<F, Fut>(n: u32, seconds: u64, pid: u32, open: F) -> (Vec<u64>, Duration, Duration)
where
    F: Fn(Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let counts: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let tasks: Vec<_> = counts.iter().map(|c| tokio::spawn(open(c.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snap = |cs: &[Arc<AtomicU64>]| cs.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<u64>>();
    let (c0, r0, t0) = (cpu(pid), snap(&counts), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, r1, el) = (cpu(pid), snap(&counts), t0.elapsed());
    for t in &tasks {
        t.abort();
    }
    (r0.iter().zip(&r1).map(|(a, b)| b - a).collect(), c1 - c0, el)
}

/// A fan-out step as the report shows it: Gbit/s, CPU %, CPU % per
/// Gbit/s, viewers below 90 % of the stream's rate, the server's RSS.
fn step(server: &str, n: u32, got: &[u64], cpu_t: Duration, el: Duration, bitrate: u64, pid: u32) -> Value {
    let want = bitrate as f64 / 8.0 * el.as_secs_f64();
    let behind = got.iter().filter(|g| (**g as f64) < 0.9 * want).count();
    let gbit = got.iter().sum::<u64>() as f64 * 8.0 / el.as_secs_f64() / 1e9;
    let cpu_pct = cpu_t.as_secs_f64() / el.as_secs_f64() * 100.0;
    json!({
        "server": server, "viewers": n, "gbit_s": gbit, "cpu_pct": cpu_pct,
        "cpu_pct_per_gbit_s": if gbit > 0.0 { cpu_pct / gbit } else { f64::NAN },
        "fell_behind": behind, "rss_mib": rss(pid).unwrap_or(0) as f64 / (1 << 20) as f64,
    })
}

async fn publish(url: String, bitrate: u64, sent: Sent) {
    let clip = ivr_fixtures_clip();
    let frames = clip.padded(bitrate);
    let Ok(mut p) = Publisher::connect(&url, 25).await else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start at a keyframe; the timeline runs on across the clip's loops.
    for i in 0u64.. {
        tick.tick().await;
        let u = &frames[(i % frames.len() as u64) as usize];
        let dts = i * 3600;
        let f = Frame { codec: Codec::H264, keyframe: u.keyframe, pts: dts, dts, data: u.data.clone() };
        sent.lock().unwrap_or_else(|e| e.into_inner()).push((dts, Instant::now(), u.keyframe));
        if p.send(&f).await.is_err() {
            return;
        }
    }
}

fn ivr_fixtures_clip() -> &'static ivr_sim::clips::Clip {
    ivr_sim::clips::clip(ivr_sim::clips::ClipCodec::H264, true)
}

/// An API call on a fresh connection; the answer's status and JSON body.
pub(super) async fn http(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let (s, b) = super::bench_edge::api(addr, token, method, path, body).await?;
    Ok((s, serde_json::from_str(&b).unwrap_or(Value::Null)))
}

/// Opens a viewer URL (`http://host/path`) and returns the connection once
/// the headers are read.
async fn open_mp4(url: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let rest = url.strip_prefix("http://").context("viewer URL")?;
    let (addr, path) = rest.split_once('/').context("viewer URL")?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    Ok(s)
}

/// Milliseconds from `POST …/live` to the first fragment at a new mp4 viewer.
async fn time_to_fragment(addr: &str, token: &str, live_path: &str) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let (s, j) = http(addr, token, "POST", live_path, &json!({})).await?;
    if s != 200 {
        bail!("POST …/live: HTTP {s}: {j}");
    }
    let mut v = open_mp4(j["urls"]["mp4"].as_str().unwrap_or_default()).await?;
    first_fragment(&mut v).await?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Reads until the first `moof` (a fragment) arrives.
async fn first_fragment(s: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await??;
        if n == 0 {
            bail!("the viewer connection closed before a fragment");
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"moof") {
            return Ok(());
        }
        if seen.len() > 4 << 20 {
            seen.drain(..seen.len() - 8);
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `tfdt`'s baseMediaDecodeTime in a fragment.
fn tfdt(b: &[u8]) -> Option<u64> {
    let i = b.windows(4).position(|w| w == b"tfdt")?;
    let v = *b.get(i + 4)?;
    let t = b.get(i + 8..)?;
    Some(if v == 1 {
        u64::from_be_bytes(t.get(..8)?.try_into().ok()?)
    } else {
        u32::from_be_bytes(t.get(..4)?.try_into().ok()?) as u64
    })
}

pub async fn run(b: LiveBench) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("ivr-bench-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let token = "bench-live-admin-token-0123";
    let mut cloud = tokio::process::Command::new(&exe)
        .args(["cloud", "--listen", &addr, "--data"])
        .arg(dir.join("data"))
        .args(["--keepalive-secs", "5", "--rtmp-listen", "127.0.0.1:0", "--live-grace-secs", "1"])
        .env("IVR_ADMIN_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting ivr cloud")?;
    let pid = cloud.id().context("cloud pid")?;
    let mut lines = tokio::io::BufReader::new(cloud.stdout.take().context("cloud stdout")?).lines();
    while let Some(l) = lines.next_line().await? {
        if l.starts_with("live view:") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (s, _) = http(
        &addr,
        token,
        "POST",
        "/api/v1/devices",
        &json!({"login_code": "bench-cam", "login_passwd": "bench-cam-pw"}),
    )
    .await?;
    if s != 201 {
        bail!("provisioning the device: HTTP {s}");
    }
    // The device.
    let sent: Sent = Arc::default();
    let dev = Arc::new(Device { bitrate: b.bitrate, sent: sent.clone(), publishing: Mutex::new(None) });
    let url = ivr_rpc::ws::login_url(&format!("ws://{addr}/ivc"), "bench-cam", "bench-cam-pw", "bench", "1");
    let ws = ivr_rpc::ws::dial(&url, &ivr_rpc::net::Dialer::default()).await.context("the device's login")?;
    let (h, _run) = ivr_rpc::conn::spawn(ws, ivr_rpc::Peer::ivt(), dev.clone());
    let keepalive = json!({"state": 1, "channels": [{"channel": 0, "state": 1}]});
    h.call("Keepalive", Some(keepalive.clone())).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let kh = h.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if kh.call("Keepalive", Some(keepalive.clone())).await.is_err() {
                return;
            }
        }
    });
    let live_path = "/api/v1/devices/bench-cam/channels/0/live";
    let say = |s: &str| {
        if !b.json {
            eprintln!("{s}");
        }
    };
    let stopped = || async {
        for _ in 0..100 {
            let (_, st) = http(&addr, token, "GET", "/api/v1/stats", &json!(null)).await.unwrap_or((0, Value::Null));
            if st["live"]["channels"].as_u64() == Some(0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };

    // 1. First fragment, cold.
    say("first fragment, device not publishing…");
    let mut cold = Vec::new();
    for _ in 0..b.tries {
        if !stopped().await {
            bail!("the live stream did not stop between tries");
        }
        cold.push(time_to_fragment(&addr, token, live_path).await?);
    }
    // 2. Warm: one viewer keeps the stream up.
    say("first fragment, device publishing…");
    let (_, j) = http(&addr, token, "POST", live_path, &json!({})).await?;
    let keep_url = j["urls"]["mp4"].as_str().unwrap_or_default().to_owned();
    let ws_url = j["urls"]["ws"].as_str().unwrap_or_default().to_owned();
    let mut keep = open_mp4(&keep_url).await?;
    let keeper = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(keep.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let mut warm = Vec::new();
    for _ in 0..b.tries {
        warm.push(time_to_fragment(&addr, token, live_path).await?);
    }
    // 3. Glass to glass on the ws path.
    say("latency on the ws path…");
    let (mut wsv, _) = tokio_tungstenite::connect_async(&ws_url).await.context("ws viewer")?;
    let start = Instant::now();
    let mut k0: Option<u64> = None;
    let mut lat = Vec::new();
    while start.elapsed() < Duration::from_secs(12) {
        let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), wsv.next()).await? else { break };
        let now = Instant::now();
        let tokio_tungstenite::tungstenite::Message::Binary(data) = m else { continue };
        let Some(t) = tfdt(&data) else { continue };
        let sent = sent.lock().unwrap_or_else(|e| e.into_inner());
        // The viewer starts at the cached keyframe (the latest one sent);
        // fragment times count from wherever the channel's muxer started.
        let base = *k0.get_or_insert_with(|| sent.iter().rev().find(|x| x.2).map_or(0, |x| x.0).wrapping_sub(t));
        if start.elapsed() < Duration::from_secs(3) {
            continue; // the cached GOP arrives at once, by design
        }
        if let Some((_, at, _)) = sent.iter().rev().find(|x| x.0 == base.wrapping_add(t)) {
            lat.push(now.duration_since(*at).as_secs_f64() * 1000.0);
        }
    }
    drop(wsv);
    // 4. Fan-out: the cloud's mp4 URL, then nginx-rtmp's players.
    let mut steps = Vec::new();
    for &n in &b.viewers {
        say(&format!("{n} viewers of the cloud…"));
        let url = keep_url.clone();
        let (got, cpu_t, el) = fan_out(n, b.seconds, pid, |c| {
            let url = url.clone();
            async move {
                let Ok(mut s) = open_mp4(&url).await else { return };
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(Ok(k)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                    if k == 0 {
                        break;
                    }
                    c.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
        })
        .await;
        steps.push(step("ivr cloud (fMP4 over HTTP)", n, &got, cpu_t, el, b.bitrate, pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let nginx = nginx_side(&b, &dir, &mut steps, &say).await;
    keeper.abort();
    let out = json!({
        "bitrate": b.bitrate,
        "first_fragment_cold_ms": {"p50": pct(&mut cold, 0.5), "p99": pct(&mut cold, 0.99)},
        "first_fragment_warm_ms": {"p50": pct(&mut warm, 0.5), "p99": pct(&mut warm, 0.99)},
        "ws_latency_ms": {"p50": pct(&mut lat.clone(), 0.5), "p99": pct(&mut lat, 0.99), "frames": lat.len()},
        "fan_out": steps,
        "nginx_error": nginx.err().map(|e| format!("{e:#}")),
    });
    let _ = cloud.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    if b.json {
        println!("{out}");
        return Ok(());
    }
    println!("live view, one {:.1} Mbit/s H.264 stream (cloud as its own process)", b.bitrate as f64 / 1e6);
    println!(
        "first fragment after POST …/live: cold p50 {:.0} ms, p99 {:.0} ms; warm p50 {:.1} ms, p99 {:.1} ms ({} tries each)",
        out["first_fragment_cold_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        out["first_fragment_cold_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        out["first_fragment_warm_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        out["first_fragment_warm_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        b.tries
    );
    println!(
        "ws glass-to-glass (frame leaves the device → at the viewer): p50 {:.1} ms, p99 {:.1} ms over {} frames",
        out["ws_latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        out["ws_latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        out["ws_latency_ms"]["frames"]
    );
    for s in out["fan_out"].as_array().into_iter().flatten() {
        println!(
            "{:>5} viewers, {}: {:.2} Gbit/s, {:.0} % of a core ({:.0} % per Gbit/s), RSS {:.0} MiB, below 90 % of the stream's rate: {}",
            s["viewers"],
            s["server"].as_str().unwrap_or_default(),
            s["gbit_s"].as_f64().unwrap_or(0.0),
            s["cpu_pct"].as_f64().unwrap_or(0.0),
            s["cpu_pct_per_gbit_s"].as_f64().unwrap_or(0.0),
            s["rss_mib"].as_f64().unwrap_or(0.0),
            s["fell_behind"]
        );
    }
    if let Some(e) = out["nginx_error"].as_str() {
        println!("nginx-rtmp side not measured: {e}");
    }
    Ok(())
}

/// nginx with the RTMP module (one worker, as Debian runs it), the same
/// stream published to it, and the same numbers of RTMP players.
async fn nginx_side(
    b: &LiveBench,
    dir: &std::path::Path,
    steps: &mut Vec<Value>,
    say: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let port = free_port()?;
    let ng = dir.join("nginx");
    std::fs::create_dir_all(&ng)?;
    let conf =
        NGINX_CONF.replace("@PORT@", &port.to_string()).replace("worker_connections 64", "worker_connections 8192");
    std::fs::write(ng.join("nginx.conf"), conf)?;
    let mut nginx = tokio::process::Command::new(&b.nginx)
        .arg("-p")
        .arg(&ng)
        .arg("-c")
        .arg(ng.join("nginx.conf"))
        .arg("-e")
        .arg(ng.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (Debian: apt install nginx libnginx-mod-rtmp)", b.nginx))?;
    let pid = nginx.id().context("nginx pid")?;
    let url = format!("rtmp://127.0.0.1:{port}/live/bench");
    let mut up = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        bail!("nginx did not listen on {port}");
    }
    let publisher = tokio::spawn(publish(url.clone(), b.bitrate, Arc::default()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &n in &b.viewers {
        say(&format!("{n} RTMP players of nginx-rtmp…"));
        let u = url.clone();
        let (got, cpu_t, el) = fan_out(n, b.seconds, pid, |c| {
            let u = u.clone();
            async move {
                let Ok(mut p) = ivr_media::rtmp::Player::connect(&u).await else { return };
                while let Ok((_, _, body)) = p.next().await {
                    c.fetch_add(body.len() as u64, Ordering::Relaxed);
                }
            }
        })
        .await;
        steps.push(step("nginx-rtmp (RTMP)", n, &got, cpu_t, el, b.bitrate, pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    publisher.abort();
    let _ = nginx.kill().await;
    Ok(())
}

const NGINX_CONF: &str = include_str!("../../../../tests/interop/nginx-rtmp.conf");
