//! The agent: dials the cloud, keeps the session alive with real channel
//! states, answers every IVT method and event through the channel
//! backends, and reconnects with exponential backoff and full jitter.

use crate::backend::ChannelBackend;
use crate::config::EdgeConfig;
use ivr_rpc::catalogue::{ChannelStatus, DeviceState, IvcRequest, IvtEvent, IvtRequest, Keepalive};
use ivr_rpc::conn::{self, CallError, Handler, RpcHandle};
use ivr_rpc::net::Dialer;
use ivr_rpc::ws::{dial, login_url, DialError, WsFrames};
use ivr_rpc::Peer;
use ivr_rpc::{codes, RpcError};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(cap, base · 2ⁿ)]`, so a cloud restart does not bring every
/// device back at the same instant.
#[derive(Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (std::process::id() as u64) << 32;
        Backoff { base, cap, attempt: 0, rng: seed | 1 }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        // xorshift64: jitter needs spread, not cryptography.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(frac)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if n == 0 {
            0
        } else {
            ((self.rng >> 11) % n as u64) as usize
        }
    }
}

/// What the agent is doing, for status output and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgeStatus {
    pub connected: bool,
    /// Sessions established so far.
    pub sessions: u64,
    /// Why the last session or attempt ended.
    pub last_error: Option<String>,
}

/// What the device is running and doing (shared by the agent and its handler).
struct DeviceInfo {
    firmware: Mutex<String>,
    state: Mutex<DeviceState>,
    /// An upgrade is running (one at a time, however many UpgradeFirmware
    /// events arrive).
    upgrading: std::sync::atomic::AtomicBool,
    /// How we reach the cloud (ws/wss) and its URLs (http/https).
    dialer: Dialer,
}

struct EdgeHandler {
    channels: Vec<Arc<dyn ChannelBackend>>,
    handle: Mutex<Option<RpcHandle>>,
    device: Arc<DeviceInfo>,
}

/// The largest firmware image the agent downloads (it is held in memory
/// while checked).
const MAX_FIRMWARE: usize = 64 << 20;

/// UpgradeFirmware: ask GetFirmware, download the image while reporting
/// "upgrading", check it against the size and SHA-256 the cloud published,
/// adopt the new version and reconnect so the cloud sees it. One at a time.
async fn upgrade(h: RpcHandle, device: Arc<DeviceInfo>) {
    use std::sync::atomic::Ordering;
    if device.upgrading.swap(true, Ordering::AcqRel) {
        tracing::info!("edge: an upgrade is already running; UpgradeFirmware ignored");
        return;
    }
    upgrade_once(&h, &device).await;
    *device.state.lock().expect("device lock") = DeviceState::Online;
    device.upgrading.store(false, Ordering::Release);
}

async fn upgrade_once(h: &RpcHandle, device: &DeviceInfo) {
    let offer = match h.call("GetFirmware", None).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "edge: GetFirmware failed; not upgrading");
            return;
        }
    };
    let (Some(version), Some(url)) = (offer["firmware_model"].as_str(), offer["url"].as_str()) else {
        tracing::warn!(reply = %offer, "edge: GetFirmware answered without firmware_model and url");
        return;
    };
    let current = device.firmware.lock().expect("device lock").clone();
    if version == current {
        tracing::info!(%version, "edge: already running the offered firmware");
        return;
    }
    if let Some(size) = offer["size"].as_u64().filter(|s| *s > MAX_FIRMWARE as u64) {
        tracing::warn!(size, max = MAX_FIRMWARE, "edge: the offered image is too large; not upgrading");
        return;
    }
    *device.state.lock().expect("device lock") = DeviceState::Upgrading;
    let image = match crate::upload::get(&device.dialer, url, MAX_FIRMWARE).await {
        Ok(image) if !image.is_empty() => image,
        Ok(_) => return tracing::warn!(%url, "edge: the firmware image is empty; not upgrading"),
        Err(e) => return tracing::warn!(error = %e, "edge: firmware download failed; not upgrading"),
    };
    if let Err(why) = check_image(&image, &offer) {
        return tracing::warn!(%url, "edge: the downloaded image is not the one offered ({why}); not upgrading");
    }
    tracing::info!(from = %current, to = %version, bytes = image.len(), "edge: firmware installed; reconnecting");
    *device.firmware.lock().expect("device lock") = version.to_owned();
    h.close().await;
}

/// The image against what GetFirmware published: its size and SHA-256
/// (ivr's cloud sends both; a cloud that sends neither is trusted, logged).
fn check_image(image: &[u8], offer: &Value) -> Result<(), String> {
    if let Some(size) = offer["size"].as_u64() {
        if size != image.len() as u64 {
            return Err(format!("{} bytes, {size} published", image.len()));
        }
    }
    match offer["sha256"].as_str() {
        Some(want) => {
            let got: String = ring::digest::digest(&ring::digest::SHA256, image)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if !got.eq_ignore_ascii_case(want) {
                return Err(format!("SHA-256 {got}, {want} published"));
            }
        }
        None => tracing::warn!("edge: the cloud published no SHA-256 for the image; installed unchecked"),
    }
    Ok(())
}

impl EdgeHandler {
    fn channel(&self, n: u32) -> Result<&Arc<dyn ChannelBackend>, RpcError> {
        self.channels
            .iter()
            .find(|c| c.channel() == n)
            .ok_or_else(|| RpcError::new(codes::INTERNAL, format!("params.channel: no channel {n} on this device")))
    }
}

impl Handler for EdgeHandler {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        let req = IvtRequest::parse(&method, params.as_ref())?;
        // What the cloud asked, one line each (they are rare; a site's
        // operator reads them to see who started a stream or recording).
        tracing::info!(%method, channel = req.channel(), "edge: request from the cloud");
        match &req {
            IvtRequest::GetRtmpPublishConfig => Ok(Value::Array(
                self.channels
                    .iter()
                    .map(|c| {
                        let p = c.publish_config();
                        json!({"enable": p.enable, "channel": p.channel, "quality": p.quality.as_str(), "url": p.url})
                    })
                    .collect(),
            )),
            IvtRequest::SetRtmpPublishConfig(list) => {
                // All or nothing: check every channel first.
                for (i, p) in list.iter().enumerate() {
                    if self.channel(p.channel).is_err() {
                        return Err(RpcError::new(
                            codes::INTERNAL,
                            format!("params.[{i}].channel: no channel {} on this device", p.channel),
                        ));
                    }
                }
                for p in list {
                    self.channel(p.channel)?.set_publish_config(p);
                }
                Ok(json!({}))
            }
            other => {
                let n = other.channel().expect("every other method names a channel");
                self.channel(n)?.request(other).await
            }
        }
    }

    async fn event(&self, name: String, params: Option<Value>) {
        let ev = match IvtEvent::parse(&name, params.as_ref()) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(event = %name, error = %e, "edge: event ignored");
                return;
            }
        };
        match &ev {
            IvtEvent::SyncTime { .. } => {
                for c in &self.channels {
                    c.event(&ev).await;
                }
            }
            IvtEvent::UpgradeFirmware => {
                let handle = self.handle.lock().expect("handle lock").clone();
                if let Some(h) = handle {
                    tokio::spawn(upgrade(h, self.device.clone()));
                }
            }
            IvtEvent::CtrlPtz { channel, .. }
            | IvtEvent::GotoPtzPreset { channel, .. }
            | IvtEvent::CtrlPtzPresetTour { channel, .. }
            | IvtEvent::CtrlPtzPatrol { channel, .. } => match self.channel(*channel) {
                Ok(c) => c.event(&ev).await,
                Err(e) => tracing::warn!(event = %name, error = %e.msg, "edge: event ignored"),
            },
        }
    }
}

/// The IVT agent.
pub struct Edge {
    cfg: EdgeConfig,
    device: Arc<DeviceInfo>,
    channels: Vec<Arc<dyn ChannelBackend>>,
    status: watch::Sender<EdgeStatus>,
    backoff: Mutex<Backoff>,
    /// Rule 3's limit for the cloud's answers, in ms (the seed's 20 s).
    response_timeout_ms: std::sync::atomic::AtomicU64,
}

impl Edge {
    pub fn new(cfg: EdgeConfig, channels: Vec<Arc<dyn ChannelBackend>>) -> Arc<Edge> {
        Edge::with_backoff(cfg, channels, Backoff::new(Duration::from_secs(1), Duration::from_secs(60)))
    }

    pub fn with_backoff(cfg: EdgeConfig, channels: Vec<Arc<dyn ChannelBackend>>, backoff: Backoff) -> Arc<Edge> {
        let device = Arc::new(DeviceInfo {
            firmware: Mutex::new(cfg.cloud.firmware_model.clone()),
            state: Mutex::new(DeviceState::Online),
            upgrading: Default::default(),
            dialer: Dialer::new(cfg.cloud.bind, cfg.cloud.ca_file.clone()),
        });
        Arc::new(Edge {
            cfg,
            device,
            channels,
            status: watch::channel(EdgeStatus::default()).0,
            backoff: Mutex::new(backoff),
            response_timeout_ms: (ivr_rpc::RESPONSE_TIMEOUT.as_millis() as u64).into(),
        })
    }

    /// Checks what can be checked before dialling (the TLS trust store for
    /// a wss:// cloud), so a bad setting fails at start, not in a retry loop.
    pub fn preflight(&self) -> Result<(), crate::config::InvalidConfig> {
        if self.cfg.cloud.urls.iter().any(|u| u.starts_with("wss://")) {
            self.device.dialer.tls().map_err(|e| crate::config::InvalidConfig(format!("[cloud] ca_file: {e}")))?;
        }
        Ok(())
    }

    /// How long the cloud may take to answer (rule 3). The protocol says
    /// 20 s; shorter only for tests.
    pub fn set_response_timeout(&self, d: Duration) {
        self.response_timeout_ms.store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn status(&self) -> watch::Receiver<EdgeStatus> {
        self.status.subscribe()
    }

    fn keepalive(&self) -> Option<Value> {
        IvcRequest::Keepalive(Keepalive {
            state: *self.device.state.lock().expect("device lock"),
            channels: self
                .channels
                .iter()
                .map(|c| ChannelStatus {
                    channel: c.channel(),
                    state: c.state(),
                    record_session: c.record_session(),
                    alarm: Some(c.alarm_bits()).filter(|&b| b != 0),
                })
                .collect(),
        })
        .params()
    }

    /// Runs forever: connect, serve, and on any end wait and connect again
    /// (to the next of the cloud's URLs, when it has several).
    pub async fn run(self: Arc<Self>) {
        let c = &self.cfg.cloud;
        let n = c.urls.len().max(1);
        let mut at = 0usize;
        loop {
            let base = c.urls.get(at % n).unwrap_or(&c.url);
            // Next time another node, drawn at random: when a node dies,
            // its devices spread over all the others instead of all
            // landing on the one after it in the list.
            let other = (at + 1 + self.backoff.lock().expect("backoff lock").pick(n - 1)) % n;
            at = other;
            // Built anew each time: an upgrade changes the firmware we announce.
            let firmware = self.device.firmware.lock().expect("device lock").clone();
            let url = login_url(base, &c.login_code, &c.login_passwd, &c.hardware_model, &firmware);
            match tokio::time::timeout(Duration::from_secs(10), dial(&url, &self.device.dialer)).await {
                Ok(Ok(ws)) => {
                    self.backoff.lock().expect("backoff lock").reset();
                    self.session(ws, base).await;
                }
                Ok(Err(e)) => {
                    let (why, at_least) = match e {
                        // Retrying a refused login quickly only feeds the
                        // cloud's throttle: a minute at least, said plainly.
                        DialError::Refused => (
                            format!(
                                "the cloud at {} refused login_code {:?} (HTTP 401): login_code or login_passwd in [cloud] is wrong, or the device is not provisioned there",
                                base, c.login_code
                            ),
                            Duration::from_secs(60),
                        ),
                        DialError::Later { retry_after, .. } => {
                            (e.to_string(), Duration::from_secs(retry_after.clamp(1, 3600)))
                        }
                        other => (other.to_string(), Duration::ZERO),
                    };
                    tracing::warn!("edge: {why}");
                    self.status.send_modify(|s| s.last_error = Some(why));
                    let wait = self.backoff.lock().expect("backoff lock").next_wait().max(at_least);
                    tracing::warn!("edge: trying again in {} s", wait.as_secs());
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(_) => {
                    let why = format!("connecting to {base} timed out");
                    tracing::warn!("edge: {why}");
                    self.status.send_modify(|s| s.last_error = Some(why));
                }
            }
            let wait = self.backoff.lock().expect("backoff lock").next_wait();
            tracing::info!(?wait, "edge: reconnecting after a pause");
            tokio::time::sleep(wait).await;
        }
    }

    async fn session<S>(&self, ws: WsFrames<S>, url: &str)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handler = Arc::new(EdgeHandler {
            channels: self.channels.clone(),
            handle: Mutex::new(None),
            device: self.device.clone(),
        });
        let (handle, mut task) = conn::spawn(
            ws,
            Peer::ivt().with_timeout(Duration::from_millis(
                self.response_timeout_ms.load(std::sync::atomic::Ordering::Relaxed),
            )),
            handler.clone(),
        );
        *handler.handle.lock().expect("handle lock") = Some(handle.clone());
        self.status.send_modify(|s| {
            s.connected = true;
            s.sessions += 1;
        });
        tracing::info!(%url, "edge: connected");
        let mut side = Vec::new();
        for cc in &self.cfg.channels {
            let Some(ch) = self.channels.iter().find(|c| c.channel() == cc.channel).cloned() else { continue };
            if cc.alarm_every_secs > 0 {
                side.push(tokio::spawn(alarms(
                    handle.clone(),
                    ch.clone(),
                    Duration::from_secs(cc.alarm_every_secs),
                    self.device.dialer.clone(),
                )));
            }
            if cc.preview_every_secs > 0 {
                side.push(tokio::spawn(previews(
                    handle.clone(),
                    ch,
                    Duration::from_secs(cc.preview_every_secs),
                    self.device.dialer.clone(),
                )));
            }
        }
        for ch in &self.channels {
            if let Some(rx) = ch.alarm_events() {
                side.push(tokio::spawn(device_alarms(handle.clone(), ch.clone(), rx, self.device.dialer.clone())));
            }
        }
        let every = Duration::from_secs(self.cfg.cloud.keepalive_secs);
        let keepalives = async {
            loop {
                match handle.call("Keepalive", self.keepalive()).await {
                    Ok(_) => {}
                    Err(CallError::Remote { err, .. }) => tracing::warn!(%err, "edge: the cloud refused our Keepalive"),
                    Err(e @ CallError::Closed { .. }) => return e.to_string(),
                }
                tokio::time::sleep(every).await;
            }
        };
        let why = tokio::select! {
            closed = &mut task => match closed {
                Ok(Some(rule)) => rule.to_string(),
                _ => "the cloud closed the connection".to_owned(),
            },
            why = keepalives => why,
        };
        for t in side {
            t.abort();
        }
        handle.close().await;
        *handler.handle.lock().expect("handle lock") = None;
        tracing::warn!("edge: session ended: {why}");
        self.status.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(why);
        });
    }
}

/// Simulated motion alarms: AlarmNotify start, the picture uploaded to the
/// URL the cloud returns, AlarmNotify end a few seconds later.
async fn alarms(h: RpcHandle, ch: Arc<dyn ChannelBackend>, every: Duration, dialer: Dialer) {
    const MOTION: u8 = 3;
    let hold = (every / 2).min(Duration::from_secs(5));
    loop {
        tokio::time::sleep(every.saturating_sub(hold)).await;
        ch.set_alarm(MOTION, true);
        let start =
            json!({"channel": ch.channel(), "type": MOTION, "state": "start", "desc": "motion detected (simulated)"});
        match h.call("AlarmNotify", Some(start)).await {
            Ok(v) => match (v["pic_upload_url"].as_str(), ch.snapshot().await) {
                (Some(url), Some(jpeg)) => {
                    if let Err(e) = crate::upload::post(&dialer, url, "image/jpeg", &jpeg).await {
                        tracing::warn!(error = %e, "edge: alarm picture not uploaded");
                    }
                }
                _ => tracing::warn!(reply = %v, "edge: no picture URL for the alarm"),
            },
            Err(CallError::Closed { .. }) => return,
            Err(e) => tracing::warn!(error = %e, "edge: AlarmNotify refused"),
        }
        tokio::time::sleep(hold).await;
        ch.set_alarm(MOTION, false);
        let end = json!({"channel": ch.channel(), "type": MOTION, "state": "end", "desc": "motion ended (simulated)"});
        if let Err(CallError::Closed { .. }) = h.call("AlarmNotify", Some(end)).await {
            return;
        }
    }
}

/// Alarms a device raises: AlarmNotify `start` with the channel's picture
/// uploaded to the URL the cloud returns, AlarmNotify `end` when the
/// device clears it.
async fn device_alarms(
    h: RpcHandle,
    ch: Arc<dyn ChannelBackend>,
    mut rx: tokio::sync::broadcast::Receiver<crate::backend::AlarmEvent>,
    dialer: Dialer,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let a = match rx.recv().await {
            Ok(a) => a,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    channel = ch.channel(),
                    missed = n,
                    "edge: device alarms came faster than the cloud took them"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let state = if a.on { "start" } else { "end" };
        let p = json!({"channel": ch.channel(), "type": a.bit, "state": state, "desc": a.desc});
        match h.call("AlarmNotify", Some(p)).await {
            Ok(v) if a.on => match v["pic_upload_url"].as_str() {
                Some(url) => match ch.snapshot().await {
                    Some(jpeg) => {
                        if let Err(e) = crate::upload::post(&dialer, url, "image/jpeg", &jpeg).await {
                            tracing::warn!(error = %e, "edge: alarm picture not uploaded");
                        }
                    }
                    None => tracing::info!(
                        channel = ch.channel(),
                        "edge: no picture for the alarm (the channel has none now)"
                    ),
                },
                None => tracing::warn!(reply = %v, "edge: no picture URL for the alarm"),
            },
            Ok(_) => {}
            Err(CallError::Closed { .. }) => return,
            Err(e) => tracing::warn!(error = %e, "edge: AlarmNotify refused"),
        }
    }
}

/// Preview pictures: one soon after connecting, then every `every`.
async fn previews(h: RpcHandle, ch: Arc<dyn ChannelBackend>, every: Duration, dialer: Dialer) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        match h.call("preview_server", None).await {
            Ok(v) => match (v["url"].as_str(), ch.snapshot().await) {
                (Some(url), Some(jpeg)) => {
                    // The seed's URL is per device; ivr says which channel.
                    let sep = if url.contains('?') { '&' } else { '?' };
                    let url = format!("{url}{sep}channel={}", ch.channel());
                    if let Err(e) = crate::upload::post(&dialer, &url, "image/jpeg", &jpeg).await {
                        tracing::warn!(error = %e, "edge: preview not uploaded");
                    }
                }
                (None, _) => tracing::warn!(reply = %v, "edge: preview_server gave no url"),
                (_, None) => {}
            },
            Err(CallError::Closed { .. }) => return,
            Err(e) => tracing::warn!(error = %e, "edge: preview_server refused"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_checked_against_the_offer() {
        let img = b"firmware";
        let sha = "9f1f9b5c8c9bb14fc8d6ce5bb9bd2e53d2a4d3be2b5cf4abf80fd0c1e5a0a7c3";
        let good: String =
            ring::digest::digest(&ring::digest::SHA256, img).as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert!(check_image(img, &serde_json::json!({"size": 8, "sha256": good})).is_ok());
        assert!(check_image(img, &serde_json::json!({})).is_ok(), "a cloud without hashes");
        assert!(check_image(img, &serde_json::json!({"size": 9})).unwrap_err().contains("9 published"));
        assert!(check_image(img, &serde_json::json!({"sha256": sha})).unwrap_err().contains("SHA-256"));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
        for (n, w) in waits.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << n.min(6)).min(Duration::from_secs(60));
            assert!(*w <= ceiling, "wait {n}: {w:?} > {ceiling:?}");
        }
        assert!(waits.windows(2).any(|p| p[0] != p[1]), "jittered");
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
