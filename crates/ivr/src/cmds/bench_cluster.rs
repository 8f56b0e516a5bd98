//! `ivr bench ivc --nodes N`: the cloud as a cluster. Starts a PostgreSQL
//! and a nats-server of its own (Debian's, on loopback ports, data in a
//! temporary folder), N `ivr cloud` nodes on them sharing one data
//! directory, and fleets of `ivr sim ivt` (one per node it starts on, each
//! device knowing every node). Measures sessions held with keep-alives
//! flowing (RSS of all nodes per session), the connection rate, PostgreSQL
//! transactions a second, RPC round trips through node 1 to devices on
//! every node, and how long the devices of a node killed with SIGKILL take
//! to be back online on the others.

use super::bench_ivc::{
    cpu, free_port, loopback_addrs, percentile, provision, rpc_caller, rpc_load, rss, spawn_fleet, start_node, stats,
    threads_args, Cloud, Http, IvcBench,
};
use anyhow::{bail, Context};
use serde_json::json;
use std::time::{Duration, Instant};

/// Sessions open on every node now (a node that does not answer counts 0).
async fn sessions(conns: &mut [Http]) -> Vec<u64> {
    let mut out = Vec::with_capacity(conns.len());
    for h in conns.iter_mut() {
        out.push(match stats(h).await {
            Ok(s) => s["sessions"].as_u64().unwrap_or(0),
            Err(_) => 0,
        });
    }
    out
}

/// Sessions per node: `last` on the last one (the node killed for the
/// failover) and the rest spread evenly, or all even.
fn shares(sessions: u32, nodes: usize, last: Option<u32>) -> anyhow::Result<Vec<u32>> {
    let n = nodes as u32;
    let (rest, last) = match last {
        None => (sessions - sessions / n, sessions / n),
        Some(v) if v > sessions => bail!("--failover-sessions {v} is more than --sessions {sessions}"),
        Some(v) => (sessions - v, v),
    };
    let others = n - 1;
    let mut out: Vec<u32> = (0..others).map(|i| rest / others + u32::from(i < rest % others)).collect();
    out.push(last);
    Ok(out)
}

