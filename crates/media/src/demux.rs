//! Readers for remux input: raw Annex B, MPEG-TS, FLV (classic AVC, the
//! widespread "codec id 12" HEVC, Enhanced RTMP `avc1`/`hvc1`), MP4 (plain
//! and fragmented). (Captured DVRIP media, what XMeye's own `.h264` files
//! hold, is read by the edge crate next to the DVRIP adapter: this crate
//! knows no device protocol.) Every reader gives
//! frames in decoding order with video as Annex B (parameter sets in front
//! of every keyframe) and AAC as ADTS, whatever the container stored.
//! Bad input is an error naming the byte offset; what a reader leaves out
//! on purpose (an unsupported track, a torn last frame) is listed in
//! `Demuxed::skipped`.

use crate::annexb::{access_units, is_keyframe, nal_type, nal_units};
use crate::audio::{adts_frames, adts_header};
use crate::{ticks, Codec, Frame};
use bytes::Bytes;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    AnnexB(Codec),
    Ts,
    Flv,
    Mp4,
}

impl Input {
    pub fn name(self) -> &'static str {
        match self {
            Input::AnnexB(Codec::H265) => "raw H.265",
            Input::AnnexB(_) => "raw H.264",
            Input::Ts => "MPEG-TS",
            Input::Flv => "FLV",
            Input::Mp4 => "MP4",
        }
    }

    /// What a file is, from its first bytes (then its name).
    pub fn detect(path: &Path, head: &[u8]) -> Option<Input> {
        if head.starts_with(b"FLV") {
            return Some(Input::Flv);
        }
        if head.first() == Some(&0x47) && (head.len() < 189 || head[188] == 0x47) {
            return Some(Input::Ts);
        }
        if head.len() >= 8 && matches!(&head[4..8], b"ftyp" | b"styp" | b"moov" | b"moof" | b"free" | b"mdat") {
            return Some(Input::Mp4);
        }
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("h264" | "264" | "avc") => Some(Input::AnnexB(Codec::H264)),
            Some("h265" | "265" | "hevc") => Some(Input::AnnexB(Codec::H265)),
            _ => {
                // A start code: tell the codec by the first NAL's header.
                let nal = nal_units(head).into_iter().next()?;
                match (nal.first()? & 0x1f, nal.first()? >> 1 & 0x3f) {
                    (7 | 9 | 5 | 1 | 6, _) => Some(Input::AnnexB(Codec::H264)),
                    (_, 32 | 35 | 39) => Some(Input::AnnexB(Codec::H265)),
                    _ => None,
                }
            }
        }
    }
}

/// What is wrong with one FLV tag body (the reader adds where it was).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TagError(pub String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DemuxError {
    #[error("{format} at byte {offset}: {why}")]
    Bad { format: &'static str, offset: usize, why: String },
    #[error("{0}: no H.264 or H.265 video found")]
    NoVideo(&'static str),
}

fn bad(format: &'static str, offset: usize, why: impl Into<String>) -> DemuxError {
    DemuxError::Bad { format, offset, why: why.into() }
}

#[derive(Debug, Default)]
pub struct Demuxed {
    /// Decoding order, audio and video interleaved by time.
    pub frames: Vec<Frame>,
    /// What was left out, and why.
    pub skipped: Vec<String>,
}

impl Demuxed {
    /// Frames in decoding order; an error when there is no video. Every
    /// reader ends with this (readers outside this crate too).
    pub fn checked(mut self, format: &'static str) -> Result<Demuxed, DemuxError> {
        if self.video_codec().is_none() {
            return Err(DemuxError::NoVideo(format));
        }
        self.frames.sort_by_key(|f| f.dts);
        Ok(self)
    }

    pub fn video_codec(&self) -> Option<Codec> {
        self.frames.iter().find(|f| f.codec.is_video()).map(|f| f.codec)
    }
    pub fn audio_codec(&self) -> Option<Codec> {
        self.frames.iter().find(|f| !f.codec.is_video()).map(|f| f.codec)
    }
    /// Moves the timeline so the first frame is at `at` (90 kHz).
    pub fn rebase(&mut self, at: u64) {
        let Some(t0) = self.frames.iter().map(|f| f.dts.min(f.pts)).min() else { return };
        for f in &mut self.frames {
            f.pts = (f.pts - t0).saturating_add(at);
            f.dts = (f.dts - t0).saturating_add(at);
        }
    }
}

/// Reads a whole file's frames.
pub fn read(input: Input, data: &Bytes, fps: u32) -> Result<Demuxed, DemuxError> {
    let d = match input {
        Input::AnnexB(codec) => Demuxed { frames: from_annexb(data, codec, fps), skipped: Vec::new() },
        Input::Ts => ts(data)?,
        Input::Flv => flv(data)?,
        Input::Mp4 => mp4(data)?,
    };
    d.checked(input.name())
}

/// A raw stream's access units as frames at `fps`, from 0.
pub fn from_annexb(data: &Bytes, codec: Codec, fps: u32) -> Vec<Frame> {
    access_units(data, codec)
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let t = ticks(i as u64, fps);
            Frame { codec, keyframe: u.keyframe, pts: t, dts: t, data: u.data }
        })
        .collect()
}

