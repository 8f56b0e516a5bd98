//! Typed bodies of the messages whose shape callers rely on. Everything
//! else (config trees, capability groups) stays `serde_json::Value`, as the
//! device sends it.

use crate::json::{format_session, parse_hex_ip, parse_hex_u32, parse_session, parse_time};
use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

/// What a login reply says about the device and the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginReply {
    pub ret: i64,
    pub session: u32,
    pub alive_interval: u32,
    pub channels: u32,
    pub extra_channels: u32,
    pub device_type: String,
    pub data_use_aes: bool,
}

/// Why a login reply could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginReplyError {
    #[error("login reply has no usable SessionID ({0:?})")]
    Session(Option<String>),
    #[error(
        "the device negotiates encryption (DataUseAES/RSA, firmware of 2024 and later); \
         ivr does not implement that handshake yet, so it cannot log in"
    )]
    Encrypted,
}

impl LoginReply {
    /// Parses a 1001 body. Accepts `"DeviceType "` (with the trailing space
    /// real devices send) and `"DeviceType"`.
    pub fn parse(v: &Value) -> Result<LoginReply, LoginReplyError> {
        let ret = v.get("Ret").and_then(Value::as_i64).unwrap_or(0);
        let sid = v.get("SessionID").and_then(Value::as_str);
        let session = match sid.and_then(parse_session) {
            Some(s) => s,
            None if !crate::ret::is_success(ret) => 0,
            None => return Err(LoginReplyError::Session(sid.map(str::to_owned))),
        };
        let data_use_aes = v.get("DataUseAES").and_then(Value::as_bool).unwrap_or(false);
        if crate::ret::is_success(ret) && (data_use_aes || v.get("DHParameter").is_some()) {
            return Err(LoginReplyError::Encrypted);
        }
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
        let device_type =
            v.get("DeviceType ").or_else(|| v.get("DeviceType")).and_then(Value::as_str).unwrap_or("").to_owned();
        Ok(LoginReply {
            ret,
            session,
            alive_interval: num("AliveInterval"),
            channels: num("ChannelNum"),
            extra_channels: num("ExtraChannel"),
            device_type,
            data_use_aes,
        })
    }

    /// The body a device sends (with the `"DeviceType "` space, exactly the
    /// keys real devices send: strict clients reject extra ones).
    pub fn to_json(&self) -> Value {
        json!({
            "AliveInterval": self.alive_interval,
            "ChannelNum": self.channels,
            "DataUseAES": self.data_use_aes,
            "DeviceType ": self.device_type,
            "ExtraChannel": self.extra_channels,
            "Ret": self.ret,
            "SessionID": format_session(self.session),
        })
    }
}

/// A 1000 body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    pub encrypt_type: String,
    pub login_type: String,
}

impl LoginRequest {
    pub fn parse(v: &Value) -> Option<LoginRequest> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(LoginRequest {
            user: s("UserName")?,
            password: s("PassWord").unwrap_or_default(),
            encrypt_type: s("EncryptType").unwrap_or_else(|| "MD5".into()),
            login_type: s("LoginType").unwrap_or_else(|| "DVRIP-Web".into()),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "EncryptType": self.encrypt_type,
            "LoginType": self.login_type,
            "PassWord": self.password,
            "UserName": self.user,
        })
    }
}

/// The usual request body: `{"Name": name, "SessionID": …, name: body}`.
pub fn request(name: &str, session: u32, body: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("Name".into(), Value::String(name.to_owned()));
    m.insert("SessionID".into(), Value::String(format_session(session)));
    if let Some(b) = body {
        m.insert(name.to_owned(), b);
    }
    Value::Object(m)
}

/// The usual reply body: `{"Name": name, "Ret": ret, "SessionID": …, name: data}`.
pub fn reply(name: &str, ret: i64, session: u32, data: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("Name".into(), Value::String(name.to_owned()));
    m.insert("Ret".into(), Value::from(ret));
    m.insert("SessionID".into(), Value::String(format_session(session)));
    if let Some(d) = data {
        m.insert(name.to_owned(), d);
    }
    Value::Object(m)
}

/// One recording of a file search (1440/1441).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    #[serde(rename = "BeginTime")]
    pub begin: String,
    #[serde(rename = "EndTime")]
    pub end: String,
    #[serde(rename = "DiskNo", default)]
    pub disk: u32,
    #[serde(rename = "SerialNo", default)]
    pub serial: u32,
    /// KiB, as `"0x0000B000"`.
    #[serde(rename = "FileLength")]
    pub length: String,
    #[serde(rename = "FileName")]
    pub name: String,
}

impl FileEntry {
    pub fn length_kib(&self) -> Option<u32> {
        parse_hex_u32(&self.length)
    }
    pub fn begin_time(&self) -> Option<NaiveDateTime> {
        parse_time(&self.begin)
    }
    pub fn end_time(&self) -> Option<NaiveDateTime> {
        parse_time(&self.end)
    }
}

