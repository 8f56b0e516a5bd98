//! A fleet of simulated devices (`ivr sim ivt`): many edge agents with one
//! simulated channel each, the cloud's load generator and a quick way to
//! fill a console.

use crate::{ChannelBackend, Edge, EdgeConfig, SimChannel};
use std::sync::Arc;

/// The login of fleet device `i` (0-based): `<prefix>-<i>` with a password
/// derived from the prefix and index (a test fleet, not a secret).
pub fn login(prefix: &str, i: u32) -> (String, String) {
    (format!("{prefix}-{i}"), format!("{prefix}-password-{i}"))
}

/// Starts `count` devices dialling `cloud_url`; returns them (their
/// `status()` says who is connected).
pub fn start(cloud_url: &str, prefix: &str, count: u32, keepalive_secs: u64) -> Result<Vec<Arc<Edge>>, String> {
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (code, pw) = login(prefix, i);
        let cfg = EdgeConfig::parse(&format!(
            "[cloud]\nurl = \"{cloud_url}\"\nlogin_code = \"{code}\"\nlogin_passwd = \"{pw}\"\nhardware_model = \"ivr-sim-ivt\"\nkeepalive_secs = {keepalive_secs}\n\n[[channels]]\nchannel = 0\nsource = \"sim\"\npreview_every_secs = 0\n"
        ))?;
        let edge = Edge::new(cfg, vec![Arc::new(SimChannel::new(0)) as Arc<dyn ChannelBackend>]);
        tokio::spawn(edge.clone().run());
        out.push(edge);
    }
    Ok(out)
}

/// How many of the fleet are connected now.
pub fn connected(fleet: &[Arc<Edge>]) -> usize {
    fleet.iter().filter(|e| e.status().borrow().connected).count()
}
