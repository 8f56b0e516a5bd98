//! ivr's media engine: the `Frame` every source and sink shares, Annex B
//! and parameter sets, readers (TS, FLV, MP4, raw) and writers (TS,
//! fragmented MP4, FLV, HLS), RTP in, the RTMP publisher, the fan-out hub
//! and the cloud-record segmenter. It knows no device protocol
//! (docs/media.md).
//!
//! Each module is a public namespace on purpose (a container format, a
//! protocol, a stage of the pipeline: `ivr_media::fmp4::…`,
//! `ivr_media::ts::…`), as the cloud, the edge and the tools each use a few
//! of them; the shared types are re-exported here.

pub mod annexb;
pub mod audio;
pub mod demux;
pub mod flv;
pub mod fmp4;
pub mod hls;
pub mod hub;
pub mod ingest;
pub mod params;
pub mod rtmp;
pub mod rtp;
pub mod segment;
pub mod sink;
pub mod ts;

use bytes::Bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    H265,
    G711A,
    G711U,
    Aac,
}

impl Codec {
    pub fn is_video(self) -> bool {
        matches!(self, Codec::H264 | Codec::H265)
    }
}

/// One access unit (video: Annex B with start codes) with 90 kHz times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub codec: Codec,
    pub keyframe: bool,
    /// Presentation and decoding time, 90 kHz. Cameras send no B-frames,
    /// so the two are equal for every source ivr has today.
    pub pts: u64,
    pub dts: u64,
    pub data: Bytes,
}

/// 90 kHz ticks of frame `index` at `fps` frames per second.
pub fn ticks(index: u64, fps: u32) -> u64 {
    index * 90_000 / fps.max(1) as u64
}
