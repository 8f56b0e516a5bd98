//! The fixture clips, embedded so the simulators run with no ffmpeg, split
//! into access units (frames) ready to be framed for any protocol.

use bytes::Bytes;
use std::sync::OnceLock;

pub static H264_640X360: &[u8] = include_bytes!("../../../fixtures/h264_640x360.h264");
pub static H265_640X360: &[u8] = include_bytes!("../../../fixtures/h265_640x360.h265");
pub static H264_2592X1944: &[u8] = include_bytes!("../../../fixtures/h264_2592x1944.h264");
pub static H265_2592X1944: &[u8] = include_bytes!("../../../fixtures/h265_2592x1944.h265");
pub static SNAPSHOT_JPEG: &[u8] = include_bytes!("../../../fixtures/snapshot_640x360.jpg");
pub static TONE_ALAW: &[u8] = include_bytes!("../../../fixtures/tone_8k.alaw");
pub static TONE_ULAW: &[u8] = include_bytes!("../../../fixtures/tone_8k.ulaw");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    H265,
}

/// One access unit in Annex B (start codes kept).
#[derive(Clone, Debug)]
pub struct AccessUnit {
    pub keyframe: bool,
    pub data: Bytes,
}

/// A clip: its frames, size and rate. Clips loop; every GOP starts with an
/// I-frame carrying the parameter sets.
#[derive(Debug)]
pub struct Clip {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: Vec<AccessUnit>,
    /// Frames per GOP (distance between keyframes).
    pub gop: usize,
}

/// Splits an Annex B elementary stream into access units (the media
/// crate's rules: a new unit at parameter sets/SEI/AUD before a picture,
/// or at a slice that is the first of its picture).
pub fn split_access_units(data: &[u8], codec: Codec) -> Vec<AccessUnit> {
    let codec = match codec {
        Codec::H264 => ivr_media::Codec::H264,
        Codec::H265 => ivr_media::Codec::H265,
    };
    ivr_media::annexb::access_units(&Bytes::copy_from_slice(data), codec)
        .into_iter()
        .map(|u| AccessUnit { keyframe: u.keyframe, data: u.data })
        .collect()
}

impl Clip {
    fn load(data: &[u8], codec: Codec, width: u32, height: u32) -> Clip {
        let frames = split_access_units(data, codec);
        let keys: Vec<usize> = frames.iter().enumerate().filter(|(_, f)| f.keyframe).map(|(i, _)| i).collect();
        let gop = if keys.len() >= 2 { keys[1] - keys[0] } else { frames.len().max(1) };
        Clip { codec, width, height, fps: 25, frames, gop }
    }

    /// The clip's frames padded so the stream runs at `bitrate` bit/s at its
    /// frame rate, keyframes five times the size of the others (as
    /// encoders make them): an SEI of start-code-free noise (user data
    /// unregistered) goes in front of each picture's first slice. Frames
    /// already larger stay as they are. For load tests and honest bitrate
    /// checks; decoders skip the SEI.
    pub fn padded(&self, bitrate: u64) -> Vec<AccessUnit> {
        let g = self.gop.max(1) as u64;
        let avg = bitrate / 8 / self.fps.max(1) as u64;
        let p_size = (avg * g / (g + 4)) as usize;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        self.frames
            .iter()
            .map(|u| {
                let target = if u.keyframe { 5 * p_size } else { p_size };
                if target <= u.data.len() + 32 {
                    return u.clone();
                }
                let sei = filler_sei(self.codec, target - u.data.len(), &mut seed);
                let codec = if self.codec == Codec::H265 { ivr_media::Codec::H265 } else { ivr_media::Codec::H264 };
                // Before the first slice (an SEI must not follow one).
                let at = ivr_media::annexb::nal_starts(&u.data)
                    .into_iter()
                    .find(|&(_, nal)| {
                        ivr_media::annexb::nal_type(codec, &u.data[nal..]).is_some_and(|t| {
                            if codec == ivr_media::Codec::H265 {
                                t < 32
                            } else {
                                (1..=5).contains(&t)
                            }
                        })
                    })
                    .map_or(u.data.len(), |(sc, _)| sc);
                let mut d = Vec::with_capacity(target + 8);
                d.extend_from_slice(&u.data[..at]);
                d.extend_from_slice(&sei);
                d.extend_from_slice(&u.data[at..]);
                AccessUnit { keyframe: u.keyframe, data: Bytes::from(d) }
            })
            .collect()
    }

