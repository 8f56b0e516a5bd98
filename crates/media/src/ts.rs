//! MPEG-TS muxer (ISO/IEC 13818-1) for one video stream: H.264 (stream
//! type 0x1B) or H.265 (0x24), PID 0x100, program 1 with its PMT on PID
//! 0x1000. PAT and PMT go out before every keyframe and at least every
//! 100 ms; every PES carries PTS (and DTS when it differs); the first TS
//! packet of every frame carries the PCR (100 ms behind the DTS) and, on a
//! keyframe, the random-access indicator. An access unit delimiter is
//! added to any access unit that lacks one, and the last parameter sets
//! seen are put in front of a keyframe that comes without them.
//! AAC goes as ADTS (stream type 0x0F) on PID 0x101 when the muxer is made
//! `with_audio`; G.711 has no MPEG-TS stream type and is not carried.

use crate::annexb::{leading_nals, nal_type};
use crate::{Codec, Frame};

pub const PACKET: usize = 188;
pub const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TsError {
    #[error("{0:?} is not a video codec this muxer carries (H.264, H.265)")]
    Codec(Codec),
    #[error("frame of {got:?} in a {want:?} stream")]
    Mixed { want: Codec, got: Codec },
}

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, no reflection, no final xor).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}

pub struct Muxer {
    codec: Codec,
    audio: Option<Codec>,
    cc: [u8; 4], // PAT, PMT, video, audio
    last_tables: Option<u64>,
    /// Parameter sets seen most recently (VPS, SPS, PPS), Annex B.
    params: Vec<Vec<u8>>,
}

fn psi_packet(pid: u16, cc: &mut u8, section: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0x47, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | (*cc & 0x0f)]);
    *cc = cc.wrapping_add(1);
    out.push(0); // pointer field
    out.extend_from_slice(section);
    let crc = crc32(section);
    out.extend_from_slice(&crc.to_be_bytes());
    out.resize(start + PACKET, 0xff);
}

fn pts_bytes(prefix: u8, t: u64) -> [u8; 5] {
    let t = t & ((1 << 33) - 1);
    [
        prefix << 4 | ((t >> 29) as u8 & 0x0e) | 1,
        (t >> 22) as u8,
        ((t >> 14) as u8 & 0xfe) | 1,
        (t >> 7) as u8,
        ((t << 1) as u8 & 0xfe) | 1,
    ]
}

impl Muxer {
    pub fn new(codec: Codec) -> Result<Muxer, TsError> {
        if !codec.is_video() {
            return Err(TsError::Codec(codec));
        }
        Ok(Muxer { codec, audio: None, cc: [0; 4], last_tables: None, params: Vec::new() })
    }

    /// A muxer with an audio stream too (AAC as ADTS, stream type 0x0F, PID
    /// 0x101). G.711 has no MPEG-TS stream type and is refused.
    pub fn with_audio(codec: Codec, audio: Codec) -> Result<Muxer, TsError> {
        if audio != Codec::Aac {
            return Err(TsError::Codec(audio));
        }
        let mut m = Muxer::new(codec)?;
        m.audio = Some(audio);
        Ok(m)
    }

    fn stream_type(&self) -> u8 {
        if self.codec == Codec::H265 {
            0x24
        } else {
            0x1b
        }
    }

    fn tables(&mut self, out: &mut Vec<u8>) {
        let pat = [
            0x00,
            0xb0,
            13, // table id, syntax + length
            0x00,
            0x01,
            0xc1,
            0x00,
            0x00, // ts id 1, version 0, current
            0x00,
            0x01,
            0xe0 | (PMT_PID >> 8) as u8,
            PMT_PID as u8, // program 1 → PMT
        ];
        psi_packet(0, &mut self.cc[0], &pat, out);
        let mut pmt = vec![
            0x02,
            0xb0,
            18, // table id, length 9 + 5 per stream + 4
            0x00,
            0x01,
            0xc1,
            0x00,
            0x00, // program 1
            0xe0 | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8, // PCR PID
            0xf0,
            0x00, // no program info
            self.stream_type(),
            0xe0 | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8,
            0xf0,
            0x00,
        ];
        if self.audio.is_some() {
            pmt.extend_from_slice(&[0x0f, 0xe0 | (AUDIO_PID >> 8) as u8, AUDIO_PID as u8, 0xf0, 0x00]);
            pmt[2] += 5;
        }
        psi_packet(PMT_PID, &mut self.cc[1], &pmt, out);
    }

