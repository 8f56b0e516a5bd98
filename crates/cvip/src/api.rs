//! Typed calls for every method of the seed, the records they carry, and
//! the seed's enumerations (which keep values they do not know).
//!
//! Parameter shapes follow docs/cvip.md: the shape of the seed's example
//! where it has one (`cviPTZ.cmd` positional, `startFirmwareUpdate` an
//! array of one-member structs, `getProperties` an array of names), else
//! one struct of the table's field names.

use crate::client::{check_ack, Client, Error, Result};
use crate::value::{Struct, Value};

/// A seed table of codes as a Rust enum; unknown codes are kept.
macro_rules! codes {
    ($(#[$m:meta])* $name:ident { $($var:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($var,)* Other(u32) }
        impl $name {
            pub fn code(self) -> u32 { match self { $($name::$var => $val,)* $name::Other(c) => c } }
            pub fn from_code(c: u32) -> $name { match c { $($val => $name::$var,)* c => $name::Other(c) } }
            /// By name (case-insensitive) or number (`0x..` or decimal).
            pub fn parse(s: &str) -> Option<$name> {
                $(if s.eq_ignore_ascii_case(stringify!($var)) { return Some($name::$var); })*
                crate::value::parse_int_text(s).and_then(|v| u32::try_from(v).ok()).map($name::from_code)
            }
            pub const ALL: &'static [$name] = &[$($name::$var),*];
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self { $($name::$var => f.write_str(stringify!($var)),)* $name::Other(c) => write!(f, "{c:#x}") }
            }
        }
        impl From<$name> for Value { fn from(v: $name) -> Value { Value::Int(v.code() as i32) } }
    };
}

codes!(MediaType { H264 = 1, Mp4v = 2, Vsm4 = 3 });
codes!(PlayState { Pause = 0, Play = 1, Stop = 2, FastForward = 3, FastBackward = 4, StepForward = 8, StepBackward = 9 });
codes!(PtzCmdType { Stop = 0, Pan = 1, Tilt = 2, Zoom = 3, SetPreset = 4, GotoPreset = 5, LeftUpRightDown = 6, RightUpLeftDown = 7 });
codes!(PtzProtocol { PelcoP = 1, PelcoD = 2, Panasonic = 3 });
codes!(EventType { KeepAlive = 1, External = 2, Motion = 4, VideoLoss = 8, RecordLoss = 0x10, RecordDisc = 0x20 });
codes!(ProfileType { SerialPort = 1, Schedule = 2, VideoEncoder = 3, AudioEncoder = 4 });
codes!(EntityType { Camera = 1, Monitor = 2, Device = 3, Sequence = 4, Map = 5, Image = 6, AlarmMessage = 0x33 });
codes!(ApplicationType { PtzControl = 1, VideoStreaming = 2, VideoPlayback = 3, VideoRecording = 4 });
codes!(Privilege { Streaming = 1, Playback = 2, Snapshot = 4, Record = 8, Housekeeping = 0x10, Template = 0x20, SystemExit = 0x40 });
codes!(ImageType { Bitmap8 = 1, Bitmap24 = 2, Bitmap32 = 3, Png = 4, Jpg = 5, Gif = 6 });
codes!(MapEntityType { Map = 1, Image = 2, Camera = 3, Monitor = 4, Sensor = 5, Intercom = 6, Microphone = 7, Speaker = 8, Relayout = 9, Relaybox = 0x0a, Encoder = 0x0b, Recorder = 0x0c });
codes!(
    /// Camera capability bits.
    Capability { Ptz = 1, Aux = 2 }
);

/// Names the bits of an event-type mask (`motion|video_loss`).
pub fn event_mask_names(mask: u32) -> String {
    let v: Vec<String> = EventType::ALL.iter().filter(|e| mask & e.code() != 0).map(|e| e.to_string()).collect();
    if v.is_empty() {
        format!("{mask:#x}")
    } else {
        v.join("|")
    }
}

/// Parses `motion,external` or `0x06` into a mask.
pub fn parse_event_mask(s: &str) -> Option<u32> {
    let mut m = 0;
    for part in s.split([',', '|']) {
        let part = part.trim().replace(['_', '-'], "");
        m |= EventType::parse(&part)?.code();
    }
    Some(m)
}

/// A field type of a record.
pub trait Field: Sized {
    fn to_value(&self) -> Value;
    fn from_value(v: &Value) -> Option<Self>;
}
impl Field for String {
    fn to_value(&self) -> Value {
        Value::Str(self.clone())
    }
    fn from_value(v: &Value) -> Option<String> {
        Some(v.to_text())
    }
}
impl Field for u32 {
    fn to_value(&self) -> Value {
        Value::Int(*self as i32)
    }
    fn from_value(v: &Value) -> Option<u32> {
        v.as_i64().and_then(|i| u32::try_from(i).ok())
    }
}
impl Field for i32 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
    fn from_value(v: &Value) -> Option<i32> {
        v.as_i64().and_then(|i| i32::try_from(i).ok())
    }
}
impl Field for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(v: &Value) -> Option<bool> {
        v.as_bool()
    }
}

