//! `ivr bench recording`: cloud recording, measured. `ivr cloud` runs as
//! its own process; this process is N devices (IVR RPC clients that answer
//! StartCloudRecord and upload MPEG-TS segments of a padded H.264 clip to
//! the cloud's callback, as the edge does):
//!
//! - ingest: the cloud's CPU per camera while N cameras record at their
//!   bitrate in real time;
//! - write throughput: segments uploaded as fast as the cloud takes them
//!   (each written to a temporary file, fsynced, renamed, indexed), against
//!   `dd conv=fsync` and `dd oflag=direct conv=fsync` writing as many bytes
//!   to the same disk in the same run;
//! - playback: the MP4 of a long range (default one hour) assembled from
//!   the stored segments: time to its first byte, and the assembly rate;
//!   the same for a Range request in the middle of it, and for what a
//!   browser sends first (`Range: bytes=0-` on a fresh token), from the
//!   disk when this process may empty the page cache.

use super::bench_ivc::{cpu, free_port, start_cloud_at};
use super::bench_live::http as api;
use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use ivr_media::sink::{Format, Sink};
use ivr_media::{Codec, Frame};
use ivr_rpc::conn::Handler;
use ivr_rpc::RpcError;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(ClapArgs)]
pub struct RecordingBench {
    /// Cameras recording at once (each its own device session).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=500))]
    cameras: u32,
    /// Each camera's bitrate, bit/s.
    #[arg(long, default_value_t = 4_000_000)]
    bitrate: u64,
    /// Seconds each ingest phase is measured.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Segment length, seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=60))]
    seg: u32,
    /// Each camera site's uplink, Mbit/s: a segment's PUT is sent at this
    /// rate, in 16 KiB writes, as it would cross the internet (0: as fast
    /// as loopback takes it). Real-time ingest only.
    #[arg(long, default_value_t = 0.0, value_parser = uplink_rate)]
    uplink: f64,
    /// Minutes of recording the playback MP4 spans.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1440))]
    playback_minutes: u32,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
}

/// Writes the dirty pages out and empties the page cache; false when this
/// process may not (not root, or no `/proc`).
fn drop_page_cache() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// `--uplink`: a rate in Mbit/s, 0 or more (0: no limit).
fn uplink_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a rate in Mbit/s (a number, 0 or more; 0 for no limit)")),
    }
}

/// The device: answers StartCloudRecord by noting where to upload.
#[derive(Default)]
struct Device {
    /// cbk_url and session_id per channel.
    sessions: Mutex<HashMap<u32, (String, String)>>,
}

impl Handler for Device {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        if method == "StartCloudRecord" {
            let p = params.unwrap_or_default();
            let ch = p["channel"].as_u64().unwrap_or(0) as u32;
            let cbk = p["cbk_url"].as_str().unwrap_or_default().to_owned();
            let sid = p["session_id"].as_str().unwrap_or_default().to_owned();
            self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(ch, (cbk, sid));
        }
        Ok(json!({}))
    }
    async fn event(&self, _: String, _: Option<Value>) {}
}

/// One segment of `secs` seconds at `bitrate`, as MPEG-TS.
fn segment(bitrate: u64, secs: u32) -> anyhow::Result<Vec<u8>> {
    let clip = ivr_sim::clips::clip(ivr_sim::clips::ClipCodec::H264, true);
    let frames = clip.padded(bitrate);
    let mut sink = Sink::new(Format::Ts, 25).with_audio(None);
    let mut out = Vec::new();
    for i in 0..(secs as u64 * 25) {
        let u = &frames[(i % frames.len() as u64) as usize];
        let dts = i * 3600;
        sink.push(Frame { codec: Codec::H264, keyframe: u.keyframe, pts: dts, dts, data: u.data.clone() }, &mut out)?;
    }
    sink.finish(&mut out)?;
    Ok(out)
}

