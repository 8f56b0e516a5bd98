//! A live container writer: frames in, bytes out as they can be written —
//! TS per frame, fragmented MP4 per GOP (the init segment before the first
//! fragment). Frames before the first keyframe are dropped (and counted):
//! nothing can decode them.

use crate::{fmp4, ts, Codec, Frame};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ts,
    Mp4,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "ts" | "mpegts" => Some(Format::Ts),
            "mp4" | "fmp4" => Some(Format::Mp4),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Ts(#[from] ts::TsError),
    #[error(transparent)]
    Mp4(#[from] fmp4::Mp4Error),
    #[error("the stream changed codec from {0:?} to {1:?}")]
    Codec(Codec, Codec),
}

pub struct Sink {
    format: Format,
    codec: Option<Codec>,
    ts: Option<ts::Muxer>,
    frag: Option<fmp4::Fragmenter>,
    gop: Vec<Frame>,
    fps: u32,
    pub dropped_before_keyframe: u64,
    pub frames: u64,
}

impl Sink {
    pub fn new(format: Format, fps: u32) -> Sink {
        Sink { format, codec: None, ts: None, frag: None, gop: Vec::new(), fps, dropped_before_keyframe: 0, frames: 0 }
    }

    /// Takes one video frame; appends what can be written now to `out`.
    pub fn push(&mut self, f: Frame, out: &mut Vec<u8>) -> Result<(), SinkError> {
        match self.codec {
            None if !f.keyframe => {
                self.dropped_before_keyframe += 1;
                return Ok(());
            }
            None => self.codec = Some(f.codec),
            Some(c) if c != f.codec => return Err(SinkError::Codec(c, f.codec)),
            _ => {}
        }
        self.frames += 1;
        match self.format {
            Format::Ts => {
                let m = match &mut self.ts {
                    Some(m) => m,
                    None => self.ts.insert(ts::Muxer::new(f.codec)?),
                };
                m.write(&f, out)?;
            }
            Format::Mp4 => {
                if f.keyframe && !self.gop.is_empty() {
                    self.flush_gop(Some(f.dts), out)?;
                }
                self.gop.push(f);
            }
        }
        Ok(())
    }

    fn flush_gop(&mut self, next: Option<u64>, out: &mut Vec<u8>) -> Result<(), SinkError> {
        if self.gop.is_empty() {
            return Ok(());
        }
        let codec = self.gop[0].codec;
        if self.frag.is_none() {
            let (sps, params) = fmp4::describe(codec, &self.gop)?;
            out.extend_from_slice(&fmp4::init_segment(&sps, &params)?);
            self.frag = Some(fmp4::Fragmenter::new(codec, self.fps));
        }
        let gop = std::mem::take(&mut self.gop);
        if let Some(fr) = &mut self.frag {
            out.extend_from_slice(&fr.fragment(&gop, next));
        }
        Ok(())
    }

    /// Writes what is still held (the last GOP of an MP4).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SinkError> {
        self.flush_gop(None, out)
    }
}
