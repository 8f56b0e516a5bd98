//! `ivr bench edge`: what one edge process costs per camera when every
//! camera is published and recorded at once. Everything is a separate
//! process on loopback: `ivr sim dvrip` as an N-channel NVR sending
//! `--bitrate` per channel, nginx with the RTMP module as the publication
//! target, `ivr cloud` giving the orders, and the `ivr edge` measured (its
//! CPU from /proc, its RSS sampled). Segment uploads go to a small HTTP
//! sink in this process that counts and discards them.

use super::bench_ivc::{cpu, free_port};
use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

#[derive(ClapArgs)]
pub struct EdgeBench {
    /// Cameras (channels of one simulated NVR, one DVRIP login).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=64))]
    cameras: u32,
    /// Seconds measured (after a warm-up of 5 s).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Segment length the recordings are asked for (StartCloudRecord
    /// seg_duration): a segment is held until it is complete, so memory
    /// per camera grows with bitrate × this.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=60))]
    seg_duration: u32,
    /// Each camera's main-stream bitrate, bit/s.
    #[arg(long, default_value_t = 4_000_000)]
    bitrate: u64,
    /// The nginx binary (with libnginx-mod-rtmp) that receives the publications.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
}

const NGINX_CONF: &str = include_str!("../../../../tests/interop/nginx-rtmp.conf");

/// A progress bar on stderr (hidden with --json).
pub(super) fn bar(len: u64, what: &str, json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Resident memory of a process (0 once it is gone).
fn rss(pid: u32) -> u64 {
    super::bench_ivc::rss(pid).unwrap_or(0)
}

fn spawn(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.first().unwrap_or(&"")))
}

/// The first line a child prints.
async fn first_line(c: &mut tokio::process::Child) -> anyhow::Result<String> {
    let out = c.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??.unwrap_or_default();
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(line)
}

/// The recording callback protocol, discarding the bytes: POST → {"url"}, PUT → 201.
async fn upload_sink(segments: Arc<AtomicU64>, bytes: Arc<AtomicU64>) -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (segments, bytes) = (segments.clone(), bytes.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut have = Vec::new();
                let head_end = loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    if let Some(p) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&have[..head_end]).to_ascii_lowercase();
                let len: u64 = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                let mut got = (have.len() - head_end) as u64;
                while got < len {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n as u64,
                    }
                }
                let answer = if head.starts_with("post") {
                    format!("{{\"url\":\"http://127.0.0.1:{port}/segment\"}}")
                } else {
                    segments.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(len, Ordering::Relaxed);
                    String::new()
                };
                let status = if answer.is_empty() { "201 Created" } else { "200 OK" };
                let r = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = s.write_all(r.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

/// One API call to the cloud (a fresh connection each: a few per camera).
pub(super) async fn api(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let b = serde_json::to_vec(body)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        b.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&b).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
    Ok((status, body))
}

