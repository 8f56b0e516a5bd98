//! Live view: the cloud's own RTMP ingest, devices' streams on demand,
//! and viewers on three protocols sharing one device stream.
//!
//! `POST …/channels/{ch}/live` (admin) or opening a viewer URL makes sure
//! the channel is being published: the first asks the device with
//! `RTMPPublish` to `rtmp://<ingest>/live/<key>`, where the key is
//! unguessable, made for this one request, and good only until the publish
//! arrives. The ingest accepts a publish with a key it handed out and
//! nothing else. Frames go into one hub per channel; every viewer (fMP4
//! over HTTP, MSE over WebSocket, HLS) subscribes to it and starts at the
//! cached GOP. When the last viewer has been gone for the grace period, or
//! the device stopped sending for as long, the cloud sends
//! `RTMPStopPublish` and forgets the channel.
//!
//! Viewer URLs carry a token in their path (`/live/<token>/…`): the
//! channel, the quality and an expiry, signed with a key the cloud makes at
//! start. A `<video src>`, ffplay or VLC opens them without the admin
//! token; the token opens that one channel and nothing else.

use crate::error::{ApiError, ApiResult};
use crate::server::{now, token, Cloud};
use crate::store::Store;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::body::{Body, Bytes as AxBytes};
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use blake2::{Blake2b512, Digest};
use ivr_media::hub::{Hub, Subscriber};
use ivr_media::ingest::{self, Event as IngestEvent};
use ivr_media::params::find_sps;
use ivr_media::sink::{Format, Sink};
use ivr_media::{hls, Codec, Frame};
use ivr_rpc::conn::RpcHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Where devices publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rtmp {
    /// No live view (no `--rtmp-listen` or `--rtmp-url`).
    Off,
    /// The cloud's own ingest; devices are given `<base>/<key>`, e.g.
    /// `rtmp://cloud.example:1935/live`.
    Ingest { base: String },
    /// An RTMP server the operator runs: devices publish `<url>/<login_code>-<channel>`
    /// there, and viewers watch it there.
    External { url: String },
}

/// How live view behaves.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub rtmp: Rtmp,
    /// Viewers gone (or the device silent) this long: RTMPStopPublish.
    pub grace: Duration,
    /// How long the first frame may take after RTMPPublish.
    pub start_timeout: Duration,
    /// How long viewer URLs are good for.
    pub token_ttl: Duration,
    /// H.264 renditions made by ffmpeg at once (quality `h264`); 0: none.
    pub transcode: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            rtmp: Rtmp::Off,
            grace: Duration::from_secs(15),
            start_timeout: Duration::from_secs(10),
            token_ttl: Duration::from_secs(3600),
            transcode: 0,
        }
    }
}

/// What a channel's stream is, from its first keyframe.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StreamInfo {
    /// RFC 6381, e.g. `avc1.64001f`.
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// `mp4a.40.2` when the stream carries AAC.
    pub audio: Option<String>,
}

impl StreamInfo {
    /// The MIME type Media Source Extensions want.
    pub fn mime(&self) -> String {
        match &self.audio {
            Some(a) => format!("video/mp4; codecs=\"{},{a}\"", self.codec),
            None => format!("video/mp4; codecs=\"{}\"", self.codec),
        }
    }
}

#[derive(Clone, Debug)]
enum State0 {
    Starting,
    Live(Arc<StreamInfo>),
    Failed(String),
}

/// One channel's live stream.
struct Feed {
    hub: Hub,
    state: watch::Sender<State0>,
    /// The timeline across publisher reconnects (90 kHz).
    last_dts: AtomicU64,
    aac_seen: AtomicBool,
    /// Set when the cloud stops the channel: the ingest connection ends.
    closed: AtomicBool,
}

struct Entry {
    id: u64,
    key: String,
    stream_id: String,
    feed: Arc<Feed>,
    viewers: usize,
    /// When the viewer count last fell to 0 (or the entry was made).
    idle_since: Instant,
    publishing: bool,
    /// When the last publisher left (or the entry was made).
    silent_since: Instant,
    hls: Option<Arc<HlsLive>>,
    /// The channel's fMP4 fragments, muxed once for every mp4/ws viewer.
    frags: Option<Arc<Frags>>,
    /// The ffmpeg making an H.264 rendition (killed when the entry goes).
    transcoder: Option<tokio::process::Child>,
}

/// A channel's fragments: muxed once, shared by every fMP4 and MSE viewer
/// (a hub of fragments, so a new viewer starts at the fragment of the
/// last keyframe and a slow one skips to the next, as with frames).
struct Frags {
    init: watch::Sender<Option<AxBytes>>,
    hub: Hub,
}

/// The live channels.
pub struct Lives {
    cfg: LiveConfig,
    map: Mutex<HashMap<LiveKey, Entry>>,
    secret: [u8; 32],
    next: AtomicU64,
    /// RTMPPublish sent, RTMPStopPublish sent, publishes refused, starts failed.
    pub publishes: AtomicU64,
    pub stops: AtomicU64,
    pub refused: AtomicU64,
    pub failures: AtomicU64,
    /// Transcoders started (`--transcode`).
    pub transcodes: AtomicU64,
}

