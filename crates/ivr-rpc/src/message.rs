//! The four packets of IVR RPC, each one JSON document in a WebSocket
//! text frame:
//!
//! - request `{"req": method, "params"?: …, "seq": n}`
//! - success `{"seq": n, "resp": …}`
//! - failure `{"seq": n, "err": {"code": c, "msg": "…"}}`
//! - event `{"event": name, "params"?: …}`
//!
//! Parsing is exact: a document that is none of these (a missing or mistyped
//! field, an unknown key, `params: null`) is malformed, which is disconnect
//! rule 5. `params` and `resp` may be objects or arrays (SetRTMPPublishConfig
//! takes an array; list answers are arrays).

use serde_json::{Map, Value};

/// Common error codes of the seed.
pub mod codes {
    /// 1: internal system error (ivr also uses it for invalid params, with
    /// the field named in `msg`).
    pub const INTERNAL: i64 = 1;
    /// 11: the stream's bitrate is above `max_bitrate`.
    pub const BITRATE_TOO_LARGE: i64 = 11;
}

/// The `err` of a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub msg: String,
}

impl RpcError {
    pub fn new(code: i64, msg: impl Into<String>) -> Self {
        RpcError { code, msg: msg.into() }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.msg)
    }
}

/// One packet.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request { method: String, params: Option<Value>, seq: u64 },
    Success { seq: u64, resp: Value },
    Failure { seq: u64, err: RpcError },
    Event { name: String, params: Option<Value> },
}

/// Why a document is not a packet (rule 5).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet: {0}")]
pub struct Malformed(pub String);

fn bad(why: impl Into<String>) -> Malformed {
    Malformed(why.into())
}

fn seq_of(m: &Map<String, Value>) -> Result<u64, Malformed> {
    match m.get("seq") {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad(format!("seq {n} is not a non-negative integer"))),
        Some(other) => Err(bad(format!("seq is {other}, not an integer"))),
        None => Err(bad("seq is missing")),
    }
}

/// `params`, when there: an object or an array.
fn check_params(m: &Map<String, Value>) -> Result<(), Malformed> {
    match m.get("params") {
        None | Some(Value::Object(_) | Value::Array(_)) => Ok(()),
        Some(other) => Err(bad(format!("params is {other}; an object or array, or absent when there are none"))),
    }
}

/// The string at `key`, taken out of the document (checked before).
fn take_string(m: &mut Map<String, Value>, key: &str) -> String {
    match m.remove(key) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn only(m: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Malformed> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(format!("unknown key {k:?} in a {what}"))),
        None => Ok(()),
    }
}

impl Message {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Message, Malformed> {
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Value::Object(mut m) = v else { return Err(bad("not a JSON object")) };
        // Checked in place, then taken out of the document: `params` and
        // `resp` can be large, and are moved, never copied.
        if let Some(req) = m.get("req") {
            only(&m, &["req", "params", "seq"], "request")?;
            if req.as_str().is_none_or(str::is_empty) {
                return Err(bad("req is not a method name"));
            }
            check_params(&m)?;
            let seq = seq_of(&m)?;
            return Ok(Message::Request { method: take_string(&mut m, "req"), params: m.remove("params"), seq });
        }
        if let Some(ev) = m.get("event") {
            only(&m, &["event", "params"], "event")?;
            if ev.as_str().is_none_or(str::is_empty) {
                return Err(bad("event is not a name"));
            }
            check_params(&m)?;
            return Ok(Message::Event { name: take_string(&mut m, "event"), params: m.remove("params") });
        }
        match (m.get("resp"), m.get("err")) {
            (Some(_), Some(_)) => Err(bad("both resp and err")),
            (Some(resp), None) => {
                only(&m, &["seq", "resp"], "response")?;
                if !matches!(resp, Value::Object(_) | Value::Array(_)) {
                    return Err(bad(format!("resp is {resp}, not an object or array")));
                }
                let seq = seq_of(&m)?;
                Ok(Message::Success { seq, resp: m.remove("resp").unwrap_or(Value::Null) })
            }
            (None, Some(err)) => {
                only(&m, &["seq", "err"], "response")?;
                let Value::Object(e) = err else { return Err(bad("err is not an object")) };
                only(e, &["code", "msg"], "err")?;
                let code = e.get("code").and_then(Value::as_i64).ok_or_else(|| bad("err.code is not an integer"))?;
                let msg = e.get("msg").and_then(Value::as_str).ok_or_else(|| bad("err.msg is not a string"))?;
                Ok(Message::Failure { seq: seq_of(&m)?, err: RpcError::new(code, msg) })
            }
            (None, None) => Err(bad("neither req, resp, err nor event")),
        }
    }

