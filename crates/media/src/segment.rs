//! The cloud-record segmenter (IVR RPC `StartCloudRecord`): frames in,
//! segments out, each starting with a keyframe.
//!
//! - A segment is cut at the first keyframe at or after `seg_duration`.
//! - It never exceeds `seg_max_size`: when the next frame would push it
//!   over, the complete GOPs so far become a segment early and the open
//!   GOP starts the next one. A single GOP larger than `seg_max_size`
//!   cannot be cut at a keyframe: it becomes one segment on its own,
//!   marked `oversize` and counted, rather than a segment that does not
//!   start with a keyframe.
//! - At most `seg_max_count` segments wait for upload; beyond that the
//!   oldest is dropped and counted.
//! - Before recording starts, a ring keeps `prerecord` of GOPs, so the
//!   first segment begins at the latest keyframe at least that far in the
//!   past (or at the oldest one kept, if the stream is younger).
//! - `max_bitrate` is checked against the bitrate measured over the last
//!   two seconds; exceeding it is an error (RPC error 11).

use crate::Frame;
use std::collections::VecDeque;

/// 90 kHz ticks per second.
pub const HZ: u64 = 90_000;
const BITRATE_WINDOW: u64 = 2 * HZ;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentConfig {
    /// Target length, 90 kHz ticks.
    pub seg_duration: u64,
    pub seg_max_size: usize,
    pub seg_max_count: usize,
    /// Pre-record, 90 kHz ticks.
    pub prerecord: u64,
    /// The pre-record ring's bytes at most (whole GOPs dropped from its
    /// start past it; the newest GOP is always kept). 0: no byte cap.
    pub prerecord_max_bytes: usize,
    /// Bits per second; 0 = unlimited.
    pub max_bitrate: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// From 0, in order, counting dropped ones.
    pub seq: u64,
    /// Unix time of the first frame, milliseconds.
    pub start_unix_ms: i64,
    /// From the first frame to the next segment's first frame (or to the
    /// last frame plus its duration), 90 kHz ticks.
    pub duration: u64,
    pub bytes: usize,
    pub frames: Vec<Frame>,
    /// A single GOP larger than `seg_max_size`.
    pub oversize: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("stream bitrate {measured} bit/s exceeds max_bitrate {max} bit/s")]
    Bitrate { measured: u64, max: u64 },
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub segments: u64,
    pub dropped: u64,
    pub oversize: u64,
}

pub struct Segmenter {
    cfg: SegmentConfig,
    /// Pre-record ring (not recording) — always starts at a keyframe.
    ring: VecDeque<Frame>,
    ring_bytes: usize,
    recording: bool,
    /// Complete GOPs of the segment being built, and the GOP still open.
    closed: Vec<Frame>,
    closed_bytes: usize,
    open: Vec<Frame>,
    open_bytes: usize,
    ready: VecDeque<Segment>,
    seq: u64,
    counters: Counters,
    /// (pts, unix ms) that maps stream time to wall time.
    clock: Option<(u64, i64)>,
    /// Frame duration seen last (for the last segment's end).
    last_step: u64,
    last_pts: Option<u64>,
    window: VecDeque<(u64, usize)>,
    window_bytes: usize,
}

