//! The channel backend trait, and the simulated channel (`source = "sim"`);
//! the device backends are in [`crate::dvrip`] and [`crate::cvip`].

use chrono::{Duration as Span, Local, NaiveDateTime};
use ivr_rpc::catalogue::{ChannelState, DetectConfig, IvtEvent, IvtRequest, Quality, RtmpPublishConfig};
use ivr_rpc::{codes, RpcError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A boxed future: the backends' calls are async (a device answers over
/// the network) and the agent holds them as trait objects.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An alarm a device raised or cleared on a channel (IVR RPC AlarmNotify
/// `type`: 2 external input, 3 motion, 4 trip-wire/intrusion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmEvent {
    pub bit: u8,
    pub on: bool,
    /// What the device said, for the event's `desc`.
    pub desc: String,
}

/// One channel, whatever drives it.
pub trait ChannelBackend: Send + Sync + 'static {
    fn channel(&self) -> u32;
    /// For Keepalive: offline, online or live.
    fn state(&self) -> ChannelState;
    /// For Keepalive: the running StartCloudRecord session.
    fn record_session(&self) -> Option<String>;
    /// For Keepalive: alarm bits (2 external, 3 motion, 4 trip-wire).
    fn alarm_bits(&self) -> u32;
    /// A channel's request (every IVT method but the RTMP publish config,
    /// which the agent gathers across channels).
    fn request<'a>(&'a self, req: &'a IvtRequest) -> BoxFuture<'a, Result<Value, RpcError>>;
    fn event<'a>(&'a self, ev: &'a IvtEvent) -> BoxFuture<'a, ()>;
    fn publish_config(&self) -> RtmpPublishConfig;
    fn set_publish_config(&self, c: &RtmpPublishConfig);
    /// A JPEG of the channel now (alarm pictures, previews).
    fn snapshot(&self) -> BoxFuture<'_, Option<Vec<u8>>>;
    /// Raises or clears an alarm bit (2 external, 3 motion, 4 trip-wire).
    fn set_alarm(&self, bit: u8, on: bool);
    /// Alarms the device raises by itself (the agent sends AlarmNotify with
    /// a picture for each); `None` for a channel without any.
    fn alarm_events(&self) -> Option<tokio::sync::broadcast::Receiver<AlarmEvent>> {
        None
    }
}

/// The fixture snapshot the simulated channels show.
pub use ivr_fixtures::SNAPSHOT_JPEG as SIM_JPEG;

/// What a simulated channel's stream of each quality runs at (bit/s).
pub fn bitrate(q: Quality) -> u64 {
    match q {
        Quality::Ld => 256_000,
        Quality::Sd => 512_000,
        Quality::Hd => 2_000_000,
        Quality::Fhd => 4_000_000,
    }
}

/// PTZ state of a simulated channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ptz {
    /// The CtrlPTZ op in progress (`None` when stopped) and its speed.
    pub moving: Option<(String, u8)>,
    /// The preset the camera went to last.
    pub at_preset: Option<String>,
    pub touring: Option<String>,
    pub patrolling: bool,
}

#[derive(Debug)]
struct SimState {
    ptz: Ptz,
    motion: DetectConfig,
    intrusion: DetectConfig,
    publish_config: RtmpPublishConfig,
    /// stream_id → (quality, url, the publishing task)
    publishing: HashMap<String, (Quality, String, Option<tokio::task::AbortHandle>)>,
    recording: Option<(String, Option<crate::record::Recording>)>,
    offline_until: Option<Instant>,
    clock_offset: Span,
    alarm_bits: u32,
}

/// A simulated camera channel that keeps its state and answers with the
/// seed's semantics (already publishing is success, stopping an unknown
/// stream or session is success, bitrate above the limit is error 11).
pub struct SimChannel {
    channel: u32,
    reboot_time: Duration,
    /// For recording uploads (the cloud's trust and local address).
    dialer: ivr_rpc::net::Dialer,
    st: Mutex<SimState>,
}