pub async fn run(b: EdgeBench) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("ivr-bench-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = super::bench_cluster::RemoveOnDrop(dir.clone());
    let n = b.cameras;
    // nginx (RTMP).
    let rport = free_port()?;
    let ng = dir.join("nginx");
    std::fs::create_dir_all(&ng)?;
    std::fs::write(ng.join("nginx.conf"), NGINX_CONF.replace("@PORT@", &rport.to_string()))?;
    let ng_conf = ng.join("nginx.conf");
    let ng_err = ng.join("error.log");
    let mut nginx = tokio::process::Command::new(&b.nginx)
        .arg("-p")
        .arg(&ng)
        .arg("-c")
        .arg(&ng_conf)
        .arg("-e")
        .arg(&ng_err)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (Debian: apt install nginx libnginx-mod-rtmp)", b.nginx))?;
    // The NVR.
    let mut nvr = spawn(
        &exe,
        &[
            "sim",
            "dvrip",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "off",
            "--password",
            "bench",
            "--channels",
            &n.to_string(),
            "--bitrate",
            &b.bitrate.to_string(),
        ],
        &dir.join("nvr.log"),
    )?;
    let line = first_line(&mut nvr).await?;
    let nvr_addr = line
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .map(|a| a.trim_end_matches(',').to_owned())
        .with_context(|| format!("the simulator said {line:?}"))?;
    // The cloud.
    let addr = format!("127.0.0.1:{}", free_port()?);
    let token = "bench-edge-admin-token-0123";
    let data = dir.join("cloud");
    let mut cloud = spawn(
        &exe,
        &[
            "cloud",
            "--listen",
            &addr,
            "--admin-token",
            token,
            "--keepalive-secs",
            "5",
            "--data",
            &data.to_string_lossy(),
        ],
        &dir.join("cloud.log"),
    )?;
    first_line(&mut cloud).await?;
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = api(&addr, token, "GET", "/api/v1/stats", &Value::Null).await {
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("ivr cloud did not answer (see {})", dir.join("cloud.log").display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, pw) = ("bench-edge", "bench-edge-password");
    api(&addr, token, "POST", "/api/v1/devices", &json!({"login_code": code, "login_passwd": pw, "name": "bench"}))
        .await?;
    // The edge.
    let mut toml = format!(
        "[cloud]\nurl = \"ws://{addr}/ivc\"\nlogin_code = \"{code}\"\nlogin_passwd = \"{pw}\"\nkeepalive_secs = 5\n"
    );
    for ch in 0..n {
        toml.push_str(&format!(
            "\n[[channels]]\nchannel = {ch}\nsource = \"dvrip://admin:bench@{nvr_addr}/{ch}\"\npreview_every_secs = 0\n"
        ));
    }
    let conf = dir.join("edge.toml");
    std::fs::write(&conf, toml)?;
    let mut edge = spawn(&exe, &["edge", "--config", &conf.to_string_lossy()], &dir.join("edge.log"))?;
    let edge_pid = edge.id().context("the edge exited at once")?;
    first_line(&mut edge).await?;
    let t0 = Instant::now();
    loop {
        let (s, body) = api(&addr, token, "GET", &format!("/api/v1/devices/{code}"), &Value::Null).await?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let online = v["channels"].as_array().map_or(0, |c| c.iter().filter(|c| c["state"] == 1).count());
        if s == 200 && online == n as usize {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("{online} of {n} channels online after 30 s (see {})", dir.join("edge.log").display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_rss = rss(edge_pid);
    let (segments, seg_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sink = upload_sink(segments.clone(), seg_bytes.clone()).await?;
    let pb = bar(n as u64 * 2, "publish + record", b.json);
    for ch in 0..n {
        let p = json!({"channel": ch, "quality": "hd", "url": format!("rtmp://127.0.0.1:{rport}/live/cam{ch}"),
                       "stream_id": format!("bench-{ch}"), "max_bitrate": 0});
        let (s, body) = api(&addr, token, "POST", &format!("/api/v1/devices/{code}/rpc/RTMPPublish"), &p).await?;
        if s != 200 {
            bail!("RTMPPublish on channel {ch}: HTTP {s}: {body}");
        }
        pb.inc(1);
        let r = json!({"session_id": format!("bench-session-{ch:08}"), "channel": ch, "quality": "hd", "max_bitrate": 0,
                       "seg_duration": b.seg_duration, "seg_max_size": 16 << 20, "seg_max_count": 10, "prerecord_seconds": 0,
                       "start_ts": 0, "cbk_url": format!("http://127.0.0.1:{sink}/cbk")});
        let (s, body) = api(&addr, token, "POST", &format!("/api/v1/devices/{code}/rpc/StartCloudRecord"), &r).await?;
        if s != 200 {
            bail!("StartCloudRecord on channel {ch}: HTTP {s}: {body}");
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, s0, b0, w0) =
        (cpu(edge_pid), segments.load(Ordering::Relaxed), seg_bytes.load(Ordering::Relaxed), Instant::now());
    let nvr_pid = nvr.id().unwrap_or(0);
    let nvr_c0 = cpu(nvr_pid);
    let mut peak = 0u64;
    let mut samples = Vec::new();
    let pb = bar(b.seconds, "measuring", b.json);
    for _ in 0..b.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = rss(edge_pid);
        peak = peak.max(r);
        samples.push(r);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let wall = w0.elapsed().as_secs_f64();
    let edge_cpu = (cpu(edge_pid) - c0).as_secs_f64() / wall;
    let nvr_cpu = (cpu(nvr_pid) - nvr_c0).as_secs_f64() / wall;
    let segs = segments.load(Ordering::Relaxed) - s0;
    let uploaded = (seg_bytes.load(Ordering::Relaxed) - b0) as f64 * 8.0 / wall;
    let (_, body) = api(&addr, token, "GET", &format!("/api/v1/devices/{code}"), &Value::Null).await?;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let live = v["channels"].as_array().map_or(0, |c| c.iter().filter(|c| c["state"] == 2).count());
    let rss_avg = samples.iter().sum::<u64>() / samples.len().max(1) as u64;
    let out = json!({
        "cameras": n, "bitrate": b.bitrate, "seg_duration": b.seg_duration, "seconds": wall,
        "edge_cpu_percent_of_a_core": edge_cpu * 100.0,
        "edge_cpu_percent_per_camera": edge_cpu * 100.0 / n as f64,
        "edge_rss_mib": rss_avg as f64 / 1048576.0, "edge_rss_peak_mib": peak as f64 / 1048576.0,
        "edge_idle_rss_mib": idle_rss as f64 / 1048576.0,
        "edge_rss_mib_per_camera": rss_avg.saturating_sub(idle_rss) as f64 / 1048576.0 / n as f64,
        "channels_live": live, "segments_uploaded": segs, "uploaded_bit_per_s_per_camera": uploaded / n as f64,
        "nvr_sim_cpu_percent": nvr_cpu * 100.0,
    });
    let _ = nginx.start_kill();
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{n} cameras at {:.1} Mbit/s, each published (RTMP) and recorded ({} s segments uploaded) by one edge, {wall:.0} s:",
            b.bitrate as f64 / 1e6,
            b.seg_duration
        );
        println!(
            "  edge CPU {:.2} % of a core = {:.3} % per camera; RSS {:.1} MiB (idle {:.1}) = {:.2} MiB per camera",
            edge_cpu * 100.0,
            edge_cpu * 100.0 / n as f64,
            rss_avg as f64 / 1048576.0,
            idle_rss as f64 / 1048576.0,
            rss_avg.saturating_sub(idle_rss) as f64 / 1048576.0 / n as f64
        );
        println!(
            "  {live}/{n} channels live; {segs} segments uploaded ({:.2} Mbit/s per camera); the simulated NVR used {:.1} % of a core",
            uploaded / n as f64 / 1e6,
            nvr_cpu * 100.0
        );
    }
    drop((edge, cloud, nvr));
    Ok(())
}
