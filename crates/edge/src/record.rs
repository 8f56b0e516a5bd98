//! StartCloudRecord on a simulated channel: the channel's video through
//! the media engine's segmenter (seg_duration, seg_max_size, seg_max_count,
//! prerecord_seconds, start_ts, max_bitrate), each finished segment muxed
//! to MPEG-TS and uploaded by the callback protocol of docs/ivr-rpc.md:
//! `POST cbk_url` with the segment's description → `{"url"}` → `PUT` the
//! bytes there. A failed upload is retried with backoff while the segment
//! waits (at most `seg_max_count` waiting, plus the one in flight; beyond
//! that the oldest is dropped and counted, by the segmenter).
//!
//! The simulated camera's stream is the fixture clip of the quality, padded
//! to the quality's bitrate, looped at 25 fps; it has "been running" before the call, so the pre-record is
//! the clip as it would have been (generated at once, then real time).

use crate::upload::{request, request_with, UploadError};
use ivr_media::segment::{Segment, SegmentConfig, Segmenter, HZ};
use ivr_media::{ticks, Codec, Frame};
use ivr_rpc::catalogue::{Quality, StartCloudRecord};
use ivr_rpc::net::Dialer;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What a recording did, for the log and the tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordStats {
    pub uploaded: u64,
    pub upload_failures: u64,
    pub dropped: u64,
    pub last_error: Option<String>,
}

/// A running recording: stop it gracefully (the last segment is finished
/// and uploaded) or abort it (a reboot).
pub struct Recording {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::AbortHandle>,
    pub stats: Arc<Mutex<RecordStats>>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").field("stats", &self.stats).finish()
    }
}

impl Recording {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The simulated channel's stream of a quality: the fixture clip (640×360
/// for ld/sd, 2592×1944 for hd/fhd, H.264) padded to 95 % of the
/// quality's bitrate (`backend::bitrate`), so `max_bitrate` checks see
/// what a real camera of that quality would send. Frames from 0, 25 fps.
pub fn clip(q: Quality) -> Vec<Frame> {
    let c = ivr_fixtures::clip(ivr_fixtures::ClipCodec::H264, matches!(q, Quality::Hd | Quality::Fhd));
    c.padded(crate::backend::bitrate(q) * 95 / 100)
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let t = ticks(i as u64, 25);
            Frame { codec: Codec::H264, keyframe: u.keyframe, pts: t, dts: t, data: u.data }
        })
        .collect()
}

/// Starts recording (`None` outside a tokio runtime).
pub fn start(r: &StartCloudRecord, dialer: Dialer) -> Option<Recording> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let seg = Arc::new(Mutex::new(Segmenter::new(config(r))));
    let ready = Arc::new(Notify::new());
    let stats = Arc::new(Mutex::new(RecordStats::default()));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let clip = clip(r.quality);
    let (channel, session) = (r.channel, r.session_id.clone());
    let start_ts_ms = if r.start_ts > 0 { r.start_ts.saturating_mul(1000) } else { 0 };

    // The camera: history for the pre-record at once, then real time. The
    // wall clock is read now, when the recording was asked for (the task
    // may start later on a loaded machine).
    let asked_ms = chrono::Utc::now().timestamp_millis();
    let (s, n, st) = (seg.clone(), ready.clone(), stats.clone());
    // At most the pre-record's byte cap of history (an hour of fhd would
    // be gigabytes).
    let per_frame = (clip.iter().map(|f| f.data.len()).sum::<usize>() / clip.len().max(1)).max(1);
    let history = (r.prerecord_seconds as u64 * 25 + clip.len() as u64)
        .min((crate::live::PRERECORD_MAX_BYTES / per_frame) as u64 + clip.len() as u64);
    let source = rt.spawn(async move {
        let frame = |i: u64| {
            let t = HZ + ticks(i, 25);
            Frame { pts: t, dts: t, ..clip[(i % clip.len() as u64) as usize].clone() }
        };
        {
            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..history {
                let _ = g.push(frame(i));
            }
            g.start(HZ + ticks(history, 25), asked_ms, start_ts_ms);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        let mut i = history;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_rx.changed() => break,
            }
            let (r, ready) = {
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                (g.push(frame(i)), g.waiting() > 0)
            };
            i += 1;
            if !pushed(r, ready, channel, &session, &st, &n) {
                break;
            }
        }
        source_done(&s, &done_tx, &n);
    });

    let uploader = spawn_uploader(&rt, r, dialer, seg, ready, stats.clone(), done_rx);
    Some(Recording { stop: stop_tx, tasks: vec![source.abort_handle(), uploader], stats })
}

