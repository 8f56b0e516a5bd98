//! `ivr sim …`: simulated devices.

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use ivr_sim::clips::ClipCodec;
use ivr_sim::dvrip::SimConfig;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Subcommand)]
pub enum SimCmd {
    /// A simulated Xiongmai camera/DVR/NVR speaking DVRIP on TCP, with
    /// discovery on UDP 34569.
    Dvrip(DvripSimArgs),
    /// A simulated CVIPv2 unit: a device (camera/encoder), an NVR or a
    /// master server, on TCP 7110 with UDP ping and the common port 9990.
    Cvip(CvipSimArgs),
    /// A fleet of simulated IVTs (edge agents with one simulated channel
    /// each) connected to a cloud: a load generator.
    Ivt(IvtSimArgs),
}

#[derive(ClapArgs)]
pub struct IvtSimArgs {
    /// The cloud's device gateway, e.g. ws://127.0.0.1:8080/ivc; the nodes
    /// of a cluster separated by commas (each device tries them in turn,
    /// --provision uses the first).
    #[arg(long)]
    cloud: String,
    /// Devices in the fleet.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// login_codes are <prefix>-0, <prefix>-1, …
    #[arg(long, default_value = "sim-ivt")]
    prefix: String,
    /// Create the devices through the cloud's API first (needs the admin token).
    #[arg(long)]
    provision: bool,
    /// The cloud's admin token (for --provision).
    #[arg(long, env = "IVR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds between each device's Keepalives.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    keepalive_secs: u64,
    /// Index of the first device (to split one fleet over processes).
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Local addresses to dial from, comma-separated, used in turn (e.g.
    /// 127.0.0.2,127.0.0.3: each gives another ~28,000 ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    bind: Vec<std::net::IpAddr>,
    /// At most this many devices dialling at once.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// For a wss:// cloud: trust only the certificates in this PEM file.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// With several --cloud URLs: spread the fleet over them (device i
    /// starts at the i-th URL, then tries the rest in turn) instead of
    /// every device starting at the first.
    #[arg(long)]
    spread: bool,
    /// Worker threads (default: one a core); one when several fleets share
    /// a few cores.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

#[derive(ClapArgs)]
pub struct CvipSimArgs {
    /// TCP address for CVIP (UDP ping is answered on the same port).
    #[arg(long, default_value = "0.0.0.0:7110")]
    listen: SocketAddr,
    /// The common port (ping only, UDP and TCP), or 0 for none.
    #[arg(long, default_value_t = 9990)]
    common_port: u16,
    /// device (camera/encoder), nvr or master.
    #[arg(long, default_value = "device")]
    role: String,
    /// Video inputs (device and NVR).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    channels: u32,
    /// Video codec of streams and recordings: h264 or h265.
    #[arg(long, default_value = "h264")]
    codec: String,
    /// Raise (and clear) motion on every channel this often, in seconds
    /// (0: only on demand with cviEvent.trigger).
    #[arg(long, default_value_t = 0)]
    event_every: u64,
    /// Master server: the administrator's name.
    #[arg(long, default_value = "admin")]
    user: String,
    /// Master server: the administrator's password.
    #[arg(long, default_value = "admin", env = "CVIP_PASSWORD", hide_env_values = true)]
    password: String,
    /// NVR: hours of one-minute recordings per channel at start.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(0..=720))]
    history_hours: u32,
    /// Most sessions of each kind (streams, displays, playbacks, …).
    #[arg(long, default_value_t = 8)]
    session_limit: usize,
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
    /// The extra (sub) stream's codec when it differs: h264 or h265.
    #[arg(long)]
    sub_codec: Option<String>,
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
    /// Main-stream bitrate in bit/s (the clip padded with filler data, as a
    /// camera of that bitrate sends); 0: the bare clip.
    #[arg(long, default_value_t = 0)]
    bitrate: u64,
}

pub async fn run(cmd: SimCmd) -> anyhow::Result<()> {
    match cmd {
        SimCmd::Dvrip(a) => dvrip(a).await,
        SimCmd::Ivt(a) => ivt(a).await,
        SimCmd::Cvip(a) => cvip(a).await,
    }
}

async fn cvip(a: CvipSimArgs) -> anyhow::Result<()> {
    use ivr_sim::cvip::{CvipConfig, Role};
    let role =
        Role::parse(&a.role).ok_or_else(|| anyhow::anyhow!("--role {:?}: expected device, nvr or master", a.role))?;
    let codec = match a.codec.as_str() {
        "h264" => ClipCodec::H264,
        "h265" | "hevc" => ClipCodec::H265,
        other => bail!("--codec {other:?}: expected h264 or h265"),
    };
    let cfg = CvipConfig {
        role,
        channels: a.channels,
        codec,
        event_every: (a.event_every > 0).then(|| Duration::from_secs(a.event_every)),
        admin_user: a.user,
        admin_password: a.password,
        history_hours: a.history_hours,
        session_limit: a.session_limit.max(1),
        ..CvipConfig::default()
    };
    let common = (a.common_port != 0).then(|| SocketAddr::new(a.listen.ip(), a.common_port));
    let r = ivr_sim::cvip::start(cfg, a.listen, common)
        .await
        .with_context(|| format!("cannot listen on {} (or the common port {})", a.listen, a.common_port))?;
    let common = r.common.map(|c| format!(", common port {c}")).unwrap_or_default();
    println!(
        "ivr sim cvip: {} ({} channel(s)) listening on {} (tcp and udp ping){common}; {} recordings",
        a.role,
        a.channels,
        r.addr,
        r.unit.recordings().len()
    );
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}

async fn ivt(a: IvtSimArgs) -> anyhow::Result<()> {
    use ivr_edge::{fleet, upload};
    let first = a.cloud.split(',').next().unwrap_or_default().trim();
    let (http, rest) = if let Some(r) = first.strip_prefix("ws://") {
        ("http", r)
    } else if let Some(r) = first.strip_prefix("wss://") {
        ("https", r)
    } else {
        bail!("--cloud {first:?}: expected ws://host:port/ivc or wss://…")
    };
    let api = format!("{http}://{}/api/v1/devices", rest.split('/').next().unwrap_or_default());
    let dialer = ivr_rpc::net::Dialer::new(None, a.ca_file.clone());
    if a.provision {
        let token = a
            .admin_token
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--provision needs --admin-token (or IVR_ADMIN_TOKEN)"))?;
        let auth = format!("Bearer {token}");
        let (mut created, mut existed) = (0, 0);
        for i in a.first..a.first.saturating_add(a.count) {
            let (code, pw) = fleet::login(&a.prefix, i);
            let body =
                serde_json::json!({"login_code": code, "login_passwd": pw, "name": format!("Simulated IVT {i}")})
                    .to_string();
            let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
            let (status, reply) =
                upload::request(&dialer, "POST", &api, &headers, body.as_bytes(), 64 * 1024, Duration::from_secs(30))
                    .await?;
            match status {
                201 => created += 1,
                409 => existed += 1,
                s => bail!("provisioning {code}: HTTP {s}: {}", String::from_utf8_lossy(&reply)),
            }
        }
        println!("provisioned {created} device(s) ({existed} existed already)");
    }
    let fds = super::raise_fd_limit();
    if u64::from(a.count) + 64 > fds {
        bail!("--count {}: this process may open only {fds} files (ulimit -n); split the fleet with --first", a.count);
    }
    let cfg = fleet::FleetConfig {
        cloud_url: a.cloud.clone(),
        prefix: a.prefix.clone(),
        first: a.first,
        count: a.count,
        keepalive_secs: a.keepalive_secs,
        bind: a.bind.clone(),
        window: a.window,
        ca_file: a.ca_file.clone(),
        spread: a.spread,
    };
    println!("ivr sim ivt: {} device(s) dialling {}", a.count, a.cloud);
    let fleet = fleet::start(cfg).await.map_err(anyhow::Error::msg)?;
    let mut last = usize::MAX;
    loop {
        // Counting reads every device's status: every 2 s while they come
        // and go, every 10 s once all are in (at 16,500 devices the count
        // was ~5 % of an idle fleet's CPU).
        let every = if last == fleet.len() { 10 } else { 2 };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {
                let n = fleet::connected(&fleet);
                if n != last {
                    println!("{n}/{} connected", fleet.len());
                    last = n;
                }
            }
            r = tokio::signal::ctrl_c() => return r.context("waiting for Ctrl-C"),
        }
    }
}

async fn dvrip(a: DvripSimArgs) -> anyhow::Result<()> {
    let codec_of = |flag: &str, v: &str| match v {
        "h264" => Ok(ClipCodec::H264),
        "h265" | "hevc" => Ok(ClipCodec::H265),
        other => Err(anyhow::anyhow!("{flag} {other:?}: expected h264 or h265")),
    };
    let codec = codec_of("--codec", &a.codec)?;
    let sub_codec = a.sub_codec.as_deref().map(|c| codec_of("--sub-codec", c)).transpose()?;
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
        sub_codec,
        alive_interval: a.alive_interval,
        lock_after: a.lock_after.max(1),
        lock_for: Duration::from_secs(a.lock_secs),
        alarm_every: (a.alarm_every > 0).then(|| Duration::from_secs(a.alarm_every)),
        alarm_center: a.alarm_center,
        snapshot_raw,
        reboot_time: Duration::from_secs(a.reboot_secs),
        live_unpaced: a.unpaced_live,
        main_bitrate: (a.bitrate > 0).then_some(a.bitrate),
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
