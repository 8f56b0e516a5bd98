//! `ivr bench ivc`: the cloud at scale. Starts `ivr cloud` and fleets of
//! `ivr sim ivt` as their own processes on this machine, then measures
//! sessions held with keep-alives flowing, the cloud's RSS per session,
//! the connection rate, and API RPC round trips (HTTP → cloud → device →
//! cloud → HTTP) with their latency.

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(ClapArgs)]
pub struct IvcBench {
    /// Device sessions to open (one cloud process holds at most its
    /// open-file limit minus a few dozen).
    #[arg(long, default_value_t = 10_000)]
    pub(super) sessions: u32,
    /// Devices per `ivr sim ivt` process (each has its own open-file limit).
    #[arg(long, default_value_t = 10_000)]
    pub(super) per_fleet: u32,
    /// Loopback source addresses per fleet process (each gives ~28,000
    /// ephemeral ports toward the cloud).
    #[arg(long, default_value_t = 2)]
    pub(super) addrs_per_fleet: u8,
    /// Keepalive interval of the devices (and the cloud's expectation).
    #[arg(long, default_value_t = 30)]
    pub(super) keepalive_secs: u64,
    /// How long to hold every session with keep-alives flowing before the
    /// memory reading (default: two keep-alive intervals).
    #[arg(long)]
    pub(super) hold_secs: Option<u64>,
    /// argon2id cost for the provisioned devices' passwords. The default
    /// makes provisioning and first logins cheap so the run measures
    /// sessions, not password hashing (that rate is printed separately).
    #[arg(long, default_value = "m=64,t=1,p=1")]
    pub(super) argon2: String,
    /// RPCs are spread over this many devices.
    #[arg(long, default_value_t = 10_000)]
    pub(super) rpc_devices: u32,
    /// HTTP connections making RPC calls at once.
    #[arg(long, default_value_t = 32)]
    pub(super) concurrency: u32,
    /// Calls per request: 1 sends each as `POST /api/v1/devices/{lc}/rpc/…`;
    /// more sends them in batches through `POST /api/v1/rpc`, each to a
    /// different device (latencies are then the batch's, for each call).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) batch: u32,
    /// Seconds of RPC load.
    #[arg(long, default_value_t = 10)]
    pub(super) rpc_secs: u64,
    /// Who makes the RPC calls: `admin` (the admin token, checked in
    /// memory) or `token` (an operator API token granted every device, as
    /// a script holds one: the cloud looks it up in its store on every
    /// request, so a revoked one fails at once).
    #[arg(long, default_value = "admin", value_parser = ["admin", "token"])]
    pub(super) rpc_as: String,
    /// Logins at the default (OWASP) argon2 cost to time the cold-login
    /// rate (0: skip).
    #[arg(long, default_value_t = 200)]
    pub(super) cold_logins: u32,
    /// Cloud nodes: more than one runs a cluster on a PostgreSQL and a
    /// nats-server of its own (Debian's), measures RPC through node 1 to
    /// devices on every node, and kills the last node to time the failover.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(super) nodes: u32,
    /// With nodes: the sessions the last node holds (the one killed to
    /// time the failover), the rest spread evenly over the others; default
    /// an even share. Lets the failover of a full node (up to one
    /// process's open-file limit) be timed while the survivors have room
    /// for its devices.
    #[arg(long)]
    pub(super) failover_sessions: Option<u32>,
    /// Worker threads of each cloud node and fleet process (0: one a
    /// core each, the default of one node). With --nodes the default gives
    /// each one thread when the run starts more of them than this machine
    /// has cores: six nodes and six fleets on two cores otherwise keep 24
    /// threads waking each other. With --nodes, nats-server's GOMAXPROCS
    /// too.
    #[arg(long)]
    pub(super) threads: Option<u16>,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    pub(super) json: bool,
}

impl IvcBench {
    /// `--threads` for each of `processes` nodes and fleets (`None`: the
    /// process's default, a thread a core).
    pub(super) fn threads_for(&self, processes: u32) -> Option<u16> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        match self.threads {
            Some(0) => None,
            Some(n) => Some(n),
            None => (self.nodes > 1 && processes > cores).then_some(1),
        }
    }

    /// How many fleet processes the run starts.
    pub(super) fn fleets(&self) -> u32 {
        self.sessions.div_ceil(self.per_fleet.max(1))
    }
}

