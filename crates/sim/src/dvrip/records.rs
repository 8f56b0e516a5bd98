//! The simulated recorder's disk: an index of recordings built from the
//! fixture clip, rendered on demand as the DVRIP frame stream devices store
//! in their `.h264` files. Sizes are computed, not rendered, so the index is
//! cheap however long it is.

use crate::clips::Clip;
use bytes::BytesMut;
use chrono::{Duration as Span, NaiveDateTime, Timelike};
use dvrip::json::format_time;
use dvrip::media::{self, VideoCodec};
use dvrip::messages::FileEntry;

/// One recording on the simulated disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recording {
    pub channel: u32,
    pub begin: NaiveDateTime,
    pub end: NaiveDateTime,
    /// R regular, M motion, A alarm, H manual.
    pub event: char,
    pub name: String,
    pub bytes: u64,
}

impl Recording {
    pub fn entry(&self) -> FileEntry {
        FileEntry {
            begin: format_time(&self.begin),
            end: format_time(&self.end),
            disk: 0,
            serial: 0,
            length: dvrip::json::format_hex_u32(self.bytes.div_ceil(1024) as u32),
            name: self.name.clone(),
        }
    }
}

fn frame_size(clip: &Clip, i: u64) -> u64 {
    let f = clip.frame(i);
    (if f.keyframe { 16 } else { 8 }) + f.data.len() as u64
}

/// Bytes of frames `0..n` of a looping clip.
pub fn stream_size(clip: &Clip, n: u64) -> u64 {
    let len = clip.frames.len() as u64;
    let one_loop: u64 = (0..len).map(|i| frame_size(clip, i)).sum();
    (n / len) * one_loop + (0..n % len).map(|i| frame_size(clip, i)).sum::<u64>()
}

fn codec_of(clip: &Clip) -> VideoCodec {
    match clip.codec {
        crate::clips::ClipCodec::H264 => VideoCodec::H264,
        crate::clips::ClipCodec::H265 => VideoCodec::H265,
    }
}

/// Frame `i` of a stream that started at `t0`, framed for DVRIP.
pub fn write_frame(out: &mut BytesMut, clip: &Clip, fps: u32, i: u64, t0: &NaiveDateTime) {
    let f = clip.frame(i);
    let t = *t0 + Span::milliseconds((i * 1000 / fps.max(1) as u64) as i64);
    media::write_video(out, codec_of(clip), f.keyframe, clip.width, clip.height, fps as u8, &t, &f.data);
}

/// Renders frames `first..last` of a recording that began at `t0`.
#[cfg(test)]
pub fn render(clip: &Clip, t0: &NaiveDateTime, first: u64, last: u64) -> bytes::Bytes {
    let mut out = BytesMut::with_capacity(stream_size(clip, last.saturating_sub(first)) as usize + 64);
    for i in first..last {
        write_frame(&mut out, clip, clip.fps, i, t0);
    }
    out.freeze()
}

/// The recordings of every channel: `length` long, one every `every`,
/// over `span` before `now`. Every 6th is motion, every 12th alarm.
pub fn index(channels: u32, clip: &Clip, now: NaiveDateTime, span: Span, every: Span, length: Span) -> Vec<Recording> {
    let step = every.num_seconds().max(1);
    let now_s = now.with_nanosecond(0).unwrap_or(now);
    let aligned = now_s - Span::seconds(now_s.and_utc().timestamp() % step);
    let first = aligned - span;
    let mut out = Vec::new();
    for ch in 0..channels {
        let mut t = first;
        let mut k = 0u32;
        while t + length <= now_s {
            let end = t + length;
            let event = if k % 12 == 11 {
                'A'
            } else if k % 6 == 5 {
                'M'
            } else {
                'R'
            };
            let frames = (length.num_milliseconds() as u64) * clip.fps as u64 / 1000;
            let name = format!(
                "/idea0/{}/{:03}/{}-{}[{}][@{:x}][{}].h264",
                t.format("%Y-%m-%d"),
                ch + 1,
                t.format("%H.%M.%S"),
                end.format("%H.%M.%S"),
                event,
                0x7cb + k,
                k % 8
            );
            out.push(Recording { channel: ch, begin: t, end, event, name, bytes: stream_size(clip, frames) });
            t += every;
            k += 1;
        }
    }
    out
}

/// Frame range `[first, last)` of `rec` covering `[from, to)`, starting at
/// the keyframe at or before `from` so the result decodes.
pub fn frame_range(rec: &Recording, clip: &Clip, from: NaiveDateTime, to: NaiveDateTime) -> Option<(u64, u64)> {
    let from = from.max(rec.begin);
    let to = to.min(rec.end);
    if from >= to {
        return None;
    }
    let fps = clip.fps as i64;
    let first = (from - rec.begin).num_milliseconds() * fps / 1000;
    let gop = clip.gop as i64;
    let first = (first / gop) * gop;
    let last = ((to - rec.begin).num_milliseconds() * fps + 999) / 1000;
    Some((first as u64, last as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clips::{clip, ClipCodec};

    #[test]
    fn computed_sizes_match_rendered_bytes() {
        let c = clip(ClipCodec::H264, false);
        let t0 = dvrip::json::parse_time("2024-05-17 10:00:00").unwrap();
        for n in [1, 24, 75, 76, 200] {
            assert_eq!(render(c, &t0, 0, n).len() as u64, stream_size(c, n), "n={n}");
        }
    }

    #[test]
    fn index_pages_and_names() {
        let c = clip(ClipCodec::H264, false);
        let now = dvrip::json::parse_time("2024-05-17 10:04:00").unwrap();
        let idx = index(2, c, now, Span::hours(24), Span::minutes(10), Span::minutes(2));
        assert_eq!(idx.len(), 2 * 145, "24 hours of 10-minute slots plus the current one");
        let r = &idx[0];
        assert_eq!(r.name, "/idea0/2024-05-16/001/10.00.00-10.02.00[R][@7cb][0].h264");
        assert_eq!(r.entry().length_kib().unwrap() as u64, r.bytes.div_ceil(1024));
        assert!(idx.iter().any(|r| r.event == 'M') && idx.iter().any(|r| r.event == 'A'));
        assert!(idx.iter().all(|r| r.end <= now));
    }

    #[test]
    fn ranges_start_on_a_keyframe() {
        let c = clip(ClipCodec::H264, false);
        let now = dvrip::json::parse_time("2024-05-17 10:04:00").unwrap();
        let r = &index(1, c, now, Span::hours(1), Span::minutes(10), Span::minutes(2))[0];
        let (a, b) = frame_range(r, c, r.begin + Span::milliseconds(1500), r.begin + Span::seconds(3)).unwrap();
        assert_eq!((a, b), (25, 75));
        assert!(c.frame(a).keyframe);
        assert!(frame_range(r, c, r.end, r.end + Span::seconds(1)).is_none());
    }
}