/// A record of the seed's tables: a struct with the table's field names,
/// written as an XML-RPC struct and read back forgivingly (names matched
/// through `canon`, missing fields at their default).
macro_rules! record {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty = $wire:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name { $(pub $field: $ty,)* }
        impl $name {
            pub fn to_struct(&self) -> Struct {
                let mut s = Struct::new();
                $(s.push($wire, self.$field.to_value());)*
                s
            }
            pub fn from_struct(s: &Struct) -> $name {
                $name { $($field: s.get($wire).and_then(<$ty as Field>::from_value).unwrap_or_default(),)* }
            }
            pub const FIELDS: &'static [&'static str] = &[$($wire),*];
        }
        impl From<$name> for Value { fn from(r: $name) -> Value { Value::Struct(r.to_struct()) } }
    };
}

record!(Describe {
    id: String = "id",
    name: String = "name",
    version: String = "version",
    property_support: u32 = "propertySupport",
    function_support: u32 = "functionSupport"
});
record!(PropertyInfo {
    id: String = "id",
    name: String = "name",
    validation: String = "validation",
    access: String = "access",
    units: String = "units",
    conditional: String = "conditional"
});
record!(FunctionInfo {
    method_name: String = "methodName",
    multi_call: u32 = "multiCallSupport",
    multi_answer: u32 = "multiAnswerSupport"
});
record!(FirmwareProgress {
    state: String = "state",
    status: String = "status",
    bytes: u32 = "bytesProgress",
    total: u32 = "totalBytesProgress"
});
record!(SerialPort {
    guid: String = "GUID",
    id: u32 = "ID",
    operation_mode: u32 = "OperationMode",
    baud_rate: u32 = "BaudRate",
    data_bits: u32 = "DataBits",
    parity: u32 = "PortParity",
    stop_bits: u32 = "StopBits",
    line_driver: u32 = "LineDriver",
    connection_type: String = "ConnectionType",
    connection_port: u32 = "ConnectionPort",
    persistent: bool = "Persistent",
});
record!(StreamSession {
    guid: String = "GUID",
    stream_id: u32 = "StreamID",
    major: u32 = "major",
    minor: u32 = "minor",
    media_type: u32 = "MediaType",
    persistent: bool = "persistent",
    dest_ip: String = "destIp",
    dest_port: u32 = "destPort",
    dest_transport: String = "destTransport",
});
record!(DisplaySession {
    guid: String = "GUID",
    major: u32 = "major",
    minor: u32 = "minor",
    media_type: u32 = "mediatype",
    persistent: bool = "persistent",
    src_ip: String = "srcIp",
    src_port: u32 = "srcPort",
    src_transport: String = "srcTransport",
});
record!(AnalyticsSession {
    guid: String = "GUID",
    major: u32 = "major",
    minor: u32 = "minor",
    media_type: u32 = "mediatype",
    persistent: bool = "persistent",
    dest_ip: String = "destIp",
    dest_port: u32 = "destPort",
    dest_transport: String = "destTransport",
});
record!(PtzSetup { ptz_id: u32 = "PtzID", protocol: u32 = "ProtocolType", user_priority: u32 = "UserPriority" });
record!(PtzCommand {
    guid: String = "GUID",
    ptz_id: u32 = "PtzID",
    phy_addr: u32 = "PhyAddr",
    user_priority: u32 = "UserPriority",
    cmd_type: u32 = "CmdType",
    cmd_data: i32 = "CmdData",
});
record!(RecordSession {
    guid: String = "GUID",
    major: u32 = "major",
    minor: u32 = "minor",
    persistent: bool = "persistent",
    media_type: u32 = "mediatype",
    src_ip: String = "srcIp",
    src_port: u32 = "srcPort",
    src_transport: String = "srcTransport",
    schedule_profile_id: u32 = "scheduleProfileID",
    cam_entity_id: u32 = "camEntityID",
});
record!(PlaybackSession {
    guid: String = "GUID",
    playback_id: u32 = "PlaybackID",
    major: u32 = "Major",
    minor: u32 = "Minor",
    media_type: u32 = "MediaType",
    mode: u32 = "mode",
    start_time: String = "StartTime",
    end_time: String = "EndTime",
    dest_ip: String = "destIp",
    dest_port: u32 = "destPort",
    dest_transport: String = "destTransport",
});
record!(PlaybackStatus { state: u32 = "State", speed: u32 = "Speed", position: u32 = "Position" });
record!(EventSpan { start_time: String = "StartTime", end_time: String = "EndTime", event_type: u32 = "EventType" });
record!(MediaQuery {
    guid: String = "GUID",
    major: u32 = "Major",
    minor: u32 = "Minor",
    start_date: String = "startDate",
    end_date: String = "endDate",
    event_type: u32 = "eventType",
    event_sub_type: u32 = "eventSubType",
    event_value: u32 = "eventValue",
    page: u32 = "Page",
});
record!(Clip {
    guid: String = "GUID",
    clip_id: u32 = "ClipID",
    clip_type: u32 = "ClipType",
    clip_time: String = "ClipTime",
    size: u32 = "Size"
});
record!(Export {
    guid: String = "GUID",
    clip_id: u32 = "ClipID",
    server_ip: String = "serverIP",
    server_port: u32 = "serverPort",
    authentication_id: String = "authenticationId"
});
record!(Notify {
    event_type: u32 = "Type",
    id: u32 = "Id",
    time: String = "Time",
    event_guid: String = "EventGUID",
    info: u32 = "info"
});
record!(UserGroup {
    group_id: u32 = "GroupID",
    name: String = "GroupName",
    description: String = "GroupDescription",
    privilege: u32 = "GroupPrivilege"
});
record!(User {
    user_id: u32 = "UserID",
    name: String = "UserName",
    password: String = "UserPassword",
    description: String = "UserDescription",
    priority: u32 = "UserPriority",
    privilege: u32 = "UserPrivilege",
    group_id: u32 = "GroupID",
});
record!(EntityGroup {
    entity_type: u32 = "EntityTypeID",
    group_id: u32 = "GroupID",
    name: String = "GroupName",
    description: String = "GroupDescription"
});
record!(EntityVersion { entity_type: u32 = "EntityTypeID", version: u32 = "Version", timestamp: String = "TimeStamp" });

