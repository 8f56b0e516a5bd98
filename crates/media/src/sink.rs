//! A live container writer: frames in, bytes out as they can be written —
//! TS and FLV per frame, fragmented MP4 per GOP (the init segment before
//! the first fragment). Frames before the first keyframe are dropped (and
//! counted): nothing can decode them.
//!
//! Audio: the sink carries it when the caller names the codec
//! (`with_audio`) or, for a live source, when an audio frame arrives within
//! half a second after the first keyframe (the sink holds that half second
//! back once, to look). FLV carries G.711 and AAC, MPEG-TS and MP4 carry
//! AAC; audio a container cannot carry is counted in `audio_left_out`.

use crate::{flv, fmp4, ts, Codec, Frame};
use bytes::Bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ts,
    Mp4,
    Flv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "ts" | "mpegts" => Some(Format::Ts),
            "mp4" | "fmp4" => Some(Format::Mp4),
            "flv" => Some(Format::Flv),
            _ => None,
        }
    }

    /// Whether this container carries `audio`.
    pub fn carries(self, audio: Codec) -> bool {
        match self {
            Format::Ts => audio == Codec::Aac,
            Format::Flv => matches!(audio, Codec::Aac | Codec::G711A | Codec::G711U),
            Format::Mp4 => audio == Codec::Aac,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Ts(#[from] ts::TsError),
    #[error(transparent)]
    Mp4(#[from] fmp4::Mp4Error),
    #[error(transparent)]
    Flv(#[from] flv::FlvError),
    #[error("the stream changed codec from {0:?} to {1:?}")]
    Codec(Codec, Codec),
}

/// How long after the first keyframe a live sink looks for audio (90 kHz).
const PROBE: u64 = 45_000;

enum Mux {
    None,
    Ts(ts::Muxer),
    /// The fragmenter once the init segment is out, the open GOP, and the
    /// audio waiting for the fragment it falls in.
    Mp4(Option<fmp4::Fragmenter>, Vec<Frame>, Vec<Frame>),
    Flv(flv::Writer),
}

pub struct Sink {
    format: Format,
    fps: u32,
    video: Option<Codec>,
    /// `None` while still looking; `Some(None)`: no audio.
    audio: Option<Option<Codec>>,
    held: Vec<Frame>,
    mux: Mux,
    /// MP4 starts its timeline at 0 (no edit list to skip a late start).
    mp4_t0: Option<u64>,
    /// MP4: the init segment kept apart (HLS) instead of written first.
    init_apart: bool,
    init: Option<Vec<u8>>,
    pub dropped_before_keyframe: u64,
    pub frames: u64,
    pub audio_frames: u64,
    pub audio_left_out: u64,
}

impl Sink {
    pub fn new(format: Format, fps: u32) -> Sink {
        Sink {
            format,
            fps,
            video: None,
            audio: None,
            held: Vec::new(),
            mux: Mux::None,
            mp4_t0: None,
            init_apart: false,
            init: None,
            dropped_before_keyframe: 0,
            frames: 0,
            audio_frames: 0,
            audio_left_out: 0,
        }
    }

    /// Declares the audio (or its absence) instead of looking for it.
    pub fn with_audio(mut self, audio: Option<Codec>) -> Sink {
        self.audio = Some(audio.filter(|a| self.format.carries(*a)));
        self
    }

    /// MP4: keep the init segment apart (`take_init`) rather than writing
    /// it before the first fragment (HLS names it in `EXT-X-MAP`).
    pub fn init_apart(mut self) -> Sink {
        self.init_apart = true;
        self
    }

    /// The init segment, once, when it was kept apart.
    pub fn take_init(&mut self) -> Option<Vec<u8>> {
        self.init.take()
    }

    /// MP4: writes the GOP held so far as a fragment now, ending at
    /// `next_dts` (the caller's timeline) — where an HLS segment ends.
    pub fn cut(&mut self, next_dts: u64, out: &mut Vec<u8>) -> Result<(), SinkError> {
        let next = next_dts.saturating_sub(self.mp4_t0.unwrap_or(0));
        self.flush_gop(Some(next), out)
    }

    /// MP4: a copy of this sink that goes on exactly as this one would,
    /// so that an assembly can later resume here and write the same bytes
    /// (a playback MP4 answering a Range from the middle). Only where
    /// nothing of a GOP is open (after `cut`, or before the first frame);
    /// the frames still held (audio of the next fragment's time) are
    /// copied out of the buffers they came from, so a checkpoint does not
    /// keep a whole segment alive. `None` for other formats or mid-GOP.
    pub fn checkpoint(&self) -> Option<Sink> {
        if self.format != Format::Mp4 {
            return None;
        }
        let own = |fs: &[Frame]| -> Vec<Frame> {
            fs.iter().map(|f| Frame { data: Bytes::copy_from_slice(&f.data), ..f.clone() }).collect()
        };
        let mux = match &self.mux {
            Mux::None => Mux::None,
            Mux::Mp4(frag, gop, audio) if gop.is_empty() => Mux::Mp4(frag.clone(), Vec::new(), own(audio)),
            _ => return None,
        };
        Some(Sink {
            format: self.format,
            fps: self.fps,
            video: self.video,
            audio: self.audio,
            held: own(&self.held),
            mux,
            mp4_t0: self.mp4_t0,
            init_apart: self.init_apart,
            init: self.init.clone(),
            dropped_before_keyframe: self.dropped_before_keyframe,
            frames: self.frames,
            audio_frames: self.audio_frames,
            audio_left_out: self.audio_left_out,
        })
    }

    /// Takes one frame; appends what can be written now to `out`.
    pub fn push(&mut self, f: Frame, out: &mut Vec<u8>) -> Result<(), SinkError> {
        if !f.codec.is_video() {
            if self.video.is_none() {
                return Ok(()); // audio before any picture: nothing to align it to
            }
            if self.audio.is_none() {
                let a = Some(f.codec).filter(|a| self.format.carries(*a));
                self.audio = Some(a);
            }
        } else {
            match self.video {
                None if !f.keyframe => {
                    self.dropped_before_keyframe += 1;
                    return Ok(());
                }
                None => self.video = Some(f.codec),
                Some(c) if c != f.codec => return Err(SinkError::Codec(c, f.codec)),
                _ => {}
            }
            if self.audio.is_none() && self.held.first().is_some_and(|k| f.dts.saturating_sub(k.dts) >= PROBE) {
                self.audio = Some(None);
            }
        }
        if self.audio.is_none() {
            self.held.push(f);
            return Ok(());
        }
        for h in std::mem::take(&mut self.held) {
            self.write(h, out)?;
        }
        self.write(f, out)
    }

    fn write(&mut self, mut f: Frame, out: &mut Vec<u8>) -> Result<(), SinkError> {
        let audio = self.audio.flatten();
        if self.format == Format::Mp4 {
            let t0 = *self.mp4_t0.get_or_insert(f.dts.min(f.pts));
            f.dts = f.dts.saturating_sub(t0);
            f.pts = f.pts.saturating_sub(t0);
        }
        if !f.codec.is_video() {
            if Some(f.codec) != audio {
                self.audio_left_out += 1;
                return Ok(());
            }
            self.audio_frames += 1;
        } else {
            self.frames += 1;
        }
        if matches!(self.mux, Mux::None) {
            self.mux = match self.format {
                Format::Ts => Mux::Ts(match audio {
                    Some(a) => ts::Muxer::with_audio(f.codec, a)?,
                    None => ts::Muxer::new(f.codec)?,
                }),
                Format::Mp4 => Mux::Mp4(None, Vec::new(), Vec::new()),
                Format::Flv => Mux::Flv(flv::Writer::new(&f, audio, self.fps, out)?),
            };
        }
        match &mut self.mux {
            Mux::Ts(m) => m.write(&f, out)?,
            Mux::Flv(w) => {
                w.write(&f, out)?;
            }
            Mux::Mp4(frag, gop, audio) => {
                if !f.codec.is_video() {
                    if frag.as_ref().is_some_and(|fr| !fr.audio) {
                        // The init segment went out before any audio came.
                        self.audio_frames -= 1;
                        self.audio_left_out += 1;
                    } else {
                        audio.push(f);
                    }
                    return Ok(());
                }
                if f.keyframe && !gop.is_empty() {
                    self.flush_gop(Some(f.dts), out)?;
                }
                if let Mux::Mp4(_, gop, _) = &mut self.mux {
                    gop.push(f);
                }
            }
            Mux::None => {}
        }
        Ok(())
    }

    fn flush_gop(&mut self, next: Option<u64>, out: &mut Vec<u8>) -> Result<(), SinkError> {
        let fps = self.fps;
        let Mux::Mp4(frag, gop, audio) = &mut self.mux else { return Ok(()) };
        if gop.is_empty() {
            return Ok(());
        }
        let codec = gop[0].codec;
        if frag.is_none() {
            let (sps, params) = fmp4::describe(codec, gop)?;
            let adts = audio.first().and_then(|a| crate::audio::parse_adts(&a.data));
            if adts.is_none() && !audio.is_empty() {
                self.audio_frames -= audio.len() as u64;
                self.audio_left_out += audio.len() as u64;
                audio.clear();
            }
            let init = fmp4::init_segment_av(&sps, &params, adts.as_ref())?;
            if self.init_apart {
                self.init = Some(init);
            } else {
                out.extend_from_slice(&init);
            }
            let mut fr = fmp4::Fragmenter::new(codec, fps);
            fr.audio = adts.is_some();
            *frag = Some(fr);
        }
        // The audio of this GOP's time goes in with it.
        let n = next.map_or(audio.len(), |t| audio.iter().take_while(|a| a.dts < t).count());
        let these: Vec<Frame> = audio.drain(..n).collect();
        let gop = std::mem::take(gop);
        if let Some(fr) = frag {
            fr.fragment_av_into(&gop, next, &these, out);
        }
        Ok(())
    }

    /// Writes what is still held (frames held while looking for audio,
    /// the last GOP of an MP4).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SinkError> {
        if self.audio.is_none() {
            self.audio = Some(None);
            for h in std::mem::take(&mut self.held) {
                self.write(h, out)?;
            }
        }
        self.flush_gop(None, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three "segments" of the fixture clip one after another, each
    /// starting on a keyframe, on one timeline, with AAC frames (ADTS) in
    /// between whose last ones fall after the next segment's start (as
    /// audio does at the end of a TS segment), so that a cut leaves some
    /// held.
    fn segments() -> Vec<Vec<Frame>> {
        let clip = crate::demux::from_annexb(&Bytes::from_static(ivr_sim::clips::H264_640X360), Codec::H264, 25);
        let span = clip.last().map(|f| f.dts + 3600).unwrap_or(0);
        let aac = |dts: u64| {
            let mut data = crate::audio::adts_header(&[0x12, 0x10], 12).expect("an ADTS header").to_vec();
            data.extend_from_slice(&[0x21; 12]);
            Frame { codec: Codec::Aac, keyframe: true, pts: dts, dts, data: Bytes::from(data) }
        };
        let step = 1024 * 90_000 / 44_100;
        let mut next_audio = 0;
        (0..3u64)
            .map(|k| {
                let mut seg: Vec<Frame> =
                    clip.iter().map(|f| Frame { dts: f.dts + k * span, pts: f.pts + k * span, ..f.clone() }).collect();
                while next_audio < (k + 1) * span + 4_500 {
                    seg.push(aac(next_audio));
                    next_audio += step;
                }
                seg.sort_by_key(|f| f.dts);
                seg
            })
            .collect()
    }

    /// Writes `segs[from..]`, cutting where each segment begins; answers the
    /// bytes and a checkpoint taken at every segment start after the first.
    fn run(mut sink: Sink, segs: &[Vec<Frame>], from: usize) -> (Vec<u8>, Vec<(usize, Sink)>) {
        let (mut out, mut marks) = (Vec::new(), Vec::new());
        for (i, seg) in segs.iter().enumerate().skip(from) {
            if i > from {
                let video = seg.iter().find(|f| f.codec.is_video()).expect("a picture");
                sink.cut(video.dts, &mut out).unwrap();
                marks.push((out.len(), sink.checkpoint().expect("nothing open after a cut")));
            }
            for f in seg {
                sink.push(f.clone(), &mut out).unwrap();
            }
        }
        sink.finish(&mut out).unwrap();
        (out, marks)
    }

    #[test]
    fn a_checkpoint_goes_on_with_exactly_the_bytes_of_the_whole_run() {
        let segs = segments();
        let (whole, marks) = run(Sink::new(Format::Mp4, 25).with_audio(Some(Codec::Aac)), &segs, 0);
        assert!(marks.iter().all(|(_, m)| matches!(&m.mux, Mux::Mp4(_, _, held) if !held.is_empty())));
        assert_eq!(marks.len(), 2);
        for (k, (at, m)) in marks.into_iter().enumerate() {
            // Resumed where the mark was taken: after the cut, before the
            // segment's frames.
            let (rest, _) = run(m, &segs, k + 1);
            assert_eq!(&whole[at..], &rest[..], "resumed at segment {}", k + 1);
        }
        // Mid-GOP there is no checkpoint.
        let mut s = Sink::new(Format::Mp4, 25).with_audio(None);
        s.push(segs[0][0].clone(), &mut Vec::new()).unwrap();
        assert!(s.checkpoint().is_none());
        assert!(Sink::new(Format::Ts, 25).checkpoint().is_none());
    }
}
