//! The seed's method and event catalogue, typed, with parameter validation.
//! A well-formed request whose params are invalid is answered
//! `err {code: 1, msg: "params.<field>: <why>"}` (not a disconnect).

use crate::message::{codes, RpcError};
use chrono::NaiveDateTime;
use serde_json::{json, Map, Value};

/// Methods the IVC serves (the IVT calls them).
pub const IVC_METHODS: [&str; 4] = ["Keepalive", "preview_server", "GetFirmware", "AlarmNotify"];
/// Methods the IVT serves (the IVC calls them).
pub const IVT_METHODS: [&str; 12] = [
    "RTMPPublish",
    "RTMPStopPublish",
    "StartCloudRecord",
    "StopCloudRecord",
    "RebootChannel",
    "GetPTZPresetList",
    "GetPTZPresetTourList",
    "AlarmMoveDetectConfig",
    "AlarmRectIntrusionDetectConfig",
    "GetNetConfig",
    "GetRTMPPublishConfig",
    "SetRTMPPublishConfig",
];
/// Events the IVT accepts (the IVC sends them).
pub const IVT_EVENTS: [&str; 6] =
    ["UpgradeFirmware", "SyncTime", "CtrlPTZ", "GotoPTZPreset", "CtrlPTZPresetTour", "CtrlPTZPatrol"];

/// An invalid parameter: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("params.{field}: {why}")]
pub struct ParamError {
    pub field: String,
    pub why: String,
}

impl From<ParamError> for RpcError {
    fn from(e: ParamError) -> Self {
        RpcError::new(codes::INTERNAL, e.to_string())
    }
}

fn perr(field: &str, why: impl Into<String>) -> ParamError {
    ParamError { field: field.to_owned(), why: why.into() }
}

/// Reads the fields of one params object, remembering which were used so
/// unknown ones can be refused.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
    used: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn of(v: Option<&'a Value>, prefix: &str) -> Result<Fields<'a>, ParamError> {
        match v {
            Some(Value::Object(map)) => Ok(Fields { map, prefix: prefix.to_owned(), used: Vec::new() }),
            Some(other) => Err(perr(prefix.trim_end_matches('.'), format!("expected an object, got {other}"))),
            None => Err(perr(prefix.trim_end_matches('.'), "missing (this method takes parameters)")),
        }
    }
    fn name(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }
    fn get(&mut self, k: &'static str) -> Option<&'a Value> {
        self.used.push(k);
        self.map.get(k)
    }
    fn req(&mut self, k: &'static str) -> Result<&'a Value, ParamError> {
        let name = self.name(k);
        self.get(k).ok_or_else(|| perr(&name, "required"))
    }
    fn int(&mut self, k: &'static str, min: i64, max: i64) -> Result<i64, ParamError> {
        let name = self.name(k);
        let v = self.req(k)?;
        let n = v.as_i64().ok_or_else(|| perr(&name, format!("expected an integer, got {v}")))?;
        if n < min || n > max {
            return Err(perr(&name, format!("{n} is out of range {min}..={max}")));
        }
        Ok(n)
    }
    fn opt_int(&mut self, k: &'static str, min: i64, max: i64) -> Result<Option<i64>, ParamError> {
        if self.map.contains_key(k) {
            self.int(k, min, max).map(Some)
        } else {
            self.used.push(k);
            Ok(None)
        }
    }
    fn channel(&mut self) -> Result<u32, ParamError> {
        self.int("channel", 0, u32::MAX as i64).map(|c| c as u32)
    }
    fn string(&mut self, k: &'static str, max_bytes: usize) -> Result<String, ParamError> {
        let name = self.name(k);
        let v = self.req(k)?;
        let s = v.as_str().ok_or_else(|| perr(&name, format!("expected a string, got {v}")))?;
        if s.len() > max_bytes {
            return Err(perr(&name, format!("{} bytes, at most {max_bytes}", s.len())));
        }
        Ok(s.to_owned())
    }
    fn boolean(&mut self, k: &'static str) -> Result<bool, ParamError> {
        let name = self.name(k);
        let v = self.req(k)?;
        v.as_bool().ok_or_else(|| perr(&name, format!("expected true or false, got {v}")))
    }
    fn one_of(&mut self, k: &'static str, allowed: &[&str]) -> Result<String, ParamError> {
        let name = self.name(k);
        let s = self.string(k, 64)?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(perr(&name, format!("{s:?} is not one of {}", allowed.join(", "))))
        }
    }
    fn done(self) -> Result<(), ParamError> {
        match self.map.keys().find(|k| !self.used.contains(&k.as_str())) {
            Some(k) => Err(perr(&self.name(k), "unknown field")),
            None => Ok(()),
        }
    }
}

fn no_params(p: Option<&Value>) -> Result<(), ParamError> {
    match p {
        None => Ok(()),
        Some(v) => Err(perr("", format!("this method takes no parameters, got {v}"))),
    }
}

/// Stream quality: low, standard, high, full high definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quality {
    Ld,
    Sd,
    Hd,
    Fhd,
}

