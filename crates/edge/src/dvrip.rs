//! `dvrip://` channels: Xiongmai/XMeye cameras, DVRs and NVRs.
//!
//! One [`DvripDevice`] per device (host, port, user): one logged-in control
//! connection shared by all of its channels, kept alive by the client, and
//! a supervisor that logs in again with backoff and jitter when the device
//! goes away (its channels are offline meanwhile), subscribes to alarms
//! (1500 guard, 1504 pushes) and turns them into alarm bits and AlarmNotify.
//! Live video is the monitor stream (1413 claim / 1410 start / 1412 data)
//! on a second socket per stream (the vendor's way; one login, many
//! streams), through [`crate::live`]. How each IVT method maps is in
//! docs/edge.md.

use crate::backend::{AlarmEvent, BoxFuture, ChannelBackend};
use crate::device::{DeviceAlarms, DeviceChannel};
use crate::live::{FrameSource, Live, Opened, Opener};
use crate::source::{DvripSource, StreamKind};
use dvrip::client::{Client, ClientConfig, SocketMode};
use dvrip::messages::{PtzCommand, StreamType};
use ivr_media::demux::{DemuxError, Demuxed};
use ivr_media::{Codec, Frame};
use ivr_rpc::catalogue::{ChannelState, DetectConfig, IvtEvent, IvtRequest, RtmpPublishConfig};
use ivr_rpc::net::Dialer;
use ivr_rpc::{codes, RpcError};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// A kind of DVRIP media ivr does not carry (e.g. `MPEG4 video`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotCarried(pub String);

/// A DVRIP frame as a `Frame` (the adapter between the protocol crate and
/// the media engine): H.264/H.265 video and G.711 audio, timed by the
/// demuxer (video by frame count at the device's fps, audio by samples:
/// monotonic whatever the device clock does). `Err` names what is not
/// carried; pictures and info frames are `Ok(None)`.
pub fn frame(f: &dvrip::media::MediaFrame) -> Result<Option<Frame>, NotCarried> {
    use dvrip::media::{AudioCodec, FrameKind, VideoCodec};
    let codec = match f.kind {
        FrameKind::Video { codec: VideoCodec::H264, .. } => Codec::H264,
        FrameKind::Video { codec: VideoCodec::H265, .. } => Codec::H265,
        FrameKind::Audio { codec: AudioCodec::G711A, .. } => Codec::G711A,
        FrameKind::Audio { codec: AudioCodec::G711U, .. } => Codec::G711U,
        FrameKind::Picture { .. } | FrameKind::Info { .. } => return Ok(None),
        FrameKind::Video { codec, .. } => return Err(NotCarried(format!("{} video", codec.name()))),
        FrameKind::Audio { codec, .. } => return Err(NotCarried(format!("{} audio", codec.name()))),
    };
    let t = (f.pts.as_nanos() * 9 / 100_000) as u64;
    let keyframe = if codec.is_video() { f.is_keyframe() } else { true };
    Ok(Some(Frame { codec, keyframe, pts: t, dts: t, data: f.payload.clone() }))
}

/// Whether a file is captured DVRIP media (what `ivr dvrip download
/// --format raw` writes and XMeye's own `.h264` files hold), told by its
/// first bytes (a DVRIP frame header), whatever its name.
pub fn is_capture(head: &[u8]) -> bool {
    head.len() >= 4 && head[..3] == [0, 0, 1] && (0xf9..=0xfe).contains(&head[3]) && head[3] != 0xfb
}

