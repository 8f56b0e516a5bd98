//! The server end: a registry of services and properties that answers the
//! generic methods (`describe`, `listProperties`, `getProperties`,
//! `setProperties`, `listFunctions`, `listParameters`, `listEvents`, the
//! `system.*` calls), event subscriptions per connection, and the
//! connection driver a device, NVR or master server plugs its own methods
//! into.

use crate::header::{msg_type, ByteOrder, Packet, PacketCodec};
use crate::ping::{PingRequest, PingResponse};
use crate::value::{canon, parse_int_text, Struct, Value};
use crate::xml::{self, Message};
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

/// How a call failed: a fault (the request itself is unusable) or an ack
/// with a failure code (the request was understood and refused).
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    Fault { code: u32, message: String },
    Ack { code: u32, message: String },
}

impl Refusal {
    pub fn invalid(m: impl Into<String>) -> Refusal {
        Refusal::Fault { code: crate::ack::INVALID, message: m.into() }
    }
    pub fn fail(m: impl Into<String>) -> Refusal {
        Refusal::Ack { code: crate::ack::FAIL, message: m.into() }
    }
    pub fn busy(m: impl Into<String>) -> Refusal {
        Refusal::Ack { code: crate::ack::BUSY, message: m.into() }
    }
}

pub type Reply = Result<Value, Refusal>;

/// The success acknowledgement.
pub fn ack_ok() -> Value {
    Value::Struct(Struct::new().with("ErrorCode", crate::ack::SUCCESS as i32))
}

fn to_message(r: Reply) -> Message {
    match r {
        Ok(v) => Message::Response { params: vec![v] },
        Err(Refusal::Fault { code, message }) => Message::Fault { code: code as i64, message },
        Err(Refusal::Ack { code, message }) => Message::Response {
            params: vec![Value::Struct(Struct::new().with("ErrorCode", code as i32).with("ErrorString", message))],
        },
    }
}

// ------------------------------------------------------------- registry

#[derive(Clone, Debug, PartialEq)]
pub enum Validation {
    None,
    Regexp(String),
    /// `min,max,step`
    Range {
        min: f64,
        max: f64,
        step: f64,
    },
    List(Vec<String>),
}

impl Validation {
    pub fn range(min: f64, max: f64, step: f64) -> Validation {
        Validation::Range { min, max, step }
    }

    pub fn list(items: &[&str]) -> Validation {
        Validation::List(items.iter().map(|s| s.to_string()).collect())
    }

    /// Why `v` does not pass, or None.
    pub fn check(&self, v: &Value) -> Option<String> {
        match self {
            Validation::None => None,
            Validation::Regexp(re) => {
                let text = v.to_text();
                let ok = regex_lite::Regex::new(&format!("^(?:{re})$")).map(|r| r.is_match(&text)).unwrap_or(false);
                (!ok).then(|| format!("{text:?} does not match {re}"))
            }
            Validation::Range { min, max, step } => {
                let x = match v {
                    Value::Double(d) => *d,
                    other => match other.as_i64() {
                        Some(i) => i as f64,
                        None => return Some(format!("{} is not a number", v.to_text())),
                    },
                };
                if x < *min || x > *max {
                    return Some(format!("{x} is outside {min}..{max}"));
                }
                if *step > 0.0 {
                    let k = (x - min) / step;
                    if (k - k.round()).abs() > 1e-9 {
                        return Some(format!("{x} is not {min} plus a multiple of {step}"));
                    }
                }
                None
            }
            Validation::List(items) => {
                let t = v.to_text();
                (!items.contains(&t)).then(|| format!("{t:?} is not one of {}", items.join(", ")))
            }
        }
    }

    fn describe_into(&self, s: &mut Struct, prefix: &str) {
        // The conditional rule: `conditionalValidation` names its type,
        // `validRange`/`validRegexp`/`validList` hold it (the seed's
        // example shows `validRange`).
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}{}{}", k[..1].to_uppercase(), &k[1..])
            }
        };
        let vkey = if prefix.is_empty() { "validation" } else { "conditionalValidation" };
        match self {
            Validation::None => s.push(vkey, "none"),
            Validation::Regexp(r) => {
                s.push(vkey, "regexp");
                s.push(&key("regexp"), r.as_str());
            }
            Validation::Range { min, max, step } => {
                s.push(vkey, "range");
                s.push(&key("range"), format!("{},{},{}", num(*min), num(*max), num(*step)));
            }
            Validation::List(items) => {
                s.push(vkey, "list");
                // The seed repeats the member for each item.
                for i in items {
                    s.0.push((key("list"), Value::Str(i.clone())));
                }
            }
        }
    }
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

