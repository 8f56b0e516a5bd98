//! `ivr bench …`: side-by-side measurements against the tools people use
//! today, in one run, on this machine.

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use dvrip::client::{Client, ClientConfig, SocketMode};
use dvrip::media::FrameKind;
use dvrip::messages::StreamType;
use ivr_sim::dvrip::SimConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// The Rust client vs python-dvr against the same simulator: a scripted
    /// session (login, N config gets, time, snapshot) and live-stream
    /// throughput (read and demuxed).
    Dvrip(DvripBench),
}

#[derive(ClapArgs)]
pub struct DvripBench {
    /// Python with python-dvr installed (scripts/test.sh makes one).
    #[arg(long, default_value = "~/.cache/ivr/venvs/pydvr/bin/python")]
    python: String,
    /// Config gets in the scripted session.
    #[arg(long, default_value_t = 1000)]
    gets: u32,
    /// Live frames to read.
    #[arg(long, default_value_t = 2000)]
    frames: u64,
    /// Runs of each side (the best is reported).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    #[arg(long)]
    json: bool,
}

const PYDVR_SCRIPT: &str = include_str!("bench_pydvr.py");

pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Dvrip(b) => dvrip(b).await,
    }
}

async fn rust_session(addr: &str, gets: u32) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let c = Client::connect(ClientConfig::new(addr, "admin", "bench")).await?;
    for _ in 0..gets {
        let v = c.config_get("General.General").await?;
        if v["FontSize"] != 24 {
            bail!("unexpected reply {v}");
        }
    }
    c.time().await?;
    let jpeg = c.snapshot(0).await?;
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        bail!("snapshot is not a JPEG");
    }
    c.logout().await?;
    Ok(t0.elapsed())
}

async fn rust_live(addr: &str, frames: u64) -> anyhow::Result<(Duration, u64)> {
    let c = Client::connect(ClientConfig::new(addr, "admin", "bench")).await?;
    let t0 = Instant::now();
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
    let took = t0.elapsed();
    s.stop().await?;
    c.logout().await?;
    Ok((took, bytes))
}

fn expand(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_owned(),
    }
}

async fn dvrip(b: DvripBench) -> anyhow::Result<()> {
    let cfg = SimConfig { password: "bench".into(), live_unpaced: true, ..SimConfig::default() };
    let sim = ivr_sim::dvrip::start(cfg, "127.0.0.1:0".parse()?, None).await?;
    let addr = sim.addr.to_string();
    let python = expand(&b.python);
    let script = std::env::temp_dir().join(format!("ivr-bench-pydvr-{}.py", std::process::id()));
    std::fs::write(&script, PYDVR_SCRIPT).context("writing the python-dvr script")?;

    let mut rust_s = Duration::MAX;
    let mut rust_l = (Duration::MAX, 0u64);
    let mut py: Option<Value> = None;
    for _ in 0..b.runs {
        rust_s = rust_s.min(rust_session(&addr, b.gets).await?);
        let l = rust_live(&addr, b.frames).await?;
        if l.0 < rust_l.0 {
            rust_l = l;
        }
        let out = tokio::process::Command::new(&python)
            .arg(&script)
            .args(["127.0.0.1", &sim.addr.port().to_string(), "bench", &b.gets.to_string(), &b.frames.to_string()])
            .output()
            .await
            .with_context(|| format!("running {python} (install python-dvr there, or pass --python)"))?;
        if !out.status.success() {
            bail!("python-dvr run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("python-dvr output")?;
        let better = match &py {
            None => true,
            Some(p) => v["session_s"].as_f64() < p["session_s"].as_f64(),
        };
        if better {
            py = Some(v);
        }
    }
    let _ = std::fs::remove_file(&script);
    let py = py.context("no python-dvr run")?;
    let py_session = py["session_s"].as_f64().unwrap_or(f64::NAN);
    let py_live = py["live_s"].as_f64().unwrap_or(f64::NAN);
    let py_bytes = py["live_bytes"].as_f64().unwrap_or(f64::NAN);
    let rs = rust_s.as_secs_f64();
    let rl = rust_l.0.as_secs_f64();
    let mb = |bytes: f64, s: f64| bytes / s / 1e6;
    let v = json!({
        "session": {"gets": b.gets, "ivr_s": rs, "python_dvr_s": py_session, "speedup": py_session / rs},
        "live": {"frames": b.frames, "ivr_mb_s": mb(rust_l.1 as f64, rl), "python_dvr_mb_s": mb(py_bytes, py_live),
                 "ivr_fps": b.frames as f64 / rl, "python_dvr_fps": b.frames as f64 / py_live,
                 "speedup": mb(rust_l.1 as f64, rl) / mb(py_bytes, py_live)},
        "runs": b.runs,
    });
    if b.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("scripted session (login + {} config gets + time + snapshot), best of {}:", b.gets, b.runs);
        println!("  ivr        {:>8.3} s", rs);
        println!("  python-dvr {:>8.3} s", py_session);
        println!("  ivr is {:.1}x faster", py_session / rs);
        println!("live stream ({} frames of 2592x1944 H.264, unpaced), read and demuxed:", b.frames);
        println!("  ivr        {:>8.1} MB/s  {:>8.0} frames/s", mb(rust_l.1 as f64, rl), b.frames as f64 / rl);
        println!("  python-dvr {:>8.1} MB/s  {:>8.0} frames/s", mb(py_bytes, py_live), b.frames as f64 / py_live);
        println!("  ivr is {:.1}x faster", mb(rust_l.1 as f64, rl) / mb(py_bytes, py_live));
    }
    Ok(())
}
