//! The IVT agent ("edge"): an on-site process that connects out to the
//! cloud over IVR RPC and drives the site's channels through a
//! [`ChannelBackend`]: DVRIP devices ([`dvrip`]), CVIP units
//! (the private `cvip` module) and the built-in simulated camera ([`SimChannel`]).
//! A channel's live stream is one reconnecting [`live::Feed`] shared by its
//! RTMP publications and its cloud recording (recording); [`discover`]
//! finds the site's devices. docs/edge.md maps every IVT method to each
//! device protocol.
//!
//! The public API: [`Edge`] (the agent), [`EdgeConfig`], [`channels`],
//! [`ChannelBackend`] and [`SimChannel`], and five namespaces the `ivr`
//! tools use on their own: [`dvrip`] (frames and captures of DVRIP media,
//! the monitor opener), [`live`] (the shared reconnecting feed),
//! [`source`], [`discover`], and [`fleet`]/[`upload`] (simulated sites for
//! benchmarks). The agent's internals (sessions, backends per device,
//! recording, configuration parsing) are private.

mod agent;
mod backend;
mod config;
mod cvip;
mod device;
pub mod discover;
pub mod dvrip;
pub mod fleet;
pub mod live;
mod record;
pub mod source;
pub mod upload;

pub use agent::{Backoff, Edge, EdgeStatus};
pub use backend::{ChannelBackend, SimChannel, SIM_JPEG};
pub use config::EdgeConfig;

use std::sync::Arc;

/// Why the site's channels could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("[devices] alarm_center {addr}: {cause} (set another address, or leave alarm_center out)")]
    AlarmCenter { addr: std::net::SocketAddr, cause: std::io::Error },
}

/// The configured channels' backends: one [`dvrip::DvripDevice`] or
/// `CvipDevice` per device, shared by all of its channels (a
/// 16-channel NVR is one login), and the DVRIP alarm center when
/// `[devices] alarm_center` is set. Inside a tokio runtime: device
/// supervisors start at once.
pub fn channels(cfg: &EdgeConfig, dialer: &ivr_rpc::net::Dialer) -> Result<Vec<Arc<dyn ChannelBackend>>, SiteError> {
    use source::Source;
    use std::collections::HashMap;
    let mut dvrips: HashMap<(String, String), Arc<dvrip::DvripDevice>> = HashMap::new();
    let mut cvips: HashMap<String, Arc<cvip::CvipDevice>> = HashMap::new();
    let chans = cfg
        .channels
        .iter()
        .map(|c| -> Arc<dyn ChannelBackend> {
            match c.source() {
                Source::Sim => Arc::new(SimChannel::new(c.channel).with_dialer(dialer.clone())),
                Source::Dvrip(s) => {
                    let dev = dvrips
                        .entry((s.addr(), s.user.clone()))
                        .or_insert_with(|| dvrip::DvripDevice::start(&s))
                        .clone();
                    Arc::new(dvrip::DvripChannel::new(c.channel, &s, dev, dialer.clone()))
                }
                Source::Cvip(s) => {
                    let dev = cvips.entry(s.addr()).or_insert_with(|| cvip::CvipDevice::start(&s)).clone();
                    Arc::new(cvip::CvipChannel::new(c.channel, &s, dev, dialer.clone()))
                }
            }
        })
        .collect();
    if let Some(addr) = cfg.devices.alarm_center {
        let l = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|cause| SiteError::AlarmCenter { addr, cause })?;
        dvrip::serve_alarm_center(l, dvrips.into_values().collect());
    }
    Ok(chans)
}