#[derive(Clone, Debug)]
pub struct Property {
    pub id: String,
    pub name: String,
    pub value: Value,
    pub validation: Validation,
    pub access: Access,
    pub units: String,
    /// Settable only while the named property's value passes this rule.
    pub conditional: Option<(String, Validation)>,
}

impl Property {
    pub fn rw(id: &str, name: &str, value: impl Into<Value>, validation: Validation) -> Property {
        Property {
            id: id.into(),
            name: name.into(),
            value: value.into(),
            validation,
            access: Access::ReadWrite,
            units: "n/a".into(),
            conditional: None,
        }
    }

    pub fn ro(id: &str, name: &str, value: impl Into<Value>) -> Property {
        Property { access: Access::Read, ..Property::rw(id, name, value, Validation::None) }
    }

    pub fn units(mut self, u: &str) -> Property {
        self.units = u.into();
        self
    }

    pub fn when(mut self, dep: &str, rule: Validation) -> Property {
        self.conditional = Some((dep.into(), rule));
        self
    }

    fn describe(&self) -> Value {
        let mut s = Struct::new().with("id", self.id.as_str()).with("name", self.name.as_str());
        s.push("value", self.value.clone());
        self.validation.describe_into(&mut s, "");
        if let Some((dep, rule)) = &self.conditional {
            s.push("conditional", dep.as_str());
            rule.describe_into(&mut s, "valid");
        }
        s.push("access", if self.access == Access::Read { "r" } else { "rw" });
        s.push("units", self.units.as_str());
        Value::Struct(s)
    }
}

/// A parameter of a custom function, as `listParameters` describes it.
#[derive(Clone, Debug)]
pub struct ParamDesc {
    pub id: String,
    pub name: String,
    /// An empty value of the parameter's type (`<int></int>` in the seed).
    pub value_type: Value,
    pub validation: Validation,
    pub units: String,
    /// mandatory, optional or conditional.
    pub param_type: String,
}

impl ParamDesc {
    pub fn new(id: &str, name: &str, value_type: Value, mandatory: bool) -> ParamDesc {
        ParamDesc {
            id: id.into(),
            name: name.into(),
            value_type,
            validation: Validation::None,
            units: "n/a".into(),
            param_type: if mandatory { "mandatory" } else { "optional" }.into(),
        }
    }

    pub fn valid(mut self, v: Validation) -> ParamDesc {
        self.validation = v;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub multi_call: bool,
    pub multi_answer: bool,
    pub call: Vec<ParamDesc>,
    pub response: Vec<ParamDesc>,
}

impl Function {
    pub fn new(name: &str, call: Vec<ParamDesc>, response: Vec<ParamDesc>) -> Function {
        Function { name: name.into(), multi_call: false, multi_answer: false, call, response }
    }
}

#[derive(Clone, Debug)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub version: String,
    pub properties: Vec<Property>,
    pub functions: Vec<Function>,
    /// (id, friendly name)
    pub events: Vec<(String, String)>,
}

impl Service {
    pub fn new(id: &str, name: &str) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            version: "1.0".into(),
            properties: Vec::new(),
            functions: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn prop(&self, id: &str) -> Option<&Property> {
        let c = canon(id);
        self.properties.iter().find(|p| canon(&p.id) == c)
    }

    pub fn prop_mut(&mut self, id: &str) -> Option<&mut Property> {
        let c = canon(id);
        self.properties.iter_mut().find(|p| canon(&p.id) == c)
    }
}

/// The unit's services; answers the generic methods.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub unit_id: String,
    pub unit_name: String,
    pub version: String,
    pub services: Vec<Service>,
    /// Event groups for `system.listEvents` (id, name).
    pub event_groups: Vec<(String, String)>,
}

/// What a successful `setProperties` changed: (service, property, value).
pub type Changes = Vec<(String, String, Value)>;