/// An entity, profile, application or service binding: fixed fields plus
/// the type-specific properties of the seed's tables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entity {
    pub entity_type: u32,
    pub group_id: u32,
    pub entity_id: u32,
    pub name: String,
    pub description: String,
    pub properties: Struct,
}

/// The fields every entity record has (the rest are its properties).
pub const ENTITY_FIXED: &[&str] =
    &["EntityTypeID", "GroupID", "EntityID", "EntityName", "EntityDesc", "GUID", "AppGUID", "IsLastPage"];

impl Entity {
    pub fn to_struct(&self) -> Struct {
        let mut s = Struct::new()
            .with("EntityTypeID", self.entity_type)
            .with("GroupID", self.group_id)
            .with("EntityID", self.entity_id)
            .with("EntityName", self.name.as_str())
            .with("EntityDesc", self.description.as_str());
        s.0.extend(self.properties.0.iter().cloned());
        s
    }

    pub fn from_struct(s: &Struct) -> Entity {
        let n = |k: &str| s.int(k).unwrap_or(0) as u32;
        Entity {
            entity_type: n("EntityTypeID"),
            group_id: n("GroupID"),
            entity_id: n("EntityID"),
            name: s.str("EntityName").unwrap_or_default(),
            description: s.str("EntityDesc").unwrap_or_default(),
            properties: rest(s, ENTITY_FIXED),
        }
    }
}

/// The members of `s` not named in `fixed`.
pub fn rest(s: &Struct, fixed: &[&str]) -> Struct {
    let fixed: Vec<String> = fixed.iter().map(|f| crate::value::canon(f)).collect();
    Struct(s.0.iter().filter(|(n, _)| !fixed.contains(&crate::value::canon(n))).cloned().collect())
}

/// A page of a paged list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page<T> {
    pub is_last: bool,
    pub items: Vec<T>,
}

fn items(v: &Value) -> Vec<Struct> {
    match v {
        Value::Array(a) => a.iter().filter_map(|v| v.as_struct().cloned()).collect(),
        Value::Struct(s) => match s.get("Items").or_else(|| s.get("List")) {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_struct().cloned()).collect(),
            _ => vec![],
        },
        _ => vec![],
    }
}

fn page<T>(v: &Value, f: impl Fn(&Struct) -> T) -> Page<T> {
    let is_last = v.as_struct().and_then(|s| s.get("IsLastPage")).and_then(Value::as_bool).unwrap_or(true);
    Page { is_last, items: items(v).iter().map(f).collect() }
}

fn one(r: Struct) -> Vec<Value> {
    vec![Value::Struct(r)]
}

/// Common, device and NVR calls.
impl Client {
    pub async fn system_describe(&self) -> Result<Describe> {
        let v = self.call1("system.describe", vec![]).await?;
        v.as_struct().map(Describe::from_struct).ok_or_else(|| self.unexpected("system.describe", "not a struct"))
    }

    pub async fn list_services(&self) -> Result<Vec<String>> {
        let v = self.call1("system.listServices", vec![]).await?;
        Ok(v.as_array().unwrap_or_default().iter().map(Value::to_text).collect())
    }

