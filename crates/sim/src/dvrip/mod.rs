//! `ivr sim dvrip`: a simulated Xiongmai camera, DVR or NVR. It keeps state
//! (config tree, clock, PTZ, users and groups, logs, recordings) and answers
//! with the reply shapes real devices use, exactly: strict clients (the
//! `dvrip` package) reject replies with keys a device would not send.

mod records;
mod tree;
mod zip;

use crate::clips::{self, ClipCodec, SNAPSHOT_JPEG, TONE_ALAW, TONE_ULAW};
use bytes::{Bytes, BytesMut};
use chrono::{Duration as Span, Local, NaiveDateTime};
use dvrip::ids;
use dvrip::json::{
    format_hex_ip, format_hex_u32, format_session, format_time, parse_hex_ip, parse_query_time, parse_time,
};
use dvrip::media::{self, AudioCodec};
use dvrip::messages::{reply, AlarmCenterMessage, LogEntry, LoginRequest, PtzCommand, StreamType};
use dvrip::ret::code;
use dvrip::server::{Device, LoginGrant, Request, Response, Server, ServerConfig, Session};
use dvrip::Header;
use dvrip::Packet;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub use records::Recording;

/// How the simulated device is set up (`ivr sim dvrip` flags).
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub user: String,
    pub password: String,
    pub channels: u32,
    /// `"DeviceType "` of the login reply: IPC for one channel, else NVR.
    pub device_type: String,
    pub serial: String,
    pub codec: ClipCodec,
    /// The extra (sub) stream's codec (`None`: the main stream's); a
    /// camera with an H.265 main stream often sends H.264 here.
    pub sub_codec: Option<ClipCodec>,
    pub alive_interval: u32,
    /// Failed logins before a user is locked, and for how long.
    pub lock_after: u32,
    pub lock_for: Duration,
    /// Motion alarms on a schedule (`None`: only on demand via 1506).
    pub alarm_every: Option<Duration>,
    /// Pre-configures `NetWork.AlarmServer` to push to this `host:port`.
    pub alarm_center: Option<String>,
    /// Snapshots as raw JPEG instead of a 0x1FE picture frame.
    pub snapshot_raw: bool,
    /// How long a reboot keeps the device away.
    pub reboot_time: Duration,
    /// Recordings: one of `record_length` every `record_every` over the
    /// last `record_span`.
    pub record_span: Span,
    pub record_every: Span,
    pub record_length: Span,
    /// Live streams as fast as the socket takes them (benchmarks only).
    pub live_unpaced: bool,
    /// The main stream padded to this many bit/s (filler data after each picture, keyframes 5×
    /// the others), as a camera of that bitrate sends; `None`: the bare clip.
    pub main_bitrate: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            user: "admin".into(),
            password: String::new(),
            channels: 1,
            device_type: "IPC".into(),
            serial: "a166379674a3b447".into(),
            codec: ClipCodec::H264,
            sub_codec: None,
            alive_interval: 20,
            lock_after: 5,
            lock_for: Duration::from_secs(1800),
            alarm_every: None,
            alarm_center: None,
            snapshot_raw: false,
            reboot_time: Duration::from_secs(3),
            record_span: Span::hours(24),
            record_every: Span::minutes(10),
            record_length: Span::minutes(2),
            live_unpaced: false,
            main_bitrate: None,
        }
    }
}

const ALL_AUTHORITIES: [&str; 25] = [
    "ShutDown",
    "ChannelTitle",
    "RecordConfig",
    "Backup",
    "StorageManager",
    "Account",
    "SysInfo",
    "QueryLog",
    "DelLog",
    "SysUpgrade",
    "AutoMaintain",
    "GeneralConfig",
    "EncodeConfig",
    "CommConfig",
    "NetConfig",
    "AlarmConfig",
    "VideoConfig",
    "PtzConfig",
    "PTZControl",
    "DefaultConfig",
    "Talk_01",
    "IPCCamera",
    "ImExport",
    "Monitor_01",
    "Replay_01",
];
const USER_AUTHORITIES: [&str; 6] = ["SysInfo", "QueryLog", "PTZControl", "Talk_01", "Monitor_01", "Replay_01"];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PtzState {
    pub pan: i64,
    pub tilt: i64,
    pub zoom: i64,
    pub focus: i64,
    pub iris: i64,
    /// The movement in progress and when it began.
    pub moving: Option<(PtzCommand, Instant, i64)>,
    pub presets: HashMap<i64, (i64, i64, i64)>,
    pub touring: bool,
}

impl PtzState {
    /// Applies a movement that ran for `for_ms` at `step`.
    fn settle(&mut self, now: Instant) {
        if let Some((cmd, since, step)) = self.moving {
            let d = (now.duration_since(since).as_millis() as i64 * step.max(1)) / 100;
            let (dp, dt) = match cmd {
                PtzCommand::Up => (0, d),
                PtzCommand::Down => (0, -d),
                PtzCommand::Left => (-d, 0),
                PtzCommand::Right => (d, 0),
                PtzCommand::LeftUp => (-d, d),
                PtzCommand::LeftDown => (-d, -d),
                PtzCommand::RightUp => (d, d),
                PtzCommand::RightDown => (d, -d),
                _ => (0, 0),
            };
            self.pan = (self.pan + dp).rem_euclid(3600);
            self.tilt = (self.tilt + dt).clamp(-900, 900);
            match cmd {
                PtzCommand::ZoomTile => self.zoom = (self.zoom + d).min(1000),
                PtzCommand::ZoomWide => self.zoom = (self.zoom - d).max(0),
                PtzCommand::FocusFar => self.focus = (self.focus + d).min(1000),
                PtzCommand::FocusNear => self.focus = (self.focus - d).max(0),
                PtzCommand::IrisLarge => self.iris = (self.iris + d).min(100),
                PtzCommand::IrisSmall => self.iris = (self.iris - d).max(0),
                _ => {}
            }
            self.moving = Some((cmd, now, step));
        }
    }
}

struct Upgrade {
    next_block: u32,
    data: Vec<u8>,
}

