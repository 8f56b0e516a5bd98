//! `cvip://` channels: CVIPv2 cameras, encoders and NVRs.
//!
//! One [`CvipDevice`] per unit (host, port): one connection shared by all
//! of its video inputs, subscribed to external-input, motion and video-loss
//! events (`cviEvent.subscribe`, pushes as `cviEvent.notify`), kept alive
//! with a cheap `cviUnit.getProperties` every 10 s, and reconnected with
//! backoff and jitter when the unit goes away. Live video is a
//! `cviStream.create` session sending RTP over TCP (RFC 4571) to a port the
//! edge opens for it, depacketized by the media engine
//! (`ivr_media::rtp`). CVIP has no snapshot, reboot, clock or preset-list
//! method: those answer an error naming the unit (docs/edge.md).

use crate::backend::{AlarmEvent, BoxFuture, ChannelBackend};
use crate::device::{DeviceAlarms, DeviceChannel};
use crate::live::{FrameSource, Live, Opened, Opener};
use crate::source::{CvipSource, StreamKind};
use cvip::client::Client;
use cvip::{Struct, Value as XValue};
use ivr_media::Codec;
use ivr_rpc::catalogue::{ChannelState, DetectConfig, IvtEvent, IvtRequest, RtmpPublishConfig};
use ivr_rpc::net::Dialer;
use ivr_rpc::{codes, RpcError};
use serde_json::{json, Value};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// CVIP event types (seed 002, cviEvent).
const EXTERNAL: u32 = 0x02;
const MOTION: u32 = 0x04;
const VIDEO_LOSS: u32 = 0x08;