/// Publishes the channel's video (the fixture clip of the quality at its
/// bitrate, looped at 25 fps as a camera sends it) to `url` until aborted; a publication
/// that breaks is reconnected (`rtmp::publish_loop`). `None` outside a
/// tokio runtime.
fn publish(channel: u32, q: Quality, url: String, stream_id: String) -> Option<tokio::task::AbortHandle> {
    use ivr_media::{hub::Hub, ticks, Frame};
    let rt = tokio::runtime::Handle::try_current().ok()?;
    Some(
        rt.spawn(async move {
            let clip = crate::record::clip(q);
            let hub = Hub::new(64, 8 << 20);
            let sub = hub.subscribe();
            let u = url.clone();
            tokio::spawn(async move {
                let st = ivr_media::rtmp::publish_loop(
                    sub,
                    &u,
                    25,
                    Duration::from_secs(30),
                    |e| tracing::warn!(channel, stream_id = %stream_id, "{e}"),
                )
                .await;
                tracing::info!(channel, url = %u, frames = st.frames, reconnects = st.reconnects, "publication ended");
            });
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            for i in 0u64.. {
                tick.tick().await;
                let f = &clip[(i % clip.len() as u64) as usize];
                let t = ticks(i, 25);
                hub.publish(Frame { pts: t, dts: t, ..f.clone() });
            }
        })
        .abort_handle(),
    )
}

impl Drop for SimChannel {
    fn drop(&mut self) {
        if let Ok(mut st) = self.st.lock() {
            if let Some((_, Some(r))) = st.recording.take() {
                r.abort();
            }
            for (_, (_, _, t)) in st.publishing.drain() {
                if let Some(t) = t {
                    t.abort();
                }
            }
        }
    }
}

pub const PRESETS: [(&str, &str); 3] = [("Gate", "1"), ("Yard", "2"), ("Door", "3")];
pub const TOURS: [(&str, &str); 1] = [("Perimeter", "t1")];

impl SimChannel {
    pub fn new(channel: u32) -> SimChannel {
        let detect =
            DetectConfig { channel, enable: false, start: 0, end: 86400, sensitivity: 50, delay: 10, rect: None };
        SimChannel {
            channel,
            reboot_time: Duration::from_secs(5),
            dialer: ivr_rpc::net::Dialer::default(),
            st: Mutex::new(SimState {
                ptz: Ptz::default(),
                motion: detect.clone(),
                intrusion: DetectConfig { rect: Some([10, 10, 90, 10, 10, 90, 90, 90]), ..detect },
                publish_config: RtmpPublishConfig { enable: false, channel, quality: Quality::Hd, url: String::new() },
                publishing: HashMap::new(),
                recording: None,
                offline_until: None,
                clock_offset: Span::zero(),
                alarm_bits: 0,
            }),
        }
    }

    /// How recordings reach the upload URLs (the agent's trust and bind).
    pub fn with_dialer(mut self, d: ivr_rpc::net::Dialer) -> SimChannel {
        self.dialer = d;
        self
    }