impl Registry {
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.id.eq_ignore_ascii_case(id))
    }

    pub fn service_mut(&mut self, id: &str) -> Option<&mut Service> {
        self.services.iter_mut().find(|s| s.id.eq_ignore_ascii_case(id))
    }

    /// Splits `cviVideo.01.2.getProperties` into the service and method
    /// when the service exists.
    pub fn route<'a>(&self, method: &'a str) -> Option<(&Service, &'a str)> {
        let (svc, m) = method.rsplit_once('.')?;
        Some((self.service(svc)?, m))
    }

    /// Answers a generic method, or None when `method` is not one.
    pub fn handle(&mut self, method: &str, params: &[Value]) -> Option<std::result::Result<(Value, Changes), Refusal>> {
        let (svc, m) = method.rsplit_once('.')?;
        let m = m.to_ascii_lowercase();
        if svc.eq_ignore_ascii_case("system") {
            return match m.as_str() {
                "describe" => Some(Ok((
                    Value::Struct(
                        Struct::new()
                            .with("id", self.unit_id.as_str())
                            .with("name", self.unit_name.as_str())
                            .with("version", self.version.as_str())
                            .with("propertySupport", 0u32)
                            .with("functionSupport", 0u32),
                    ),
                    vec![],
                ))),
                "listservices" => {
                    Some(Ok((Value::Array(self.services.iter().map(|s| Value::Str(s.id.clone())).collect()), vec![])))
                }
                "listevents" => Some(Ok((id_names(&self.event_groups), vec![]))),
                _ => None,
            };
        }
        let generic = [
            "describe",
            "listproperties",
            "getproperties",
            "setproperties",
            "listfunctions",
            "listparameters",
            "listevents",
        ];
        if !generic.contains(&m.as_str()) {
            return None;
        }
        // Event groups (`cviVideo.listEvents`) may name a group that is not
        // a service of its own.
        if m == "listevents" && self.service(svc).is_none() {
            let evs: Vec<(String, String)> = self
                .services
                .iter()
                .filter(|s| s.id.split('.').next().is_some_and(|g| g.eq_ignore_ascii_case(svc)))
                .flat_map(|s| s.events.clone())
                .collect();
            if self.event_groups.iter().any(|(g, _)| g.eq_ignore_ascii_case(svc)) {
                let mut seen = Vec::new();
                for e in evs {
                    if !seen.contains(&e) {
                        seen.push(e);
                    }
                }
                return Some(Ok((id_names(&seen), vec![])));
            }
        }
        let Some(s) = self.service_mut(svc) else {
            return Some(Err(Refusal::invalid(format!("{method}: no service {svc:?} on this unit"))));
        };
        Some(match m.as_str() {
            "describe" => Ok((
                Value::Struct(
                    Struct::new()
                        .with("id", s.id.as_str())
                        .with("name", s.name.as_str())
                        .with("version", s.version.as_str())
                        .with("propertySupport", (!s.properties.is_empty()) as u32)
                        .with("functionSupport", (!s.functions.is_empty()) as u32),
                ),
                vec![],
            )),
            "listevents" => Ok((id_names(&s.events), vec![])),
            "listproperties" => Ok((Value::Array(s.properties.iter().map(Property::describe).collect()), vec![])),
            "listfunctions" => Ok((
                Value::Array(
                    s.functions
                        .iter()
                        .map(|f| {
                            Value::Struct(
                                Struct::new()
                                    .with("methodName", f.name.as_str())
                                    .with("multiCallSupport", f.multi_call as u32)
                                    .with("multiAnswerSupport", f.multi_answer as u32),
                            )
                        })
                        .collect(),
                ),
                vec![],
            )),
            "listparameters" => {
                let name = params.first().map(|v| match v {
                    Value::Struct(st) => st.str("methodName").unwrap_or_default(),
                    v => v.to_text(),
                });
                let Some(name) = name else {
                    return Some(Err(Refusal::invalid(format!("{method}: needs the function's name"))));
                };
                match s.functions.iter().find(|f| f.name.eq_ignore_ascii_case(&name)) {
                    None => Err(Refusal::fail(format!("{}: no function {name:?}", s.id))),
                    Some(f) => Ok((
                        Value::Struct(
                            Struct::new()
                                .with("methodCall", describe_params(&f.call, true))
                                .with("methodResponse", describe_params(&f.response, false)),
                        ),
                        vec![],
                    )),
                }
            }
            "getproperties" => get_properties(s, params).map(|v| (v, vec![])),
            "setproperties" => set_properties(s, params),
            _ => unreachable!(),
        })
    }
}

fn id_names(items: &[(String, String)]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|(i, n)| Value::Struct(Struct::new().with("id", i.as_str()).with("name", n.as_str())))
            .collect(),
    )
}