/// One CVIP unit and its connection.
pub struct CvipDevice {
    addr: String,
    /// Our client GUID in the unit's session tables.
    guid: String,
    client: Mutex<Option<Client>>,
    online: AtomicBool,
    /// Alarm bits and video loss per input.
    alarms: Arc<DeviceAlarms>,
    last_error: Mutex<Option<String>>,
    supervisor: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for CvipDevice {
    fn drop(&mut self) {
        if let Some(t) = self.supervisor.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

impl CvipDevice {
    /// Starts the unit's supervisor (inside a tokio runtime).
    pub fn start(src: &CvipSource) -> Arc<CvipDevice> {
        let dev = Arc::new(CvipDevice {
            addr: src.addr(),
            guid: format!("ivr-edge-{:08x}", std::process::id()),
            client: Mutex::default(),
            online: AtomicBool::new(false),
            alarms: Arc::default(),
            last_error: Mutex::default(),
            supervisor: Mutex::default(),
        });
        let weak = Arc::downgrade(&dev);
        let t = tokio::spawn(supervise(weak));
        *dev.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.abort_handle());
        dev
    }

    pub fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current connection, or why there is none.
    fn client(&self) -> Result<Client, RpcError> {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| {
            let why = self.last_error().unwrap_or_else(|| "not connected yet".into());
            RpcError::new(codes::INTERNAL, format!("CVIP unit {} is offline: {why}", self.addr))
        })
    }

    fn refused(&self, e: cvip::client::Error) -> RpcError {
        RpcError::new(codes::INTERNAL, format!("CVIP unit {}: {e}", self.addr))
    }

    fn notify(&self, s: &Struct) {
        let (Some(ty), Some(id)) = (s.int("Type"), s.int("Id")) else { return };
        let (ty, ch) = (ty as u32, id as u32);
        let on = s.int("info").unwrap_or(1) != 0;
        if ty & VIDEO_LOSS != 0 && self.alarms.video_loss(ch, on) {
            tracing::info!(unit = %self.addr, input = ch, on, "CVIP video loss");
        }
        for (mask, bit, what) in [(MOTION, 3u8, "motion"), (EXTERNAL, 2, "external input")] {
            if ty & mask != 0 {
                let state = if on { "start" } else { "end" };
                let desc = format!("{what} {state} (CVIP unit {}, input {ch})", self.addr);
                self.alarms.raise(ch, bit, on, desc);
            }
        }
    }
}

/// Connects, subscribes to events and follows them; when the connection
/// drops or stops answering, marks the unit offline and connects again.
async fn supervise(weak: std::sync::Weak<CvipDevice>) {
    let mut backoff = crate::agent::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut said: Option<String> = None;
    loop {
        let Some(dev) = weak.upgrade() else { return };
        let addr = dev.addr.clone();
        let connected = async {
            let (mut c, events) = tokio::time::timeout(Duration::from_secs(5), Client::connect(&addr))
                .await
                .map_err(|_| format!("cannot connect to {addr}: no answer within 5 s"))?
                .map_err(|e| e.to_string())?;
            c.set_timeout(Duration::from_secs(8));
            let d = c.system_describe().await.map_err(|e| e.to_string())?;
            c.event_subscribe(MOTION | EXTERNAL | VIDEO_LOSS, 0).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((c, events, d))
        }
        .await;
        match connected {
            Ok((c, mut events, describe)) => {
                backoff.reset();
                said = None;
                *dev.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                *dev.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                dev.online.store(true, Ordering::SeqCst);
                tracing::info!(unit = %addr, name = %describe.name, "CVIP unit connected");
                let w = Arc::downgrade(&dev);
                drop(dev);
                let why = loop {
                    tokio::select! {
                        e = events.recv() => match (e, w.upgrade()) {
                            (Some(p), Some(d)) => {
                                if p.method.eq_ignore_ascii_case("cviEvent.notify") {
                                    if let Some(s) = p.params.first().and_then(XValue::as_struct) {
                                        d.notify(s);
                                    }
                                }
                            }
                            (None, _) => break "the unit closed the connection".to_owned(),
                            (_, None) => return,
                        },
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {
                            if let Err(e) = c.get_properties("cviUnit", &["unitUpTime"]).await {
                                break format!("keep-alive: {e}");
                            }
                        }
                    }
                };
                let Some(dev) = weak.upgrade() else { return };
                dev.online.store(false, Ordering::SeqCst);
                *dev.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
                dev.alarms.clear();
                tracing::warn!(unit = %addr, "CVIP unit offline: {why}; connecting again");
                *dev.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
            Err(why) => {
                dev.online.store(false, Ordering::SeqCst);
                if said.as_deref() != Some(why.as_str()) {
                    tracing::warn!(unit = %addr, "CVIP unit unreachable: {why}");
                    said = Some(why.clone());
                }
                *dev.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
        }
        tokio::time::sleep(backoff.next_wait().max(Duration::from_millis(250))).await;
    }
}

/// The unit's stream session, deleted when dropped.
struct StreamSession {
    client: Client,
    guid: String,
    id: u32,
}

impl Drop for StreamSession {
    fn drop(&mut self) {
        let (c, g, id) = (self.client.clone(), self.guid.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = c.stream_delete(&g, id).await;
            });
        }
    }
}

/// RTP over TCP from the unit, depacketized as it is read.
struct RtpStream {
    sock: tokio::net::TcpStream,
    framing: ivr_media::rtp::Rfc4571,
    depack: ivr_media::rtp::Depacketizer,
    buf: Vec<u8>,
    unit: String,
    input: u32,
    _session: StreamSession,
}

impl FrameSource for RtpStream {
    fn next_frame(&mut self) -> BoxFuture<'_, Option<Result<ivr_media::Frame, String>>> {
        Box::pin(async move {
            loop {
                if let Some(f) = self.depack.next_frame() {
                    return Some(Ok(f));
                }
                let n = match self.sock.read(&mut self.buf).await {
                    Ok(0) | Err(_) => {
                        let d = &self.depack;
                        if d.bad > 0 || d.lost > 0 {
                            tracing::info!(unit = %self.unit, input = self.input, lost = d.lost, bad = d.bad, "CVIP stream ended");
                        }
                        return None;
                    }
                    Ok(n) => n,
                };
                self.framing.feed(&self.buf[..n]);
                while let Some(p) = self.framing.next_packet() {
                    self.depack.push(&p);
                }
            }
        })
    }
}