/// Records a device's stream from the hub of its feed: `history` (the
/// channel's pre-record ring, oldest first, when it keeps one) and the
/// frames the hub has cached (the current GOP) are the pre-record, then
/// real time until stopped. `None` outside a runtime.
pub fn start_from(
    r: &StartCloudRecord,
    dialer: Dialer,
    history: Vec<Frame>,
    mut sub: ivr_media::hub::Subscriber,
) -> Option<Recording> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let seg = Arc::new(Mutex::new(Segmenter::new(config(r))));
    let ready = Arc::new(Notify::new());
    let stats = Arc::new(Mutex::new(RecordStats::default()));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let (channel, session) = (r.channel, r.session_id.clone());
    let start_ts_ms = if r.start_ts > 0 { r.start_ts.saturating_mul(1000) } else { 0 };
    let (s, n, st) = (seg.clone(), ready.clone(), stats.clone());
    let source = rt.spawn(async move {
        let mut backlog = sub.backlog();
        let mut started = false;
        // The ring's frames first; the hub's cached GOP overlaps its end.
        let mut seen = None;
        {
            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
            for f in history {
                seen = Some(f.dts);
                let _ = g.push(f);
            }
        }
        loop {
            let f = tokio::select! {
                f = sub.recv() => f,
                _ = stop_rx.changed() => break,
            };
            let Some(f) = f else { break };
            backlog = backlog.saturating_sub(1);
            // Segments are MPEG-TS of the video: the segmenter cuts at video
            // keyframes, and cameras' G.711 has no TS stream type.
            if !f.codec.is_video() || seen.is_some_and(|t| f.dts <= t) {
                continue;
            }
            let pts = f.pts;
            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
            let r = g.push(f);
            if !started && backlog == 0 {
                started = true;
                g.start(pts, chrono::Utc::now().timestamp_millis(), start_ts_ms);
            }
            let ready = g.waiting() > 0;
            drop(g);
            if !pushed(r, ready, channel, &session, &st, &n) {
                break;
            }
        }
        source_done(&s, &done_tx, &n);
    });
    let uploader = spawn_uploader(&rt, r, dialer, seg, ready, stats.clone(), done_rx);
    Some(Recording { stop: stop_tx, tasks: vec![source.abort_handle(), uploader], stats })
}

/// After a frame went into the segmenter: the uploader is told when a
/// segment is ready (only then: a wake-up per frame for nothing was a
/// camera's cost), or the recording stops (max_bitrate exceeded) with the
/// reason kept.
fn pushed(
    r: Result<(), ivr_media::segment::SegmentError>,
    ready: bool,
    channel: u32,
    session: &str,
    st: &Mutex<RecordStats>,
    n: &Notify,
) -> bool {
    match r {
        Ok(()) => {
            if ready {
                n.notify_one();
            }
            true
        }
        Err(e) => {
            tracing::warn!(channel, session = %session, "recording stopped: {e}");
            st.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e.to_string());
            false
        }
    }
}

/// The source ended: the last segment is finished and the uploader told.
fn source_done(s: &Mutex<Segmenter>, done: &watch::Sender<bool>, n: &Notify) {
    s.lock().unwrap_or_else(|e| e.into_inner()).stop();
    let _ = done.send(true);
    n.notify_one();
}

fn config(r: &StartCloudRecord) -> SegmentConfig {
    SegmentConfig {
        seg_duration: r.seg_duration.max(1) as u64 * HZ,
        seg_max_size: r.seg_max_size.max(64 * 1024) as usize,
        seg_max_count: r.seg_max_count.max(1) as usize,
        prerecord: r.prerecord_seconds as u64 * HZ,
        // However long a pre-record the cloud asks for, memory is bounded.
        prerecord_max_bytes: crate::live::PRERECORD_MAX_BYTES,
        max_bitrate: r.max_bitrate,
    }
}

