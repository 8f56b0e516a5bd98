//! A device channel's live video, shared: one device stream per channel and
//! encoder, opened when the first user (an RTMP publication, a cloud
//! recording, a snapshot) needs it and closed when the last one leaves.
//!
//! [`Feed`] is the reconnecting camera source: it opens the device's stream
//! through an [`Opener`], publishes every frame into a [`Hub`], and when the
//! device drops the stream (reboot, network) it opens it again with backoff
//! and jitter, carrying one timeline across so publications and recordings
//! downstream see a continuous stream. [`Live`] is what a channel backend
//! holds: its feeds, publications and recording, with the IVT semantics
//! (publishing a stream already published is success, stopping an unknown
//! one is success, `max_bitrate` is checked against the measured rate).

use crate::agent::Backoff;
use crate::record::{RecordStats, Recording};
use crate::source::StreamKind;
use ivr_media::hub::Hub;
use ivr_media::Frame;
use ivr_rpc::catalogue::{Quality, RtmpPublish, StartCloudRecord};
use ivr_rpc::net::Dialer;
use ivr_rpc::{codes, RpcError};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An open device stream, read by the feed's own task (no relay task in
/// between: every hop is a wake-up per frame, which is what a camera costs
/// on small machines). `None`: the device ended the stream; an `Err` is
/// fatal (the device sends what ivr cannot carry) and ends the feed.
/// Dropping it stops the device's stream.
pub trait FrameSource: Send {
    fn next_frame(&mut self) -> crate::backend::BoxFuture<'_, Option<Result<Frame, String>>>;
}

/// An open device stream.
pub type Opened = Box<dyn FrameSource>;

/// Opens one of a channel's device streams.
pub type Opener = Arc<dyn Fn(StreamKind) -> crate::backend::BoxFuture<'static, Result<Opened, String>> + Send + Sync>;

/// What happened to a feed's device stream, for whoever reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// The device ended the stream (and it will be opened again).
    Dropped,
    /// Opening failed (and will be tried again after `wait`).
    CannotOpen { why: String, wait: Duration },
    /// Streaming again after `reconnects` drops.
    Resumed { reconnects: u64 },
}

/// Told of every [`FeedEvent`].
pub type OnFeedEvent = Arc<dyn Fn(&FeedEvent) + Send + Sync>;

/// How a feed behaves beyond the defaults (reconnect forever, log).
#[derive(Clone, Default)]
pub struct FeedOptions {
    /// End when the device ends the stream instead of opening it again.
    pub no_reconnect: bool,
    /// Give up if the very first open fails (a command line wants the
    /// error; an agent waits for the device).
    pub fail_first: bool,
    pub on_event: Option<OnFeedEvent>,
}

/// What a feed has seen.
#[derive(Debug, Default)]
struct FeedState {
    frames: u64,
    bytes: u64,
    reconnects: u64,
    last_frame: Option<Instant>,
    /// (arrival, bytes) of the last two seconds of video.
    window: VecDeque<(Instant, usize)>,
    window_bytes: usize,
    last_error: Option<String>,
    /// Why the feed ended for good (fatal frame, first open failed).
    failed: Option<String>,
}

/// One device stream feeding a hub, reopened when it drops: the
/// reconnecting camera source of the edge and of `ivr dvrip stream`. Each
/// stream opened is shifted onto one timeline (the next frame follows the
/// last one), so sinks downstream see one continuous stream.
pub struct Feed {
    pub hub: Arc<Hub>,
    task: tokio::task::AbortHandle,
    done: tokio::sync::watch::Receiver<bool>,
    st: Arc<Mutex<FeedState>>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const WINDOW: Duration = Duration::from_secs(2);

impl Feed {
    /// Starts reading `kind` through `open` (inside a tokio runtime),
    /// reconnecting forever.
    pub fn start(name: String, kind: StreamKind, open: Opener) -> Feed {
        Feed::start_with(name, kind, open, FeedOptions::default())
    }