/// The codec of an encoder (`videoEncoderCompression` of cviVideo.NN.M).
async fn encoder_codec(c: &Client, input: u32, minor: u32) -> Codec {
    let svc = format!("cviVideo.{input:02}.{minor}");
    match c.get_properties(&svc, &["videoEncoderCompression"]).await {
        Ok(s) if s.str("videoEncoderCompression").is_some_and(|v| v.eq_ignore_ascii_case("H265")) => Codec::H265,
        _ => Codec::H264,
    }
}

/// Opens input `input`'s stream: a cviStream session sending RTP over TCP
/// to a port opened for it on the address the unit sees us at.
fn opener(dev: Arc<CvipDevice>, input: u32) -> Opener {
    Arc::new(move |kind| {
        let dev = dev.clone();
        Box::pin(async move {
            let c = dev.client().map_err(|e| e.msg)?;
            let minor = if kind == StreamKind::Main { 1 } else { 2 };
            let codec = encoder_codec(&c, input, minor).await;
            let l = tokio::net::TcpListener::bind((c.local.ip(), 0)).await.map_err(|e| format!("listening: {e}"))?;
            let me = l.local_addr().map_err(|e| e.to_string())?;
            let s = cvip::api::StreamSession {
                guid: dev.guid.clone(),
                major: input,
                minor,
                dest_ip: me.ip().to_string(),
                dest_port: me.port() as u32,
                dest_transport: "tcp".into(),
                ..Default::default()
            };
            let id = c.stream_create(&s).await.map_err(|e| format!("cviStream.create: {e}"))?.stream_id;
            let accepted = tokio::time::timeout(Duration::from_secs(10), l.accept()).await;
            let (sock, _) = match accepted {
                Ok(Ok(x)) => x,
                other => {
                    let _ = c.stream_delete(&dev.guid, id).await;
                    return Err(match other {
                        Ok(Err(e)) => format!("stream {id}: {e}"),
                        _ => format!("stream {id}: the unit did not connect to {me} within 10 s"),
                    });
                }
            };
            Ok(Box::new(RtpStream {
                sock,
                framing: ivr_media::rtp::Rfc4571::default(),
                depack: ivr_media::rtp::Depacketizer::new(codec),
                buf: vec![0u8; 64 * 1024],
                unit: dev.addr.clone(),
                input,
                _session: StreamSession { client: c, guid: dev.guid.clone(), id },
            }) as Opened)
        })
    })
}

/// One video input of a CVIP unit.
pub struct CvipChannel {
    core: DeviceChannel,
    dev: Arc<CvipDevice>,
}

impl std::ops::Deref for CvipChannel {
    type Target = DeviceChannel;
    fn deref(&self) -> &DeviceChannel {
        &self.core
    }
}

impl CvipChannel {
    /// IVT channel `channel` = the unit's input `src.input`.
    pub fn new(channel: u32, src: &CvipSource, dev: Arc<CvipDevice>, dialer: Dialer) -> CvipChannel {
        let pinned = (src.stream == StreamKind::Extra).then_some(StreamKind::Extra);
        let name = format!("cvip {} input {}", src.addr(), src.input);
        let live = Live::new(name, opener(dev.clone(), src.input), pinned, dialer);
        CvipChannel { core: DeviceChannel::new(channel, src.input, dev.alarms.clone(), live), dev }
    }

    fn cannot(&self, what: &str) -> RpcError {
        RpcError::new(codes::INTERNAL, format!("CVIP unit {}: {what}", self.dev.addr))
    }

    async fn detect(&self, d: &DetectConfig, intrusion: bool) -> Result<Value, RpcError> {
        if d.start != 0 || d.end != 86400 {
            return Err(self.cannot("has no arming schedule for motion detection (seed 002); use start 0, end 86400"));
        }
        let c = self.dev.client()?;
        let svc = format!("cviMotionDetection.{}", self.dev_channel);
        let mut set = Struct::new()
            .with("motiondetectionEnable", d.enable as u32)
            .with("motiondetectionSensitivity", d.sensitivity.min(100) as u32);
        if intrusion {
            if let Some(r) = d.rect {
                set.push("motiondetectionStringRMA", region_mask(&r));
            }
        }
        c.set_properties(&svc, set.clone()).await.map_err(|e| self.dev.refused(e))?;
        let ids: Vec<&str> = set.iter().map(|(k, _)| k).collect();
        let got = c.get_properties(&svc, &ids).await.map_err(|e| self.dev.refused(e))?;
        for (k, v) in set.iter() {
            let back = got.get(k).map(XValue::to_text);
            if back.as_deref() != Some(v.to_text().as_str()) {
                return Err(self.cannot(&format!("{svc}.{k} reads back {back:?} after setting {}", v.to_text())));
            }
        }
        Ok(json!({}))
    }