fn describe_params(ps: &[ParamDesc], call: bool) -> Value {
    Value::Array(
        ps.iter()
            .map(|p| {
                let mut s = Struct::new().with("id", p.id.as_str()).with("name", p.name.as_str());
                s.push("valueType", p.value_type.clone());
                if call {
                    p.validation.describe_into(&mut s, "");
                }
                s.push("units", p.units.as_str());
                if call {
                    s.push("paramType", p.param_type.as_str());
                }
                Value::Struct(s)
            })
            .collect(),
    )
}

/// The property ids a getProperties asks for: an array of names, names as
/// positional params, or a struct whose member names are the ids. None
/// means all.
fn requested_ids(params: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for p in params {
        match p {
            Value::Array(a) => out.extend(a.iter().map(|v| match v {
                Value::Struct(s) => {
                    s.str("id").unwrap_or_else(|| s.iter().next().map(|(n, _)| n.to_string()).unwrap_or_default())
                }
                v => v.to_text(),
            })),
            Value::Struct(s) => out.extend(s.iter().map(|(n, _)| n.to_string())),
            v => out.push(v.to_text()),
        }
    }
    out
}

fn get_properties(s: &Service, params: &[Value]) -> Reply {
    let ids = requested_ids(params);
    let mut out = Struct::new();
    if ids.is_empty() {
        for p in &s.properties {
            out.push(&p.id, p.value.clone());
        }
    } else {
        for id in ids {
            match s.prop(&id) {
                Some(p) => out.push(&p.id, p.value.clone()),
                None => return Err(Refusal::fail(format!("{}: no property {id:?}", s.id))),
            }
        }
    }
    Ok(Value::Struct(out))
}

/// The (id, value) pairs of a setProperties in any of the seed's shapes: a
/// struct of members, an array of single-member structs, an array of
/// `{id, value}` structs.
pub fn pairs(params: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for p in params {
        match p {
            Value::Struct(s) => {
                if let (Some(id), Some(v)) = (s.str("id"), s.get("value")) {
                    if s.len() == 2 {
                        out.push((id, v.clone()));
                        continue;
                    }
                }
                out.extend(s.iter().map(|(n, v)| (n.to_string(), v.clone())));
            }
            Value::Array(a) => out.extend(pairs(a)),
            _ => {}
        }
    }
    out
}

/// Converts an incoming value to the property's type (a `<string>5</string>`
/// for a uint property is 5).
fn coerce(current: &Value, v: &Value) -> Option<Value> {
    Some(match current {
        Value::Int(_) => Value::Int(i32::try_from(v.as_i64()?).ok()?),
        Value::I4(_) => Value::I4(i32::try_from(v.as_i64()?).ok()?),
        Value::UInt(_) => Value::UInt(u32::try_from(v.as_i64()?).ok()?),
        Value::Bool(_) => Value::Bool(v.as_bool()?),
        Value::Double(_) => match v {
            Value::Double(d) => Value::Double(*d),
            Value::Str(s) => Value::Double(s.trim().parse().ok()?),
            v => Value::Double(v.as_i64()? as f64),
        },
        Value::Str(_) => Value::Str(v.to_text()),
        _ => v.clone(),
    })
}

fn set_properties(s: &mut Service, params: &[Value]) -> std::result::Result<(Value, Changes), Refusal> {
    let want = pairs(params);
    if want.is_empty() {
        return Err(Refusal::invalid(format!("{}.setProperties: no property given", s.id)));
    }
    // Validate everything first: a refused set changes nothing.
    let mut staged: Vec<(usize, Value)> = Vec::new();
    for (id, v) in &want {
        let Some(i) = s.properties.iter().position(|p| canon(&p.id) == canon(id)) else {
            return Err(Refusal::fail(format!("{}: no property {id:?}", s.id)));
        };
        let p = &s.properties[i];
        if p.access == Access::Read {
            return Err(Refusal::fail(format!("{}.{} is read-only", s.id, p.id)));
        }
        let Some(nv) = coerce(&p.value, v) else {
            return Err(Refusal::fail(format!("{}.{}: {} is not a {}", s.id, p.id, v.to_text(), p.value.type_name())));
        };
        if let Some(why) = p.validation.check(&nv) {
            return Err(Refusal::fail(format!("{}.{}: {why}", s.id, p.id)));
        }
        staged.push((i, nv));
    }
    // Conditions see the values being set together.
    for (i, _) in &staged {
        if let Some((dep, rule)) = &s.properties[*i].conditional {
            let dv = staged
                .iter()
                .find(|(j, _)| canon(&s.properties[*j].id) == canon(dep))
                .map(|(_, v)| v.clone())
                .or_else(|| s.prop(dep).map(|p| p.value.clone()));
            if let Some(dv) = dv {
                if let Some(why) = rule.check(&dv) {
                    return Err(Refusal::fail(format!(
                        "{}.{} can only be set while {dep} passes its condition: {why}",
                        s.id, s.properties[*i].id
                    )));
                }
            }
        }
    }
    let mut changes = Vec::new();
    for (i, v) in staged {
        s.properties[i].value = v.clone();
        changes.push((s.id.clone(), s.properties[i].id.clone(), v));
    }
    Ok((ack_ok(), changes))
}

