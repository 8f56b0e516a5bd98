//! `ivr bench soak`: the cloud under a steady load while things break.
//!
//! `ivr cloud` runs as its own process; this one holds N simulated devices
//! (IVR RPC over WebSocket: Keepalives, alarms with pictures, previews,
//! answering the cloud's calls) and an API load (stats, device pages,
//! events, RPC to devices). Meanwhile the cloud is killed with SIGKILL and
//! restarted on the same port and data, and groups of devices have their
//! connections cut. At the end, with the load and the chaos stopped:
//!
//! - every device that is connected is `online` in the store and every
//!   device that was stopped for good is `offline` (none wrongly either
//!   way), checked after the offline deadline;
//! - every alarm the cloud acknowledged (AlarmNotify answered) is in the
//!   event store, across the kills;
//! - the cloud's memory, sampled every second, is reported per phase: flat
//!   means the last phase ends where the first one did.
//!
//! The command fails (exit 1) when a check fails, so the test command runs
//! a short one.

use super::bench_ivc::{free_port, rss, start_cloud_at, Cloud, Http};
use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use ivr_rpc::conn::{Handler, RpcHandle};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(ClapArgs)]
pub struct SoakBench {
    /// Simulated devices (this process holds one connection each).
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Seconds of load and chaos.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Times the cloud is killed (SIGKILL) and restarted, spread over the run.
    #[arg(long, default_value_t = 2)]
    kills: u32,
    /// Times a group of devices has its connections cut, spread over the run.
    #[arg(long, default_value_t = 4)]
    cuts: u32,
    /// Keepalive interval of the devices and the cloud (offline after three missed).
    #[arg(long, default_value_t = 5)]
    keepalive_secs: u64,
    /// Each device raises an alarm (with a picture) about this often.
    #[arg(long, default_value_t = 10)]
    alarm_every_secs: u64,
    /// Each device uploads a preview about this often.
    #[arg(long, default_value_t = 20)]
    preview_every_secs: u64,
    /// API requests in flight at once.
    #[arg(long, default_value_t = 4)]
    api_concurrency: u32,
    /// API requests per second, all connections together.
    #[arg(long, default_value_t = 200)]
    api_rate: u32,
    /// Devices that go silent for good before the end, their connections
    /// left open (the cloud must find them out and end them offline).
    #[arg(long, default_value_t = 10)]
    stop_devices: u32,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
}

/// What the devices did, shared with the checks.
#[derive(Default)]
struct Tally {
    logins: AtomicU64,
    login_failures: AtomicU64,
    keepalives: AtomicU64,
    alarms_sent: AtomicU64,
    /// Alarm descriptions the cloud acknowledged, per device.
    acked: Mutex<HashMap<u32, Vec<String>>>,
    pictures: AtomicU64,
    previews: AtomicU64,
    calls_answered: AtomicU64,
}

/// A device answering every cloud call with `{}` (the soak is about the
/// cloud, not the edge).
struct Answer(Arc<Tally>);

impl Handler for Answer {
    async fn request(&self, _: String, _: Option<Value>) -> Result<Value, ivr_rpc::RpcError> {
        self.0.calls_answered.fetch_add(1, Ordering::Relaxed);
        Ok(json!({}))
    }
    async fn event(&self, _: String, _: Option<Value>) {}
}

/// One device: connect, keep alive, raise alarms and previews, reconnect
/// after a cut or a cloud restart, until `stop`.
struct Device {
    i: u32,
    url: String,
    api: String,
    tally: Arc<Tally>,
    keepalive: Duration,
    alarm_every: Duration,
    preview_every: Duration,
    /// Set to cut this device's connection once (it reconnects).
    cut: Arc<AtomicBool>,
    /// Set to stop this device for good.
    stop: Arc<AtomicBool>,
    /// Set when the load ends: Keepalives only from then on.
    quiet: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
}

const PICTURE: &[u8] = b"\xff\xd8\xff\xe0soak picture\xff\xd9";