    pub fn start_with(name: String, kind: StreamKind, open: Opener, opts: FeedOptions) -> Feed {
        // 2 s of a 25 fps camera behind (the ring keeps its frames alive:
        // at 4 Mbit/s each second is 0.5 MB); the GOP cache bounded in bytes.
        let hub = Arc::new(Hub::new(50, 16 << 20));
        let st = Arc::new(Mutex::new(FeedState::default()));
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let (h, s) = (hub.clone(), st.clone());
        let say = move |e: FeedEvent| {
            if let Some(f) = &opts.on_event {
                f(&e);
            }
        };
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            // The timeline: each opened stream is shifted to follow the last.
            let (mut next_t, mut frame_step) = (0u64, 3600u64);
            let mut opened_once = false;
            'feed: loop {
                match open(kind).await {
                    Ok(mut o) => {
                        let reconnects = s.lock().unwrap_or_else(|e| e.into_inner()).reconnects;
                        if opened_once {
                            say(FeedEvent::Resumed { reconnects });
                        }
                        opened_once = true;
                        let mut shift: Option<i64> = None;
                        let mut last_dts = None;
                        while let Some(f) = o.next_frame().await {
                            let mut f = match f {
                                Ok(f) => f,
                                Err(why) => {
                                    tracing::warn!(feed = %name, "{why}");
                                    s.lock().unwrap_or_else(|e| e.into_inner()).failed = Some(why);
                                    break 'feed;
                                }
                            };
                            let sh = *shift.get_or_insert(next_t as i64 - f.dts as i64);
                            f.dts = (f.dts as i64 + sh).max(0) as u64;
                            f.pts = (f.pts as i64 + sh).max(0) as u64;
                            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                            g.bytes += f.data.len() as u64;
                            if f.codec.is_video() {
                                if let Some(l) = last_dts {
                                    if f.dts > l {
                                        frame_step = (f.dts - l).min(90_000);
                                    }
                                }
                                last_dts = Some(f.dts);
                                next_t = next_t.max(f.dts + frame_step);
                                let now = Instant::now();
                                g.frames += 1;
                                g.last_frame = Some(now);
                                g.window.push_back((now, f.data.len()));
                                g.window_bytes += f.data.len();
                                while g.window.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW) {
                                    let (_, n) = g.window.pop_front().unwrap_or((now, 0));
                                    g.window_bytes -= n;
                                }
                                backoff.reset();
                            }
                            drop(g);
                            h.publish(f);
                        }
                        drop(o);
                        let why = "the device ended the stream".to_owned();
                        {
                            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                            g.last_error = Some(why.clone());
                            if opts.no_reconnect {
                                break 'feed;
                            }
                            g.reconnects += 1;
                        }
                        tracing::info!(feed = %name, "{why}; opening it again");
                        say(FeedEvent::Dropped);
                    }
                    Err(e) => {
                        if opts.fail_first && !opened_once {
                            s.lock().unwrap_or_else(|e| e.into_inner()).failed = Some(e);
                            break 'feed;
                        }
                        tracing::warn!(feed = %name, "cannot open the stream: {e}");
                        s.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e.clone());
                        let wait = backoff.next_wait().max(Duration::from_millis(200));
                        say(FeedEvent::CannotOpen { why: e, wait });
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                tokio::time::sleep(backoff.next_wait().max(Duration::from_millis(200))).await;
            }
            let _ = done_tx.send(true);
        });
        Feed { hub, task: task.abort_handle(), done, st }
    }

    /// Waits until the feed has ended for good (no reconnect, or failed).
    pub async fn ended(&self) {
        let mut d = self.done.clone();
        let _ = d.wait_for(|v| *v).await;
    }

    /// Why the feed ended for good, if it did.
    pub fn failure(&self) -> Option<String> {
        self.st.lock().unwrap_or_else(|e| e.into_inner()).failed.clone()
    }

    /// Video frames and media bytes received, and the device's drops.
    pub fn counts(&self) -> (u64, u64, u64) {
        let g = self.st.lock().unwrap_or_else(|e| e.into_inner());
        (g.frames, g.bytes, g.reconnects)
    }

    /// Whether video arrived in the last three seconds.
    pub fn receiving(&self) -> bool {
        let g = self.st.lock().unwrap_or_else(|e| e.into_inner());
        g.last_frame.is_some_and(|t| t.elapsed() < Duration::from_secs(3))
    }

    pub fn last_error(&self) -> Option<String> {
        let g = self.st.lock().unwrap_or_else(|e| e.into_inner());
        g.failed.clone().or_else(|| g.last_error.clone())
    }

    /// The video bitrate over the last two seconds of arrivals (bit/s),
    /// once a second of video has come.
    pub fn bitrate(&self) -> Option<u64> {
        let g = self.st.lock().unwrap_or_else(|e| e.into_inner());
        let (first, _) = g.window.front()?;
        let span = first.elapsed();
        (span >= Duration::from_secs(1)).then(|| (g.window_bytes as f64 * 8.0 / span.as_secs_f64()) as u64)
    }

    /// Waits up to `limit` for a bitrate measurement.
    pub async fn measure(&self, limit: Duration) -> Option<u64> {
        let until = Instant::now() + limit;
        loop {
            if let Some(b) = self.bitrate() {
                return Some(b);
            }
            if Instant::now() >= until || self.failure().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Which encoder serves a quality: hd/fhd the main stream, ld/sd the extra
/// one, unless the channel's source pins one (`?stream=extra`).
pub fn stream_for(q: Quality, pinned: Option<StreamKind>) -> StreamKind {
    pinned.unwrap_or(match q {
        Quality::Hd | Quality::Fhd => StreamKind::Main,
        Quality::Ld | Quality::Sd => StreamKind::Extra,
    })
}

struct Publication {
    kind: StreamKind,
    task: tokio::task::AbortHandle,
}

/// A channel's pre-record: the last `secs` of its video (GOP-aligned,
/// bounded in bytes), kept only for a while after the cloud asked for a
/// recording with pre-record, since that is when another one may come
/// (alarm recordings); a ring per channel for a pre-record nobody asks for
/// would keep every camera's stream open.
struct PreRecord {
    kind: StreamKind,
    until: Instant,
    ring: Arc<Mutex<Ring>>,
    task: tokio::task::AbortHandle,
}

/// Video frames of the last `span` (90 kHz), starting at a keyframe.
#[derive(Default)]
pub struct Ring {
    frames: VecDeque<Frame>,
    bytes: usize,
    span: u64,
    max_bytes: usize,
}

impl Ring {
    pub fn new(span: u64, max_bytes: usize) -> Ring {
        Ring { span, max_bytes, ..Ring::default() }
    }

    /// Adds a video frame; drops whole GOPs from the front while the rest
    /// still covers `span`, or while over `max_bytes`.
    pub fn push(&mut self, f: Frame) {
        if !f.codec.is_video() || (self.frames.is_empty() && !f.keyframe) {
            return;
        }
        self.bytes += f.data.len();
        let newest = f.dts;
        self.frames.push_back(f);
        // The second keyframe: where the ring would start without its first GOP.
        while let Some(next) = self.frames.iter().skip(1).position(|x| x.keyframe).map(|i| i + 1) {
            let covers = newest.saturating_sub(self.frames[next].dts) >= self.span;
            if !(covers || self.bytes > self.max_bytes) {
                break;
            }
            for x in self.frames.drain(..next) {
                self.bytes -= x.data.len();
            }
        }
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.frames.iter().cloned().collect()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// How long a channel keeps its pre-record after a request that used one.
pub const PRERECORD_ARMED: Duration = Duration::from_secs(3600);
/// The most a channel's pre-record holds.
pub const PRERECORD_MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
struct LiveState {
    /// Open feeds and how many users each has.
    feeds: HashMap<StreamKind, (Arc<Feed>, usize)>,
    publishing: HashMap<String, Publication>,
    recording: Option<(String, StreamKind, Recording)>,
    prerecord: Option<PreRecord>,
}

/// A device channel's feeds, publications and recording.
pub struct Live {
    name: String,
    open: Opener,
    pinned: Option<StreamKind>,
    dialer: Dialer,
    st: Mutex<LiveState>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Live {
    /// `pinned`: the encoder every quality uses (`None`: by quality).
    pub fn new(name: String, open: Opener, pinned: Option<StreamKind>, dialer: Dialer) -> Live {
        Live { name, open, pinned, dialer, st: Mutex::new(LiveState::default()) }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A user of `kind`'s feed: opens it if nobody uses it yet.
    pub fn acquire(&self, kind: StreamKind) -> Arc<Feed> {
        let mut st = self.st();
        let e = st.feeds.entry(kind).or_insert_with(|| {
            let name = format!("{} ({})", self.name, kind.as_str());
            (Arc::new(Feed::start(name, kind, self.open.clone())), 0)
        });
        e.1 += 1;
        e.0.clone()
    }

    /// A user leaves; the last one closes the device stream.
    pub fn release(&self, kind: StreamKind) {
        let mut st = self.st();
        if let Some(e) = st.feeds.get_mut(&kind) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                st.feeds.remove(&kind);
            }
        }
    }

    /// Opens the feed for a request and checks `max_bitrate` against what
    /// the device really sends (error 11); a stream that gives no video
    /// within 10 s is an error naming the device's last complaint.
    async fn checked_feed(&self, q: Quality, max_bitrate: u64) -> Result<(StreamKind, Arc<Feed>), RpcError> {
        let kind = stream_for(q, self.pinned);
        let feed = self.acquire(kind);
        if max_bitrate > 0 {
            match feed.measure(Duration::from_secs(10)).await {
                Some(b) if b > max_bitrate => {
                    self.release(kind);
                    return Err(RpcError::new(
                        codes::BITRATE_TOO_LARGE,
                        format!(
                            "{}: the {} stream runs at {b} bit/s, above max_bitrate {max_bitrate}",
                            self.name,
                            kind.as_str()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.release(kind);
                    let why = feed.last_error().unwrap_or_else(|| "no video within 10 s".into());
                    return Err(RpcError::new(codes::INTERNAL, format!("{}: {why}", self.name)));
                }
            }
        }
        Ok((kind, feed))
    }

    /// RTMPPublish: the channel's stream to `url` (reconnecting) until stopped.
    pub async fn publish(&self, p: &RtmpPublish) -> Result<Value, RpcError> {
        if self.st().publishing.contains_key(&p.stream_id) {
            return Ok(json!({}));
        }
        if let Err(e) = ivr_media::rtmp::parse_url(&p.url) {
            return Err(RpcError::new(codes::INTERNAL, format!("params.url: {e}")));
        }
        let (kind, feed) = self.checked_feed(p.quality, p.max_bitrate).await?;
        let sub = feed.hub.subscribe();
        let (url, id, name) = (p.url.clone(), p.stream_id.clone(), self.name.clone());
        let task = tokio::spawn(async move {
            let st = ivr_media::rtmp::publish_loop(
                sub,
                &url,
                25,
                Duration::from_secs(30),
                |e| tracing::warn!(channel = %name, stream_id = %id, "{e}"),
            )
            .await;
            tracing::info!(channel = %name, %url, frames = st.frames, reconnects = st.reconnects, "publication ended");
        });
        let old = self.st().publishing.insert(p.stream_id.clone(), Publication { kind, task: task.abort_handle() });
        if let Some(old) = old {
            // Raced with itself: keep one.
            old.task.abort();
            self.release(old.kind);
        }
        Ok(json!({}))
    }

    /// RTMPStopPublish (an unknown stream is success).
    pub fn stop_publish(&self, stream_id: &str) {
        let p = self.st().publishing.remove(stream_id);
        if let Some(p) = p {
            p.task.abort();
            self.release(p.kind);
        }
    }

    /// StartCloudRecord: the channel's stream through the segmenter to the
    /// callback protocol. One recording a channel: a new session replaces
    /// the old one; the same session again is success.
    pub async fn record(&self, r: &StartCloudRecord) -> Result<Value, RpcError> {
        if self.st().recording.as_ref().is_some_and(|x| x.0 == r.session_id) {
            return Ok(json!({}));
        }
        if !r.cbk_url.starts_with("http://") && !r.cbk_url.starts_with("https://") {
            return Err(RpcError::new(codes::INTERNAL, "params.cbk_url: expected an http:// or https:// URL"));
        }
        let (kind, feed) = self.checked_feed(r.quality, r.max_bitrate).await?;
        let history = self.prerecord_frames(kind);
        let Some(rec) = crate::record::start_from(r, self.dialer.clone(), history, feed.hub.subscribe()) else {
            self.release(kind);
            return Err(RpcError::new(codes::INTERNAL, "no runtime to record on"));
        };
        let old = self.st().recording.replace((r.session_id.clone(), kind, rec));
        if let Some((_, k, old)) = old {
            old.stop();
            self.release(k);
        }
        if r.prerecord_seconds > 0 {
            self.arm_prerecord(kind, r.prerecord_seconds, &feed);
        }
        Ok(json!({}))
    }

    /// The pre-record ring's frames for a recording of `kind` (empty when
    /// the channel keeps none, or it has expired).
    fn prerecord_frames(&self, kind: StreamKind) -> Vec<Frame> {
        self.expire_prerecord();
        let st = self.st();
        match &st.prerecord {
            Some(p) if p.kind == kind => p.ring.lock().unwrap_or_else(|e| e.into_inner()).frames(),
            _ => Vec::new(),
        }
    }

    /// Keeps (or renews) a pre-record ring of `secs` for `kind`, bounded by
    /// the stream's measured bitrate (×1.5, at most 64 MiB).
    fn arm_prerecord(&self, kind: StreamKind, secs: u32, feed: &Arc<Feed>) {
        let until = Instant::now() + PRERECORD_ARMED;
        let span = secs as u64 * 90_000;
        let max = feed.bitrate().map_or(PRERECORD_MAX_BYTES, |b| {
            ((b as f64 / 8.0 * secs as f64 * 1.5) as usize).clamp(1 << 20, PRERECORD_MAX_BYTES)
        });
        {
            let mut st = self.st();
            if let Some(p) = st.prerecord.as_mut() {
                if p.kind == kind {
                    p.until = until;
                    let mut r = p.ring.lock().unwrap_or_else(|e| e.into_inner());
                    r.span = r.span.max(span);
                    r.max_bytes = max;
                    return;
                }
            }
        }
        self.disarm_prerecord();
        let feed = self.acquire(kind);
        let ring = Arc::new(Mutex::new(Ring::new(span, max)));
        let mut sub = feed.hub.subscribe();
        let r = ring.clone();
        let task = tokio::spawn(async move {
            while let Some(f) = sub.recv().await {
                r.lock().unwrap_or_else(|e| e.into_inner()).push(f);
            }
        });
        self.st().prerecord = Some(PreRecord { kind, until, ring, task: task.abort_handle() });
    }

    fn disarm_prerecord(&self) {
        let p = self.st().prerecord.take();
        if let Some(p) = p {
            p.task.abort();
            self.release(p.kind);
        }
    }

    fn expire_prerecord(&self) {
        let expired = self.st().prerecord.as_ref().is_some_and(|p| Instant::now() >= p.until);
        if expired {
            self.disarm_prerecord();
        }
    }

    /// Bytes the pre-record ring holds now (0 without one).
    pub fn prerecord_bytes(&self) -> usize {
        self.expire_prerecord();
        self.st().prerecord.as_ref().map_or(0, |p| p.ring.lock().unwrap_or_else(|e| e.into_inner()).bytes())
    }

    /// StopCloudRecord (an unknown session is success): the last segment
    /// is finished and uploaded.
    pub fn stop_record(&self, session_id: &str) {
        let mut st = self.st();
        if st.recording.as_ref().is_some_and(|x| x.0 == session_id) {
            if let Some((_, k, r)) = st.recording.take() {
                drop(st);
                r.stop();
                self.release(k);
                // The pre-record ring stays (bounded in bytes, freed
                // PRERECORD_ARMED after the last recording that asked for
                // it): the next recording, an alarm's, starts with it.
            }
        }
    }

    pub fn record_session(&self) -> Option<String> {
        self.st().recording.as_ref().map(|r| r.0.clone())
    }

    pub fn record_stats(&self) -> Option<RecordStats> {
        let st = self.st();
        st.recording.as_ref().map(|r| r.2.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Stream ids being published.
    pub fn publishing(&self) -> Vec<String> {
        self.st().publishing.keys().cloned().collect()
    }

    /// Publishing with video arriving: the channel is "live". (Asked at
    /// every Keepalive: an expired pre-record ring is let go here too.)
    pub fn live(&self) -> bool {
        self.expire_prerecord();
        let st = self.st();
        st.publishing.values().any(|p| st.feeds.get(&p.kind).is_some_and(|f| f.0.receiving()))
    }

    /// How many device streams are open (for tests and status).
    pub fn open_feeds(&self) -> usize {
        self.st().feeds.len()
    }

    /// The latest keyframe of the channel (with its parameter sets): from
    /// a running feed, or by opening one for up to `wait`.
    pub async fn keyframe(&self, wait: Duration) -> Option<Frame> {
        let kind = self.pinned.unwrap_or(StreamKind::Extra);
        let feed = self.acquire(kind);
        let mut sub = feed.hub.subscribe();
        let got = tokio::time::timeout(wait, async {
            while let Some(f) = sub.recv().await {
                if f.codec.is_video() && f.keyframe {
                    return Some(f);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        drop(sub);
        self.release(kind);
        got
    }

    /// Ends every publication and the recording (channel removed).
    pub fn stop_all(&self) {
        let mut st = self.st();
        if let Some(p) = st.prerecord.take() {
            p.task.abort();
        }
        for (_, p) in st.publishing.drain() {
            p.task.abort();
        }
        if let Some((_, _, r)) = st.recording.take() {
            r.stop();
        }
        st.feeds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivr_media::Codec;

    fn f(i: u64, key: bool, size: usize) -> Frame {
        let t = i * 3600;
        Frame { codec: Codec::H264, keyframe: key, pts: t, dts: t, data: vec![0u8; size].into() }
    }

    #[test]
    fn the_ring_keeps_whole_gops_covering_its_span_within_its_bytes() {
        // 2 s of span, GOPs of 25 frames (1 s).
        let mut r = Ring::new(2 * 90_000, 1 << 30);
        for i in 0..250 {
            r.push(f(i, i % 25 == 0, 100));
        }
        let fr = r.frames();
        assert!(fr[0].keyframe);
        let span = fr.last().unwrap().dts - fr[0].dts;
        assert!((2 * 90_000..3 * 90_000).contains(&span), "{span}");
        // Bytes bound: at most one GOP over.
        let mut r = Ring::new(60 * 90_000, 5_000);
        for i in 0..250 {
            r.push(f(i, i % 25 == 0, 100));
        }
        assert!(r.bytes() <= 5_000 + 2_500, "{}", r.bytes());
        assert!(r.frames()[0].keyframe);
        // Audio and a headless start are not kept.
        let mut r = Ring::new(90_000, 1 << 20);
        r.push(f(0, false, 10));
        r.push(Frame { codec: Codec::G711A, ..f(1, true, 10) });
        assert_eq!(r.bytes(), 0);
    }
}
