//! A simulated CVIP unit: a device (camera/encoder), an NVR, or a master
//! server, speaking CVIPv2 on TCP (default 7110), answering pings on UDP
//! and on the common port 9990.

pub mod master;
pub mod media;

use crate::clips::{clip, Clip, ClipCodec};
use cvip::api::{self, PlayState, PtzCmdType};
use cvip::ping::{PingRequest, PingResponse};
use cvip::server::{
    self, ack_ok, event_type, fields, Access, Function, Handler, Hub, ParamDesc, Peer, Property, Refusal, Registry,
    Reply, Service, Validation,
};
use cvip::PacketCodec;
use cvip::{Struct, Value};
use media::Transport;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Device,
    Nvr,
    Master,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "device" | "camera" | "encoder" => Some(Role::Device),
            "nvr" => Some(Role::Nvr),
            "master" | "master-server" => Some(Role::Master),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CvipConfig {
    pub role: Role,
    pub channels: u32,
    pub codec: ClipCodec,
    pub guid: [u8; 16],
    pub name: String,
    /// Raise a motion event on every channel this often (None: on demand).
    pub event_every: Option<Duration>,
    /// Master server: the built-in administrator.
    pub admin_user: String,
    pub admin_password: String,
    /// Most concurrent sessions of each kind (stream, display, ...).
    pub session_limit: usize,
    /// Hours of recordings an NVR starts with.
    pub history_hours: u32,
}

impl Default for CvipConfig {
    fn default() -> CvipConfig {
        CvipConfig {
            role: Role::Device,
            channels: 1,
            codec: ClipCodec::H264,
            guid: *b"ivr-sim-cvip-001",
            name: "ivr simulated CVIP unit".into(),
            event_every: None,
            admin_user: "admin".into(),
            admin_password: "admin".into(),
            session_limit: 8,
            history_hours: 24,
        }
    }
}

/// Seconds of one stored recording.
pub const CLIP_SECS: u32 = 60;
pub const MEDIA_PAGE: usize = 16;

#[derive(Clone, Debug)]
pub struct Recording {
    pub clip_id: u32,
    pub channel: u32,
    pub start: chrono::NaiveDateTime,
    pub frames: u64,
    pub events: u32,
}

impl Recording {
    pub fn end(&self) -> chrono::NaiveDateTime {
        self.start + chrono::Duration::milliseconds((self.frames * 1000 / 25) as i64)
    }
}

struct Firmware {
    auth: String,
    image: String,
    state: &'static str,
    status: &'static str,
    bytes: u64,
    total: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PtzPosition {
    pub pan: f64,
    pub tilt: f64,
    pub zoom: f64,
}

struct Ptz {
    pos: PtzPosition,
    /// (pan, tilt, zoom) per second, and since when.
    motion: Option<((f64, f64, f64), Instant)>,
    presets: std::collections::BTreeMap<u32, PtzPosition>,
}

impl Ptz {
    fn settle(&mut self) {
        if let Some(((dp, dt, dz), since)) = self.motion {
            let s = since.elapsed().as_secs_f64();
            self.pos.pan = (self.pos.pan + dp * s).rem_euclid(360.0);
            self.pos.tilt = (self.pos.tilt + dt * s).clamp(-90.0, 90.0);
            self.pos.zoom = (self.pos.zoom + dz * s).clamp(1.0, 30.0);
            self.motion = Some(((dp, dt, dz), Instant::now()));
        }
    }
}

struct Playback {
    s: api::PlaybackSession,
    state: PlayState,
    speed: u32,
    /// Position (frames) at `since` and whether it moves.
    pos: u64,
    since: Instant,
    length: u64,
    /// Where the video goes while playing (None: position only).
    dest: Option<(SocketAddr, Transport)>,
    sender: Option<JoinHandle<()>>,
}

impl Drop for Playback {
    fn drop(&mut self) {
        if let Some(t) = self.sender.take() {
            t.abort();
        }
    }
}

impl Playback {
    /// (Re)starts or stops sending to match the state: playing sends from
    /// the keyframe at or before the position, at the play speed.
    fn resend(&mut self, clip: &'static Clip) {
        if let Some(t) = self.sender.take() {
            t.abort();
        }
        let Some((dest, transport)) = self.dest else { return };
        if !matches!(self.state, PlayState::Play | PlayState::FastForward) || self.pos >= self.length {
            return;
        }
        let from = self.pos - self.pos % clip.gop as u64;
        let frames = self.length - from;
        let speed = self.speed.max(1) as f64;
        self.sender = Some(tokio::spawn(async move {
            if let Err(e) = media::send(clip, dest, transport, from, Some(frames), speed).await {
                tracing::info!(%dest, "playback stream ended: {e}");
            }
        }));
    }

    fn position(&self) -> u64 {
        let e = self.since.elapsed().as_secs_f64();
        let fps = 25.0 * self.speed.max(1) as f64;
        let p = match self.state {
            PlayState::Play | PlayState::FastForward => self.pos as f64 + e * fps,
            PlayState::FastBackward => self.pos as f64 - e * fps,
            _ => self.pos as f64,
        };
        (p.max(0.0) as u64).min(self.length)
    }
}

#[derive(Default)]
struct State {
    serial_config: Vec<api::SerialPort>,
    serial: Vec<(api::SerialPort, JoinHandle<()>)>,
    streams: Vec<(api::StreamSession, JoinHandle<()>)>,
    displays: Vec<api::DisplaySession>,
    analytics: Vec<(api::AnalyticsSession, JoinHandle<()>)>,
    ptz_setup: Vec<api::PtzSetup>,
    records: Vec<(api::RecordSession, Instant, chrono::NaiveDateTime)>,
    recordings: Vec<Recording>,
    playbacks: Vec<Playback>,
    next_id: u32,
    /// Event GUIDs sent and whether acknowledged.
    events: Vec<(String, bool)>,
}

/// One simulated unit, shared by its connections.
pub struct Unit {
    pub cfg: CvipConfig,
    pub hub: Arc<Hub>,
    reg: Mutex<Registry>,
    st: Mutex<State>,
    ptz: Mutex<Ptz>,
    fw: Mutex<Option<Firmware>>,
    /// Length and FNV-1a of the last image flashed.
    last_image: Mutex<Option<(u64, u64)>>,
    master: Mutex<master::Master>,
    booted: Mutex<Instant>,
    rebooted: AtomicBool,
    pub cvip_port: Mutex<u16>,
}

fn now_naive() -> chrono::NaiveDateTime {
    chrono::Utc::now().naive_utc().with_nanosecond(0).unwrap_or_else(|| chrono::Utc::now().naive_utc())
}

use chrono::Timelike;

/// Reads `YYYYMMDDHHMMSS`, `YYYY-MM-DD HH:MM:SS` or ISO 8601.
pub fn parse_time(s: &str) -> Option<chrono::NaiveDateTime> {
    let s = s.trim();
    for f in ["%Y%m%d%H%M%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y%m%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t);
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0))
}

pub fn fmt_compact(t: chrono::NaiveDateTime) -> String {
    t.format("%Y%m%d%H%M%S").to_string()
}

fn ro(id: &str, name: &str, v: impl Into<Value>) -> Property {
    Property::ro(id, name, v)
}

fn rw(id: &str, name: &str, v: impl Into<Value>, val: Validation) -> Property {
    Property::rw(id, name, v, val)
}

const IP_RE: &str = r"((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])";
const HOST_RE: &str = r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62})?";

