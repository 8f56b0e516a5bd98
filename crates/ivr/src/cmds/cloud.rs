//! `ivr cloud`: the video cloud.

use anyhow::Context;
use clap::Args as ClapArgs;
use ivr_cloud::{Cloud, CloudConfig, ConnLimits, LiveConfig, Rtmp, SqlStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Option<CloudCmd>,
    /// HTTP address (the device gateway is at /ivc, the API under /api/v1).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data directory: the SQLite database, pictures, the admin token.
    #[arg(long, default_value = "ivr-data")]
    pub data: PathBuf,
    /// The API's admin token. Without it (or IVR_ADMIN_TOKEN), one is
    /// generated, stored in the data directory and printed once.
    #[arg(long, env = "IVR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Base URL devices use for uploads (default: http://<listen>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// The Keepalive interval devices use; offline after three missed.
    #[arg(long, default_value_t = 30)]
    pub keepalive_secs: u64,
    /// argon2id cost of new device passwords, `m=<KiB>,t=<passes>,p=<lanes>`
    /// (stored hashes keep their own). The default is OWASP's.
    #[arg(long, default_value = "m=19456,t=2,p=1")]
    pub argon2: ivr_cloud::HashCost,
    /// How long a device may take to answer the cloud (rule 3). The
    /// protocol says 20 s; shorter only for tests.
    #[arg(long, default_value_t = 20_000, hide = true)]
    pub response_timeout_ms: u64,
    /// Serve HTTPS (devices dial wss://…/ivc) with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Run the cloud's own RTMP ingest here (live view): devices publish to
    /// it with a stream key the cloud makes per request, e.g. 0.0.0.0:1935.
    #[arg(long, conflicts_with = "rtmp_url")]
    pub rtmp_listen: Option<SocketAddr>,
    /// The ingest's address as devices reach it (default:
    /// rtmp://<host of --public-url>:<port of --rtmp-listen>/live).
    #[arg(long, requires = "rtmp_listen")]
    pub rtmp_public: Option<String>,
    /// Point devices at an external RTMP server instead
    /// (rtmp://host[:port]/app); they publish <app>/<login_code>-<channel>.
    #[arg(long)]
    pub rtmp_url: Option<String>,
    /// Seconds a live stream outlives its last viewer before the cloud
    /// sends RTMPStopPublish.
    #[arg(long, default_value_t = 15)]
    pub live_grace_secs: u64,
    /// Offer an H.264 rendition of live streams (quality `h264`) for
    /// browsers that cannot decode H.265: up to N at once, each an ffmpeg
    /// process (Debian's ffmpeg with libx264) re-encoding the main stream
    /// to at most 720 lines. `--transcode` alone: 2. Needs --rtmp-listen.
    #[arg(long, num_args = 0..=1, default_missing_value = "2", default_value_t = 0, requires = "rtmp_listen")]
    pub transcode: usize,
    /// Keep stored recordings under this size (e.g. 500G, 20M, 1000000);
    /// the oldest segments are deleted first.
    #[arg(long, value_parser = parse_bytes)]
    pub recordings_max_bytes: Option<u64>,
    /// Open connections (HTTP, WebSocket, RTMP) past which new ones are
    /// closed at once, logged (default: the open-file limit less 512).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// The last places under --max-connections kept for the admin API
    /// (/api/…), so it answers while devices fill the rest.
    #[arg(long, default_value_t = 32)]
    pub api_reserve: usize,
    /// Seconds a client has to send a request's headers (slowloris).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay silent both ways before it is closed
    /// (never less than four Keepalive intervals).
    #[arg(long, default_value_t = 120)]
    pub idle_timeout_secs: u64,
    /// Delete events older than this many days (0 keeps them for ever).
    #[arg(long, default_value_t = 90)]
    pub events_max_age_days: u32,
    /// Keep at most this many events, the oldest deleted first (0: no cap).
    #[arg(long, default_value_t = 5_000_000)]
    pub events_max_rows: u64,
    /// Where the state is kept: `sqlite` (a file in --data, the default) or
    /// `postgres://user[:password]@host[:port]/database`, which every node
    /// of a cluster shares.
    #[arg(long, env = "IVR_STORE", hide_env_values = true, default_value = "sqlite")]
    pub store: String,
    /// The cluster's bus, `nats://host:port`: nodes hand each other
    /// requests for the devices they hold, events and session takeovers.
    /// Needs --store postgres://… (and every node's --data on one shared
    /// directory, for recordings and pictures).
    #[arg(long)]
    pub bus: Option<String>,
    /// This node's name in a cluster: letters, digits, `-` and `_` (default:
    /// `local`). Each node of a cluster needs its own.
    #[arg(long, default_value = "local")]
    pub node_id: String,
    /// Which recordings the start compares with the index: `recent`, the day
    /// folders changed since the last check (what a crash can have left),
    /// or `full`, every file and every row (after restoring a backup of the
    /// disk or the index, or changing files by hand).
    #[arg(long, value_enum, default_value_t = Reconcile::Recent)]
    pub reconcile: Reconcile,
    /// Worker threads (default: one a core). Fewer when the node shares
    /// the machine: several nodes on a few cores spend less waking each
    /// other's threads with one each (docs/BENCHMARKS.md, cluster).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

/// `--reconcile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reconcile {
    Recent,
    Full,
}

