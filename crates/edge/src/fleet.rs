//! A fleet of simulated devices (`ivr sim ivt`): many edge agents with one
//! simulated channel each, the cloud's load generator and a quick way to
//! fill a console.

use crate::{ChannelBackend, Edge, EdgeConfig, SimChannel};
use std::net::IpAddr;
use std::sync::Arc;

/// The login of fleet device `i` (0-based): `<prefix>-<i>` with a password
/// derived from the prefix and index (a test fleet, not a secret).
pub fn login(prefix: &str, i: u32) -> (String, String) {
    (format!("{prefix}-{i}"), format!("{prefix}-password-{i}"))
}

/// What a fleet is.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The cloud's device gateway, `ws://host:port/ivc`; several nodes of
    /// a cluster separated by commas, tried in turn.
    pub cloud_url: String,
    pub prefix: String,
    /// Index of the first device (fleets split over processes).
    pub first: u32,
    pub count: u32,
    pub keepalive_secs: u64,
    /// Local addresses to dial from, in turn (empty: the system's choice).
    /// Each gives ~28,000 ephemeral ports toward one cloud address.
    pub bind: Vec<IpAddr>,
    /// At most this many devices dialling at once (a storm of SYNs
    /// overflows the cloud's listen queue and costs seconds of retries).
    pub window: usize,
    /// For a wss:// cloud: the CA to trust (default: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// With several cloud URLs: device `i` tries them starting at the
    /// `i`-th (one fleet spread evenly over a cluster's nodes) instead of
    /// every device starting at the first.
    pub spread: bool,
}

/// Starts the fleet: devices dial in turn, at most `window` at a time; the
/// returned list grows as they start. Returns once all have started.
pub async fn start(cfg: FleetConfig) -> Result<Vec<Arc<Edge>>, crate::config::InvalidConfig> {
    let window = Arc::new(tokio::sync::Semaphore::new(cfg.window.max(1)));
    let mut out = Vec::with_capacity(cfg.count as usize);
    for n in 0..cfg.count {
        let i = cfg.first + n;
        let (code, pw) = login(&cfg.prefix, i);
        let mut extra = match cfg.bind.len() {
            0 => String::new(),
            k => format!("bind = \"{}\"\n", cfg.bind[n as usize % k]),
        };
        if let Some(ca) = &cfg.ca_file {
            extra.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
        }
        // Several cloud nodes (comma-separated): each device tries them in turn.
        let mut urls: Vec<String> = cfg.cloud_url.split(',').map(|u| format!("{:?}", u.trim())).collect();
        if cfg.spread {
            let k = i as usize % urls.len();
            urls.rotate_left(k);
        }
        let edge_cfg = EdgeConfig::parse(&format!(
            "[cloud]\nurls = [{}]\nlogin_code = \"{code}\"\nlogin_passwd = \"{pw}\"\nhardware_model = \"ivr-sim-ivt\"\nkeepalive_secs = {}\n{extra}\n[[channels]]\nchannel = 0\nsource = \"sim\"\npreview_every_secs = 0\n",
            urls.join(", "),
            cfg.keepalive_secs
        ))?;
        let edge = Edge::new(edge_cfg, vec![Arc::new(SimChannel::new(0)) as Arc<dyn ChannelBackend>]);
        let permit = window.clone().acquire_owned().await.expect("the window is never closed");
        let mut status = edge.status();
        tokio::spawn(async move {
            // The slot frees once this device is in (or has given up once).
            let _permit = permit;
            let _ = status.wait_for(|s| s.connected || s.last_error.is_some()).await;
        });
        tokio::spawn(edge.clone().run());
        out.push(edge);
    }
    Ok(out)
}

/// How many of the fleet are connected now.
pub fn connected(fleet: &[Arc<Edge>]) -> usize {
    fleet.iter().filter(|e| e.status().borrow().connected).count()
}