impl Quality {
    pub const NAMES: [&'static str; 4] = ["ld", "sd", "hd", "fhd"];
    pub fn as_str(self) -> &'static str {
        Quality::NAMES[self as usize]
    }
    fn parse(s: &str) -> Quality {
        match s {
            "ld" => Quality::Ld,
            "sd" => Quality::Sd,
            "hd" => Quality::Hd,
            _ => Quality::Fhd,
        }
    }
}

// ---------- IVC side: what the IVT calls ----------

/// Keepalive `state` of the IVT: 1 online, 2 upgrading, 3 abnormal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    Online = 1,
    Upgrading = 2,
    Abnormal = 3,
}

/// A channel's state: 0 offline, 1 online, 2 live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    Offline = 0,
    Online = 1,
    Live = 2,
}

/// Alarm kinds (also the bit numbers of Keepalive's `alarm` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmType {
    External = 2,
    Motion = 3,
    TripWire = 4,
}

impl AlarmType {
    fn from_int(n: i64) -> AlarmType {
        match n {
            2 => AlarmType::External,
            3 => AlarmType::Motion,
            _ => AlarmType::TripWire,
        }
    }
}

/// The alarm bits Keepalive may set: 2 external, 3 motion, 4 trip-wire.
pub const ALARM_BITS: i64 = (1 << 2) | (1 << 3) | (1 << 4);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelStatus {
    pub channel: u32,
    pub state: ChannelState,
    /// The StartCloudRecord session running on the channel, if any.
    pub record_session: Option<String>,
    /// Alarm bit flags (see [`ALARM_BITS`]); `None` = no alarm.
    pub alarm: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub state: DeviceState,
    pub channels: Vec<ChannelStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmNotify {
    pub channel: u32,
    pub kind: AlarmType,
    /// true = "start", false = "end".
    pub start: bool,
    pub desc: String,
}

/// A request the IVC serves, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IvcRequest {
    Keepalive(Keepalive),
    PreviewServer,
    GetFirmware,
    AlarmNotify(AlarmNotify),
}