/// What `ivr cloud` does besides running the cloud.
#[derive(clap::Subcommand)]
pub enum CloudCmd {
    /// Console users: add the first admin, list, change passwords, delete.
    #[command(subcommand)]
    Users(super::users::UsersCmd),
    /// Calls an IVT method on many devices of a running cloud through its
    /// API (`POST /api/v1/rpc`, in batches), with a progress bar; exits 1
    /// when any call failed.
    Call(super::cloud_call::CallArgs),
}

/// `1000`, `20K`, `20M`, `500G`, `2T` (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: a size like 1000, 20M, 500G or 2T")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?}: a size like 1000, 20M, 500G or 2T"))?;
    n.checked_mul(mult).filter(|n| *n > 0).ok_or_else(|| format!("{s:?}: out of range"))
}

impl Args {
    /// The defaults, on `listen` with data in `data`.
    pub fn new(listen: SocketAddr, data: PathBuf) -> Self {
        Args {
            cmd: None,
            listen,
            data,
            admin_token: None,
            public_url: None,
            keepalive_secs: 30,
            argon2: ivr_cloud::HashCost::default(),
            response_timeout_ms: 20_000,
            tls_cert: None,
            tls_key: None,
            rtmp_listen: None,
            rtmp_public: None,
            rtmp_url: None,
            live_grace_secs: 15,
            transcode: 0,
            recordings_max_bytes: None,
            max_connections: None,
            api_reserve: 32,
            header_timeout_secs: 10,
            idle_timeout_secs: 120,
            events_max_age_days: 90,
            events_max_rows: 5_000_000,
            store: "sqlite".into(),
            bus: None,
            node_id: "local".into(),
            reconcile: Reconcile::Recent,
            threads: None,
        }
    }
}

/// The shortest admin token taken.
const MIN_ADMIN_TOKEN: usize = 16;

/// The admin token: given, stored from an earlier run, or new (created
/// 0600 with O_EXCL, so it is never readable by others, not even briefly,
/// and printed once). Never a default; never shorter than 16 characters.
pub fn admin_token(data: &Path, given: Option<String>) -> anyhow::Result<(String, bool)> {
    if let Some(t) = given {
        let t = t.trim().to_owned();
        anyhow::ensure!(
            t.chars().count() >= MIN_ADMIN_TOKEN,
            "--admin-token / IVR_ADMIN_TOKEN: at least {MIN_ADMIN_TOKEN} characters (this one has {}); leave it out and one is generated",
            t.chars().count()
        );
        return Ok((t, false));
    }
    let path = data.join("admin_token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        anyhow::ensure!(
            t.chars().count() >= MIN_ADMIN_TOKEN,
            "{}: the stored admin token is shorter than {MIN_ADMIN_TOKEN} characters; delete the file and a new one is generated",
            path.display()
        );
        return Ok((t, false));
    }
    private_dir(data)?;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("reading /dev/urandom for the admin token")?;
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, t.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((t, true))
}

/// Creates `dir` if needed and makes it 0700 (the database, pictures,
/// recordings and the token are nobody else's business).
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}