/// Unwraps 33-bit MPEG timestamps into a monotonic 64-bit line.
#[derive(Default)]
struct Unwrap(Option<u64>);

impl Unwrap {
    fn next(&mut self, t: u64) -> u64 {
        const WRAP: u64 = 1 << 33;
        let v = match self.0 {
            None => t,
            Some(last) => {
                let base = last & !(WRAP - 1);
                let mut v = base | t;
                if v + WRAP / 2 < last {
                    v += WRAP;
                } else if v > last + WRAP / 2 && v >= WRAP {
                    v -= WRAP;
                }
                v
            }
        };
        self.0 = Some(v);
        v
    }
}

fn pes_time(b: &[u8]) -> u64 {
    ((b[0] as u64 >> 1) & 7) << 30
        | (b[1] as u64) << 22
        | (b[2] as u64 >> 1) << 15
        | (b[3] as u64) << 7
        | b[4] as u64 >> 1
}

/// Parameter sets of an access unit, or of the configuration record, put
/// in front of a keyframe that lacks them (players join there).
fn with_params(codec: Codec, au: Vec<u8>, params: &[Vec<u8>]) -> Vec<u8> {
    let sps = if codec == Codec::H265 { 33 } else { 7 };
    if params.is_empty() || nal_units(&au).iter().any(|n| nal_type(codec, n) == Some(sps)) {
        return au;
    }
    let mut out = Vec::with_capacity(au.len() + params.iter().map(|p| p.len() + 4).sum::<usize>());
    for p in params {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&au);
    out
}

fn video_frame(codec: Codec, au: Vec<u8>, dts: u64, pts: u64, params: &[Vec<u8>]) -> Frame {
    let keyframe = is_keyframe(codec, &au);
    let data = if keyframe { with_params(codec, au, params) } else { au };
    Frame { codec, keyframe, pts, dts, data: Bytes::from(data) }
}

struct Pes {
    codec: Codec,
    buf: Vec<u8>,
    at: usize,
    pts: Unwrap,
    dts: Unwrap,
}

fn ts(b: &Bytes) -> Result<Demuxed, DemuxError> {
    const F: &str = "MPEG-TS";
    let mut d = Demuxed::default();
    let mut pmt_pid: Option<u16> = None;
    // The PIDs carried and their PES being gathered (two or three: a
    // list is quicker than hashing every packet's PID).
    let mut streams: Vec<(u16, Pes)> = Vec::new();
    let mut ignored: Vec<(u16, u8)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b.len() - i < 188 {
            d.skipped.push(format!("{} bytes at the end (byte {i}) are not a whole TS packet", b.len() - i));
            break;
        }
        if b[i] != 0x47 {
            let next = (i + 1..b.len()).find(|&j| b[j] == 0x47 && b.get(j + 188).is_none_or(|&x| x == 0x47));
            let to = next.unwrap_or(b.len());
            d.skipped.push(format!("{} bytes at byte {i} lost sync", to - i));
            i = to;
            continue;
        }
        let p = &b[i..i + 188];
        let pid = ((p[1] as u16 & 0x1f) << 8) | p[2] as u16;
        let pusi = p[1] & 0x40 != 0;
        let afc = (p[3] >> 4) & 3;
        let mut off = 4;
        if afc & 2 != 0 {
            off += 1 + p[4] as usize;
        }
        if afc & 1 == 0 || off >= 188 {
            i += 188;
            continue;
        }
        let payload = &p[off..];
        if pid == 0 && pusi {
            let s = section(payload).ok_or_else(|| bad(F, i, "PAT section runs past its packet"))?;
            pmt_pid = s.get(8..).and_then(|e| {
                e.chunks_exact(4).find(|c| c[0] != 0 || c[1] != 0).map(|c| ((c[2] as u16 & 0x1f) << 8) | c[3] as u16)
            });
        } else if Some(pid) == pmt_pid && pusi {
            let s = section(payload).ok_or_else(|| bad(F, i, "PMT section runs past its packet"))?;
            if s.len() < 12 {
                return Err(bad(F, i, "PMT shorter than its fixed part"));
            }
            let pil = ((s[10] as usize & 0x0f) << 8) | s[11] as usize;
            let mut e = 12 + pil;
            while e + 5 <= s.len() {
                let (st, epid) = (s[e], ((s[e + 1] as u16 & 0x1f) << 8) | s[e + 2] as u16);
                let codec = match st {
                    0x1b => Some(Codec::H264),
                    0x24 => Some(Codec::H265),
                    0x0f => Some(Codec::Aac),
                    _ => None,
                };
                match codec {
                    Some(codec) if !streams.iter().any(|(p, _)| *p == epid) => {
                        let pes = Pes { codec, buf: Vec::new(), at: 0, pts: Unwrap::default(), dts: Unwrap::default() };
                        streams.push((epid, pes));
                    }
                    Some(_) => {}
                    None if !ignored.contains(&(epid, st)) => {
                        ignored.push((epid, st));
                        d.skipped.push(format!("stream type 0x{st:02x} on PID 0x{epid:x}: not carried"));
                    }
                    None => {}
                }
                e += 5 + (((s[e + 3] as usize & 0x0f) << 8) | s[e + 4] as usize);
            }
        } else if let Some((_, s)) = streams.iter_mut().find(|(p, _)| *p == pid) {
            if pusi {
                if !s.buf.is_empty() {
                    let buf = std::mem::take(&mut s.buf);
                    pes(s, buf, &mut d)?;
                }
                s.at = i;
            }
            if pusi || !s.buf.is_empty() {
                s.buf.extend_from_slice(payload);
            }
        }
        i += 188;
    }
    let mut rest: Vec<&mut Pes> = streams.iter_mut().map(|(_, s)| s).filter(|s| !s.buf.is_empty()).collect();
    rest.sort_by_key(|s| s.at);
    for s in rest {
        let buf = std::mem::take(&mut s.buf);
        pes(s, buf, &mut d)?;
    }
    Ok(d)
}