impl Lives {
    pub fn new(cfg: LiveConfig) -> Lives {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        Lives {
            cfg,
            map: Mutex::default(),
            secret,
            next: AtomicU64::new(1),
            publishes: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            transcodes: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &LiveConfig {
        &self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LiveKey, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Channels being published or started, with their viewer counts.
    /// (device, channel, viewers, publishing, an H.264 rendition).
    pub fn active(&self) -> Vec<(String, u32, usize, bool, bool)> {
        self.lock()
            .iter()
            .map(|((lc, ch, r), e)| (lc.clone(), *ch, e.viewers, e.publishing, *r == Rendition::H264))
            .collect()
    }

    fn mac(&self, payload: &[u8]) -> String {
        let d = Blake2b512::new().chain_update(self.secret).chain_update(payload).finalize();
        hex(&d[..16])
    }

    /// A viewer token for one channel at one quality, good until `exp`.
    pub fn viewer_token(&self, lc: &str, ch: u32, quality: &str, exp: i64) -> String {
        let payload = format!("{lc}\x1f{ch}\x1f{quality}\x1f{exp}");
        format!("{}.{}", hex(payload.as_bytes()), self.mac(payload.as_bytes()))
    }

    /// What a viewer token opens, if it is ours and not expired.
    pub fn check_token(&self, t: &str) -> Result<(String, u32, String), &'static str> {
        let (p, mac) = t.split_once('.').ok_or("not a viewer token")?;
        let payload = unhex(p).ok_or("not a viewer token")?;
        if !crate::auth::constant_eq(self.mac(&payload).as_bytes(), mac.as_bytes()) {
            return Err("not a viewer token of this cloud (or the cloud restarted since)");
        }
        let s = String::from_utf8(payload).map_err(|_| "not a viewer token")?;
        let f: Vec<&str> = s.split('\x1f').collect();
        let [lc, ch, q, exp] = f[..] else { return Err("not a viewer token") };
        let exp: i64 = exp.parse().map_err(|_| "not a viewer token")?;
        if exp < now() {
            return Err("the viewer token has expired; ask the API for a new one");
        }
        Ok((lc.to_owned(), ch.parse().map_err(|_| "not a viewer token")?, q.to_owned()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2048 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A live stream: device, channel, and whether it is the sub-stream (ld,
/// sd) rather than the main one (hd, fhd). A channel can publish both at
/// once (a grid tile on the sub-stream, a full-screen view on the main).
pub(crate) type LiveKey = (String, u32, Rendition);

/// Which stream of a channel a live entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Rendition {
    /// The device's main stream (hd, fhd).
    Main,
    /// The device's sub-stream (ld, sd).
    Sub,
    /// The main stream re-encoded to H.264 by ffmpeg (`h264`), for
    /// browsers that cannot decode H.265.
    H264,
}

fn live_key(lc: &str, ch: u32, quality: &str) -> LiveKey {
    let r = match quality {
        "ld" | "sd" => Rendition::Sub,
        "h264" => Rendition::H264,
        _ => Rendition::Main,
    };
    (lc.to_owned(), ch, r)
}

/// A viewer's hold on a channel: while any exist the stream stays up.
pub struct Viewer<S: Store> {
    cloud: Arc<Cloud<S>>,
    key: LiveKey,
    id: u64,
}

impl<S: Store> Drop for Viewer<S> {
    fn drop(&mut self) {
        let mut m = self.cloud.lives.lock();
        if let Some(e) = m.get_mut(&self.key).filter(|e| e.id == self.id) {
            e.viewers = e.viewers.saturating_sub(1);
            if e.viewers == 0 {
                e.idle_since = Instant::now();
            }
        }
    }
}

/// The body of `POST …/live`.
#[derive(Deserialize, Default)]
pub struct LiveRequest {
    #[serde(default)]
    quality: Option<String>,
}

impl LiveRequest {
    /// The quality asked for (`hd` when none): one of ld, sd, hd, fhd, or
    /// h264 (the main stream re-encoded, with `--transcode`).
    pub fn quality(&self) -> ApiResult<&'static str> {
        LiveRequest::quality_of(self.quality.as_deref())
    }

    pub fn quality_of(q: Option<&str>) -> ApiResult<&'static str> {
        let q = q.unwrap_or("hd");
        if q == "h264" {
            return Ok("h264");
        }
        ivr_rpc::catalogue::Quality::NAMES
            .into_iter()
            .find(|n| *n == q)
            .ok_or_else(|| ApiError::bad_request(format!("quality {q:?}: one of ld, sd, hd, fhd, h264")))
    }
}

impl<S: Store> Cloud<S> {
    /// Makes sure `lc`/`ch` is being published at `quality` and returns
    /// what the stream is, waiting for its first keyframe.
    pub async fn live_start(self: &Arc<Self>, lc: &str, ch: u32, quality: &str) -> ApiResult<Arc<StreamInfo>> {
        let base = match &self.lives.cfg.rtmp {
            Rtmp::Ingest { base } => base.clone(),
            Rtmp::Off => {
                return Err(ApiError::conflict(
                    "live view is off: start the cloud with --rtmp-listen (its own ingest) or --rtmp-url",
                ))
            }
            Rtmp::External { .. } => {
                return Err(ApiError::conflict(
                    "devices publish to the external RTMP server of --rtmp-url; watch the stream there",
                ))
            }
        };
        self.check_channel(lc, ch).await?;
        let key = live_key(lc, ch, quality);
        let transcode = key.2 == Rendition::H264;
        if transcode && self.lives.cfg.transcode == 0 {
            return Err(ApiError::conflict(
                "quality h264 (an H.264 rendition) needs the cloud started with --transcode",
            ));
        }
        let (mut rx, start) = {
            let mut m = self.lives.lock();
            match m.get(&key) {
                Some(e) => (e.feed.state.subscribe(), None),
                None if transcode
                    && m.keys().filter(|k| k.2 == Rendition::H264).count() >= self.lives.cfg.transcode =>
                {
                    return Err(ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "all {} transcoders are busy (--transcode); watch the sub-stream (quality sd) instead",
                            self.lives.cfg.transcode
                        ),
                    ));
                }
                None => {
                    let feed = Arc::new(Feed {
                        hub: Hub::new(256, 32 << 20),
                        state: watch::channel(State0::Starting).0,
                        last_dts: AtomicU64::new(0),
                        aac_seen: AtomicBool::new(false),
                        closed: AtomicBool::new(false),
                    });
                    let e = Entry {
                        id: self.lives.next.fetch_add(1, Ordering::Relaxed),
                        key: token(),
                        stream_id: format!("ivr-{}", &token()[..12]),
                        feed: feed.clone(),
                        viewers: 0,
                        idle_since: Instant::now(),
                        publishing: false,
                        silent_since: Instant::now(),
                        hls: None,
                        frags: None,
                        transcoder: None,
                    };
                    let start = (e.id, e.key.clone(), e.stream_id.clone());
                    m.insert(key.clone(), e);
                    (feed.state.subscribe(), Some(start))
                }
            }
        };
        if let Some((id, k, stream_id)) = start {
            let params = json!({
                "channel": ch, "quality": quality, "url": format!("{base}/{k}"),
                "stream_id": stream_id, "max_bitrate": 0,
            });
            let r = match self.handle_of(lc) {
                _ if transcode => self.start_transcoder(&key, id, &format!("{base}/{k}")),
                None => Err(ApiError::conflict(format!("device {lc:?} is offline"))),
                Some(h) => {
                    match tokio::time::timeout(self.cfg.rpc_timeout, h.call("RTMPPublish", Some(params))).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(ApiError::call("RTMPPublish", e)),
                        Err(_) => Err(ApiError::timeout(format!(
                            "RTMPPublish: no answer from {lc:?} within {:?}",
                            self.cfg.rpc_timeout
                        ))),
                    }
                }
            };
            self.lives.publishes.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = r {
                self.live_failed(&key, id, &e.msg, false).await;
                return Err(e);
            }
        }
        let deadline = tokio::time::Instant::now() + self.lives.cfg.start_timeout;
        loop {
            let st = rx.borrow_and_update().clone();
            match st {
                State0::Live(i) => return Ok(i),
                State0::Failed(m) => return Err(ApiError::new(axum::http::StatusCode::BAD_GATEWAY, m)),
                State0::Starting => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(ApiError::conflict(format!("the live stream of {lc:?} channel {ch} stopped")))
                }
                Err(_) => {
                    let msg = format!(
                        "{lc:?} channel {ch}: the device accepted RTMPPublish but no video arrived within {:?}",
                        self.lives.cfg.start_timeout
                    );
                    let id = self.lives.lock().get(&key).map(|e| e.id);
                    if let Some(id) = id {
                        self.live_failed(&key, id, &msg, true).await;
                    }
                    return Err(ApiError::timeout(msg));
                }
            }
        }
    }