    /// The text frame: compact JSON, keys in the order above, written
    /// straight from the packet (its `params` or `resp` are not copied).
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        // A JSON string literal, escaped as serde_json escapes it.
        struct Str<'a>(&'a str);
        impl std::fmt::Display for Str<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut out = Vec::with_capacity(self.0.len() + 2);
                serde_json::to_writer(&mut out, self.0).map_err(|_| std::fmt::Error)?;
                f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
            }
        }
        let mut s = String::with_capacity(96);
        // Writing into a String cannot fail.
        let _ = match self {
            Message::Request { method, params: Some(p), seq } => {
                write!(s, "{{\"req\":{},\"params\":{p},\"seq\":{seq}}}", Str(method))
            }
            Message::Request { method, params: None, seq } => write!(s, "{{\"req\":{},\"seq\":{seq}}}", Str(method)),
            Message::Success { seq, resp } => write!(s, "{{\"seq\":{seq},\"resp\":{resp}}}"),
            Message::Failure { seq, err } => {
                write!(s, "{{\"seq\":{seq},\"err\":{{\"code\":{},\"msg\":{}}}}}", err.code, Str(&err.msg))
            }
            Message::Event { name, params: Some(p) } => write!(s, "{{\"event\":{},\"params\":{p}}}", Str(name)),
            Message::Event { name, params: None } => write!(s, "{{\"event\":{}}}", Str(name)),
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_four_packets_round_trip() {
        let all = [
            Message::Request { method: "Keepalive".into(), params: Some(json!({"state": 1, "channels": []})), seq: 1 },
            Message::Request { method: "GetFirmware".into(), params: None, seq: 2 },
            Message::Success { seq: 1, resp: json!({}) },
            Message::Success { seq: 3, resp: json!([{"name": "door", "token": "1"}]) },
            Message::Failure { seq: 4, err: RpcError::new(codes::BITRATE_TOO_LARGE, "4096000 > 2000000") },
            Message::Event { name: "UpgradeFirmware".into(), params: None },
            Message::Event {
                name: "SyncTime".into(),
                params: Some(json!({"datetime": "2016-12-05T02:15:32", "offset": 5})),
            },
        ];
        for m in all {
            assert_eq!(Message::parse(&m.to_text()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_documents_say_why() {
        for (text, why) in [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"req": "Keepalive"}"#, "seq is missing"),
            (r#"{"req": "Keepalive", "seq": "1"}"#, "not an integer"),
            (r#"{"req": "Keepalive", "seq": -1}"#, "non-negative"),
            (r#"{"req": 5, "seq": 1}"#, "not a method name"),
            (r#"{"req": "X", "seq": 1, "params": null}"#, "params is null"),
            (r#"{"req": "X", "seq": 1, "extra": 1}"#, "unknown key \"extra\""),
            (r#"{"seq": 1}"#, "neither"),
            (r#"{"seq": 1, "resp": {}, "err": {"code": 1, "msg": ""}}"#, "both"),
            (r#"{"seq": 1, "resp": 5}"#, "not an object or array"),
            (r#"{"seq": 1, "err": {"code": "1", "msg": "x"}}"#, "err.code"),
            (r#"{"event": "", "params": {}}"#, "not a name"),
        ] {
            let e = Message::parse(text).unwrap_err();
            assert!(e.0.contains(why), "{text}: {e}");
        }
    }

    /// The frame is what serde_json writes for the same document (keys in
    /// the packet's order), escapes included.
    #[test]
    fn frames_are_the_documents_serde_json_writes() {
        let odd = "a\"b\\c\n\u{1}é😀";
        for (m, doc) in [
            (
                Message::Request { method: odd.into(), params: Some(json!({"x": [1, "y"]})), seq: 7 },
                json!({"req": odd, "params": {"x": [1, "y"]}, "seq": 7}),
            ),
            (
                Message::Request { method: "GetFirmware".into(), params: None, seq: 0 },
                json!({"req": "GetFirmware", "seq": 0}),
            ),
            (Message::Success { seq: u64::MAX, resp: json!([]) }, json!({"seq": u64::MAX, "resp": []})),
            (
                Message::Failure { seq: 3, err: RpcError::new(-5, odd) },
                json!({"seq": 3, "err": {"code": -5, "msg": odd}}),
            ),
            (Message::Event { name: odd.into(), params: Some(json!({})) }, json!({"event": odd, "params": {}})),
            (Message::Event { name: "UpgradeFirmware".into(), params: None }, json!({"event": "UpgradeFirmware"})),
        ] {
            assert_eq!(m.to_text(), doc.to_string());
            assert_eq!(Message::parse(&m.to_text()).unwrap(), m);
        }
    }
}