impl IvcRequest {
    /// Validates the params of `method` (one of [`IVC_METHODS`]).
    pub fn parse(method: &str, params: Option<&Value>) -> Result<IvcRequest, ParamError> {
        match method {
            "Keepalive" => {
                let mut f = Fields::of(params, "")?;
                let state = match f.int("state", 1, 3)? {
                    1 => DeviceState::Online,
                    2 => DeviceState::Upgrading,
                    _ => DeviceState::Abnormal,
                };
                let list = f.req("channels")?;
                let items =
                    list.as_array().ok_or_else(|| perr("channels", format!("expected an array, got {list}")))?;
                let mut channels = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let mut c = Fields::of(Some(item), &format!("channels[{i}]."))?;
                    let channel = c.channel()?;
                    let state = match c.int("state", 0, 2)? {
                        0 => ChannelState::Offline,
                        1 => ChannelState::Online,
                        _ => ChannelState::Live,
                    };
                    let record_session = if c.map.contains_key("record_session") {
                        Some(c.string("record_session", 22)?).filter(|s| !s.is_empty())
                    } else {
                        c.used.push("record_session");
                        None
                    };
                    let alarm = c.opt_int("alarm", 0, u32::MAX as i64)?;
                    if let Some(a) = alarm {
                        if a & !ALARM_BITS != 0 {
                            return Err(perr(
                                &format!("channels[{i}].alarm"),
                                format!("bits {:#x} are not alarm types (2, 3, 4)", a & !ALARM_BITS),
                            ));
                        }
                    }
                    c.done()?;
                    channels.push(ChannelStatus { channel, state, record_session, alarm: alarm.map(|a| a as u32) });
                }
                f.done()?;
                Ok(IvcRequest::Keepalive(Keepalive { state, channels }))
            }
            "preview_server" => no_params(params).map(|()| IvcRequest::PreviewServer),
            "GetFirmware" => no_params(params).map(|()| IvcRequest::GetFirmware),
            "AlarmNotify" => {
                let mut f = Fields::of(params, "")?;
                let channel = f.channel()?;
                let kind = AlarmType::from_int(f.int("type", 2, 4)?);
                let start = f.one_of("state", &["start", "end"])? == "start";
                let desc = f.string("desc", 4096)?;
                f.done()?;
                Ok(IvcRequest::AlarmNotify(AlarmNotify { channel, kind, start, desc }))
            }
            other => Err(perr("", format!("{other:?} is not an IVC method"))),
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            IvcRequest::Keepalive(_) => "Keepalive",
            IvcRequest::PreviewServer => "preview_server",
            IvcRequest::GetFirmware => "GetFirmware",
            IvcRequest::AlarmNotify(_) => "AlarmNotify",
        }
    }

    /// The params as sent.
    pub fn params(&self) -> Option<Value> {
        match self {
            IvcRequest::Keepalive(k) => Some(json!({
                "state": k.state as i64,
                "channels": k.channels.iter().map(|c| {
                    let mut m = json!({"channel": c.channel, "state": c.state as i64});
                    if let Some(s) = &c.record_session { m["record_session"] = json!(s); }
                    if let Some(a) = c.alarm { m["alarm"] = json!(a); }
                    m
                }).collect::<Vec<_>>(),
            })),
            IvcRequest::PreviewServer | IvcRequest::GetFirmware => None,
            IvcRequest::AlarmNotify(a) => Some(json!({
                "channel": a.channel, "type": a.kind as i64,
                "state": if a.start { "start" } else { "end" }, "desc": a.desc,
            })),
        }
    }
}

// ---------- IVT side: what the IVC calls ----------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtmpPublish {
    pub channel: u32,
    pub quality: Quality,
    pub url: String,
    pub stream_id: String,
    /// bit/s; 0 = no limit.
    pub max_bitrate: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartCloudRecord {
    /// Exactly 22 bytes.
    pub session_id: String,
    pub channel: u32,
    pub quality: Quality,
    pub max_bitrate: u64,
    pub seg_duration: u32,
    pub seg_max_size: u64,
    pub seg_max_count: u32,
    pub prerecord_seconds: u32,
    /// ≤ 0: use the device clock.
    pub start_ts: i64,
    /// At most 256 bytes.
    pub cbk_url: String,
}

/// Motion or trip-wire detection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectConfig {
    pub channel: u32,
    pub enable: bool,
    /// Seconds after 00:00 when arming starts (default 0).
    pub start: u32,
    /// Seconds after 00:00 when disarming happens (default 86400); start >
    /// end crosses midnight.
    pub end: u32,
    pub sensitivity: u8,
    pub delay: u32,
    /// Trip-wire rectangle corners (0–100), `None` = keep the current one.
    pub rect: Option<[u8; 8]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtmpPublishConfig {
    pub enable: bool,
    pub channel: u32,
    pub quality: Quality,
    pub url: String,
}

/// A request the IVT serves, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IvtRequest {
    RtmpPublish(RtmpPublish),
    RtmpStopPublish { stream_id: String, channel: u32 },
    StartCloudRecord(StartCloudRecord),
    StopCloudRecord { session_id: String, channel: u32 },
    RebootChannel { channel: u32 },
    GetPtzPresetList { channel: u32 },
    GetPtzPresetTourList { channel: u32 },
    AlarmMoveDetectConfig(DetectConfig),
    AlarmRectIntrusionDetectConfig(DetectConfig),
    GetNetConfig { channel: u32 },
    GetRtmpPublishConfig,
    SetRtmpPublishConfig(Vec<RtmpPublishConfig>),
}