    /// What goes in front of the access unit in the PES: an AUD if it
    /// lacks one, and the last parameter sets if it is a keyframe without
    /// them. Only the NAL units before the picture are read: the picture
    /// itself, nearly all of the frame, is neither scanned nor copied here.
    fn prefix(&mut self, f: &Frame) -> (bool, bool) {
        let (aud_type, param_types): (u8, &[u8]) = match self.codec {
            Codec::H265 => (35, &[32, 33, 34]),
            _ => (9, &[7, 8]),
        };
        let codec = self.codec;
        let mut first = None;
        let mut params: Vec<&[u8]> = Vec::new();
        for n in leading_nals(codec, &f.data) {
            let t = nal_type(codec, n);
            first = first.or(t);
            if t.is_some_and(|t| param_types.contains(&t)) {
                params.push(n);
            }
        }
        if !params.is_empty() {
            self.params = params.iter().map(|n| n.to_vec()).collect();
        }
        (first != Some(aud_type), f.keyframe && params.is_empty())
    }

    /// The decisions `write` makes for a video frame, with the muxer's
    /// state moved on: (PAT/PMT first, add an AUD, add the parameter sets).
    fn plan(&mut self, f: &Frame) -> Result<(bool, bool, bool), TsError> {
        if f.codec != self.codec {
            return Err(TsError::Mixed { want: self.codec, got: f.codec });
        }
        let tables = f.keyframe || self.last_tables.is_none_or(|t| f.dts.saturating_sub(t) >= 9000);
        if tables {
            self.last_tables = Some(f.dts);
        }
        let (aud, params) = self.prefix(f);
        Ok((tables, aud, params))
    }

    /// How many bytes `write` would append for `f`, moving the muxer on
    /// exactly as `write` does (continuity counters included) without
    /// copying the frame: a recording is measured before it is sent.
    pub fn measure(&mut self, f: &Frame) -> Result<usize, TsError> {
        let mut n = 0;
        if !f.codec.is_video() {
            if self.plan_audio(f)? {
                n += self.skip_tables();
            }
            return Ok(n + count_packets(&mut self.cc[3], 14 + f.data.len(), 0) * PACKET);
        }
        let (tables, aud, params) = self.plan(f)?;
        if tables {
            n += self.skip_tables();
        }
        let head = if f.pts != f.dts { 19 } else { 14 };
        let aud_len = if aud { self.aud().len() } else { 0 };
        let params_len = if params { self.params.iter().map(|p| 4 + p.len()).sum() } else { 0 };
        let pes = head + aud_len + params_len + f.data.len();
        Ok(n + count_packets(&mut self.cc[2], pes, VIDEO_AF) * PACKET)
    }

    /// The decision `write_audio` makes for an audio frame, with the
    /// muxer's state moved on: whether PAT/PMT go first.
    fn plan_audio(&mut self, f: &Frame) -> Result<bool, TsError> {
        if self.audio != Some(f.codec) {
            return Err(TsError::Mixed { want: self.audio.unwrap_or(self.codec), got: f.codec });
        }
        let tables = self.last_tables.is_none();
        if tables {
            self.last_tables = Some(f.dts);
        }
        Ok(tables)
    }