    /// 404 for an unknown device or channel.
    pub async fn check_channel(&self, lc: &str, ch: u32) -> ApiResult<()> {
        self.check_channel_of(lc, ch, false).await
    }

    /// 404 for an unknown device, or for a channel the device's Keepalives
    /// do not list; `unreported_ok`: a device that has listed none yet may
    /// be asked about any (it answers for itself).
    pub async fn check_channel_of(&self, lc: &str, ch: u32, unreported_ok: bool) -> ApiResult<()> {
        // A device in session here: its channels as this node last wrote
        // them (no database read on the RPC path).
        let cached = match self.handle_of(lc) {
            Some(_) => self.store.cached_channels(lc),
            None => None,
        };
        let channels = match cached {
            Some(c) => c,
            None => self.stored_channels(lc).await?,
        };
        channel_in(lc, ch, &channels, unreported_ok)
    }

    /// The channels `lc`'s Keepalives list, as the store has them (404 for
    /// an unknown device).
    async fn stored_channels(&self, lc: &str) -> ApiResult<Vec<u32>> {
        let d = self.store.device(lc).await?.ok_or_else(|| no_device(lc))?;
        Ok(d.channels.iter().map(|c| c.channel).collect())
    }

    /// The session an RPC or event for `lc` (about channel `ch`, when it
    /// names one) goes through: 404 for an unknown device or a channel it
    /// does not list (one it has listed none of yet may be asked), 409 when
    /// it is offline. One look at the sessions for a device held here, and
    /// no database read unless its channels are not known to this node.
    pub(crate) async fn session_for(&self, lc: &str, ch: Option<u32>) -> ApiResult<RpcHandle> {
        if let Some(h) = self.handle_of(lc) {
            if let Some(ch) = ch {
                let channels = match self.store.cached_channels(lc) {
                    Some(channels) => channels,
                    None => self.stored_channels(lc).await?,
                };
                channel_in(lc, ch, &channels, true)?;
            }
            return Ok(h);
        }
        // Not here: 404 for an unknown device or channel, before 409.
        let channels = self.stored_channels(lc).await?;
        if let Some(ch) = ch {
            channel_in(lc, ch, &channels, true)?;
        }
        Err(ApiError::conflict(format!("device {lc:?} is offline")))
    }