    async fn net_config(&self) -> Result<Value, RpcError> {
        let c = self.dev.client()?;
        let common = c.get_properties("cviNetwork", &[]).await.map_err(|e| self.dev.refused(e))?;
        let port = c.get_properties("cviNetwork.1", &[]).await.map_err(|e| self.dev.refused(e))?;
        let s = |st: &Struct, k: &str| st.str(k).unwrap_or_default();
        Ok(json!([{
            "name": s(&common, "unitNetworkName"),
            "ip": s(&port, "networkIpAddress"),
            "gateway": s(&common, "networkGateway"),
            "netmask": s(&port, "networkSubnetMask"),
            "dns1": s(&common, "networkDnsServer1"),
            "dns2": s(&common, "networkDnsServer2"),
            "mac": "",
            "dhcp": port.int("networkUseDhcp").unwrap_or(0) != 0,
        }]))
    }
}

/// The trip-wire rectangle as a CVIP region mask: 16 rows × 16 columns,
/// one 16-bit hex word per row (ivr's reading of motiondetectionStringRMA).
pub fn region_mask(r: &[u8; 8]) -> String {
    let [ulx, uly, urx, ury, dlx, dly, drx, dry] = r.map(|v| v.min(100) as u32);
    let (x0, x1) = (ulx.min(dlx), urx.max(drx));
    let (y0, y1) = (uly.min(ury), dly.max(dry));
    let cells = |a: u32, b: u32| (a * 16 / 100, (b * 16).div_ceil(100).clamp(a * 16 / 100 + 1, 16));
    let ((c0, c1), (r0, r1)) = (cells(x0, x1.max(x0)), cells(y0, y1.max(y0)));
    let mask: u32 = (c0.min(15)..c1).fold(0, |m, c| m | 1 << (15 - c));
    (0..16).map(|row| format!("{:04X}", if (r0..r1).contains(&row) { mask } else { 0 })).collect()
}

/// CVIP PTZ speed: ±1–16.
fn speed(s: u8) -> i32 {
    1 + (s.min(100) as i32 * 15 / 100)
}

/// IVT CtrlPTZ op → (CmdType, CmdData sign) for cviPtz.cmd.
fn ptz_cmd(op: &str) -> Option<(cvip::api::PtzCmdType, i32)> {
    use cvip::api::PtzCmdType as T;
    Some(match op {
        "up" => (T::Tilt, 1),
        "down" => (T::Tilt, -1),
        "left" => (T::Pan, -1),
        "right" => (T::Pan, 1),
        "upleft" => (T::LeftUpRightDown, 1),
        "downright" => (T::LeftUpRightDown, -1),
        "upright" => (T::RightUpLeftDown, 1),
        "downleft" => (T::RightUpLeftDown, -1),
        "zoomin" => (T::Zoom, 1),
        "zoomout" => (T::Zoom, -1),
        "stop" => (T::Stop, 0),
        _ => return None,
    })
}

