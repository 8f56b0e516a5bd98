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

    /// Bytes of frame `i` (clip frames loop).
    pub fn frame(&self, i: u64) -> &AccessUnit {
        &self.frames[(i % self.frames.len() as u64) as usize]
    }
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
