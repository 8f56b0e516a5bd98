//! The IVR cloud (IVC): the device gateway over IVR RPC, the state store,
//! the HTTP API, live view (RTMP ingest, fMP4/WebSocket/HLS viewers),
//! cloud recording with policies and playback, and the limits that hold
//! every peer (`docs/cloud.md`, `docs/security.md`, `docs/design/`).

mod access;
mod accounts;
mod api;
mod auth;
mod bus;
mod console;
mod diskfile;
mod error;
mod gateway;
mod ingest;
mod limits;
mod listen;
mod live;
mod lowat;
mod pg;
mod policy;
mod recordings;
mod server;
mod sql;
mod store;
mod uploads;

// The public API: what is re-exported here (the modules are private).
pub use accounts::{Accounts, ApiToken, AuditEntry, Grant, LoginSession, Role, User};
pub use api::router;
pub use api::users::{create_user, demo_password, set_demo_admin, MIN_PASSWORD};
pub use auth::{HashCost, PasswordError, Passwords};
pub use error::{ApiError, ApiResult};
pub use limits::{check_login_code, shown, NameError};
pub use listen::{default_max_connections, serve, serve_tls, ConnLimits};
pub use live::{serve_rtmp, LiveConfig, Rtmp};
pub use policy::{Mode as RecordMode, RecordPolicy, Window as RecordWindow};
pub use recordings::Repair;
pub use server::{Cloud, CloudConfig, DeviceLimits, LoginCheckError, ProvisionError};
pub use store::{
    ChannelRow, Device, Event, EventFilter, Firmware, HoldRow, Node, RecordSession, SegmentRow, SqlStore, Store,
    StoreError,
};

/// A login_code as a file name, one-to-one: ASCII letters, digits and `-`
/// stay, every other byte becomes `_` and two hex digits (`cam.x` is
/// `cam_2ex`, `cam_x` is `cam_5fx`), so two devices never share a file.
pub fn safe_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn safe_names_are_one_to_one() {
        assert_eq!(super::safe_name("cam-01"), "cam-01");
        assert_eq!(super::safe_name("cam.x"), "cam_2ex");
        assert_eq!(super::safe_name("cam_x"), "cam_5fx");
        assert_eq!(super::safe_name("../é"), "_2e_2e_2f_c3_a9");
    }
}