    /// A start that failed: waiters told, the entry gone, an event.
    async fn live_failed(self: &Arc<Self>, key: &LiveKey, id: u64, msg: &str, stop: bool) {
        self.lives.failures.fetch_add(1, Ordering::Relaxed);
        let e = {
            let mut m = self.lives.lock();
            if m.get(key).is_some_and(|e| e.id == id) {
                m.remove(key)
            } else {
                None
            }
        };
        if let Some(e) = e {
            let _ = e.feed.state.send(State0::Failed(msg.to_owned()));
            e.feed.closed.store(true, Ordering::Relaxed);
            if stop && key.2 != Rendition::H264 {
                self.send_stop(&key.0, key.1, e.stream_id);
            }
        }
        self.event(&key.0, Some(key.1), "live_failed", json!({"error": msg})).await;
    }

    /// Starts ffmpeg reading the channel's main stream from this cloud
    /// (as a viewer: it keeps that stream up) and publishing it, re-encoded
    /// to H.264 (at most 720 lines, keyframes every 2 s), to this cloud's
    /// ingest with the entry's key. The child dies with the entry.
    fn start_transcoder(self: &Arc<Self>, key: &LiveKey, id: u64, publish_to: &str) -> ApiResult<()> {
        let exp = now() + self.lives.cfg.token_ttl.as_secs() as i64;
        let t = self.lives.viewer_token(&key.0, key.1, "hd", exp);
        let source = format!("{}/live/{t}/stream.mp4", self.cfg.public_url);
        let mut child = tokio::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-fflags", "nobuffer", "-i", &source])
            .args(["-map", "0:v:0", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency"])
            .args(["-vf", "scale=-2:min(720\\,ih)", "-pix_fmt", "yuv420p", "-g", "50", "-bf", "0"])
            .args(["-f", "flv", publish_to])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ApiError::internal(format!("--transcode: cannot run ffmpeg: {e}")))?;
        if let Some(err) = child.stderr.take() {
            let lc = key.0.clone();
            let ch = key.1;
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    tracing::warn!(login_code = %crate::limits::shown(&lc), channel = ch, "cloud: transcoder: {l}");
                }
            });
        }
        self.lives.transcodes.fetch_add(1, Ordering::Relaxed);
        let mut m = self.lives.lock();
        match m.get_mut(key).filter(|e| e.id == id) {
            Some(e) => e.transcoder = Some(child),
            None => drop(child),
        }
        Ok(())
    }

    fn send_stop(self: &Arc<Self>, lc: &str, ch: u32, stream_id: String) {
        self.lives.stops.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.handle_of(lc) {
            let lc = lc.to_owned();
            tokio::spawn(async move {
                let p = json!({"stream_id": stream_id, "channel": ch});
                if let Err(e) = h.call("RTMPStopPublish", Some(p)).await {
                    tracing::info!(login_code = %crate::limits::shown(&lc), channel = ch, error = %e, "cloud: RTMPStopPublish failed");
                }
            });
        }
    }

    /// Stops channels nobody watches (or that stopped sending). Run it
    /// every second.
    pub async fn live_reap(self: &Arc<Self>) {
        let grace = self.lives.cfg.grace;
        let gone: Vec<(LiveKey, Entry, &'static str)> = {
            let mut m = self.lives.lock();
            let keys: Vec<(LiveKey, &'static str)> = m
                .iter()
                .filter_map(|(k, e)| {
                    // A start in progress is the waiting request's to fail.
                    let starting = matches!(*e.feed.state.borrow(), State0::Starting);
                    if starting && e.idle_since.elapsed() <= self.lives.cfg.start_timeout {
                        None
                    } else if e.viewers == 0 && e.idle_since.elapsed() > grace {
                        Some((k.clone(), "no viewers"))
                    } else if !e.publishing && e.silent_since.elapsed() > grace.max(self.lives.cfg.start_timeout) {
                        Some((k.clone(), "the device stopped sending"))
                    } else {
                        None
                    }
                })
                .collect();
            keys.into_iter().filter_map(|(k, why)| m.remove(&k).map(|e| (k, e, why))).collect()
        };
        for ((lc, ch, r), e, why) in gone {
            tracing::info!(login_code = %crate::limits::shown(&lc), channel = ch, why, "cloud: live stream stopped");
            e.feed.closed.store(true, Ordering::Relaxed);
            // A rendition's publisher is our ffmpeg, gone with the entry.
            if r != Rendition::H264 {
                self.send_stop(&lc, ch, e.stream_id.clone());
            }
            self.event(&lc, Some(ch), "live_stop", json!({"reason": why})).await;
        }
    }

    /// A viewer of a live channel: what the stream is, and the hold that
    /// keeps it up (the viewer subscribes to frames or fragments itself).
    pub async fn live_view(self: &Arc<Self>, lc: &str, ch: u32, quality: &str) -> ApiResult<LiveViewer<S>> {
        for _ in 0..2 {
            let info = self.live_start(lc, ch, quality).await?;
            let mut m = self.lives.lock();
            // Stopped between the start and now: start again (once).
            let key = live_key(lc, ch, quality);
            let Some(e) = m.get_mut(&key) else { continue };
            e.viewers += 1;
            let hold = Viewer { cloud: self.clone(), key, id: e.id };
            return Ok(LiveViewer { info, _hold: hold });
        }
        Err(ApiError::conflict(format!("the live stream of {lc:?} channel {ch} keeps stopping")))
    }

    /// The `POST …/live` answer.
    pub async fn live_urls(self: &Arc<Self>, lc: &str, ch: u32, quality: &str) -> ApiResult<serde_json::Value> {
        if let Rtmp::External { url } = &self.lives.cfg.rtmp {
            self.check_channel(lc, ch).await?;
            let stream = format!("{}-{ch}", crate::safe_name(lc));
            let h = self.handle_of(lc).ok_or_else(|| ApiError::conflict(format!("device {lc:?} is offline")))?;
            let p = json!({"channel": ch, "quality": quality, "url": format!("{url}/{stream}"), "stream_id": stream, "max_bitrate": 0});
            h.call("RTMPPublish", Some(p)).await.map_err(|e| ApiError::call("RTMPPublish", e))?;
            return Ok(json!({"codec": null, "urls": {"rtmp": format!("{url}/{stream}")}, "expires": null}));
        }
        let info = self.live_start(lc, ch, quality).await?;
        let exp = now() + self.lives.cfg.token_ttl.as_secs() as i64;
        let t = self.lives.viewer_token(lc, ch, quality, exp);
        let base = format!("{}/live/{t}", self.cfg.public_url);
        let ws_base = base.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
        Ok(json!({
            "codec": info.codec, "width": info.width, "height": info.height, "audio": info.audio,
            "mime": info.mime(),
            "urls": {"ws": format!("{ws_base}/ws"), "mp4": format!("{base}/stream.mp4"), "hls": format!("{base}/index.m3u8"), "player": format!("{base}/")},
            "expires": exp,
            "quality": quality,
            "transcode": self.lives.cfg.transcode > 0,
        }))
    }
}