fn registry(cfg: &CvipConfig) -> Registry {
    let mut services = Vec::new();
    let mut s = Service::new("cvip", "CVIP protocol");
    s.properties.push(rw(
        "cvipPort",
        "CVIP port (applies after a reboot)",
        7110u32,
        Validation::range(1.0, 65535.0, 1.0),
    ));
    services.push(s);

    let mut s = Service::new("cviUnit", "Unit information");
    let product = match cfg.role {
        Role::Device => "IVR-SIM-ENC",
        Role::Nvr => "IVR-SIM-NVR",
        Role::Master => "IVR-SIM-MS",
    };
    s.properties = vec![
        ro("unitProductName", "Product name", product),
        ro("unitCompanyName", "Company", "ivr"),
        ro("unitMarketingName", "Marketing name", cfg.name.as_str()),
        ro("unitFirmwareVersion", "Firmware version", "2.1.9"),
        ro("unitOsVersion", "OS version", "Linux 4.9"),
        ro("unitCpldVersion", "CPLD version", "1.2"),
        ro("unitBoardVersion", "Board version", "B"),
        ro("unitUpTime", "Up time", 0u32).units("s"),
        ro("unitTemperature", "Temperature", 41u32).units("°C"),
        ro("unitFreeMemory", "Free memory", 65536u32).units("KiB"),
        rw("unitCvipName", "CVIP name", cfg.name.as_str(), Validation::Regexp(".{1,64}".into())),
        rw("unitSaveConfig", "Save configuration", 0u32, Validation::range(0.0, 1.0, 1.0)),
        rw("unitSaveConfigMask", "Save configuration mask", 0xffu32, Validation::range(0.0, 255.0, 1.0)),
        rw("unitLoadDefaultConfig", "Load default configuration", 0u32, Validation::range(0.0, 1.0, 1.0)),
        rw("unitLoadDefaultConfigMask", "Load default configuration mask", 0xffu32, Validation::range(0.0, 255.0, 1.0)),
        rw("unitVideoStandard", "Video standard", "PAL", Validation::list(&["PAL", "NTSC"])),
    ];
    s.events = vec![("KEEP_ALIVE".into(), "Unit alive".into()), ("EXTERNAL".into(), "External alarm input".into())];
    services.push(s);

    let mut s = Service::new("cviNetwork", "Network configuration");
    s.properties = vec![
        rw("unitNetworkName", "Host name", "ivr-sim", Validation::Regexp(HOST_RE.into())),
        rw("networkNtpServer", "NTP server", "pool.ntp.org", Validation::Regexp(HOST_RE.into())),
        rw("unitDomainName", "Domain", "local", Validation::Regexp(HOST_RE.into())),
        rw("networkDnsServer1", "DNS server 1", "192.168.1.1", Validation::Regexp(IP_RE.into())),
        rw("networkDnsServer2", "DNS server 2", "8.8.8.8", Validation::Regexp(IP_RE.into())),
        rw("networkGateway", "Gateway", "192.168.1.1", Validation::Regexp(IP_RE.into())),
    ];
    services.push(s);
    for (i, ip) in [(1, "192.168.1.10"), (2, "10.0.0.10")] {
        let mut s = Service::new(&format!("cviNetwork.{i}"), &format!("Network port {i}"));
        s.properties = vec![
            rw("networkIpAddress", "IP address", ip, Validation::Regexp(IP_RE.into())),
            rw("networkSubnetMask", "Subnet mask", "255.255.255.0", Validation::Regexp(IP_RE.into())),
            rw("networkOnBoot", "Bring up at boot", 1u32, Validation::range(0.0, 1.0, 1.0)),
            rw("networkUseDhcp", "DHCP", 0u32, Validation::range(0.0, 1.0, 1.0)),
            rw("networkPeerNtp", "NTP from DHCP", 0u32, Validation::range(0.0, 1.0, 1.0))
                .when("networkUseDhcp", Validation::range(1.0, 1.0, 0.0)),
            rw("networkPeerDns", "DNS from DHCP", 0u32, Validation::range(0.0, 1.0, 1.0))
                .when("networkUseDhcp", Validation::range(1.0, 1.0, 0.0)),
        ];
        services.push(s);
    }

    let mut groups = vec![("cviUnit".to_string(), "Unit Events".to_string())];
    if cfg.role != Role::Master {
        groups.push(("cviVideo".into(), "Video Events".into()));
        groups.push(("cviMotionDetection".into(), "Motion Events".into()));
        for n in 1..=cfg.channels {
            let mut s = Service::new(&format!("cviVideo.{n:02}"), &format!("Video input {n:02}"));
            s.properties = vec![
                rw("videoInputState", "Input enabled", 1u32, Validation::range(0.0, 1.0, 1.0)),
                rw("videoObstructionDetEnable", "Obstruction detection", 0u32, Validation::range(0.0, 1.0, 1.0)),
                rw(
                    "videoObstructionDetSensitivity",
                    "Obstruction sensitivity",
                    5u32,
                    Validation::range(1.0, 10.0, 1.0),
                )
                .when("videoObstructionDetEnable", Validation::range(1.0, 1.0, 0.0)),
                rw("videoInputName", "Input name", format!("Camera {n:02}"), Validation::Regexp(".{1,32}".into())),
                rw("videoInputBrightness", "Brightness", 128u32, Validation::range(0.0, 255.0, 1.0)),
                rw("videoInputContrast", "Contrast", 128u32, Validation::range(0.0, 255.0, 1.0)),
                rw("videoInputSaturation", "Saturation", 128u32, Validation::range(0.0, 255.0, 1.0)),
                rw("videoInputHue", "Hue", 0i32, Validation::range(-128.0, 127.0, 1.0)),
            ];
            s.events = vec![
                ("FRAME_SKIP".into(), "Video Frame skipped".into()),
                ("VIDEO_LOST".into(), "Lost Video signal".into()),
            ];
            services.push(s);
            for m in 1..=2 {
                let (res, rate, bits) = if m == 1 { ("2592x1944", 25u32, 4096u32) } else { ("640x360", 25, 512) };
                let mut s = Service::new(&format!("cviVideo.{n:02}.{m}"), &format!("Video input {n:02} encoder {m}"));
                s.properties = vec![
                    rw("videoEncoderState", "Encoder enabled", 1u32, Validation::range(0.0, 1.0, 1.0)),
                    rw(
                        "videoEncoderResolution",
                        "Resolution",
                        res,
                        Validation::list(&["2592x1944", "1920x1080", "1280x720", "640x360", "352x288"]),
                    ),
                    rw("videoEncoderSkipRate", "Skip rate", 0u32, Validation::range(0.0, 24.0, 1.0)),
                    rw("videoEncoderFrameRate", "Frame rate", rate, Validation::range(1.0, 30.0, 1.0)).units("fps"),
                    rw("videoEncoderQuantizerMin", "Quantizer min", 10u32, Validation::range(1.0, 51.0, 1.0)),
                    rw("videoEncoderQuantizerMax", "Quantizer max", 40u32, Validation::range(1.0, 51.0, 1.0)),
                    rw("videoEncoderIntraInterval", "Intra interval", 25u32, Validation::range(1.0, 300.0, 1.0))
                        .units("frames"),
                    rw(
                        "videoEncoderCompression",
                        "Compression",
                        if cfg.codec == ClipCodec::H264 { "H264" } else { "H265" },
                        Validation::list(&["H264", "H265", "MP4V"]),
                    ),
                    rw("videoEncoderRateControl", "Rate control", "CBR", Validation::list(&["CBR", "VBR"])),
                    rw("videoEncoderMaxBitRate", "Max bit rate", bits * 2, Validation::range(64.0, 16384.0, 64.0))
                        .units("kbit/s"),
                    rw("videoEncoderTargetBitRate", "Target bit rate", bits, Validation::range(64.0, 16384.0, 64.0))
                        .units("kbit/s"),
                ];
                services.push(s);
            }
            let mut s = Service::new(&format!("cviMotionDetection.{n}"), &format!("Motion detection {n}"));
            s.properties = vec![
                rw("motiondetectionEnable", "Enabled", 1u32, Validation::range(0.0, 1.0, 1.0)),
                rw("motiondetectionSensitivity", "Sensitivity", 50u32, Validation::range(0.0, 100.0, 1.0)),
                rw("motiondetectionSizeBlock", "Block size", 16u32, Validation::list(&["8", "16", "32"]))
                    .units("pixels"),
                rw("motiondetectionSizeMin", "Minimum size", 4u32, Validation::range(1.0, 100.0, 1.0)).units("blocks"),
                rw("motiondetectionRatioCar", "Car ratio", 30u32, Validation::range(0.0, 100.0, 1.0)).units("%"),
                rw("motiondetectionRatioHuman", "Human ratio", 30u32, Validation::range(0.0, 100.0, 1.0)).units("%"),
                rw(
                    "motiondetectionStringRMA",
                    "Region mask",
                    "FFFFFFFF",
                    Validation::Regexp("[0-9A-Fa-f]{1,256}".into()),
                ),
            ];
            s.events = vec![("MOTION".into(), "Motion detected".into())];
            services.push(s);
        }
        let int = || Value::Int(0);
        let st = || Value::Str(String::new());
        let mut f = Service::new("cviStream", "Streaming");
        f.functions = vec![
            Function::new(
                "create",
                vec![
                    ParamDesc::new("GUID", "Client GUID", st(), true),
                    ParamDesc::new("major", "Video input", int(), true).valid(Validation::range(
                        1.0,
                        cfg.channels as f64,
                        1.0,
                    )),
                    ParamDesc::new("minor", "Encoder", int(), true).valid(Validation::range(1.0, 2.0, 1.0)),
                    ParamDesc::new("persistent", "Restart after reboot", Value::Bool(false), false),
                    ParamDesc::new("destIp", "Destination IP", st(), true).valid(Validation::Regexp(IP_RE.into())),
                    ParamDesc::new("destPort", "Destination port", int(), true)
                        .valid(Validation::range(1.0, 65535.0, 1.0)),
                    ParamDesc::new("destTransport", "Transport", st(), false)
                        .valid(Validation::list(&["udp", "tcp", "raw"])),
                ],
                vec![
                    ParamDesc::new("GUID", "Client GUID", st(), true),
                    ParamDesc::new("StreamID", "Stream id", int(), true),
                    ParamDesc::new("MediaType", "Media type", int(), true),
                ],
            ),
            Function::new("delete", vec![ParamDesc::new("StreamID", "Stream id", int(), true)], vec![]),
            Function::new("list", vec![ParamDesc::new("GUID", "Client GUID", st(), false)], vec![]),
        ];
        services.push(f);
        for (id, name, fns) in [
            ("cviSerialPort", "Serial port piping", &["setProperties", "create", "delete", "list"][..]),
            ("cviDisplay", "Display", &["create", "delete", "list"][..]),
            ("cviAnalytics", "Analytics", &["create", "delete", "list"][..]),
            ("cviPtz", "PTZ", &["setProperties", "cmd"][..]),
            ("cviEvent", "Events", &["subscribe", "unsubscribe", "trigger"][..]),
            ("cviUpdateFirmware", "Firmware update", &["startFirmwareUpdate", "getProgressInfo"][..]),
        ] {
            let mut s = Service::new(id, name);
            s.functions = fns.iter().map(|f| Function::new(f, vec![], vec![])).collect();
            if id == "cviPtz" {
                s.properties = vec![
                    ro("panPosition", "Pan position", 0.0).units("degrees"),
                    ro("tiltPosition", "Tilt position", 0.0).units("degrees"),
                    ro("zoomPosition", "Zoom", 1.0).units("x"),
                ];
            }
            services.push(s);
        }
        if cfg.role == Role::Nvr {
            for (id, name, fns) in [
                ("cviRecord", "Recording", &["create", "delete", "list", "update"][..]),
                (
                    "cviPlayback",
                    "Playback",
                    &["create", "delete", "list", "setstate", "seek", "getlength", "getstatus", "queryevents"][..],
                ),
                ("cviMedia", "Recorded media", &["query", "export"][..]),
            ] {
                let mut s = Service::new(id, name);
                s.functions = fns.iter().map(|f| Function::new(f, vec![], vec![])).collect();
                services.push(s);
            }
            let mut s = Service::new("cviNvr", "Browse recorded media");
            let mut q = Function::new(
                "queryClip",
                vec![
                    ParamDesc::new("mediaType", "Type of media", Value::Int(0), true)
                        .valid(Validation::list(&["Video", "Audio", "Motion"])),
                    ParamDesc::new("major", "Input of media", Value::Int(0), true).valid(Validation::range(
                        1.0,
                        cfg.channels as f64,
                        1.0,
                    )),
                ],
                vec![
                    ParamDesc::new("mediaType", "Type of media", Value::Int(0), true),
                    ParamDesc::new("clipTime", "Clip Timestamp", Value::DateTime(String::new()), true),
                ],
            );
            q.multi_answer = true;
            s.functions = vec![q];
            services.push(s);
        }
    } else {
        for (id, name, fns) in [
            (
                "cviUser",
                "Manage User service",
                &[
                    "login",
                    "logout",
                    "listgroups",
                    "addgroup",
                    "updategroup",
                    "deletegroup",
                    "listusers",
                    "adduser",
                    "updateuser",
                    "deleteuser",
                    "mount",
                    "unmount",
                ][..],
            ),
            (
                "cviEntity",
                "Manage entities",
                &[
                    "listgroups",
                    "addgroup",
                    "updategroup",
                    "deletegroup",
                    "query",
                    "list",
                    "add",
                    "update",
                    "delete",
                    "listservices",
                    "updateservices",
                ][..],
            ),
            ("cviProfile", "Manage device profiles", &["list", "add", "update", "delete"][..]),
            ("cviApplication", "Manage applications", &["list", "add", "update", "delete"][..]),
            ("cviEvent", "Event acknowledgement", &["ack", "subscribe", "unsubscribe"][..]),
        ] {
            let mut s = Service::new(id, name);
            s.functions = fns.iter().map(|f| Function::new(f, vec![], vec![])).collect();
            services.push(s);
        }
    }
    Registry {
        unit_id: product.into(),
        unit_name: cfg.name.clone(),
        version: "2.1.9".into(),
        services,
        event_groups: groups,
    }
}