pub async fn run(b: IvcBench) -> anyhow::Result<()> {
    let fds = super::raise_fd_limit();
    let exe = std::env::current_exe().context("finding the ivr binary")?;
    let dir = std::env::temp_dir().join(format!("ivr-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Declared first, dropped last: the folder goes after the processes
    // using it, however the run ends (an error, Ctrl-C).
    let _remove = RemoveOnDrop(dir.clone());
    // Progress and notes on stderr, with --json too (the help says so):
    // a long run is followed as it goes, stdout keeps only the result.
    let say = |s: String| eprintln!("{s}");
    let n = b.nodes as usize;
    let pg = ivr_testkit::services::Postgres::try_start().map_err(anyhow::Error::msg)?;
    // nats-server gets the nodes' and fleets' thread count (Go's
    // GOMAXPROCS): with one thread it hands a message from the publisher's
    // connection to the subscriber's without waking a second thread, 20-30 %
    // less of its CPU a call on this machine (docs/BENCHMARKS.md).
    let threads = b.threads_for(b.nodes + b.fleets());
    let nats = ivr_testkit::services::Nats::try_start_with(threads).map_err(anyhow::Error::msg)?;
    say(format!("PostgreSQL on :{}, nats-server on :{}", pg.port, nats.port));
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let mut nodes: Vec<Cloud> = Vec::with_capacity(n);
    if let Some(t) = threads {
        say(format!(
            "{n} nodes, {} fleet processes and nats-server, {t} worker thread(s) each (--threads; GOMAXPROCS for nats-server)",
            b.fleets()
        ));
    }
    for i in 0..n {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let extra = vec![
            "--store".into(),
            pg.url(),
            "--bus".into(),
            nats.url(),
            "--node-id".into(),
            format!("n{}", i + 1),
            "--public-url".into(),
            format!("http://{addr}"),
        ]
        .into_iter()
        .chain(threads_args(threads))
        .collect::<Vec<String>>();
        nodes.push(
            start_node(&exe, &data, &addr, b.keepalive_secs, &b.argon2, &extra, &format!("node-{}.log", i + 1)).await?,
        );
    }
    let mut conns = Vec::with_capacity(n);
    for c in &nodes {
        conns.push(Http::connect(&c.addr, &c.token).await?);
    }
    let rss_of = |nodes: &[Cloud]| -> anyhow::Result<u64> { nodes.iter().map(|c| rss(c.pid)).sum() };
    let rss_idle = rss_of(&nodes)?;
    let t = provision(&nodes[0], "bench", b.sessions, 16).await?;
    say(format!("provisioned {} devices through node 1 in {:.1} s (argon2 {})", b.sessions, t.as_secs_f64(), b.argon2));
    let rss_provisioned = rss_of(&nodes)?;

    // Even shares: fleets of --per-fleet devices, each spread over every
    // node (device i starts on node i mod N), so the simulation takes as
    // few processes as it can (the devices share the cloud's 2 cores
    // here, as they would not in a deployment). A share of its own for
    // the last node: one fleet per (node, slice), starting on its node
    // and knowing the others, in order after it.
    let shares = shares(b.sessions, n, b.failover_sessions)?;
    let t0 = Instant::now();
    let mut fleets = Vec::new();
    let mut next_addr = 2u32;
    let mut first = 0;
    let every: Vec<String> = nodes.iter().map(|c| format!("ws://{}/ivc", c.addr)).collect();
    // (the fleets' URLs, spread or not, up to which device)
    let plan: Vec<(String, bool, u32)> = match b.failover_sessions {
        None => vec![(every.join(","), true, b.sessions)],
        Some(_) => shares
            .iter()
            .enumerate()
            .scan(0, |end, (node, &share)| {
                *end += share;
                let urls: Vec<&str> = (0..n).map(|k| every[(node + k) % n].as_str()).collect();
                Some((urls.join(","), false, *end))
            })
            .collect(),
    };
    for (urls, spread, end) in plan {
        while first < end {
            let count = b.per_fleet.min(end - first);
            let addrs = loopback_addrs(&mut next_addr, b.addrs_per_fleet);
            fleets.push(spawn_fleet(
                &exe,
                &urls,
                &dir,
                "bench",
                first,
                count,
                &addrs,
                b.keepalive_secs,
                spread,
                threads,
            )?);
            first += count;
        }
    }
    let mut last_print = Instant::now();
    let connected_in = loop {
        let per = sessions(&mut conns).await;
        let total: u64 = per.iter().sum();
        if total == b.sessions as u64 {
            break t0.elapsed();
        }
        for f in &mut fleets {
            if let Some(st) = f.try_wait()? {
                bail!("a fleet process exited ({st}); see {}", dir.display());
            }
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            say(format!("  {total}/{} sessions {per:?}", b.sessions));
            last_print = Instant::now();
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("only {total} of {} sessions after 1800 s", b.sessions);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let conn_rate = b.sessions as f64 / connected_in.as_secs_f64();
    let per = sessions(&mut conns).await;
    say(format!(
        "{} sessions on {n} nodes {per:?} in {:.1} s: {conn_rate:.0} connections/s",
        b.sessions,
        connected_in.as_secs_f64()
    ));

    // PostgreSQL's rate is read over the second half of the hold: every
    // device has sent a Keepalive since it logged in by then (the first
    // one writes its channel rows), so what is left is the steady state.
    // The CPU every process spends: what a Keepalive costs the machine
    // here (over the same half of the hold), what a call costs below.
    let groups: Vec<(&str, Vec<u32>)> = vec![
        ("nodes", nodes.iter().map(|c| c.pid).collect()),
        ("nats", vec![nats.pid()]),
        ("postgres", pg.pids()),
        ("devices", fleets.iter().filter_map(|f| f.id()).collect()),
    ];
    let cpu_of = |pids: &[u32]| pids.iter().map(|p| cpu(*p)).sum::<Duration>();
    let cpu_now = |groups: &[(&str, Vec<u32>)]| groups.iter().map(|(_, p)| cpu_of(p)).collect::<Vec<_>>();
    // Each group's CPU since `before`, in µs for each of `count` units of work.
    let cpu_each = |groups: &[(&'static str, Vec<u32>)], before: &[Duration], count: f64| -> Vec<(&'static str, f64)> {
        groups
            .iter()
            .zip(cpu_now(groups).iter().zip(before))
            .map(|((name, _), (now, before))| (*name, now.saturating_sub(*before).as_secs_f64() * 1e6 / count.max(1.0)))
            .collect()
    };
    let hold = Duration::from_secs(b.hold_secs.unwrap_or(2 * b.keepalive_secs));
    tokio::time::sleep(hold / 2).await;
    let commits0 = pg.commits().map_err(anyhow::Error::msg)?;
    let (idle_cpu0, idle_t0) = (cpu_now(&groups), Instant::now());
    tokio::time::sleep(hold - hold / 2).await;
    let commits = pg.commits().map_err(anyhow::Error::msg)?.saturating_sub(commits0);
    let tps = commits as f64 / (hold - hold / 2).as_secs_f64();
    let idle_secs = idle_t0.elapsed().as_secs_f64();
    let keepalives = b.sessions as f64 / b.keepalive_secs.max(1) as f64;
    let per_keepalive = cpu_each(&groups, &idle_cpu0, keepalives * idle_secs);
    let keepalive_us: f64 = per_keepalive.iter().map(|(_, us)| us).sum();
    let held: u64 = sessions(&mut conns).await.iter().sum();
    let rss_held = rss_of(&nodes)?;
    let per_session = rss_held.saturating_sub(rss_provisioned) as f64 / b.sessions as f64;
    say(format!(
        "held {held} sessions for {} s with keep-alives every {} s: nodes' RSS {:.1} MiB in all ({:.1} idle, {:.1} provisioned) = {:.2} KiB per session; PostgreSQL {tps:.1} transactions/s",
        hold.as_secs(),
        b.keepalive_secs,
        rss_held as f64 / 1048576.0,
        rss_idle as f64 / 1048576.0,
        rss_provisioned as f64 / 1048576.0,
        per_session / 1024.0
    ));
    say(format!(
        "  CPU per Keepalive ({keepalives:.0} a second, nothing else flowing), every process: {keepalive_us:.0} µs ({}); {:.0} % of a core",
        per_keepalive.iter().map(|(n, us)| format!("{n} {us:.0}")).collect::<Vec<_>>().join(", "),
        keepalive_us * keepalives / 1e4
    ));
    let mut out = json!({
        "nodes": n, "sessions_wanted": b.sessions, "keepalive_secs": b.keepalive_secs, "fd_limit": fds,
        "threads_per_process": threads,
        "sessions": {
            "held": held, "per_node": per, "connect_secs": connected_in.as_secs_f64(), "connections_per_sec": conn_rate,
            "rss_idle": rss_idle, "rss_provisioned": rss_provisioned, "rss_held": rss_held,
            "rss_per_session": per_session, "hold_secs": hold.as_secs(),
        },
        "postgres": {"transactions": commits, "per_sec": tps},
        "keepalive": {
            "per_sec": keepalives,
            "cpu_us": per_keepalive.iter().map(|(n, us)| (n.to_string(), json!(us))).collect::<serde_json::Map<_, _>>(),
            "cpu_us_total": keepalive_us,
        },
    });

    // RPC round trips through node 1 to devices spread over every node.
    let devices = b.rpc_devices.min(b.sessions).max(1);
    let stride = (b.sessions / devices).max(1);
    // The CPU every process spends on it: what a call costs the machine.
    let groups: Vec<(&str, Vec<u32>)> = groups.into_iter().chain([("load", vec![std::process::id()])]).collect();
    let auth = rpc_caller(&nodes[0], &b.rpc_as).await?;
    let cpu_before = cpu_now(&groups);
    // Node 1's share apart: what receiving the calls costs (HTTP in, the
    // bus out), against what holding the devices costs the others.
    let first_before = cpu(nodes[0].pid);
    let (lat, errors, elapsed) =
        rpc_load(&nodes[0], &auth, devices, stride, b.concurrency, b.batch, b.rpc_secs).await?;
    let rps = lat.len() as f64 / elapsed;
    let calls = lat.len().max(1) as f64;
    let per_call = cpu_each(&groups, &cpu_before, calls);
    let total_us: f64 = per_call.iter().map(|(_, us)| us).sum();
    let first_us = cpu(nodes[0].pid).saturating_sub(first_before).as_secs_f64() * 1e6 / calls;
    let (p50, p99, p999) = (percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 0.999));
    say(format!(
        "RPC through node 1 to {devices} devices on all {n} nodes ({:.0} % elsewhere), {} connections, {}, as {}: {rps:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, {errors} errors",
        100.0 * (n - 1) as f64 / n as f64,
        b.concurrency,
        b.batch_said(),
        b.rpc_as_said()
    ));
    say(format!(
        "  CPU per call, every process: {total_us:.0} µs ({}); 20,000 calls/s at this cost take {:.1} cores",
        per_call
            .iter()
            .map(|(n, us)| match *n {
                "nodes" => format!("nodes {us:.0}, of which node 1 {first_us:.0}"),
                _ => format!("{n} {us:.0}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        total_us * 20_000.0 / 1e6
    ));
    out["rpc"] = json!({
        "through": "n1", "as": b.rpc_as, "devices": devices, "concurrency": b.concurrency, "batch": b.batch, "calls": lat.len(), "per_sec": rps,
        "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "errors": errors,
        "cpu_us_per_call": per_call.iter().map(|(n, us)| (n.to_string(), json!(us))).collect::<serde_json::Map<_, _>>(),
        "cpu_us_per_call_total": total_us,
        "cpu_us_per_call_node1": first_us,
    });

    // Failover: the last node killed, its devices back on the others.
    let victim = n - 1;
    let before = sessions(&mut conns).await;
    let moving = before[victim];
    let mut node = nodes.pop().context("no node")?;
    conns.pop();
    // What the survivors can hold: each node's connection cap (its
    // open-file limit less 100 here) less the admin API's reserve and a
    // few of its own (PostgreSQL, NATS, this bench's).
    let cap_each = super::raise_fd_limit().saturating_sub(100 + 32 + 16);
    let room = cap_each * (n as u64 - 1);
    let want = (b.sessions as u64).min(room);
    if want < b.sessions as u64 {
        say(format!(
            "  note: the other {} nodes can hold {room} sessions (open-file limit), not all {}: waiting for {want}",
            n - 1,
            b.sessions
        ));
    }
    let t0 = Instant::now();
    let _ = node.child.start_kill();
    let _ = node.child.wait().await;
    let (mut best, mut best_at) = (0u64, Instant::now());
    let back_in = loop {
        let total: u64 = sessions(&mut conns).await.iter().sum();
        if total >= want {
            break t0.elapsed();
        }
        if total > best {
            (best, best_at) = (total, Instant::now());
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            say(format!("  after the kill: {total}/{} sessions", b.sessions));
            last_print = Instant::now();
        }
        if best_at.elapsed() > Duration::from_secs(120) {
            bail!(
                "after killing node {}: stuck at {total} of {want} sessions for 120 s (see the fleet logs in {})",
                victim + 1,
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logins: u64 = {
        let mut sum = 0;
        for h in conns.iter_mut() {
            sum += stats(h).await?["logins"].as_u64().unwrap_or(0);
        }
        sum
    };
    say(format!(
        "kill -9 of node {}: its {moving} devices back on the other {} nodes in {:.1} s ({} logins in all so far)",
        victim + 1,
        n - 1,
        back_in.as_secs_f64(),
        logins
    ));
    out["failover"] =
        json!({"killed": format!("n{}", victim + 1), "devices": moving, "back_secs": back_in.as_secs_f64()});
    for mut f in fleets {
        let _ = f.kill().await;
    }
    for mut c in nodes {
        let _ = c.child.kill().await;
    }
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    drop((pg, nats));
    Ok(())
}

/// Removes a folder when dropped: a bench that fails or is stopped
/// leaves nothing behind (a recording bench writes tens of GB).
pub(super) struct RemoveOnDrop(pub(super) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn shares_spread_the_rest_evenly_and_give_the_last_node_its_own() {
        assert_eq!(shares(99_000, 6, None).unwrap(), vec![16_500; 6]);
        assert_eq!(shares(10, 3, None).unwrap(), vec![4, 3, 3]);
        assert_eq!(shares(69_900, 6, Some(19_900)).unwrap(), vec![10_000, 10_000, 10_000, 10_000, 10_000, 19_900]);
        assert_eq!(shares(7, 3, Some(4)).unwrap(), vec![2, 1, 4]);
        let e = shares(10, 2, Some(11)).unwrap_err().to_string();
        assert!(e.contains("--failover-sessions 11"), "{e}");
    }
}
