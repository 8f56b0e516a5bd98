//! `ivr edge --config edge.toml`: the IVT agent; `ivr edge discover`: the
//! site's DVRIP and CVIP devices as `[[channels]]` lines.

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use ivr_edge::{Edge, EdgeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// The agent's configuration (see docs/edge.md for the format).
    #[arg(long, default_value = "edge.toml")]
    config: PathBuf,
    /// Worker threads. One carries a 64-camera site at a fraction of a core
    /// and hands frames between the device, RTMP and upload tasks without
    /// cross-thread wake-ups (docs/BENCHMARKS.md); more only for very large
    /// sites on a many-core box.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    #[command(subcommand)]
    cmd: Option<EdgeCmd>,
}

#[derive(Subcommand)]
enum EdgeCmd {
    /// Find DVRIP (search 1530 on UDP 34569) and CVIP (ping) devices on the
    /// LAN and print a [[channels]] table for every channel of each.
    Discover {
        /// Seconds to collect answers.
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
        /// Where DVRIP searches go (repeatable): a broadcast address or one device's discovery port.
        #[arg(long = "dvrip-target", default_values_t = ["255.255.255.255:34569".parse::<SocketAddr>().expect("constant")])]
        dvrip_targets: Vec<SocketAddr>,
        /// Where CVIP pings go (repeatable): a broadcast address, a unit's CVIP port or the common port.
        #[arg(long = "cvip-target", default_values_t = [
            "255.255.255.255:7110".parse::<SocketAddr>().expect("constant"),
            "255.255.255.255:9990".parse::<SocketAddr>().expect("constant"),
        ])]
        cvip_targets: Vec<SocketAddr>,
        /// The DVRIP user written into the sources.
        #[arg(long, default_value = "admin")]
        user: String,
        /// Write `password_env = NAME` under every DVRIP channel (the
        /// password then comes from that environment variable).
        #[arg(long)]
        password_env: Option<String>,
        /// Add the channels to this edge.toml (after its channels, skipping
        /// sources it has; a new file gets a [cloud] table to fill in).
        #[arg(long)]
        write: Option<PathBuf>,
        /// The devices as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if let Some(EdgeCmd::Discover { wait, dvrip_targets, cvip_targets, user, password_env, write, json }) = a.cmd {
        return discover(wait, &dvrip_targets, &cvip_targets, &user, password_env.as_deref(), write, json).await;
    }
    let cfg = EdgeConfig::load(&a.config)?;
    // Recording uploads trust and bind as the cloud connection does.
    let dialer = ivr_rpc::net::Dialer::new(cfg.cloud.bind, cfg.cloud.ca_file.clone());
    let channels = ivr_edge::channels(&cfg, &dialer)?;
    println!(
        "ivr edge: {} as {:?}, {} channel(s); keep-alive every {} s",
        cfg.cloud.url,
        cfg.cloud.login_code,
        channels.len(),
        cfg.cloud.keepalive_secs
    );
    for c in &cfg.channels {
        println!("  channel {}: {}", c.channel, c.source().redacted());
    }
    let (url, code, n) = (cfg.cloud.url.clone(), cfg.cloud.login_code.clone(), channels.len());
    let edge = Edge::new(cfg, channels);
    edge.preflight().map_err(anyhow::Error::msg).with_context(|| format!("in {}", a.config.display()))?;
    // Say when the session comes and goes, whatever the log level.
    let mut status = edge.status();
    tokio::spawn(async move {
        let mut was = false;
        while status.changed().await.is_ok() {
            let s = status.borrow().clone();
            if s.connected && !was {
                println!("ivr edge: connected to {url} as {code:?}, {n} channel(s)");
            } else if !s.connected && was {
                println!(
                    "ivr edge: disconnected ({}); reconnecting",
                    s.last_error.as_deref().unwrap_or("the session ended")
                );
            }
            was = s.connected;
        }
    });
    tokio::select! {
        _ = edge.run() => Ok(()),
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
    }
}

async fn discover(
    wait: f64,
    dvrip_targets: &[SocketAddr],
    cvip_targets: &[SocketAddr],
    user: &str,
    password_env: Option<&str>,
    write: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let found = ivr_edge::discover::discover(dvrip_targets, cvip_targets, Duration::from_secs_f64(wait.max(0.1))).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else if found.is_empty() {
        eprintln!("no DVRIP or CVIP device answered within {wait} s");
    } else {
        for f in &found {
            eprintln!("found {} {} {:?} ({}), {} channel(s)", f.protocol, f.addr, f.name, f.id, f.channels);
        }
    }
    let Some(path) = write else {
        if !json {
            print!("{}", ivr_edge::discover::channel_tables(&found, user, password_env, 0, &[]).0);
        }
        return Ok(());
    };
    let (mut text, first, existing) = match std::fs::read_to_string(&path) {
        Ok(t) => {
            let chans = EdgeConfig::written_channels(&t)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{} (fix it, or write to a new file)", path.display()))?;
            let first = chans.iter().map(|c| c.0 + 1).max().unwrap_or(0);
            (t, first, chans.into_iter().map(|c| c.1).collect::<Vec<_>>())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            "# Written by `ivr edge discover`; fill in the cloud's URL and this site's login.\n[cloud]\nurl = \"ws://CLOUD:8080/ivc\"\nlogin_code = \"SITE\"\nlogin_passwd = \"PASSWORD\"\n".to_owned(),
            0,
            Vec::new(),
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (tables, n) = ivr_edge::discover::channel_tables(&found, user, password_env, first, &existing);
    text.push_str(&tables);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{n} channel(s) added to {}", path.display());
    Ok(())
}
