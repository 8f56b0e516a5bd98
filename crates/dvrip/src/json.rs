//! JSON conventions of DVRIP bodies: trailers, lossy text, `SessionID`,
//! little-endian hex IP addresses, the `YYYY-MM-DD HH:MM:SS` time format.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::NaiveDateTime;
use serde_json::Value;
use std::net::Ipv4Addr;

/// The trailer ivr sends after every JSON body.
pub const TRAILER: &[u8] = b"\n\0";
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
/// What devices send for an unset time.
pub const NO_TIME: &str = "0000-00-00 00:00:00";

/// Why a payload is not a JSON body.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON body ({reason}); payload starts {preview}")]
pub struct BodyError {
    pub reason: String,
    pub preview: String,
}

/// Strips whatever trailer the device used (`"\n\0"`, `"\n"`, `"\0"`,
/// several NULs, or none), decodes lossily (GBK names become U+FFFD rather
/// than failing the reply) and parses.
pub fn parse_body(payload: &[u8]) -> Result<Value, BodyError> {
    let end = payload.iter().rposition(|&b| !matches!(b, 0 | b'\n' | b'\r' | b' ' | b'\t')).map_or(0, |i| i + 1);
    let body = &payload[..end];
    let text = String::from_utf8_lossy(body);
    serde_json::from_str(&text)
        .map_err(|e| BodyError { reason: e.to_string(), preview: crate::header::hex_preview(payload, 32) })
}

/// Serialises a body and appends the `"\n\0"` trailer.
pub fn encode_body(value: &Value) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    // Writing a Value into memory cannot fail.
    serde_json::to_writer((&mut out).writer(), value).expect("serialising a Value");
    out.put_slice(TRAILER);
    out.freeze()
}

/// `"0x%08X"`, the form most devices use and ivr sends.
pub fn format_session(id: u32) -> String {
    format!("0x{id:08X}")
}

/// Any hex with or without padding: `"0x0000000A"`, `"0xb"`, `"0x00000000038"`.
pub fn parse_session(s: &str) -> Option<u32> {
    parse_hex_u32(s)
}

/// A `"0x…"` number (sizes, masks, run time). Accepts no prefix too.
pub fn parse_hex_u32(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    if t.is_empty() || t.len() > 16 {
        return None;
    }
    u64::from_str_radix(t, 16).ok().and_then(|v| u32::try_from(v).ok())
}

pub fn format_hex_u32(v: u32) -> String {
    format!("0x{v:08X}")
}

/// `"0x0A01A8C0"` is a little-endian u32: 192.168.1.10.
pub fn parse_hex_ip(s: &str) -> Option<Ipv4Addr> {
    parse_hex_u32(s).map(|v| Ipv4Addr::from(v.to_le_bytes()))
}

pub fn format_hex_ip(ip: Ipv4Addr) -> String {
    format_hex_u32(u32::from_le_bytes(ip.octets()))
}

/// `None` for the unset time `0000-00-00 00:00:00`.
pub fn parse_time(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), TIME_FORMAT).ok()
}

/// Like [`parse_time`], but also takes the zero-date forms clients send
/// for "from the beginning": `2000-00-00 00:00:00` (the `dvrip` package's
/// epoch) and `0000-00-00 00:00:00`, as 2000-01-01 00:00:00.
pub fn parse_query_time(s: &str) -> Option<NaiveDateTime> {
    parse_time(s).or_else(|| {
        let t = s.trim();
        let zero_date = t.len() == 19 && (t.starts_with("2000-00-00") || t.starts_with("0000-00-00"));
        zero_date.then(|| chrono::NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0))).flatten()
    })
}

pub fn format_time(t: &NaiveDateTime) -> String {
    t.format(TIME_FORMAT).to_string()
}

/// The `Ret` of a reply body, if any.
pub fn ret(v: &Value) -> Option<i64> {
    v.get("Ret").and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trailer_form_parses() {
        for p in [
            &b"{\"Ret\":100}\n\0"[..],
            b"{\"Ret\":100}\n",
            b"{\"Ret\":100}\0",
            b"{\"Ret\":100}",
            b"{\"Ret\":100}\0\0\0",
        ] {
            assert_eq!(ret(&parse_body(p).unwrap()), Some(100), "{p:?}");
        }
    }

    #[test]
    fn invalid_utf8_in_names_is_replaced_not_fatal() {
        // "HostName": GBK bytes for a Chinese name.
        let p = b"{\"HostName\":\"\xc9\xe3\xcf\xf1\xbb\xfa\",\"Ret\":100}\n\0";
        let v = parse_body(p).unwrap();
        assert_eq!(ret(&v), Some(100));
        assert!(v["HostName"].as_str().unwrap().contains('\u{fffd}'));
    }

    #[test]
    fn garbage_names_the_bytes() {
        let e = parse_body(b"\x01\x02not json").unwrap_err();
        assert!(e.to_string().contains("0102"), "{e}");
    }

    #[test]
    fn session_id_forms() {
        assert_eq!(parse_session("0x0000000A"), Some(10));
        assert_eq!(parse_session("0xb"), Some(11));
        assert_eq!(parse_session("0x38"), Some(0x38));
        assert_eq!(parse_session("0x0000000057"), Some(0x57));
        assert_eq!(parse_session("0x1FFFFFFFF"), None);
        assert_eq!(parse_session("zz"), None);
        assert_eq!(format_session(0x57), "0x00000057");
    }

    #[test]
    fn little_endian_hex_ip() {
        assert_eq!(parse_hex_ip("0x0A01A8C0"), Some(Ipv4Addr::new(192, 168, 1, 10)));
        assert_eq!(format_hex_ip(Ipv4Addr::new(192, 168, 1, 10)), "0x0A01A8C0");
        assert_eq!(parse_hex_ip("0xCCB2A8C0"), Some(Ipv4Addr::new(192, 168, 178, 204)));
    }

    #[test]
    fn dvrip_package_epoch_in_queries() {
        // alexshpilkin/dvrip sends "2000-00-00 00:00:00" as the start of a
        // search from the beginning; devices take it.
        let t = parse_query_time("2000-00-00 00:00:00").unwrap();
        assert_eq!(format_time(&t), "2000-01-01 00:00:00");
        assert_eq!(parse_query_time("0000-00-00 00:00:00"), Some(t));
        assert!(parse_query_time("2000-13-45 99:00:00").is_none());
    }

    #[test]
    fn unset_time_is_none() {
        assert!(parse_time(NO_TIME).is_none());
        let t = parse_time("2022-09-25 06:27:33").unwrap();
        assert_eq!(format_time(&t), "2022-09-25 06:27:33");
    }
}
