//! The simulated device's configuration tree: realistic defaults and the
//! path rules of 1040/1042/1044 (`General.General`, `Camera.Param.[0]`).

use serde_json::{json, Value};

/// Why a path or a value was refused, with the device's `Ret` code.
#[derive(Debug, PartialEq, Eq)]
pub struct TreeError {
    pub ret: i64,
    pub message: String,
}

fn missing(path: &str) -> TreeError {
    TreeError { ret: dvrip::ret::code::CONFIG_MISSING, message: format!("no configuration {path:?}") }
}

fn bad(path: &str, why: String) -> TreeError {
    TreeError { ret: dvrip::ret::code::CONFIG_PARSE, message: format!("{path}: {why}") }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    if path.is_empty() {
        return None;
    }
    path.split('.')
        .map(|s| {
            if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                inner.parse().ok().map(Step::Index)
            } else if s.is_empty() {
                None
            } else {
                Some(Step::Key(s))
            }
        })
        .collect()
}

/// The value at a config path.
pub fn get<'a>(tree: &'a Value, path: &str) -> Result<&'a Value, TreeError> {
    let mut v = tree;
    for s in steps(path).ok_or_else(|| missing(path))? {
        v = match s {
            Step::Key(k) => v.get(k),
            Step::Index(i) => v.get(i),
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(v)
}

fn get_mut<'a>(tree: &'a mut Value, path: &str) -> Result<&'a mut Value, TreeError> {
    let mut v = tree;
    for s in steps(path).ok_or_else(|| missing(path))? {
        v = match s {
            Step::Key(k) => v.get_mut(k),
            Step::Index(i) => v.get_mut(i),
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(v)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks that `new` fits the shape of `old`: same JSON types, known keys,
/// arrays no longer than the device has.
fn check(old: &Value, new: &Value, at: &str) -> Result<(), TreeError> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, nv) in n {
                let ov = o.get(k).ok_or_else(|| bad(at, format!("unknown key {k:?}")))?;
                check(ov, nv, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(o), Value::Array(n)) => {
            if n.len() > o.len() {
                return Err(bad(at, format!("{} elements given, the device has {}", n.len(), o.len())));
            }
            for (i, (ov, nv)) in o.iter().zip(n).enumerate() {
                check(ov, nv, &format!("{at}.[{i}]"))?;
            }
            Ok(())
        }
        (o, n) if std::mem::discriminant(o) == std::mem::discriminant(n) => Ok(()),
        (o, n) => Err(bad(at, format!("expected a {}, got a {}", kind(o), kind(n)))),
    }
}

fn merge(old: &mut Value, new: Value) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, nv) in n {
                if let Some(ov) = o.get_mut(&k) {
                    merge(ov, nv);
                }
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            for (ov, nv) in o.iter_mut().zip(n) {
                merge(ov, nv);
            }
        }
        (o, n) => *o = n,
    }
}

/// Sets a path: a sparse value merges into what is there; nothing changes
/// unless the whole value fits.
pub fn set(tree: &mut Value, path: &str, value: Value) -> Result<(), TreeError> {
    let slot = get_mut(tree, path)?;
    check(slot, &value, path)?;
    merge(slot, value);
    Ok(())
}

fn per_channel(n: u32, f: impl Fn(u32) -> Value) -> Value {
    Value::Array((0..n).map(f).collect())
}