/// A viewer counted on its channel.
pub struct LiveViewer<S: Store> {
    pub info: Arc<StreamInfo>,
    _hold: Viewer<S>,
}

// ---------- the RTMP ingest ----------

/// Takes publishes until the listener fails.
pub async fn serve_rtmp<S: Store>(c: Arc<Cloud<S>>, listener: tokio::net::TcpListener) {
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cloud: RTMP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let Some(ticket) = c.gate.enter("RTMP", peer) else { continue };
        let c = c.clone();
        tokio::spawn(async move {
            let _ticket = ticket;
            if let Err(e) = rtmp_conn(&c, s).await {
                tracing::info!(%peer, error = %e, "cloud: RTMP connection ended");
            }
        });
    }
}

/// Before a publish is accepted a peer has this long to get there.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);
/// A publisher silent this long is dropped.
const SILENCE: Duration = Duration::from_secs(20);

async fn rtmp_conn<S: Store>(c: &Arc<Cloud<S>>, mut s: tokio::net::TcpStream) -> Result<(), String> {
    let mut conn = ingest::Conn::new();
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    let mut feed: Option<(Arc<Feed>, LiveKey, u64)> = None;
    // The shift that puts this connection's timeline after the last one.
    let mut shift: Option<i64> = None;
    let r = async {
        loop {
            let read = if feed.is_some() {
                tokio::time::timeout(SILENCE, s.read(&mut buf)).await
            } else {
                tokio::time::timeout_at(deadline, s.read(&mut buf)).await
            };
            let n = match read {
                Err(_) if feed.is_some() => return Err(format!("no data for {SILENCE:?}")),
                Err(_) => return Err(format!("no accepted publish within {PUBLISH_DEADLINE:?}")),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.to_string()),
            };
            let r = conn.input(&buf[..n]);
            while let Some(ev) = conn.next_event() {
                match ev {
                    IngestEvent::Publish { key, .. } => match c.claim_key(&key) {
                        Some(f) => {
                            conn.accept();
                            feed = Some(f);
                        }
                        None => {
                            c.lives.refused.fetch_add(1, Ordering::Relaxed);
                            conn.reject("unknown or expired stream key");
                        }
                    },
                    IngestEvent::Frame(mut f) => {
                        let Some((fd, key, _)) = &feed else { continue };
                        let sh = *shift.get_or_insert_with(|| {
                            let last = fd.last_dts.load(Ordering::Relaxed);
                            if last == 0 {
                                0
                            } else {
                                last as i64 + 3600 - f.dts as i64
                            }
                        });
                        f.dts = (f.dts as i64 + sh).max(0) as u64;
                        f.pts = (f.pts as i64 + sh).max(0) as u64;
                        fd.last_dts.fetch_max(f.dts, Ordering::Relaxed);
                        if f.codec == Codec::Aac {
                            fd.aac_seen.store(true, Ordering::Relaxed);
                        }
                        if f.codec.is_video() && f.keyframe && matches!(*fd.state.borrow(), State0::Starting) {
                            if let Some(info) = stream_info(&f, fd.aac_seen.load(Ordering::Relaxed)) {
                                c.event(&key.0, Some(key.1), "live_start", json!(info)).await;
                                let _ = fd.state.send(State0::Live(Arc::new(info)));
                            }
                        }
                        fd.hub.publish(f);
                    }
                    IngestEvent::Unpublish => return Ok(()),
                }
            }
            let out = conn.take_output();
            if !out.is_empty() {
                s.write_all(&out).await.map_err(|e| e.to_string())?;
            }
            r.map_err(|e| e.to_string())?;
            if feed.as_ref().is_some_and(|(f, _, _)| f.closed.load(Ordering::Relaxed)) {
                return Ok(());
            }
        }
    }
    .await;
    if let Some((_, key, id)) = feed {
        let mut m = c.lives.lock();
        if let Some(e) = m.get_mut(&key).filter(|e| e.id == id) {
            e.publishing = false;
            e.silent_since = Instant::now();
        }
    }
    r
}