impl Segmenter {
    pub fn new(cfg: SegmentConfig) -> Segmenter {
        Segmenter {
            cfg,
            ring: VecDeque::new(),
            ring_bytes: 0,
            recording: false,
            closed: Vec::new(),
            closed_bytes: 0,
            open: Vec::new(),
            open_bytes: 0,
            ready: VecDeque::new(),
            seq: 0,
            counters: Counters::default(),
            clock: None,
            last_step: HZ / 25,
            last_pts: None,
            window: VecDeque::new(),
            window_bytes: 0,
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Bits per second over the last two seconds (None until a second of
    /// stream has been seen).
    pub fn bitrate(&self) -> Option<u64> {
        let (first, _) = *self.window.front()?;
        let (last, _) = *self.window.back()?;
        let span = last - first + self.last_step;
        (span >= HZ).then(|| self.window_bytes as u64 * 8 * HZ / span)
    }

    /// Starts recording. `now_pts`/`now_unix_ms` tie stream time to wall
    /// time; with `start_ts_ms` > 0 the first segment is stamped with it
    /// instead (and the next ones follow from it).
    pub fn start(&mut self, now_pts: u64, now_unix_ms: i64, start_ts_ms: i64) {
        if self.recording {
            return;
        }
        self.recording = true;
        self.trim_ring(now_pts);
        let ring: Vec<Frame> = self.ring.drain(..).collect();
        self.ring_bytes = 0;
        let first = ring.first().map(|f| f.pts).unwrap_or(now_pts);
        let unix_first = now_unix_ms - ((now_pts as i64 - first as i64) * 1000 / HZ as i64);
        self.clock = Some((first, if start_ts_ms > 0 { start_ts_ms } else { unix_first }));
        for f in ring {
            self.record(f);
        }
    }

    /// Stops recording: the segment being built is finished (if it has
    /// frames) and the ring starts again.
    pub fn stop(&mut self) {
        if !self.recording {
            return;
        }
        self.recording = false;
        let mut frames = std::mem::take(&mut self.closed);
        frames.append(&mut self.open);
        let bytes = self.closed_bytes + self.open_bytes;
        self.closed_bytes = 0;
        self.open_bytes = 0;
        if !frames.is_empty() {
            let end = frames.last().map(|f| f.pts + self.last_step).unwrap_or(0);
            self.emit(frames, bytes, end);
        }
    }

    /// The oldest segment waiting for upload.
    pub fn take(&mut self) -> Option<Segment> {
        self.ready.pop_front()
    }

    pub fn waiting(&self) -> usize {
        self.ready.len()
    }

    /// Feeds one frame (in decoding order).
    pub fn push(&mut self, f: Frame) -> Result<(), SegmentError> {
        if let Some(p) = self.last_pts {
            if f.pts > p {
                self.last_step = f.pts - p;
            }
        }
        self.last_pts = Some(f.pts);
        self.window.push_back((f.dts, f.data.len()));
        self.window_bytes += f.data.len();
        while let Some(&(t, n)) = self.window.front() {
            if f.dts.saturating_sub(t) >= BITRATE_WINDOW {
                self.window.pop_front();
                self.window_bytes -= n;
            } else {
                break;
            }
        }
        if self.cfg.max_bitrate > 0 {
            if let Some(b) = self.bitrate() {
                if b > self.cfg.max_bitrate {
                    return Err(SegmentError::Bitrate { measured: b, max: self.cfg.max_bitrate });
                }
            }
        }
        if self.recording {
            self.record(f);
        } else {
            self.keep(f);
        }
        Ok(())
    }

    fn keep(&mut self, f: Frame) {
        if self.cfg.prerecord == 0 {
            return;
        }
        if self.ring.is_empty() && !f.keyframe {
            return;
        }
        let now = f.pts;
        self.ring_bytes += f.data.len();
        self.ring.push_back(f);
        self.trim_ring(now);
    }

    /// Keeps the ring from the latest keyframe at least `prerecord` before
    /// `now` (all of it when none is that old yet), then drops whole GOPs
    /// from its start while it is over `prerecord_max_bytes`.
    fn trim_ring(&mut self, now: u64) {
        let horizon = now.saturating_sub(self.cfg.prerecord);
        let cut = self.ring.iter().rposition(|x| x.keyframe && x.pts <= horizon);
        if let Some(i) = cut {
            self.drop_ring_front(i);
        }
        let max = self.cfg.prerecord_max_bytes;
        while max > 0 && self.ring_bytes > max {
            // The next GOP's start; none: only the newest GOP is left.
            match self.ring.iter().skip(1).position(|x| x.keyframe) {
                Some(i) => self.drop_ring_front(i + 1),
                None => break,
            }
        }
    }

    fn drop_ring_front(&mut self, n: usize) {
        for f in self.ring.drain(..n) {
            self.ring_bytes -= f.data.len();
        }
    }

    /// Bytes the pre-record ring holds.
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    fn record(&mut self, f: Frame) {
        if self.closed.is_empty() && self.open.is_empty() && !f.keyframe {
            return; // a segment starts with a keyframe
        }
        if f.keyframe && !self.open.is_empty() {
            // The open GOP is complete.
            self.closed.append(&mut self.open);
            self.closed_bytes += self.open_bytes;
            self.open_bytes = 0;
            let start = self.closed[0].pts;
            if f.pts - start >= self.cfg.seg_duration {
                self.cut(f.pts);
            }
        }
        let n = f.data.len();
        if !self.closed.is_empty() && self.closed_bytes + self.open_bytes + n > self.cfg.seg_max_size {
            let next = self.open.first().map(|x| x.pts).unwrap_or(f.pts);
            self.cut(next);
        }
        self.open.push(f);
        self.open_bytes += n;
    }

    /// The closed GOPs become a segment ending at `end`.
    fn cut(&mut self, end: u64) {
        let frames = std::mem::take(&mut self.closed);
        let bytes = std::mem::replace(&mut self.closed_bytes, 0);
        if !frames.is_empty() {
            self.emit(frames, bytes, end);
        }
    }

    fn emit(&mut self, frames: Vec<Frame>, bytes: usize, end: u64) {
        let start = frames[0].pts;
        let gops = frames.iter().filter(|f| f.keyframe).count();
        let oversize = bytes > self.cfg.seg_max_size;
        debug_assert!(!oversize || gops == 1);
        let (p0, u0) = self.clock.unwrap_or((start, 0));
        let seg = Segment {
            seq: self.seq,
            start_unix_ms: u0 + (start as i64 - p0 as i64) * 1000 / HZ as i64,
            duration: end.saturating_sub(start),
            bytes,
            frames,
            oversize,
        };
        self.seq += 1;
        self.counters.segments += 1;
        if oversize {
            self.counters.oversize += 1;
        }
        self.ready.push_back(seg);
        while self.ready.len() > self.cfg.seg_max_count.max(1) {
            self.ready.pop_front();
            self.counters.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn frame(i: u64, key: bool, size: usize) -> Frame {
        // The first byte carries the index so frames can be told apart.
        let mut d = vec![0u8; size.max(8)];
        d[..8].copy_from_slice(&i.to_be_bytes());
        Frame { codec: Codec::H264, keyframe: key, pts: i * 3600, dts: i * 3600, data: Bytes::from(d) }
    }

    /// GOP lengths and frame sizes → a stream of frames at 25 fps.
    fn stream(gops: &[(usize, usize)]) -> Vec<Frame> {
        let mut out = Vec::new();
        for (len, size) in gops {
            for k in 0..*len {
                let i = out.len() as u64;
                out.push(frame(i, k == 0, if k == 0 { size * 4 } else { *size }));
            }
        }
        out
    }

    fn cfg(dur_s: u64, max: usize, count: usize, pre_s: u64) -> SegmentConfig {
        SegmentConfig {
            seg_duration: dur_s * HZ,
            seg_max_size: max,
            seg_max_count: count,
            prerecord: pre_s * HZ,
            prerecord_max_bytes: 0,
            max_bitrate: 0,
        }
    }

    #[test]
    fn the_prerecord_ring_is_bounded_by_bytes_in_whole_gops() {
        // An hour of pre-record asked, 10 KB allowed: whole GOPs dropped.
        let mut s = Segmenter::new(SegmentConfig { prerecord_max_bytes: 10_000, ..cfg(2, usize::MAX, 100, 3600) });
        for f in stream(&[(25, 100); 200]) {
            s.push(f).unwrap();
            assert!(s.ring_bytes() <= 10_000, "{}", s.ring_bytes());
        }
        // GOPs are 2,800 bytes: three fit.
        assert_eq!(s.ring_bytes(), 3 * 2_800);
        s.start(200 * 25 * HZ / 25, 1_000_000, 0);
        assert_eq!(s.ring_bytes(), 0, "handed to the recording");
        // One GOP larger than the cap is kept whole (nothing else to drop).
        let mut s = Segmenter::new(SegmentConfig { prerecord_max_bytes: 100, ..cfg(2, usize::MAX, 100, 3600) });
        for f in stream(&[(25, 100); 3]) {
            s.push(f).unwrap();
        }
        assert_eq!(s.ring_bytes(), 2_800);
    }

    #[test]
    fn cuts_at_keyframes_near_the_duration() {
        let mut s = Segmenter::new(cfg(2, usize::MAX, 100, 0));
        s.start(0, 1_000_000, 0);
        for f in stream(&[(25, 100); 10]) {
            s.push(f).unwrap();
        }
        s.stop();
        let segs: Vec<Segment> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(segs.len(), 5);
        assert!(segs.iter().all(|x| x.duration == 2 * HZ && x.frames.len() == 50));
        assert_eq!(segs[1].start_unix_ms, 1_002_000);
    }

    #[test]
    fn drops_the_oldest_beyond_max_count_and_counts_them() {
        let mut s = Segmenter::new(cfg(1, usize::MAX, 2, 0));
        s.start(0, 0, 0);
        for f in stream(&[(25, 100); 6]) {
            s.push(f).unwrap();
        }
        s.stop();
        assert_eq!(s.counters(), Counters { segments: 6, dropped: 4, oversize: 0 });
        assert_eq!(s.take().unwrap().seq, 4);
        assert_eq!(s.take().unwrap().seq, 5);
    }

    #[test]
    fn max_bitrate_is_checked() {
        let mut s = Segmenter::new(SegmentConfig { max_bitrate: 100_000, ..cfg(1, usize::MAX, 2, 0) });
        let mut err = None;
        for f in stream(&[(25, 2000); 3]) {
            if let Err(e) = s.push(f) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(SegmentError::Bitrate { max: 100_000, .. })), "{err:?}");
        assert!(s.bitrate().unwrap() > 100_000);
    }

    proptest! {
        #[test]
        fn segments_keep_every_frame_once_and_respect_the_limits(
            gops in proptest::collection::vec((1usize..60, 50usize..3000), 1..40),
            dur_s in 1u64..6,
            max in 2000usize..200_000,
            pre_s in 0u64..6,
            start_at in 0usize..400,
        ) {
            let frames = stream(&gops);
            let c = cfg(dur_s, max, usize::MAX, pre_s);
            let mut s = Segmenter::new(c.clone());
            let start_at = start_at.min(frames.len());
            for f in &frames[..start_at] {
                s.push(f.clone()).unwrap();
            }
            let now = frames.get(start_at).map(|f| f.pts).unwrap_or(frames.len() as u64 * 3600);
            s.start(now, 10_000, 0);
            for f in &frames[start_at..] {
                s.push(f.clone()).unwrap();
            }
            s.stop();
            let segs: Vec<Segment> = std::iter::from_fn(|| s.take()).collect();
            let got: Vec<u64> = segs.iter().flat_map(|x| x.frames.iter().map(|f| f.pts)).collect();

            // Where recording begins: the latest keyframe at least
            // `prerecord` before the start (the oldest kept otherwise), or
            // the first keyframe after it when there is no pre-record.
            let keys: Vec<usize> = (0..frames.len()).filter(|i| frames[*i].keyframe).collect();
            let first = if c.prerecord == 0 {
                keys.iter().copied().find(|k| *k >= start_at)
            } else {
                let horizon = now.saturating_sub(c.prerecord);
                let past: Vec<usize> = keys.iter().copied().filter(|k| *k < start_at).collect();
                past.iter().copied().rfind(|k| frames[*k].pts <= horizon)
                    .or_else(|| past.first().copied())
                    .or_else(|| keys.iter().copied().find(|k| *k >= start_at))
            };
            let want: Vec<u64> = match first { Some(i) => frames[i..].iter().map(|f| f.pts).collect(), None => vec![] };
            prop_assert_eq!(&got, &want, "no frame lost or duplicated, from the pre-record start");

            for (k, x) in segs.iter().enumerate() {
                prop_assert!(x.frames[0].keyframe, "segment {} starts with a keyframe", k);
                prop_assert_eq!(x.seq, k as u64);
                prop_assert_eq!(x.bytes, x.frames.iter().map(|f| f.data.len()).sum::<usize>());
                let gop_count = x.frames.iter().filter(|f| f.keyframe).count();
                if x.bytes > c.seg_max_size {
                    prop_assert!(x.oversize && gop_count == 1, "only a lone GOP may exceed the size");
                }
                let last = k + 1 == segs.len();
                if !last {
                    // Not longer than the duration plus the GOP that crossed it.
                    let max_gop = gops.iter().map(|g| g.0 as u64).max().unwrap() * 3600;
                    prop_assert!(x.duration < c.seg_duration + max_gop);
                    // Shorter than the duration only when the size forced it.
                    let next = &segs[k + 1];
                    if x.duration < c.seg_duration {
                        let first_gop: usize = std::iter::once(&next.frames[0])
                            .chain(next.frames[1..].iter().take_while(|f| !f.keyframe))
                            .map(|f| f.data.len())
                            .sum();
                        prop_assert!(x.bytes + first_gop > c.seg_max_size, "cut early only for size");
                    }
                    prop_assert_eq!(x.frames[0].pts + x.duration, next.frames[0].pts, "segments are contiguous");
                }
            }
            // Pre-record coverage: with enough history the first frame is at
            // least `prerecord` old.
            if let (Some(seg), true) = (segs.first(), c.prerecord > 0 && start_at > 0) {
                let t0 = seg.frames[0].pts;
                let has_history = keys.iter().any(|k| *k < start_at && frames[*k].pts <= now.saturating_sub(c.prerecord));
                if has_history {
                    prop_assert!(t0 <= now.saturating_sub(c.prerecord));
                }
            }
        }
    }
}