/// A stream claimed by a session: where its media goes (the second
/// connection with this claim key, or `None`: the control connection).
#[derive(Clone, Debug)]
struct Claim {
    data: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlaySpeed {
    Normal,
    Paused,
    Fast,
    Slow,
}

struct State {
    config: Value,
    defaults: Value,
    titles: Vec<String>,
    users: Vec<Value>,
    groups: Vec<Value>,
    clock_offset: Span,
    ptz: Vec<PtzState>,
    failures: HashMap<String, (u32, Option<Instant>)>,
    logs: Vec<LogEntry>,
    guarded: HashSet<u32>,
    upgrades: HashMap<u32, Upgrade>,
    imports: HashMap<u32, Vec<u8>>,
    /// (session, kind, claim key) → the task sending it.
    tasks: HashMap<(u32, &'static str, String), AbortHandle>,
    /// (session, kind, claim key) → the claim.
    claims: HashMap<(u32, &'static str, String), Claim>,
    play_speed: HashMap<u32, watch::Sender<PlaySpeed>>,
    serial: HashMap<&'static str, VecDeque<u8>>,
    keys: Vec<(String, String)>,
    motion: u32,
    recordings: Vec<Recording>,
    updated: String,
    boot: Instant,
    talk_bytes: u64,
}

/// The simulated device. Shared by every connection.
pub struct DvripSim {
    cfg: SimConfig,
    /// The main stream at `main_bitrate`, made once.
    padded_main: Option<Arc<Vec<clips::AccessUnit>>>,
    state: Mutex<State>,
    server: OnceLock<Weak<Server<DvripSim>>>,
    rebooting_until: Mutex<Option<Instant>>,
}

fn now_local() -> NaiveDateTime {
    Local::now().naive_local()
}

fn mac_for(serial: &str) -> String {
    let h = dvrip::sofia_hash(serial);
    let b = h.as_bytes();
    format!("00:12:31:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

impl DvripSim {
    pub fn new(cfg: SimConfig) -> Arc<Self> {
        let clip = clips::clip(cfg.codec, true);
        let name = |c: ClipCodec| if c == ClipCodec::H265 { "h265" } else { "h264" };
        let codecs = (name(cfg.codec), name(cfg.sub_codec.unwrap_or(cfg.codec)));
        let mut config = tree::defaults(cfg.channels, &cfg.serial, &mac_for(&cfg.serial), codecs, 34567);
        if let Some(ac) = &cfg.alarm_center {
            let (host, port) = ac.rsplit_once(':').unwrap_or((ac.as_str(), "15002"));
            let ip: Ipv4Addr = host.parse().unwrap_or(Ipv4Addr::LOCALHOST);
            let port: u16 = port.parse().unwrap_or(15002);
            let _ = tree::set(
                &mut config,
                "NetWork.AlarmServer",
                json!({"Alarm": true, "Log": false, "Server": {"Address": format_hex_ip(ip), "Name": host, "Port": port}}),
            );
        }
        let defaults = config.clone();
        let admin_auth: Vec<&str> = ALL_AUTHORITIES.to_vec();
        let users = vec![
            json!({"AuthorityList": admin_auth, "Group": "admin", "Memo": "admin 's account", "Name": cfg.user,
                   "Password": dvrip::sofia_hash(&cfg.password), "Reserved": true, "Sharable": true}),
            json!({"AuthorityList": USER_AUTHORITIES, "Group": "user", "Memo": "default account", "Name": "default",
                   "Password": dvrip::sofia_hash("tluafed"), "Reserved": false, "Sharable": false}),
        ];
        let groups = vec![
            json!({"AuthorityList": admin_auth, "Memo": "administrator group", "Name": "admin"}),
            json!({"AuthorityList": USER_AUTHORITIES, "Memo": "user group", "Name": "user"}),
        ];
        let now = now_local();
        let recordings = records::index(cfg.channels, clip, now, cfg.record_span, cfg.record_every, cfg.record_length);
        let mut serial = HashMap::new();
        serial.insert("RS232", VecDeque::new());
        serial.insert("RS485", VecDeque::new());
        let state = State {
            config,
            defaults,
            titles: (0..cfg.channels).map(|c| format!("CAM{:02}", c + 1)).collect(),
            users,
            groups,
            clock_offset: Span::zero(),
            ptz: vec![PtzState::default(); cfg.channels as usize],
            failures: HashMap::new(),
            logs: Vec::new(),
            guarded: HashSet::new(),
            upgrades: HashMap::new(),
            imports: HashMap::new(),
            tasks: HashMap::new(),
            claims: HashMap::new(),
            play_speed: HashMap::new(),
            serial,
            keys: Vec::new(),
            motion: 0,
            recordings,
            updated: String::new(),
            boot: Instant::now(),
            talk_bytes: 0,
        };
        let padded_main = cfg.main_bitrate.map(|b| Arc::new(clips::clip(cfg.codec, true).padded(b)));
        let sim = Arc::new(DvripSim {
            padded_main,
            cfg,
            state: Mutex::new(state),
            server: OnceLock::new(),
            rebooting_until: Mutex::new(None),
        });
        sim.log("Reboot", "", "device started");
        sim
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("sim state lock")
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The device clock.
    pub fn clock(&self) -> NaiveDateTime {
        now_local() + self.st().clock_offset
    }

    /// PTZ state of a channel, with any movement in progress applied.
    pub fn ptz_state(&self, channel: usize) -> Option<PtzState> {
        let mut st = self.st();
        let p = st.ptz.get_mut(channel)?;
        p.settle(Instant::now());
        Some(p.clone())
    }

    pub fn recordings(&self) -> Vec<Recording> {
        self.st().recordings.clone()
    }

    /// G.711 bytes received from talk sessions.
    pub fn talk_bytes(&self) -> u64 {
        self.st().talk_bytes
    }

    /// Keys pressed on the network keyboard, as (status, key).
    pub fn keys(&self) -> Vec<(String, String)> {
        self.st().keys.clone()
    }

    fn log(&self, kind: &str, user: &str, data: &str) {
        let t = self.clock();
        let mut st = self.st();
        let position = st.logs.len() as u64;
        st.logs.push(LogEntry {
            position,
            time: format_time(&t),
            kind: kind.into(),
            user: user.into(),
            data: data.into(),
        });
    }

    fn authorities(&self, user: &str) -> Vec<String> {
        let st = self.st();
        st.users
            .iter()
            .find(|u| u["Name"] == user)
            .and_then(|u| serde_json::from_value(u["AuthorityList"].clone()).ok())
            .unwrap_or_default()
    }

    fn allowed(&self, session: &Session, authority: &str) -> bool {
        self.authorities(session.user()).iter().any(|a| a == authority)
    }

    fn rebooting(&self) -> bool {
        let mut r = self.rebooting_until.lock().expect("reboot lock");
        match *r {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *r = None;
                false
            }
            None => false,
        }
    }

    /// Reboots: every session closes and the device stays away for a while.
    pub fn reboot(&self) {
        *self.rebooting_until.lock().expect("reboot lock") = Some(Instant::now() + self.cfg.reboot_time);
        {
            let mut st = self.st();
            for (_, t) in st.tasks.drain() {
                t.abort();
            }
            st.guarded.clear();
            st.boot = Instant::now() + self.cfg.reboot_time;
        }
        self.log("Reboot", "", "device restarted");
        if let Some(server) = self.server.get().and_then(Weak::upgrade) {
            server.close_all();
        }
    }

    /// Raises an alarm: pushed (1504) to guarded sessions and, when
    /// `NetWork.AlarmServer.Alarm` is on, to the alarm center (1508).
    pub async fn raise_alarm(&self, channel: u32, event: &str, start: bool) {
        let t = format_time(&self.clock());
        let status = if start { "Start" } else { "Stop" };
        let (guarded, center) = {
            let mut st = self.st();
            if event == "VideoMotion" {
                if start {
                    st.motion |= 1 << channel.min(31);
                } else {
                    st.motion &= !(1 << channel.min(31));
                }
            }
            let guarded = st.guarded.clone();
            let server = tree::get(&st.config, "NetWork.AlarmServer").ok().cloned();
            (guarded, server)
        };
        self.log(if start { "EventStart" } else { "EventStop" }, "", &format!("{event} channel {channel}"));
        let sessions = self.server.get().and_then(Weak::upgrade).map(|s| s.sessions()).unwrap_or_default();
        for s in sessions.iter().filter(|s| guarded.contains(&s.id())) {
            let body = json!({
                "AlarmInfo": {"Channel": channel, "Event": event, "StartTime": t, "Status": status},
                "Name": "AlarmInfo",
                "SessionID": format_session(s.id()),
            });
            s.send_json(ids::ALARM_REQ, &body).await;
        }
        if let Some(c) = center.filter(|c| c["Alarm"] == true) {
            let host = c["Server"]["Name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .or_else(|| c["Server"]["Address"].as_str().and_then(parse_hex_ip).map(|ip| ip.to_string()));
            let port = c["Server"]["Port"].as_u64().unwrap_or(15002);
            if let Some(host) = host {
                let msg = AlarmCenterMessage {
                    address: format_hex_ip(Ipv4Addr::LOCALHOST),
                    channel,
                    description: String::new(),
                    event: event.into(),
                    serial_id: self.cfg.serial.clone(),
                    start_time: t.clone(),
                    status: status.into(),
                    kind: "Alarm".into(),
                };
                let addr = format!("{host}:{port}");
                if let Err(e) = dvrip::alarm_center::push(&addr, &msg).await {
                    tracing::warn!(%addr, error = %e, "sim dvrip: alarm center push failed");
                }
            }
        }
    }

    fn stream_cfg(&self, channel: u32, stream: StreamType) -> (u32, bool) {
        let st = self.st();
        let fmt = if stream == StreamType::Main { "MainFormat" } else { "ExtraFormat" };
        let base = format!("Simplify.Encode.[{channel}].{fmt}");
        let fps = tree::get(&st.config, &format!("{base}.Video.FPS")).ok().and_then(Value::as_u64).unwrap_or(25);
        let audio =
            tree::get(&st.config, &format!("{base}.AudioEnable")).ok().and_then(Value::as_bool).unwrap_or(false);
        (fps.clamp(1, 30) as u32, audio)
    }

    fn stop_task(&self, session: u32, kind: &'static str, key: &str) {
        if let Some(t) = self.st().tasks.remove(&(session, kind, key.to_owned())) {
            t.abort();
        }
    }

    fn start_task(&self, session: u32, kind: &'static str, key: &str, task: AbortHandle) {
        if let Some(old) = self.st().tasks.insert((session, kind, key.to_owned()), task) {
            old.abort();
        }
    }

    /// The claim a Start or Stop refers to: the one with the same
    /// `Parameter` (channel, stream, file), else the session's latest of
    /// that kind (clients that vary the Parameter between claim and start).
    fn claim_of(&self, session: u32, kind: &'static str, body: &Value) -> Option<(String, Claim)> {
        let key = dvrip::server::claim_key(body);
        let st = self.st();
        if let Some(c) = st.claims.get(&(session, kind, key.clone())) {
            return Some((key, c.clone()));
        }
        st.claims
            .iter()
            .find(|((s, k, _), _)| *s == session && *k == kind)
            .map(|((_, _, key), c)| (key.clone(), c.clone()))
    }

    /// Live media of one channel at its configured frame rate, with
    /// the device clock in every I-frame, until the session ends.
    async fn live(self: Arc<Self>, session: Session, channel: u32, stream: StreamType, data: Option<String>) {
        let codec = match stream {
            StreamType::Main => self.cfg.codec,
            _ => self.cfg.sub_codec.unwrap_or(self.cfg.codec),
        };
        let clip = clips::clip(codec, stream == StreamType::Main);
        let padded = if stream == StreamType::Main { self.padded_main.clone() } else { None };
        let frame = |i: u64| match &padded {
            Some(p) => &p[(i % p.len().max(1) as u64) as usize],
            None => clip.frame(i),
        };
        let start = tokio::time::Instant::now();
        let mut next = start;
        let mut audio_pos = 0usize;
        let send = |p: Packet| session.send_stream(p, data.as_deref());
        let (mut fps, mut audio) = self.stream_cfg(channel, stream);
        for i in 0u64.. {
            // Encoder settings take effect at the next keyframe, as on
            // cameras (and the config is not re-read for every frame).
            if frame(i).keyframe {
                (fps, audio) = self.stream_cfg(channel, stream);
            }
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let f = frame(i);
            media::write_video(
                &mut buf,
                codec_of(clip.codec),
                f.keyframe,
                clip.width,
                clip.height,
                fps as u8,
                &self.clock(),
                &f.data,
            );
            for chunk in buf.chunks(16 * 1024) {
                let mut h = session.header(ids::OPMONITOR_DATA);
                h.byte12 = channel as u8;
                if !send(Packet::new(h, Bytes::copy_from_slice(chunk))).await {
                    return;
                }
            }
            if audio {
                let samples = 8000 / fps as usize;
                let mut a = BytesMut::new();
                let tone = TONE_ALAW;
                let mut pcm = Vec::with_capacity(samples);
                for _ in 0..samples {
                    pcm.push(tone[audio_pos % tone.len()]);
                    audio_pos += 1;
                }
                media::write_audio(&mut a, AudioCodec::G711A, 8000, &pcm);
                let mut h = session.header(ids::OPMONITOR_DATA);
                h.byte12 = channel as u8;
                if !send(Packet::new(h, a.freeze())).await {
                    return;
                }
            }
            if self.cfg.live_unpaced {
                // The bounded queue to the socket paces us.
                continue;
            }
            next += Duration::from_micros(1_000_000 / fps as u64);
            tokio::time::sleep_until(next).await;
        }
    }

    /// Recorded media: downloads as fast as the socket takes them,
    /// playback at the frame rate (with pause/fast/slow).
    async fn replay(
        self: Arc<Self>,
        session: Session,
        parts: Vec<(Recording, u64, u64)>,
        download: bool,
        speed: watch::Receiver<PlaySpeed>,
        data: Option<String>,
    ) {
        let clip = clips::clip(self.cfg.codec, true);
        let id = if download { ids::DOWNLOAD_DATA } else { ids::PLAY_DATA };
        let mut pending = BytesMut::new();
        let mut next = tokio::time::Instant::now();
        let send = |p: Packet| session.send_stream(p, data.as_deref());
        for (rec, first, last) in parts {
            for i in first..last {
                records::write_frame(&mut pending, clip, clip.fps, i, &rec.begin);
                if !download {
                    loop {
                        let s = *speed.borrow();
                        if s != PlaySpeed::Paused {
                            let per = match s {
                                PlaySpeed::Fast => 10_000,
                                PlaySpeed::Slow => 160_000,
                                _ => 40_000,
                            };
                            next += Duration::from_micros(per);
                            break;
                        }
                        let mut sp = speed.clone();
                        if sp.changed().await.is_err() {
                            return;
                        }
                    }
                }
                while pending.len() >= 16 * 1024 || (!download && !pending.is_empty()) {
                    let n = pending.len().min(16 * 1024);
                    let chunk = pending.split_to(n).freeze();
                    if !send(Packet::new(session.header(id), chunk)).await {
                        return;
                    }
                }
                if !download {
                    tokio::time::sleep_until(next).await;
                }
            }
        }
        if !pending.is_empty() && !send(Packet::new(session.header(id), pending.freeze())).await {
            return;
        }
        // End of the file: an empty packet with the end flag.
        let mut h = session.header(id);
        h.byte13 = 1;
        send(Packet::new(h, Bytes::new())).await;
    }

    fn reply_ok(name: &str, s: &Session) -> Response {
        Response::Json(reply(name, code::OK, s.id(), None))
    }

    fn reply_err(name: &str, ret: i64, s: &Session) -> Response {
        Response::Json(reply(name, ret, s.id(), None))
    }

    async fn dispatch(self: Arc<Self>, s: Session, req: Request) -> Response {
        let id = req.header.msg_id;
        let binary = matches!(
            id,
            ids::UPGRADE_DATA
                | ids::CONFIG_IMPORT_REQ
                | ids::CONFIG_CHANNELTILE_DOT_SET
                | ids::TALK_CU_PU_DATA
                | ids::RS232_TRANSPARENT_DATA_REQ
                | ids::RS485_TRANSPARENT_DATA_REQ
        );
        if binary {
            return self.binary(&s, req).await;
        }
        let mut req = req;
        let body = match std::mem::replace(&mut req.body, Ok(Value::Null)) {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(session = s.id(), msg_id = id, error = %e, "sim dvrip: malformed request");
                return Self::reply_err("", code::MESSAGE_FORMAT, &s);
            }
        };
        let name = body.get("Name").and_then(Value::as_str).unwrap_or("").to_owned();
        let arg = body.get(&name).cloned().unwrap_or(Value::Null);
        match id {
            ids::SYSTEM_INFO_REQ => self.system_info(&s, &name),
            ids::CONFIG_GET if name.starts_with("Uart.PTZPreset") || name.starts_with("Uart.PTZTour") => {
                self.ptz_lists(&s, &name)
            }
            ids::CONFIG_GET | ids::DEFAULT_CONFIG_GET => {
                let st = self.st();
                let t = if id == ids::CONFIG_GET { &st.config } else { &st.defaults };
                match tree::get(t, &name) {
                    // Written straight from the tree: no copy of the subtree.
                    Ok(v) => Response::Body(reply_body(&name, code::OK, s.id(), v)),
                    Err(e) => Self::reply_err(&name, e.ret, &s),
                }
            }
            ids::CONFIG_SET => {
                if !self.allowed(&s, "GeneralConfig") {
                    return Self::reply_err(&name, code::NO_PERMISSION, &s);
                }
                let r = tree::set(&mut self.st().config, &name, arg);
                match r {
                    Ok(()) => {
                        self.log("SaveConfig", s.user(), &name);
                        Self::reply_ok(&name, &s)
                    }
                    Err(e) => {
                        tracing::info!(session = s.id(), error = %e.message, "sim dvrip: config set refused");
                        Self::reply_err(&name, e.ret, &s)
                    }
                }
            }
            ids::CHANNELTITLE_REQ => {
                let titles = self.st().titles.clone();
                Response::Json(reply("ChannelTitle", code::OK, s.id(), Some(json!(titles))))
            }
            ids::CONFIG_CHANNELTILE_SET => {
                let titles: Option<Vec<String>> =
                    serde_json::from_value(body.get("ChannelTitle").cloned().unwrap_or(Value::Null)).ok();
                match titles {
                    Some(t) if t.len() <= self.cfg.channels as usize => {
                        let mut st = self.st();
                        for (i, title) in t.into_iter().enumerate() {
                            st.titles[i] = title;
                        }
                        drop(st);
                        Self::reply_ok("ChannelTitle", &s)
                    }
                    _ => Self::reply_err("ChannelTitle", code::ILLEGAL_INPUT, &s),
                }
            }
            ids::SYSTEMFUNCTION_REQ => match name.as_str() {
                "SystemFunction" => Response::Json(reply(&name, code::OK, s.id(), Some(system_function()))),
                "EncodeCapability" => Response::Json(reply(&name, code::OK, s.id(), Some(self.encode_capability()))),
                _ => Self::reply_err(&name, code::CONFIG_MISSING, &s),
            },
            ids::PTZ_REQ => self.ptz(&s, &arg),
            ids::OPMONITOR_CLAIM_REQ => {
                let ok = arg
                    .pointer("/Parameter/Channel")
                    .and_then(Value::as_u64)
                    .is_some_and(|c| c < self.cfg.channels as u64);
                if !ok {
                    return Self::reply_err("OPMonitor", code::ILLEGAL_INPUT, &s);
                }
                let key = dvrip::server::claim_key(&body);
                let data = req.on_data_channel.then(|| key.clone());
                self.st().claims.insert((s.id(), "monitor", key), Claim { data });
                Self::reply_ok("OPMonitor", &s)
            }
            ids::OPMONITOR_REQ => self.monitor(&s, &body, &arg),
            ids::PLAY_CLAIM => {
                let key = dvrip::server::claim_key(&body);
                let data = req.on_data_channel.then(|| key.clone());
                self.st().claims.insert((s.id(), "playback", key), Claim { data });
                Self::reply_ok("OPPlayBack", &s)
            }
            ids::PLAY_REQ => self.playback(&s, &body, &arg),
            ids::TALK_CLAIM => Self::reply_ok("OPTalk", &s),
            ids::TALK_REQ => self.talk(&s, &arg),
            ids::FILESEARCH_REQ => self.file_search(&s, &arg),
            ids::LOGSEARCH_REQ => self.log_search(&s, &arg),
            ids::SYSMANAGER_REQ => self.sysmanager(&s, &name, &arg),
            ids::OPTIMEQUERY_REQ => {
                let t = format_time(&self.clock());
                Response::Json(reply("OPTimeQuery", code::OK, s.id(), Some(json!(t))))
            }
            ids::OPTIMESETTING_NORTC_REQ => self.set_time(&s, "OPTimeSettingNoRTC", &arg),
            ids::FULLAUTHORITYLIST_GET => {
                Response::Json(reply("AuthorityList", code::OK, s.id(), Some(json!(ALL_AUTHORITIES))))
            }
            ids::USERS_GET => {
                let users = self.st().users.clone();
                Response::Json(reply("Users", code::OK, s.id(), Some(Value::Array(users))))
            }
            ids::GROUPS_GET => {
                let groups = self.st().groups.clone();
                Response::Json(reply("Groups", code::OK, s.id(), Some(Value::Array(groups))))
            }
            ids::ADDGROUP_REQ
            | ids::MODIFYGROUP_REQ
            | ids::DELETEGROUP_REQ
            | ids::ADDUSER_REQ
            | ids::MODIFYUSER_REQ
            | ids::OPDELUSER_REQ
            | ids::MODIFYPASSWORD_REQ => self.accounts(&s, id, &name, &body, &arg),
            ids::GUARD_REQ => {
                self.st().guarded.insert(s.id());
                Self::reply_ok("", &s)
            }
            ids::UNGUARD_REQ => {
                self.st().guarded.remove(&s.id());
                Self::reply_ok("", &s)
            }
            ids::NET_ALARM_REQ => {
                let on = arg.get("State").map(|v| v.as_bool().unwrap_or(v.as_i64() == Some(1)));
                match on {
                    Some(on) => {
                        let me = self.clone();
                        tokio::spawn(async move { me.raise_alarm(0, "NetAlarm", on).await });
                        Self::reply_ok("OPNetAlarm", &s)
                    }
                    None => Self::reply_err("OPNetAlarm", code::ILLEGAL_INPUT, &s),
                }
            }
            ids::UPGRADE_REQ => {
                if !self.allowed(&s, "SysUpgrade") {
                    return Self::reply_err("OPSystemUpgrade", code::NO_PERMISSION, &s);
                }
                if arg.get("Action").and_then(Value::as_str) != Some("Start") {
                    return Self::reply_err("OPSystemUpgrade", code::ILLEGAL_REQUEST, &s);
                }
                self.st().upgrades.insert(s.id(), Upgrade { next_block: 0, data: Vec::new() });
                Self::reply_ok("OPSystemUpgrade", &s)
            }
            ids::UPGRADE_INFO_REQ => {
                let updated = self.st().updated.clone();
                Response::Json(reply(
                    "OPSystemUpgrade",
                    code::OK,
                    s.id(),
                    Some(
                        json!({"Hardware": "XM530_R80X20-PQ", "LogoArea": {"Begin": "0x00000000", "End": "0x00000000"}, "LogoPartType": "cramfs", "Serial": self.cfg.serial, "Vendor": "General", "UpdateTime": updated}),
                    ),
                ))
            }
            ids::CONFIG_EXPORT_REQ => self.export_config(&s, req.header),
            ids::LOG_EXPORT_REQ => self.export_log(&s, req.header),
            ids::NET_KEYBOARD_REQ => {
                let status = arg.get("Status").and_then(Value::as_str).unwrap_or("");
                let key = arg.get("Value").and_then(Value::as_str).unwrap_or("");
                if !matches!(status, "KeyDown" | "KeyUp") || key.is_empty() {
                    return Self::reply_err("OPNetKeyboard", code::ILLEGAL_INPUT, &s);
                }
                self.st().keys.push((status.into(), key.into()));
                Self::reply_ok("OPNetKeyboard", &s)
            }
            ids::NET_SNAP_REQ => self.snapshot(&s, &arg, req.header),
            ids::RS232_READ_REQ | ids::RS485_READ_REQ => {
                let (port, nm) =
                    if id == ids::RS232_READ_REQ { ("RS232", "OPRS232Read") } else { ("RS485", "OPRS485Read") };
                let data: Vec<u8> = self.st().serial.get_mut(port).map(|q| q.drain(..).collect()).unwrap_or_default();
                let hex: String = data.iter().map(|b| format!("{b:02X}")).collect();
                Response::Json(reply(nm, code::OK, s.id(), Some(json!({"Data": hex, "Length": data.len()}))))
            }
            ids::RS232_WRITE_REQ | ids::RS485_WRITE_REQ => {
                let (port, nm) =
                    if id == ids::RS232_WRITE_REQ { ("RS232", "OPRS232Write") } else { ("RS485", "OPRS485Write") };
                let hex = arg.get("Data").and_then(Value::as_str).unwrap_or("");
                match unhex(hex) {
                    Some(bytes) => {
                        // The attached device echoes what it receives.
                        self.st().serial.entry(port).or_default().extend(bytes);
                        Self::reply_ok(nm, &s)
                    }
                    None => Self::reply_err(nm, code::ILLEGAL_INPUT, &s),
                }
            }
            ids::TRANSPARENT_COMM_REQ => {
                let ok = matches!(arg.get("SerialType").and_then(Value::as_str), Some("RS232" | "RS485"))
                    && matches!(arg.get("Action").and_then(Value::as_str), Some("Start" | "Stop"));
                if ok {
                    Self::reply_ok("OPTransCommChannel", &s)
                } else {
                    Self::reply_err("OPTransCommChannel", code::ILLEGAL_INPUT, &s)
                }
            }
            _ => {
                tracing::info!(session = s.id(), msg_id = id, name, "sim dvrip: unsupported message");
                Self::reply_err(&name, code::NOT_SUPPORTED, &s)
            }
        }
    }

    fn system_info(&self, s: &Session, name: &str) -> Response {
        let st = self.st();
        let data = match name {
            // Exactly the keys of older firmware: the `dvrip` package
            // rejects unknown ones (newer firmware adds DeviceModel).
            "SystemInfo" => {
                let minutes = st.boot.elapsed().as_secs() / 60;
                json!({
                    "AlarmInChannel": 1, "AlarmOutChannel": 1, "AudioInChannel": 1,
                    "BuildTime": "2024-03-12 10:21:05", "CombineSwitch": 0,
                    "DeviceRunTime": format_hex_u32(minutes as u32), "DigChannel": 0,
                    "EncryptVersion": "Unknown", "ExtraChannel": 0, "HardWare": "XM530_R80X20-PQ",
                    "HardWareVersion": "Unknown", "SerialNo": self.cfg.serial,
                    "SoftWareVersion": "V5.00.R02.000559A7.10010.346332.0000000", "TalkInChannel": 1, "TalkOutChannel": 1,
                    "UpdataTime": st.updated, "UpdataType": "0x00000000",
                    "VideoInChannel": self.cfg.channels, "VideoOutChannel": 1,
                })
            }
            "StorageInfo" => {
                let first =
                    st.recordings.first().map(|r| format_time(&r.begin)).unwrap_or_else(|| format_time(&now_local()));
                let last =
                    st.recordings.last().map(|r| format_time(&r.end)).unwrap_or_else(|| format_time(&now_local()));
                let used_mib: u64 = st.recordings.iter().map(|r| r.bytes).sum::<u64>() >> 20;
                json!([{"PartNumber": 1, "Partition": [{
                    "DirverType": 0, "IsCurrent": true, "LogicSerialNo": 0,
                    "NewEndTime": last, "NewStartTime": first, "OldEndTime": last, "OldStartTime": first,
                    "RemainSpace": format_hex_u32(30_000 - used_mib.min(30_000) as u32), "Status": 0, "TotalSpace": format_hex_u32(30_000),
                }], "PlysicalNo": 0}])
            }
            "WorkState" => json!({
                "AlarmState": {"AlarmIn": 0, "AlarmOut": 0, "VideoBlind": 0, "VideoLoss": 0, "VideoMotion": st.motion},
                "ChannelState": (0..self.cfg.channels).map(|_| json!({"Bitrate": 1024, "Record": true})).collect::<Vec<_>>(),
            }),
            "OEMInfo" => json!({"Address": "", "Name": "General", "OEMID": 1, "Telephone": ""}),
            _ => return Self::reply_err(name, code::CONFIG_MISSING, s),
        };
        Response::Json(reply(name, code::OK, s.id(), Some(data)))
    }

    fn encode_capability(&self) -> Value {
        json!({
            "ChannelMaxSetSync": 0,
            "CombEncodeInfo": [{"CompressionMask": "0x000000C0", "Enable": false, "HaveAudio": true, "ResolutionMask": "0x00000000", "StreamType": "MainStream"}],
            "Compression": "0x000000C0",
            "EncodeInfo": [
                {"CompressionMask": "0x000000C0", "Enable": true, "HaveAudio": true, "ResolutionMask": "0x00100000", "StreamType": "MainStream"},
                {"CompressionMask": "0x000000C0", "Enable": true, "HaveAudio": true, "ResolutionMask": "0x00000003", "StreamType": "ExtraStream"},
            ],
            "ExImageSizePerChannel": ["0x00000003"],
            "ImageSizePerChannel": ["0x00100000"],
            "MaxBitrate": 8192,
            "MaxEncodePower": 5_038_848 * 25,
            "MaxEncodePowerPerChannel": [5_038_848 * 25],
        })
    }

    /// `Uart.PTZPreset.[N]` (the presets set on channel N, `{Id, Name}`) and
    /// `Uart.PTZTour.[N]` (one tour through them while there are any), as
    /// XMeye firmware lists them; without `.[N]` a list per channel.
    fn ptz_lists(&self, s: &Session, name: &str) -> Response {
        let tours = name.starts_with("Uart.PTZTour");
        let base = if tours { "Uart.PTZTour" } else { "Uart.PTZPreset" };
        let one = |p: &PtzState| -> Value {
            let mut ids: Vec<i64> = p.presets.keys().copied().collect();
            ids.sort_unstable();
            if tours {
                if ids.is_empty() {
                    return json!([]);
                }
                json!([{"Id": 1, "Name": "Tour1", "Preset": ids, "Running": p.touring}])
            } else {
                Value::Array(ids.iter().map(|i| json!({"Id": i, "Name": format!("Preset{i}")})).collect())
            }
        };
        let st = self.st();
        let v = match name.strip_prefix(base) {
            Some("") => Value::Array(st.ptz.iter().map(one).collect()),
            Some(idx) => {
                let n = idx.strip_prefix(".[").and_then(|x| x.strip_suffix(']')).and_then(|x| x.parse::<usize>().ok());
                match n.and_then(|n| st.ptz.get(n)) {
                    Some(p) => one(p),
                    None => {
                        drop(st);
                        return Self::reply_err(name, code::ILLEGAL_INPUT, s);
                    }
                }
            }
            None => Value::Null,
        };
        drop(st);
        Response::Json(reply(name, code::OK, s.id(), Some(v)))
    }

    fn ptz(&self, s: &Session, arg: &Value) -> Response {
        if !self.allowed(s, "PTZControl") {
            return Self::reply_err("OPPTZControl", code::NO_PERMISSION, s);
        }
        let cmd = arg.get("Command").and_then(Value::as_str).and_then(PtzCommand::parse);
        let p = arg.get("Parameter");
        let channel = p.and_then(|p| p.get("Channel")).and_then(Value::as_u64);
        let (Some(cmd), Some(channel)) = (cmd, channel) else {
            return Self::reply_err("OPPTZControl", code::ILLEGAL_INPUT, s);
        };
        let preset = p.and_then(|p| p.get("Preset")).and_then(Value::as_i64).unwrap_or(-1);
        let step = p.and_then(|p| p.get("Step")).and_then(Value::as_i64).unwrap_or(5).clamp(1, 8);
        let now = Instant::now();
        let mut st = self.st();
        let Some(ptz) = st.ptz.get_mut(channel as usize) else {
            drop(st);
            return Self::reply_err("OPPTZControl", code::ILLEGAL_INPUT, s);
        };
        ptz.settle(now);
        match cmd {
            PtzCommand::SetPreset | PtzCommand::GotoPreset | PtzCommand::ClearPreset
                if !(1..=255).contains(&preset) =>
            {
                drop(st);
                return Self::reply_err("OPPTZControl", code::ILLEGAL_INPUT, s);
            }
            PtzCommand::SetPreset => {
                ptz.presets.insert(preset, (ptz.pan, ptz.tilt, ptz.zoom));
            }
            PtzCommand::GotoPreset => match ptz.presets.get(&preset) {
                Some(&(pan, tilt, zoom)) => {
                    ptz.moving = None;
                    (ptz.pan, ptz.tilt, ptz.zoom) = (pan, tilt, zoom);
                }
                None => {
                    drop(st);
                    return Self::reply_err("OPPTZControl", code::ILLEGAL_INPUT, s);
                }
            },
            PtzCommand::ClearPreset => {
                ptz.presets.remove(&preset);
            }
            PtzCommand::StartTour => ptz.touring = true,
            PtzCommand::StopTour => ptz.touring = false,
            // Stop is the same command with Preset -1.
            _ if preset == -1 => ptz.moving = None,
            _ => ptz.moving = Some((cmd, now, step)),
        }
        drop(st);
        let what = if preset == -1 { "stop".to_owned() } else { format!("step {step} preset {preset}") };
        self.log("PTZControl", s.user(), &format!("{} channel {channel} {what}", cmd.as_str()));
        Self::reply_ok("OPPTZControl", s)
    }

    fn monitor(self: &Arc<Self>, s: &Session, body: &Value, arg: &Value) -> Response {
        let action = arg.get("Action").and_then(Value::as_str).unwrap_or("");
        let param = arg.get("Parameter").cloned().unwrap_or(Value::Null);
        let channel = param.get("Channel").and_then(Value::as_u64).unwrap_or(0) as u32;
        let stream = param.get("StreamType").and_then(StreamType::parse).unwrap_or(StreamType::Main);
        let claim = self.claim_of(s.id(), "monitor", body);
        match action {
            "Start" => {
                if channel >= self.cfg.channels {
                    return Self::reply_err("OPMonitor", code::ILLEGAL_INPUT, s);
                }
                let Some((key, claim)) = claim else {
                    return Self::reply_err("OPMonitor", code::ILLEGAL_REQUEST, s);
                };
                let me = self.clone();
                let session = s.clone();
                let on_data = claim.data.is_some();
                let task = tokio::spawn(async move {
                    if let Some(k) = &claim.data {
                        wait_for_data_channel(&session, k).await;
                    }
                    me.live(session, channel, stream, claim.data).await
                });
                self.start_task(s.id(), "monitor", &key, task.abort_handle());
                // Devices answer Start only when the claim came on a second
                // connection; on a single socket the media is the answer.
                if on_data {
                    Self::reply_ok("OPMonitor", s)
                } else {
                    Response::Nothing
                }
            }
            "Stop" => {
                if let Some((key, _)) = claim {
                    self.stop_task(s.id(), "monitor", &key);
                    self.st().claims.remove(&(s.id(), "monitor", key));
                }
                Self::reply_ok("OPMonitor", s)
            }
            _ => Self::reply_err("OPMonitor", code::ILLEGAL_REQUEST, s),
        }
    }

    fn playback(self: &Arc<Self>, s: &Session, body: &Value, arg: &Value) -> Response {
        let action = arg.get("Action").and_then(Value::as_str).unwrap_or("");
        let param = arg.get("Parameter").cloned().unwrap_or(Value::Null);
        let claim = self.claim_of(s.id(), "playback", body);
        let speed = |sp: PlaySpeed| {
            if let Some(tx) = self.st().play_speed.get(&s.id()) {
                tx.send_replace(sp);
            }
            Self::reply_ok("OPPlayBack", s)
        };
        match action {
            "Start" | "DownloadStart" => {
                let Some((key, claim)) = claim else {
                    return Self::reply_err("OPPlayBack", code::ILLEGAL_REQUEST, s);
                };
                let clip = clips::clip(self.cfg.codec, true);
                let recs = self.st().recordings.clone();
                let by_name = param.get("FileName").and_then(Value::as_str).filter(|n| !n.is_empty());
                let parts: Vec<(Recording, u64, u64)> = match by_name {
                    Some(name) => match recs.iter().find(|r| r.name == name) {
                        Some(r) => {
                            let frames = (r.end - r.begin).num_seconds() as u64 * clip.fps as u64;
                            vec![(r.clone(), 0, frames)]
                        }
                        None => return Self::reply_err("OPPlayBack", code::FILE_NOT_FOUND, s),
                    },
                    None => {
                        let channel = param.get("Channel").and_then(Value::as_u64).unwrap_or(0) as u32;
                        let from = arg.get("StartTime").and_then(Value::as_str).and_then(parse_query_time);
                        let to = arg.get("EndTime").and_then(Value::as_str).and_then(parse_query_time);
                        let (Some(from), Some(to)) = (from, to) else {
                            return Self::reply_err("OPPlayBack", code::ILLEGAL_INPUT, s);
                        };
                        let parts: Vec<_> = recs
                            .iter()
                            .filter(|r| r.channel == channel)
                            .filter_map(|r| records::frame_range(r, clip, from, to).map(|(a, b)| (r.clone(), a, b)))
                            .collect();
                        if parts.is_empty() {
                            return Self::reply_err("OPPlayBack", code::NO_FILES, s);
                        }
                        parts
                    }
                };
                let download = action == "DownloadStart";
                let (tx, rx) = watch::channel(PlaySpeed::Normal);
                self.st().play_speed.insert(s.id(), tx);
                let me = self.clone();
                let session = s.clone();
                let on_data = claim.data.is_some();
                let task = tokio::spawn(async move {
                    if let Some(k) = &claim.data {
                        wait_for_data_channel(&session, k).await;
                    }
                    me.replay(session, parts, download, rx, claim.data).await
                });
                self.start_task(s.id(), "playback", &key, task.abort_handle());
                if on_data {
                    Self::reply_ok("OPPlayBack", s)
                } else {
                    Response::Nothing
                }
            }
            "Stop" | "DownloadStop" => {
                if let Some((key, _)) = claim {
                    self.stop_task(s.id(), "playback", &key);
                    self.st().claims.remove(&(s.id(), "playback", key));
                }
                Self::reply_ok("OPPlayBack", s)
            }
            "Pause" => speed(PlaySpeed::Paused),
            "Continue" => speed(PlaySpeed::Normal),
            "Fast" => speed(PlaySpeed::Fast),
            "Slow" => speed(PlaySpeed::Slow),
            _ => Self::reply_err("OPPlayBack", code::ILLEGAL_REQUEST, s),
        }
    }

    fn talk(self: &Arc<Self>, s: &Session, arg: &Value) -> Response {
        if !self.allowed(s, "Talk_01") {
            return Self::reply_err("OPTalk", code::NO_PERMISSION, s);
        }
        match arg.get("Action").and_then(Value::as_str) {
            Some("Start") => {
                let ulaw = arg.pointer("/AudioFormat/EncodeType").and_then(Value::as_str) == Some("G711_ULAW");
                let session = s.clone();
                let task = tokio::spawn(async move {
                    let (tone, codec) =
                        if ulaw { (TONE_ULAW, AudioCodec::G711U) } else { (TONE_ALAW, AudioCodec::G711A) };
                    let mut next = tokio::time::Instant::now();
                    for i in 0usize.. {
                        let off = (i * 320) % tone.len();
                        let mut b = BytesMut::new();
                        media::write_audio(&mut b, codec, 8000, &tone[off..(off + 320).min(tone.len())]);
                        if !session.send(Packet::new(session.header(ids::TALK_PU_CU_DATA), b.freeze())).await {
                            return;
                        }
                        next += Duration::from_millis(40);
                        tokio::time::sleep_until(next).await;
                    }
                });
                self.start_task(s.id(), "talk", "", task.abort_handle());
                Self::reply_ok("OPTalk", s)
            }
            Some("Stop") => {
                self.stop_task(s.id(), "talk", "");
                Self::reply_ok("OPTalk", s)
            }
            _ => Self::reply_err("OPTalk", code::ILLEGAL_REQUEST, s),
        }
    }

    fn file_search(&self, s: &Session, q: &Value) -> Response {
        let from = q.get("BeginTime").and_then(Value::as_str).and_then(parse_query_time);
        let to = q.get("EndTime").and_then(Value::as_str).and_then(parse_query_time);
        let channel = q.get("Channel").and_then(Value::as_u64);
        let (Some(from), Some(to), Some(channel)) = (from, to, channel) else {
            return Self::reply_err("OPFileQuery", code::ILLEGAL_INPUT, s);
        };
        if q.get("Type").and_then(Value::as_str) == Some("jpg") {
            return Self::reply_err("OPFileQuery", code::NO_FILES, s);
        }
        let event = q.get("Event").and_then(Value::as_str).unwrap_or("*").to_owned();
        let st = self.st();
        let hits: Vec<&Recording> = st
            .recordings
            .iter()
            .filter(|r| r.channel as u64 == channel && r.end > from && r.begin < to)
            .filter(|r| event == "*" || event.contains(r.event))
            .collect();
        if hits.is_empty() {
            drop(st);
            return Self::reply_err("OPFileQuery", code::NO_FILES, s);
        }
        // At most 64 a reply; 111 says there is more.
        let page: Vec<Value> =
            hits.iter().take(64).map(|r| serde_json::to_value(r.entry()).unwrap_or(Value::Null)).collect();
        let ret = if hits.len() > 64 { code::SEARCH_PARTIAL } else { code::SEARCH_ALL };
        drop(st);
        Response::Json(reply("OPFileQuery", ret, s.id(), Some(Value::Array(page))))
    }

    fn log_search(&self, s: &Session, q: &Value) -> Response {
        let from = q.get("BeginTime").and_then(Value::as_str).and_then(parse_query_time);
        let to = q.get("EndTime").and_then(Value::as_str).and_then(parse_query_time);
        let (Some(from), Some(to)) = (from, to) else {
            return Self::reply_err("OPLogQuery", code::ILLEGAL_INPUT, s);
        };
        let pos = q.get("LogPosition").and_then(Value::as_u64).unwrap_or(0);
        let kind = q.get("Type").and_then(Value::as_str).unwrap_or("LogAll").to_owned();
        let st = self.st();
        let page: Vec<Value> = st
            .logs
            .iter()
            .filter(|e| e.position >= pos)
            .filter(|e| parse_time(&e.time).is_some_and(|t| t >= from && t <= to))
            .filter(|e| kind == "LogAll" || e.kind == kind)
            .take(64)
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
            .collect();
        drop(st);
        Response::Json(reply("OPLogQuery", code::OK, s.id(), Some(Value::Array(page))))
    }

    fn set_time(&self, s: &Session, name: &str, arg: &Value) -> Response {
        match arg.as_str().and_then(parse_time) {
            Some(t) => {
                self.st().clock_offset = t - now_local();
                self.log("SetTime", s.user(), &format_time(&t));
                Self::reply_ok(name, s)
            }
            None => Self::reply_err(name, code::ILLEGAL_INPUT, s),
        }
    }

    fn sysmanager(self: &Arc<Self>, s: &Session, name: &str, arg: &Value) -> Response {
        match name {
            "OPTimeSetting" => self.set_time(s, name, arg),
            "OPMachine" => {
                if arg.get("Action").and_then(Value::as_str) != Some("Reboot") {
                    return Self::reply_err(name, code::ILLEGAL_REQUEST, s);
                }
                if !self.allowed(s, "ShutDown") {
                    return Self::reply_err(name, code::NO_PERMISSION, s);
                }
                let me = self.clone();
                tokio::spawn(async move {
                    // Let the reply go out first.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    me.reboot();
                });
                Self::reply_ok(name, s)
            }
            "OPLogManager" => {
                if !self.allowed(s, "DelLog") {
                    return Self::reply_err(name, code::NO_PERMISSION, s);
                }
                self.st().logs.clear();
                self.log("ClearLog", s.user(), "");
                Self::reply_ok(name, s)
            }
            "OPDefaultConfig" => {
                if !self.allowed(s, "DefaultConfig") {
                    return Self::reply_err(name, code::NO_PERMISSION, s);
                }
                let groups: &[(&str, &[&str])] = &[
                    ("General", &["General"]),
                    ("Encode", &["Simplify"]),
                    ("Record", &["Record"]),
                    ("NetCommon", &["NetWork"]),
                    ("Alarm", &["Detect"]),
                    ("CommPtz", &["Uart"]),
                    ("Preview", &["fVideo", "AVEnc", "Camera"]),
                ];
                let mut st = self.st();
                for (flag, keys) in groups {
                    if arg.get(*flag) == Some(&Value::Bool(true)) {
                        for k in *keys {
                            let d = st.defaults[*k].clone();
                            st.config[*k] = d;
                        }
                    }
                }
                drop(st);
                self.log("SaveConfig", s.user(), "defaults restored");
                Self::reply_ok(name, s)
            }
            _ => Self::reply_err(name, code::ILLEGAL_REQUEST, s),
        }
    }

    fn accounts(&self, s: &Session, id: u16, name: &str, body: &Value, arg: &Value) -> Response {
        if !self.allowed(s, "Account") {
            return Self::reply_err(name, code::NO_PERMISSION, s);
        }
        let r = self.accounts_inner(s, id, body, arg);
        match r {
            Ok(()) => {
                self.log("SaveConfig", s.user(), &format!("accounts ({})", ids::name(id).unwrap_or("")));
                Self::reply_ok(name, s)
            }
            Err(ret) => Self::reply_err(name, ret, s),
        }
    }

    fn accounts_inner(&self, s: &Session, id: u16, body: &Value, arg: &Value) -> Result<(), i64> {
        let mut st = self.st();
        let auth_of =
            |v: &Value| -> Vec<String> { serde_json::from_value(v["AuthorityList"].clone()).unwrap_or_default() };
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        match id {
            ids::ADDGROUP_REQ => {
                let g = arg.get("Group").cloned().ok_or(code::ILLEGAL_INPUT)?;
                let gname = str_of(&g, "Name").filter(|n| !n.is_empty()).ok_or(code::ILLEGAL_INPUT)?;
                if st.groups.iter().any(|x| x["Name"] == gname) {
                    return Err(code::GROUP_EXISTS);
                }
                if auth_of(&g).iter().any(|a| !ALL_AUTHORITIES.contains(&a.as_str())) {
                    return Err(code::SUBSET_EXCEEDED);
                }
                st.groups.push(json!({"AuthorityList": auth_of(&g), "Memo": str_of(&g, "Memo").unwrap_or_default(), "Name": gname}));
            }
            ids::MODIFYGROUP_REQ => {
                let old = str_of(body, "GroupName").ok_or(code::ILLEGAL_INPUT)?;
                let g = body.get("Group").cloned().ok_or(code::ILLEGAL_INPUT)?;
                let i = st.groups.iter().position(|x| x["Name"] == old).ok_or(code::GROUP_MISSING)?;
                let new_name = str_of(&g, "Name").unwrap_or(old.clone());
                if new_name != old && st.groups.iter().any(|x| x["Name"] == new_name) {
                    return Err(code::GROUP_EXISTS);
                }
                st.groups[i] = json!({"AuthorityList": auth_of(&g), "Memo": str_of(&g, "Memo").unwrap_or_default(), "Name": new_name});
                for u in st.users.iter_mut().filter(|u| u["Group"] == old) {
                    u["Group"] = json!(new_name);
                }
            }
            ids::DELETEGROUP_REQ => {
                let gname = str_of(body, "Name").ok_or(code::ILLEGAL_INPUT)?;
                if gname == "admin" {
                    return Err(code::RESERVED_ACCOUNT);
                }
                let i = st.groups.iter().position(|x| x["Name"] == gname).ok_or(code::GROUP_MISSING)?;
                if st.users.iter().any(|u| u["Group"] == gname) {
                    return Err(code::ACCOUNT_IN_USE);
                }
                st.groups.remove(i);
            }
            ids::ADDUSER_REQ => {
                let u = arg.get("User").cloned().ok_or(code::ILLEGAL_INPUT)?;
                let uname = str_of(&u, "Name").filter(|n| !n.is_empty()).ok_or(code::ILLEGAL_INPUT)?;
                if st.users.iter().any(|x| x["Name"] == uname) {
                    return Err(code::USER_EXISTS);
                }
                let gname = str_of(&u, "Group").ok_or(code::ILLEGAL_INPUT)?;
                let g = st.groups.iter().find(|x| x["Name"] == gname).ok_or(code::GROUP_MISSING)?;
                let gauth = auth_of(g);
                if auth_of(&u).iter().any(|a| !gauth.contains(a)) {
                    return Err(code::SUBSET_EXCEEDED);
                }
                let pw = str_of(&u, "Password").unwrap_or_else(|| dvrip::sofia_hash(""));
                st.users.push(json!({
                    "AuthorityList": auth_of(&u), "Group": gname, "Memo": str_of(&u, "Memo").unwrap_or_default(), "Name": uname,
                    "Password": pw, "Reserved": false, "Sharable": u.get("Sharable").and_then(Value::as_bool).unwrap_or(true),
                }));
            }
            ids::MODIFYUSER_REQ => {
                let old = str_of(body, "UserName").ok_or(code::ILLEGAL_INPUT)?;
                let u = body.get("User").cloned().ok_or(code::ILLEGAL_INPUT)?;
                let i = st.users.iter().position(|x| x["Name"] == old).ok_or(code::USER_MISSING)?;
                let gname =
                    str_of(&u, "Group").unwrap_or_else(|| st.users[i]["Group"].as_str().unwrap_or("user").to_owned());
                let g = st.groups.iter().find(|x| x["Name"] == gname).ok_or(code::GROUP_MISSING)?;
                let gauth = auth_of(g);
                let auth = if u.get("AuthorityList").is_some() { auth_of(&u) } else { auth_of(&st.users[i]) };
                if auth.iter().any(|a| !gauth.contains(a)) {
                    return Err(code::SUBSET_EXCEEDED);
                }
                let new_name = str_of(&u, "Name").unwrap_or(old.clone());
                if new_name != old && st.users.iter().any(|x| x["Name"] == new_name) {
                    return Err(code::USER_EXISTS);
                }
                let user = &mut st.users[i];
                user["Name"] = json!(new_name);
                user["Group"] = json!(gname);
                user["AuthorityList"] = json!(auth);
                if let Some(m) = str_of(&u, "Memo") {
                    user["Memo"] = json!(m);
                }
                if let Some(sh) = u.get("Sharable").and_then(Value::as_bool) {
                    user["Sharable"] = json!(sh);
                }
            }
            ids::OPDELUSER_REQ => {
                let uname = str_of(body, "Name").ok_or(code::ILLEGAL_INPUT)?;
                let i = st.users.iter().position(|x| x["Name"] == uname).ok_or(code::USER_MISSING)?;
                if st.users[i]["Reserved"] == true || uname == s.user() {
                    return Err(code::RESERVED_ACCOUNT);
                }
                st.users.remove(i);
            }
            ids::MODIFYPASSWORD_REQ => {
                let uname = str_of(body, "UserName").ok_or(code::ILLEGAL_INPUT)?;
                let old = str_of(body, "PassWord").unwrap_or_default();
                let new = str_of(body, "NewPassWord").ok_or(code::ILLEGAL_INPUT)?;
                let plain =
                    body.get("EncryptType").and_then(Value::as_str).is_some_and(|e| e.eq_ignore_ascii_case("NONE"));
                let (old, new) = if plain { (dvrip::sofia_hash(&old), dvrip::sofia_hash(&new)) } else { (old, new) };
                let u = st.users.iter_mut().find(|x| x["Name"] == uname).ok_or(code::USER_MISSING)?;
                if u["Password"] != old.as_str() {
                    return Err(code::PASSWORD_INCORRECT);
                }
                u["Password"] = json!(new);
            }
            _ => return Err(code::ILLEGAL_REQUEST),
        }
        Ok(())
    }

    fn snapshot(&self, s: &Session, arg: &Value, req: Header) -> Response {
        let channel = arg.get("Channel").and_then(Value::as_u64).unwrap_or(0);
        if channel >= self.cfg.channels as u64 {
            return Response::Json(reply("OPSNAP", code::ILLEGAL_INPUT, s.id(), None));
        }
        let payload = if self.cfg.snapshot_raw {
            Bytes::from_static(SNAPSHOT_JPEG)
        } else {
            let mut b = BytesMut::new();
            media::write_picture(&mut b, 640, 360, &self.clock(), SNAPSHOT_JPEG);
            b.freeze()
        };
        // Several packets, as devices send pictures larger than a packet.
        let chunk = if self.cfg.snapshot_raw { payload.len() } else { 4096 };
        let n = payload.len().div_ceil(chunk);
        let packets = (0..n)
            .map(|i| {
                let mut h = Header::new(ids::NET_SNAP_RSP, s.id(), req.seq, 0);
                h.byte13 = (i + 1 == n) as u8;
                Packet::new(h, payload.slice(i * chunk..((i + 1) * chunk).min(payload.len())))
            })
            .collect();
        Response::Packets(packets)
    }

    fn stream_packets(&self, s: &Session, id: u16, seq: u32, data: Bytes) -> Response {
        let chunk = 16 * 1024;
        let n = data.len().div_ceil(chunk).max(1);
        let packets = (0..n)
            .map(|i| {
                let mut h = Header::new(id, s.id(), seq, 0);
                h.byte13 = (i + 1 == n) as u8;
                Packet::new(h, data.slice((i * chunk).min(data.len())..((i + 1) * chunk).min(data.len())))
            })
            .collect();
        Response::Packets(packets)
    }

    fn export_config(&self, s: &Session, req: Header) -> Response {
        if !self.allowed(s, "ImExport") {
            return Response::Json(reply("OPConfigExport", code::NO_PERMISSION, s.id(), None));
        }
        let st = self.st();
        let mut entries: Vec<(String, Vec<u8>)> = st
            .config
            .as_object()
            .map(|o| {
                o.iter().map(|(k, v)| (format!("{k}.json"), serde_json::to_vec_pretty(v).unwrap_or_default())).collect()
            })
            .unwrap_or_default();
        entries.push(("ChannelTitle.json".into(), serde_json::to_vec(&st.titles).unwrap_or_default()));
        drop(st);
        let archive = Bytes::from(zip::write(&entries));
        self.stream_packets(s, ids::CONFIG_EXPORT_RSP, req.seq, archive)
    }

    fn export_log(&self, s: &Session, req: Header) -> Response {
        let text: String = self
            .st()
            .logs
            .iter()
            .map(|e| format!("{} {} {} {} {}\n", e.position, e.time, e.kind, e.user, e.data))
            .collect();
        self.stream_packets(s, ids::LOG_EXPORT_RSP, req.seq, Bytes::from(text))
    }

    async fn binary(self: Arc<Self>, s: &Session, req: Request) -> Response {
        let h = req.header;
        let sid = s.id();
        match h.msg_id {
            ids::UPGRADE_DATA => {
                let mut st = self.st();
                let Some(up) = st.upgrades.get_mut(&sid) else {
                    drop(st);
                    return Self::reply_err("", code::UPGRADE_NOT_STARTED, s);
                };
                if h.end() {
                    let data = std::mem::take(&mut up.data);
                    st.upgrades.remove(&sid);
                    drop(st);
                    if data.is_empty() {
                        return Self::reply_err("", code::UPGRADE_DATA_ERROR, s);
                    }
                    let me = self.clone();
                    let session = s.clone();
                    let user = s.user().to_owned();
                    tokio::spawn(async move {
                        for pct in (0..=100).step_by(20) {
                            tokio::time::sleep(Duration::from_millis(60)).await;
                            let body = json!({"Name": "OPSystemUpgrade", "Ret": pct, "SessionID": format_session(session.id())});
                            session.send_json(ids::UPGRADE_PROGRESS, &body).await;
                        }
                        me.st().updated = format_time(&me.clock());
                        me.log("Upgrade", &user, &format!("{} bytes", data.len()));
                        let body = json!({"Name": "OPSystemUpgrade", "Ret": code::UPGRADE_OK, "SessionID": format_session(session.id())});
                        session.send_json(ids::UPGRADE_PROGRESS, &body).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        me.reboot();
                    });
                    return Self::reply_ok("", s);
                }
                if h.seq != up.next_block || up.data.len() + req.payload.len() > 64 << 20 {
                    st.upgrades.remove(&sid);
                    drop(st);
                    return Self::reply_err("", code::UPGRADE_DATA_ERROR, s);
                }
                up.next_block += 1;
                up.data.extend_from_slice(&req.payload);
                drop(st);
                Self::reply_ok("", s)
            }
            ids::CONFIG_IMPORT_REQ => {
                if !self.allowed(s, "ImExport") {
                    return Self::reply_err("OPConfigImport", code::NO_PERMISSION, s);
                }
                let mut st = self.st();
                let buf = st.imports.entry(sid).or_default();
                buf.extend_from_slice(&req.payload);
                if buf.len() > 1 << 20 {
                    st.imports.remove(&sid);
                    drop(st);
                    return Self::reply_err("OPConfigImport", code::CONFIG_PARSE, s);
                }
                if !h.end() {
                    return Response::Nothing;
                }
                let data = st.imports.remove(&sid).unwrap_or_default();
                let r = import(&mut st, &data);
                drop(st);
                match r {
                    Ok(()) => {
                        self.log("SaveConfig", s.user(), "configuration imported");
                        Self::reply_ok("OPConfigImport", s)
                    }
                    Err(e) => {
                        tracing::info!(session = sid, error = %e, "sim dvrip: import refused");
                        Self::reply_err("OPConfigImport", code::CONFIG_PARSE, s)
                    }
                }
            }
            ids::CONFIG_CHANNELTILE_DOT_SET => {
                let p = &req.payload;
                let ok = p.len() >= 16 && {
                    let w = u16::from_le_bytes([p[0], p[1]]) as usize;
                    let hgt = u16::from_le_bytes([p[2], p[3]]) as usize;
                    w > 0 && hgt > 0 && p.len() - 16 == (w * hgt).div_ceil(8)
                };
                if ok {
                    Self::reply_ok("", s)
                } else {
                    Self::reply_err("", code::ILLEGAL_INPUT, s)
                }
            }
            ids::TALK_CU_PU_DATA => {
                let mut d = media::Demuxer::new();
                d.feed(&req.payload);
                let mut n = 0;
                while let Some(f) = d.next_frame() {
                    if matches!(f.kind, media::FrameKind::Audio { .. }) {
                        n += f.payload.len() as u64;
                    }
                }
                self.st().talk_bytes += n;
                Response::Nothing
            }
            ids::RS232_TRANSPARENT_DATA_REQ | ids::RS485_TRANSPARENT_DATA_REQ => {
                // The attached serial device echoes back what it receives.
                let h2 = Header::new(h.msg_id, sid, s.next_seq(), 0);
                Response::Packets(vec![Packet::new(h2, req.payload)])
            }
            _ => Response::Nothing,
        }
    }

    /// Answers discovery (1530) and IP set (1532) on UDP until the socket
    /// fails.
    pub async fn discovery(self: Arc<Self>, sock: UdpSocket, tcp_port: u16) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
            let Some(h) = buf.get(..20).and_then(|b| Header::parse(b.try_into().ok()?)) else { continue };
            match h.msg_id {
                ids::IPSEARCH_REQ => {
                    let local = local_ip_towards(from).unwrap_or(Ipv4Addr::LOCALHOST);
                    let mut nc = {
                        let st = self.st();
                        tree::get(&st.config, "NetWork.NetCommon").cloned().unwrap_or(Value::Null)
                    };
                    nc["HostIP"] = json!(format_hex_ip(local));
                    nc["TCPPort"] = json!(tcp_port);
                    // The keys the `dvrip` package accepts (it refuses extras).
                    if let Some(o) = nc.as_object_mut() {
                        o.remove("BuildDate");
                    }
                    let body = json!({"NetWork.NetCommon": nc, "Ret": code::OK, "SessionID": "0x00000000"});
                    let d = dvrip::discovery::reply_datagram(ids::IPSEARCH_RSP, &body);
                    let _ = sock.send_to(&d, from).await;
                }
                ids::IP_SET_REQ => {
                    let end = (20 + h.len as usize).min(n);
                    let ret = match dvrip::json::parse_body(&buf[20..end]) {
                        Ok(v) => self.ip_set(&v),
                        Err(_) => code::MESSAGE_FORMAT,
                    };
                    let d = dvrip::discovery::reply_datagram(ids::IP_SET_RSP, &json!({"Ret": ret}));
                    let _ = sock.send_to(&d, from).await;
                }
                _ => {}
            }
        }
    }

    fn ip_set(&self, v: &Value) -> i64 {
        let user = v.get("UserName").and_then(Value::as_str).unwrap_or("");
        let pass = v.get("PassWord").and_then(Value::as_str).unwrap_or("");
        let mut st = self.st();
        let ok = st.users.iter().any(|u| u["Name"] == user && u["Password"] == pass && u["Group"] == "admin");
        if !ok {
            return code::BAD_CREDENTIALS;
        }
        let nc = v.get("NetWork.NetCommon").cloned().unwrap_or(Value::Null);
        if nc.get("MAC").and_then(Value::as_str)
            != tree::get(&st.config, "NetWork.NetCommon.MAC").ok().and_then(Value::as_str)
        {
            return code::ILLEGAL_INPUT;
        }
        let mut update = serde_json::Map::new();
        for k in ["HostIP", "Submask", "GateWay"] {
            match nc.get(k).and_then(Value::as_str) {
                Some(x) if parse_hex_ip(x).is_some() => {
                    update.insert(k.into(), json!(x));
                }
                Some(_) => return code::ILLEGAL_INPUT,
                None => {}
            }
        }
        match tree::set(&mut st.config, "NetWork.NetCommon", Value::Object(update)) {
            Ok(()) => code::OK,
            Err(e) => e.ret,
        }
    }
}

/// `{"Name": name, "Ret": ret, "SessionID": …, name: data}` and the trailer,
/// serialised without building a reply object.
fn reply_body(name: &str, ret: i64, session: u32, data: &Value) -> Bytes {
    use bytes::BufMut;
    let mut b = BytesMut::with_capacity(256);
    let mut w = (&mut b).writer();
    let name_json = Value::String(name.to_owned());
    // Writing JSON into memory cannot fail.
    let _ =
        write!(w, "{{\"Name\":{name_json},\"Ret\":{ret},\"SessionID\":\"{}\",{name_json}:", format_session(session));
    let _ = serde_json::to_writer(&mut w, data);
    b.put_slice(b"}\n\0");
    b.freeze()
}

/// A second-socket claim may still be attaching when Start arrives on the
/// control connection: give it up to a second.
async fn wait_for_data_channel(session: &Session, claim: &str) {
    for _ in 0..50 {
        if session.has_data_channel(claim) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn import(st: &mut State, data: &[u8]) -> Result<(), String> {
    let entries = zip::read(data)?;
    let mut config = st.config.clone();
    let mut titles = st.titles.clone();
    for (name, body) in entries {
        let key = name.strip_suffix(".json").ok_or_else(|| format!("entry {name:?} is not a .json file"))?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{name}: {e}"))?;
        if key == "ChannelTitle" {
            let t: Vec<String> = serde_json::from_value(v).map_err(|e| format!("{name}: {e}"))?;
            if t.len() != titles.len() {
                return Err(format!("{name}: {} titles for {} channels", t.len(), titles.len()));
            }
            titles = t;
        } else {
            tree::set(&mut config, key, v).map_err(|e| e.message)?;
        }
    }
    st.config = config;
    st.titles = titles;
    Ok(())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn codec_of(c: ClipCodec) -> media::VideoCodec {
    match c {
        ClipCodec::H264 => media::VideoCodec::H264,
        ClipCodec::H265 => media::VideoCodec::H265,
    }
}

fn local_ip_towards(peer: SocketAddr) -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    s.connect(peer).ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

fn system_function() -> Value {
    json!({
        "AlarmFunction": {"AlarmConfig": true, "BlindDetect": true, "HumanDection": true, "LossDetect": true, "MotionDetect": true, "NetAlarm": true, "NetIpConflict": true, "StorageFailure": true, "StorageLowSpace": true, "StorageNotExist": true},
        "CommFunction": {"CommRS232": true, "CommRS485": true},
        "EncodeFunction": {"DoubleStream": true, "SmartH264": true, "SmartH264V2": false, "SnapStream": true},
        "InputMethod": {"NoSupportChinese": true},
        "NetServerFunction": {"NetAlarmCenter": true, "NetDHCP": true, "NetDNS": true, "NetNTP": true, "NetUPNP": false},
        "OtherFunction": {"SupportNetLocalSearch": true, "SupportPTZTour": true, "SupportTimeZone": true, "SupportSetDigIP": false, "SupportOnvifClient": false},
        "PreviewFunction": {"GUISet": false, "Tour": true, "Talk": true},
        "TipShow": {"NoBeepTipShow": true},
    })
}

impl Device for DvripSim {
    fn login(&self, req: &LoginRequest, peer: SocketAddr) -> Result<LoginGrant, i64> {
        let plain = dvrip::Encryption::parse(&req.encrypt_type);
        let Some(enc) = plain else {
            return Err(code::ILLEGAL_REQUEST);
        };
        let hash = match enc {
            dvrip::Encryption::Md5 => req.password.clone(),
            dvrip::Encryption::None => dvrip::sofia_hash(&req.password),
        };
        let mut st = self.st();
        let now = Instant::now();
        let entry = st.failures.entry(req.user.clone()).or_insert((0, None));
        if let Some(until) = entry.1 {
            if now < until {
                return Err(code::USER_LOCKED);
            }
            *entry = (0, None);
        }
        let user = st.users.iter().find(|u| u["Name"] == req.user.as_str()).cloned();
        let result = match user {
            // Unknown user: 204 "illegal user" (seed 000 and the `dvrip`
            // package agree; seed 001 says 205).
            None => Err(code::ILLEGAL_USER),
            Some(u) if u["Password"] != hash.as_str() => Err(code::PASSWORD_INCORRECT),
            Some(_) => Ok(()),
        };
        match result {
            Ok(()) => {
                st.failures.remove(&req.user);
                drop(st);
                self.log("LogIn", &req.user, &format!("{} from {}", req.login_type, peer.ip()));
                Ok(LoginGrant {
                    channels: self.cfg.channels,
                    extra_channels: 0,
                    device_type: self.cfg.device_type.clone(),
                })
            }
            Err(ret) => {
                let entry = st.failures.entry(req.user.clone()).or_insert((0, None));
                entry.0 += 1;
                if entry.0 >= self.cfg.lock_after {
                    entry.1 = Some(now + self.cfg.lock_for);
                }
                Err(ret)
            }
        }
    }

    fn handle(self: &Arc<Self>, session: &Session, req: Request) -> impl std::future::Future<Output = Response> + Send {
        let me = self.clone();
        let s = session.clone();
        async move { me.dispatch(s, req).await }
    }

    fn session_closed(&self, session: &Session) {
        let mut st = self.st();
        let id = session.id();
        st.guarded.remove(&id);
        st.upgrades.remove(&id);
        st.imports.remove(&id);
        st.play_speed.remove(&id);
        st.claims.retain(|(s, _, _), _| *s != id);
        let keys: Vec<_> = st.tasks.keys().filter(|(s, _, _)| *s == id).cloned().collect();
        for k in keys {
            if let Some(t) = st.tasks.remove(&k) {
                t.abort();
            }
        }
    }
}

/// A running simulator: its address and its device.
pub struct Running {
    pub addr: SocketAddr,
    pub discovery_addr: Option<SocketAddr>,
    pub sim: Arc<DvripSim>,
    pub server: Arc<Server<DvripSim>>,
}

/// Starts the simulator: TCP on `listen`, discovery on UDP `discovery`
/// (if it can be bound), scheduled alarms. Returns once listening.
pub async fn start(cfg: SimConfig, listen: SocketAddr, discovery: Option<SocketAddr>) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let sim = DvripSim::new(cfg.clone());
    let server =
        Server::new(sim.clone(), ServerConfig { alive_interval: cfg.alive_interval, ..ServerConfig::default() });
    let _ = sim.server.set(Arc::downgrade(&server));
    let srv = server.clone();
    let dev = sim.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { return };
            if dev.rebooting() {
                // Rebooting: the device is not there.
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let srv = srv.clone();
            tokio::spawn(async move { srv.serve_connection(stream, peer).await });
        }
    });
    let mut discovery_addr = None;
    if let Some(d) = discovery {
        match UdpSocket::bind(d).await {
            Ok(sock) => {
                // Some devices (and clients) use the multicast group too.
                if d.ip().is_unspecified() {
                    if let Err(e) = sock.join_multicast_v4(dvrip::discovery::MULTICAST, Ipv4Addr::UNSPECIFIED) {
                        tracing::debug!(error = %e, "sim dvrip: multicast discovery not joined");
                    }
                }
                discovery_addr = sock.local_addr().ok();
                tokio::spawn(sim.clone().discovery(sock, addr.port()));
            }
            Err(e) => tracing::warn!(addr = %d, error = %e, "sim dvrip: discovery responder not started"),
        }
    }
    if let Some(every) = cfg.alarm_every {
        let dev = sim.clone();
        tokio::spawn(async move {
            let mut ch = 0;
            loop {
                tokio::time::sleep(every).await;
                dev.raise_alarm(ch, "VideoMotion", true).await;
                let d = dev.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    d.raise_alarm(ch, "VideoMotion", false).await;
                });
                ch = (ch + 1) % dev.cfg.channels.max(1);
            }
        });
    }
    Ok(Running { addr, discovery_addr, sim, server })
}
