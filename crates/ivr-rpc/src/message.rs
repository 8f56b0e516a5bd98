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

use serde_json::value::RawValue;
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

/// A success's `resp`: its JSON text as it came, checked to be an object
/// or an array but not parsed into a tree. An answer the caller passes on
/// unread (a cloud relaying it to an API client, or to another node) is
/// never taken apart and written again; [`Resp::value`] reads it when
/// the caller needs its fields.
#[derive(Clone, Debug)]
pub struct Resp(Box<RawValue>);

impl Resp {
    /// The answer `v` (an object or array, as the seed wants).
    pub fn of(v: &Value) -> Resp {
        // Writing a `Value` cannot fail (its keys are strings); were it
        // to, `null` says nothing was answered rather than a panic.
        Resp(serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The JSON text, owned.
    pub fn into_text(self) -> Box<str> {
        self.0.into()
    }

    /// The answer as a tree.
    pub fn value(&self) -> Value {
        // It was read as JSON already; the same text reads again.
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

/// The same answer, however it was spaced.
impl PartialEq for Resp {
    fn eq(&self, other: &Resp) -> bool {
        self.text() == other.text() || self.value() == other.value()
    }
}

/// One packet.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request { method: String, params: Option<Value>, seq: u64 },
    Success { seq: u64, resp: Resp },
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

/// The keys a packet may have, in the order of [`Fields::at`].
const KEYS: [&str; 6] = ["req", "event", "params", "seq", "resp", "err"];

/// A document's top-level keys, read in one pass: the values of the known
/// ones (the last of a repeated key, as serde_json's own map keeps), where
/// each first appeared, and the first unknown key. No map of the whole
/// document is built: `params` and `resp` are the only values of any size,
/// and they are parsed once, in place.
#[derive(Default)]
struct Fields {
    values: [Option<Value>; 6],
    /// `resp`, which is kept as text (see [`Resp`]).
    resp: Option<Box<RawValue>>,
    at: [Option<u32>; 6],
    unknown: Option<(u32, String)>,
}

const REQ: usize = 0;
const EVENT: usize = 1;
const PARAMS: usize = 2;
const SEQ: usize = 3;
const RESP: usize = 4;
const ERR: usize = 5;

/// One top-level key: a known one's index, or an unknown one (kept only
/// if it is the first).
enum Key {
    Known(usize),
    Unknown(String),
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(KEYS.iter().position(|&known| known == k).map_or_else(|| Key::Unknown(k.to_owned()), Key::Known))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut f = Fields::default();
                let mut n = 0u32;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Known(RESP) => {
                            f.at[RESP].get_or_insert(n);
                            f.resp = Some(map.next_value()?);
                        }
                        Key::Known(i) => {
                            f.at[i].get_or_insert(n);
                            f.values[i] = Some(map.next_value()?);
                        }
                        Key::Unknown(k) => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            if f.unknown.is_none() {
                                f.unknown = Some((n, k));
                            }
                        }
                    }
                    n += 1;
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

impl Fields {
    fn get(&self, i: usize) -> Option<&Value> {
        self.values[i].as_ref()
    }

    fn take(&mut self, i: usize) -> Option<Value> {
        self.values[i].take()
    }

    /// Refuses the first key, in the document's order, that is not one
    /// of `allowed` in a `what`.
    fn only(&self, allowed: &[usize], what: &str) -> Result<(), Malformed> {
        let stray = (0..KEYS.len())
            .filter(|i| !allowed.contains(i))
            .filter_map(|i| Some((self.at[i]?, KEYS[i])))
            .chain(self.unknown.as_ref().map(|(at, k)| (*at, k.as_str())))
            .min_by_key(|(at, _)| *at);
        match stray {
            Some((_, k)) => Err(bad(format!("unknown key {k:?} in a {what}"))),
            None => Ok(()),
        }
    }

    fn seq(&self) -> Result<u64, Malformed> {
        match self.get(SEQ) {
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad(format!("seq {n} is not a non-negative integer"))),
            Some(other) => Err(bad(format!("seq is {other}, not an integer"))),
            None => Err(bad("seq is missing")),
        }
    }

    /// `params`, when there: an object or an array.
    fn params(&mut self) -> Result<Option<Value>, Malformed> {
        match self.take(PARAMS) {
            p @ (None | Some(Value::Object(_) | Value::Array(_))) => Ok(p),
            Some(other) => Err(bad(format!("params is {other}; an object or array, or absent when there are none"))),
        }
    }

    /// The name at `i` (`req` or `event`): a string, not empty.
    fn name(&mut self, i: usize) -> Option<String> {
        match self.take(i) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
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
        let mut f: Fields = serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => bad("not a JSON object"),
            _ => bad(format!("not JSON: {e}")),
        })?;
        if f.get(REQ).is_some() {
            f.only(&[REQ, PARAMS, SEQ], "request")?;
            let method = f.name(REQ).ok_or_else(|| bad("req is not a method name"))?;
            let params = f.params()?;
            return Ok(Message::Request { method, params, seq: f.seq()? });
        }
        if f.get(EVENT).is_some() {
            f.only(&[EVENT, PARAMS], "event")?;
            let name = f.name(EVENT).ok_or_else(|| bad("event is not a name"))?;
            return Ok(Message::Event { name, params: f.params()? });
        }
        match (f.resp.take(), f.get(ERR)) {
            (Some(_), Some(_)) => Err(bad("both resp and err")),
            (Some(resp), None) => {
                f.only(&[SEQ, RESP], "response")?;
                if !resp.get().starts_with(['{', '[']) {
                    return Err(bad(format!("resp is {}, not an object or array", resp.get())));
                }
                Ok(Message::Success { seq: f.seq()?, resp: Resp(resp) })
            }
            (None, Some(err)) => {
                f.only(&[SEQ, ERR], "response")?;
                let Value::Object(e) = err else { return Err(bad("err is not an object")) };
                only(e, &["code", "msg"], "err")?;
                let code = e.get("code").and_then(Value::as_i64).ok_or_else(|| bad("err.code is not an integer"))?;
                let msg = e.get("msg").and_then(Value::as_str).ok_or_else(|| bad("err.msg is not a string"))?;
                Ok(Message::Failure { seq: f.seq()?, err: RpcError::new(code, msg) })
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
            Message::Success { seq, resp } => return success_text(*seq, resp.text()),
            Message::Failure { seq, err } => {
                write!(s, "{{\"seq\":{seq},\"err\":{{\"code\":{},\"msg\":{}}}}}", err.code, Str(&err.msg))
            }
            Message::Event { name, params: Some(p) } => write!(s, "{{\"event\":{},\"params\":{p}}}", Str(name)),
            Message::Event { name, params: None } => write!(s, "{{\"event\":{}}}", Str(name)),
        };
        s
    }
}

/// A success's text frame, `resp` written by its `Display` (a `Value`'s
/// compact JSON, or a [`Resp`]'s text).
pub(crate) fn success_text(seq: u64, resp: impl std::fmt::Display) -> String {
    format!("{{\"seq\":{seq},\"resp\":{resp}}}")
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
            Message::Success { seq: 1, resp: Resp::of(&json!({})) },
            Message::Success { seq: 3, resp: Resp::of(&json!([{"name": "door", "token": "1"}])) },
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
            // The first stray key in the document's order is named.
            (r#"{"seq": 1, "params": {}, "resp": {}}"#, "unknown key \"params\" in a response"),
            (r#"{"a": 1, "req": "X", "seq": 1, "b": 2}"#, "unknown key \"a\" in a request"),
            (r#"{"req": "X", "seq": 1, "b": 2, "resp": {}}"#, "unknown key \"b\" in a request"),
            ("5", "not a JSON object"),
            (r#"{"req": "X", "seq": 1} x"#, "not JSON"),
            (r#"{"req": "X", "seq": 1"#, "not JSON"),
        ] {
            let e = Message::parse(text).unwrap_err();
            assert!(e.0.contains(why), "{text}: {e}");
        }
    }

    /// What `parse` did before it read the keys in one pass: the whole
    /// document as a `Value`, then the same rules.
    fn reference(text: &str) -> Option<Message> {
        let Value::Object(m) = serde_json::from_str::<Value>(text).ok()? else { return None };
        let keys = |allowed: &[&str]| m.keys().all(|k| allowed.contains(&k.as_str()));
        let seq = || m.get("seq")?.as_u64();
        let params = || match m.get("params") {
            None => Some(None),
            Some(p @ (Value::Object(_) | Value::Array(_))) => Some(Some(p.clone())),
            Some(_) => None,
        };
        let name = |k: &str| m.get(k)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        if m.contains_key("req") {
            keys(&["req", "params", "seq"]).then_some(())?;
            return Some(Message::Request { method: name("req")?, params: params()?, seq: seq()? });
        }
        if m.contains_key("event") {
            keys(&["event", "params"]).then_some(())?;
            return Some(Message::Event { name: name("event")?, params: params()? });
        }
        match (m.get("resp"), m.get("err")) {
            (Some(r @ (Value::Object(_) | Value::Array(_))), None) if keys(&["seq", "resp"]) => {
                Some(Message::Success { seq: seq()?, resp: Resp::of(r) })
            }
            (None, Some(Value::Object(e))) if keys(&["seq", "err"]) && e.keys().all(|k| k == "code" || k == "msg") => {
                let err = RpcError::new(e.get("code")?.as_i64()?, e.get("msg")?.as_str()?);
                Some(Message::Failure { seq: seq()?, err })
            }
            _ => None,
        }
    }

    proptest::proptest! {
        /// Any object of the packets' keys (and a stray one) with values
        /// of every kind is read as the whole-document parse reads it.
        #[test]
        fn one_pass_reads_what_the_whole_document_says(
            fields in proptest::collection::vec((0usize..7, 0usize..9), 0..6)
        ) {
            const K: [&str; 7] = ["req", "event", "params", "seq", "resp", "err", "x"];
            const V: [&str; 9] = [
                "\"Get\"", "\"\"", "3", "-1", "null", "{}", "[1]", "{\"code\": 2, \"msg\": \"m\"}", "{\"code\": 2}",
            ];
            let body: Vec<String> = fields.iter().map(|&(k, v)| format!("\"{}\": {}", K[k], V[v])).collect();
            let text = format!("{{{}}}", body.join(", "));
            proptest::prop_assert_eq!(Message::parse(&text).ok(), reference(&text), "{}", text);
        }
    }

    #[test]
    fn an_answer_is_kept_as_the_text_that_came() {
        let text = r#"{"seq": 4, "resp": [ {"ip" : "10.0.0.2", "dhcp": false} ]}"#;
        let Message::Success { seq: 4, resp } = Message::parse(text).unwrap() else { panic!("not a success") };
        assert_eq!(resp.text(), r#"[ {"ip" : "10.0.0.2", "dhcp": false} ]"#);
        assert_eq!(resp.value(), json!([{"ip": "10.0.0.2", "dhcp": false}]));
        assert_eq!(resp, Resp::of(&json!([{"ip": "10.0.0.2", "dhcp": false}])), "the same answer, spaced otherwise");
        assert_ne!(resp, Resp::of(&json!([{"ip": "10.0.0.3", "dhcp": false}])));
        // Still checked as JSON, whole.
        assert!(Message::parse(r#"{"seq": 4, "resp": [1, }"#).is_err());
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_as_serde_json_does() {
        let m = Message::parse(r#"{"req": "A", "seq": 1, "req": "B", "params": {"x": 1}}"#).unwrap();
        assert_eq!(m, Message::Request { method: "B".into(), params: Some(json!({"x": 1})), seq: 1 });
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
            (Message::Success { seq: u64::MAX, resp: Resp::of(&json!([])) }, json!({"seq": u64::MAX, "resp": []})),
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