    /// Bytes of frame `i` (clip frames loop).
    pub fn frame(&self, i: u64) -> &AccessUnit {
        &self.frames[(i % self.frames.len() as u64) as usize]
    }
}

/// An SEI NAL unit (user data unregistered) of about `n` bytes of noise
/// with no zero byte, so no start code can appear in it.
fn filler_sei(codec: Codec, n: usize, seed: &mut u64) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 1];
    match codec {
        Codec::H264 => v.push(0x06),
        Codec::H265 => v.extend_from_slice(&[0x4e, 0x01]), // prefix SEI
    }
    v.push(0x05); // payload type 5
    let size = n.saturating_sub(v.len() + 8).max(16);
    v.extend(std::iter::repeat_n(0xff, size / 255));
    v.push((size % 255) as u8);
    for _ in 0..size {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.push((*seed as u8).max(2));
    }
    v.push(0x80); // rbsp trailing bits
    v
}

/// A clip by codec and size class (main = 2592×1944, extra = 640×360).
pub fn clip(codec: Codec, main: bool) -> &'static Clip {
    static CLIPS: OnceLock<[Clip; 4]> = OnceLock::new();
    let all = CLIPS.get_or_init(|| {
        [
            Clip::load(H264_2592X1944, Codec::H264, 2592, 1944),
            Clip::load(H264_640X360, Codec::H264, 640, 360),
            Clip::load(H265_2592X1944, Codec::H265, 2592, 1944),
            Clip::load(H265_640X360, Codec::H265, 640, 360),
        ]
    });
    match (codec, main) {
        (Codec::H264, true) => &all[0],
        (Codec::H264, false) => &all[1],
        (Codec::H265, true) => &all[2],
        (Codec::H265, false) => &all[3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_clips_split_into_their_frames() {
        // make-fixtures.sh: 3 s at 25 fps (640x360), 2 s (2592x1944), GOP 25.
        for (codec, main, frames) in
            [(Codec::H264, false, 75), (Codec::H265, false, 75), (Codec::H264, true, 50), (Codec::H265, true, 50)]
        {
            let c = clip(codec, main);
            assert_eq!(c.frames.len(), frames, "{codec:?} main={main}");
            assert_eq!(c.gop, 25, "{codec:?} main={main}");
            assert!(c.frames[0].keyframe);
            assert!(!c.frames[1].keyframe);
            let total: usize = c.frames.iter().map(|f| f.data.len()).sum();
            let src = match (codec, main) {
                (Codec::H264, true) => H264_2592X1944.len(),
                (Codec::H264, false) => H264_640X360.len(),
                (Codec::H265, true) => H265_2592X1944.len(),
                (Codec::H265, false) => H265_640X360.len(),
            };
            assert_eq!(total, src, "no byte lost or duplicated");
        }
    }

    #[test]
    fn snapshot_is_jfif() {
        assert!(SNAPSHOT_JPEG.starts_with(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert_eq!(TONE_ALAW.len(), 16000);
    }
}

#[cfg(test)]
mod padding_tests {
    use super::*;

    #[test]
    fn padding_reaches_the_bitrate_and_keeps_the_pictures() {
        for (codec, main) in [(Codec::H264, true), (Codec::H264, false), (Codec::H265, true), (Codec::H265, false)] {
            let c = clip(codec, main);
            let p = c.padded(2_000_000);
            let bits: usize = p.iter().map(|u| u.data.len() * 8).sum();
            let rate = bits as f64 / (p.len() as f64 / c.fps as f64);
            assert!((rate - 2e6).abs() < 2e6 * 0.02, "{codec:?} {main}: {rate} bit/s");
            let mc = if codec == Codec::H265 { ivr_media::Codec::H265 } else { ivr_media::Codec::H264 };
            for (a, b) in c.frames.iter().zip(&p) {
                assert_eq!(a.keyframe, b.keyframe);
                assert_eq!(ivr_media::annexb::is_keyframe(mc, &b.data), a.keyframe);
                // Same access units when split again: the SEI stays inside.
                assert_eq!(ivr_media::annexb::access_units(&b.data, mc).len(), 1);
            }
        }
    }
}