    /// The running recording's upload figures.
    pub fn record_stats(&self) -> Option<crate::record::RecordStats> {
        let st = self.st();
        let (_, r) = st.recording.as_ref()?;
        r.as_ref().map(|r| r.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    pub fn with_reboot_time(mut self, d: Duration) -> SimChannel {
        self.reboot_time = d;
        self
    }

    fn st(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.st.lock().expect("sim channel lock")
    }

    pub fn ptz(&self) -> Ptz {
        self.st().ptz.clone()
    }
    pub fn motion(&self) -> DetectConfig {
        self.st().motion.clone()
    }
    pub fn intrusion(&self) -> DetectConfig {
        self.st().intrusion.clone()
    }
    pub fn clock(&self) -> NaiveDateTime {
        Local::now().naive_local() + self.st().clock_offset
    }
    pub fn publishing(&self) -> Vec<String> {
        self.st().publishing.keys().cloned().collect()
    }
    fn check_bitrate(q: Quality, max: u64) -> Result<(), RpcError> {
        if max != 0 && bitrate(q) > max {
            return Err(RpcError::new(
                codes::BITRATE_TOO_LARGE,
                format!("the {} stream runs at {} bit/s, above max_bitrate {max}", q.as_str(), bitrate(q)),
            ));
        }
        Ok(())
    }
}

impl ChannelBackend for SimChannel {
    fn channel(&self) -> u32 {
        self.channel
    }

    fn state(&self) -> ChannelState {
        let st = self.st();
        if st.offline_until.is_some_and(|t| Instant::now() < t) {
            ChannelState::Offline
        } else if !st.publishing.is_empty() {
            ChannelState::Live
        } else {
            ChannelState::Online
        }
    }

    fn record_session(&self) -> Option<String> {
        self.st().recording.as_ref().map(|r| r.0.clone())
    }

    fn alarm_bits(&self) -> u32 {
        self.st().alarm_bits
    }

    fn request<'a>(&'a self, req: &'a IvtRequest) -> BoxFuture<'a, Result<Value, RpcError>> {
        let r = self.request_now(req);
        Box::pin(async move { r })
    }

    fn event<'a>(&'a self, ev: &'a IvtEvent) -> BoxFuture<'a, ()> {
        self.event_now(ev);
        Box::pin(async {})
    }

    fn publish_config(&self) -> RtmpPublishConfig {
        self.st().publish_config.clone()
    }

    fn set_publish_config(&self, c: &RtmpPublishConfig) {
        self.st().publish_config = c.clone();
    }

    fn snapshot(&self) -> BoxFuture<'_, Option<Vec<u8>>> {
        let jpeg = (self.state() != ChannelState::Offline).then(|| SIM_JPEG.to_vec());
        Box::pin(async move { jpeg })
    }

    fn set_alarm(&self, bit: u8, on: bool) {
        let mut st = self.st();
        if on {
            st.alarm_bits |= 1 << bit;
        } else {
            st.alarm_bits &= !(1 << bit);
        }
    }
}

impl SimChannel {
    /// A request, answered at once (the simulated camera is in memory).
    pub fn request_now(&self, req: &IvtRequest) -> Result<Value, RpcError> {
        if self.state() == ChannelState::Offline && !matches!(req, IvtRequest::RebootChannel { .. }) {
            return Err(RpcError::new(codes::INTERNAL, format!("channel {} is rebooting", self.channel)));
        }
        let mut st = self.st();
        match req {
            IvtRequest::RtmpPublish(p) => {
                if st.publishing.contains_key(&p.stream_id) {
                    return Ok(json!({}));
                }
                Self::check_bitrate(p.quality, p.max_bitrate)?;
                if let Err(e) = ivr_media::rtmp::parse_url(&p.url) {
                    return Err(RpcError::new(codes::INTERNAL, format!("params.url: {e}")));
                }
                let task = publish(self.channel, p.quality, p.url.clone(), p.stream_id.clone());
                st.publishing.insert(p.stream_id.clone(), (p.quality, p.url.clone(), task));
                Ok(json!({}))
            }
            IvtRequest::RtmpStopPublish { stream_id, .. } => {
                if let Some((_, _, Some(t))) = st.publishing.remove(stream_id) {
                    t.abort();
                }
                Ok(json!({}))
            }
            IvtRequest::StartCloudRecord(r) => {
                if st.recording.as_ref().is_some_and(|x| x.0 == r.session_id) {
                    return Ok(json!({}));
                }
                Self::check_bitrate(r.quality, r.max_bitrate)?;
                if !r.cbk_url.starts_with("http://") && !r.cbk_url.starts_with("https://") {
                    return Err(RpcError::new(codes::INTERNAL, "params.cbk_url: expected an http:// or https:// URL"));
                }
                // One recording a channel: a new session replaces the old.
                if let Some((_, Some(old))) = st.recording.take() {
                    old.stop();
                }
                let rec = crate::record::start(r, self.dialer.clone());
                st.recording = Some((r.session_id.clone(), rec));
                Ok(json!({}))
            }
            IvtRequest::StopCloudRecord { session_id, .. } => {
                if st.recording.as_ref().is_some_and(|x| &x.0 == session_id) {
                    if let Some((_, Some(r))) = st.recording.take() {
                        r.stop();
                    }
                }
                Ok(json!({}))
            }
            IvtRequest::RebootChannel { .. } => {
                if let Some((_, Some(r))) = st.recording.take() {
                    r.abort();
                }
                for (_, (_, _, t)) in st.publishing.drain() {
                    if let Some(t) = t {
                        t.abort();
                    }
                }
                st.ptz = Ptz::default();
                st.offline_until = Some(Instant::now() + self.reboot_time);
                Ok(json!({}))
            }
            IvtRequest::GetPtzPresetList { .. } => {
                Ok(Value::Array(PRESETS.iter().map(|(n, t)| json!({"name": n, "token": t})).collect()))
            }
            IvtRequest::GetPtzPresetTourList { .. } => {
                Ok(Value::Array(TOURS.iter().map(|(n, t)| json!({"name": n, "token": t})).collect()))
            }
            IvtRequest::AlarmMoveDetectConfig(d) => {
                st.motion = d.clone();
                Ok(json!({}))
            }
            IvtRequest::AlarmRectIntrusionDetectConfig(d) => {
                let rect = d.rect.or(st.intrusion.rect);
                st.intrusion = DetectConfig { rect, ..d.clone() };
                Ok(json!({}))
            }
            IvtRequest::GetNetConfig { .. } => Ok(json!([{
                "name": "eth0", "ip": "192.168.1.64", "gateway": "192.168.1.1", "netmask": "255.255.255.0",
                "dns1": "192.168.1.1", "dns2": "8.8.8.8", "mac": format!("02:00:00:00:00:{:02x}", self.channel & 0xFF), "dhcp": false,
            }])),
            IvtRequest::GetRtmpPublishConfig | IvtRequest::SetRtmpPublishConfig(_) => {
                Err(RpcError::new(codes::INTERNAL, "publish config is per device, not per channel"))
            }
        }
    }