/// One log record (1442/1443).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(rename = "Position")]
    pub position: u64,
    #[serde(rename = "Time")]
    pub time: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "User")]
    pub user: String,
    #[serde(rename = "Data")]
    pub data: String,
}

/// An alarm pushed on a guarded session (1504).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmInfo {
    #[serde(rename = "Channel")]
    pub channel: u32,
    /// VideoMotion, VideoBlind, VideoLoss, LocalIO, NetAlarm, StorageNotExist,
    /// StorageLowSpace, IPCAlarm, HumanDetect…
    #[serde(rename = "Event")]
    pub event: String,
    #[serde(rename = "StartTime")]
    pub start_time: String,
    /// "Start" or "Stop".
    #[serde(rename = "Status")]
    pub status: String,
}

/// A 1508 push to the alarm center.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmCenterMessage {
    /// The device's IP as little-endian hex.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Channel")]
    pub channel: u32,
    #[serde(rename = "Descrip", default)]
    pub description: String,
    #[serde(rename = "Event")]
    pub event: String,
    #[serde(rename = "SerialID", default)]
    pub serial_id: String,
    #[serde(rename = "StartTime")]
    pub start_time: String,
    #[serde(rename = "Status")]
    pub status: String,
    /// "Alarm" or "Log".
    #[serde(rename = "Type")]
    pub kind: String,
}

impl AlarmCenterMessage {
    pub fn ip(&self) -> Option<Ipv4Addr> {
        parse_hex_ip(&self.address)
    }
}

/// A device found by discovery (the `NetWork.NetCommon` of a 1531 reply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiscoveredDevice {
    pub host_ip: Option<Ipv4Addr>,
    pub submask: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub mac: String,
    pub host_name: String,
    pub serial: String,
    pub tcp_port: u16,
    pub http_port: u16,
    pub channels: u32,
    /// The whole `NetWork.NetCommon` object, for the fields not lifted.
    pub raw: Value,
}

impl DiscoveredDevice {
    pub fn parse(v: &Value) -> Option<DiscoveredDevice> {
        let nc = v.get("NetWork.NetCommon")?;
        let s = |k: &str| nc.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let ip = |k: &str| nc.get(k).and_then(Value::as_str).and_then(parse_hex_ip);
        let n = |k: &str| nc.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some(DiscoveredDevice {
            host_ip: ip("HostIP"),
            submask: ip("Submask"),
            gateway: ip("GateWay"),
            mac: s("MAC"),
            host_name: s("HostName"),
            serial: s("SN"),
            tcp_port: n("TCPPort") as u16,
            http_port: n("HttpPort") as u16,
            channels: n("ChannelNum") as u32,
            raw: nc.clone(),
        })
    }
}

/// PTZ commands of `OPPTZControl` (1400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtzCommand {
    Up,
    Down,
    Left,
    Right,
    LeftUp,
    LeftDown,
    RightUp,
    RightDown,
    ZoomTile,
    ZoomWide,
    FocusNear,
    FocusFar,
    IrisSmall,
    IrisLarge,
    SetPreset,
    GotoPreset,
    ClearPreset,
    StartTour,
    StopTour,
}

impl PtzCommand {
    pub const ALL: [PtzCommand; 19] = [
        PtzCommand::Up,
        PtzCommand::Down,
        PtzCommand::Left,
        PtzCommand::Right,
        PtzCommand::LeftUp,
        PtzCommand::LeftDown,
        PtzCommand::RightUp,
        PtzCommand::RightDown,
        PtzCommand::ZoomTile,
        PtzCommand::ZoomWide,
        PtzCommand::FocusNear,
        PtzCommand::FocusFar,
        PtzCommand::IrisSmall,
        PtzCommand::IrisLarge,
        PtzCommand::SetPreset,
        PtzCommand::GotoPreset,
        PtzCommand::ClearPreset,
        PtzCommand::StartTour,
        PtzCommand::StopTour,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PtzCommand::Up => "DirectionUp",
            PtzCommand::Down => "DirectionDown",
            PtzCommand::Left => "DirectionLeft",
            PtzCommand::Right => "DirectionRight",
            PtzCommand::LeftUp => "DirectionLeftUp",
            PtzCommand::LeftDown => "DirectionLeftDown",
            PtzCommand::RightUp => "DirectionRightUp",
            PtzCommand::RightDown => "DirectionRightDown",
            PtzCommand::ZoomTile => "ZoomTile",
            PtzCommand::ZoomWide => "ZoomWide",
            PtzCommand::FocusNear => "FocusNear",
            PtzCommand::FocusFar => "FocusFar",
            PtzCommand::IrisSmall => "IrisSmall",
            PtzCommand::IrisLarge => "IrisLarge",
            PtzCommand::SetPreset => "SetPreset",
            PtzCommand::GotoPreset => "GotoPreset",
            PtzCommand::ClearPreset => "ClearPreset",
            PtzCommand::StartTour => "StartTour",
            PtzCommand::StopTour => "StopTour",
        }
    }

    /// Parses the wire name; `EndTour` (one client's spelling) is `StopTour`.
    pub fn parse(s: &str) -> Option<PtzCommand> {
        if s == "EndTour" {
            return Some(PtzCommand::StopTour);
        }
        PtzCommand::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s))
    }

    /// The `OPPTZControl` body. Stop is the same command with `Preset: -1`.
    pub fn body(self, channel: u32, step: u32, preset: i64, tour: u32, stop: bool) -> Value {
        json!({
            "Command": self.as_str(),
            "Parameter": {
                "AUX": {"Number": 0, "Status": "On"},
                "Channel": channel,
                "MenuOpts": "Enter",
                "POINT": {"bottom": 0, "left": 0, "right": 0, "top": 0},
                "Pattern": "SetBegin",
                "Preset": if stop { -1 } else { preset },
                "Step": step,
                "Tour": tour,
            }
        })
    }
}