fn need<T>(v: Option<T>, method: &str, field: &str) -> Result<T, Refusal> {
    v.ok_or_else(|| Refusal::invalid(format!("{method}: missing or unusable {field}")))
}

fn dest_addr(ip: &str, port: u32, method: &str) -> Result<SocketAddr, Refusal> {
    let ip: std::net::IpAddr =
        ip.trim().parse().map_err(|_| Refusal::invalid(format!("{method}: destIp {ip:?} is not an IP address")))?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Refusal::invalid(format!("{method}: destPort {port} is not 1–65535")))?;
    Ok(SocketAddr::new(ip, port))
}

impl Unit {
    pub fn new(cfg: CvipConfig) -> Arc<Unit> {
        let reg = registry(&cfg);
        let mut st = State { next_id: 1, ..State::default() };
        if cfg.role == Role::Nvr {
            // History: one-minute recordings per channel, with motion on
            // every 5th and video loss on every 7th.
            let end = now_naive() - chrono::Duration::seconds(now_naive().second() as i64);
            let n = cfg.history_hours * 60;
            for ch in 1..=cfg.channels {
                for k in 0..n {
                    let start = end - chrono::Duration::minutes((n - k) as i64);
                    let mut events = 0;
                    if k % 5 == 0 {
                        events |= event_type::MOTION;
                    }
                    if k % 7 == 0 {
                        events |= event_type::VIDEO_LOSS;
                    }
                    st.recordings.push(Recording {
                        clip_id: st.next_id,
                        channel: ch,
                        start,
                        frames: CLIP_SECS as u64 * 25,
                        events,
                    });
                    st.next_id += 1;
                }
            }
        }
        let m = master::Master::new(&cfg.admin_user, &cfg.admin_password);
        Arc::new(Unit {
            reg: Mutex::new(reg),
            st: Mutex::new(st),
            ptz: Mutex::new(Ptz {
                pos: PtzPosition { pan: 0.0, tilt: 0.0, zoom: 1.0 },
                motion: None,
                presets: Default::default(),
            }),
            fw: Mutex::new(None),
            last_image: Mutex::new(None),
            master: Mutex::new(m),
            booted: Mutex::new(Instant::now()),
            rebooted: AtomicBool::new(true),
            cvip_port: Mutex::new(7110),
            hub: Arc::new(Hub::default()),
            cfg,
        })
    }