const RECT: [&str; 8] = ["ulx", "uly", "urx", "ury", "dlx", "dly", "drx", "dry"];
const MAX_URL: usize = 2048;

fn detect(params: Option<&Value>, with_rect: bool) -> Result<DetectConfig, ParamError> {
    let mut f = Fields::of(params, "")?;
    let channel = f.channel()?;
    let enable = f.boolean("enable")?;
    let start = f.opt_int("start", 0, 86400)?.unwrap_or(0) as u32;
    let end = f.opt_int("end", 0, 86400)?.unwrap_or(86400) as u32;
    let sensitivity = f.int("sensitivity", 0, 100)? as u8;
    let delay = f.int("delay", 0, 86400)? as u32;
    let rect = if with_rect && f.map.contains_key("rect") {
        let mut r = Fields::of(f.get("rect"), "rect.")?;
        let mut out = [0u8; 8];
        for (i, k) in RECT.iter().enumerate() {
            out[i] = r.int(k, 0, 100)? as u8;
        }
        r.done()?;
        Some(out)
    } else {
        None
    };
    f.done()?;
    Ok(DetectConfig { channel, enable, start, end, sensitivity, delay, rect })
}

fn publish_config(v: &Value, i: usize) -> Result<RtmpPublishConfig, ParamError> {
    let mut f = Fields::of(Some(v), &format!("[{i}]."))?;
    let enable = f.boolean("enable")?;
    let channel = f.channel()?;
    let quality = Quality::parse(&f.one_of("quality", &Quality::NAMES)?);
    let url = f.string("url", MAX_URL)?;
    f.done()?;
    Ok(RtmpPublishConfig { enable, channel, quality, url })
}

impl IvtRequest {
    /// The channel the request is for (`None`: the whole device).
    pub fn channel(&self) -> Option<u32> {
        Some(match self {
            IvtRequest::RtmpPublish(p) => p.channel,
            IvtRequest::RtmpStopPublish { channel, .. }
            | IvtRequest::StopCloudRecord { channel, .. }
            | IvtRequest::RebootChannel { channel }
            | IvtRequest::GetPtzPresetList { channel }
            | IvtRequest::GetPtzPresetTourList { channel }
            | IvtRequest::GetNetConfig { channel } => *channel,
            IvtRequest::StartCloudRecord(r) => r.channel,
            IvtRequest::AlarmMoveDetectConfig(d) | IvtRequest::AlarmRectIntrusionDetectConfig(d) => d.channel,
            IvtRequest::GetRtmpPublishConfig | IvtRequest::SetRtmpPublishConfig(_) => return None,
        })
    }