/// Takes finished segments and uploads them in order, retrying each with
/// backoff, until the source is done and nothing waits.
fn spawn_uploader(
    rt: &tokio::runtime::Handle,
    r: &StartCloudRecord,
    dialer: Dialer,
    s: Arc<Mutex<Segmenter>>,
    ready: Arc<Notify>,
    st: Arc<Mutex<RecordStats>>,
    done_rx: watch::Receiver<bool>,
) -> tokio::task::AbortHandle {
    let (cbk, session, channel) = (r.cbk_url.clone(), r.session_id.clone(), r.channel);
    rt.spawn(async move {
        loop {
            let next = {
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                st.lock().unwrap_or_else(|e| e.into_inner()).dropped = g.counters().dropped;
                g.take()
            };
            let Some(segment) = next else {
                if *done_rx.borrow() {
                    break;
                }
                ready.notified().await;
                continue;
            };
            let size = match TsPieces::size(&segment) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(channel, seq = segment.seq, "segment not muxed: {e}");
                    st.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e.to_string());
                    continue;
                }
            };
            let mut backoff = Duration::from_millis(500);
            loop {
                match upload(&dialer, &cbk, &session, channel, &segment, size).await {
                    Ok(()) => {
                        st.lock().unwrap_or_else(|e| e.into_inner()).uploaded += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(channel, seq = segment.seq, "segment upload failed: {e}; retrying");
                        {
                            let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
                            g.upload_failures += 1;
                            g.last_error = Some(e.to_string());
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    })
    .abort_handle()
}

/// A segment as MPEG-TS, frame by frame: each call muxes the next frame
/// into `out`; nothing added means the segment is done. The same frames
/// always give the same bytes, so a segment is measured (counted by the
/// muxer's `measure`, nothing copied) and then sent without ever being
/// held as TS: a 2 MB buffer per segment came fresh from the OS each time,
/// and zeroing its pages was a quarter of an edge's CPU.
pub struct TsPieces<'a> {
    muxer: ivr_media::ts::Muxer,
    frames: std::slice::Iter<'a, Frame>,
}

impl<'a> TsPieces<'a> {
    pub fn new(segment: &'a Segment) -> Result<TsPieces<'a>, ivr_media::ts::TsError> {
        let muxer = ivr_media::ts::Muxer::new(segment.frames.first().map_or(Codec::H264, |f| f.codec))?;
        Ok(TsPieces { muxer, frames: segment.frames.iter() })
    }

    pub fn next_into(&mut self, out: &mut Vec<u8>) -> Result<(), ivr_media::ts::TsError> {
        if let Some(f) = self.frames.next() {
            self.muxer.write(f, out)?;
        }
        Ok(())
    }

    /// The whole segment's size as TS, counted without muxing it.
    pub fn size(segment: &Segment) -> Result<usize, ivr_media::ts::TsError> {
        let mut p = TsPieces::new(segment)?;
        p.frames.try_fold(0, |n, f| Ok(n + p.muxer.measure(f)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Http(#[from] UploadError),
    #[error("{url}: {why}")]
    Answer { url: String, why: String },
}

/// The callback protocol: describe the segment to `cbk_url`, PUT it to the
/// URL the cloud answers with.
async fn upload(
    dialer: &Dialer,
    cbk: &str,
    session: &str,
    channel: u32,
    s: &Segment,
    size: usize,
) -> Result<(), RecordError> {
    let desc = json!({
        "session_id": session, "channel": channel, "seq": s.seq,
        "start_ts": s.start_unix_ms / 1000, "start_ms": s.start_unix_ms,
        "duration": s.duration as f64 / HZ as f64, "size": size,
    });
    let body = serde_json::to_vec(&desc).unwrap_or_default();
    let t = Duration::from_secs(30);
    let (status, answer) =
        request(dialer, "POST", cbk, &[("Content-Type", "application/json")], &body, 64 * 1024, t).await?;
    let bad = |why: String| RecordError::Answer { url: cbk.to_owned(), why };
    if !(200..300).contains(&status) {
        return Err(bad(format!("HTTP {status}")));
    }
    let v: Value = serde_json::from_slice(&answer).map_err(|e| bad(format!("answer is not JSON: {e}")))?;
    let url = v["url"].as_str().ok_or_else(|| bad("answer has no \"url\"".into()))?;
    let mut pieces = TsPieces::new(s).map_err(|e| RecordError::Answer { url: url.to_owned(), why: e.to_string() })?;
    let mut fill = |buf: &mut Vec<u8>| pieces.next_into(buf).map_err(|e| e.to_string());
    let headers = [("Content-Type", "video/mp2t")];
    let (status, _) = request_with(dialer, "PUT", url, &headers, size, &mut fill, 64 * 1024, t).await?;
    if !(200..300).contains(&status) {
        return Err(RecordError::Answer { url: url.to_owned(), why: format!("HTTP {status}") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_measured_then_sent_is_the_same_bytes() {
        let frames = clip(Quality::Sd);
        let segment = Segment {
            seq: 0,
            start_unix_ms: 0,
            duration: 0,
            bytes: frames.iter().map(|f| f.data.len()).sum(),
            frames: frames.iter().take(50).map(|f| Frame { pts: f.pts + HZ, dts: f.dts + HZ, ..f.clone() }).collect(),
            oversize: false,
        };
        let size = TsPieces::size(&segment).unwrap();
        let pass = || {
            let mut p = TsPieces::new(&segment).unwrap();
            let (mut all, mut buf) = (Vec::new(), Vec::new());
            loop {
                buf.clear();
                p.next_into(&mut buf).unwrap();
                if buf.is_empty() {
                    return all;
                }
                all.extend_from_slice(&buf);
            }
        };
        let (a, b) = (pass(), pass());
        assert_eq!(a.len(), size);
        assert_eq!(a, b, "deterministic");
        assert!(a.len() % 188 == 0 && a[0] == 0x47);
    }
}
