//! FLV tags (Adobe FLV 10.1, Annex E) for files and RTMP: an `onMetaData`
//! script tag, the codec's sequence header, then one video tag per frame.
//! H.264 uses the classic AVC video tags (codec id 7). H.265 uses Enhanced
//! RTMP v1 (`IsExHeader`, FourCC `hvc1`, `SequenceStart` with the
//! HEVCDecoderConfigurationRecord, `CodedFramesX` for the frames) — which
//! Debian's ffmpeg 5.1 and nginx-rtmp do not read; `read_tags` here does,
//! and checks it against the spec in the tests.

use crate::annexb::{nal_type, nal_units};
use crate::audio::parse_adts;
use crate::fmp4::{avc_config, hevc_config, Mp4Error};
use crate::params::{find_sps, parameter_sets, Sps};
use crate::{Codec, Frame};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    #[error(transparent)]
    Mp4(#[from] Mp4Error),
    #[error("no SPS in the first keyframe")]
    NoSps,
    #[error("{0:?} is not a codec FLV carries here (H.264, H.265)")]
    Codec(Codec),
    #[error("FLV: {0}")]
    Bad(&'static str),
}

/// The 9-byte FLV header and the first PreviousTagSize (0).
pub fn header() -> [u8; 13] {
    [b'F', b'L', b'V', 1, 0x01, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// One tag with its trailing PreviousTagSize.
pub fn tag(kind: u8, ms: u32, body: &[u8], out: &mut Vec<u8>) {
    let n = body.len() as u32;
    out.push(kind);
    out.extend_from_slice(&n.to_be_bytes()[1..]);
    out.extend_from_slice(&ms.to_be_bytes()[1..]);
    out.push((ms >> 24) as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(body);
    out.extend_from_slice(&(11 + n).to_be_bytes());
}

/// AMF0 values for script data and RTMP commands.
pub mod amf0 {
    #[derive(Clone, Debug, PartialEq)]
    pub enum V {
        Num(f64),
        Bool(bool),
        Str(String),
        Obj(Vec<(String, V)>),
        /// ECMA array (onMetaData).
        Ecma(Vec<(String, V)>),
        Null,
    }

    fn key(out: &mut Vec<u8>, k: &str) {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
    }

    pub fn write(v: &V, out: &mut Vec<u8>) {
        match v {
            V::Num(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_be_bytes());
            }
            V::Bool(b) => out.extend_from_slice(&[1, *b as u8]),
            V::Str(s) => {
                out.push(2);
                key(out, s);
            }
            V::Obj(m) | V::Ecma(m) => {
                if let V::Ecma(_) = v {
                    out.push(8);
                    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
                } else {
                    out.push(3);
                }
                for (k, v) in m {
                    key(out, k);
                    write(v, out);
                }
                out.extend_from_slice(&[0, 0, 9]);
            }
            V::Null => out.push(5),
        }
    }

    /// Reads one value; None on anything malformed or unsupported.
    pub fn read(b: &[u8], pos: &mut usize) -> Option<V> {
        let t = *b.get(*pos)?;
        *pos += 1;
        let u16at =
            |b: &[u8], p: usize| -> Option<usize> { Some(u16::from_be_bytes([*b.get(p)?, *b.get(p + 1)?]) as usize) };
        match t {
            0 => {
                let v = f64::from_be_bytes(b.get(*pos..*pos + 8)?.try_into().ok()?);
                *pos += 8;
                Some(V::Num(v))
            }
            1 => {
                let v = *b.get(*pos)? != 0;
                *pos += 1;
                Some(V::Bool(v))
            }
            2 => {
                let n = u16at(b, *pos)?;
                let s = String::from_utf8_lossy(b.get(*pos + 2..*pos + 2 + n)?).into_owned();
                *pos += 2 + n;
                Some(V::Str(s))
            }
            3 | 8 => {
                if t == 8 {
                    *pos += 4;
                }
                let mut m = Vec::new();
                loop {
                    let n = u16at(b, *pos)?;
                    if n == 0 && *b.get(*pos + 2)? == 9 {
                        *pos += 3;
                        break;
                    }
                    let k = String::from_utf8_lossy(b.get(*pos + 2..*pos + 2 + n)?).into_owned();
                    *pos += 2 + n;
                    let v = read(b, pos)?;
                    m.push((k, v));
                    if m.len() > 10_000 {
                        return None;
                    }
                }
                Some(if t == 8 { V::Ecma(m) } else { V::Obj(m) })
            }
            5 | 6 => Some(V::Null),
            _ => None,
        }
    }
}

/// Turns frames into FLV video tag bodies (also the payload of RTMP video
/// messages).
pub struct VideoTags {
    codec: Codec,
    pub sps: Sps,
    config: Vec<u8>,
}

impl VideoTags {
    /// From the first keyframe (it must carry the parameter sets).
    pub fn new(key: &Frame) -> Result<VideoTags, FlvError> {
        let sps = find_sps(key.codec, &key.data).map_err(|_| FlvError::NoSps)?;
        let params = parameter_sets(key.codec, &key.data);
        let config = match key.codec {
            Codec::H264 => avc_config(&sps, &params)?,
            Codec::H265 => hevc_config(&sps, &params)?,
            c => return Err(FlvError::Codec(c)),
        };
        Ok(VideoTags { codec: key.codec, sps, config })
    }

    /// The `onMetaData` script body.
    pub fn metadata(&self, fps: u32, audio_codec_id: Option<u8>) -> Vec<u8> {
        use amf0::V;
        let codec_id = match self.codec {
            Codec::H264 => V::Num(7.0),
            _ => V::Num(u32::from_be_bytes(*b"hvc1") as f64),
        };
        let mut out = Vec::new();
        amf0::write(&V::Str("onMetaData".into()), &mut out);
        let mut fields = vec![
            ("width".into(), V::Num(self.sps.width as f64)),
            ("height".into(), V::Num(self.sps.height as f64)),
            ("framerate".into(), V::Num(fps as f64)),
            ("videocodecid".into(), codec_id),
        ];
        if let Some(id) = audio_codec_id {
            fields.push(("audiocodecid".into(), V::Num(id as f64)));
        }
        fields.push(("encoder".into(), V::Str("ivr".into())));
        amf0::write(&V::Ecma(fields), &mut out);
        out
    }

    /// The sequence header (AVC) / sequence start (Enhanced RTMP) body.
    pub fn sequence_header(&self) -> Vec<u8> {
        let mut b = match self.codec {
            Codec::H264 => vec![0x17, 0, 0, 0, 0],
            _ => {
                let mut v = vec![0x80 | 0x10]; // ExHeader, keyframe, SequenceStart
                v.extend_from_slice(b"hvc1");
                v
            }
        };
        b.extend_from_slice(&self.config);
        b
    }

    /// A frame's body: length-prefixed NAL units behind the tag header.
    pub fn frame(&self, f: &Frame) -> Vec<u8> {
        let mut b = Vec::with_capacity(f.data.len() + 16);
        self.write_body(f, &mut b);
        b
    }

    /// Appends a frame's body to `out` (AUDs and parameter sets left out:
    /// the sequence header carries those), copying the frame once.
    pub fn write_body(&self, f: &Frame, out: &mut Vec<u8>) {
        let kind = if f.keyframe { 0x10 } else { 0x20 };
        match self.codec {
            Codec::H264 => {
                let cts = (f.pts.saturating_sub(f.dts) / 90) as u32;
                out.push(kind | 7);
                out.push(1);
                out.extend_from_slice(&cts.to_be_bytes()[1..]);
            }
            _ => {
                out.push(0x80 | kind | 3); // CodedFramesX: no composition time
                out.extend_from_slice(b"hvc1");
            }
        }
        let skip: &[u8] = if self.codec == Codec::H265 { &[32, 33, 34, 35] } else { &[7, 8, 9] };
        for n in nal_units(&f.data) {
            if nal_type(self.codec, n).is_some_and(|t| skip.contains(&t)) {
                continue;
            }
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
        }
    }
}

/// Writes a tag whose body `body` appends to `out` in place.
fn tag_with(kind: u8, ms: u32, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&ms.to_be_bytes()[1..]);
    out.push((ms >> 24) as u8);
    out.extend_from_slice(&[0, 0, 0]);
    body(out);
    let n = (out.len() - start - 11) as u32;
    out[start + 1..start + 4].copy_from_slice(&n.to_be_bytes()[1..]);
    out.extend_from_slice(&(11 + n).to_be_bytes());
}

/// Turns audio frames into FLV audio tag bodies: G.711 A-law (sound
/// format 7) and µ-law (8) as they are; AAC (10) with the
/// AudioSpecificConfig taken from the first ADTS header, then raw frames.
pub struct AudioTags {
    codec: Codec,
    asc_sent: bool,
}

impl AudioTags {
    pub fn new(codec: Codec) -> Result<AudioTags, FlvError> {
        match codec {
            Codec::G711A | Codec::G711U | Codec::Aac => Ok(AudioTags { codec, asc_sent: false }),
            c => Err(FlvError::Codec(c)),
        }
    }

    /// FLV's `audiocodecid`.
    pub fn codec_id(&self) -> u8 {
        match self.codec {
            Codec::G711A => 7,
            Codec::G711U => 8,
            _ => 10,
        }
    }

    /// The bodies for one frame: for the first AAC frame, the sequence
    /// header comes first.
    pub fn bodies(&mut self, f: &Frame) -> Result<Vec<Vec<u8>>, FlvError> {
        if f.codec != self.codec {
            return Err(FlvError::Bad("the audio codec changed"));
        }
        match self.codec {
            Codec::Aac => {
                let h = parse_adts(&f.data).ok_or(FlvError::Bad("an AAC frame without its ADTS header"))?;
                let raw = f.data.get(h.header..h.len).ok_or(FlvError::Bad("an ADTS frame cut short"))?;
                let mut out = Vec::with_capacity(2);
                if !self.asc_sent {
                    let mut seq = vec![0xaf, 0];
                    seq.extend_from_slice(&h.asc());
                    out.push(seq);
                    self.asc_sent = true;
                }
                let mut b = Vec::with_capacity(raw.len() + 2);
                b.extend_from_slice(&[0xaf, 1]);
                b.extend_from_slice(raw);
                out.push(b);
                Ok(out)
            }
            // 5.5 kHz in the rate bits (players take G.711 as 8 kHz), 16-bit, mono.
            _ => {
                let mut b = Vec::with_capacity(f.data.len() + 1);
                b.push(self.codec_id() << 4 | 0x02);
                b.extend_from_slice(&f.data);
                Ok(vec![b])
            }
        }
    }
}

/// A streaming FLV writer: header, `onMetaData`, sequence header, then a
/// tag per frame, video and audio interleaved as they come.
pub struct Writer {
    video: VideoTags,
    audio: Option<AudioTags>,
    t0: u64,
}

impl Writer {
    /// Starts at `key` (a keyframe with parameter sets); writes the file
    /// header, metadata and sequence header to `out`.
    pub fn new(key: &Frame, audio: Option<Codec>, fps: u32, out: &mut Vec<u8>) -> Result<Writer, FlvError> {
        if !key.keyframe {
            return Err(FlvError::Bad("the first frame is not a keyframe"));
        }
        let video = VideoTags::new(key)?;
        let audio = audio.map(AudioTags::new).transpose()?;
        out.extend_from_slice(&header());
        if audio.is_some() {
            out[4] = 0x05;
        }
        tag(TAG_SCRIPT, 0, &video.metadata(fps, audio.as_ref().map(AudioTags::codec_id)), out);
        tag(TAG_VIDEO, 0, &video.sequence_header(), out);
        Ok(Writer { video, audio, t0: key.dts })
    }

    /// One frame's tags. Audio frames are written only if the writer was
    /// made with that audio codec (`Ok(false)` otherwise).
    pub fn write(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<bool, FlvError> {
        let ms = (f.dts.saturating_sub(self.t0) / 90) as u32;
        if f.codec.is_video() {
            tag_with(TAG_VIDEO, ms, out, |o| self.video.write_body(f, o));
            return Ok(true);
        }
        let Some(a) = &mut self.audio else { return Ok(false) };
        for b in a.bodies(f)? {
            tag(TAG_AUDIO, ms, &b, out);
        }
        Ok(true)
    }
}

/// A whole FLV file of `frames` (which must start with a keyframe).
pub fn file(frames: &[Frame], fps: u32) -> Result<Vec<u8>, FlvError> {
    let first = frames.first().ok_or(FlvError::Bad("no frames"))?;
    let audio = frames.iter().find(|f| !f.codec.is_video()).map(|f| f.codec);
    let mut out = Vec::new();
    let mut w = Writer::new(first, audio, fps, &mut out)?;
    for f in frames {
        w.write(f, &mut out)?;
    }
    Ok(out)
}

/// A tag read back: type, timestamp (ms) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub kind: u8,
    pub ms: u32,
    pub body: Vec<u8>,
}

/// Reads an FLV file's tags, checking the header and every
/// PreviousTagSize.
pub fn read_tags(b: &[u8]) -> Result<Vec<Tag>, FlvError> {
    if b.len() < 13 || &b[..3] != b"FLV" {
        return Err(FlvError::Bad("no FLV signature"));
    }
    let hl = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) as usize;
    let mut p = hl.checked_add(4).ok_or(FlvError::Bad("header size"))?;
    let mut out = Vec::new();
    while p < b.len() {
        let h = b.get(p..p + 11).ok_or(FlvError::Bad("truncated tag header"))?;
        let n = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ms = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let body = b.get(p + 11..p + 11 + n).ok_or(FlvError::Bad("truncated tag body"))?;
        let pts = b.get(p + 11 + n..p + 15 + n).ok_or(FlvError::Bad("missing PreviousTagSize"))?;
        if u32::from_be_bytes([pts[0], pts[1], pts[2], pts[3]]) as usize != 11 + n {
            return Err(FlvError::Bad("PreviousTagSize does not match the tag"));
        }
        out.push(Tag { kind: h[0], ms, body: body.to_vec() });
        p += 15 + n;
    }
    Ok(out)
}