    /// Event groups (`system.listEvents`) or a group's events
    /// (`<group>.listEvents`): (id, name).
    pub async fn list_events(&self, group: Option<&str>) -> Result<Vec<(String, String)>> {
        let m = format!("{}.listEvents", group.unwrap_or("system"));
        let v = self.call1(&m, vec![]).await?;
        Ok(items(&v).iter().map(|s| (s.str("id").unwrap_or_default(), s.str("name").unwrap_or_default())).collect())
    }

    pub async fn describe(&self, service: &str) -> Result<Describe> {
        let m = format!("{service}.describe");
        let v = self.call1(&m, vec![]).await?;
        v.as_struct().map(Describe::from_struct).ok_or_else(|| self.unexpected(&m, "not a struct"))
    }

    /// Every property with its value, validation and access, as the device
    /// describes it (one struct each).
    pub async fn list_properties(&self, service: &str) -> Result<Vec<Struct>> {
        Ok(items(&self.call1(&format!("{service}.listProperties"), vec![]).await?))
    }

    pub async fn list_functions(&self, service: &str) -> Result<Vec<FunctionInfo>> {
        let v = self.call1(&format!("{service}.listFunctions"), vec![]).await?;
        Ok(items(&v).iter().map(FunctionInfo::from_struct).collect())
    }

    pub async fn list_parameters(&self, service: &str, function: &str) -> Result<Struct> {
        let m = format!("{service}.listParameters");
        let v = self.call1(&m, vec![function.into()]).await?;
        v.as_struct().cloned().ok_or_else(|| self.unexpected(&m, "not a struct"))
    }

    /// Values of `ids` (all when empty).
    pub async fn get_properties(&self, service: &str, ids: &[&str]) -> Result<Struct> {
        let m = format!("{service}.getProperties");
        let params =
            if ids.is_empty() { vec![] } else { vec![Value::Array(ids.iter().map(|i| (*i).into()).collect())] };
        let v = check_ack(self.peer, &m, self.call1(&m, params).await?)?;
        v.as_struct().cloned().ok_or_else(|| self.unexpected(&m, "not a struct"))
    }

    pub async fn set_properties(&self, service: &str, values: Struct) -> Result<()> {
        self.call_ack(&format!("{service}.setProperties"), one(values)).await.map(drop)
    }

    pub async fn firmware_start(&self, image_file_id: &str, authentication_id: &str) -> Result<()> {
        let p = Value::Array(vec![
            Struct::new().with("imageFileId", image_file_id).into(),
            Struct::new().with("authenticationId", authentication_id).into(),
        ]);
        self.call_ack("cviUpdateFirmware.startFirmwareUpdate", vec![p]).await.map(drop)
    }

    pub async fn firmware_progress(&self) -> Result<FirmwareProgress> {
        let v = self.call1("cviUpdateFirmware.getProgressInfo", vec![]).await?;
        let s = match &v {
            Value::Array(a) => a.first().and_then(Value::as_struct).cloned(),
            Value::Struct(s) => Some(s.clone()),
            _ => None,
        };
        s.map(|s| FirmwareProgress::from_struct(&s))
            .ok_or_else(|| self.unexpected("getProgressInfo", "no progress struct"))
    }

    pub async fn serial_set(&self, p: &SerialPort) -> Result<()> {
        self.call_ack("cviSerialPort.setProperties", one(p.to_struct())).await.map(drop)
    }
    pub async fn serial_create(&self, p: &SerialPort) -> Result<SerialPort> {
        let v = self.call_ack("cviSerialPort.create", one(p.to_struct())).await?;
        Ok(v.as_struct().map(SerialPort::from_struct).unwrap_or_default())
    }
    pub async fn serial_delete(&self, guid: &str, id: u32) -> Result<()> {
        self.call_ack("cviSerialPort.delete", one(Struct::new().with("GUID", guid).with("ID", id))).await.map(drop)
    }
    pub async fn serial_list(&self, guid: &str) -> Result<Vec<SerialPort>> {
        let v = self.call1("cviSerialPort.list", one(Struct::new().with("GUID", guid))).await?;
        Ok(items(&v).iter().map(SerialPort::from_struct).collect())
    }

    /// Starts a stream; the answer carries GUID, StreamID and MediaType.
    pub async fn stream_create(&self, s: &StreamSession) -> Result<StreamSession> {
        let v = self.call_ack("cviStream.create", one(s.to_struct())).await?;
        Ok(v.as_struct().map(StreamSession::from_struct).unwrap_or_default())
    }
    pub async fn stream_delete(&self, guid: &str, stream_id: u32) -> Result<()> {
        self.call_ack("cviStream.delete", one(Struct::new().with("GUID", guid).with("StreamID", stream_id)))
            .await
            .map(drop)
    }
    pub async fn stream_list(&self, guid: &str) -> Result<Vec<StreamSession>> {
        let v = self.call1("cviStream.list", one(Struct::new().with("GUID", guid))).await?;
        Ok(items(&v).iter().map(StreamSession::from_struct).collect())
    }