/// An HTTP/1.1 request on a fresh connection: status and body.
/// `uplink`: the body's rate in bit/s (0: at once).
async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    uplink: f64,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if uplink > 0.0 {
        let t0 = tokio::time::Instant::now();
        for (i, piece) in body.chunks(16 << 10).enumerate() {
            let due = t0 + Duration::from_secs_f64((i * (16 << 10)) as f64 * 8.0 / uplink);
            tokio::time::sleep_until(due).await;
            s.write_all(piece).await?;
        }
    } else {
        s.write_all(body).await?;
    }
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP head")?;
    let status = std::str::from_utf8(&resp[..end])?.split(' ').nth(1).context("no status")?.parse()?;
    Ok((status, resp[end + 4..].to_vec()))
}

/// Uploads one segment the way the edge does: describe it at the callback
/// URL, PUT its bytes to the URL the cloud answers.
/// `(cbk, sid)`: the callback URL and the recording session.
async fn upload(
    addr: &str,
    (cbk, sid): (&str, &str),
    seq: u64,
    start_ms: i64,
    secs: u32,
    data: &[u8],
    uplink: f64,
) -> anyhow::Result<()> {
    let path = cbk.split_once(addr).map(|x| x.1).context("cbk_url on another host")?;
    let d = json!({"session_id": sid, "channel": 0, "seq": seq, "size": data.len(), "duration": secs, "start_ms": start_ms});
    let (s, b) =
        request(addr, "POST", path, "Content-Type: application/json\r\n", d.to_string().as_bytes(), 0.0).await?;
    if s != 200 {
        bail!("callback: HTTP {s}: {}", String::from_utf8_lossy(&b));
    }
    let url: Value = serde_json::from_slice(&b)?;
    let put = url["url"].as_str().context("no upload url")?;
    let put = put.split_once(addr).map(|x| x.1).context("upload url on another host")?;
    let (s, b) = request(addr, "PUT", put, "", data, uplink).await?;
    if s != 201 && s != 200 {
        bail!("upload: HTTP {s}: {}", String::from_utf8_lossy(&b));
    }
    Ok(())
}