impl Device {
    async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            match self.session(&mut n).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(_) => {
                    // Spread the reconnects (full jitter), as devices do.
                    let j = Duration::from_millis(rand_ms(backoff.as_millis() as u64));
                    tokio::time::sleep(j).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn session(&self, n: &mut u64) -> anyhow::Result<()> {
        // The edge's small buffers: 10,000 devices in one process.
        let connect = tokio_tungstenite::connect_async_with_config(&self.url, Some(ivr_rpc::ws::ws_config()), true);
        let (ws, _) =
            tokio::time::timeout(Duration::from_secs(10), connect).await.context("login timed out")?.map_err(|e| {
                self.tally.login_failures.fetch_add(1, Ordering::Relaxed);
                anyhow::anyhow!("login: {e}")
            })?;
        self.tally.logins.fetch_add(1, Ordering::Relaxed);
        let (h, run) = ivr_rpc::conn::spawn(
            ivr_rpc::ws::WsFrames::new(ws),
            ivr_rpc::Peer::ivt(),
            Arc::new(Answer(self.tally.clone())),
        );
        self.connected.store(true, Ordering::Relaxed);
        let r = self.serve(&h, n).await;
        self.connected.store(false, Ordering::Relaxed);
        h.close().await;
        run.abort();
        r
    }

    async fn serve(&self, h: &RpcHandle, n: &mut u64) -> anyhow::Result<()> {
        let start = Instant::now();
        // Phases spread over the fleet so not every device acts at once.
        let offset = u64::from(self.i) * 997;
        let spread = |every: Duration| Duration::from_millis(offset % (every.as_millis() as u64).max(1));
        let mut next_alarm = start + spread(self.alarm_every);
        let mut next_preview = start + spread(self.preview_every);
        let mut next_keepalive = start;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                // Stopped for good: silent, not closed (a device that lost
                // power or network). The cloud must notice by itself.
                while !h.is_closed() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return Ok(());
            }
            if self.cut.swap(false, Ordering::Relaxed) {
                bail!("cut");
            }
            if h.is_closed() {
                bail!("closed by the cloud");
            }
            let now = Instant::now();
            if now >= next_keepalive {
                let ka = json!({"state": 1, "channels": [{"channel": 0, "state": 1}]});
                h.call("Keepalive", Some(ka)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                self.tally.keepalives.fetch_add(1, Ordering::Relaxed);
                next_keepalive = now + self.keepalive;
            }
            let quiet = self.quiet.load(Ordering::Relaxed);
            if now >= next_alarm && !quiet {
                *n += 1;
                let desc = format!("soak {} #{n}", self.i);
                let a = json!({"channel": 0, "type": 3, "state": "start", "desc": desc});
                self.tally.alarms_sent.fetch_add(1, Ordering::Relaxed);
                let r = h.call("AlarmNotify", Some(a)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                self.tally.acked.lock().expect("tally lock").entry(self.i).or_default().push(desc);
                if let Some(url) = r["pic_upload_url"].as_str() {
                    if self.post(url, "").await {
                        self.tally.pictures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next_alarm = now + self.alarm_every;
            }
            if now >= next_preview && !quiet {
                let r = h.call("preview_server", None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(url) = r["url"].as_str() {
                    if self.post(url, "?channel=0").await {
                        self.tally.previews.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next_preview = now + self.preview_every;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POSTs the picture to an upload URL (rebased on the cloud's address).
    async fn post(&self, url: &str, query: &str) -> bool {
        let path = url.split_once("/upload/").map(|(_, t)| format!("/upload/{t}{query}")).unwrap_or_default();
        match Http::connect(&self.api, "").await {
            Ok(mut h) => matches!(h.call("POST", &path, PICTURE).await, Ok((204, _))),
            Err(_) => false,
        }
    }
}

/// A pseudo-random number below `max` (jitter; not security).
fn rand_ms(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() % max.max(1)
}

/// API load until `stop`: stats, a page of devices, a device's events, an
/// RPC to a device. Counts answers by status.
async fn api_load(
    addr: String,
    token: String,
    devices: u32,
    every: Duration,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) {
    let mut k = 0u32;
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut h) = Http::connect(&addr, &token).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            k = k.wrapping_add(1);
            let d = k % devices.max(1);
            let (m, p, b): (&str, String, &[u8]) = match k % 4 {
                0 => ("GET", "/api/v1/stats".into(), b""),
                1 => ("GET", format!("/api/v1/devices?limit=100&after=soak-{d}"), b""),
                2 => ("GET", format!("/api/v1/events?login_code=soak-{d}&limit=20"), b""),
                _ => ("POST", format!("/api/v1/devices/soak-{d}/rpc/GetRTMPPublishConfig"), b""),
            };
            match h.call(m, &p, b).await {
                // 409/502/504: the device is between sessions; an answer all the same.
                Ok((200 | 409 | 502 | 504, _)) => ok.fetch_add(1, Ordering::Relaxed),
                Ok((status, body)) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        tracing::warn!(%p, status, body = %String::from_utf8_lossy(&body), "soak: API error");
                    }
                    0
                }
                Err(_) => break, // the cloud went away: reconnect
            };
        }
    }
}

/// One RSS sample.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    phase: usize,
    rss: u64,
    /// Devices connected at that moment.
    connected: usize,
}

pub async fn run(b: SoakBench) -> anyhow::Result<()> {
    super::raise_fd_limit();
    anyhow::ensure!(b.devices > 0, "--devices: at least 1");
    anyhow::ensure!(b.stop_devices < b.devices, "--stop-devices must be under --devices");
    let exe = std::env::current_exe().context("finding the ivr binary")?;
    let dir: PathBuf = std::env::temp_dir().join(format!("ivr-bench-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let say = |s: String| {
        if !b.json {
            eprintln!("{s}");
        }
    };
    let addr = format!("127.0.0.1:{}", free_port()?);
    let ka = b.keepalive_secs.max(1);
    let mut cloud: Cloud = start_cloud_at(&exe, &dir, &addr, ka, "m=64,t=1,p=1").await?;
    let mut api = Http::connect(&addr, &cloud.token).await?;
    say(format!("soak: provisioning {} devices on {addr}", b.devices));
    for i in 0..b.devices {
        let body = json!({"login_code": format!("soak-{i}"), "login_passwd": format!("soak-password-{i}")});
        match api.json("POST", "/api/v1/devices", &body).await? {
            (201 | 409, _) => {}
            (s, v) => bail!("provisioning soak-{i}: HTTP {s}: {v}"),
        }
    }

    let tally = Arc::new(Tally::default());
    let quiet = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for i in 0..b.devices {
        let d = Device {
            i,
            url: format!("ws://{addr}/ivc?login_code=soak-{i}&login_passwd=soak-password-{i}&hardware_model=soak&firmware_model=1"),
            api: addr.clone(),
            tally: tally.clone(),
            keepalive: Duration::from_secs(ka),
            alarm_every: Duration::from_secs(b.alarm_every_secs.max(1)),
            preview_every: Duration::from_secs(b.preview_every_secs.max(1)),
            cut: Arc::default(),
            stop: Arc::default(),
            quiet: quiet.clone(),
            connected: Arc::default(),
        };
        handles.push((d.cut.clone(), d.stop.clone(), d.connected.clone()));
        tokio::spawn(d.run());
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let stop_api = Arc::new(AtomicBool::new(false));
    let (api_ok, api_err) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let every = Duration::from_secs_f64(f64::from(b.api_concurrency.max(1)) / f64::from(b.api_rate.max(1)));
    for _ in 0..b.api_concurrency.max(1) {
        let (t, s, ok, err) = (cloud.token.clone(), stop_api.clone(), api_ok.clone(), api_err.clone());
        tokio::spawn(api_load(addr.clone(), t, b.devices, every, s, ok, err));
    }

    // The run: RSS every second; kills and cuts at even intervals.
    let bar = if b.json { ProgressBar::hidden() } else { ProgressBar::new(b.secs) };
    bar.set_style(ProgressStyle::with_template("soak {bar:30} {pos}/{len} s {msg}").expect("template"));
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut phase = 0usize;
    let kill_at: Vec<u64> = (1..=b.kills).map(|k| b.secs * u64::from(k) / u64::from(b.kills + 1)).collect();
    let cut_at: Vec<u64> = (1..=b.cuts).map(|k| b.secs * u64::from(k) / u64::from(b.cuts + 1) + 1).collect();
    let mut restarts = Vec::new();
    let mut cut_devices = 0u64;
    for s in 0..b.secs {
        tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + Duration::from_secs(s + 1))).await;
        let connected = handles.iter().filter(|h| h.2.load(Ordering::Relaxed)).count();
        if let Ok(r) = rss(cloud.pid) {
            samples.push(Sample { at: t0.elapsed().as_secs_f64(), phase, rss: r, connected });
        }
        if kill_at.contains(&(s + 1)) {
            let t = Instant::now();
            let _ = cloud.child.start_kill();
            let _ = cloud.child.wait().await;
            cloud = start_cloud_at(&exe, &dir, &addr, ka, "m=64,t=1,p=1").await?;
            phase += 1;
            restarts.push(t.elapsed().as_secs_f64());
            bar.set_message(format!("cloud killed and restarted ({phase})"));
        }
        if cut_at.contains(&(s + 1)) {
            // A tenth of the fleet (at least one) loses its connection.
            let step = 10usize;
            for (cut, _, _) in handles.iter().skip(s as usize % step).step_by(step) {
                cut.store(true, Ordering::Relaxed);
                cut_devices += 1;
            }
        }
        bar.set_position(s + 1);
        bar.set_message(format!("{connected}/{} connected", b.devices));
    }
    bar.finish_and_clear();
    stop_api.store(true, Ordering::Relaxed);
    quiet.store(true, Ordering::Relaxed);

    // Settle: every running device back in.
    say("soak: load stopped; waiting for every device to be back and the silent ones to be found out".into());
    let running = b.devices - b.stop_devices;
    for (_, stop, _) in handles.iter().skip(running as usize) {
        stop.store(true, Ordering::Relaxed);
    }
    let settle = Instant::now();
    loop {
        let up = handles.iter().take(running as usize).filter(|h| h.2.load(Ordering::Relaxed)).count();
        let down = handles.iter().skip(running as usize).filter(|h| h.2.load(Ordering::Relaxed)).count();
        if up == running as usize && down == 0 {
            break;
        }
        if settle.elapsed() > Duration::from_secs(60 + 3 * ka) {
            bail!(
                "after {} s only {up} of {running} devices are connected ({down} silent ones are still not closed by the cloud)",
                60 + 3 * ka
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The silent ones are ended by the cloud (three missed Keepalives)
    // within the wait above; a moment more for the store.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Check 1: online/offline as they are.
    let mut api = Http::connect(&addr, &cloud.token).await?;
    let mut online: HashSet<String> = HashSet::new();
    let mut listed = 0u32;
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/api/v1/devices?limit=1000".to_owned()
        } else {
            format!("/api/v1/devices?limit=1000&after={after}")
        };
        let (s, page) = api.json("GET", &path, &Value::Null).await?;
        anyhow::ensure!(s == 200, "GET {path}: HTTP {s}");
        let page = page.as_array().cloned().unwrap_or_default();
        for d in &page {
            listed += 1;
            if d["online"].as_bool() == Some(true) {
                online.insert(d["login_code"].as_str().unwrap_or_default().to_owned());
            }
        }
        match page.last() {
            Some(d) if page.len() == 1000 => after = d["login_code"].as_str().unwrap_or_default().to_owned(),
            _ => break,
        }
    }
    let wrongly_offline: Vec<String> =
        (0..running).map(|i| format!("soak-{i}")).filter(|c| !online.contains(c)).collect();
    let wrongly_online: Vec<String> =
        (running..b.devices).map(|i| format!("soak-{i}")).filter(|c| online.contains(c)).collect();

    // Check 2: every acknowledged alarm is stored.
    let acked = std::mem::take(&mut *tally.acked.lock().expect("tally lock"));
    let mut missing = Vec::new();
    let mut acked_n = 0usize;
    for (i, descs) in &acked {
        acked_n += descs.len();
        let (s, ev) = api
            .json("GET", &format!("/api/v1/events?login_code=soak-{i}&type=alarm&limit=10000"), &Value::Null)
            .await?;
        anyhow::ensure!(s == 200, "events of soak-{i}: HTTP {s}");
        let stored: HashSet<&str> =
            ev.as_array().map(|a| a.iter().filter_map(|e| e["data"]["desc"].as_str()).collect()).unwrap_or_default();
        missing.extend(descs.iter().filter(|d| !stored.contains(d.as_str())).cloned());
    }
    let stats = api.json("GET", "/api/v1/stats", &Value::Null).await?.1;
    for (_, stop, _) in &handles {
        stop.store(true, Ordering::Relaxed);
    }

    // Memory per phase: its first and last sample.
    let phases: Vec<Value> = (0..=phase)
        .map(|p| {
            let s: Vec<&Sample> = samples.iter().filter(|x| x.phase == p).collect();
            let mib = |x: Option<&&Sample>| x.map(|x| x.rss as f64 / 1048576.0);
            json!({"phase": p, "first_mib": mib(s.first()), "last_mib": mib(s.last()),
                   "max_mib": s.iter().map(|x| x.rss).max().map(|r| r as f64 / 1048576.0)})
        })
        .collect();
    let rss_series: Vec<Value> =
        samples.iter().map(|s| json!([((s.at * 10.0).round() / 10.0), s.rss / 1024, s.connected])).collect();
    // After each kill: seconds until every device was connected again
    // (None: not within the phase).
    let all = b.devices as usize;
    let back: Vec<Option<f64>> = (1..=phase)
        .map(|p| {
            let s: Vec<&Sample> = samples.iter().filter(|x| x.phase == p).collect();
            let start = s.first()?.at;
            s.iter().find(|x| x.connected == all).map(|x| x.at - start + 1.0)
        })
        .collect();
    let out = json!({
        "devices": b.devices, "secs": b.secs, "keepalive_secs": ka,
        "cloud_kills": b.kills, "restart_secs": restarts, "all_back_after_secs": back, "cuts": b.cuts, "connections_cut": cut_devices,
        "device_logins": tally.logins.load(Ordering::Relaxed),
        "login_failures": tally.login_failures.load(Ordering::Relaxed),
        "keepalives": tally.keepalives.load(Ordering::Relaxed),
        "alarms_sent": tally.alarms_sent.load(Ordering::Relaxed), "alarms_acknowledged": acked_n,
        "alarms_missing": missing.len(), "pictures_uploaded": tally.pictures.load(Ordering::Relaxed),
        "previews_uploaded": tally.previews.load(Ordering::Relaxed),
        "cloud_calls_answered": tally.calls_answered.load(Ordering::Relaxed),
        "api_answers": api_ok.load(Ordering::Relaxed), "api_errors": api_err.load(Ordering::Relaxed),
        "devices_listed": listed, "should_be_online": running, "wrongly_offline": wrongly_offline.len(),
        "should_be_offline": b.stop_devices, "wrongly_online": wrongly_online.len(),
        "memory_by_phase": phases, "series_secs_rss_kib_connected": rss_series, "cloud_stats": stats,
    });
    let _ = cloud.child.start_kill();
    if b.json {
        println!("{out}");
    } else {
        println!(
            "soak: {} devices, {} s, {} cloud kill(s) (restart {:?} s; every device back after {} s), {} connection(s) cut",
            b.devices, b.secs, b.kills, restarts, out["all_back_after_secs"], cut_devices
        );
        println!(
            "  device logins {}, keepalives {}, alarms sent {} / acknowledged {} / missing from the store {}",
            out["device_logins"],
            out["keepalives"],
            out["alarms_sent"],
            acked_n,
            missing.len()
        );
        println!(
            "  pictures {}, previews {}, API answers {} (errors {})",
            out["pictures_uploaded"], out["previews_uploaded"], out["api_answers"], out["api_errors"]
        );
        println!("  at the end: {} of {running} running devices online (wrongly offline {}), {} stopped devices wrongly online",
            running as usize - wrongly_offline.len(), wrongly_offline.len(), wrongly_online.len());
        for p in out["memory_by_phase"].as_array().into_iter().flatten() {
            println!(
                "  cloud RSS, phase {}: {:.1} → {:.1} MiB (max {:.1})",
                p["phase"],
                p["first_mib"].as_f64().unwrap_or(0.0),
                p["last_mib"].as_f64().unwrap_or(0.0),
                p["max_mib"].as_f64().unwrap_or(0.0)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !wrongly_offline.is_empty()
        || !wrongly_online.is_empty()
        || !missing.is_empty()
        || out["api_errors"].as_u64() != Some(0)
    {
        bail!(
            "soak failed: wrongly offline {:?}, wrongly online {:?}, acknowledged alarms missing {:?}, API errors {}",
            &wrongly_offline[..wrongly_offline.len().min(5)],
            &wrongly_online[..wrongly_online.len().min(5)],
            &missing[..missing.len().min(5)],
            out["api_errors"]
        );
    }
    Ok(())
}