/// The PSI section after the pointer field, cut to its length.
fn section(payload: &[u8]) -> Option<&[u8]> {
    let s = payload.get(1 + *payload.first()? as usize..)?;
    let len = ((*s.get(1)? as usize & 0x0f) << 8) | *s.get(2)? as usize;
    // Without the CRC.
    s.get(..(3 + len).checked_sub(4)?)
}

fn pes(s: &mut Pes, buf: Vec<u8>, d: &mut Demuxed) -> Result<(), DemuxError> {
    const F: &str = "MPEG-TS";
    if buf.len() < 9 || buf[..3] != [0, 0, 1] {
        return Err(bad(F, s.at, "a payload unit start without a PES header"));
    }
    let flags = buf[7];
    let hl = 9 + buf[8] as usize;
    if buf.len() < hl || (flags & 0x80 != 0 && hl < 14) || (flags & 0x40 != 0 && hl < 19) {
        return Err(bad(F, s.at, "PES header longer than the PES"));
    }
    if flags & 0x80 == 0 {
        d.skipped.push(format!("a PES at byte {} without a PTS", s.at));
        return Ok(());
    }
    let pts = s.pts.next(pes_time(&buf[9..14]));
    let dts = if flags & 0x40 != 0 { s.dts.next(pes_time(&buf[14..19])) } else { s.dts.next(pts & ((1 << 33) - 1)) };
    if s.codec == Codec::Aac {
        let mut t = pts;
        for (h, f) in adts_frames(&buf[hl..]) {
            d.frames.push(Frame { codec: Codec::Aac, keyframe: true, pts: t, dts: t, data: Bytes::copy_from_slice(f) });
            t += 1024 * 90_000 / h.rate().max(1) as u64;
        }
    } else {
        // The access unit is the PES buffer itself past its header (a TS
        // carries its parameter sets in band: nothing to put in front).
        let data = Bytes::from(buf).slice(hl..);
        let keyframe = is_keyframe(s.codec, &data);
        d.frames.push(Frame { codec: s.codec, keyframe, pts, dts, data });
    }
    Ok(())
}

/// Length-prefixed NAL units to Annex B.
fn to_annexb(sample: &[u8], len_size: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(sample.len() + 16);
    let mut p = 0;
    while p < sample.len() {
        let n = sample.get(p..p + len_size)?.iter().fold(0usize, |a, &x| a << 8 | x as usize);
        let nal = sample.get(p + len_size..p + len_size + n)?;
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        p += len_size + n;
    }
    Some(out)
}