/// Parses `min,max,step`.
pub fn parse_range(s: &str) -> Option<Validation> {
    let v: Vec<f64> = s.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
    (v.len() == 3).then(|| Validation::range(v[0], v[1], v[2]))
}

// ------------------------------------------------------------- events

/// Event types (a bitmask in subscriptions).
pub mod event_type {
    pub const KEEP_ALIVE: u32 = 0x01;
    pub const EXTERNAL: u32 = 0x02;
    pub const MOTION: u32 = 0x04;
    pub const VIDEO_LOSS: u32 = 0x08;
    pub const RECORD_LOSS: u32 = 0x10;
    pub const RECORD_DISC: u32 = 0x20;
}

#[derive(Clone, Debug)]
struct Sub {
    conn: u64,
    mask: u32,
    channel: u32,
}

/// Connections and their event subscriptions; pushes events to them.
#[derive(Default)]
pub struct Hub {
    conns: Mutex<Vec<(u64, mpsc::Sender<Packet>, ByteOrder)>>,
    subs: Mutex<Vec<Sub>>,
    next: AtomicU64,
}

impl Hub {
    fn add(&self, tx: mpsc::Sender<Packet>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.conns.lock().unwrap().push((id, tx, ByteOrder::Big));
        id
    }

    fn set_order(&self, conn: u64, order: ByteOrder) {
        if let Some(c) = self.conns.lock().unwrap().iter_mut().find(|c| c.0 == conn) {
            c.2 = order;
        }
    }

    fn remove(&self, conn: u64) {
        self.conns.lock().unwrap().retain(|c| c.0 != conn);
        self.subs.lock().unwrap().retain(|s| s.conn != conn);
    }

    /// `cviEvent.subscribe`: adds `mask` for `channel` (0 = all).
    pub fn subscribe(&self, conn: u64, mask: u32, channel: u32) {
        let mut subs = self.subs.lock().unwrap();
        match subs.iter_mut().find(|s| s.conn == conn && s.channel == channel) {
            Some(s) => s.mask |= mask,
            None => subs.push(Sub { conn, mask, channel }),
        }
    }

    /// `cviEvent.unsubscribe`: clears `mask` for `channel` (0 = every
    /// channel's subscription). Returns whether anything was subscribed.
    pub fn unsubscribe(&self, conn: u64, mask: u32, channel: u32) -> bool {
        let mut subs = self.subs.lock().unwrap();
        let mut hit = false;
        for s in subs.iter_mut().filter(|s| s.conn == conn && (channel == 0 || s.channel == channel)) {
            hit |= s.mask & mask != 0;
            s.mask &= !mask;
        }
        subs.retain(|s| s.mask != 0);
        hit
    }

