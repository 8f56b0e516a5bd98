//! `ivr bench …`: side-by-side measurements against the tools people use
//! today, in one run, on this machine.

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use dvrip::client::{Client, ClientConfig, SocketMode};
use dvrip::media::FrameKind;
use dvrip::messages::StreamType;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// The Rust client vs python-dvr against the same simulator (a separate
    /// process): a scripted session (login, N config gets, time, snapshot)
    /// and live-stream throughput (read and demuxed). Reports wall time and
    /// each client's own CPU time.
    Dvrip(DvripBench),
    /// The cloud at scale: `ivr cloud` and fleets of `ivr sim ivt` as
    /// separate processes; sessions held, RSS per session, connection rate,
    /// API RPC round trips with p50/p99 latency.
    Ivc(super::bench_ivc::IvcBench),
    /// CVIPv2 request rate and latency against `ivr sim cvip` (a separate
    /// process): sequential, pipelined on one connection, across many
    /// connections, and a Python xmlrpc.client side by side.
    Cvip(super::bench_cvip::CvipBench),
    /// Remux throughput: ivr's TS and fragmented-MP4 muxers against
    /// `ffmpeg -c copy` on the same input, side by side.
    Media(super::bench_media::MediaBench),
    /// One edge process publishing and recording N cameras of a simulated
    /// DVRIP NVR at once (RTMP to nginx, segments to an upload sink): its
    /// CPU and RSS per camera.
    Edge(super::bench_edge::EdgeBench),
    /// The cloud's live view: time to the first fragment (cold and warm),
    /// glass-to-glass latency on the ws path, and viewers of one stream.
    Live(super::bench_live::LiveBench),
    /// Soak and chaos: N simulated devices (keep-alives, alarms with
    /// pictures, previews) and API load against `ivr cloud` while the cloud
    /// is killed (-9) and restarted and device connections are cut; then
    /// checks no device is wrongly online or offline, every acknowledged
    /// alarm is stored, and reports the cloud's memory over time.
    Soak(super::bench_soak::SoakBench),
    /// Cloud recording: the cloud's CPU per camera recording in real time,
    /// segment write throughput against `dd` on the same disk, and
    /// playback of a long range (first byte, assembly rate, a Range seek).
    Recording(super::bench_recording::RecordingBench),
}

#[derive(ClapArgs)]
pub struct DvripBench {
    /// Python with python-dvr installed (scripts/test.sh makes one).
    #[arg(long, default_value = "~/.cache/ivr/venvs/pydvr/bin/python")]
    python: String,
    /// Config gets in the scripted session.
    #[arg(long, default_value_t = 1000)]
    gets: u32,
    /// Requests in flight for the pipelined session (python-dvr cannot).
    #[arg(long, default_value_t = 32)]
    pipeline: u32,
    /// Live frames to read.
    #[arg(long, default_value_t = 5000)]
    frames: u64,
    /// Runs of each side (the best is reported).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
}

const PYDVR_SCRIPT: &str = include_str!("bench_pydvr.py");

pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Dvrip(b) => dvrip(b).await,
        BenchCmd::Ivc(b) => super::bench_ivc::run(b).await,
        BenchCmd::Cvip(b) => super::bench_cvip::run(b).await,
        BenchCmd::Media(b) => super::bench_media::run(b).await,
        BenchCmd::Edge(b) => super::bench_edge::run(b).await,
        BenchCmd::Live(b) => super::bench_live::run(b).await,
        BenchCmd::Soak(b) => super::bench_soak::run(b).await,
        BenchCmd::Recording(b) => super::bench_recording::run(b).await,
    }
}

/// CPU time of all this process's threads, in nanoseconds (Linux
/// `schedstat`; the tick-based counters are too coarse for these runs).
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn best(a: Option<Sample>, b: Sample) -> Option<Sample> {
    match a {
        Some(a) if a.wall <= b.wall => Some(a),
        _ => Some(b),
    }
}

async fn rust_session(addr: &str, gets: u32, pipeline: u32) -> anyhow::Result<Sample> {
    let (t0, c0) = (Instant::now(), cpu_time());
    let c = Client::connect(ClientConfig::new(addr, "admin", "bench")).await?;
    let per = gets.div_ceil(pipeline.max(1));
    let mut tasks = Vec::new();
    for w in 0..pipeline.max(1) {
        let c = c.clone();
        let n = per.min(gets.saturating_sub(w * per));
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                let v = c.config_get("General.General").await?;
                if v["FontSize"] != 24 {
                    bail!("unexpected reply {v}");
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    c.time().await?;
    let jpeg = c.snapshot(0).await?;
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        bail!("snapshot is not a JPEG");
    }
    c.logout().await?;
    Ok(Sample { wall: t0.elapsed(), cpu: cpu_time().saturating_sub(c0) })
}

async fn rust_live(addr: &str, frames: u64) -> anyhow::Result<(Sample, u64)> {
    let c = Client::connect(ClientConfig::new(addr, "admin", "bench")).await?;
    let (t0, c0) = (Instant::now(), cpu_time());
    let mut s = c.monitor(0, StreamType::Main, SocketMode::Single).await?;
    let mut n = 0;
    let mut bytes = 0u64;
    while n < frames {
        let f = s.next_frame().await.context("stream ended")?;
        if matches!(f.kind, FrameKind::Video { .. }) {
            n += 1;
            bytes += f.payload.len() as u64;
        }
    }
    let sample = Sample { wall: t0.elapsed(), cpu: cpu_time().saturating_sub(c0) };
    s.stop().await?;
    c.logout().await?;
    Ok((sample, bytes))
}

fn expand(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_owned(),
    }
}