    pub async fn display_create(&self, s: &DisplaySession) -> Result<()> {
        self.call_ack("cviDisplay.create", one(s.to_struct())).await.map(drop)
    }
    pub async fn display_delete(&self, s: &DisplaySession) -> Result<()> {
        self.call_ack("cviDisplay.delete", one(s.to_struct())).await.map(drop)
    }
    pub async fn display_list(&self, guid: &str) -> Result<Vec<DisplaySession>> {
        let v = self.call1("cviDisplay.list", one(Struct::new().with("GUID", guid))).await?;
        Ok(items(&v).iter().map(DisplaySession::from_struct).collect())
    }

    pub async fn analytics_create(&self, s: &AnalyticsSession) -> Result<()> {
        self.call_ack("cviAnalytics.create", one(s.to_struct())).await.map(drop)
    }
    pub async fn analytics_delete(&self, s: &AnalyticsSession) -> Result<()> {
        self.call_ack("cviAnalytics.delete", one(s.to_struct())).await.map(drop)
    }
    pub async fn analytics_list(&self, guid: &str) -> Result<Vec<AnalyticsSession>> {
        let v = self.call1("cviAnalytics.list", one(Struct::new().with("GUID", guid))).await?;
        Ok(items(&v).iter().map(AnalyticsSession::from_struct).collect())
    }

    pub async fn ptz_set(&self, p: &PtzSetup) -> Result<()> {
        self.call_ack("cviPtz.setProperties", one(p.to_struct())).await.map(drop)
    }

    /// `cviPTZ.cmd` with positional params, as in the seed's example.
    pub async fn ptz_cmd(&self, c: &PtzCommand) -> Result<()> {
        let params = vec![
            Value::Str(c.guid.clone()),
            Value::Int(c.ptz_id as i32),
            Value::Int(c.phy_addr as i32),
            Value::Int(c.user_priority as i32),
            Value::Int(c.cmd_type as i32),
            Value::Int(c.cmd_data),
        ];
        self.call_ack("cviPtz.cmd", params).await.map(drop)
    }

    pub async fn record_create(&self, r: &RecordSession) -> Result<()> {
        self.call_ack("cviRecord.create", one(r.to_struct())).await.map(drop)
    }
    pub async fn record_delete(&self, r: &RecordSession) -> Result<()> {
        self.call_ack("cviRecord.delete", one(r.to_struct())).await.map(drop)
    }
    pub async fn record_update(&self, r: &RecordSession) -> Result<()> {
        self.call_ack("cviRecord.update", one(r.to_struct())).await.map(drop)
    }
    pub async fn record_list(&self, guid: &str) -> Result<Vec<RecordSession>> {
        let v = self.call1("cviRecord.list", one(Struct::new().with("GUID", guid))).await?;
        Ok(items(&v).iter().map(RecordSession::from_struct).collect())
    }

    pub async fn playback_create(&self, p: &PlaybackSession) -> Result<PlaybackSession> {
        let v = self.call_ack("cviPlayback.create", one(p.to_struct())).await?;
        Ok(v.as_struct().map(PlaybackSession::from_struct).unwrap_or_default())
    }
    pub async fn playback_delete(&self, guid: &str, id: u32) -> Result<()> {
        self.call_ack("cviPlayback.delete", one(Struct::new().with("GUID", guid).with("PlaybackID", id)))
            .await
            .map(drop)
    }
    pub async fn playback_list(&self, guid: &str) -> Result<Vec<PlaybackSession>> {
        let v = self.call1("cviPlayback.list", one(Struct::new().with("GUID", guid))).await?;
        Ok(items(&v).iter().map(PlaybackSession::from_struct).collect())
    }
    pub async fn playback_setstate(&self, guid: &str, id: u32, state: PlayState, speed: u32) -> Result<()> {
        let s =
            Struct::new().with("GUID", guid).with("PlaybackID", id).with("State", state).with("Speed", speed as i32);
        self.call_ack("cviPlayback.setstate", one(s)).await.map(drop)
    }
    pub async fn playback_seek(&self, guid: &str, id: u32, position: u32) -> Result<()> {
        let s = Struct::new().with("GUID", guid).with("PlaybackID", id).with("Position", position as i32);
        self.call_ack("cviPlayback.seek", one(s)).await.map(drop)
    }
    /// Length in frames.
    pub async fn playback_length(&self, guid: &str, id: u32) -> Result<u32> {
        let v = self
            .call_ack("cviPlayback.getlength", one(Struct::new().with("GUID", guid).with("PlaybackID", id)))
            .await?;
        v.as_struct()
            .and_then(|s| s.int("Length"))
            .map(|l| l as u32)
            .ok_or_else(|| self.unexpected("getlength", "no Length"))
    }
    pub async fn playback_status(&self, guid: &str, id: u32) -> Result<PlaybackStatus> {
        let v = self
            .call_ack("cviPlayback.getstatus", one(Struct::new().with("GUID", guid).with("PlaybackID", id)))
            .await?;
        Ok(v.as_struct().map(PlaybackStatus::from_struct).unwrap_or_default())
    }
    /// Recorded spans carrying any event of `mask` between two times
    /// (`YYYYMMDDHHMMSS`). The seed files this under a second
    /// `cviPlayback.getstatus`; ivr names it `cviPlayback.queryevents` and
    /// its simulator also answers a getstatus that carries EventType.
    pub async fn playback_query_events(
        &self,
        guid: &str,
        major: u32,
        minor: u32,
        start: &str,
        end: &str,
        mask: u32,
    ) -> Result<Vec<EventSpan>> {
        let s = Struct::new()
            .with("GUID", guid)
            .with("MajorID", major)
            .with("MinorID", minor)
            .with("StartTime", start)
            .with("EndTime", end)
            .with("EventType", mask);
        let v = self.call1("cviPlayback.queryevents", one(s)).await?;
        let v = check_ack(self.peer, "cviPlayback.queryevents", v)?;
        Ok(items(&v).iter().map(EventSpan::from_struct).collect())
    }