/// A keyframe as JPEG, by Debian's ffmpeg when it is installed (CVIP has
/// no snapshot method; the picture comes from the stream).
async fn jpeg_of(codec: Codec, keyframe: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncWriteExt;
    let fmt = if codec == Codec::H265 { "hevc" } else { "h264" };
    let mut p = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", fmt, "-i", "pipe:0", "-frames:v", "1", "-f", "image2", "-c:v", "mjpeg", "pipe:1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("ffmpeg (for a picture from the stream): {e}"))?;
    let mut stdin = p.stdin.take().ok_or("ffmpeg: no stdin")?;
    let data = keyframe.to_vec();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&data).await;
    });
    let out = tokio::time::timeout(Duration::from_secs(10), p.wait_with_output())
        .await
        .map_err(|_| "ffmpeg: no picture within 10 s".to_owned())?
        .map_err(|e| format!("ffmpeg: {e}"))?;
    let _ = feed.await;
    if !out.status.success() || !out.stdout.starts_with(&[0xFF, 0xD8]) {
        return Err(format!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

impl ChannelBackend for CvipChannel {
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
            // Stopping needs no unit; everything else does.
            if let Some(v) = self.core.stop(req) {
                return Ok(v);
            }
            self.dev.client()?;
            match req {
                IvtRequest::RtmpPublish(p) => self.live.publish(p).await,
                IvtRequest::StartCloudRecord(r) => self.live.record(r).await,
                IvtRequest::RebootChannel { .. } => Err(self.cannot("CVIPv2 has no reboot method (seed 002)")),
                IvtRequest::GetPtzPresetList { .. } => {
                    Err(self.cannot("CVIPv2 cannot list PTZ presets (seed 002 has set and go to only)"))
                }
                IvtRequest::GetPtzPresetTourList { .. } => Err(self.cannot("CVIPv2 has no PTZ tours (seed 002)")),
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
            let cmd = |ty: cvip::api::PtzCmdType, data: i32| cvip::api::PtzCommand {
                guid: self.dev.guid.clone(),
                ptz_id: self.dev_channel,
                phy_addr: self.dev_channel,
                user_priority: 1,
                cmd_type: ty.code(),
                cmd_data: data,
            };
            let c = match self.dev.client() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(channel = self.channel, "{}", e.msg);
                    return;
                }
            };
            let r = match ev {
                IvtEvent::CtrlPtz { op, speed: s, .. } => match ptz_cmd(op) {
                    Some((ty, sign)) => c.ptz_cmd(&cmd(ty, sign * speed(*s))).await,
                    None => {
                        tracing::warn!(channel = self.channel, op, "CtrlPTZ: CVIPv2 has no such movement");
                        Ok(())
                    }
                },
                IvtEvent::GotoPtzPreset { token, .. } => match token.parse::<i32>() {
                    Ok(n) => c.ptz_cmd(&cmd(cvip::api::PtzCmdType::GotoPreset, n)).await,
                    Err(_) => {
                        tracing::warn!(channel = self.channel, token, "GotoPTZPreset: CVIP presets are numbers");
                        Ok(())
                    }
                },
                IvtEvent::SyncTime { .. } => {
                    tracing::info!(
                        unit = %self.dev.addr,
                        "SyncTime: CVIPv2 has no clock setting (seed 002); the unit keeps its NTP server"
                    );
                    Ok(())
                }
                IvtEvent::CtrlPtzPresetTour { .. } | IvtEvent::CtrlPtzPatrol { .. } => {
                    tracing::warn!(channel = self.channel, "CVIPv2 has no PTZ tours or patrols (seed 002); ignored");
                    Ok(())
                }
                IvtEvent::UpgradeFirmware => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(channel = self.channel, unit = %self.dev.addr, "{e}");
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
            let f = self.live.keyframe(Duration::from_secs(10)).await?;
            match jpeg_of(f.codec, &f.data).await {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!(channel = self.channel, "no picture: {e}");
                    None
                }
            }
        })
    }

    fn set_alarm(&self, bit: u8, on: bool) {
        self.alarms.set(self.dev_channel, bit, on);
    }

    fn alarm_events(&self) -> Option<broadcast::Receiver<AlarmEvent>> {
        // Input 0 is the whole unit.
        Some(self.alarms.subscribe(self.dev_channel, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!((speed(0), speed(100)), (1, 16));
        let m = region_mask(&[0, 0, 50, 0, 0, 25, 50, 25]);
        assert_eq!(m.len(), 64);
        assert_eq!(&m[..12], "FF00FF00FF00", "rows 0-3 of 16 (25 %), left half");
        assert_eq!(&m[16..20], "0000");
        assert_eq!(ptz_cmd("downleft"), Some((cvip::api::PtzCmdType::RightUpLeftDown, -1)));
        assert_eq!(ptz_cmd("focusnear"), None);
    }
}