fn stream_info(f: &Frame, aac: bool) -> Option<StreamInfo> {
    let sps = find_sps(f.codec, &f.data).ok()?;
    Some(StreamInfo {
        codec: sps.codec_string(),
        width: sps.width,
        height: sps.height,
        audio: aac.then(|| "mp4a.40.2".to_owned()),
    })
}

impl<S: Store> Cloud<S> {
    /// The entry a stream key was handed out for, if nobody publishes it yet.
    fn claim_key(&self, key: &str) -> Option<(Arc<Feed>, LiveKey, u64)> {
        let mut m = self.lives.lock();
        let (k, e) = m.iter_mut().find(|(_, e)| crate::auth::constant_eq(e.key.as_bytes(), key.as_bytes()))?;
        if e.publishing {
            return None;
        }
        e.publishing = true;
        Some((e.feed.clone(), k.clone(), e.id))
    }
}

// ---------- viewers ----------

fn viewer_error(e: &'static str) -> Response {
    ApiError::unauthorized(e).into_response()
}

/// fMP4 bytes from frames: the init segment, then a fragment per frame
/// written as soon as the frame is in (its duration taken from the last
/// frame interval), so a viewer is no frame behind the device.
struct Fragments {
    sink: Sink,
    last_dts: Option<u64>,
    interval: u64,
}

impl Fragments {
    fn new(info: &StreamInfo) -> Fragments {
        let audio = info.audio.as_ref().map(|_| Codec::Aac);
        Fragments { sink: Sink::new(Format::Mp4, 25).with_audio(audio).init_apart(), last_dts: None, interval: 3600 }
    }

    /// The init segment, once it is made.
    fn take_init(&mut self) -> Option<Vec<u8>> {
        self.sink.take_init()
    }

