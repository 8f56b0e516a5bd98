//! `ivr edge --config edge.toml`: the IVT agent.

use anyhow::Context;
use clap::Args as ClapArgs;
use ivr_edge::{Edge, EdgeConfig};
use std::path::PathBuf;

#[derive(ClapArgs)]
pub struct Args {
    /// The agent's configuration (see docs/edge.md for the format).
    #[arg(long, default_value = "edge.toml")]
    config: PathBuf,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = EdgeConfig::load(&a.config)?;
    // Recording uploads trust and bind as the cloud connection does.
    let dialer = ivr_rpc::net::Dialer::new(cfg.cloud.bind, cfg.cloud.ca_file.clone());
    let channels = ivr_edge::channels(&cfg, &dialer);
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
    let edge = Edge::new(cfg, channels);
    edge.preflight().map_err(anyhow::Error::msg).with_context(|| format!("in {}", a.config.display()))?;
    tokio::select! {
        _ = edge.run() => Ok(()),
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
    }
}