/// Parameter sets and NAL length size of an avcC / hvcC record.
fn decoder_config(codec: Codec, c: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let mut sets = Vec::new();
    let u16at = |p: usize| c.get(p..p + 2).map(|x| u16::from_be_bytes([x[0], x[1]]) as usize);
    if codec == Codec::H265 {
        let len_size = (*c.get(21)? as usize & 3) + 1;
        let mut p = 23;
        for _ in 0..*c.get(22)? {
            let n = u16at(p + 1)?;
            p += 3;
            for _ in 0..n {
                let l = u16at(p)?;
                sets.push(c.get(p + 2..p + 2 + l)?.to_vec());
                p += 2 + l;
            }
        }
        Some((sets, len_size))
    } else {
        let len_size = (*c.get(4)? as usize & 3) + 1;
        let mut p = 6;
        for k in 0..2 {
            let n = if k == 0 { *c.get(5)? as usize & 0x1f } else { *c.get(p - 1)? as usize };
            for _ in 0..n {
                let l = u16at(p)?;
                sets.push(c.get(p + 2..p + 2 + l)?.to_vec());
                p += 2 + l;
            }
            p += 1;
        }
        Some((sets, len_size))
    }
}

fn flv(b: &Bytes) -> Result<Demuxed, DemuxError> {
    const F: &str = "FLV";
    let mut d = Demuxed::default();
    if b.len() < 13 || &b[..3] != b"FLV" {
        return Err(bad(F, 0, "no FLV signature"));
    }
    let mut p = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) as usize + 4;
    let mut tags = FlvTags::default();
    while p < b.len() {
        let Some(h) = b.get(p..p + 11) else {
            d.skipped.push(format!("a torn tag header at byte {p}"));
            break;
        };
        let n = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ms = u32::from_be_bytes([h[7], h[4], h[5], h[6]]) as u64;
        let Some(body) = b.get(p + 11..p + 11 + n) else {
            d.skipped.push(format!("a torn tag at byte {p} ({n} bytes announced, the file ends)"));
            break;
        };
        let at = p;
        p += 15 + n;
        if let Some(f) = tags.push(h[0] & 0x1f, ms, body).map_err(|why| bad(F, at, why.0))? {
            d.frames.push(f);
        }
    }
    d.skipped.append(&mut tags.skipped);
    Ok(d)
}

/// FLV audio and video tag bodies to frames: what an FLV file's tags and
/// an RTMP publisher's audio/video messages carry alike (classic AVC,
/// "codec id 12" HEVC, Enhanced RTMP `avc1`/`hvc1`; AAC, G.711). It keeps
/// the sequence headers it has seen; video comes out as Annex B with the
/// parameter sets in front of every keyframe, AAC as ADTS.
#[derive(Default)]
pub struct FlvTags {
    video: Option<(Codec, Vec<Vec<u8>>, usize)>,
    asc: Option<Vec<u8>>,
    /// What was left out (each reason once): codecs nothing here carries.
    pub skipped: Vec<String>,
}

impl FlvTags {
    fn note(&mut self, why: String) {
        if !self.skipped.contains(&why) {
            self.skipped.push(why);
        }
    }

    /// The video codec of the last sequence header seen.
    pub fn video_codec(&self) -> Option<Codec> {
        self.video.as_ref().map(|v| v.0)
    }

    /// One tag body (`kind` 8 audio, 9 video; others are ignored) at `ms`
    /// milliseconds. `Ok(None)` for sequence headers and what is skipped;
    /// an error says what is wrong with the body.
    pub fn push(&mut self, kind: u8, ms: u64, body: &[u8]) -> Result<Option<Frame>, TagError> {
        self.read_tag(kind, ms, body).map_err(TagError)
    }