    /// The fragment for `f` (empty while nothing is ready).
    fn push(&mut self, f: Frame) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        if !f.codec.is_video() {
            self.sink.push(f, &mut out).map_err(|e| e.to_string())?;
            return Ok(out);
        }
        let dts = f.dts;
        if let Some(last) = self.last_dts {
            let d = dts.saturating_sub(last);
            if (900..=90_000).contains(&d) {
                self.interval = d;
            }
        }
        self.last_dts = Some(dts);
        self.sink.push(f, &mut out).map_err(|e| e.to_string())?;
        self.sink.cut(dts + self.interval, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

impl<S: Store> Cloud<S> {
    /// The channel's shared fragments (the muxer started on first use):
    /// the init segment and a subscription that starts at the fragment of
    /// the last keyframe.
    async fn fragments(self: &Arc<Self>, key: &LiveKey, info: &StreamInfo) -> ApiResult<(AxBytes, Subscriber)> {
        let frags = {
            let mut m = self.lives.lock();
            let e = m.get_mut(key).ok_or_else(|| ApiError::conflict("the live stream stopped"))?;
            match &e.frags {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(Frags { init: watch::channel(None).0, hub: Hub::new(256, 32 << 20) });
                    e.frags = Some(f.clone());
                    let mut frames = e.feed.hub.subscribe();
                    let (f2, info) = (f.clone(), info.clone());
                    tokio::spawn(async move {
                        let mut mux = Fragments::new(&info);
                        while let Some(fr) = frames.recv().await {
                            let (key, codec, dts) = (fr.keyframe && fr.codec.is_video(), fr.codec, fr.dts);
                            let b = match mux.push(fr) {
                                Ok(b) => b,
                                Err(e) => {
                                    tracing::info!(error = %e, "cloud: live fragments ended");
                                    break;
                                }
                            };
                            if let Some(init) = mux.take_init() {
                                f2.init.send_replace(Some(AxBytes::from(init)));
                            }
                            if !b.is_empty() {
                                f2.hub.publish(Frame { codec, keyframe: key, pts: dts, dts, data: AxBytes::from(b) });
                            }
                        }
                    });
                    f
                }
            }
        };
        let mut init = frags.init.subscribe();
        let sub = frags.hub.subscribe();
        let deadline = tokio::time::Instant::now() + self.lives.cfg.start_timeout;
        loop {
            if let Some(b) = init.borrow_and_update().clone() {
                return Ok((b, sub));
            }
            if tokio::time::timeout_at(deadline, init.changed()).await.is_err() {
                return Err(ApiError::timeout("no fragment of this stream yet"));
            }
        }
    }
}

/// A viewer of the shared fragments: what the stream is, the init
/// segment, the fragments from the last keyframe on, and the hold.
async fn fragment_viewer<S: Store>(
    c: &Arc<Cloud<S>>,
    token: &str,
) -> Result<(Arc<StreamInfo>, AxBytes, Subscriber, Viewer<S>), Response> {
    let (lc, ch, q) = c.lives.check_token(token).map_err(viewer_error)?;
    let LiveViewer { info, _hold } = c.live_view(&lc, ch, &q).await.map_err(IntoResponse::into_response)?;
    let (init, sub) = c.fragments(&_hold.key, &info).await.map_err(IntoResponse::into_response)?;
    Ok((info, init, sub, _hold))
}

/// `GET /live/{token}/stream.mp4`: fragmented MP4 over HTTP.
pub(crate) async fn live_mp4<S: Store>(State(c): State<Arc<Cloud<S>>>, Path(t): Path<String>) -> Response {
    let (_, init, sub, _hold) = match fragment_viewer(&c, &t).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // The body reads the shared fragments itself: no task or channel per
    // viewer between the hub and hyper, which writes whatever is ready in
    // one writev (several fragments at once for a viewer that lags). The
    // hold lives in the stream: the stream stays up while it is read.
    let first = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(init)));
    let rest = futures_util::stream::unfold((sub, _hold), |(mut sub, hold)| async move {
        sub.recv().await.map(|f| (Ok(f.data), (sub, hold)))
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(first, rest));
    ([("content-type", "video/mp4"), ("cache-control", "no-store")], body).into_response()
}

/// `GET /live/{token}/ws`: Media Source Extensions over WebSocket — a
/// JSON text message (codec, MIME type, size), the init segment, then a
/// fragment per frame.
pub(crate) async fn live_ws<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path(t): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let (info, init, sub, _hold) = match fragment_viewer(&c, &t).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    ws.write_buffer_size(0).on_upgrade(move |socket| ws_viewer(socket, info, init, sub, _hold))
}