/// The factory configuration of a simulated device with `channels` channels.
pub fn defaults(channels: u32, serial: &str, mac: &str, codecs: (&str, &str), tcp_port: u16) -> Value {
    let name = |c: &str| if c == "h265" { "H.265" } else { "H.264" };
    let (compression, sub_compression) = (name(codecs.0), name(codecs.1));
    // XMeye firmware: 7 days × 6 sections, "1 from-to" armed, "0 …" not.
    let mut day = vec![json!("1 00:00:00-24:00:00")];
    day.resize(6, json!("0 00:00:00-24:00:00"));
    let week = Value::Array(vec![Value::Array(day); 7]);
    let event_handler = json!({
        "AlarmInfo": "", "AlarmOutEnable": false, "AlarmOutLatch": 10, "AlarmOutMask": "0x00000000",
        "BeepEnable": false, "EventLatch": 1, "FTPEnable": false, "LogEnable": true, "MailEnable": false,
        "MessageEnable": false, "MsgtoNetEnable": true, "MultiLanguage": false, "PtzEnable": false,
        "RecordEnable": true, "RecordLatch": 30, "RecordMask": "0x00000001", "ShowInfo": false,
        "SnapEnable": false, "SnapShotMask": "0x00000000", "TimeSection": week,
        "TipEnable": false, "TourEnable": false, "VoiceEnable": false,
    });
    json!({
        "General": {
            "General": {
                "AutoLogout": 0, "FontSize": 24, "LocalNo": 0, "MachineName": "LocalHost",
                "OverWrite": "OverWrite", "ScreenAutoShutdown": 10, "ScreenSaveTime": 0, "VideoOutPut": "Auto",
            },
            "Location": {
                "DSTRule": "Off", "DateFormat": "YYMMDD", "DateSeparator": "-", "Language": "English",
                "TimeFormat": "24", "VideoFormat": "PAL", "WorkDay": 62,
            },
        },
        "NetWork": {
            "NetCommon": {
                "BuildDate": "2024-03-12 10:21:05", "ChannelNum": channels, "DeviceType": 1,
                "GateWay": "0x0100007F", "HostIP": "0x0100007F", "HostName": "LocalHost", "HttpPort": 80,
                "MAC": mac, "MaxBps": 0, "MonMode": "TCP", "NetConnectState": 1, "OtherFunction": "D=2024-03-12 10:21:05 V=4.02.R11",
                "SN": serial, "SSLPort": 8443, "Submask": "0x00FFFFFF", "TCPMaxConn": 10, "TCPPort": tcp_port,
                "TransferPlan": "AutoAdapt", "UDPPort": 34568, "UseHSDownLoad": false,
            },
            "NetDHCP": [{"Enable": false, "Interface": "eth0"}],
            "NetDNS": {"Address": "0x08080808", "SpareAddress": "0x04040808"},
            "NetNTP": {"Enable": false, "Server": {"Address": "0x00000000", "Anonymity": false, "Name": "pool.ntp.org", "Password": "", "Port": 123, "UserName": ""}, "TimeZone": 13, "UpdatePeriod": 60},
            "AlarmServer": {
                "Alarm": false, "Log": false, "Name": "ALARMCENTER", "Protocol": "GENERAL",
                "Server": {"Address": "0x0100007F", "Anonymity": false, "Name": "127.0.0.1", "Password": "", "Port": 15002, "UserName": "admin"},
            },
        },
        "Simplify": {
            "Encode": per_channel(channels, |_| json!({
                "ExtraFormat": {"AudioEnable": false, "Video": {"BitRate": 512, "BitRateControl": "VBR", "Compression": sub_compression, "FPS": 25, "GOP": 1, "Quality": 4, "Resolution": "640x360"}, "VideoEnable": true},
                "MainFormat": {"AudioEnable": false, "Video": {"BitRate": 4096, "BitRateControl": "VBR", "Compression": compression, "FPS": 25, "GOP": 1, "Quality": 4, "Resolution": "5M"}, "VideoEnable": true},
            })),
        },
        "Camera": {
            "Param": per_channel(channels, |_| json!({
                "AeSensitivity": 5, "ApertureMode": "0x00000000", "BLCMode": "0x00000000", "DayNightColor": "0x00000000",
                "Day_nfLevel": 3, "DncThr": 30, "ElecLevel": 50, "EsShutter": "0x00000002", "ExposureParam": {"LeastTime": "0x00000100", "Level": 0, "MostTime": "0x00010000"},
                "GainParam": {"AutoGain": 1, "Gain": 50}, "IRCUTMode": 0, "IrcutSwap": 0, "Night_nfLevel": 3,
                "PictureFlip": "0x00000000", "PictureMirror": "0x00000000", "RejectFlicker": "0x00000000", "WhiteBalance": "0x00000000",
            })),
        },
        "AVEnc": {
            "VideoColor": per_channel(channels, |_| json!([{
                "Enable": true, "TimeSection": "0 00:00:00-24:00:00",
                "VideoColorParam": {"Acutance": 3848, "Brightness": 50, "Contrast": 50, "Gain": 0, "Hue": 50, "Saturation": 50, "Whitebalance": 128},
            }])),
        },
        "Detect": {
            "MotionDetect": per_channel(channels, |_| json!({"Enable": true, "EventHandler": event_handler, "Level": 3, "Region": vec!["0xFFFFFFFF"; 18]})),
            "BlindDetect": per_channel(channels, |_| json!({"Enable": false, "EventHandler": event_handler, "Level": 3})),
            "LossDetect": per_channel(channels, |_| json!({"Enable": true, "EventHandler": event_handler})),
        },
        "fVideo": {
            "OSDInfo": per_channel(channels, |c| json!({"Align": 2, "Info": [format!("CAM{:02}", c + 1)], "OSDInfoWidget": {"BackColor": "0x00000000", "EncodeBlend": true, "FrontColor": "0xF0FFFFFF", "PreviewBlend": true, "RelativePos": [6144, 6144, 0, 0]}})),
        },
        "Record": per_channel(channels, |_| json!({"PacketLength": 2, "PreRecord": 4, "RecordMode": "ConfigRecord", "Redundancy": false, "TimeSection": [["24 00:00:00-24:00:00"]]})),
        "Uart": {
            "Comm": [{"Attribute": [115200, 8, "None", 1], "PortNo": 0, "ProtocolName": "Console"}],
            "PTZ": per_channel(channels, |_| json!({"Attribute": [9600, 8, "None", 1], "DeviceNo": 1, "PortNo": 0, "ProtocolName": "PELCOD"})),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Value {
        defaults(2, "abc", "00:12:31:00:00:01", ("h264", "h264"), 34567)
    }

    #[test]
    fn paths_with_and_without_indexes() {
        let t = tree();
        assert_eq!(get(&t, "General.General.MachineName").unwrap(), "LocalHost");
        assert_eq!(get(&t, "Camera.Param.[1].DncThr").unwrap(), 30);
        assert_eq!(get(&t, "Simplify.Encode").unwrap().as_array().unwrap().len(), 2);
        assert_eq!(get(&t, "Camera.Param.[2]").unwrap_err().ret, 607);
        assert_eq!(get(&t, "Nope").unwrap_err().ret, 607);
        assert_eq!(get(&t, "General..General").unwrap_err().ret, 607);
    }

    #[test]
    fn sparse_set_merges_and_bad_values_change_nothing() {
        let mut t = tree();
        set(&mut t, "General.General", json!({"MachineName": "Gate"})).unwrap();
        assert_eq!(get(&t, "General.General.MachineName").unwrap(), "Gate");
        assert_eq!(get(&t, "General.General.FontSize").unwrap(), 24);
        let before = t.clone();
        let e = set(&mut t, "General.General", json!({"MachineName": "X", "FontSize": "big"})).unwrap_err();
        assert_eq!(e.ret, 608);
        assert!(e.message.contains("General.General.FontSize"), "{}", e.message);
        assert_eq!(t, before, "a refused set changes nothing");
        assert_eq!(set(&mut t, "General.General", json!({"Bogus": 1})).unwrap_err().ret, 608);
        set(&mut t, "Simplify.Encode.[1].MainFormat.Video", json!({"FPS": 15})).unwrap();
        assert_eq!(get(&t, "Simplify.Encode.[1].MainFormat.Video.FPS").unwrap(), 15);
        assert_eq!(get(&t, "Simplify.Encode.[0].MainFormat.Video.FPS").unwrap(), 25);
    }
}