    /// The access unit delimiter added to a frame that lacks one.
    fn aud(&self) -> &'static [u8] {
        if self.codec == Codec::H265 {
            &[0, 0, 0, 1, 0x46, 0x01, 0x50]
        } else {
            &[0, 0, 0, 1, 0x09, 0xf0]
        }
    }

    /// PAT and PMT as `tables` counts them, without writing.
    fn skip_tables(&mut self) -> usize {
        self.cc[0] = self.cc[0].wrapping_add(1);
        self.cc[1] = self.cc[1].wrapping_add(1);
        2 * PACKET
    }

    /// Appends the TS packets of one frame to `out`.
    pub fn write(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), TsError> {
        if !f.codec.is_video() {
            return self.write_audio(f, out);
        }
        let (tables, add_aud, add_params) = self.plan(f)?;
        if tables {
            self.tables(out);
        }
        let mut head = [0u8; 19];
        head[..6].copy_from_slice(&[0, 0, 1, 0xe0, 0, 0]); // length 0: unbounded (video)
        let head_len = if f.pts != f.dts {
            head[6..9].copy_from_slice(&[0x84, 0xc0, 10]);
            head[9..14].copy_from_slice(&pts_bytes(3, f.pts));
            head[14..19].copy_from_slice(&pts_bytes(1, f.dts));
            19
        } else {
            head[6..9].copy_from_slice(&[0x84, 0x80, 5]);
            head[9..14].copy_from_slice(&pts_bytes(2, f.pts));
            14
        };
        const SC: &[u8] = &[0, 0, 0, 1];
        let aud = self.aud();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(4 + 2 * self.params.len());
        parts.push(&head[..head_len]);
        if add_aud {
            parts.push(aud);
        }
        if add_params {
            for p in &self.params {
                parts.push(SC);
                parts.push(p);
            }
        }
        parts.push(&f.data);
        let pcr = f.dts.saturating_sub(9000) & ((1 << 33) - 1);
        let af: Vec<u8> = vec![
            if f.keyframe { 0x50 } else { 0x10 },
            (pcr >> 25) as u8,
            (pcr >> 17) as u8,
            (pcr >> 9) as u8,
            (pcr >> 1) as u8,
            ((pcr & 1) as u8) << 7 | 0x7e,
            0,
        ];
        debug_assert_eq!(af.len(), VIDEO_AF);
        packetize(VIDEO_PID, &mut self.cc[2], &parts, af, out);
        Ok(())
    }

    /// Appends an audio frame (AAC as ADTS: one PES, PTS only) to `out`.
    /// Other audio has no stream type here and is refused.
    pub fn write_audio(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), TsError> {
        if self.plan_audio(f)? {
            self.tables(out);
        }
        let len = 8 + f.data.len();
        let mut head = [0u8; 14];
        head[..4].copy_from_slice(&[0, 0, 1, 0xc0]);
        head[4..6].copy_from_slice(&(if len > 0xffff { 0 } else { len as u16 }).to_be_bytes());
        head[6..9].copy_from_slice(&[0x84, 0x80, 5]);
        head[9..14].copy_from_slice(&pts_bytes(2, f.pts));
        packetize(AUDIO_PID, &mut self.cc[3], &[&head, &f.data], Vec::new(), out);
        Ok(())
    }
}

/// Bytes of the adaptation field on a video frame's first packet (flags
/// and PCR).
const VIDEO_AF: usize = 7;

/// The packets `packetize` cuts a PES of `len` bytes into (with `af` bytes
/// of adaptation field on the first), moving the continuity counter on.
fn count_packets(cc: &mut u8, len: usize, af: usize) -> usize {
    let room = PACKET - 4 - if af == 0 { 0 } else { 1 + af };
    let n = match len {
        0 => 0,
        l if l <= room => 1,
        l => 1 + (l - room).div_ceil(PACKET - 4),
    };
    *cc = cc.wrapping_add(n as u8);
    n
}

/// Copies `n` bytes from the front of `parts` (advancing it) into `out`.
fn take(parts: &mut &[&[u8]], at: &mut usize, mut n: usize, out: &mut Vec<u8>) {
    while n > 0 {
        let Some(p) = parts.first() else { return };
        let k = n.min(p.len() - *at);
        out.extend_from_slice(&p[*at..*at + k]);
        *at += k;
        n -= k;
        if *at == p.len() {
            *parts = &parts[1..];
            *at = 0;
        }
    }
}