async fn ws_viewer<S: Store>(
    mut socket: WebSocket,
    info: Arc<StreamInfo>,
    init: AxBytes,
    mut sub: Subscriber,
    _hold: Viewer<S>,
) {
    let hello = json!({
        "codec": info.codec, "mime": info.mime(), "width": info.width, "height": info.height, "audio": info.audio,
    });
    if socket.send(AxMessage::Text(hello.to_string().into())).await.is_err()
        || socket.send(AxMessage::Binary(init)).await.is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            f = sub.recv() => {
                let Some(f) = f else { break };
                if socket.send(AxMessage::Binary(f.data)).await.is_err() {
                    return;
                }
            }
            m = socket.recv() => match m {
                Some(Ok(AxMessage::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
    let _ = socket.send(AxMessage::Close(None)).await;
}

/// A channel's live HLS window, in memory, while someone polls it.
pub struct HlsLive {
    files: Mutex<HlsFiles>,
    ready: tokio::sync::Notify,
}

struct HlsFiles {
    playlist: Option<String>,
    segments: usize,
    files: HashMap<String, AxBytes>,
    last_access: Instant,
    ended: bool,
}

/// HLS viewers gone this long: the window stops.
const HLS_IDLE: Duration = Duration::from_secs(10);

impl<S: Store> Cloud<S> {
    async fn hls_of(self: &Arc<Self>, lc: &str, ch: u32, q: &str) -> ApiResult<Arc<HlsLive>> {
        let key = live_key(lc, ch, q);
        if let Some(h) = self.lives.lock().get(&key).and_then(|e| e.hls.clone()) {
            if !h.files.lock().unwrap_or_else(|e| e.into_inner()).ended {
                return Ok(h);
            }
        }
        let v = self.live_view(lc, ch, q).await?;
        let h = Arc::new(HlsLive {
            files: Mutex::new(HlsFiles {
                playlist: None,
                segments: 0,
                files: HashMap::new(),
                last_access: Instant::now(),
                ended: false,
            }),
            ready: tokio::sync::Notify::new(),
        });
        let mut frames = {
            let mut m = self.lives.lock();
            let Some(e) = m.get_mut(&key) else {
                return Err(ApiError::conflict("the live stream stopped"));
            };
            if let Some(other) = &e.hls {
                if !other.files.lock().unwrap_or_else(|e| e.into_inner()).ended {
                    return Ok(other.clone());
                }
            }
            e.hls = Some(h.clone());
            e.feed.hub.subscribe()
        };
        let hh = h.clone();
        tokio::spawn(async move {
            let audio = v.info.audio.as_ref().map(|_| Codec::Aac);
            let mut w = hls::Writer::new(Format::Mp4, 25, 1.0, Some(6), "").with_audio(audio);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let f = tokio::select! {
                    f = frames.recv() => f,
                    _ = tick.tick() => {
                        if hh.files.lock().unwrap_or_else(|e| e.into_inner()).last_access.elapsed() > HLS_IDLE {
                            break;
                        }
                        continue;
                    }
                };
                let Some(f) = f else { break };
                let Ok(outs) = w.push(f) else { break };
                if outs.is_empty() {
                    continue;
                }
                let mut files = hh.files.lock().unwrap_or_else(|e| e.into_inner());
                for o in outs {
                    match o {
                        hls::Output::File(name, b) => {
                            if name.ends_with(".m4s") {
                                files.segments += 1;
                            }
                            files.files.insert(name, AxBytes::from(b));
                        }
                        hls::Output::Delete(name) => {
                            files.files.remove(&name);
                        }
                        hls::Output::Playlist(p) => files.playlist = Some(p),
                    }
                }
                drop(files);
                hh.ready.notify_waiters();
            }
            hh.files.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
            hh.ready.notify_waiters();
            drop(v);
        });
        Ok(h)
    }
}

/// `GET /live/{token}/index.m3u8` and the files it names.
pub(crate) async fn live_hls<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path((t, file)): Path<(String, String)>,
) -> Response {
    let (lc, ch, q) = match c.lives.check_token(&t) {
        Ok(x) => x,
        Err(e) => return viewer_error(e),
    };
    if file.is_empty() || file == "index.html" {
        return (
            [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")],
            include_str!("player.html"),
        )
            .into_response();
    }
    let h = match c.hls_of(&lc, ch, &q).await {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    if file == "index.m3u8" {
        // The first request waits for two segments: a player given an
        // empty live playlist gives up.
        let deadline = tokio::time::Instant::now() + c.lives.cfg.start_timeout + Duration::from_secs(5);
        loop {
            let notified = h.ready.notified();
            {
                let mut f = h.files.lock().unwrap_or_else(|e| e.into_inner());
                f.last_access = Instant::now();
                if let Some(p) = f.playlist.clone().filter(|_| f.segments >= 2 || f.ended) {
                    return ([("content-type", "application/vnd.apple.mpegurl"), ("cache-control", "no-store")], p)
                        .into_response();
                }
                if f.ended {
                    return ApiError::conflict("the live stream stopped").into_response();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return ApiError::timeout("no HLS segment yet").into_response();
            }
        }
    }
    let mut f = h.files.lock().unwrap_or_else(|e| e.into_inner());
    f.last_access = Instant::now();
    match f.files.get(&file) {
        Some(b) => {
            let ct =
                if file.ends_with(".mp4") || file.ends_with(".m4s") { "video/mp4" } else { "application/octet-stream" };
            ([("content-type", ct)], b.clone()).into_response()
        }
        None => ApiError::not_found(format!("{file}: not in the live window (any more)")).into_response(),
    }
}

fn no_device(lc: &str) -> ApiError {
    ApiError::not_found(format!("no device {lc:?}"))
}

/// 404 unless `ch` is one of `channels` (or none is listed yet and
/// `unreported_ok`).
fn channel_in(lc: &str, ch: u32, channels: &[u32], unreported_ok: bool) -> ApiResult<()> {
    if (unreported_ok && channels.is_empty()) || channels.contains(&ch) {
        return Ok(());
    }
    let known: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    Err(ApiError::not_found(format!(
        "device {lc:?} has no channel {ch} (its channels: {})",
        if known.is_empty() { "none reported yet".into() } else { known.join(", ") }
    )))
}
