//! Reply parsing: whatever a device sends as a body, parsing it into the
//! typed replies the client uses never panics.
#![no_main]
use dvrip::messages::{AlarmInfo, DiscoveredDevice, FileEntry, LogEntry, LoginReply, LoginRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dvrip::discovery::parse_reply(data);
    let Ok(v) = dvrip::json::parse_body(data) else { return };
    let _ = LoginReply::parse(&v);
    let _ = LoginRequest::parse(&v);
    let _ = DiscoveredDevice::parse(&v);
    let _ = serde_json::from_value::<Vec<FileEntry>>(v.get("OPFileQuery").cloned().unwrap_or_default());
    let _ = serde_json::from_value::<Vec<LogEntry>>(v.get("OPLogQuery").cloned().unwrap_or_default());
    let _ = serde_json::from_value::<AlarmInfo>(v.get("AlarmInfo").cloned().unwrap_or_default());
    if let Some(s) = v.get("SessionID").and_then(|s| s.as_str()) {
        let _ = dvrip::json::parse_session(s);
        let _ = dvrip::json::parse_hex_ip(s);
    }
    if let Some(t) = v.get("BeginTime").and_then(|s| s.as_str()) {
        let _ = dvrip::json::parse_query_time(t);
    }
});