    pub fn subscriptions(&self, conn: u64) -> Vec<(u32, u32)> {
        self.subs.lock().unwrap().iter().filter(|s| s.conn == conn).map(|s| (s.mask, s.channel)).collect()
    }

    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Pushes `method(params)` with transaction 0 to every connection
    /// subscribed to `ty` on `channel`; returns how many got it. A
    /// connection whose queue is full misses it (and is logged), the unit
    /// never blocks on a slow client.
    pub fn notify(&self, ty: u32, channel: u32, method: &str, params: Vec<Value>) -> usize {
        let targets: Vec<u64> = self
            .subs
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.mask & ty != 0 && (s.channel == 0 || channel == 0 || s.channel == channel))
            .map(|s| s.conn)
            .collect();
        if targets.is_empty() {
            return 0;
        }
        let body = bytes::Bytes::from(xml::write(&Message::Call { method: method.into(), params }));
        let conns = self.conns.lock().unwrap();
        let mut n = 0;
        for (id, tx, order) in conns.iter() {
            if targets.contains(id) {
                let mut p = Packet::new(msg_type::XML, false, 0, body.clone());
                p.header.order = *order;
                match tx.try_send(p) {
                    Ok(()) => n += 1,
                    Err(_) => tracing::warn!(conn = id, "event dropped: the client is not reading"),
                }
            }
        }
        n
    }

    /// Pushes raw XML (the analytics stream) to one connection.
    pub fn push_raw(&self, conn: u64, body: String) -> bool {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .find(|c| c.0 == conn)
            .is_some_and(|(_, tx, _)| tx.try_send(Packet::new(msg_type::XML, false, 0, body)).is_ok())
    }
}

// ------------------------------------------------------------- driver

/// The calling connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub conn: u64,
    pub addr: SocketAddr,
    pub local: SocketAddr,
}

/// A unit's own behaviour.
pub trait Handler: Send + Sync + 'static {
    /// Answers a call.
    fn call(&self, peer: &Peer, method: &str, params: Vec<Value>) -> impl Future<Output = Reply> + Send;
    /// The ping response for this unit (the connection type is filled in).
    fn ping(&self, req: &PingRequest, local: SocketAddr) -> PingResponse;
    /// A data channel opened on the CVIP port (firmware images).
    fn data(
        &self,
        auth: String,
        reader: FramedRead<tokio::net::tcp::OwnedReadHalf, PacketCodec>,
    ) -> impl Future<Output = ()> + Send;
    /// The connection closed.
    fn closed(&self, _peer: &Peer) {}
}

/// Accepts connections forever.
pub async fn serve<H: Handler>(listener: TcpListener, hub: Arc<Hub>, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let (hub, h) = (hub.clone(), handler.clone());
                tokio::spawn(async move { drive(s, addr, hub, h).await });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs one connection on one task: calls are answered in the order they
/// came (the client may send many before reading), answers to requests
/// already buffered go out together in one write, events pushed by other
/// tasks go out between answers.
pub async fn drive<H: Handler>(s: TcpStream, addr: SocketAddr, hub: Arc<Hub>, h: Arc<H>) {
    let _ = s.set_nodelay(true);
    let local = s.local_addr().unwrap_or(addr);
    let (rd, wr) = s.into_split();
    let (tx, mut rx) = mpsc::channel::<Packet>(1024);
    let conn = hub.add(tx);
    let peer = Peer { conn, addr, local };
    let mut r = FramedRead::new(rd, PacketCodec::default());
    let mut w = FramedWrite::new(wr, PacketCodec::default());
    let mut first = true;
    'conn: loop {
        let p = tokio::select! {
            biased;
            p = r.next() => match p {
                None => break,
                Some(Err(e)) => {
                    tracing::info!(%addr, "closing: {e}");
                    break;
                }
                Some(Ok(p)) => p,
            },
            Some(out) = rx.recv() => {
                if w.feed(out).await.is_err() {
                    break;
                }
                while let Ok(out) = rx.try_recv() {
                    if w.feed(out).await.is_err() {
                        break 'conn;
                    }
                }
                if w.flush().await.is_err() {
                    break;
                }
                continue;
            }
        };
        if std::mem::take(&mut first) {
            hub.set_order(conn, p.header.order);
            if p.header.msg_type == msg_type::DATA_OPEN {
                hub.remove(conn);
                drop(w);
                let auth = String::from_utf8_lossy(&p.body).into_owned();
                h.data(auth, r).await;
                return;
            }
        }
        let reply = match p.header.msg_type {
            msg_type::PING => {
                let mut whole = p.header.to_bytes().to_vec();
                whole.extend_from_slice(&p.body);
                match PingRequest::decode(&whole) {
                    Ok((hdr, req)) => {
                        crate::header::PacketCodec::default().decode_one(&h.ping(&req, local).encode(&hdr)).ok()
                    }
                    Err(e) => {
                        tracing::info!(%addr, "bad ping: {e}");
                        None
                    }
                }
            }
            msg_type::XML if !p.header.response => {
                let reply = match xml::parse(&p.body) {
                    Err(e) => Message::Fault { code: crate::ack::INVALID as i64, message: e.to_string() },
                    Ok(parsed) => {
                        for rep in &parsed.repairs {
                            tracing::debug!(%addr, "repaired request: {rep}");
                        }
                        match parsed.value {
                            Message::Call { method, params } => to_message(h.call(&peer, &method, params).await),
                            _ => Message::Fault {
                                code: crate::ack::INVALID as i64,
                                message: "expected a methodCall".into(),
                            },
                        }
                    }
                };
                // Transaction 0 is never answered.
                (p.header.transaction != 0).then(|| Packet::reply_to(&p.header, xml::write(&reply)))
            }
            other => {
                tracing::debug!(%addr, "ignored packet type {other:#04x}");
                None
            }
        };
        if let Some(pkt) = reply {
            if w.feed(pkt).await.is_err() {
                break;
            }
        }
        // Another whole request already here: answer it first and write
        // both answers at once. Otherwise (or with only part of one) send
        // now: the client may be waiting for this answer to send the rest.
        if !holds_packet(r.read_buffer()) {
            while let Ok(out) = rx.try_recv() {
                if w.feed(out).await.is_err() {
                    break 'conn;
                }
            }
            if w.flush().await.is_err() {
                break;
            }
        }
    }
    let _ = w.flush().await;
    hub.remove(conn);
    h.closed(&peer);
}

