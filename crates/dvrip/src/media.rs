//! The media frame stream carried by 1412 (live), 1422 (playback) and 1426
//! (download): a byte stream of framed video, audio, info and pictures that
//! ignores packet boundaries. Markers are big-endian, fields little-endian,
//! lengths exclude the frame header.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use std::time::Duration;

pub const MARK_INFO: u32 = 0x0000_01F9;
pub const MARK_AUDIO: u32 = 0x0000_01FA;
pub const MARK_IFRAME: u32 = 0x0000_01FC;
pub const MARK_PFRAME: u32 = 0x0000_01FD;
pub const MARK_PICTURE: u32 = 0x0000_01FE;

/// Frames larger than this are taken as corruption (a 4K I-frame is ~1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Audio sample rates by index − 1 of the S field (2 = 8 kHz).
pub const AUDIO_RATES: [u32; 9] = [4000, 8000, 11025, 16000, 20000, 22050, 32000, 44100, 48000];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    Mpeg4,
    H264,
    H265,
    Unknown(u8),
}

impl VideoCodec {
    /// From the low nibble of T.
    pub fn from_nibble(n: u8) -> Self {
        match n & 0x0F {
            1 => VideoCodec::Mpeg4,
            2 => VideoCodec::H264,
            3 => VideoCodec::H265,
            other => VideoCodec::Unknown(other),
        }
    }
    pub fn nibble(self) -> u8 {
        match self {
            VideoCodec::Mpeg4 => 1,
            VideoCodec::H264 => 2,
            VideoCodec::H265 => 3,
            VideoCodec::Unknown(n) => n & 0x0F,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::Mpeg4 => "mpeg4",
            VideoCodec::H264 => "h264",
            VideoCodec::H265 => "h265",
            VideoCodec::Unknown(_) => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    G711A,
    G711U,
    Unknown(u8),
}

impl AudioCodec {
    pub fn from_t(t: u8) -> Self {
        match t {
            0x0E => AudioCodec::G711A,
            0x0A => AudioCodec::G711U,
            other => AudioCodec::Unknown(other),
        }
    }
    pub fn t(self) -> u8 {
        match self {
            AudioCodec::G711A => 0x0E,
            AudioCodec::G711U => 0x0A,
            AudioCodec::Unknown(t) => t,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::G711A => "g711a",
            AudioCodec::G711U => "g711u",
            AudioCodec::Unknown(_) => "unknown",
        }
    }
}

/// Width and height from W, H and the high bits of T: bits 4–5 of T are
/// bits 8–9 of W, bits 6–7 bits 8–9 of H, both in units of 8 pixels.
pub fn dimensions(t: u8, w: u8, h: u8) -> (u32, u32) {
    let w = ((((t >> 4) & 3) as u32) << 8 | w as u32) * 8;
    let h = ((((t >> 6) & 3) as u32) << 8 | h as u32) * 8;
    (w, h)
}

/// T, W, H for a codec and size (sizes are rounded down to 8 pixels).
pub fn encode_dimensions(codec: VideoCodec, width: u32, height: u32) -> (u8, u8, u8) {
    let w8 = (width / 8).min(0x3FF);
    let h8 = (height / 8).min(0x3FF);
    let t = codec.nibble() | (((w8 >> 8) as u8 & 3) << 4) | (((h8 >> 8) as u8 & 3) << 6);
    (t, w8 as u8, h8 as u8)
}

/// The packed datetime: sec 0–5, min 6–11, hour 12–16, day 17–21, month
/// 22–25, year − 2000 26–31.
pub fn unpack_time(v: u32) -> Option<NaiveDateTime> {
    let sec = v & 0x3F;
    let min = (v >> 6) & 0x3F;
    let hour = (v >> 12) & 0x1F;
    let day = (v >> 17) & 0x1F;
    let month = (v >> 22) & 0x0F;
    let year = (v >> 26) as i32 + 2000;
    NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, min, sec)
}

pub fn pack_time(t: &NaiveDateTime) -> u32 {
    let year = (t.year() - 2000).clamp(0, 63) as u32;
    t.second() & 0x3F
        | (t.minute() & 0x3F) << 6
        | (t.hour() & 0x1F) << 12
        | (t.day() & 0x1F) << 17
        | (t.month() & 0x0F) << 22
        | year << 26
}

/// What a frame is.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameKind {
    /// I- or P-frame. P-frames carry the codec, size and fps of the last
    /// I-frame (the wire does not repeat them).
    Video {
        codec: VideoCodec,
        keyframe: bool,
        width: u32,
        height: u32,
        fps: u8,
    },
    Audio {
        codec: AudioCodec,
        sample_rate: Option<u32>,
    },
    /// T = 1 is a text record (e.g. GPS); 6 is seen too.
    Info {
        kind: u8,
        n: u8,
    },
    /// T = 0 is JPEG.
    Picture {
        kind: u8,
        width: u32,
        height: u32,
    },
}

