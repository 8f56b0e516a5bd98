//! The IVT agent ("edge"): an on-site process that connects out to the
//! cloud over IVR RPC and drives the local channels through a
//! [`backend::ChannelBackend`]. This release ships the simulated backend,
//! whose RTMPPublish and StartCloudRecord run the media engine for real
//! (publication, segmenting, uploads); dvrip:// and cvip:// backends come
//! with later releases.

pub mod agent;
pub mod backend;
pub mod config;
pub mod fleet;
pub mod record;
pub mod upload;

pub use agent::{Backoff, Edge, EdgeStatus};
pub use backend::{ChannelBackend, SimChannel};
pub use config::EdgeConfig;