    fn read_tag(&mut self, kind: u8, ms: u64, body: &[u8]) -> Result<Option<Frame>, String> {
        let dts = ms * 90;
        match kind {
            9 if !body.is_empty() => {
                let b0 = body[0];
                // (codec, packet type, composition time, data)
                let (codec, kind, cts, data): (Option<Codec>, u8, i32, &[u8]) = if b0 & 0x80 != 0 {
                    let fourcc = body.get(1..5).ok_or("Enhanced RTMP video tag without a FourCC")?;
                    let codec = match fourcc {
                        b"avc1" => Some(Codec::H264),
                        b"hvc1" => Some(Codec::H265),
                        _ => None,
                    };
                    match b0 & 0x0f {
                        0 => (codec, 0, 0, &body[5..]),
                        1 => (codec, 1, si24(body.get(5..8)), body.get(8..).unwrap_or(&[])),
                        3 => (codec, 1, 0, &body[5..]),
                        _ => (codec, 2, 0, &[]),
                    }
                } else {
                    let codec = match b0 & 0x0f {
                        7 => Some(Codec::H264),
                        12 => Some(Codec::H265),
                        _ => None,
                    };
                    let kind = *body.get(1).unwrap_or(&2);
                    (codec, kind, si24(body.get(2..5)), body.get(5..).unwrap_or(&[]))
                };
                let Some(codec) = codec else {
                    self.note(format!("video tags of codec 0x{b0:02x}: not H.264/H.265"));
                    return Ok(None);
                };
                match kind {
                    0 => {
                        let (sets, ls) =
                            decoder_config(codec, data).ok_or("the decoder configuration record is cut short")?;
                        self.video = Some((codec, sets, ls));
                        Ok(None)
                    }
                    1 => {
                        let Some((vc, sets, ls)) = &self.video else {
                            return Err("a video frame before the sequence header".into());
                        };
                        if *vc != codec {
                            return Err(format!("a {codec:?} frame in a {vc:?} stream"));
                        }
                        let au = to_annexb(data, *ls).ok_or("a NAL unit length runs past the tag")?;
                        let pts = (dts as i64 + cts as i64 * 90).max(0) as u64;
                        Ok(Some(video_frame(codec, au, dts, pts, sets)))
                    }
                    _ => Ok(None),
                }
            }
            8 if !body.is_empty() => {
                let codec = match body[0] >> 4 {
                    7 => Codec::G711A,
                    8 => Codec::G711U,
                    10 => Codec::Aac,
                    other => {
                        self.note(format!("audio of FLV sound format {other}: not carried"));
                        return Ok(None);
                    }
                };
                let data = if codec == Codec::Aac {
                    match body.get(1) {
                        Some(0) => {
                            self.asc = Some(body[2..].to_vec());
                            return Ok(None);
                        }
                        Some(1) => {
                            let raw = &body[2..];
                            let cfg = self.asc.as_deref().ok_or("AAC audio before its AudioSpecificConfig")?;
                            let h = adts_header(cfg, raw.len()).ok_or("an AudioSpecificConfig ADTS cannot carry")?;
                            let mut v = h.to_vec();
                            v.extend_from_slice(raw);
                            v
                        }
                        _ => return Ok(None),
                    }
                } else {
                    body[1..].to_vec()
                };
                Ok(Some(Frame { codec, keyframe: true, pts: dts, dts, data: Bytes::from(data) }))
            }
            _ => Ok(None),
        }
    }
}

fn si24(b: Option<&[u8]>) -> i32 {
    b.map_or(0, |b| (i32::from_be_bytes([b[0], b[1], b[2], 0])) >> 8)
}

/// One ISO BMFF box: type, absolute start, body range.
#[derive(Clone, Copy)]
struct Bx {
    kind: [u8; 4],
    start: usize,
    body: (usize, usize),
}

fn boxes(b: &[u8], from: usize, to: usize) -> Result<Vec<Bx>, DemuxError> {
    let mut out = Vec::new();
    let mut p = from;
    while p + 8 <= to {
        let size = u32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]) as u64;
        let kind = [b[p + 4], b[p + 5], b[p + 6], b[p + 7]];
        let (hl, size) = match size {
            0 => (8, (to - p) as u64),
            1 => {
                let s = b.get(p + 8..p + 16).ok_or_else(|| bad("MP4", p, "a 64-bit box size cut short"))?;
                (16, u64::from_be_bytes(s.try_into().unwrap_or_default()))
            }
            s => (8, s),
        };
        if size < hl as u64 || (p as u64).checked_add(size).is_none_or(|end| end > to as u64) {
            return Err(bad(
                "MP4",
                p,
                format!("box '{}' of {size} bytes does not fit its parent", String::from_utf8_lossy(&kind)),
            ));
        }
        out.push(Bx { kind, start: p, body: (p + hl, p + size as usize) });
        p += size as usize;
    }
    Ok(out)
}

fn child(b: &[u8], parent: Bx, kind: &[u8; 4]) -> Result<Option<Bx>, DemuxError> {
    Ok(boxes(b, parent.body.0, parent.body.1)?.into_iter().find(|x| &x.kind == kind))
}