pub async fn start(a: &Args) -> anyhow::Result<(Arc<Cloud<SqlStore>>, tokio::net::TcpListener, String, bool)> {
    // Listen first: a start that cannot bind must not make (and lose) a token.
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", a.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if a.tls_cert.is_some() { "https" } else { "http" };
    let public_url = a.public_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
    let rtmp_listener = match a.rtmp_listen {
        Some(l) => Some(
            tokio::net::TcpListener::bind(l).await.with_context(|| format!("--rtmp-listen: cannot listen on {l}"))?,
        ),
        None => None,
    };
    if a.transcode > 0 {
        // Say it now, not when the first viewer asks.
        let ok = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-encoders"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("libx264"))
            .context("--transcode: ffmpeg is not installed (apt install ffmpeg)")?;
        if !ok {
            anyhow::bail!("--transcode: this ffmpeg has no libx264 encoder (Debian's ffmpeg has)");
        }
    }
    let (token, new) = admin_token(&a.data, a.admin_token.clone())?;
    private_dir(&a.data)?;
    if a.node_id.is_empty()
        || a.node_id.len() > 64
        || !a.node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        anyhow::bail!("--node-id {:?}: 1 to 64 letters, digits, '-' or '_'", a.node_id);
    }
    let store = if a.store == "sqlite" {
        if a.bus.is_some() {
            anyhow::bail!("--bus joins nodes that share one database: give --store postgres://…");
        }
        SqlStore::open(&a.data).with_context(|| format!("opening the store in {}", a.data.display()))?
    } else if a.store.starts_with("postgres://") || a.store.starts_with("postgresql://") {
        SqlStore::postgres(&a.store).await.context("--store: opening the PostgreSQL store")?
    } else {
        anyhow::bail!("--store {:?}: `sqlite` or postgres://user[:password]@host[:port]/database", a.store);
    };
    let rtmp = match (&rtmp_listener, &a.rtmp_url) {
        (Some(l), _) => {
            let port = l.local_addr()?.port();
            let base = match &a.rtmp_public {
                Some(u) => check_rtmp_url("--rtmp-public", u)?,
                None => format!("rtmp://{}:{port}/live", url_host(&public_url)),
            };
            Rtmp::Ingest { base }
        }
        (None, Some(u)) => Rtmp::External { url: check_rtmp_url("--rtmp-url", u)? },
        (None, None) => Rtmp::Off,
    };
    let cfg = CloudConfig {
        keepalive: Duration::from_secs(a.keepalive_secs.clamp(1, 3600)),
        hash_cost: a.argon2,
        response_timeout: Duration::from_millis(a.response_timeout_ms.max(1)),
        live: LiveConfig {
            rtmp,
            grace: Duration::from_secs(a.live_grace_secs.max(1)),
            transcode: a.transcode,
            ..LiveConfig::default()
        },
        recordings_max_bytes: a.recordings_max_bytes,
        limits: ConnLimits {
            max_connections: a.max_connections.unwrap_or_else(ivr_cloud::default_max_connections).max(1),
            api_reserve: a.api_reserve,
            header_timeout: Duration::from_secs(a.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(a.idle_timeout_secs.max(1)),
        },
        events_max_age_days: a.events_max_age_days,
        events_max_rows: a.events_max_rows,
        node_id: a.node_id.clone(),
        ..CloudConfig::new(token.clone(), public_url, a.data.clone())
    };
    let cloud = Cloud::new(Arc::new(store), cfg);
    if let Some(bus) = &a.bus {
        cloud.join_bus(bus).await.map_err(anyhow::Error::msg)?;
    }
    // No session survives a restart: whatever the store says is online is not.
    let stale = cloud.reset_sessions().await.context("marking devices offline at start")?;
    if stale > 0 {
        println!("{stale} device(s) were still marked online from the last run (it did not stop cleanly): now offline");
    }
    if let Some(l) = rtmp_listener {
        tokio::spawn(ivr_cloud::serve_rtmp(cloud.clone(), l));
    }
    Ok((cloud, listener, token, new))
}

/// The host of `http[s]://host[:port]/…` (brackets kept for IPv6).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |x| x.1);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => &hostport[..i],
        _ => hostport,
    }
}

fn check_rtmp_url(flag: &str, u: &str) -> anyhow::Result<String> {
    let u = u.trim_end_matches('/');
    match u.strip_prefix("rtmp://") {
        Some(rest) if rest.split_once('/').is_some_and(|(h, app)| !h.is_empty() && !app.is_empty()) => Ok(u.to_owned()),
        _ => anyhow::bail!("{flag} {u:?}: expected rtmp://host[:port]/app"),
    }
}

