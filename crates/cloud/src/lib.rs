//! The IVR cloud (IVC): the device gateway over IVR RPC, the state store,
//! the HTTP API. This release: devices, sessions, Keepalive state, alarms
//! with pictures, previews, RPC and events through the API.

pub mod auth;
pub mod error;
pub mod live;
pub mod policy;
pub mod recordings;
pub mod server;
pub mod store;

pub use auth::HashCost;
pub use live::{serve_rtmp, LiveConfig, Rtmp};
pub use server::{router, serve, serve_tls, Cloud, CloudConfig};
pub use store::{SqliteStore, Store};

/// A login_code as a file name: anything but `[A-Za-z0-9_-]` becomes `_`.
pub fn safe_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