/// One demuxed frame. `payload` is a zero-copy slice of the stream (Annex B
/// for video).
#[derive(Clone, Debug, PartialEq)]
pub struct MediaFrame {
    pub kind: FrameKind,
    /// The device clock of I-frames and pictures; for P-frames, the last
    /// I-frame's.
    pub device_time: Option<NaiveDateTime>,
    /// Presentation time from the start of the stream: video frames counted
    /// at their fps, audio by samples.
    pub pts: Duration,
    pub payload: Bytes,
}

impl MediaFrame {
    pub fn is_keyframe(&self) -> bool {
        matches!(self.kind, FrameKind::Video { keyframe: true, .. })
    }
}

/// Why bytes of a media stream were skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resync {
    pub offset: u64,
    pub bytes: usize,
    pub reason: &'static str,
}

/// Incremental demuxer: feed bytes in any chunking, take frames out.
#[derive(Debug)]
pub struct Demuxer {
    buf: BytesMut,
    /// Stream offset of `buf[0]`, for error reports.
    offset: u64,
    max_frame: usize,
    last_video: Option<(VideoCodec, u32, u32, u8, Option<NaiveDateTime>)>,
    video_frames: u64,
    audio_samples: u64,
    resyncs: Vec<Resync>,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

fn is_marker(b: &[u8]) -> bool {
    b.len() >= 4 && b[0] == 0 && b[1] == 0 && b[2] == 1 && (0xF9..=0xFE).contains(&b[3]) && b[3] != 0xFB
}

impl Demuxer {
    pub fn new() -> Self {
        Demuxer {
            buf: BytesMut::with_capacity(64 * 1024),
            offset: 0,
            max_frame: DEFAULT_MAX_FRAME,
            last_video: None,
            video_frames: 0,
            audio_samples: 0,
            resyncs: Vec::new(),
        }
    }

    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max;
        self
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes fed but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Reports of skipped bytes since the last call.
    pub fn take_resyncs(&mut self) -> Vec<Resync> {
        std::mem::take(&mut self.resyncs)
    }

    fn skip(&mut self, reason: &'static str) {
        // Skip at least one byte, then to the next marker.
        let n = self.buf[1..].windows(4).position(is_marker).map_or(self.buf.len().saturating_sub(3).max(1), |p| p + 1);
        tracing::debug!(offset = self.offset, bytes = n, reason, "dvrip media: resync");
        self.resyncs.push(Resync { offset: self.offset, bytes: n, reason });
        self.buf.advance(n);
        self.offset += n as u64;
    }

    fn take(&mut self, header: usize, len: usize) -> Bytes {
        self.buf.advance(header);
        let payload = self.buf.split_to(len).freeze();
        self.offset += (header + len) as u64;
        payload
    }