/// Main or extra (sub) stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    Main,
    Extra,
}

impl StreamType {
    /// The wire name ivr sends.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Main => "Main",
            StreamType::Extra => "Extra1",
        }
    }
    /// Accepts `Main`, `Extra`, `Extra1`, `Sub` (and the numbers 0/1).
    pub fn parse(v: &Value) -> Option<StreamType> {
        match v {
            Value::String(s) if s.eq_ignore_ascii_case("main") => Some(StreamType::Main),
            Value::String(s) if s.to_ascii_lowercase().starts_with("extra") || s.eq_ignore_ascii_case("sub") => {
                Some(StreamType::Extra)
            }
            Value::Number(n) => match n.as_u64() {
                Some(0) => Some(StreamType::Main),
                Some(1) => Some(StreamType::Extra),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_reply_with_device_type_space() {
        // Real devices: note the key "DeviceType " with a trailing space.
        let v: Value = serde_json::from_str(include_str!("../testdata/login_reply_devicetype_space.json")).unwrap();
        let r = LoginReply::parse(&v).unwrap();
        assert_eq!(r.device_type, "HVR");
        assert_eq!((r.session, r.alive_interval, r.channels), (0x57, 21, 4));
    }

    #[test]
    fn login_reply_without_the_space() {
        let v: Value = serde_json::from_str(include_str!("../testdata/login_reply_devicetype_nospace.json")).unwrap();
        assert_eq!(LoginReply::parse(&v).unwrap().device_type, "IPC");
    }

    #[test]
    fn login_reply_of_aes_firmware_is_a_clear_error() {
        let v: Value = serde_json::from_str(include_str!("../testdata/login_reply_aes_firmware.json")).unwrap();
        let e = LoginReply::parse(&v).unwrap_err();
        assert_eq!(e, LoginReplyError::Encrypted);
        assert!(e.to_string().contains("encryption"));
    }

    #[test]
    fn login_reply_round_trips() {
        let r = LoginReply {
            ret: 100,
            session: 9,
            alive_interval: 20,
            channels: 1,
            extra_channels: 0,
            device_type: "IPC".into(),
            data_use_aes: false,
        };
        assert_eq!(LoginReply::parse(&r.to_json()).unwrap(), r);
        assert!(r.to_json().get("DeviceType ").is_some());
    }

    #[test]
    fn file_list_entry_from_a_device() {
        let v: Value = serde_json::from_str(include_str!("../testdata/file_query_reply.json")).unwrap();
        let files: Vec<FileEntry> = serde_json::from_value(v["OPFileQuery"].clone()).unwrap();
        assert_eq!(files[0].length_kib(), Some(0xB000));
        assert_eq!(files[0].name, "/idea0/2009-02-16/001/10.08.41-10.23.30[R][@7cb][0].h264");
        assert!(files[0].begin_time().unwrap() < files[0].end_time().unwrap());
    }

    #[test]
    fn ptz_stop_is_preset_minus_one() {
        let b = PtzCommand::Left.body(0, 5, 65535, 0, true);
        assert_eq!(b["Parameter"]["Preset"], -1);
        assert_eq!(PtzCommand::parse("EndTour"), Some(PtzCommand::StopTour));
    }

    #[test]
    fn stream_type_spellings() {
        for s in ["Main", "main"] {
            assert_eq!(StreamType::parse(&json!(s)), Some(StreamType::Main));
        }
        for s in ["Extra", "Extra1", "Sub"] {
            assert_eq!(StreamType::parse(&json!(s)), Some(StreamType::Extra));
        }
    }
}