    fn clip(&self) -> &'static Clip {
        clip(self.cfg.codec, false)
    }

    pub fn ptz_position(&self) -> PtzPosition {
        let mut p = self.ptz.lock().unwrap();
        p.settle();
        p.pos
    }

    pub fn recordings(&self) -> Vec<Recording> {
        self.st.lock().unwrap().recordings.clone()
    }

    /// Length and FNV-1a of the last firmware image flashed.
    pub fn last_firmware_image(&self) -> Option<(u64, u64)> {
        *self.last_image.lock().unwrap()
    }

    pub fn firmware_version(&self) -> String {
        self.prop("cviUnit", "unitFirmwareVersion").map(|v| v.to_text()).unwrap_or_default()
    }

    fn prop(&self, svc: &str, id: &str) -> Option<Value> {
        self.reg.lock().unwrap().service(svc)?.prop(id).map(|p| p.value.clone())
    }

    /// Raises (info 1) or clears (0) an event on a channel and pushes it to
    /// the subscribers; returns how many got it.
    pub fn raise(&self, ty: u32, channel: u32, on: bool) -> usize {
        let guid = master::new_guid(ty as u64 * 1000 + channel as u64);
        let n = api::Notify {
            event_type: ty,
            id: channel,
            time: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
            event_guid: guid.clone(),
            info: on as u32,
        };
        {
            let mut st = self.st.lock().unwrap();
            st.events.push((guid, false));
            if st.events.len() > 1000 {
                st.events.remove(0);
            }
            // An NVR marks the recording in progress.
            if on {
                if let Some(r) = st.recordings.iter_mut().rev().find(|r| r.channel == channel || channel == 0) {
                    r.events |= ty;
                }
            }
        }
        self.hub.notify(ty, channel, "cviEvent.notify", vec![n.into()])
    }

    async fn stream_create(self: &Arc<Self>, method: &str, s: Struct) -> Reply {
        let mut r = api::StreamSession::from_struct(&s);
        let channels = self.cfg.channels;
        if r.major == 0 || r.major > channels {
            return Err(Refusal::fail(format!("{method}: major {} is not an input (1–{channels})", r.major)));
        }
        if !(1..=2).contains(&r.minor) {
            return Err(Refusal::fail(format!("{method}: minor {} is not an encoder (1–2)", r.minor)));
        }
        let transport = Transport::parse(&r.dest_transport).ok_or_else(|| {
            Refusal::invalid(format!("{method}: destTransport {:?} is not udp, tcp or raw", r.dest_transport))
        })?;
        let dest = dest_addr(&r.dest_ip, r.dest_port, method)?;
        let mut st = self.st.lock().unwrap();
        if st.streams.len() >= self.cfg.session_limit {
            return Err(Refusal::busy(format!("{method}: the limit of {} streams is reached", self.cfg.session_limit)));
        }
        r.stream_id = st.next_id;
        st.next_id += 1;
        r.media_type = api::MediaType::H264.code();
        let clip = clip(self.cfg.codec, r.minor == 1);
        let id = r.stream_id;
        let me = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = media::send(clip, dest, transport, 0, None, 1.0).await {
                tracing::info!(stream = id, %dest, "stream ended: {e}");
                me.st.lock().unwrap().streams.retain(|(s, _)| s.stream_id != id);
            }
        });
        st.streams.push((r.clone(), task));
        let mut out = ack_ok();
        if let Value::Struct(o) = &mut out {
            o.push("GUID", r.guid.as_str());
            o.push("StreamID", r.stream_id);
            o.push("MediaType", r.media_type);
        }
        Ok(out)
    }

    fn analytics_create(self: &Arc<Self>, method: &str, s: Struct) -> Reply {
        let r = api::AnalyticsSession::from_struct(&s);
        if r.major == 0 || r.major > self.cfg.channels {
            return Err(Refusal::fail(format!("{method}: major {} is not an input", r.major)));
        }
        let dest = dest_addr(&r.dest_ip, r.dest_port, method)?;
        let mut st = self.st.lock().unwrap();
        if st.analytics.len() >= self.cfg.session_limit {
            return Err(Refusal::busy(format!(
                "{method}: the limit of {} analytics sessions is reached",
                self.cfg.session_limit
            )));
        }
        if st.analytics.iter().any(|(a, _)| {
            a.major == r.major && a.minor == r.minor && a.dest_ip == r.dest_ip && a.dest_port == r.dest_port
        }) {
            return Err(Refusal::fail(format!("{method}: that analytics session exists")));
        }
        let guid = cvip::ping::guid_string(&self.cfg.guid);
        let task = tokio::spawn(analytics_stream(dest, guid));
        st.analytics.push((r, task));
        Ok(ack_ok())
    }

    fn ptz_cmd(&self, method: &str, params: &[Value]) -> Reply {
        let f = fields(params, &["GUID", "PtzID", "PhyAddr", "UserPriority", "CmdType", "CmdData"]);
        let c = api::PtzCommand::from_struct(&f);
        if f.get("CmdType").is_none() {
            return Err(Refusal::invalid(format!("{method}: missing CmdType")));
        }
        let setup = self.st.lock().unwrap().ptz_setup.clone();
        if !setup.is_empty() && !setup.iter().any(|p| p.ptz_id == c.ptz_id) {
            return Err(Refusal::fail(format!(
                "{method}: PTZ port {} is not configured (cviPtz.setProperties)",
                c.ptz_id
            )));
        }
        let d = c.cmd_data;
        let speed = d.unsigned_abs() as f64;
        let ty = PtzCmdType::from_code(c.cmd_type);
        let needs_data = !matches!(ty, PtzCmdType::Stop);
        if needs_data && !(1..=16).contains(&d.unsigned_abs()) {
            return Err(Refusal::fail(format!("{method}: CmdData {d} is not ±1–16")));
        }
        let sign = d.signum() as f64;
        let mut p = self.ptz.lock().unwrap();
        p.settle();
        // Degrees per second per speed step; zoom steps per second.
        let v = speed * 5.0 * sign;
        match ty {
            PtzCmdType::Stop => p.motion = None,
            PtzCmdType::Pan => p.motion = Some(((v, 0.0, 0.0), Instant::now())),
            PtzCmdType::Tilt => p.motion = Some(((0.0, v, 0.0), Instant::now())),
            PtzCmdType::Zoom => p.motion = Some(((0.0, 0.0, speed * 0.5 * sign), Instant::now())),
            PtzCmdType::LeftUpRightDown => p.motion = Some(((-v, v, 0.0), Instant::now())),
            PtzCmdType::RightUpLeftDown => p.motion = Some(((v, v, 0.0), Instant::now())),
            PtzCmdType::SetPreset => {
                let pos = p.pos;
                p.presets.insert(d.unsigned_abs(), pos);
            }
            PtzCmdType::GotoPreset => {
                let Some(pos) = p.presets.get(&d.unsigned_abs()).copied() else {
                    return Err(Refusal::fail(format!("{method}: preset {} is not set", d.unsigned_abs())));
                };
                p.motion = None;
                p.pos = pos;
            }
            PtzCmdType::Other(x) => return Err(Refusal::fail(format!("{method}: CmdType {x} is not 0–7"))),
        }
        Ok(ack_ok())
    }

    fn media_query(&self, method: &str, s: &Struct) -> Reply {
        let q = api::MediaQuery::from_struct(s);
        let from =
            if q.start_date.is_empty() { None } else { Some(need(parse_time(&q.start_date), method, "startDate")?) };
        let to = if q.end_date.is_empty() { None } else { Some(need(parse_time(&q.end_date), method, "endDate")?) };
        let st = self.st.lock().unwrap();
        let hits: Vec<&Recording> = st
            .recordings
            .iter()
            .filter(|r| q.major == 0 || r.channel == q.major)
            .filter(|r| from.is_none_or(|f| r.end() > f) && to.is_none_or(|t| r.start < t))
            .filter(|r| q.event_type == 0 || r.events & q.event_type != 0)
            .collect();
        let page = q.page as usize;
        let items: Vec<Value> = hits
            .iter()
            .skip(page.saturating_mul(MEDIA_PAGE))
            .take(MEDIA_PAGE)
            .map(|r| {
                api::Clip {
                    guid: q.guid.clone(),
                    clip_id: r.clip_id,
                    clip_type: api::MediaType::H264.code(),
                    clip_time: fmt_compact(r.start),
                    size: media::recording_size(self.clip(), r.frames) as u32,
                }
                .to_struct()
                .with("Major", r.channel)
                .with("EndTime", fmt_compact(r.end()))
                .with("EventType", r.events)
                .into()
            })
            .collect();
        Ok(Struct::new()
            .with("GUID", q.guid.as_str())
            .with("IsLastPage", page.saturating_add(1).saturating_mul(MEDIA_PAGE) >= hits.len())
            .with("Total", hits.len() as u32)
            .with("Items", Value::Array(items))
            .into())
    }

    fn media_export(self: &Arc<Self>, method: &str, s: &Struct) -> Reply {
        let e = api::Export::from_struct(s);
        let rec = self.st.lock().unwrap().recordings.iter().find(|r| r.clip_id == e.clip_id).cloned();
        let rec = rec.ok_or_else(|| Refusal::fail(format!("{method}: no clip {}", e.clip_id)))?;
        let dest = dest_addr(&e.server_ip, e.server_port, method)?;
        if e.authentication_id.is_empty() {
            return Err(Refusal::invalid(format!("{method}: missing authenticationId")));
        }
        let clip = self.clip();
        tokio::spawn(async move {
            let bytes = media::recording_bytes(clip, rec.frames);
            let r = async {
                let s = tokio::net::TcpStream::connect(dest).await?;
                cvip::data::send(s, &e.authentication_id, &bytes[..], |_| {}).await.map_err(std::io::Error::other)
            };
            match r.await {
                Ok(n) => tracing::info!(clip = rec.clip_id, %dest, "exported {n} bytes"),
                Err(e) => tracing::warn!(clip = rec.clip_id, %dest, "export failed: {e}"),
            }
        });
        Ok(ack_ok())
    }

    fn playback_create(&self, method: &str, s: &Struct) -> Reply {
        let mut p = api::PlaybackSession::from_struct(s);
        let start = need(parse_time(&p.start_time), method, "StartTime (YYYYMMDDHHMMSS)")?;
        let end = need(parse_time(&p.end_time), method, "EndTime (YYYYMMDDHHMMSS)")?;
        if end <= start {
            return Err(Refusal::fail(format!("{method}: EndTime is not after StartTime")));
        }
        let mut st = self.st.lock().unwrap();
        if st.playbacks.len() >= self.cfg.session_limit {
            return Err(Refusal::busy(format!(
                "{method}: the limit of {} playbacks is reached",
                self.cfg.session_limit
            )));
        }
        // Frames recorded on that channel inside the range.
        let length: u64 = st
            .recordings
            .iter()
            .filter(|r| (p.major == 0 || r.channel == p.major) && r.end() > start && r.start < end)
            .map(|r| {
                let a = r.start.max(start);
                let b = r.end().min(end);
                ((b - a).num_milliseconds().max(0) as u64) * 25 / 1000
            })
            .sum();
        if length == 0 {
            return Err(Refusal::fail(format!("{method}: nothing recorded on channel {} in that range", p.major)));
        }
        let dest = if p.dest_port == 0 {
            None
        } else {
            let t = Transport::parse(&p.dest_transport).ok_or_else(|| {
                Refusal::invalid(format!("{method}: destTransport {:?} is not udp, tcp or raw", p.dest_transport))
            })?;
            Some((dest_addr(&p.dest_ip, p.dest_port, method)?, t))
        };
        p.playback_id = st.next_id;
        st.next_id += 1;
        p.media_type = api::MediaType::H264.code();
        st.playbacks.push(Playback {
            s: p.clone(),
            state: PlayState::Pause,
            speed: 1,
            pos: 0,
            since: Instant::now(),
            length,
            dest,
            sender: None,
        });
        let mut out = ack_ok();
        if let Value::Struct(o) = &mut out {
            o.push("GUID", p.guid.as_str());
            o.push("PlaybackID", p.playback_id);
            o.push("MediaType", p.media_type);
        }
        Ok(out)
    }

    fn playback_call(&self, op: &str, method: &str, s: &Struct) -> Reply {
        if op == "queryevents" || op == "getstatus" && s.get("EventType").is_some() {
            let mask = s.int("EventType").unwrap_or(0) as u32;
            let major = s.int("MajorID").or_else(|| s.int("Major")).unwrap_or(0) as u32;
            let from = need(parse_time(&s.str("StartTime").unwrap_or_default()), method, "StartTime")?;
            let to = need(parse_time(&s.str("EndTime").unwrap_or_default()), method, "EndTime")?;
            let st = self.st.lock().unwrap();
            let items = st
                .recordings
                .iter()
                .filter(|r| {
                    (major == 0 || r.channel == major) && r.events & mask != 0 && r.end() > from && r.start < to
                })
                .map(|r| {
                    api::EventSpan {
                        start_time: fmt_compact(r.start),
                        end_time: fmt_compact(r.end()),
                        event_type: r.events & mask,
                    }
                    .into()
                })
                .collect();
            return Ok(Value::Array(items));
        }
        let id = need(s.int("PlaybackID"), method, "PlaybackID")? as u32;
        let clip = self.clip();
        let mut st = self.st.lock().unwrap();
        let Some(i) = st.playbacks.iter().position(|p| p.s.playback_id == id) else {
            return Err(Refusal::fail(format!("{method}: no playback {id}")));
        };
        let p = &mut st.playbacks[i];
        match op {
            "delete" => {
                st.playbacks.remove(i);
                Ok(ack_ok())
            }
            "setstate" => {
                let state = PlayState::from_code(need(s.int("State"), method, "State")? as u32);
                if let PlayState::Other(x) = state {
                    return Err(Refusal::fail(format!("{method}: State {x} is not a play state")));
                }
                let speed = s.int("Speed").unwrap_or(1);
                if !(1..=16).contains(&speed) {
                    return Err(Refusal::fail(format!("{method}: Speed {speed} is not 1–16")));
                }
                let mut pos = p.position();
                match state {
                    PlayState::Stop => pos = 0,
                    PlayState::StepForward => pos = (pos + 1).min(p.length),
                    PlayState::StepBackward => pos = pos.saturating_sub(1),
                    _ => {}
                }
                p.pos = pos;
                p.since = Instant::now();
                p.state = match state {
                    PlayState::StepForward | PlayState::StepBackward => PlayState::Pause,
                    s => s,
                };
                p.speed = speed as u32;
                p.resend(clip);
                Ok(ack_ok())
            }
            "seek" => {
                let pos = need(s.int("Position"), method, "Position")?;
                if pos < 0 || pos as u64 > p.length {
                    return Err(Refusal::fail(format!("{method}: Position {pos} is outside 0–{}", p.length)));
                }
                p.pos = pos as u64;
                p.since = Instant::now();
                p.resend(clip);
                Ok(ack_ok())
            }
            "getlength" => {
                Ok(Struct::new().with("ErrorCode", cvip::ack::SUCCESS as i32).with("Length", p.length as u32).into())
            }
            "getstatus" => Ok(Struct::new()
                .with("ErrorCode", cvip::ack::SUCCESS as i32)
                .with("State", p.state.code())
                .with("Speed", p.speed)
                .with("Position", p.position() as u32)
                .into()),
            _ => Err(Refusal::invalid(format!("no method {method}"))),
        }
    }

    fn record_call(&self, op: &str, method: &str, s: &Struct) -> Reply {
        let r = api::RecordSession::from_struct(s);
        let mut st = self.st.lock().unwrap();
        let find = |st: &State| st.records.iter().position(|(x, _, _)| x.major == r.major && x.minor == r.minor);
        match op {
            "list" => {
                let now = now_naive();
                Ok(Value::Array(
                    st.records
                        .iter()
                        .map(|(x, _, _)| {
                            let mut v = x.to_struct();
                            v.push("Recording", in_schedule(x.schedule_profile_id, now));
                            v.into()
                        })
                        .collect(),
                ))
            }
            "create" => {
                if r.major == 0 || r.major > self.cfg.channels {
                    return Err(Refusal::fail(format!(
                        "{method}: major {} is not a channel (1–{})",
                        r.major, self.cfg.channels
                    )));
                }
                if find(&st).is_some() {
                    return Err(Refusal::fail(format!(
                        "{method}: channel {}/{} is already recording",
                        r.major, r.minor
                    )));
                }
                if st.records.len() >= self.cfg.session_limit {
                    return Err(Refusal::busy(format!(
                        "{method}: the limit of {} recordings is reached",
                        self.cfg.session_limit
                    )));
                }
                if r.schedule_profile_id > 2 {
                    return Err(Refusal::fail(format!(
                        "{method}: no schedule profile {} (0 always, 1 business hours, 2 nights)",
                        r.schedule_profile_id
                    )));
                }
                st.records.push((r, Instant::now(), now_naive()));
                Ok(ack_ok())
            }
            "update" => {
                let i = find(&st).ok_or_else(|| {
                    Refusal::fail(format!("{method}: channel {}/{} is not recording", r.major, r.minor))
                })?;
                if r.schedule_profile_id > 2 {
                    return Err(Refusal::fail(format!("{method}: no schedule profile {}", r.schedule_profile_id)));
                }
                let (x, _, _) = &mut st.records[i];
                x.schedule_profile_id = r.schedule_profile_id;
                x.persistent = r.persistent;
                if !r.src_ip.is_empty() {
                    x.src_ip = r.src_ip.clone();
                    x.src_port = r.src_port;
                    x.src_transport = r.src_transport.clone();
                }
                Ok(ack_ok())
            }
            "delete" => {
                let i = find(&st).ok_or_else(|| {
                    Refusal::fail(format!("{method}: channel {}/{} is not recording", r.major, r.minor))
                })?;
                let (x, since, start) = st.records.remove(i);
                // What the session recorded (inside its schedule, as it is
                // now) is stored as one clip.
                let frames = if x.schedule_profile_id == 0 {
                    (since.elapsed().as_millis() as u64 * 25 / 1000).max(1)
                } else {
                    scheduled_secs(x.schedule_profile_id, start, now_naive()) * 25
                };
                if frames == 0 {
                    return Ok(Struct::new()
                        .with("ErrorCode", cvip::ack::SUCCESS as i32)
                        .with("ClipID", 0u32)
                        .with("Frames", 0u32)
                        .into());
                }
                let id = st.next_id;
                st.next_id += 1;
                st.recordings.push(Recording { clip_id: id, channel: x.major, start, frames, events: 0 });
                Ok(Struct::new()
                    .with("ErrorCode", cvip::ack::SUCCESS as i32)
                    .with("ClipID", id)
                    .with("Frames", frames as u32)
                    .into())
            }
            _ => Err(Refusal::invalid(format!("no method {method}"))),
        }
    }

    fn firmware_start(&self, method: &str, params: &[Value]) -> Reply {
        let s = fields(params, &["imageFileId", "authenticationId", "imageSize"]);
        let image = need(s.str("imageFileId").filter(|v| !v.trim().is_empty()), method, "imageFileId")?;
        let auth = need(s.str("authenticationId").filter(|v| !v.trim().is_empty()), method, "authenticationId")?;
        let mut fw = self.fw.lock().unwrap();
        if fw.as_ref().is_some_and(|f| matches!(f.state, "FWUPDRECEIVING" | "FWUPDFLASHING")) {
            return Err(Refusal::busy(format!("{method}: an update is already running")));
        }
        *fw = Some(Firmware {
            auth,
            image: image.trim().trim_matches('"').trim().to_string(),
            state: "FWUPDWAITING",
            status: "FWUPD_STATUS_OK",
            bytes: 0,
            total: s.int("imageSize").unwrap_or(0).max(0) as u64,
        });
        Ok(ack_ok())
    }

    fn firmware_progress(&self) -> Reply {
        let fw = self.fw.lock().unwrap();
        let (state, status, b, t) = match &*fw {
            None => ("FWUPDUNINITIALIZED", "FWUPD_STATUS_OK", 0, 0),
            Some(f) => (f.state, f.status, f.bytes, f.total),
        };
        // As in the seed's example: an array holding one struct, numbers as strings.
        Ok(Value::Array(vec![Struct::new()
            .with("state", state)
            .with("status", status)
            .with("bytesProgress", b.to_string())
            .with("totalBytesProgress", t.to_string())
            .into()]))
    }

    /// The image arrives on a data channel; then the unit "flashes" it
    /// (progress counts the bytes written again), takes the version from
    /// the image name or its first line, and reboots: non-persistent
    /// sessions end, the uptime restarts, the next ping says "rebooted".
    async fn firmware_data(
        self: &Arc<Self>,
        auth: String,
        mut r: FramedRead<tokio::net::tcp::OwnedReadHalf, PacketCodec>,
    ) {
        {
            let mut fw = self.fw.lock().unwrap();
            match fw.as_mut() {
                Some(f) if f.auth == auth && f.state == "FWUPDWAITING" => f.state = "FWUPDRECEIVING",
                _ => {
                    tracing::warn!("data channel with unknown authenticationId {auth:?} closed");
                    return;
                }
            }
        }
        let mut image = Vec::new();
        let me = self.clone();
        let res = cvip::data::receive(&mut r, &mut image, |n| {
            if let Some(f) = me.fw.lock().unwrap().as_mut() {
                f.bytes = n;
                f.total = f.total.max(n);
            }
        })
        .await;
        match res {
            Err(e) => {
                if let Some(f) = self.fw.lock().unwrap().as_mut() {
                    f.state = "FWUPDFAILED";
                    f.status = "FWUPD_STATUS_TRANSFER_ERROR";
                }
                tracing::warn!("firmware transfer failed: {e}");
            }
            Ok(n) => {
                let image_name = {
                    let mut fw = self.fw.lock().unwrap();
                    let f = fw.as_mut().unwrap();
                    f.state = "FWUPDFLASHING";
                    f.bytes = 0;
                    f.total = n;
                    f.image.clone()
                };
                let crc = fnv64(&image);
                *self.last_image.lock().unwrap() = Some((n, crc));
                // Flash at ~4 MiB/s in ten steps.
                let step = Duration::from_millis((n / 4096).clamp(10, 2000) / 10);
                for k in 1..=10u64 {
                    tokio::time::sleep(step).await;
                    if let Some(f) = self.fw.lock().unwrap().as_mut() {
                        f.bytes = n * k / 10;
                    }
                }
                let version = version_from(&image_name, &image);
                {
                    let mut reg = self.reg.lock().unwrap();
                    if let Some(p) = reg.service_mut("cviUnit").and_then(|s| s.prop_mut("unitFirmwareVersion")) {
                        p.value = Value::Str(version.clone());
                    }
                }
                tracing::info!(bytes = n, crc, %version, "firmware flashed; rebooting");
                self.reboot();
                if let Some(f) = self.fw.lock().unwrap().as_mut() {
                    f.state = "FWUPDDONE";
                }
            }
        }
    }

    /// Ends every non-persistent session, restarts the uptime and applies
    /// a changed cvipPort (reported by pings; the listener stays).
    pub fn reboot(&self) {
        let mut st = self.st.lock().unwrap();
        st.streams.retain(|(s, t)| {
            if !s.persistent {
                t.abort();
            }
            s.persistent
        });
        st.analytics.retain(|(s, t)| {
            if !s.persistent {
                t.abort();
            }
            s.persistent
        });
        st.displays.retain(|d| d.persistent);
        st.serial.retain(|(s, t)| {
            if !s.persistent {
                t.abort();
            }
            s.persistent
        });
        st.records.retain(|r| r.0.persistent);
        st.playbacks.clear();
        *self.booted.lock().unwrap() = Instant::now();
        self.rebooted.store(true, Ordering::SeqCst);
        if let Some(Value::UInt(p)) = self.prop("cvip", "cvipPort") {
            *self.cvip_port.lock().unwrap() = p as u16;
        }
    }

    fn refresh_live_props(&self) {
        let up = self.booted.lock().unwrap().elapsed().as_secs() as u32;
        let pos = self.ptz_position();
        let mut reg = self.reg.lock().unwrap();
        if let Some(p) = reg.service_mut("cviUnit").and_then(|s| s.prop_mut("unitUpTime")) {
            p.value = Value::UInt(up);
        }
        if let Some(s) = reg.service_mut("cviPtz") {
            for (id, v) in [("panPosition", pos.pan), ("tiltPosition", pos.tilt), ("zoomPosition", pos.zoom)] {
                if let Some(p) = s.prop_mut(id) {
                    p.value = Value::Double((v * 100.0).round() / 100.0);
                }
            }
        }
    }

    async fn dispatch(self: &Arc<Self>, peer: &Peer, method: &str, params: Vec<Value>) -> Reply {
        let lower = method.to_ascii_lowercase();
        if lower.ends_with(".getproperties") || lower.ends_with(".listproperties") {
            self.refresh_live_props();
        }
        // PTZ's setProperties is the pipe configuration, not a property set.
        if lower == "cviptz.setproperties" {
            let s = fields(&params, &["PtzID", "ProtocolType", "UserPriority"]);
            let p = api::PtzSetup::from_struct(&s);
            if s.get("PtzID").is_none() {
                return Err(Refusal::invalid(format!("{method}: missing PtzID")));
            }
            if !(1..=3).contains(&p.protocol) {
                return Err(Refusal::fail(format!(
                    "{method}: ProtocolType {} is not 1 (Pelco P), 2 (Pelco D) or 3 (Panasonic)",
                    p.protocol
                )));
            }
            let mut st = self.st.lock().unwrap();
            st.ptz_setup.retain(|x| x.ptz_id != p.ptz_id);
            st.ptz_setup.push(p);
            return Ok(ack_ok());
        }
        if lower == "cviserialport.setproperties" {
            let p = api::SerialPort::from_struct(&fields(&params, api::SerialPort::FIELDS));
            check_serial(&p, method)?;
            let mut st = self.st.lock().unwrap();
            st.serial_config.retain(|x| x.id != p.id);
            st.serial_config.push(p);
            return Ok(ack_ok());
        }
        let generic = self.reg.lock().unwrap().handle(method, &params);
        if let Some(r) = generic {
            return r.map(|(v, _changes)| v);
        }
        let s = fields(&params, &[]);
        if self.cfg.role == Role::Master {
            if let Some(r) = self.master.lock().unwrap().handle(method, &s) {
                return r;
            }
        }
        let (svc, op) = lower.rsplit_once('.').unwrap_or((lower.as_str(), ""));
        match (svc, op) {
            ("cvievent", "subscribe") | ("cvievent", "unsubscribe") => {
                let mask = need(s.int("Type"), method, "Type")? as u32;
                let ch = s.int("Id").unwrap_or(0) as u32;
                if mask == 0 || mask & !0x3f != 0 {
                    return Err(Refusal::fail(format!(
                        "{method}: Type {mask:#x} is not a mask of event types 0x01–0x20"
                    )));
                }
                if self.cfg.role != Role::Master && ch > self.cfg.channels {
                    return Err(Refusal::fail(format!(
                        "{method}: Id {ch} is not a channel (0 = all, 1–{})",
                        self.cfg.channels
                    )));
                }
                if op == "subscribe" {
                    self.hub.subscribe(peer.conn, mask, ch);
                } else if !self.hub.unsubscribe(peer.conn, mask, ch) {
                    return Err(Refusal::fail(format!("{method}: not subscribed to {}", api::event_mask_names(mask))));
                }
                Ok(ack_ok())
            }
            ("cvievent", "trigger") => {
                // Simulator only: raise an event now.
                let ty = need(s.int("Type"), method, "Type")? as u32;
                let ch = s.int("Id").unwrap_or(1) as u32;
                let on = s.int("info").unwrap_or(1) != 0;
                let n = self.raise(ty, ch, on);
                Ok(Struct::new().with("ErrorCode", cvip::ack::SUCCESS as i32).with("Delivered", n as u32).into())
            }
            ("cvievent", "ack") => {
                let guid = s.str("EventGUID").unwrap_or_default();
                let code = if s.str("AppGUID").unwrap_or_default().is_empty() || guid.is_empty() {
                    cvip::ack::event::INVALID
                } else {
                    let mut st = self.st.lock().unwrap();
                    match st.events.iter_mut().find(|e| e.0 == guid) {
                        Some(e) if !e.1 => {
                            e.1 = true;
                            cvip::ack::event::SUCCESS
                        }
                        _ => cvip::ack::event::FAIL,
                    }
                };
                // The master server also accepts acks for events it relayed
                // but did not raise: those are recorded as acknowledged.
                let code = if self.cfg.role == Role::Master && code == cvip::ack::event::FAIL {
                    let mut st = self.st.lock().unwrap();
                    if st.events.iter().any(|e| e.0 == guid) {
                        code
                    } else {
                        st.events.push((guid, true));
                        cvip::ack::event::SUCCESS
                    }
                } else {
                    code
                };
                Ok(Struct::new().with("AckReturnCode", code as i32).into())
            }
            ("cviupdatefirmware", "startfirmwareupdate") => self.firmware_start(method, &params),
            ("cviupdatefirmware", "getprogressinfo") => self.firmware_progress(),
            _ if self.cfg.role == Role::Master => {
                Err(Refusal::invalid(format!("no method {method} on a master server")))
            }
            ("cvistream", "create") => self.stream_create(method, s).await,
            ("cvistream", "delete") => {
                let id = need(s.int("StreamID"), method, "StreamID")? as u32;
                let mut st = self.st.lock().unwrap();
                let i = st
                    .streams
                    .iter()
                    .position(|(x, _)| x.stream_id == id)
                    .ok_or_else(|| Refusal::fail(format!("{method}: no stream {id}")))?;
                st.streams.remove(i).1.abort();
                Ok(ack_ok())
            }
            ("cvistream", "list") => {
                let guid = s.str("GUID").unwrap_or_default();
                let st = self.st.lock().unwrap();
                Ok(Value::Array(
                    st.streams
                        .iter()
                        .filter(|(x, _)| guid.is_empty() || x.guid == guid)
                        .map(|(x, _)| x.clone().into())
                        .collect(),
                ))
            }
            ("cviserialport", "create") => {
                let mut p = api::SerialPort::from_struct(&s);
                if p.baud_rate == 0 {
                    // Unset fields come from the port's piping configuration.
                    if let Some(c) = self.st.lock().unwrap().serial_config.iter().find(|c| c.id == p.id) {
                        p = api::SerialPort { guid: p.guid.clone(), persistent: p.persistent, ..c.clone() };
                    }
                }
                check_serial(&p, method)?;
                if self.st.lock().unwrap().serial.iter().any(|(x, _)| x.id == p.id) {
                    return Err(Refusal::fail(format!("{method}: serial port {} is already piped", p.id)));
                }
                // The pipe: a TCP port on the address the client reached us
                // at; its bytes go to the serial line, where a Pelco-D
                // receiver drives the PTZ.
                let l = tokio::net::TcpListener::bind(SocketAddr::new(peer.local.ip(), 0))
                    .await
                    .map_err(|e| Refusal::busy(format!("{method}: no port for the pipe: {e}")))?;
                p.connection_type = "TCP".into();
                p.connection_port = l.local_addr().map(|a| a.port() as u32).unwrap_or(0);
                let task = tokio::spawn(serial_pipe(self.clone(), l));
                let mut st = self.st.lock().unwrap();
                if st.serial.iter().any(|(x, _)| x.id == p.id) {
                    task.abort();
                    return Err(Refusal::fail(format!("{method}: serial port {} is already piped", p.id)));
                }
                st.serial.push((p.clone(), task));
                let mut out = ack_ok();
                if let Value::Struct(o) = &mut out {
                    o.push("ConnectionType", "TCP");
                    o.push("ConnectionPort", p.connection_port);
                }
                Ok(out)
            }
            ("cviserialport", "delete") => {
                let id = need(s.int("ID"), method, "ID")? as u32;
                let mut st = self.st.lock().unwrap();
                let i = st
                    .serial
                    .iter()
                    .position(|(x, _)| x.id == id)
                    .ok_or_else(|| Refusal::fail(format!("{method}: serial port {id} is not piped")))?;
                st.serial.remove(i).1.abort();
                Ok(ack_ok())
            }
            ("cviserialport", "list") => {
                Ok(Value::Array(self.st.lock().unwrap().serial.iter().map(|(x, _)| x.clone().into()).collect()))
            }
            ("cvidisplay", "create") => {
                let d = api::DisplaySession::from_struct(&s);
                if !(1..=4).contains(&d.major) {
                    return Err(Refusal::fail(format!("{method}: major {} is not a display output (1–4)", d.major)));
                }
                dest_addr(&d.src_ip, d.src_port, method)?;
                let mut st = self.st.lock().unwrap();
                if st.displays.iter().any(|x| x.major == d.major && x.minor == d.minor) {
                    return Err(Refusal::fail(format!(
                        "{method}: output {}/{} is already displaying",
                        d.major, d.minor
                    )));
                }
                if st.displays.len() >= self.cfg.session_limit {
                    return Err(Refusal::busy(format!(
                        "{method}: the limit of {} displays is reached",
                        self.cfg.session_limit
                    )));
                }
                st.displays.push(d);
                Ok(ack_ok())
            }
            ("cvidisplay", "delete") => {
                let d = api::DisplaySession::from_struct(&s);
                let mut st = self.st.lock().unwrap();
                let n = st.displays.len();
                st.displays.retain(|x| !(x.major == d.major && x.minor == d.minor));
                if st.displays.len() == n {
                    return Err(Refusal::fail(format!("{method}: output {}/{} is not displaying", d.major, d.minor)));
                }
                Ok(ack_ok())
            }
            ("cvidisplay", "list") => {
                Ok(Value::Array(self.st.lock().unwrap().displays.iter().map(|x| x.clone().into()).collect()))
            }
            ("cvianalytics", "create") => self.analytics_create(method, s),
            ("cvianalytics", "delete") => {
                let a = api::AnalyticsSession::from_struct(&s);
                let mut st = self.st.lock().unwrap();
                let i = st
                    .analytics
                    .iter()
                    .position(|(x, _)| {
                        x.major == a.major && x.minor == a.minor && (a.dest_port == 0 || x.dest_port == a.dest_port)
                    })
                    .ok_or_else(|| {
                        Refusal::fail(format!("{method}: no analytics session on {}/{}", a.major, a.minor))
                    })?;
                st.analytics.remove(i).1.abort();
                Ok(ack_ok())
            }
            ("cvianalytics", "list") => {
                Ok(Value::Array(self.st.lock().unwrap().analytics.iter().map(|(x, _)| x.clone().into()).collect()))
            }
            ("cviptz", "cmd") => self.ptz_cmd(method, &params),
            _ if self.cfg.role != Role::Nvr => Err(Refusal::invalid(format!("no method {method} on this unit"))),
            ("cvirecord", op) => self.record_call(op, method, &s),
            ("cviplayback", "create") => self.playback_create(method, &s),
            ("cviplayback", "list") => Ok(Value::Array(
                self.st
                    .lock()
                    .unwrap()
                    .playbacks
                    .iter()
                    .map(|p| {
                        let mut x = p.s.clone();
                        x.mode = p.state.code();
                        x.into()
                    })
                    .collect(),
            )),
            ("cviplayback", op) => self.playback_call(op, method, &s),
            ("cvimedia", "query") => self.media_query(method, &s),
            ("cvimedia", "export") => self.media_export(method, &s),
            _ => Err(Refusal::invalid(format!("no method {method} on this unit"))),
        }
    }
}

