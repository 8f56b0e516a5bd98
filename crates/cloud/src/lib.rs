//! The IVR cloud (IVC): the device gateway over IVR RPC, the state store,
//! the HTTP API. This release: devices, sessions, Keepalive state, alarms
//! with pictures, previews, RPC and events through the API.

pub mod api;
pub mod auth;
pub mod error;
mod gateway;
mod listen;
pub mod live;
pub mod policy;
pub mod recordings;
pub mod server;
pub mod store;
mod uploads;

pub use api::router;
pub use auth::HashCost;
pub use listen::{serve, serve_tls};
pub use live::{serve_rtmp, LiveConfig, Rtmp};
pub use server::{Cloud, CloudConfig};
pub use store::{SqliteStore, Store};

/// A login_code as a file name: anything but `[A-Za-z0-9_-]` becomes `_`.
pub fn safe_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