/// Disk and index made to agree before anything is served; says what it
/// repaired.
pub async fn reconcile(cloud: &Cloud<SqlStore>, how: Reconcile) -> anyhow::Result<()> {
    // A spinner on a terminal once the pass has taken a second (a full
    // pass over millions of segments takes minutes).
    let began = std::time::Instant::now();
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} reconciling recordings: {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let shown = std::sync::atomic::AtomicBool::new(false);
    let progress = |c: &ivr_cloud::Checked| {
        if !shown.load(std::sync::atomic::Ordering::Relaxed) {
            if began.elapsed() < std::time::Duration::from_secs(1) {
                return;
            }
            shown.store(true, std::sync::atomic::Ordering::Relaxed);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_message(format!("{}/{} day folders, {} files, {} rows", c.days_checked, c.days, c.files, c.rows));
        bar.tick();
    };
    let checked = cloud.reconcile_showing(how == Reconcile::Full, &progress).await;
    bar.finish_and_clear();
    let (repair, seen) = checked.context("reconciling recordings with the index")?;
    if seen.secs >= 1.0 || seen.full && seen.days > 0 {
        println!(
            "recordings checked{}: {} of {} day folder(s), {} file(s), {} row(s) on their own, in {:.1} s",
            if seen.full { " (all)" } else { " (changed since the last check)" },
            seen.days_checked,
            seen.days,
            seen.files,
            seen.rows,
            seen.secs
        );
    }
    if !repair.is_empty() {
        println!(
            "recordings repaired: {} file(s) indexed, {} file(s) removed (half-written or of no session), {} index row(s) without a file removed",
            repair.indexed, repair.removed_files, repair.removed_rows
        );
    }
    Ok(())
}

fn cloud_rtmp(c: &Cloud<SqlStore>) -> Rtmp {
    c.config().live.rtmp.clone()
}

pub async fn run(mut a: Args) -> anyhow::Result<()> {
    match a.cmd.take() {
        Some(CloudCmd::Users(u)) => return super::users::run(u).await,
        Some(CloudCmd::Call(c)) => return super::cloud_call::run(c).await,
        None => {}
    }
    let fds = super::raise_fd_limit();
    // Read the certificate first: a bad file is an error before anything listens.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(ivr_rpc::net::server_config(cert, key).context("--tls-cert/--tls-key")?),
        _ => None,
    };
    let (cloud, listener, token, new) = start(&a).await?;
    let addr = listener.local_addr()?;
    let (http, ws) = if tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    println!(
        "ivr cloud: {http}://{addr}/ (devices dial {ws}://{addr}/ivc), data in {}; up to ~{} device sessions (open-file limit {fds})",
        a.data.display(),
        fds.saturating_sub(64)
    );
    reconcile(&cloud, a.reconcile).await?;
    match &cloud_rtmp(&cloud) {
        Rtmp::Ingest { base } => println!("live view: the cloud's RTMP ingest; devices publish to {base}/<key>"),
        Rtmp::External { url } => println!("live view: devices publish to the external RTMP server {url}"),
        Rtmp::Off => println!("live view: off (--rtmp-listen 0.0.0.0:1935 turns it on)"),
    }
    if new {
        println!("admin token (shown once; stored in {}): {token}", a.data.join("admin_token").display());
    } else if a.admin_token.is_none() {
        println!("admin token: the one in {} (delete the file for a new one)", a.data.join("admin_token").display());
    }
    warn_if_exposed(&a, addr);
    let serving = {
        let cloud = cloud.clone();
        async move {
            match tls {
                Some(tls) => ivr_cloud::serve_tls(cloud, listener, tls).await,
                None => ivr_cloud::serve(cloud, listener).await,
            }
        }
    };
    let why = tokio::select! {
        r = serving => return r.context("serving"),
        why = stop_signal() => why?,
    };
    stop(&cloud, why).await;
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM, named.
pub async fn stop_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("waiting for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|_| "SIGINT").context("waiting for Ctrl-C"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

/// A clean stop: every device session closed, each marked offline with why.
pub async fn stop(cloud: &Cloud<SqlStore>, signal: &str) {
    let n = cloud.sessions();
    cloud.shutdown(&format!("the cloud stopped ({signal})"), Duration::from_secs(3)).await;
    eprintln!("ivr cloud: stopped on {signal}; {n} device session(s) closed and marked offline");
}

/// Says so when the setup is one an attacker would like: the API and
/// device passwords over plain HTTP on a public address, or a weak argon2.
fn warn_if_exposed(a: &Args, addr: SocketAddr) {
    if a.tls_cert.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "cloud: plain HTTP on a non-loopback address: device passwords and the admin token cross the network in clear; use --tls-cert/--tls-key or a TLS proxy");
        eprintln!("warning: plain HTTP on {addr}: device passwords and the admin token cross the network in clear (use --tls-cert/--tls-key or a TLS proxy)");
    }
    let d = ivr_cloud::HashCost::default();
    if a.argon2.m_kib < d.m_kib || a.argon2.t * a.argon2.m_kib < d.t * d.m_kib {
        eprintln!(
            "warning: --argon2 {} is weaker than OWASP's minimum ({d}): stolen password hashes are cheaper to crack",
            a.argon2
        );
    }
}