/// The serial line behind a pipe: Pelco-D frames (`FF addr cmd1 cmd2
/// data1 data2 sum`) move the PTZ; each valid frame gets the 4-byte general
/// response, a frame with a bad checksum is dropped (and logged), as a
/// receiver on a real line does.
async fn serial_pipe(unit: Arc<Unit>, l: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, from)) = l.accept().await else { return };
        let mut line: Vec<u8> = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            line.extend_from_slice(&buf[..n]);
            while let Some(start) = line.iter().position(|b| *b == 0xFF) {
                line.drain(..start);
                if line.len() < 7 {
                    break;
                }
                let f: [u8; 7] = line[..7].try_into().unwrap_or_default();
                let sum = f[1..6].iter().fold(0u8, |a, b| a.wrapping_add(*b));
                if sum != f[6] {
                    tracing::info!(%from, "Pelco-D frame with a bad checksum dropped: {f:02x?}");
                    line.drain(..1);
                    continue;
                }
                line.drain(..7);
                unit.pelco_d(f[2], f[3], f[4], f[5]);
                let reply = [0xFF, f[1], 0x00, f[1]];
                if s.write_all(&reply).await.is_err() {
                    break;
                }
            }
            if line.len() > 4096 {
                line.clear();
            }
        }
    }
}