fn path(b: &[u8], mut at: Bx, kinds: &[&[u8; 4]]) -> Result<Option<Bx>, DemuxError> {
    for k in kinds {
        match child(b, at, k)? {
            Some(c) => at = c,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

fn u32at(b: &[u8], p: usize) -> u32 {
    b.get(p..p + 4).map_or(0, |x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

fn u64at(b: &[u8], p: usize) -> u64 {
    b.get(p..p + 8).map_or(0, |x| u64::from_be_bytes(x.try_into().unwrap_or_default()))
}

enum TrackKind {
    Video(Codec, Vec<Vec<u8>>, usize),
    Aac(Vec<u8>),
}

struct Track {
    id: u32,
    timescale: u64,
    kind: TrackKind,
    /// trex defaults: duration, size, flags.
    defaults: (u32, u32, u32),
}

fn descriptor(b: &[u8], p: &mut usize) -> Option<(u8, usize, usize)> {
    let tag = *b.get(*p)?;
    *p += 1;
    let mut len = 0usize;
    for _ in 0..4 {
        let x = *b.get(*p)?;
        *p += 1;
        len = len << 7 | (x & 0x7f) as usize;
        if x & 0x80 == 0 {
            break;
        }
    }
    Some((tag, *p, len))
}

/// The AudioSpecificConfig inside an `esds` body.
fn esds_asc(b: &[u8]) -> Option<Vec<u8>> {
    let mut p = 4; // full box
    let (tag, _, _) = descriptor(b, &mut p)?;
    if tag != 3 {
        return None;
    }
    let flags = *b.get(p + 2)?;
    p += 3;
    if flags & 0x80 != 0 {
        p += 2;
    }
    if flags & 0x40 != 0 {
        p += 1 + *b.get(p)? as usize;
    }
    if flags & 0x20 != 0 {
        p += 2;
    }
    let (tag, _, _) = descriptor(b, &mut p)?;
    if tag != 4 {
        return None;
    }
    p += 13;
    let (tag, at, len) = descriptor(b, &mut p)?;
    (tag == 5).then(|| b.get(at..at + len).map(<[u8]>::to_vec))?
}

fn mp4_track(b: &[u8], trak: Bx, skipped: &mut Vec<String>) -> Result<Option<Track>, DemuxError> {
    let missing = |what: &str| bad("MP4", trak.start, format!("track without {what}"));
    let tkhd = child(b, trak, b"tkhd")?.ok_or_else(|| missing("tkhd"))?;
    let v = b[tkhd.body.0];
    let id = u32at(b, tkhd.body.0 + if v == 1 { 20 } else { 12 });
    let mdhd = path(b, trak, &[b"mdia", b"mdhd"])?.ok_or_else(|| missing("mdhd"))?;
    let v = b[mdhd.body.0];
    let timescale = u32at(b, mdhd.body.0 + if v == 1 { 20 } else { 12 }) as u64;
    if timescale == 0 {
        return Err(bad("MP4", mdhd.start, "a timescale of 0"));
    }
    let stsd = path(b, trak, &[b"mdia", b"minf", b"stbl", b"stsd"])?.ok_or_else(|| missing("stsd"))?;
    let Some(entry) = boxes(b, stsd.body.0 + 8, stsd.body.1)?.into_iter().next() else {
        return Err(missing("a sample description"));
    };
    let kind = match &entry.kind {
        b"avc1" | b"avc3" | b"hvc1" | b"hev1" => {
            let codec = if entry.kind[0] == b'a' { Codec::H264 } else { Codec::H265 };
            let cfg_kind = if codec == Codec::H264 { b"avcC" } else { b"hvcC" };
            let cfg = boxes(b, (entry.body.0 + 78).min(entry.body.1), entry.body.1)?
                .into_iter()
                .find(|x| &x.kind == cfg_kind)
                .ok_or_else(|| bad("MP4", entry.start, "a video sample entry without its configuration box"))?;
            let (sets, ls) = decoder_config(codec, &b[cfg.body.0..cfg.body.1])
                .ok_or_else(|| bad("MP4", cfg.start, "the decoder configuration record is cut short"))?;
            TrackKind::Video(codec, sets, ls)
        }
        b"mp4a" => {
            let esds = boxes(b, (entry.body.0 + 28).min(entry.body.1), entry.body.1)?
                .into_iter()
                .find(|x| &x.kind == b"esds")
                .ok_or_else(|| bad("MP4", entry.start, "mp4a without esds"))?;
            match esds_asc(&b[esds.body.0..esds.body.1]) {
                Some(asc) if adts_header(&asc, 0).is_some() => TrackKind::Aac(asc),
                _ => {
                    skipped.push(format!("track {id}: MPEG-4 audio other than AAC LC/Main: not carried"));
                    return Ok(None);
                }
            }
        }
        other => {
            skipped.push(format!("track {id}: sample entry '{}': not carried", String::from_utf8_lossy(other)));
            return Ok(None);
        }
    };
    Ok(Some(Track { id, timescale, kind, defaults: (0, 0, 0) }))
}

fn mp4_frame(t: &Track, data: &[u8], dts: u64, cto: i64, at: usize) -> Result<Frame, DemuxError> {
    let dts90 = (dts as u128 * 90_000 / t.timescale as u128) as u64;
    let pts90 = ((dts as i128 + cto as i128).max(0) as u128 * 90_000 / t.timescale as u128) as u64;
    match &t.kind {
        TrackKind::Video(codec, sets, ls) => {
            let au = to_annexb(data, *ls).ok_or_else(|| bad("MP4", at, "a NAL unit length runs past its sample"))?;
            Ok(video_frame(*codec, au, dts90, pts90, sets))
        }
        TrackKind::Aac(asc) => {
            let h = adts_header(asc, data.len()).ok_or_else(|| bad("MP4", at, "an AAC sample too large for ADTS"))?;
            let mut v = h.to_vec();
            v.extend_from_slice(data);
            Ok(Frame { codec: Codec::Aac, keyframe: true, pts: pts90, dts: dts90, data: Bytes::from(v) })
        }
    }
}

fn mp4(b: &Bytes) -> Result<Demuxed, DemuxError> {
    const F: &str = "MP4";
    let mut d = Demuxed::default();
    let top = boxes(b, 0, b.len())?;
    let moov = top.iter().find(|x| &x.kind == b"moov").ok_or_else(|| bad(F, 0, "no moov box"))?;
    let mut tracks = Vec::new();
    for x in boxes(b, moov.body.0, moov.body.1)? {
        if &x.kind == b"trak" {
            if let Some(t) = mp4_track(b, x, &mut d.skipped)? {
                tracks.push((t, x));
            }
        }
    }
    if let Some(mvex) = child(b, *moov, b"mvex")? {
        for trex in boxes(b, mvex.body.0, mvex.body.1)?.into_iter().filter(|x| &x.kind == b"trex") {
            let p = trex.body.0;
            let id = u32at(b, p + 4);
            if let Some((t, _)) = tracks.iter_mut().find(|(t, _)| t.id == id) {
                t.defaults = (u32at(b, p + 12), u32at(b, p + 16), u32at(b, p + 20));
            }
        }
    }
    // Plain MP4: the sample tables.
    for (t, trak) in &tracks {
        let Some(stbl) = path(b, *trak, &[b"mdia", b"minf", b"stbl"])? else { continue };
        let table = |k: &[u8; 4]| child(b, stbl, k);
        let Some(stsz) = table(b"stsz")? else { continue };
        let count = u32at(b, stsz.body.0 + 8) as usize;
        if count == 0 {
            continue;
        }
        let fixed = u32at(b, stsz.body.0 + 4);
        if fixed == 0 && stsz.body.0 + 12 + 4 * count > stsz.body.1 {
            return Err(bad(F, stsz.start, "stsz lists more samples than it holds"));
        }
        let size = |i: usize| if fixed != 0 { fixed } else { u32at(b, stsz.body.0 + 12 + 4 * i) } as usize;
        let chunks: Vec<u64> = match (table(b"stco")?, table(b"co64")?) {
            (Some(c), _) => {
                (0..u32at(b, c.body.0 + 4) as usize).map(|i| u32at(b, c.body.0 + 8 + 4 * i) as u64).collect()
            }
            (_, Some(c)) => (0..u32at(b, c.body.0 + 4) as usize).map(|i| u64at(b, c.body.0 + 8 + 8 * i)).collect(),
            _ => return Err(bad(F, stbl.start, "sample table without chunk offsets")),
        };
        let stsc = table(b"stsc")?.ok_or_else(|| bad(F, stbl.start, "sample table without stsc"))?;
        let runs: Vec<(u32, u32)> = (0..u32at(b, stsc.body.0 + 4) as usize)
            .map(|i| (u32at(b, stsc.body.0 + 8 + 12 * i), u32at(b, stsc.body.0 + 12 + 12 * i)))
            .collect();
        let stts = table(b"stts")?.ok_or_else(|| bad(F, stbl.start, "sample table without stts"))?;
        let mut deltas = Vec::with_capacity(count);
        for i in 0..u32at(b, stts.body.0 + 4) as usize {
            let (n, dt) = (u32at(b, stts.body.0 + 8 + 8 * i), u32at(b, stts.body.0 + 12 + 8 * i));
            deltas.extend(std::iter::repeat_n(dt, (n as usize).min(count - deltas.len())));
        }
        let mut ctos = Vec::new();
        if let Some(ctts) = table(b"ctts")? {
            for i in 0..u32at(b, ctts.body.0 + 4) as usize {
                let (n, o) = (u32at(b, ctts.body.0 + 8 + 8 * i), u32at(b, ctts.body.0 + 12 + 8 * i) as i32);
                ctos.extend(std::iter::repeat_n(o as i64, (n as usize).min(count - ctos.len())));
            }
        }
        let (mut sample, mut dts) = (0usize, 0u64);
        for (ci, &off) in chunks.iter().enumerate() {
            let per = runs.iter().rev().find(|r| r.0 as usize <= ci + 1).map_or(0, |r| r.1) as usize;
            let mut p = off as usize;
            for _ in 0..per {
                if sample >= count {
                    break;
                }
                let n = size(sample);
                let data = p
                    .checked_add(n)
                    .and_then(|end| b.get(p..end))
                    .ok_or_else(|| bad(F, p, format!("sample {sample} runs past the file")))?;
                d.frames.push(mp4_frame(t, data, dts, ctos.get(sample).copied().unwrap_or(0), p)?);
                dts = dts.saturating_add(*deltas.get(sample).unwrap_or(&0) as u64);
                p += n;
                sample += 1;
            }
        }
    }
    // Fragments.
    for moof in top.iter().filter(|x| &x.kind == b"moof") {
        for traf in boxes(b, moof.body.0, moof.body.1)?.into_iter().filter(|x| &x.kind == b"traf") {
            let tfhd = child(b, traf, b"tfhd")?.ok_or_else(|| bad(F, traf.start, "traf without tfhd"))?;
            let fl = u32at(b, tfhd.body.0) & 0xff_ffff;
            let id = u32at(b, tfhd.body.0 + 4);
            let Some((t, _)) = tracks.iter().find(|(t, _)| t.id == id) else { continue };
            let mut q = tfhd.body.0 + 8;
            let mut base = moof.start as u64;
            if fl & 1 != 0 {
                base = u64at(b, q);
                q += 8;
            }
            if fl & 2 != 0 {
                q += 4;
            }
            let (mut ddur, mut dsize) = (t.defaults.0, t.defaults.1);
            if fl & 8 != 0 {
                ddur = u32at(b, q);
                q += 4;
            }
            if fl & 0x10 != 0 {
                dsize = u32at(b, q);
            }
            let mut dts = match child(b, traf, b"tfdt")? {
                Some(x) if b[x.body.0] == 1 => u64at(b, x.body.0 + 4),
                Some(x) => u32at(b, x.body.0 + 4) as u64,
                None => 0,
            };
            for trun in boxes(b, traf.body.0, traf.body.1)?.into_iter().filter(|x| &x.kind == b"trun") {
                let fl = u32at(b, trun.body.0) & 0xff_ffff;
                let n = u32at(b, trun.body.0 + 4) as usize;
                let mut q = trun.body.0 + 8;
                let mut p = base as usize;
                if fl & 1 != 0 {
                    p = (base as i64 + u32at(b, q) as i32 as i64).max(0) as usize;
                    q += 4;
                }
                if fl & 4 != 0 {
                    q += 4;
                }
                let per = [0x100, 0x200, 0x400, 0x800].iter().filter(|m| fl & **m != 0).count() * 4;
                if q + n * per > trun.body.1 {
                    return Err(bad(F, trun.start, "trun lists more samples than it holds"));
                }
                for _ in 0..n {
                    let mut r = q;
                    let mut field = |m: u32, dflt: u32| {
                        if fl & m != 0 {
                            r += 4;
                            u32at(b, r - 4)
                        } else {
                            dflt
                        }
                    };
                    let dur = field(0x100, ddur);
                    let size = field(0x200, dsize) as usize;
                    field(0x400, 0);
                    let cto = field(0x800, 0) as i32 as i64;
                    q += per;
                    let data = p
                        .checked_add(size)
                        .and_then(|end| b.get(p..end))
                        .ok_or_else(|| bad(F, p, "a fragment's sample runs past the file"))?;
                    d.frames.push(mp4_frame(t, data, dts, cto, p)?);
                    dts = dts.saturating_add(dur as u64);
                    p += size;
                }
            }
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `demux` fuzz target: a 64-bit box size near `u64::MAX`
    /// overflowed the end-of-box sum.
    #[test]
    fn fuzz_crash_box_size_overflow() {
        let b = Bytes::from_static(&[
            0, 0, 0, 0x0c, 0, 0x46, 0x4c, 0, 0, 0, 0, 0x56, 0, 0, 0, 1, 0x2e, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0, 0, 0x29, 0, 0, 1, 1,
        ]);
        let e = read(Input::Mp4, &b, 25).unwrap_err().to_string();
        assert!(e.starts_with("MP4 at byte 12: box '.") && e.contains("does not fit its parent"), "{e}");
    }

    #[test]
    fn timestamps_unwrap_across_the_33_bit_limit() {
        let mut u = Unwrap::default();
        let top = (1u64 << 33) - 3000;
        assert_eq!(u.next(top), top);
        assert_eq!(u.next(600), (1 << 33) + 600, "wrapped forward");
        assert_eq!(u.next((1 << 33) - 100), (1 << 33) - 100, "a late packet from before the wrap");
    }
}