    pub async fn media_query(&self, q: &MediaQuery) -> Result<Page<Clip>> {
        let v = check_ack(self.peer, "cviMedia.query", self.call1("cviMedia.query", one(q.to_struct())).await?)?;
        Ok(page(&v, Clip::from_struct))
    }
    pub async fn media_export(&self, e: &Export) -> Result<()> {
        self.call_ack("cviMedia.export", one(e.to_struct())).await.map(drop)
    }

    pub async fn event_subscribe(&self, mask: u32, channel: u32) -> Result<()> {
        self.call_ack("cviEvent.subscribe", one(Struct::new().with("Type", mask).with("Id", channel))).await.map(drop)
    }
    pub async fn event_unsubscribe(&self, mask: u32, channel: u32) -> Result<()> {
        self.call_ack("cviEvent.unsubscribe", one(Struct::new().with("Type", mask).with("Id", channel))).await.map(drop)
    }
    /// Acknowledges an event to a master server; the AckReturnCode uses
    /// the event table (see `ack::event`).
    pub async fn event_ack(&self, app_guid: &str, event_guid: &str, time: &str, text: &str) -> Result<()> {
        let s = Struct::new()
            .with("AppGUID", app_guid)
            .with("EventGUID", event_guid)
            .with("AckTime", time)
            .with("AckString", text);
        let v = self.call1("cviEvent.ack", one(s)).await?;
        match v.as_struct().and_then(|s| s.int("AckReturnCode")) {
            Some(c) if c == crate::ack::event::SUCCESS as i64 => Ok(()),
            Some(c) => Err(Error::Ack {
                peer: self.peer,
                method: "cviEvent.ack".into(),
                code: c as u32,
                message: v.as_struct().and_then(|s| s.str("ErrorString")).unwrap_or_default(),
            }),
            None => check_ack(self.peer, "cviEvent.ack", v).map(drop),
        }
    }

    /// Logs in to a master server; user name and password travel as
    /// lowercase hex MD5. Returns the session that carries the AppGUID.
    pub async fn login(&self, guid: &str, user: &str, password: &str, login_type: u32) -> Result<Master> {
        let s = Struct::new()
            .with("GUID", guid)
            .with("UserName", md5_hex(user))
            .with("PassWord", md5_hex(password))
            .with("LoginType", login_type);
        let v = self.call_ack("cviUser.login", one(s)).await?;
        let app = v
            .as_struct()
            .and_then(|s| s.str("AppGUID"))
            .ok_or_else(|| self.unexpected("cviUser.login", "no AppGUID"))?;
        Ok(Master { client: self.clone(), guid: guid.to_string(), app_guid: app })
    }
}

