//! `ivr sim …`: simulated devices.

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use ivr_sim::clips::Codec;
use ivr_sim::dvrip::SimConfig;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Subcommand)]
pub enum SimCmd {
    /// A simulated Xiongmai camera/DVR/NVR speaking DVRIP on TCP, with
    /// discovery on UDP 34569.
    Dvrip(DvripSimArgs),
}

#[derive(ClapArgs)]
pub struct DvripSimArgs {
    /// TCP address to listen on.
    #[arg(long, default_value = "0.0.0.0:34567")]
    listen: SocketAddr,
    /// Admin user name.
    #[arg(long, default_value = "admin")]
    user: String,
    /// Admin password (empty, as shipped by the vendor).
    #[arg(long, default_value = "")]
    password: String,
    /// Video channels (1: an IPC; more: an NVR).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    channels: u32,
    /// Video codec of every stream and recording: h264 or h265.
    #[arg(long, default_value = "h264")]
    codec: String,
    /// UDP address for discovery (1530/1532), or `off`.
    #[arg(long, default_value = "0.0.0.0:34569")]
    discovery: String,
    /// Raise a motion alarm every this many seconds (0: only on demand).
    #[arg(long, default_value_t = 0)]
    alarm_every: u64,
    /// Push alarms to this alarm center (host:port), as if configured in
    /// NetWork.AlarmServer.
    #[arg(long)]
    alarm_center: Option<String>,
    /// Snapshot form: `framed` (0x1FE picture, several packets) or `raw` JPEG.
    #[arg(long, default_value = "framed")]
    snapshot: String,
    /// AliveInterval announced at login (seconds); sessions silent for
    /// three intervals are dropped.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=3600))]
    alive_interval: u32,
    /// Failed logins before the user is locked.
    #[arg(long, default_value_t = 5)]
    lock_after: u32,
    /// How long a locked user stays locked (seconds).
    #[arg(long, default_value_t = 1800)]
    lock_secs: u64,
    /// How long a reboot keeps the device away (seconds).
    #[arg(long, default_value_t = 3)]
    reboot_secs: u64,
    /// Send live streams as fast as the client reads (for benchmarks).
    #[arg(long)]
    unpaced_live: bool,
}

pub async fn run(cmd: SimCmd) -> anyhow::Result<()> {
    match cmd {
        SimCmd::Dvrip(a) => dvrip(a).await,
    }
}

async fn dvrip(a: DvripSimArgs) -> anyhow::Result<()> {
    let codec = match a.codec.as_str() {
        "h264" => Codec::H264,
        "h265" | "hevc" => Codec::H265,
        other => bail!("--codec {other:?}: expected h264 or h265"),
    };
    let snapshot_raw = match a.snapshot.as_str() {
        "raw" => true,
        "framed" => false,
        other => bail!("--snapshot {other:?}: expected framed or raw"),
    };
    let discovery = match a.discovery.as_str() {
        "off" => None,
        s => Some(s.parse::<SocketAddr>().with_context(|| format!("--discovery {s:?} is not an address"))?),
    };
    if let Some(ac) = &a.alarm_center {
        if !ac.contains(':') {
            bail!("--alarm-center {ac:?}: expected host:port");
        }
    }
    let cfg = SimConfig {
        user: a.user,
        password: a.password,
        channels: a.channels,
        device_type: if a.channels == 1 { "IPC".into() } else { "NVR".into() },
        codec,
        alive_interval: a.alive_interval,
        lock_after: a.lock_after.max(1),
        lock_for: Duration::from_secs(a.lock_secs),
        alarm_every: (a.alarm_every > 0).then(|| Duration::from_secs(a.alarm_every)),
        alarm_center: a.alarm_center,
        snapshot_raw,
        reboot_time: Duration::from_secs(a.reboot_secs),
        live_unpaced: a.unpaced_live,
        ..SimConfig::default()
    };
    let running = ivr_sim::dvrip::start(cfg, a.listen, discovery)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let disc = running.discovery_addr.map(|d| format!(", discovery on udp {d}")).unwrap_or_default();
    println!(
        "ivr sim dvrip: {} channel(s) listening on {}{disc} ({} recordings on disk)",
        running.sim.config().channels,
        running.addr,
        running.sim.recordings().len()
    );
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}