pub async fn run(b: RecordingBench) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("ivr-bench-recording-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = super::bench_cluster::RemoveOnDrop(dir.clone());
    let addr = format!("127.0.0.1:{}", free_port()?);
    let say = |s: &str| {
        if !b.json {
            println!("{s}");
        } else {
            eprintln!("{s}");
        }
    };
    std::fs::create_dir_all(dir.join("data"))?;
    let mut cloud = start_cloud_at(&exe, &dir.join("data"), &addr, 5, "m=64,t=1,p=1").await?;
    let (pid, token) = (cloud.pid, cloud.token.clone());
    let token = token.as_str();
    let seg = Arc::new(segment(b.bitrate, b.seg)?);
    let uplink = if b.uplink > 0.0 { format!(", sent over {} Mbit/s uplinks", b.uplink) } else { String::new() };
    say(&format!(
        "{} cameras at {:.1} Mbit/s, {} s segments of {} bytes{uplink}",
        b.cameras,
        b.bitrate as f64 / 1e6,
        b.seg,
        seg.len()
    ));

    // The devices, each asked to record channel 0.
    let mut cams = Vec::new();
    for i in 0..b.cameras {
        let lc = format!("rec-{i:03}");
        let (s, _) =
            api(&addr, token, "POST", "/api/v1/devices", &json!({"login_code": lc, "login_passwd": "bench-pass"}))
                .await?;
        if s != 201 {
            bail!("provisioning {lc}: HTTP {s}");
        }
        let dev = Arc::new(Device::default());
        let url = ivr_rpc::ws::login_url(&format!("ws://{addr}/ivc"), &lc, "bench-pass", "bench", "1");
        let ws = ivr_rpc::ws::dial(&url, &ivr_rpc::net::Dialer::default()).await.context("a device's login")?;
        let (h, run) = ivr_rpc::conn::spawn(ws, ivr_rpc::Peer::ivt(), dev.clone());
        let keepalive = json!({"state": 1, "channels": [{"channel": 0, "state": 1}]});
        h.call("Keepalive", Some(keepalive)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let path = format!("/api/v1/devices/{lc}/channels/0/recording");
        let (s, j) = api(&addr, token, "POST", &path, &json!({"seg_duration": b.seg})).await?;
        if s != 201 {
            bail!("starting {lc}'s recording: HTTP {s}: {j}");
        }
        let (cbk, sid) =
            dev.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(&0).cloned().context("no StartCloudRecord")?;
        cams.push((cbk, sid, h, run));
    }
    let stored = |addr: String| async move {
        let (_, j) = api(&addr, token, "GET", "/api/v1/stats", &Value::Null).await?;
        anyhow::Ok((
            j["recordings"]["stored"].as_u64().unwrap_or(0),
            j["recordings"]["stored_bytes"].as_u64().unwrap_or(0),
        ))
    };
    let t_start = chrono::Utc::now().timestamp_millis() - 86_400_000;
    let seqs: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..b.cameras).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
    // Each camera's uploads: paced (one segment per `seg` s) or as fast as taken.
    let phase = |paced: bool, secs: u64| {
        let mut tasks = Vec::new();
        for (i, (cbk, sid, _, _)) in cams.iter().enumerate() {
            let (cbk, sid, addr, seg, seqs) = (cbk.clone(), sid.clone(), addr.clone(), seg.clone(), seqs.clone());
            let segsecs = b.seg;
            let uplink = if paced { b.uplink * 1e6 } else { 0.0 };
            tasks.push(tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(secs);
                // Spread the cameras over the interval, as real ones are, and
                // keep each on its own phase: a camera finishes a segment
                // every `seg` s, so the window holds `secs / seg` of each.
                let mut next = Instant::now() + Duration::from_millis(i as u64 * 997 % (segsecs as u64 * 1000));
                loop {
                    if paced {
                        if next >= until {
                            break;
                        }
                        tokio::time::sleep_until(next.into()).await;
                        next += Duration::from_secs(segsecs as u64);
                    } else if Instant::now() >= until {
                        break;
                    }
                    let seq = seqs[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let start = t_start + seq as i64 * segsecs as i64 * 1000;
                    if let Err(e) = upload(&addr, (&cbk, &sid), seq, start, segsecs, &seg, uplink).await {
                        eprintln!("camera {i}: {e:#}");
                        return;
                    }
                }
            }));
        }
        tasks
    };

    // 0. The cloud with these sessions and nothing recorded: its own floor
    // (after the provisioning's work has settled).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, t0) = (cpu(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle_pct = (cpu(pid) - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    say(&format!("idle (sessions, Keepalives, housekeeping; no uploads): {idle_pct:.2} % of a core"));

    // 1. Real time.
    say(&format!("ingest: {} cameras in real time for {} s…", b.cameras, b.seconds));
    let (c0, s0, t0) = (cpu(pid), stored(addr.clone()).await?, Instant::now());
    for t in phase(true, b.seconds) {
        t.await?;
    }
    let (c1, s1, el) = (cpu(pid), stored(addr.clone()).await?, t0.elapsed());
    let cpu_pct = (c1 - c0).as_secs_f64() / el.as_secs_f64() * 100.0;
    let per_cam = (cpu_pct - idle_pct).max(0.0) / b.cameras as f64;
    let rt_mbit = (s1.1 - s0.1) as f64 * 8.0 / el.as_secs_f64() / 1e6;
    say(&format!(
        "  {} segments, {rt_mbit:.1} Mbit/s stored; the cloud's CPU {cpu_pct:.2} % of a core, {per_cam:.3} % per camera above idle",
        s1.0 - s0.0
    ));

    // 2. As fast as taken, against dd.
    let fast_secs = (b.seconds / 2).max(5);
    say(&format!("write throughput: uploads as fast as the cloud takes them for {fast_secs} s…"));
    let (c0, s0, t0) = (cpu(pid), stored(addr.clone()).await?, Instant::now());
    for t in phase(false, fast_secs) {
        t.await?;
    }
    let (c1, s1, el) = (cpu(pid), stored(addr.clone()).await?, t0.elapsed());
    let cloud_mb_s = (s1.1 - s0.1) as f64 / el.as_secs_f64() / 1e6;
    let fast_cpu = (c1 - c0).as_secs_f64() / el.as_secs_f64() * 100.0;
    let mb = ((s1.1 - s0.1) / 1_000_000).max(64);
    let dd_file = dir.join("dd.bin");
    // dd's own CPU (user + system): the children's usage, before and after.
    let children_cpu = || {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    // dd both ways: through the page cache with one fsync at the end, and
    // around it (O_DIRECT, as the cloud writes); the disk's sequential rate
    // is the faster of the two.
    let mut dd = Vec::new();
    for flags in [&["conv=fsync"][..], &["oflag=direct", "conv=fsync"]] {
        let cpu0 = children_cpu();
        let t = Instant::now();
        let out = tokio::process::Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", dd_file.display()))
            .args(["bs=1M", &format!("count={mb}")])
            .args(flags)
            .output()
            .await
            .context("running dd")?;
        let secs = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&dd_file);
        if !out.status.success() {
            bail!("dd {}: {}", flags.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        let cpu_s_per_gb = (children_cpu() - cpu0) / ((mb << 20) as f64 / 1e9);
        dd.push(((mb << 20) as f64 / secs / 1e6, cpu_s_per_gb));
    }
    let cloud_cpu_s_per_gb = (c1 - c0).as_secs_f64() / ((s1.1 - s0.1) as f64 / 1e9);
    let ((dd_mb_s, dd_cpu_s_per_gb), (direct_mb_s, direct_cpu_s_per_gb)) = (dd[0], dd[1]);
    let disk_mb_s = dd_mb_s.max(direct_mb_s);
    say(&format!(
        "  the cloud stored {cloud_mb_s:.0} MB/s ({} segments, {fast_cpu:.0} % of a core); dd conv=fsync {dd_mb_s:.0} MB/s, dd oflag=direct {direct_mb_s:.0} MB/s: {:.2}× the faster",
        s1.0 - s0.0,
        cloud_mb_s / disk_mb_s
    ));
    say(&format!(
        "  CPU per GB written: the cloud {cloud_cpu_s_per_gb:.2} s (HTTP in, file, fsync, index), dd conv=fsync {dd_cpu_s_per_gb:.2} s, dd oflag=direct {direct_cpu_s_per_gb:.2} s: {:.1}× the direct dd",
        cloud_cpu_s_per_gb / direct_cpu_s_per_gb
    ));

    // 3. Playback of a long range: camera 0 gets that many segments first.
    let want = (b.playback_minutes as u64 * 60).div_ceil(b.seg as u64);
    let (cbk, sid, _, _) = &cams[0];
    let have = seqs[0].load(std::sync::atomic::Ordering::Relaxed);
    say(&format!(
        "playback: {} min of camera 0 ({} segments; uploading {} more)…",
        b.playback_minutes,
        want,
        want.saturating_sub(have)
    ));
    let pb = indicatif::ProgressBar::new(want.saturating_sub(have));
    if b.json {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for seq in have..want {
        let start = t_start + seq as i64 * b.seg as i64 * 1000;
        upload(&addr, (cbk, sid), seq, start, b.seg, &seg, 0.0).await?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let to = t_start + want as i64 * b.seg as i64 * 1000;
    let (s, j) = api(
        &addr,
        token,
        "POST",
        "/api/v1/devices/rec-000/channels/0/playback",
        &json!({"from": t_start as f64 / 1000.0, "to": to as f64 / 1000.0}),
    )
    .await?;
    if s != 200 {
        bail!("playback: HTTP {s}: {j}");
    }
    let mp4_path = |j: &Value| -> anyhow::Result<String> {
        let url = j["urls"]["mp4"].as_str().context("no mp4 url")?;
        url.split_once(addr.as_str()).map(|x| x.1.to_owned()).context("mp4 url")
    };
    let path = mp4_path(&j)?;
    let timed = |path: &str, range: Option<String>| {
        let (addr, path) = (addr.clone(), path.to_owned());
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            let r = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
            let t0 = Instant::now();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{r}Connection: close\r\n\r\n").as_bytes())
                .await?;
            let mut buf = vec![0u8; 1 << 20];
            let mut head = Vec::new();
            let mut in_body = false;
            let mut first = None;
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                // Count the body only, and time its first byte (not the headers').
                let body = if in_body {
                    n
                } else {
                    head.extend_from_slice(&buf[..n]);
                    let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    in_body = true;
                    head.len() - i - 4
                };
                if body > 0 && first.is_none() {
                    first = Some(t0.elapsed());
                }
                total += body as u64;
            }
            anyhow::Ok((first.unwrap_or_default(), t0.elapsed(), total))
        }
    };
    let (ttfb, whole, bytes) = timed(&path, None).await?;
    let gb_s = bytes as f64 / whole.as_secs_f64() / 1e9;
    say(&format!(
        "  the whole MP4: first byte after {:.1} ms; {:.2} GB in {:.2} s = {gb_s:.2} GB/s assembled",
        ttfb.as_secs_f64() * 1000.0,
        bytes as f64 / 1e9,
        whole.as_secs_f64()
    ));
    // A seek: the first Range request learns the size (a dry run), the next one not.
    let mid = bytes / 2;
    let (r1, _, _) = timed(&path, Some(format!("bytes={mid}-{}", mid + (1 << 20)))).await?;
    let (r2, _, _) = timed(&path, Some(format!("bytes={}-{}", mid / 2, mid / 2 + (1 << 20)))).await?;
    say(&format!(
        "  a Range in the middle: first byte after {:.0} ms (the first one, which sizes the file), then {:.0} ms",
        r1.as_secs_f64() * 1000.0,
        r2.as_secs_f64() * 1000.0
    ));
    // What a viewer waits for: a browser's first request of a new playback
    // is `Range: bytes=0-`, so the file is sized before its first byte, and
    // a first playback finds its segments on the disk, not in the page
    // cache (they were written around it). Emptying the cache needs root;
    // without it the figure is the cached one, and says so. (The range
    // differs by a millisecond: a token is made from channel, range and
    // expiry, so the same range in the same second is the same token, and
    // the cloud would answer from what it learnt of it.)
    let (s, j) = api(
        &addr,
        token,
        "POST",
        "/api/v1/devices/rec-000/channels/0/playback",
        &json!({"from": (t_start + 1) as f64 / 1000.0, "to": to as f64 / 1000.0}),
    )
    .await?;
    if s != 200 {
        bail!("playback: HTTP {s}: {j}");
    }
    let cold = drop_page_cache();
    let (r0, _, _) = timed(&mp4_path(&j)?, Some("bytes=0-1048575".to_owned())).await?;
    say(&format!(
        "  a browser's first request (Range: bytes=0-, a new token, segments {}): first byte after {:.0} ms",
        if cold { "read from the disk" } else { "in the page cache: run as root to empty it first" },
        r0.as_secs_f64() * 1000.0
    ));
    if b.json {
        println!(
            "{}",
            json!({
                "cameras": b.cameras, "bitrate": b.bitrate, "segment_bytes": seg.len(), "segment_secs": b.seg,
                "uplink_mbit_s": b.uplink,
                "ingest": {"idle_cpu_pct": idle_pct, "cpu_pct": cpu_pct, "cpu_pct_per_camera": per_cam, "stored_mbit_s": rt_mbit},
                "throughput": {"cloud_mb_s": cloud_mb_s, "cloud_cpu_pct": fast_cpu, "dd_mb_s": dd_mb_s,
                               "dd_direct_mb_s": direct_mb_s, "ratio": cloud_mb_s / disk_mb_s,
                               "cloud_cpu_s_per_gb": cloud_cpu_s_per_gb, "dd_cpu_s_per_gb": dd_cpu_s_per_gb,
                               "dd_direct_cpu_s_per_gb": direct_cpu_s_per_gb},
                "playback": {"minutes": b.playback_minutes, "bytes": bytes, "first_byte_ms": ttfb.as_secs_f64() * 1000.0,
                             "gb_s": gb_s, "range_first_byte_ms": [r1.as_secs_f64() * 1000.0, r2.as_secs_f64() * 1000.0],
                             "browser_first_byte_ms": r0.as_secs_f64() * 1000.0, "browser_from_disk": cold},
            })
        );
    }
    drop(cams);
    let _ = cloud.child.kill().await;
    Ok(())
}