pub fn md5_hex(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A logged-in master-server session: every call carries GUID and AppGUID.
#[derive(Clone)]
pub struct Master {
    pub client: Client,
    pub guid: String,
    pub app_guid: String,
}

impl Master {
    fn base(&self) -> Struct {
        Struct::new().with("GUID", self.guid.as_str()).with("AppGUID", self.app_guid.as_str())
    }

    fn with(&self, extra: Struct) -> Vec<Value> {
        let mut s = self.base();
        s.0.extend(extra.0);
        one(s)
    }

    /// Any master-server method with GUID and AppGUID added.
    pub async fn call(&self, method: &str, extra: Struct) -> Result<Value> {
        self.client.call_ack(method, self.with(extra)).await
    }

    pub async fn logout(&self) -> Result<()> {
        self.call("cviUser.logout", Struct::new()).await.map(drop)
    }

    pub async fn list_groups(&self) -> Result<Vec<UserGroup>> {
        Ok(items(&self.call("cviUser.listgroups", Struct::new()).await?).iter().map(UserGroup::from_struct).collect())
    }
    /// Returns the new group's id.
    pub async fn add_group(&self, g: &UserGroup) -> Result<u32> {
        let mut s = g.to_struct();
        s.remove("GroupID");
        let v = self.call("cviUser.addgroup", s).await?;
        Ok(v.as_struct().and_then(|s| s.int("GroupID")).unwrap_or(0) as u32)
    }
    pub async fn update_group(&self, g: &UserGroup) -> Result<()> {
        self.call("cviUser.updategroup", g.to_struct()).await.map(drop)
    }
    pub async fn delete_group(&self, id: u32) -> Result<()> {
        self.call("cviUser.deletegroup", Struct::new().with("GroupID", id)).await.map(drop)
    }
    pub async fn list_users(&self) -> Result<Vec<User>> {
        Ok(items(&self.call("cviUser.listusers", Struct::new()).await?).iter().map(User::from_struct).collect())
    }
    /// `u.password` in clear text; sent as MD5 like the login. Returns the
    /// new user's id.
    pub async fn add_user(&self, u: &User) -> Result<u32> {
        let mut s = u.to_struct();
        s.remove("UserID");
        s.set("UserPassword", md5_hex(&u.password));
        let v = self.call("cviUser.adduser", s).await?;
        Ok(v.as_struct().and_then(|s| s.int("UserID")).unwrap_or(0) as u32)
    }
    /// An empty password leaves it unchanged.
    pub async fn update_user(&self, u: &User) -> Result<()> {
        let mut s = u.to_struct();
        if u.password.is_empty() {
            s.remove("UserPassword");
        } else {
            s.set("UserPassword", md5_hex(&u.password));
        }
        self.call("cviUser.updateuser", s).await.map(drop)
    }
    pub async fn delete_user(&self, id: u32) -> Result<()> {
        self.call("cviUser.deleteuser", Struct::new().with("UserID", id)).await.map(drop)
    }
    pub async fn mount(&self, user: u32, entity: u32, ty: EntityType) -> Result<()> {
        let s = Struct::new().with("UserID", user).with("EntityID", entity).with("EntityType", ty);
        self.call("cviUser.mount", s).await.map(drop)
    }
    pub async fn unmount(&self, user: u32, entity: u32, ty: EntityType) -> Result<()> {
        let s = Struct::new().with("UserID", user).with("EntityID", entity).with("EntityType", ty);
        self.call("cviUser.unmount", s).await.map(drop)
    }

    pub async fn entity_groups(&self, ty: EntityType) -> Result<Vec<EntityGroup>> {
        let v = self.call("cviEntity.listgroups", Struct::new().with("EntityTypeID", ty)).await?;
        Ok(items(&v).iter().map(EntityGroup::from_struct).collect())
    }
    pub async fn entity_add_group(&self, g: &EntityGroup) -> Result<u32> {
        let mut s = g.to_struct();
        s.remove("GroupID");
        let v = self.call("cviEntity.addgroup", s).await?;
        Ok(v.as_struct().and_then(|s| s.int("GroupID")).unwrap_or(0) as u32)
    }
    pub async fn entity_update_group(&self, g: &EntityGroup) -> Result<()> {
        self.call("cviEntity.updategroup", g.to_struct()).await.map(drop)
    }
    pub async fn entity_delete_group(&self, ty: EntityType, id: u32) -> Result<()> {
        self.call("cviEntity.deletegroup", Struct::new().with("EntityTypeID", ty).with("GroupID", id)).await.map(drop)
    }
    pub async fn entity_query(&self, ty: EntityType) -> Result<EntityVersion> {
        let v = self.call("cviEntity.query", Struct::new().with("EntityTypeID", ty)).await?;
        Ok(v.as_struct().map(EntityVersion::from_struct).unwrap_or_default())
    }
    /// One page (from 0) of the entities of a type.
    pub async fn entity_list(&self, ty: EntityType, page_no: u32) -> Result<Page<Entity>> {
        let v = self.call("cviEntity.list", Struct::new().with("EntityTypeID", ty).with("Page", page_no)).await?;
        Ok(page(&v, Entity::from_struct))
    }
    /// Every page.
    pub async fn entity_list_all(&self, ty: EntityType) -> Result<Vec<Entity>> {
        let mut out = Vec::new();
        for p in 0.. {
            let pg = self.entity_list(ty, p).await?;
            out.extend(pg.items);
            if pg.is_last {
                break;
            }
        }
        Ok(out)
    }
    /// Adds an entity (an image's data in chunks of at most 1 MiB: the
    /// first call creates it, the next ones with IsLastPage=0 append);
    /// returns its id.
    pub async fn entity_add(&self, e: &Entity) -> Result<u32> {
        let mut s = e.to_struct();
        s.remove("EntityID");
        let v = self.call("cviEntity.add", s).await?;
        Ok(v.as_struct().and_then(|s| s.int("EntityID")).unwrap_or(0) as u32)
    }
    pub async fn entity_update(&self, e: &Entity) -> Result<()> {
        self.call("cviEntity.update", e.to_struct()).await.map(drop)
    }
    pub async fn entity_delete(&self, ty: EntityType, id: u32) -> Result<()> {
        self.call("cviEntity.delete", Struct::new().with("EntityTypeID", ty).with("EntityID", id)).await.map(drop)
    }
    /// (ServiceID, profile id) bindings of a device entity.
    pub async fn entity_services(&self, entity: u32) -> Result<Vec<Struct>> {
        Ok(items(&self.call("cviEntity.listservices", Struct::new().with("EntityID", entity)).await?))
    }
    pub async fn entity_update_service(&self, entity: u32, service_id: &str, profile_id: u32) -> Result<()> {
        let s = Struct::new().with("EntityID", entity).with("ServiceID", service_id).with("ProfileID", profile_id);
        self.call("cviEntity.updateservices", s).await.map(drop)
    }

    pub async fn profiles(&self, ty: ProfileType) -> Result<Vec<Struct>> {
        Ok(items(&self.call("cviProfile.list", Struct::new().with("ProfileTypeID", ty)).await?))
    }
    pub async fn profile_add(&self, ty: ProfileType, props: Struct) -> Result<u32> {
        let mut s = Struct::new().with("ProfileTypeID", ty);
        s.0.extend(props.0);
        let v = self.call("cviProfile.add", s).await?;
        Ok(v.as_struct().and_then(|s| s.int("ProfileID")).unwrap_or(0) as u32)
    }
    pub async fn profile_update(&self, ty: ProfileType, id: u32, props: Struct) -> Result<()> {
        let mut s = Struct::new().with("ProfileTypeID", ty).with("ProfileID", id);
        s.0.extend(props.0);
        self.call("cviProfile.update", s).await.map(drop)
    }
    pub async fn profile_delete(&self, ty: ProfileType, id: u32) -> Result<()> {
        self.call("cviProfile.delete", Struct::new().with("ProfileType", ty).with("ProfileID", id)).await.map(drop)
    }

    pub async fn applications(&self, ty: EntityType, entity: u32) -> Result<Vec<Struct>> {
        let v =
            self.call("cviApplication.list", Struct::new().with("EntityTypeID", ty).with("EntityID", entity)).await?;
        Ok(items(&v))
    }
    pub async fn application_add(
        &self,
        ty: EntityType,
        entity: u32,
        app: ApplicationType,
        props: Struct,
    ) -> Result<()> {
        let mut s = Struct::new().with("EntityTypeID", ty).with("EntityID", entity).with("ApplicationTypeID", app);
        s.0.extend(props.0);
        self.call("cviApplication.add", s).await.map(drop)
    }
    pub async fn application_update(
        &self,
        ty: EntityType,
        entity: u32,
        app: ApplicationType,
        props: Struct,
    ) -> Result<()> {
        let mut s = Struct::new().with("EntityTypeID", ty).with("EntityID", entity).with("ApplicationTypeID", app);
        s.0.extend(props.0);
        self.call("cviApplication.update", s).await.map(drop)
    }
    pub async fn application_delete(&self, ty: EntityType, entity: u32, app: Option<ApplicationType>) -> Result<()> {
        let mut s = Struct::new().with("EntityTypeID", ty).with("EntityID", entity);
        if let Some(a) = app {
            s.push("ApplicationTypeID", a);
        }
        self.call("cviApplication.delete", s).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_unknown_values() {
        assert_eq!(PlayState::from_code(8), PlayState::StepForward);
        assert_eq!(PlayState::from_code(7), PlayState::Other(7));
        assert_eq!(PlayState::Other(7).code(), 7);
        assert_eq!(EntityType::parse("alarmmessage"), Some(EntityType::AlarmMessage));
        assert_eq!(EntityType::parse("0x33"), Some(EntityType::AlarmMessage));
        assert_eq!(parse_event_mask("motion,video_loss"), Some(0x0c));
        assert_eq!(event_mask_names(0x06), "External|Motion");
    }

    #[test]
    fn records_read_mangled_names() {
        let s = Struct::new().with("destlp", "10.1.1.1").with("StreamID", 3).with("persistant", 1);
        let r = StreamSession::from_struct(&s);
        assert_eq!(r.dest_ip, "10.1.1.1");
        assert_eq!(r.stream_id, 3);
        assert!(r.persistent);
        assert_eq!(md5_hex("admin"), "21232f297a57a5a743894a0e4a801fc3");
    }
}