/// Reads captured DVRIP media: its frames, and what was left out (pictures
/// and info frames, resynchronised bytes with their offsets, a torn last
/// frame).
pub fn read_capture(b: &bytes::Bytes) -> Result<Demuxed, DemuxError> {
    let mut d = Demuxed::default();
    let mut m = dvrip::media::Demuxer::new();
    m.feed(b);
    let mut other = 0;
    while let Some(f) = m.next_frame() {
        match frame(&f) {
            Ok(Some(fr)) => d.frames.push(fr),
            Ok(None) => other += 1,
            Err(what) => {
                let why = format!("{what}: not carried");
                if !d.skipped.contains(&why) {
                    d.skipped.push(why);
                }
            }
        }
    }
    for r in m.take_resyncs() {
        d.skipped.push(format!("{} bytes at byte {}: {}", r.bytes, r.offset, r.reason));
    }
    if other > 0 {
        d.skipped.push(format!("{other} picture/info frame(s) of the device"));
    }
    if m.pending() > 0 {
        d.skipped.push(format!("{} bytes at the end are an incomplete frame", m.pending()));
    }
    d.checked("DVRIP media")
}

/// One DVRIP device and its connection.
pub struct DvripDevice {
    addr: String,
    user: String,
    client: Client,
    online: AtomicBool,
    /// Channels the device reports (login reply).
    channels: AtomicU32,
    /// Alarm bits and video loss per device channel.
    alarms: Arc<DeviceAlarms>,
    last_error: Mutex<Option<String>>,
    /// The last PTZ movement per channel (DVRIP stops a movement by
    /// sending the same command with Preset -1).
    moving: Mutex<HashMap<u32, PtzCommand>>,
    supervisor: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for DvripDevice {
    fn drop(&mut self) {
        if let Some(t) = self.supervisor.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

/// An alarm of the device as an IVT alarm bit: 3 motion, 4 trip-wire or
/// intrusion (human detection), 2 external input. `None`: not an alarm
/// the cloud knows (video loss is the channel's state, not a bit).
pub fn alarm_bit(event: &str) -> Option<u8> {
    let e = event.to_ascii_lowercase();
    if e == "videomotion" {
        Some(3)
    } else if e.contains("human") || e.contains("intrusion") || e.contains("tripwire") || e.contains("crossline") {
        Some(4)
    } else if matches!(e.as_str(), "localio" | "netalarm" | "ipcalarm" | "alarmin") {
        Some(2)
    } else {
        None
    }
}

impl DvripDevice {
    /// Starts the device's supervisor (inside a tokio runtime).
    pub fn start(src: &DvripSource) -> Arc<DvripDevice> {
        let mut cfg = ClientConfig::new(src.addr(), src.user.clone(), src.password.clone());
        cfg.timeout = Duration::from_secs(8);
        let dev = Arc::new(DvripDevice {
            addr: src.addr(),
            user: src.user.clone(),
            client: Client::new(cfg),
            online: AtomicBool::new(false),
            channels: AtomicU32::new(0),
            alarms: Arc::default(),
            last_error: Mutex::default(),
            moving: Mutex::default(),
            supervisor: Mutex::default(),
        });
        let weak = Arc::downgrade(&dev);
        let t = tokio::spawn(async move { supervise(weak).await });
        *dev.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.abort_handle());
        dev
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    /// Channels the device reported at login (0 before).
    pub fn channel_count(&self) -> u32 {
        self.channels.load(Ordering::SeqCst)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refused(&self, what: &str, e: dvrip::client::Error) -> RpcError {
        RpcError::new(codes::INTERNAL, format!("DVRIP device {}: {what}: {e}", self.addr))
    }

    /// The device's IP, when its address is one (alarm-center pushes are
    /// matched to devices by it).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
    }

    /// An alarm from a guarded login (1504) or the alarm center (1508).
    /// A device may report one event both ways: only a change counts.
    pub fn alarm(&self, info: &dvrip::messages::AlarmInfo) {
        let on = info.status.eq_ignore_ascii_case("start");
        let ch = info.channel;
        if info.event.eq_ignore_ascii_case("videoloss") {
            if self.alarms.video_loss(ch, on) {
                tracing::info!(device = %self.addr, channel = ch, on, "DVRIP video loss");
            }
            return;
        }
        let Some(bit) = alarm_bit(&info.event) else {
            tracing::debug!(device = %self.addr, event = %info.event, "DVRIP alarm not carried to the cloud");
            return;
        };
        let desc = format!("{} {} (DVRIP device {})", info.event, info.status.to_ascii_lowercase(), self.addr);
        self.alarms.raise(ch, bit, on, desc);
    }
}

/// Logs in, guards, follows alarms; when the connection drops, marks the
/// device offline and logs in again (backoff with full jitter).
async fn supervise(weak: std::sync::Weak<DvripDevice>) {
    let mut backoff = crate::agent::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut said: Option<String> = None;
    loop {
        let Some(dev) = weak.upgrade() else { return };
        match dev.client.login_info().await {
            Ok(login) => {
                backoff.reset();
                said = None;
                let n = login.channels.max(1) + login.extra_channels;
                dev.channels.store(n, Ordering::SeqCst);
                *dev.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                dev.online.store(true, Ordering::SeqCst);
                tracing::info!(device = %dev.addr, user = %dev.user, channels = n, kind = %login.device_type, "DVRIP device connected");
                let mut rx = dev.client.alarms();
                if let Err(e) = dev.client.guard().await {
                    tracing::warn!(device = %dev.addr, "DVRIP alarms not subscribed: {e}");
                }
                let client = dev.client.clone();
                let w = Arc::downgrade(&dev);
                drop(dev);
                loop {
                    tokio::select! {
                        a = rx.recv() => match (a, w.upgrade()) {
                            (Ok(a), Some(d)) => d.alarm(&a),
                            (Err(broadcast::error::RecvError::Lagged(_)), _) => {}
                            _ => return,
                        },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {
                            if !client.is_connected().await {
                                break;
                            }
                        }
                    }
                }
                let Some(dev) = weak.upgrade() else { return };
                dev.online.store(false, Ordering::SeqCst);
                dev.alarms.clear();
                let why = "the device closed the connection".to_owned();
                tracing::warn!(device = %dev.addr, "DVRIP device offline: {why}; logging in again");
                *dev.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
            Err(e) => {
                dev.online.store(false, Ordering::SeqCst);
                let why = e.to_string();
                if said.as_deref() != Some(why.as_str()) {
                    tracing::warn!(device = %dev.addr, "DVRIP device unreachable: {why}");
                    said = Some(why.clone());
                }
                *dev.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
        }
        tokio::time::sleep(backoff.next_wait().max(Duration::from_millis(250))).await;
    }
}

/// The DVRIP alarm center (1508 pushes, `[devices] alarm_center`): each
/// push goes to the device it came from (by the connection's address, else
/// the `Address` it states); pushes from unknown devices are logged.
pub fn serve_alarm_center(listener: tokio::net::TcpListener, devices: Vec<Arc<DvripDevice>>) {
    let (tx, mut rx) = mpsc::channel::<dvrip::alarm_center::Push>(256);
    let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(addr = %at, "DVRIP alarm center listening");
    tokio::spawn(async move {
        if let Err(e) = dvrip::alarm_center::serve(listener, tx).await {
            tracing::warn!(addr = %at, "DVRIP alarm center stopped: {e}");
        }
    });
    tokio::spawn(async move {
        let mut unknown = HashSet::new();
        while let Some(p) = rx.recv().await {
            let stated = dvrip::json::parse_hex_ip(&p.message.address).map(std::net::IpAddr::V4);
            let dev = devices
                .iter()
                .find(|d| d.ip() == Some(p.from.ip()))
                .or_else(|| devices.iter().find(|d| stated.is_some() && d.ip() == stated));
            match dev {
                Some(d) => d.alarm(&dvrip::messages::AlarmInfo {
                    channel: p.message.channel,
                    event: p.message.event.clone(),
                    start_time: p.message.start_time.clone(),
                    status: p.message.status.clone(),
                }),
                None => {
                    if unknown.insert(p.from.ip()) {
                        tracing::warn!(from = %p.from, address = %p.message.address, "alarm-center push from a device that is not a channel source; ignored");
                    }
                }
            }
        }
    });
}

/// Opens a channel's live view (1413 claim, 1410 start, 1412 media) on
/// `client` whenever the feed asks: `kind` picks the main or extra stream.
/// A frame ivr cannot carry (MPEG-4 video, ADPCM audio) ends the feed with
/// an error naming it.
pub fn monitor_opener(client: Client, channel: u32, mode: SocketMode) -> Opener {
    Arc::new(move |kind| {
        let client = client.clone();
        Box::pin(async move {
            let st = if kind == StreamKind::Main { StreamType::Main } else { StreamType::Extra };
            let addr = client.config().addr.clone();
            let s = client.monitor(channel, st, mode).await.map_err(|e| format!("live view: {e}"))?;
            Ok(Box::new(Monitor { s, addr }) as Opened)
        })
    })
}

/// A live view as a frame source (dropping it sends the device Stop).
struct Monitor {
    s: dvrip::client::MediaStream,
    addr: String,
}

impl FrameSource for Monitor {
    fn next_frame(&mut self) -> BoxFuture<'_, Option<Result<Frame, String>>> {
        Box::pin(async move {
            loop {
                let f = self.s.next_frame().await?;
                match frame(&f) {
                    Ok(Some(fr)) => return Some(Ok(fr)),
                    Ok(None) => continue,
                    Err(what) => {
                        return Some(Err(format!("{}: the device sends {what}, which ivr does not carry", self.addr)))
                    }
                }
            }
        })
    }
}

/// One channel of a DVRIP device.
pub struct DvripChannel {
    core: DeviceChannel,
    dev: Arc<DvripDevice>,
}

impl std::ops::Deref for DvripChannel {
    type Target = DeviceChannel;
    fn deref(&self) -> &DeviceChannel {
        &self.core
    }
}

impl DvripChannel {
    /// IVT channel `channel` = the device's channel `src.channel`.
    pub fn new(channel: u32, src: &DvripSource, dev: Arc<DvripDevice>, dialer: Dialer) -> DvripChannel {
        let pinned = (src.stream == StreamKind::Extra).then_some(StreamKind::Extra);
        let name = format!("dvrip {} channel {}", src.addr(), src.channel);
        // A second socket per stream: one login, many streams at once.
        let live = Live::new(name, monitor_opener(dev.client.clone(), src.channel, SocketMode::Second), pinned, dialer);
        DvripChannel { core: DeviceChannel::new(channel, src.channel, dev.alarms.clone(), live), dev }
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    fn offline_err(&self) -> RpcError {
        let why = self.dev.last_error().unwrap_or_else(|| "not connected yet".into());
        RpcError::new(codes::INTERNAL, format!("DVRIP device {} is offline: {why}", self.dev.addr))
    }

    async fn detect(&self, d: &DetectConfig, intrusion: bool) -> Result<Value, RpcError> {
        let path = format!("Detect.MotionDetect.[{}]", self.dev_channel);
        let mut set = json!({
            "Enable": d.enable,
            "Level": level(d.sensitivity),
            "EventHandler": {"EventLatch": d.delay.clamp(1, 600), "TimeSection": time_sections(d.start, d.end)},
        });
        if intrusion {
            if let Some(r) = d.rect {
                set["Region"] = json!(region(&r));
            }
        }
        let c = self.dev.client();
        c.config_set(&path, set.clone()).await.map_err(|e| self.dev.refused(&format!("setting {path}"), e))?;
        // Read back: a device that accepted but did not apply is a refusal.
        let got = c.config_get(&path).await.map_err(|e| self.dev.refused(&format!("reading {path} back"), e))?;
        for k in ["Enable", "Level", "Region"] {
            if set.get(k).is_some() && got.get(k) != set.get(k) {
                return Err(RpcError::new(
                    codes::INTERNAL,
                    format!(
                        "DVRIP device {}: {path}.{k} reads back {} after setting {}",
                        self.dev.addr, got[k], set[k]
                    ),
                ));
            }
        }
        Ok(json!({}))
    }

    async fn net_config(&self) -> Result<Value, RpcError> {
        let c = self.dev.client();
        let nc = c.config_get("NetWork.NetCommon").await.map_err(|e| self.dev.refused("NetWork.NetCommon", e))?;
        let dns = c.config_get("NetWork.NetDNS").await.unwrap_or(Value::Null);
        let dhcp = c.config_get("NetWork.NetDHCP").await.unwrap_or(Value::Null);
        let ip = |v: &Value| v.as_str().and_then(dvrip::json::parse_hex_ip).map(|i| i.to_string()).unwrap_or_default();
        Ok(json!([{
            "name": "eth0",
            "ip": ip(&nc["HostIP"]),
            "gateway": ip(&nc["GateWay"]),
            "netmask": ip(&nc["Submask"]),
            "dns1": ip(&dns["Address"]),
            "dns2": ip(&dns["SpareAddress"]),
            "mac": nc["MAC"].as_str().unwrap_or(""),
            "dhcp": dhcp[0]["Enable"].as_bool().unwrap_or(false),
        }]))
    }

    async fn ptz_list(&self, tours: bool) -> Result<Value, RpcError> {
        let path = format!("Uart.{}.[{}]", if tours { "PTZTour" } else { "PTZPreset" }, self.dev_channel);
        let v = self.dev.client().config_get(&path).await.map_err(|e| self.dev.refused(&path, e))?;
        let items = v.as_array().cloned().unwrap_or_default();
        Ok(Value::Array(
            items
                .iter()
                .filter_map(|p| {
                    let id = p["Id"].as_i64()?;
                    let name = p["Name"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{id}"));
                    Some(json!({"name": name, "token": id.to_string()}))
                })
                .collect(),
        ))
    }
}

/// IVT sensitivity 0–100 → XMeye level 1 (lowest) to 6.
pub fn level(sensitivity: u8) -> u8 {
    1 + (sensitivity.min(100) as u32 * 5 / 100) as u8
}

fn hms(s: u32) -> String {
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The arming window (seconds after midnight; start > end crosses
/// midnight) as XMeye time sections: 7 days × 6 sections, "1 from-to" on.
pub fn time_sections(start: u32, end: u32) -> Vec<Vec<String>> {
    let off = "0 00:00:00-24:00:00".to_owned();
    let mut day = if start <= end {
        vec![format!("1 {}-{}", hms(start), hms(end))]
    } else {
        vec![format!("1 00:00:00-{}", hms(end)), format!("1 {}-24:00:00", hms(start))]
    };
    day.resize(6, off);
    vec![day; 7]
}

/// The trip-wire rectangle (corners in percent) as XMeye's motion region:
/// 18 rows of 22 cells, one hex mask per row.
pub fn region(r: &[u8; 8]) -> Vec<String> {
    let [ulx, uly, urx, ury, dlx, dly, drx, dry] = r.map(|v| v.min(100) as u32);
    let (x0, x1) = (ulx.min(dlx), urx.max(drx).max(ulx.min(dlx)));
    let (y0, y1) = (uly.min(ury), dly.max(dry).max(uly.min(ury)));
    let (c0, c1) = (x0 * 22 / 100, (x1 * 22).div_ceil(100).clamp(x0 * 22 / 100 + 1, 22));
    let (r0, r1) = (y0 * 18 / 100, (y1 * 18).div_ceil(100).clamp(y0 * 18 / 100 + 1, 18));
    let mask: u32 = (c0.min(21)..c1).fold(0, |m, c| m | 1 << c);
    (0..18).map(|row| format!("0x{:08X}", if (r0..r1).contains(&row) { mask } else { 0 })).collect()
}

/// IVT CtrlPTZ op → DVRIP command (`None`: stop).
fn ptz_command(op: &str) -> Option<Option<PtzCommand>> {
    Some(Some(match op {
        "up" => PtzCommand::Up,
        "down" => PtzCommand::Down,
        "left" => PtzCommand::Left,
        "right" => PtzCommand::Right,
        "upleft" => PtzCommand::LeftUp,
        "upright" => PtzCommand::RightUp,
        "downleft" => PtzCommand::LeftDown,
        "downright" => PtzCommand::RightDown,
        "zoomin" => PtzCommand::ZoomTile,
        "zoomout" => PtzCommand::ZoomWide,
        "focusnear" => PtzCommand::FocusNear,
        "focusfar" => PtzCommand::FocusFar,
        "irisopen" => PtzCommand::IrisLarge,
        "irisclose" => PtzCommand::IrisSmall,
        "stop" => return Some(None),
        _ => return None,
    }))
}

/// IVT speed 0–100 → DVRIP step 1–8.
fn step(speed: u8) -> u32 {
    1 + (speed.min(100) as u32 * 7 / 100)
}

impl ChannelBackend for DvripChannel {
    fn channel(&self) -> u32 {
        self.channel
    }

    fn state(&self) -> ChannelState {
        self.core.state(self.dev.online())
    }

    fn record_session(&self) -> Option<String> {
        self.live.record_session()
    }

    fn alarm_bits(&self) -> u32 {
        self.alarms.bits(self.dev_channel)
    }

    fn request<'a>(&'a self, req: &'a IvtRequest) -> BoxFuture<'a, Result<Value, RpcError>> {
        Box::pin(async move {
            // Stopping needs no device; everything else does.
            if let Some(v) = self.core.stop(req) {
                return Ok(v);
            }
            if !self.dev.online() {
                return Err(self.offline_err());
            }
            match req {
                IvtRequest::RtmpPublish(p) => self.live.publish(p).await,
                IvtRequest::StartCloudRecord(r) => self.live.record(r).await,
                IvtRequest::RebootChannel { .. } => {
                    self.dev.client().reboot().await.map_err(|e| self.dev.refused("reboot", e))?;
                    self.dev.online.store(false, Ordering::SeqCst);
                    Ok(json!({}))
                }
                IvtRequest::GetPtzPresetList { .. } => self.ptz_list(false).await,
                IvtRequest::GetPtzPresetTourList { .. } => self.ptz_list(true).await,
                IvtRequest::AlarmMoveDetectConfig(d) => self.detect(d, false).await,
                IvtRequest::AlarmRectIntrusionDetectConfig(d) => self.detect(d, true).await,
                IvtRequest::GetNetConfig { .. } => self.net_config().await,
                IvtRequest::RtmpStopPublish { .. }
                | IvtRequest::StopCloudRecord { .. }
                | IvtRequest::GetRtmpPublishConfig
                | IvtRequest::SetRtmpPublishConfig(_) => Ok(json!({})), // answered by `stop` above
            }
        })
    }

    fn event<'a>(&'a self, ev: &'a IvtEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let c = self.dev.client();
            let ch = self.dev_channel;
            let r = match ev {
                IvtEvent::SyncTime { datetime, offset } => match c.time().await {
                    Ok(Some(now)) if (now - *datetime).num_seconds().unsigned_abs() <= *offset as u64 => Ok(()),
                    Ok(_) => c.set_time(datetime).await,
                    Err(e) => Err(e),
                },
                IvtEvent::CtrlPtz { op, speed, .. } => match ptz_command(op) {
                    Some(Some(cmd)) => {
                        self.dev.moving.lock().unwrap_or_else(|e| e.into_inner()).insert(ch, cmd);
                        c.ptz(cmd, ch, step(*speed), 0, 0).await
                    }
                    Some(None) => {
                        let last = self.dev.moving.lock().unwrap_or_else(|e| e.into_inner()).remove(&ch);
                        c.ptz_stop(last.unwrap_or(PtzCommand::Up), ch).await
                    }
                    None => {
                        tracing::warn!(channel = self.channel, op, "CtrlPTZ: DVRIP has no such movement");
                        Ok(())
                    }
                },
                IvtEvent::GotoPtzPreset { token, .. } => match token.parse::<i64>() {
                    Ok(n) => c.ptz(PtzCommand::GotoPreset, ch, 5, n, 0).await,
                    Err(_) => {
                        tracing::warn!(channel = self.channel, token, "GotoPTZPreset: DVRIP presets are numbers");
                        Ok(())
                    }
                },
                IvtEvent::CtrlPtzPresetTour { token, start, .. } => {
                    let tour = token.parse::<u32>().unwrap_or(1);
                    let cmd = if *start { PtzCommand::StartTour } else { PtzCommand::StopTour };
                    c.ptz(cmd, ch, 5, 0, tour).await
                }
                IvtEvent::CtrlPtzPatrol { .. } => {
                    tracing::warn!(channel = self.channel, "CtrlPTZPatrol: DVRIP has no patrol command; ignored");
                    Ok(())
                }
                IvtEvent::UpgradeFirmware => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(channel = self.channel, device = %self.dev.addr, "{}: {e}", ev.name());
            }
        })
    }

    fn publish_config(&self) -> RtmpPublishConfig {
        self.core.publish_config()
    }

    fn set_publish_config(&self, c: &RtmpPublishConfig) {
        self.core.set_publish_config(c)
    }

    fn snapshot(&self) -> BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            if !self.dev.online() {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(10), self.dev.client().snapshot(self.dev_channel)).await {
                Ok(Ok(jpeg)) => Some(jpeg.to_vec()),
                Ok(Err(e)) => {
                    tracing::warn!(channel = self.channel, "snapshot: {e}");
                    None
                }
                Err(_) => {
                    tracing::warn!(channel = self.channel, device = %self.dev.addr, "snapshot: no picture within 10 s");
                    None
                }
            }
        })
    }

    fn set_alarm(&self, bit: u8, on: bool) {
        self.alarms.set(self.dev_channel, bit, on);
    }

    fn alarm_events(&self) -> Option<broadcast::Receiver<AlarmEvent>> {
        Some(self.alarms.subscribe(self.dev_channel, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!((level(0), level(50), level(100)), (1, 3, 6));
        assert_eq!((step(0), step(100)), (1, 8));
        let t = time_sections(8 * 3600, 18 * 3600);
        assert_eq!(t.len(), 7);
        assert_eq!(t[0][0], "1 08:00:00-18:00:00");
        assert_eq!(t[0][5], "0 00:00:00-24:00:00");
        let t = time_sections(22 * 3600, 6 * 3600);
        assert_eq!(&t[3][..2], &["1 00:00:00-06:00:00".to_owned(), "1 22:00:00-24:00:00".to_owned()]);
        let full = region(&[0, 0, 100, 0, 0, 100, 100, 100]);
        assert!(full.iter().all(|r| r == "0x003FFFFF"), "{full:?}");
        let half = region(&[50, 0, 100, 0, 50, 50, 100, 50]);
        assert_eq!(half[0], "0x003FF800");
        assert_eq!((half[8].as_str(), half[9].as_str()), ("0x003FF800", "0x00000000"));
        assert_eq!(alarm_bit("VideoMotion"), Some(3));
        assert_eq!(alarm_bit("HumanDetect"), Some(4));
        assert_eq!(alarm_bit("LocalIO"), Some(2));
        assert_eq!(alarm_bit("StorageLowSpace"), None);
    }
}