impl Unit {
    /// One Pelco-D command (after its address): pan/tilt bits with their
    /// speeds (0–0x3F), zoom bits, presets 0x03 set / 0x07 go to.
    pub fn pelco_d(&self, cmd1: u8, cmd2: u8, d1: u8, d2: u8) {
        let mut p = self.ptz.lock().unwrap();
        p.settle();
        if cmd1 == 0 && (cmd2 == 0x03 || cmd2 == 0x07) {
            if cmd2 == 0x03 {
                let pos = p.pos;
                p.presets.insert(d2 as u32, pos);
            } else if let Some(pos) = p.presets.get(&(d2 as u32)).copied() {
                p.motion = None;
                p.pos = pos;
            }
            return;
        }
        let pan_speed = (d1.min(0x3f) as f64) * 80.0 / 63.0;
        let tilt_speed = (d2.min(0x3f) as f64) * 80.0 / 63.0;
        let pan = if cmd2 & 0x02 != 0 {
            pan_speed
        } else if cmd2 & 0x04 != 0 {
            -pan_speed
        } else {
            0.0
        };
        let tilt = if cmd2 & 0x08 != 0 {
            tilt_speed
        } else if cmd2 & 0x10 != 0 {
            -tilt_speed
        } else {
            0.0
        };
        let zoom = if cmd2 & 0x20 != 0 {
            2.0
        } else if cmd2 & 0x40 != 0 {
            -2.0
        } else {
            0.0
        };
        p.motion =
            if pan == 0.0 && tilt == 0.0 && zoom == 0.0 { None } else { Some(((pan, tilt, zoom), Instant::now())) };
    }
}