    /// An event, applied at once.
    pub fn event_now(&self, ev: &IvtEvent) {
        let mut st = self.st();
        match ev {
            IvtEvent::SyncTime { datetime, offset } => {
                let now = Local::now().naive_local() + st.clock_offset;
                if (now - *datetime).num_seconds().unsigned_abs() > *offset as u64 {
                    st.clock_offset = *datetime - Local::now().naive_local();
                }
            }
            IvtEvent::CtrlPtz { op, speed, .. } => {
                st.ptz.moving = if op == "stop" { None } else { Some((op.clone(), *speed)) };
                st.ptz.patrolling = false;
            }
            IvtEvent::GotoPtzPreset { token, .. } => {
                if PRESETS.iter().any(|(_, t)| t == token) {
                    st.ptz.moving = None;
                    st.ptz.at_preset = Some(token.clone());
                } else {
                    tracing::info!(channel = self.channel, token, "edge sim: no such preset");
                }
            }
            IvtEvent::CtrlPtzPresetTour { token, start, .. } => {
                st.ptz.touring =
                    if *start && TOURS.iter().any(|(_, t)| t == token) { Some(token.clone()) } else { None };
            }
            IvtEvent::CtrlPtzPatrol { start, .. } => st.ptz.patrolling = *start,
            IvtEvent::UpgradeFirmware => {}
        }
    }
}
