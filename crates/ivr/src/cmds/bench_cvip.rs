//! `ivr bench cvip`: requests per second and latency against `ivr sim cvip`
//! (a separate process): one connection with many requests in flight, many
//! connections at once, and side by side a one-call-at-a-time client in
//! Python (xmlrpc.client over the 9-byte header) and ours doing the same.

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use cvip::Client;
use cvip::Value;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(ClapArgs)]
pub struct CvipBench {
    /// Requests per measurement.
    #[arg(long, default_value_t = 100_000)]
    requests: u32,
    /// Requests in flight on the single connection.
    #[arg(long, default_value_t = 64)]
    pipeline: u32,
    /// Connections for the many-connection run.
    #[arg(long, default_value_t = 100)]
    connections: u32,
    /// Requests in flight per connection in the many-connection run.
    #[arg(long, default_value_t = 4)]
    per_connection: u32,
    /// Sequential calls for the side-by-side with Python.
    #[arg(long, default_value_t = 5000)]
    sequential: u32,
    /// Python 3 for the side-by-side (skipped when absent).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
}

const PY_CLIENT: &str = r#"
import socket, struct, sys, time, xmlrpc.client
xmlrpc.client.Unmarshaller.dispatch["uint"] = xmlrpc.client.Unmarshaller.dispatch["int"]
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def rd(k):
    b = b""
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c: raise EOFError
        b += c
    return b
t0 = time.perf_counter()
for i in range(n):
    body = xmlrpc.client.dumps((["videoInputBrightness"],), "cviVideo.01.getProperties").encode()
    s.sendall(struct.pack(">HBHI", 0x0201, 0, (i % 32767) + 1, 9 + len(body)) + body)
    h = rd(9)
    size = struct.unpack(">I", h[5:9])[0]
    xmlrpc.client.loads(rd(size - 9).decode())
print(time.perf_counter() - t0)
"#;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn one_call(c: &Client) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let v = c.call1("cviVideo.01.getProperties", vec![Value::Array(vec!["videoInputBrightness".into()])]).await?;
    if v.as_struct().and_then(|s| s.int("videoInputBrightness")).is_none() {
        bail!("unexpected answer {v}");
    }
    Ok(t.elapsed())
}

/// `total` calls over `clients`, `inflight` at a time on each.
async fn load(clients: &[Client], inflight: u32, total: u32) -> anyhow::Result<Run> {
    let per = (total as usize).div_ceil(clients.len() * inflight as usize);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        for _ in 0..inflight {
            let c = c.clone();
            tasks.spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    lat.push(one_call(&c).await?);
                }
                anyhow::Ok(lat)
            });
        }
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let wall = start.elapsed();
    all.sort();
    Ok(Run { rate: all.len() as f64 / wall.as_secs_f64(), p50: pct(&all, 0.5), p99: pct(&all, 0.99) })
}

pub async fn run(b: CvipBench) -> anyhow::Result<()> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let exe = std::env::current_exe()?;
    let mut sim = tokio::process::Command::new(&exe)
        .args(["sim", "cvip", "--role", "device", "--common-port", "0", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting ivr sim cvip")?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("ivr sim cvip did not start on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (c, _ev) = Client::connect(&addr).await?;
    // Warm up.
    load(std::slice::from_ref(&c), 8, 2000).await?;

    let seq = load(std::slice::from_ref(&c), 1, b.sequential).await?;
    let piped = load(std::slice::from_ref(&c), b.pipeline, b.requests).await?;
    let mut many = Vec::new();
    for _ in 0..b.connections {
        many.push(Client::connect(&addr).await?.0);
    }
    let wide = load(&many, b.per_connection, b.requests).await?;
    drop(many);

    let py = tokio::process::Command::new(&b.python)
        .args(["-c", PY_CLIENT, &port.to_string(), &b.sequential.to_string()])
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .map(|secs| b.sequential as f64 / secs);
    let _ = sim.kill().await;

    if b.json {
        let r = |r: &Run| json!({"requests_per_s": r.rate.round(), "p50_us": r.p50.as_micros(), "p99_us": r.p99.as_micros()});
        println!(
            "{}",
            json!({
                "sequential": r(&seq),
                "pipelined": {"inflight": b.pipeline, "result": r(&piped)},
                "connections": {"count": b.connections, "inflight_each": b.per_connection, "result": r(&wide)},
                "python_sequential_per_s": py.map(|p| p.round()),
            })
        );
        return Ok(());
    }
    let line = |name: &str, r: &Run| {
        println!("{name:<44} {:>9.0} req/s   p50 {:>6} µs   p99 {:>6} µs", r.rate, r.p50.as_micros(), r.p99.as_micros())
    };
    println!("ivr bench cvip: cviVideo.01.getProperties against ivr sim cvip ({addr}, separate process)");
    line("one connection, one call at a time", &seq);
    line(&format!("one connection, {} in flight", b.pipeline), &piped);
    line(&format!("{} connections, {} in flight each", b.connections, b.per_connection), &wide);
    match py {
        Some(p) => {
            println!("Python xmlrpc.client, one call at a time      {p:>9.0} req/s   (ivr {:.1}× that)", seq.rate / p)
        }
        None => println!("Python side-by-side skipped ({} not found or failed)", b.python),
    }
    Ok(())
}