/// Whether schedule profile `p` records at `t`: 0 always, 1 business hours
/// (Monday–Friday 08:00–18:00), 2 nights (20:00–06:00).
pub fn in_schedule(p: u32, t: chrono::NaiveDateTime) -> bool {
    use chrono::Datelike;
    let h = t.hour();
    match p {
        0 => true,
        1 => t.weekday().number_from_monday() <= 5 && (8..18).contains(&h),
        2 => !(6..20).contains(&h),
        _ => false,
    }
}

/// Seconds of `[a, b)` inside schedule `p` (by the second up to two hours,
/// by the minute beyond).
pub fn scheduled_secs(p: u32, a: chrono::NaiveDateTime, b: chrono::NaiveDateTime) -> u64 {
    let total = (b - a).num_seconds().max(0) as u64;
    let step = if total > 7200 { 60 } else { 1 };
    (0..total / step).filter(|k| in_schedule(p, a + chrono::Duration::seconds((k * step) as i64))).count() as u64 * step
}

/// FNV-1a, to tell one firmware image from another.
pub fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x0100_0000_01b3))
}

fn check_serial(p: &api::SerialPort, method: &str) -> Result<(), Refusal> {
    if !(1..=4).contains(&p.id) {
        return Err(Refusal::fail(format!("{method}: ID {} is not a serial port (1–4)", p.id)));
    }
    if ![1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200].contains(&p.baud_rate) {
        return Err(Refusal::fail(format!("{method}: BaudRate {} is not a standard rate", p.baud_rate)));
    }
    if !(5..=8).contains(&p.data_bits) {
        return Err(Refusal::fail(format!("{method}: DataBits {} is not 5–8", p.data_bits)));
    }
    if !(1..=2).contains(&p.stop_bits) {
        return Err(Refusal::fail(format!("{method}: StopBits {} is not 1 or 2", p.stop_bits)));
    }
    if p.parity > 4 {
        return Err(Refusal::fail(format!(
            "{method}: PortParity {} is not 0–4 (none, odd, even, mark, space)",
            p.parity
        )));
    }
    Ok(())
}