    /// Validates the params of `method` (one of [`IVT_METHODS`]).
    pub fn parse(method: &str, params: Option<&Value>) -> Result<IvtRequest, ParamError> {
        let channel_only = |params| -> Result<u32, ParamError> {
            let mut f = Fields::of(params, "")?;
            let c = f.channel()?;
            f.done()?;
            Ok(c)
        };
        Ok(match method {
            "RTMPPublish" => {
                let mut f = Fields::of(params, "")?;
                let r = RtmpPublish {
                    channel: f.channel()?,
                    quality: Quality::parse(&f.one_of("quality", &Quality::NAMES)?),
                    url: f.string("url", MAX_URL)?,
                    stream_id: f.string("stream_id", 256)?,
                    max_bitrate: f.int("max_bitrate", 0, i64::MAX)? as u64,
                };
                f.done()?;
                IvtRequest::RtmpPublish(r)
            }
            "RTMPStopPublish" => {
                let mut f = Fields::of(params, "")?;
                let stream_id = f.string("stream_id", 256)?;
                let channel = f.channel()?;
                f.done()?;
                IvtRequest::RtmpStopPublish { stream_id, channel }
            }
            "StartCloudRecord" => {
                let mut f = Fields::of(params, "")?;
                let session_id = f.string("session_id", 22)?;
                if session_id.len() != 22 {
                    return Err(perr("session_id", format!("{} bytes, must be exactly 22", session_id.len())));
                }
                let r = StartCloudRecord {
                    session_id,
                    channel: f.channel()?,
                    quality: Quality::parse(&f.one_of("quality", &Quality::NAMES)?),
                    max_bitrate: f.int("max_bitrate", 0, i64::MAX)? as u64,
                    seg_duration: f.int("seg_duration", 1, 3600)? as u32,
                    seg_max_size: f.int("seg_max_size", 1, i64::MAX)? as u64,
                    seg_max_count: f.int("seg_max_count", 1, 100_000)? as u32,
                    prerecord_seconds: f.int("prerecord_seconds", 0, 3600)? as u32,
                    start_ts: f.int("start_ts", i64::MIN, i64::MAX)?,
                    cbk_url: f.string("cbk_url", 256)?,
                };
                if r.cbk_url.is_empty() {
                    return Err(perr("cbk_url", "empty"));
                }
                // What the device will put in a request line: http(s), no
                // control characters or spaces (a CR/LF would inject headers).
                if !r.cbk_url.starts_with("http://") && !r.cbk_url.starts_with("https://") {
                    return Err(perr("cbk_url", "expected an http:// or https:// URL"));
                }
                crate::net::target(&r.cbk_url).map_err(|e| perr("cbk_url", e.to_string()))?;
                f.done()?;
                IvtRequest::StartCloudRecord(r)
            }
            "StopCloudRecord" => {
                let mut f = Fields::of(params, "")?;
                let session_id = f.string("session_id", 22)?;
                let channel = f.channel()?;
                f.done()?;
                IvtRequest::StopCloudRecord { session_id, channel }
            }
            "RebootChannel" => IvtRequest::RebootChannel { channel: channel_only(params)? },
            "GetPTZPresetList" => IvtRequest::GetPtzPresetList { channel: channel_only(params)? },
            "GetPTZPresetTourList" => IvtRequest::GetPtzPresetTourList { channel: channel_only(params)? },
            "AlarmMoveDetectConfig" => IvtRequest::AlarmMoveDetectConfig(detect(params, false)?),
            "AlarmRectIntrusionDetectConfig" => IvtRequest::AlarmRectIntrusionDetectConfig(detect(params, true)?),
            "GetNetConfig" => IvtRequest::GetNetConfig { channel: channel_only(params)? },
            "GetRTMPPublishConfig" => {
                no_params(params)?;
                IvtRequest::GetRtmpPublishConfig
            }
            "SetRTMPPublishConfig" => {
                let list = match params {
                    Some(Value::Array(a)) => a,
                    Some(other) => return Err(perr("", format!("expected an array, got {other}"))),
                    None => return Err(perr("", "missing (an array of publish configs)")),
                };
                IvtRequest::SetRtmpPublishConfig(
                    list.iter().enumerate().map(|(i, v)| publish_config(v, i)).collect::<Result<_, _>>()?,
                )
            }
            other => return Err(perr("", format!("{other:?} is not an IVT method"))),
        })
    }
}

// ---------- events the IVT accepts ----------