/// Whether `b` starts with a complete packet.
fn holds_packet(b: &[u8]) -> bool {
    b.len() >= crate::header::HEADER_LEN
        && crate::header::Header::parse(&b[..crate::header::HEADER_LEN]).is_ok_and(|h| b.len() >= h.size as usize)
}

impl PacketCodec {
    /// Decodes one whole packet from a byte slice.
    pub fn decode_one(&mut self, b: &[u8]) -> Result<Packet, crate::header::CodecError> {
        use tokio_util::codec::Decoder;
        let mut buf = bytes::BytesMut::from(b);
        self.decode(&mut buf)?.ok_or_else(|| {
            crate::header::CodecError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short packet"))
        })
    }
}

/// Answers Ping Requests on a UDP socket (the CVIP port or the common
/// port) with `h`'s response.
pub async fn serve_ping_udp<H: Handler>(sock: tokio::net::UdpSocket, h: Arc<H>) {
    let local = sock.local_addr().unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap());
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else { continue };
        match PingRequest::decode(&buf[..n]) {
            Ok((hdr, req)) => {
                let resp = h.ping(&req, local);
                let _ = sock.send_to(&resp.encode(&hdr), from).await;
            }
            Err(e) => tracing::debug!(%from, "not a ping request: {e}"),
        }
    }
}

/// Answers only Ping Requests on a TCP listener (the common port), then
/// closes; everything else is ignored.
pub async fn serve_common_tcp<H: Handler>(listener: TcpListener, h: Arc<H>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        let h = h.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let local = s.local_addr().unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap());
            let mut b = [0u8; crate::ping::REQUEST_LEN];
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut b)).await;
            if let Ok(Ok(_)) = r {
                if let Ok((hdr, req)) = PingRequest::decode(&b) {
                    let _ = s.write_all(&h.ping(&req, local).encode(&hdr)).await;
                }
            }
        });
    }
}

/// Reads an integer field from a struct param or positional params.
pub fn field_int(params: &[Value], name: &str, pos: usize) -> Option<i64> {
    match params.first() {
        Some(Value::Struct(s)) if params.len() == 1 => s.int(name),
        Some(Value::Array(a)) if params.len() == 1 => {
            pairs(a).into_iter().find(|(n, _)| canon(n) == canon(name)).and_then(|(_, v)| v.as_i64())
        }
        _ => params.get(pos).and_then(|v| v.as_i64().or_else(|| parse_int_text(&v.to_text()))),
    }
}

/// The request's fields as one struct, whatever shape they came in: a
/// struct, an array of single-member structs, or positional values named
/// by `order` (the table's field order).
pub fn fields(params: &[Value], order: &[&str]) -> Struct {
    match params {
        [Value::Struct(s)] => s.clone(),
        [Value::Array(a)] if a.iter().all(|v| matches!(v, Value::Struct(_))) && !a.is_empty() => Struct(pairs(a)),
        _ => {
            let mut s = Struct::new();
            for (i, v) in params.iter().enumerate() {
                if let Some(n) = order.get(i) {
                    s.push(n, v.clone());
                }
            }
            s
        }
    }
}