fn version_from(name: &str, image: &[u8]) -> String {
    let first = image.split(|b| *b == b'\n').next().unwrap_or_default();
    if let Some(v) = std::str::from_utf8(first).ok().and_then(|l| l.strip_prefix("version=")) {
        return v.trim().to_string();
    }
    let stem = name.rsplit('/').next().unwrap_or(name);
    let stem = stem.split(".bin").next().unwrap_or(stem);
    stem.to_string()
}

/// Streams motion data as the seed's `<AnalyticsData>` documents, one
/// per second, each in a CVIP packet (transaction 0), over TCP.
async fn analytics_stream(dest: SocketAddr, guid: String) {
    let r = async {
        let s = tokio::net::TcpStream::connect(dest).await?;
        let mut w = tokio_util::codec::FramedWrite::new(s, PacketCodec::default());
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let t = start.elapsed().as_millis() as u64;
            let x = ((t / 1000) * 10 % 300) as i32;
            let boxes = vec![Value::Struct(
                Struct::new().with("Left", x).with("Top", 20).with("Right", x + 50).with("Bottom", 70),
            )];
            let blocks: Vec<Value> = (0..4).map(|k| Value::Int(x / 16 + k % 2)).collect();
            let d = cvip::AnalyticsData {
                source_guid: guid.clone(),
                time: t.to_string(),
                params: vec![Value::Array(vec![Value::Bool(true), Value::Array(boxes)]), Value::Array(blocks)],
            };
            let body = cvip::write_analytics(&d);
            futures_util::SinkExt::send(&mut w, cvip::Packet::new(0, false, 0, body))
                .await
                .map_err(std::io::Error::other)?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    if let Err(e) = r.await {
        tracing::info!(%dest, "analytics stream ended: {e}");
    }
}

/// The unit as a CVIP server.
pub struct Sim(pub Arc<Unit>);

impl Handler for Sim {
    async fn call(&self, peer: &Peer, method: &str, params: Vec<Value>) -> Reply {
        self.0.dispatch(peer, method, params).await
    }

    fn ping(&self, req: &PingRequest, local: SocketAddr) -> PingResponse {
        let ip = match local.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => Ipv4Addr::LOCALHOST,
        };
        PingResponse {
            ip,
            port: *self.0.cvip_port.lock().unwrap(),
            conn_type: req.conn_type,
            guid: self.0.cfg.guid,
            manufacturer: 0x4956, // "IV"
            product: match self.0.cfg.role {
                Role::Device => 1,
                Role::Nvr => 2,
                Role::Master => 3,
            },
            rebooted: self.0.rebooted.swap(false, Ordering::SeqCst),
        }
    }

    async fn data(&self, auth: String, reader: FramedRead<tokio::net::tcp::OwnedReadHalf, PacketCodec>) {
        self.0.firmware_data(auth, reader).await
    }
}

/// Where a running simulator listens.
pub struct Running {
    pub unit: Arc<Unit>,
    pub addr: SocketAddr,
    pub ping_udp: Option<SocketAddr>,
    pub common: Option<SocketAddr>,
}

/// Starts the unit on `listen` (TCP + UDP ping on the same port) and, if
/// given, the common port (UDP and TCP ping only).
/// Binds two sockets on one port with `bind`; when the port is 0 and the
/// second is taken (AddrInUse), tries another port (up to 20 times).
async fn bind_pair<T, F, Fut>(at: SocketAddr, bind: F) -> std::io::Result<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let mut tries = 0;
    loop {
        match bind(at).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && at.port() == 0 && tries < 20 => tries += 1,
            r => return r,
        }
    }
}

pub async fn start(cfg: CvipConfig, listen: SocketAddr, common: Option<SocketAddr>) -> std::io::Result<Running> {
    let unit = Unit::new(cfg);
    // TCP and UDP on one port: with port 0 the port TCP got may be taken
    // for UDP (another process's); pick again rather than fail.
    let (l, udp) = bind_pair(listen, |a| async move {
        let l = tokio::net::TcpListener::bind(a).await?;
        let u = tokio::net::UdpSocket::bind(l.local_addr()?).await?;
        Ok((l, u))
    })
    .await?;
    let addr = l.local_addr()?;
    *unit.cvip_port.lock().unwrap() = addr.port();
    if let Some(p) = unit.reg.lock().unwrap().service_mut("cvip").and_then(|s| s.prop_mut("cvipPort")) {
        p.value = Value::UInt(addr.port() as u32);
    }
    let sim = Arc::new(Sim(unit.clone()));
    tokio::spawn(server::serve(l, unit.hub.clone(), sim.clone()));
    let ping_udp = Some(udp.local_addr()?);
    tokio::spawn(server::serve_ping_udp(udp, sim.clone()));
    let mut common_addr = None;
    if let Some(c) = common {
        let (u, t) = bind_pair(c, |a| async move {
            let u = tokio::net::UdpSocket::bind(a).await?;
            let t = tokio::net::TcpListener::bind(u.local_addr()?).await?;
            Ok((u, t))
        })
        .await?;
        let real = u.local_addr()?;
        u.set_broadcast(true)?;
        tokio::spawn(server::serve_ping_udp(u, sim.clone()));
        tokio::spawn(server::serve_common_tcp(t, sim.clone()));
        common_addr = Some(real);
    }
    if let Some(every) = unit.cfg.event_every {
        let u = unit.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut on = true;
            loop {
                tick.tick().await;
                for ch in 1..=u.cfg.channels.max(1) {
                    u.raise(event_type::MOTION, ch, on);
                }
                on = !on;
            }
        });
    }
    // Keep-alive events every 30 s to those who asked for them.
    let u = unit.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            u.raise(event_type::KEEP_ALIVE, 0, true);
        }
    });
    let _ = Access::Read;
    Ok(Running { unit, addr, ping_udp, common: common_addr })
}