    fn video_pts(&mut self, fps: u8) -> Duration {
        let fps = if fps == 0 { 25 } else { fps as u64 };
        let pts = Duration::from_nanos(self.video_frames * 1_000_000_000 / fps);
        self.video_frames += 1;
        pts
    }

    /// The next complete frame, or `None` until more bytes are fed.
    pub fn next_frame(&mut self) -> Option<MediaFrame> {
        loop {
            if self.buf.len() < 4 {
                return None;
            }
            if !is_marker(&self.buf) {
                self.skip("no frame marker");
                continue;
            }
            let marker = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            let hlen = if matches!(marker, MARK_IFRAME | MARK_PICTURE) { 16 } else { 8 };
            if self.buf.len() < hlen {
                return None;
            }
            let b = &self.buf;
            let len = match marker {
                MARK_IFRAME | MARK_PICTURE => u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize,
                MARK_PFRAME => u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize,
                _ => u16::from_le_bytes([b[6], b[7]]) as usize,
            };
            if len > self.max_frame {
                self.skip("frame length beyond the cap");
                continue;
            }
            if self.buf.len() < hlen + len {
                self.buf.reserve(hlen + len - self.buf.len());
                return None;
            }
            let b = &self.buf;
            let frame = match marker {
                MARK_IFRAME | MARK_PICTURE => {
                    let (t, f, w, h) = (b[4], b[5], b[6], b[7]);
                    let time = unpack_time(u32::from_le_bytes([b[8], b[9], b[10], b[11]]));
                    let (width, height) = dimensions(t, w, h);
                    if marker == MARK_IFRAME {
                        let codec = VideoCodec::from_nibble(t);
                        let fps = f & 0x1F;
                        self.last_video = Some((codec, width, height, fps, time));
                        let pts = self.video_pts(fps);
                        let payload = self.take(hlen, len);
                        MediaFrame {
                            kind: FrameKind::Video { codec, keyframe: true, width, height, fps },
                            device_time: time,
                            pts,
                            payload,
                        }
                    } else {
                        let pts = Duration::from_nanos(self.video_frames.saturating_sub(1) * 40_000_000);
                        let payload = self.take(hlen, len);
                        MediaFrame {
                            kind: FrameKind::Picture { kind: t, width, height },
                            device_time: time,
                            pts,
                            payload,
                        }
                    }
                }
                MARK_PFRAME => {
                    let (codec, width, height, fps, time) =
                        self.last_video.unwrap_or((VideoCodec::Unknown(0), 0, 0, 0, None));
                    let pts = self.video_pts(fps);
                    let payload = self.take(hlen, len);
                    MediaFrame {
                        kind: FrameKind::Video { codec, keyframe: false, width, height, fps },
                        device_time: time,
                        pts,
                        payload,
                    }
                }
                MARK_AUDIO => {
                    let (t, s) = (b[4], b[5]);
                    let sample_rate = (s as usize).checked_sub(1).and_then(|i| AUDIO_RATES.get(i)).copied();
                    let rate = sample_rate.unwrap_or(8000) as u64;
                    let pts = Duration::from_nanos(self.audio_samples * 1_000_000_000 / rate);
                    // G.711: one byte a sample.
                    self.audio_samples += len as u64;
                    let payload = self.take(hlen, len);
                    let time = self.last_video.and_then(|v| v.4);
                    MediaFrame {
                        kind: FrameKind::Audio { codec: AudioCodec::from_t(t), sample_rate },
                        device_time: time,
                        pts,
                        payload,
                    }
                }
                _ => {
                    let (kind, n) = (b[4], b[5]);
                    let payload = self.take(hlen, len);
                    MediaFrame { kind: FrameKind::Info { kind, n }, device_time: None, pts: Duration::ZERO, payload }
                }
            };
            return Some(frame);
        }
    }
}

/// Writes an I-frame (`keyframe`) or P-frame.
#[allow(clippy::too_many_arguments)]
pub fn write_video(
    dst: &mut BytesMut,
    codec: VideoCodec,
    keyframe: bool,
    width: u32,
    height: u32,
    fps: u8,
    time: &NaiveDateTime,
    payload: &[u8],
) {
    if keyframe {
        let (t, w, h) = encode_dimensions(codec, width, height);
        dst.put_u32(MARK_IFRAME);
        dst.put_slice(&[t, fps & 0x1F, w, h]);
        dst.put_u32_le(pack_time(time));
        dst.put_u32_le(payload.len() as u32);
    } else {
        dst.put_u32(MARK_PFRAME);
        dst.put_u32_le(payload.len() as u32);
    }
    dst.put_slice(payload);
}

/// Writes an audio frame (rates not in the table are written as 8 kHz).
pub fn write_audio(dst: &mut BytesMut, codec: AudioCodec, sample_rate: u32, payload: &[u8]) {
    let s = AUDIO_RATES.iter().position(|&r| r == sample_rate).map_or(2, |i| i + 1) as u8;
    dst.put_u32(MARK_AUDIO);
    dst.put_slice(&[codec.t(), s]);
    dst.put_u16_le(payload.len() as u16);
    dst.put_slice(payload);
}

/// Writes a picture frame (T = 0: JPEG).
pub fn write_picture(dst: &mut BytesMut, width: u32, height: u32, time: &NaiveDateTime, jpeg: &[u8]) {
    let (_, w, h) = encode_dimensions(VideoCodec::Unknown(0), width, height);
    let t = (((width / 8) >> 8) as u8 & 3) << 4 | (((height / 8) >> 8) as u8 & 3) << 6;
    dst.put_u32(MARK_PICTURE);
    dst.put_slice(&[t, 0, w, h]);
    dst.put_u32_le(pack_time(time));
    dst.put_u32_le(jpeg.len() as u32);
    dst.put_slice(jpeg);
}

pub fn write_info(dst: &mut BytesMut, kind: u8, n: u8, payload: &[u8]) {
    dst.put_u32(MARK_INFO);
    dst.put_slice(&[kind, n]);
    dst.put_u16_le(payload.len() as u16);
    dst.put_slice(payload);
}

/// What a snapshot reply (1561) holds: raw JPEG or a 0x1FE-framed picture.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("snapshot payload is neither a JPEG (FF D8) nor a 0x1FE picture frame; it starts {0}")]
pub struct NotAPicture(pub String);

/// The JPEG inside a complete snapshot payload.
pub fn snapshot_jpeg(payload: Bytes) -> Result<Bytes, NotAPicture> {
    if payload.starts_with(&[0xFF, 0xD8]) {
        return Ok(payload);
    }
    let mut d = Demuxer::new();
    d.feed(&payload);
    match d.next_frame() {
        Some(MediaFrame { kind: FrameKind::Picture { .. }, payload, .. }) => Ok(payload),
        _ => Err(NotAPicture(crate::header::hex_preview(&payload, 16))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2024, 5, 17).unwrap().and_hms_opt(13, 45, 59).unwrap()
    }

    #[test]
    fn time_packs_both_ways() {
        assert_eq!(unpack_time(pack_time(&t0())), Some(t0()));
        assert_eq!(unpack_time(0), None);
    }

    #[test]
    fn high_bits_of_width_and_height() {
        // 0x12: H.264 with width bit 8 set (the "codec 0x12" bug class).
        assert_eq!(VideoCodec::from_nibble(0x12), VideoCodec::H264);
        assert_eq!(dimensions(0x12, 0x44, 0xF3), (2592, 1944));
        // 0x13/0x43/0x53 are H.265.
        for t in [0x13, 0x43, 0x53] {
            assert_eq!(VideoCodec::from_nibble(t), VideoCodec::H265);
        }
        assert_eq!(dimensions(0x53, 0x00, 0x0E), (2048, 2160));
        assert_eq!(encode_dimensions(VideoCodec::H265, 4096, 2160), (0x63, 0x00, 0x0E));
        assert_eq!(dimensions(0x63, 0x00, 0x0E), (4096, 2160));
    }

    fn sample_stream() -> BytesMut {
        let mut s = BytesMut::new();
        write_video(&mut s, VideoCodec::H265, true, 2592, 1944, 25, &t0(), b"\0\0\0\x01\x40\x01IDR");
        write_audio(&mut s, AudioCodec::G711A, 8000, &[0xd5; 320]);
        write_video(&mut s, VideoCodec::H265, false, 0, 0, 0, &t0(), b"\0\0\0\x01\x02\x01P");
        write_info(&mut s, 1, 0, b"GPS");
        write_picture(&mut s, 640, 360, &t0(), b"\xff\xd8jpeg\xff\xd9");
        s
    }

    #[test]
    fn demuxes_every_frame_kind() {
        let mut d = Demuxer::new();
        d.feed(&sample_stream());
        let f = d.next_frame().unwrap();
        assert_eq!(
            f.kind,
            FrameKind::Video { codec: VideoCodec::H265, keyframe: true, width: 2592, height: 1944, fps: 25 }
        );
        assert_eq!(f.device_time, Some(t0()));
        assert_eq!(&f.payload[..], b"\0\0\0\x01\x40\x01IDR");
        let a = d.next_frame().unwrap();
        assert_eq!(a.kind, FrameKind::Audio { codec: AudioCodec::G711A, sample_rate: Some(8000) });
        assert_eq!(a.payload.len(), 320);
        let p = d.next_frame().unwrap();
        assert!(matches!(p.kind, FrameKind::Video { keyframe: false, width: 2592, codec: VideoCodec::H265, .. }));
        assert_eq!(p.pts, Duration::from_millis(40));
        assert_eq!(d.next_frame().unwrap().kind, FrameKind::Info { kind: 1, n: 0 });
        assert!(matches!(d.next_frame().unwrap().kind, FrameKind::Picture { kind: 0, width: 640, height: 360 }));
        assert!(d.next_frame().is_none());
        assert!(d.take_resyncs().is_empty());
    }

    #[test]
    fn resyncs_over_garbage_between_frames() {
        let mut s = BytesMut::from(&b"\x12\x34garbage"[..]);
        s.extend_from_slice(&sample_stream());
        let mut d = Demuxer::new();
        d.feed(&s);
        let mut n = 0;
        while d.next_frame().is_some() {
            n += 1;
        }
        assert_eq!(n, 5);
        assert_eq!(d.take_resyncs().iter().map(|r| r.bytes).sum::<usize>(), 9);
    }

    #[test]
    fn snapshot_raw_or_framed() {
        let jpeg = Bytes::from_static(b"\xff\xd8\xff\xe0data\xff\xd9");
        assert_eq!(snapshot_jpeg(jpeg.clone()).unwrap(), jpeg);
        let mut framed = BytesMut::new();
        write_picture(&mut framed, 640, 360, &t0(), &jpeg);
        assert_eq!(snapshot_jpeg(framed.freeze()).unwrap(), jpeg);
        assert!(snapshot_jpeg(Bytes::from_static(b"nope")).is_err());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_frames(cuts in proptest::collection::vec(1usize..64, 1..40)) {
            let whole = sample_stream();
            let mut expected = Demuxer::new();
            expected.feed(&whole);
            let mut want = Vec::new();
            while let Some(f) = expected.next_frame() { want.push(f); }
            let mut d = Demuxer::new();
            let mut got = Vec::new();
            let mut pos = 0;
            for c in cuts.iter().cycle() {
                if pos >= whole.len() { break; }
                let end = (pos + c).min(whole.len());
                d.feed(&whole[pos..end]);
                pos = end;
                while let Some(f) = d.next_frame() { got.push(f); }
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut d = Demuxer::new().with_max_frame(1024);
            d.feed(&data);
            while d.next_frame().is_some() {}
        }
    }
}