/// PTZ operations of CtrlPTZ.
pub const PTZ_OPS: [&str; 15] = [
    "up",
    "down",
    "left",
    "right",
    "upleft",
    "upright",
    "downleft",
    "downright",
    "zoomin",
    "zoomout",
    "stop",
    // ivr's additions (the seed's op list has no lens control): focus and iris.
    "focusnear",
    "focusfar",
    "irisopen",
    "irisclose",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IvtEvent {
    UpgradeFirmware,
    /// Set the clock to `datetime` unless it is within `offset` seconds.
    SyncTime {
        datetime: NaiveDateTime,
        offset: u32,
    },
    /// `op` is one of [`PTZ_OPS`]; speed 0–100 (default 100).
    CtrlPtz {
        channel: u32,
        op: String,
        speed: u8,
    },
    GotoPtzPreset {
        channel: u32,
        token: String,
    },
    CtrlPtzPresetTour {
        channel: u32,
        token: String,
        start: bool,
    },
    CtrlPtzPatrol {
        channel: u32,
        start: bool,
    },
}

impl IvtEvent {
    /// The channel the event is for (`None`: the whole device).
    pub fn channel(&self) -> Option<u32> {
        match self {
            IvtEvent::UpgradeFirmware | IvtEvent::SyncTime { .. } => None,
            IvtEvent::CtrlPtz { channel, .. }
            | IvtEvent::GotoPtzPreset { channel, .. }
            | IvtEvent::CtrlPtzPresetTour { channel, .. }
            | IvtEvent::CtrlPtzPatrol { channel, .. } => Some(*channel),
        }
    }

    /// The event's name on the wire (what `parse` takes).
    pub fn name(&self) -> &'static str {
        match self {
            IvtEvent::UpgradeFirmware => "UpgradeFirmware",
            IvtEvent::SyncTime { .. } => "SyncTime",
            IvtEvent::CtrlPtz { .. } => "CtrlPTZ",
            IvtEvent::GotoPtzPreset { .. } => "GotoPTZPreset",
            IvtEvent::CtrlPtzPresetTour { .. } => "CtrlPTZPresetTour",
            IvtEvent::CtrlPtzPatrol { .. } => "CtrlPTZPatrol",
        }
    }

    pub fn parse(name: &str, params: Option<&Value>) -> Result<IvtEvent, ParamError> {
        Ok(match name {
            "UpgradeFirmware" => {
                no_params(params)?;
                IvtEvent::UpgradeFirmware
            }
            "SyncTime" => {
                let mut f = Fields::of(params, "")?;
                let s = f.string("datetime", 32)?;
                let datetime = NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S")
                    .map_err(|_| perr("datetime", format!("{s:?} is not YYYY-MM-DDTHH:MM:SS")))?;
                let offset = f.int("offset", 0, u32::MAX as i64)? as u32;
                f.done()?;
                IvtEvent::SyncTime { datetime, offset }
            }
            "CtrlPTZ" => {
                let mut f = Fields::of(params, "")?;
                let channel = f.channel()?;
                let op = f.one_of("op", &PTZ_OPS)?;
                let speed = f.opt_int("value", 0, 100)?.unwrap_or(100) as u8;
                f.done()?;
                IvtEvent::CtrlPtz { channel, op, speed }
            }
            "GotoPTZPreset" => {
                let mut f = Fields::of(params, "")?;
                let channel = f.channel()?;
                let token = f.string("token", 256)?;
                f.done()?;
                IvtEvent::GotoPtzPreset { channel, token }
            }
            "CtrlPTZPresetTour" => {
                let mut f = Fields::of(params, "")?;
                let channel = f.channel()?;
                let token = f.string("token", 256)?;
                let start = f.one_of("op", &["start", "stop"])? == "start";
                if start && token.is_empty() {
                    return Err(perr("token", "required to start a tour"));
                }
                f.done()?;
                IvtEvent::CtrlPtzPresetTour { channel, token, start }
            }
            "CtrlPTZPatrol" => {
                let mut f = Fields::of(params, "")?;
                let channel = f.channel()?;
                let start = f.one_of("op", &["start", "stop"])? == "start";
                f.done()?;
                IvtEvent::CtrlPtzPatrol { channel, start }
            }
            other => return Err(perr("", format!("{other:?} is not an IVT event"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug, ParamError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn keepalive_with_channels_alarms_and_sessions() {
        let p = json!({"state": 1, "channels": [
            {"channel": 0, "state": 2, "record_session": "abcdefghijklmnopqrstuv", "alarm": 8},
            {"channel": 1, "state": 0},
        ]});
        let IvcRequest::Keepalive(k) = IvcRequest::parse("Keepalive", Some(&p)).unwrap() else { panic!() };
        assert_eq!(k.state, DeviceState::Online);
        assert_eq!(k.channels[0].alarm, Some(8));
        assert_eq!(k.channels[0].record_session.as_deref(), Some("abcdefghijklmnopqrstuv"));
        assert_eq!(k.channels[1].state, ChannelState::Offline);
        let back = IvcRequest::Keepalive(k.clone()).params();
        assert_eq!(IvcRequest::parse("Keepalive", back.as_ref()).unwrap(), IvcRequest::Keepalive(k));
    }

    #[test]
    fn invalid_params_name_the_field() {
        let cases = [
            (IvcRequest::parse("Keepalive", Some(&json!({"channels": []}))).map(drop), "params.state: required"),
            (IvcRequest::parse("Keepalive", Some(&json!({"state": 4, "channels": []}))).map(drop), "params.state: 4 is out of range 1..=3"),
            (IvcRequest::parse("Keepalive", Some(&json!({"state": 1, "channels": [{"channel": 0, "state": 1, "alarm": 1}]}))).map(drop), "params.channels[0].alarm: bits 0x1"),
            (IvcRequest::parse("Keepalive", Some(&json!({"state": 1, "channels": [{"channel": "0", "state": 1}]}))).map(drop), "params.channels[0].channel: expected an integer"),
            (IvcRequest::parse("AlarmNotify", Some(&json!({"channel": 0, "type": 3, "state": "begin", "desc": ""}))).map(drop), "params.state: \"begin\" is not one of start, end"),
            (IvcRequest::parse("AlarmNotify", Some(&json!({"channel": 0, "type": 3, "state": "start"}))).map(drop), "params.desc: required"),
            (IvcRequest::parse("GetFirmware", Some(&json!({}))).map(drop), "takes no parameters"),
            (IvtRequest::parse("RTMPPublish", Some(&json!({"channel": 0, "quality": "4k", "url": "rtmp://x", "stream_id": "s", "max_bitrate": 0}))).map(drop), "params.quality: \"4k\" is not one of ld, sd, hd, fhd"),
            (IvtRequest::parse("RTMPPublish", Some(&json!({"channel": 0, "quality": "hd", "url": "rtmp://x", "stream_id": "s", "max_bitrate": 0, "extra": 1}))).map(drop), "params.extra: unknown field"),
            (IvtRequest::parse("AlarmMoveDetectConfig", Some(&json!({"channel": 0, "enable": true, "sensitivity": 101, "delay": 5}))).map(drop), "params.sensitivity: 101 is out of range 0..=100"),
            (IvtRequest::parse("AlarmRectIntrusionDetectConfig", Some(&json!({"channel": 0, "enable": true, "sensitivity": 50, "delay": 5, "rect": {"ulx": 0}}))).map(drop), "params.rect.uly: required"),
            (IvtRequest::parse("SetRTMPPublishConfig", Some(&json!([{"enable": true, "channel": 0, "quality": "sd"}]))).map(drop), "params.[0].url: required"),
            (IvtRequest::parse("SetRTMPPublishConfig", Some(&json!({}))).map(drop), "expected an array"),
            (IvtRequest::parse("RebootChannel", None).map(drop), "missing"),
        ];
        for (r, want) in cases {
            let e = err(r);
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        let e: RpcError = ParamError { field: "state".into(), why: "required".into() }.into();
        assert_eq!((e.code, e.msg.as_str()), (1, "params.state: required"));
    }

    fn record(session: &str, cbk: &str) -> Value {
        json!({"session_id": session, "channel": 0, "quality": "hd", "max_bitrate": 2_000_000, "seg_duration": 10,
               "seg_max_size": 4_000_000, "seg_max_count": 6, "prerecord_seconds": 5, "start_ts": 0, "cbk_url": cbk})
    }

    #[test]
    fn cloud_record_session_ids_are_22_bytes_and_callbacks_at_most_256() {
        let ok =
            IvtRequest::parse("StartCloudRecord", Some(&record("0123456789abcdefghijkl", "http://ivc/cb"))).unwrap();
        assert!(matches!(ok, IvtRequest::StartCloudRecord(StartCloudRecord { seg_duration: 10, .. })));
        assert!(err(IvtRequest::parse("StartCloudRecord", Some(&record("short", "http://ivc/cb"))))
            .contains("params.session_id: 5 bytes, must be exactly 22"));
        assert!(err(IvtRequest::parse("StartCloudRecord", Some(&record("0123456789abcdefghijklm", "http://ivc/cb"))))
            .contains("params.session_id: 23 bytes, at most 22"));
        let long = format!("http://ivc/{}", "c".repeat(250));
        assert!(err(IvtRequest::parse("StartCloudRecord", Some(&record("0123456789abcdefghijkl", &long))))
            .contains("params.cbk_url: 261 bytes, at most 256"));
        assert!(err(IvtRequest::parse(
            "StartCloudRecord",
            Some(&record("0123456789abcdefghijkl", "http://ivc/cb\r\nX-Evil: 1"))
        ))
        .contains("params.cbk_url: the URL has a control character or space"));
        assert!(err(IvtRequest::parse("StartCloudRecord", Some(&record("0123456789abcdefghijkl", "ftp://ivc/cb"))))
            .contains("params.cbk_url: expected an http:// or https:// URL"));
    }

    #[test]
    fn detection_defaults_and_rectangles() {
        let IvtRequest::AlarmMoveDetectConfig(d) = IvtRequest::parse(
            "AlarmMoveDetectConfig",
            Some(&json!({"channel": 0, "enable": true, "sensitivity": 80, "delay": 10})),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((d.start, d.end, d.rect), (0, 86400, None));
        let r = json!({"channel": 0, "enable": false, "start": 79200, "end": 21600, "sensitivity": 1, "delay": 0,
                       "rect": {"ulx": 10, "uly": 10, "urx": 90, "ury": 10, "dlx": 10, "dly": 90, "drx": 90, "dry": 90}});
        let IvtRequest::AlarmRectIntrusionDetectConfig(d) =
            IvtRequest::parse("AlarmRectIntrusionDetectConfig", Some(&r)).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.rect, Some([10, 10, 90, 10, 10, 90, 90, 90]));
        assert!(d.start > d.end, "a window across midnight is allowed");
        assert!(
            err(IvtRequest::parse("AlarmMoveDetectConfig", Some(&r))).contains("params.rect: unknown field"),
            "motion has no rect"
        );
    }

    #[test]
    fn events() {
        assert_eq!(
            IvtEvent::parse("SyncTime", Some(&json!({"datetime": "2016-12-05T02:15:32", "offset": 5}))).unwrap(),
            IvtEvent::SyncTime {
                datetime: NaiveDateTime::parse_from_str("2016-12-05 02:15:32", "%Y-%m-%d %H:%M:%S").unwrap(),
                offset: 5
            }
        );
        assert!(err(IvtEvent::parse("SyncTime", Some(&json!({"datetime": "2016-12-05 02:15:32", "offset": 5}))))
            .contains("params.datetime"));
        assert_eq!(
            IvtEvent::parse("CtrlPTZ", Some(&json!({"channel": 0, "op": "zoomin"}))).unwrap(),
            IvtEvent::CtrlPtz { channel: 0, op: "zoomin".into(), speed: 100 }
        );
        for (name, p) in [("CtrlPTZ", Some(json!({"channel": 0, "op": "stop"}))), ("UpgradeFirmware", None)] {
            assert_eq!(IvtEvent::parse(name, p.as_ref()).unwrap().name(), name, "name() is the wire name");
        }
        assert!(err(IvtEvent::parse("CtrlPTZ", Some(&json!({"channel": 0, "op": "spin"})))).contains("params.op"));
        assert_eq!(
            IvtEvent::parse("CtrlPTZPresetTour", Some(&json!({"channel": 0, "token": "", "op": "stop"}))).unwrap(),
            IvtEvent::CtrlPtzPresetTour { channel: 0, token: String::new(), start: false }
        );
        assert!(err(IvtEvent::parse("CtrlPTZPresetTour", Some(&json!({"channel": 0, "token": "", "op": "start"}))))
            .contains("params.token"));
        assert_eq!(IvtEvent::parse("UpgradeFirmware", None).unwrap(), IvtEvent::UpgradeFirmware);
        assert_eq!(IVT_EVENTS.len(), 6);
    }

    #[test]
    fn every_catalogue_name_parses_as_its_side() {
        for m in IVC_METHODS {
            assert!(!IvcRequest::parse(m, None).is_err_and(|e| e.why.contains("is not an IVC method")), "{m}");
        }
        for m in IVT_METHODS {
            assert!(!IvtRequest::parse(m, None).is_err_and(|e| e.why.contains("is not an IVT method")), "{m}");
        }
    }
}