/// Starts `ivr sim dvrip` as its own process (so it does not share this
/// process's threads) and returns it with its port.
async fn spawn_sim() -> anyhow::Result<(tokio::process::Child, u16)> {
    let exe = std::env::current_exe().context("locating the ivr binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "sim",
            "dvrip",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "off",
            "--password",
            "bench",
            "--unpaced-live",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the simulator")?;
    let out = child.stdout.take().context("simulator stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(out).read_line(&mut line).await?;
    let port = line
        .split("listening on 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("simulator banner {line:?}"))?;
    Ok((child, port))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn dvrip(b: DvripBench) -> anyhow::Result<()> {
    let (_sim, port) = spawn_sim().await?;
    let addr = format!("127.0.0.1:{port}");
    let python = expand(&b.python);
    let script = std::env::temp_dir().join(format!("ivr-bench-pydvr-{}.py", std::process::id()));
    std::fs::write(&script, PYDVR_SCRIPT).context("writing the python-dvr script")?;

    let (mut seq, mut pipe, mut live) = (None, None, None);
    let mut live_bytes = 0;
    let mut py: Option<Value> = None;
    for _ in 0..b.runs {
        seq = best(seq, rust_session(&addr, b.gets, 1).await?);
        pipe = best(pipe, rust_session(&addr, b.gets, b.pipeline).await?);
        let (l, bytes) = rust_live(&addr, b.frames).await?;
        if live.is_none_or(|x: Sample| l.wall < x.wall) {
            live = Some(l);
            live_bytes = bytes;
        }
        let out = tokio::process::Command::new(&python)
            .arg(&script)
            .args(["127.0.0.1", &port.to_string(), "bench", &b.gets.to_string(), &b.frames.to_string()])
            .output()
            .await
            .with_context(|| format!("running {python} (install python-dvr there, or pass --python)"))?;
        if !out.status.success() {
            bail!("python-dvr run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("python-dvr output")?;
        if py.as_ref().is_none_or(|p| v["session_s"].as_f64() < p["session_s"].as_f64()) {
            py = Some(v);
        }
    }
    let _ = std::fs::remove_file(&script);
    let (seq, pipe, live) = (seq.context("no run")?, pipe.context("no run")?, live.context("no run")?);
    let py = py.context("no python-dvr run")?;
    let f = |k: &str| py[k].as_f64().unwrap_or(f64::NAN);
    let (py_s, py_s_cpu, py_l, py_l_cpu, py_bytes) =
        (f("session_s"), f("session_cpu_s"), f("live_s"), f("live_cpu_s"), f("live_bytes"));
    let mb = |bytes: f64, s: f64| bytes / s / 1e6;
    let v = json!({
        "runs": b.runs,
        "session": {
            "gets": b.gets,
            "python_dvr": {"wall_s": py_s, "cpu_s": py_s_cpu},
            "ivr_sequential": {"wall_s": secs(seq.wall), "cpu_s": secs(seq.cpu)},
            "ivr_pipelined": {"in_flight": b.pipeline, "wall_s": secs(pipe.wall), "cpu_s": secs(pipe.cpu)},
            "wall_speedup_sequential": py_s / secs(seq.wall),
            "wall_speedup_pipelined": py_s / secs(pipe.wall),
            "cpu_ratio": py_s_cpu / secs(seq.cpu).max(1e-6),
        },
        "live": {
            "frames": b.frames,
            "python_dvr": {"wall_s": py_l, "cpu_s": py_l_cpu, "mb_s": mb(py_bytes, py_l)},
            "ivr": {"wall_s": secs(live.wall), "cpu_s": secs(live.cpu), "mb_s": mb(live_bytes as f64, secs(live.wall))},
            "wall_speedup": py_l / secs(live.wall),
            "cpu_ratio": py_l_cpu / secs(live.cpu).max(1e-6),
        },
    });
    if b.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("simulator: ivr sim dvrip in its own process; best of {} runs\n", b.runs);
    println!("scripted session: login + {} config gets + time + snapshot", b.gets);
    println!("  {:<28} {:>9} {:>9}", "", "wall s", "cpu s");
    println!("  {:<28} {:>9.3} {:>9.3}", "python-dvr", py_s, py_s_cpu);
    println!("  {:<28} {:>9.3} {:>9.3}", "ivr, one at a time", secs(seq.wall), secs(seq.cpu));
    println!("  {:<28} {:>9.3} {:>9.3}", format!("ivr, {} in flight", b.pipeline), secs(pipe.wall), secs(pipe.cpu));
    println!(
        "  wall: {:.1}x (one at a time), {:.1}x (pipelined); client cpu: {:.1}x",
        py_s / secs(seq.wall),
        py_s / secs(pipe.wall),
        py_s_cpu / secs(seq.cpu).max(1e-6)
    );
    println!("\nlive stream: {} frames of 2592x1944 H.264, unpaced, read and demuxed", b.frames);
    println!("  {:<28} {:>9} {:>9} {:>9}", "", "wall s", "cpu s", "MB/s");
    println!("  {:<28} {:>9.3} {:>9.3} {:>9.1}", "python-dvr", py_l, py_l_cpu, mb(py_bytes, py_l));
    println!(
        "  {:<28} {:>9.3} {:>9.3} {:>9.1}",
        "ivr",
        secs(live.wall),
        secs(live.cpu),
        mb(live_bytes as f64, secs(live.wall))
    );
    println!("  wall: {:.1}x; client cpu: {:.1}x", py_l / secs(live.wall), py_l_cpu / secs(live.cpu).max(1e-6));
    Ok(())
}