/// Cuts a PES (given as consecutive parts, copied once) into TS packets
/// on `pid`; `af` (if not empty) is the adaptation field of the first
/// packet; the last packet is stuffed.
fn packetize(pid: u16, cc: &mut u8, mut parts: &[&[u8]], mut af: Vec<u8>, out: &mut Vec<u8>) {
    let mut left: usize = parts.iter().map(|p| p.len()).sum();
    let mut at = 0;
    out.reserve(left + left / 180 * 8 + 2 * PACKET);
    let mut first = true;
    while left > 0 {
        let start = out.len();
        let pusi = if first { 0x40 } else { 0 };
        out.extend_from_slice(&[0x47, pusi | (pid >> 8) as u8, pid as u8, 0]);
        if !first {
            af.clear();
        }
        let room = PACKET - 4 - if af.is_empty() { 0 } else { 1 + af.len() };
        let n = if left < room {
            // Stuff: an adaptation field (created if needed) grows to fill.
            let need = PACKET - 4 - left;
            if af.is_empty() && need == 1 {
                out.push(0); // length 0: the field is just its length byte
            } else {
                if af.is_empty() {
                    af.push(0);
                }
                af.resize(need - 1, 0xff);
                out.push(af.len() as u8);
                out.extend_from_slice(&af);
            }
            out[start + 3] = 0x30 | (*cc & 0x0f);
            left
        } else {
            if af.is_empty() {
                out[start + 3] = 0x10 | (*cc & 0x0f);
            } else {
                out.push(af.len() as u8);
                out.extend_from_slice(&af);
                out[start + 3] = 0x30 | (*cc & 0x0f);
            }
            PACKET - (out.len() - start)
        };
        take(&mut parts, &mut at, n, out);
        left -= n;
        *cc = cc.wrapping_add(1);
        first = false;
        debug_assert_eq!(out.len() - start, PACKET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn crc_of_a_known_pat() {
        // The PAT ffmpeg writes for program 1 → PMT 0x1000.
        let pat = [0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01, 0xf0, 0x00];
        assert_eq!(crc32(&pat), 0x2ab1_04b2);
    }

    #[test]
    fn packets_are_whole_and_counters_run() {
        let mut m = Muxer::new(Codec::H264).unwrap();
        let mut out = Vec::new();
        for (i, n) in [10usize, 170, 171, 172, 183, 184, 185, 5000].iter().enumerate() {
            let mut data = vec![0, 0, 0, 1, 0x65, 0x88];
            data.resize(*n + 6, 0x11);
            let f = Frame {
                codec: Codec::H264,
                keyframe: i == 0,
                pts: 90_000 + i as u64 * 3600,
                dts: 90_000 + i as u64 * 3600,
                data: Bytes::from(data),
            };
            m.write(&f, &mut out).unwrap();
        }
        assert_eq!(out.len() % PACKET, 0);
        let mut cc: Option<u8> = None;
        for p in out.chunks(PACKET) {
            assert_eq!(p[0], 0x47);
            let pid = ((p[1] as u16 & 0x1f) << 8) | p[2] as u16;
            if pid == VIDEO_PID {
                let c = p[3] & 0x0f;
                if let Some(prev) = cc {
                    assert_eq!(c, (prev + 1) & 0x0f);
                }
                cc = Some(c);
            }
        }
        assert!(matches!(
            m.write(&Frame { codec: Codec::H265, keyframe: false, pts: 0, dts: 0, data: Bytes::new() }, &mut out),
            Err(TsError::Mixed { .. })
        ));
        assert!(Muxer::new(Codec::G711A).is_err());
    }

    /// `measure` says what `write` appends, frame by frame, and leaves the
    /// muxer where `write` leaves it: a recording's announced size is the
    /// size it sends.
    #[test]
    fn measure_is_what_write_appends() {
        let nal = |t: u8, n: usize| {
            let mut v = vec![0, 0, 0, 1, t, 0x88];
            v.resize(n, 0x11);
            v
        };
        let mut frames = Vec::new();
        let mut pts = 90_000u64;
        for n in [1usize, 160, 161, 162, 170, 171, 172, 176, 177, 183, 184, 185, 360, 361, 5000] {
            for (key, lead) in [
                (true, [nal(0x67, 12), nal(0x68, 6)].concat()), // SPS PPS: kept
                (false, nal(0x09, 6)),                          // AUD present
                (true, nal(0x06, 40)),                          // keyframe without parameter sets
                (false, Vec::new()),                            // a bare slice
            ] {
                let mut data = lead;
                data.extend(nal(if key { 0x65 } else { 0x41 }, n + 6));
                let dts = pts;
                pts += 3600;
                let b_frame = n % 2 == 1;
                frames.push(Frame {
                    codec: Codec::H264,
                    keyframe: key,
                    pts: if b_frame { dts + 7200 } else { dts },
                    dts,
                    data: Bytes::from(data),
                });
                frames.push(Frame {
                    codec: Codec::Aac,
                    keyframe: true,
                    pts: dts,
                    dts,
                    data: Bytes::from(vec![0xaa; n]),
                });
            }
        }
        let (mut w, mut m) =
            (Muxer::with_audio(Codec::H264, Codec::Aac).unwrap(), Muxer::with_audio(Codec::H264, Codec::Aac).unwrap());
        let mut out = Vec::new();
        for f in &frames {
            let before = out.len();
            w.write(f, &mut out).unwrap();
            assert_eq!(m.measure(f).unwrap(), out.len() - before, "frame of {} bytes", f.data.len());
        }
        // Same continuity counters and tables state: the next frame is byte-identical.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let last = &frames[frames.len() - 2];
        w.write(last, &mut a).unwrap();
        m.write(last, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(m.measure(&Frame { codec: Codec::G711A, keyframe: true, pts: 0, dts: 0, data: Bytes::new() }).is_err());
    }
}