/// The `--threads N` arguments of a node or fleet (none: its default).
pub(super) fn threads_args(threads: Option<u16>) -> Vec<String> {
    threads.map(|n| vec!["--threads".to_owned(), n.to_string()]).unwrap_or_default()
}

/// A keep-alive HTTP/1.1 connection (the load generator's; responses must
/// carry Content-Length, as the cloud's JSON answers do).
pub(super) struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
    auth: String,
    host: String,
}

impl Http {
    pub(super) async fn connect(addr: &str, token: &str) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Http { stream, buf: Vec::with_capacity(4096), auth: format!("Bearer {token}"), host: addr.to_owned() })
    }

    /// One request; when the kept-alive connection was closed meanwhile
    /// (the cloud closes idle ones), once more on a new connection.
    pub(super) async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        match self.call_once(method, path, body).await {
            Err(e) if self.buf.is_empty() && e.to_string().contains("closed") => {
                self.stream =
                    TcpStream::connect(&self.host).await.with_context(|| format!("connecting to {}", self.host))?;
                self.stream.set_nodelay(true)?;
                self.call_once(method, path, body).await
            }
            r => r,
        }
    }

    async fn call_once(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.auth,
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await.map_err(|e| anyhow::anyhow!("the connection was closed: {e}"))?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).context("response head is not UTF-8")?;
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("bad status line in {head:?}"))?;
                // No Content-Length: no body (204 and the like).
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.read_more().await?;
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.map_err(|e| anyhow::anyhow!("the connection was closed: {e}"))?;
        if n == 0 {
            bail!("the cloud closed the API connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub(super) async fn json(&mut self, method: &str, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let (s, b) = self.call(method, path, body.to_string().as_bytes()).await?;
        Ok((s, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }
}

/// Resident memory of a process, bytes.
pub(super) fn rss(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the cloud's /proc status")?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// User + system CPU time of a process.
pub(super) fn cpu(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) struct Cloud {
    pub(super) child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) addr: String,
    pub(super) token: String,
}

async fn start_cloud(exe: &Path, dir: &Path, keepalive: u64, argon2: &str, extra: &[String]) -> anyhow::Result<Cloud> {
    start_node(exe, dir, &format!("127.0.0.1:{}", free_port()?), keepalive, argon2, extra, "cloud.log").await
}

/// `ivr cloud` on `addr` with data in `dir` (its log appended to
/// `dir/cloud.log`), once it answers the API.
pub(super) async fn start_cloud_at(
    exe: &Path,
    dir: &Path,
    addr: &str,
    keepalive: u64,
    argon2: &str,
) -> anyhow::Result<Cloud> {
    start_node(exe, dir, addr, keepalive, argon2, &[], "cloud.log").await
}

/// `ivr cloud` with `extra` arguments (a cluster node's), its log in
/// `dir/log`.
pub(super) async fn start_node(
    exe: &Path,
    dir: &Path,
    addr: &str,
    keepalive: u64,
    argon2: &str,
    extra: &[String],
    log: &str,
) -> anyhow::Result<Cloud> {
    let addr = addr.to_owned();
    let token = "bench-token-0123456789".to_owned();
    let log_path = dir.join(log);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let child = tokio::process::Command::new(exe)
        .args(["cloud", "--listen", &addr, "--admin-token", &token, "--argon2", argon2])
        .args(extra)
        // A bench measures capacity: the cap sits just under the open-file
        // limit (the default keeps 512 descriptors in reserve).
        .args(["--max-connections", &super::raise_fd_limit().saturating_sub(100).max(64).to_string()])
        .arg("--data")
        .arg(dir)
        .args(["--keepalive-secs", &keepalive.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting ivr cloud")?;
    let pid = child.id().context("the cloud exited at once")?;
    let t0 = Instant::now();
    loop {
        if let Ok(mut h) = Http::connect(&addr, &token).await {
            if let Ok((200, _)) = h.call("GET", "/api/v1/stats", b"").await {
                return Ok(Cloud { child, pid, addr, token });
            }
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("ivr cloud did not answer within 20 s (see {})", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn stats(h: &mut Http) -> anyhow::Result<Value> {
    match h.json("GET", "/api/v1/stats", &Value::Null).await? {
        (200, v) => Ok(v),
        (s, v) => bail!("stats: HTTP {s}: {v}"),
    }
}

/// Provisions `prefix-0 … prefix-(n-1)` over `conns` connections; returns the time taken.
pub(super) async fn provision(c: &Cloud, prefix: &str, n: u32, conns: u32) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let next = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let mut tasks = Vec::new();
    for _ in 0..conns.min(n).max(1) {
        let mut h = Http::connect(&c.addr, &c.token).await?;
        let next = next.clone();
        let prefix = prefix.to_owned();
        tasks.push(async move {
            loop {
                let i = next.get();
                if i >= n {
                    return anyhow::Ok(());
                }
                next.set(i + 1);
                let (code, pw) = ivr_edge::fleet::login(&prefix, i);
                let body = json!({"login_code": code, "login_passwd": pw, "name": format!("bench {i}")});
                match h.json("POST", "/api/v1/devices", &body).await? {
                    (201 | 409, _) => {}
                    (s, v) => bail!("provisioning {code}: HTTP {s}: {v}"),
                }
            }
        });
    }
    for r in futures_util::future::join_all(tasks).await {
        r?;
    }
    Ok(t0.elapsed())
}

/// Logs in the `cold-*` fleet of `n` devices once (a fleet process that
/// ends when all are in); returns logins per second.
async fn logins(exe: &Path, c: &Cloud, dir: &Path, h: &mut Http, n: u32, logins_before: u64) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut fleet =
        spawn_fleet(exe, &format!("ws://{}/ivc", c.addr), dir, "cold", 0, n, &["127.0.0.1".into()], 30, false, None)?;
    loop {
        let s = stats(h).await?;
        if s["sessions"].as_u64() == Some(n as u64) && s["logins"].as_u64() == Some(logins_before + n as u64) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("logins: only {} of {n} in 600 s", s["sessions"]);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let _ = fleet.kill().await;
    while stats(h).await?["sessions"].as_u64() != Some(0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(rate)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_fleet(
    exe: &Path,
    cloud: &str,
    dir: &Path,
    prefix: &str,
    first: u32,
    count: u32,
    addrs: &[String],
    keepalive: u64,
    spread: bool,
    threads: Option<u16>,
) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::File::create(dir.join(format!("fleet-{prefix}-{first}.log")))?;
    tokio::process::Command::new(exe)
        .args(["sim", "ivt", "--cloud", cloud, "--prefix", prefix])
        .args(["--first", &first.to_string(), "--count", &count.to_string()])
        .args(["--keepalive-secs", &keepalive.to_string(), "--bind", &addrs.join(","), "--window", "128"])
        .args(spread.then_some("--spread"))
        .args(threads_args(threads))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting ivr sim ivt")
}

impl IvcBench {
    /// How the RPC load sends its calls, in words (`--batch`).
    pub(super) fn batch_said(&self) -> String {
        if self.batch <= 1 {
            "one call a request".into()
        } else {
            format!("{} calls a request (POST /api/v1/rpc)", self.batch)
        }
    }

    /// Who the RPC load calls as, in words (`--rpc-as`).
    pub(super) fn rpc_as_said(&self) -> &'static str {
        if self.rpc_as == "token" {
            "an API token"
        } else {
            "the admin token"
        }
    }
}

/// The bearer the RPC load calls with (`--rpc-as`): the admin token, or
/// a new operator API token for every device made with it.
pub(super) async fn rpc_caller(c: &Cloud, rpc_as: &str) -> anyhow::Result<String> {
    if rpc_as != "token" {
        return Ok(c.token.clone());
    }
    let mut h = Http::connect(&c.addr, &c.token).await?;
    let body = json!({"name": "bench-rpc", "role": "operator", "devices": "*"}).to_string();
    let (status, reply) = h.call("POST", "/api/v1/tokens", body.as_bytes()).await?;
    if status != 201 {
        bail!("creating the bench's API token: HTTP {status}: {}", String::from_utf8_lossy(&reply));
    }
    let v: Value = serde_json::from_slice(&reply).context("the new API token's answer is not JSON")?;
    v["token"].as_str().map(str::to_owned).context("the new API token's answer has no \"token\"")
}

/// `GetNetConfig` RPC calls through `c`'s API from `concurrency` keep-alive
/// connections for `secs`, spread over devices `bench-0`, `bench-stride`, …
/// (`devices` of them), `batch` to a request (more than one: through
/// `POST /api/v1/rpc`); the latencies (µs, sorted, one per call: its
/// request's), the calls that failed, and seconds.
pub(super) async fn rpc_load(
    c: &Cloud,
    auth: &str,
    devices: u32,
    stride: u32,
    concurrency: u32,
    batch: u32,
    secs: u64,
) -> anyhow::Result<(Vec<u32>, u64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..concurrency.max(1) {
        let mut h = Http::connect(&c.addr, auth).await?;
        tasks.push(async move {
            let mut lat = Vec::with_capacity(65536);
            let mut errors = 0u64;
            let mut i = k.wrapping_mul(7919) % devices;
            let mut next = || {
                let d = i * stride;
                i = (i + 104_729) % devices;
                d
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                if batch <= 1 {
                    let path = format!("/api/v1/devices/bench-{}/rpc/GetNetConfig", next());
                    let (status, _) = h.call("POST", &path, br#"{"channel":0}"#).await?;
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    errors += u64::from(status != 200);
                    continue;
                }
                let calls: Vec<String> = (0..batch)
                    .map(|_| {
                        format!(r#"{{"device":"bench-{}","method":"GetNetConfig","params":{{"channel":0}}}}"#, next())
                    })
                    .collect();
                let body = format!(r#"{{"calls":[{}]}}"#, calls.join(","));
                let (status, answer) = h.call("POST", "/api/v1/rpc", body.as_bytes()).await?;
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                lat.extend(std::iter::repeat_n(us, batch as usize));
                let v: Value = serde_json::from_slice(&answer).unwrap_or_default();
                match v["results"].as_array() {
                    Some(r) if status == 200 && r.len() == batch as usize => {
                        errors += r.iter().filter(|r| r["status"] != 200).count() as u64
                    }
                    _ => errors += u64::from(batch),
                }
            }
            anyhow::Ok((lat, errors))
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for r in futures_util::future::join_all(tasks).await {
        let (l, e) = r?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok((lat, errors, elapsed))
}

/// The next `n` (at least one) loopback source addresses after `*next`
/// (127.0.x.y), one fleet's.
pub(super) fn loopback_addrs(next: &mut u32, n: u8) -> Vec<String> {
    (0..n.max(1))
        .map(|_| {
            *next += 1;
            format!("127.0.{}.{}", *next / 250, *next % 250 + 2)
        })
        .collect()
}

pub(super) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub async fn run(b: IvcBench) -> anyhow::Result<()> {
    if b.nodes > 1 {
        // Ctrl-C drops the run: its PostgreSQL, nats-server, nodes and
        // fleets stop with it instead of staying behind.
        return tokio::select! {
            r = super::bench_cluster::run(b) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; PostgreSQL, NATS, the nodes and fleets were stopped")),
        };
    }
    let fds = super::raise_fd_limit();
    let exe = std::env::current_exe().context("finding the ivr binary")?;
    let dir: PathBuf = std::env::temp_dir().join(format!("ivr-bench-ivc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Progress and notes on stderr, with --json too (the help says so):
    // a long run is followed as it goes, stdout keeps only the result.
    let say = |s: String| eprintln!("{s}");
    let mut out = json!({"sessions_wanted": b.sessions, "keepalive_secs": b.keepalive_secs, "fd_limit": fds});

    // Logins at the OWASP cost, on a cloud of their own.
    if b.cold_logins > 0 {
        let cdir = dir.join("cold");
        std::fs::create_dir_all(&cdir)?;
        let c = start_cloud(&exe, &cdir, 30, "m=19456,t=2,p=1", &[]).await?;
        let n = b.cold_logins;
        let t = provision(&c, "cold", n, 8).await?;
        let provision_rate = n as f64 / t.as_secs_f64();
        say(format!("provisioning at the default argon2 cost: {provision_rate:.0}/s"));
        let mut h = Http::connect(&c.addr, &c.token).await?;
        let first = logins(&exe, &c, &cdir, &mut h, n, 0).await?;
        say(format!("first logins at the default argon2 cost: {first:.0}/s"));
        let again = logins(&exe, &c, &cdir, &mut h, n, n as u64).await?;
        say(format!("repeat logins (verified before, remembered): {again:.0}/s"));
        out["argon2_default"] =
            json!({"provision_per_sec": provision_rate, "first_logins_per_sec": first, "repeat_logins_per_sec": again});
        let mut child = c.child;
        let _ = child.kill().await;
    }

    // Explicit --threads reach the node and its fleets alike.
    let threads = b.threads_for(1 + b.fleets());
    let c = start_cloud(&exe, &dir, b.keepalive_secs, &b.argon2, &threads_args(threads)).await?;
    let mut h = Http::connect(&c.addr, &c.token).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss(c.pid)?;
    let t = provision(&c, "bench", b.sessions, 16).await?;
    say(format!("provisioned {} devices in {:.1} s (argon2 {})", b.sessions, t.as_secs_f64(), b.argon2));
    let rss_provisioned = rss(c.pid)?;

    // The fleets, each on its own loopback addresses.
    let t0 = Instant::now();
    let mut fleets = Vec::new();
    let mut first = 0;
    let mut next_addr = 2u32;
    while first < b.sessions {
        let count = b.per_fleet.min(b.sessions - first);
        let addrs = loopback_addrs(&mut next_addr, b.addrs_per_fleet);
        let url = format!("ws://{}/ivc", c.addr);
        fleets.push(spawn_fleet(&exe, &url, &dir, "bench", first, count, &addrs, b.keepalive_secs, false, threads)?);
        first += count;
    }
    let mut last_print = Instant::now();
    let connected_in = loop {
        let s = stats(&mut h).await?;
        let n = s["sessions"].as_u64().unwrap_or(0);
        if n == b.sessions as u64 {
            break t0.elapsed();
        }
        for f in &mut fleets {
            if let Some(st) = f.try_wait()? {
                bail!("a fleet process exited ({st}); see {}", dir.display());
            }
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            say(format!("  {n}/{} sessions", b.sessions));
            last_print = Instant::now();
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("only {n} of {} sessions after 900 s", b.sessions);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let conn_rate = b.sessions as f64 / connected_in.as_secs_f64();
    say(format!("{} sessions in {:.1} s: {conn_rate:.0} connections/s", b.sessions, connected_in.as_secs_f64()));

    let hold = Duration::from_secs(b.hold_secs.unwrap_or(2 * b.keepalive_secs));
    let before = stats(&mut h).await?;
    tokio::time::sleep(hold).await;
    let after = stats(&mut h).await?;
    let rss_held = rss(c.pid)?;
    let per_session = rss_held.saturating_sub(rss_provisioned) as f64 / b.sessions as f64;
    let dropped = after["sessions"].as_u64().unwrap_or(0) != b.sessions as u64
        || after["sessions_expired"] != before["sessions_expired"]
        || after["sessions_closed_by_rule"] != before["sessions_closed_by_rule"];
    say(format!(
        "held {} sessions for {} s with keep-alives every {} s: cloud RSS {:.1} MiB ({:.1} MiB idle, {:.1} MiB provisioned) = {:.2} KiB per session{}",
        after["sessions"],
        hold.as_secs(),
        b.keepalive_secs,
        rss_held as f64 / 1048576.0,
        rss_idle as f64 / 1048576.0,
        rss_provisioned as f64 / 1048576.0,
        per_session / 1024.0,
        if dropped { " — SESSIONS WERE LOST" } else { "" }
    ));
    out["sessions"] = json!({
        "held": after["sessions"], "connect_secs": connected_in.as_secs_f64(), "connections_per_sec": conn_rate,
        "rss_idle": rss_idle, "rss_provisioned": rss_provisioned, "rss_held": rss_held,
        "rss_per_session": per_session, "hold_secs": hold.as_secs(), "lost": dropped,
    });

    // RPC round trips through the API.
    let devices = b.rpc_devices.min(b.sessions).max(1);
    let auth = rpc_caller(&c, &b.rpc_as).await?;
    let cpu0 = cpu(c.pid);
    let (lat, errors, elapsed) = rpc_load(&c, &auth, devices, 1, b.concurrency, b.batch, b.rpc_secs).await?;
    let cloud_cpu = cpu(c.pid).saturating_sub(cpu0);
    let rps = lat.len() as f64 / elapsed;
    let (p50, p99, p999) = (percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 0.999));
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    let cpu_per = cloud_cpu.as_secs_f64() * 1e6 / lat.len().max(1) as f64;
    say(format!(
        "RPC GetNetConfig over {devices} devices, {} connections, {}, as {}: {rps:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.1} ms, {errors} errors; cloud CPU {cpu_per:.0} µs per call",
        b.concurrency,
        b.batch_said(),
        b.rpc_as_said()
    ));
    out["rpc"] = json!({
        "as": b.rpc_as, "devices": devices, "concurrency": b.concurrency, "batch": b.batch, "calls": lat.len(), "per_sec": rps,
        "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": max, "errors": errors, "cloud_cpu_us_per_call": cpu_per,
    });
    let final_stats = stats(&mut h).await?;
    out["cloud_stats"] = final_stats;
    for mut f in fleets {
        let _ = f.kill().await;
    }
    let mut child = c.child;
    let _ = child.kill().await;
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
