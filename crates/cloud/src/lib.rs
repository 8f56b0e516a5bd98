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
mod reconcile;
mod recordings;
mod server;
mod sql;
mod store;
mod trust;
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
pub use reconcile::{Checked, Repair};
pub use server::{Cloud, CloudConfig, DeviceLimits, LoginCheckError, ProvisionError};
pub use store::{
    ChannelRow, Detection, Device, Event, EventFilter, Firmware, HoldRow, Node, RecordSession, SegmentRow, SqlStore,
    Store, StoreError,
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

/// The login_code a [`safe_name`] was made from; `None` for a name it
/// never makes.
pub(crate) fn unsafe_name(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => {
                // Two lowercase hex digits of a byte `safe_name` escapes.
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
                    return None;
                }
                let v = u8::from_str_radix(hex, 16).ok()?;
                if v.is_ascii_alphanumeric() || v == b'-' {
                    return None;
                }
                out.push(v);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || c == b'-' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn safe_names_are_one_to_one() {
        assert_eq!(super::safe_name("cam-01"), "cam-01");
        assert_eq!(super::safe_name("cam.x"), "cam_2ex");
        assert_eq!(super::safe_name("cam_x"), "cam_5fx");
        assert_eq!(super::safe_name("../é"), "_2e_2e_2f_c3_a9");
        for lc in ["cam-01", "cam.x", "cam_x", "../é", "", "a b"] {
            assert_eq!(super::unsafe_name(&super::safe_name(lc)).as_deref(), Some(lc));
        }
        for bad in ["cam.x", "_2", "_zz", "_41", "_2E", "_+1", "_ff"] {
            assert_eq!(super::unsafe_name(bad), None, "{bad}");
        }
    }
}
