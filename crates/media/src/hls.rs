//! HTTP Live Streaming (RFC 8216): media playlists for a live window
//! (the last N segments, `EXT-X-MEDIA-SEQUENCE` counting up, old segment
//! files deleted) and for a recorded time range (`EXT-X-PLAYLIST-TYPE:VOD`,
//! `EXT-X-ENDLIST`), with MPEG-TS segments or fragmented MP4 ones
//! (`EXT-X-MAP` naming the init segment, version 7).
//!
//! `Writer` cuts frames into segments at keyframes once a segment is
//! `target` seconds long and says what to write or delete; it does no I/O
//! itself (`apply` does it in a directory, the playlist last and by
//! rename, so a player never reads a playlist naming a missing file).

use crate::sink::{Format, Sink, SinkError};
use crate::{Codec, Frame};
use std::fmt::Write as _;
use std::path::Path;

/// One segment as a playlist lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Wall-clock start (Unix ms), for `EXT-X-PROGRAM-DATE-TIME`.
    pub start_ms: Option<i64>,
    /// Starts after a gap (`EXT-X-DISCONTINUITY`).
    pub discontinuity: bool,
}

/// A media playlist.
#[derive(Clone, Debug, PartialEq)]
pub struct Playlist {
    /// `Some(uri)` for fragmented MP4 segments.
    pub init: Option<String>,
    pub media_sequence: u64,
    pub entries: Vec<Entry>,
    /// A finished recording (`VOD` + `ENDLIST`) rather than a live window.
    pub ended: bool,
}

fn rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

impl Playlist {
    /// The playlist text.
    pub fn render(&self) -> String {
        let target = self.entries.iter().map(|e| e.duration.round() as u64).max().unwrap_or(1).max(1);
        let mut s = String::with_capacity(128 + 64 * self.entries.len());
        let version = if self.init.is_some() { 7 } else { 3 };
        let _ = write!(s, "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-TARGETDURATION:{target}\n");
        let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:{}", self.media_sequence);
        if self.ended {
            s.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
        }
        if self.init.is_some() {
            s.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        }
        if let Some(init) = &self.init {
            let _ = writeln!(s, "#EXT-X-MAP:URI=\"{init}\"");
        }
        for e in &self.entries {
            if e.discontinuity {
                s.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if let Some(ms) = e.start_ms {
                let _ = writeln!(s, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(ms));
            }
            let _ = write!(s, "#EXTINF:{:.3},\n{}\n", e.duration, e.uri);
        }
        if self.ended {
            s.push_str("#EXT-X-ENDLIST\n");
        }
        s
    }

    /// A recorded range: the entries that overlap `[from_ms, to_ms)` of a
    /// recording's segments (each with its `start_ms`), as a finished
    /// playlist. A gap between segments is marked as a discontinuity.
    pub fn range(init: Option<String>, all: &[Entry], from_ms: i64, to_ms: i64) -> Playlist {
        let mut entries: Vec<Entry> = all
            .iter()
            .filter(|e| {
                let s = e.start_ms.unwrap_or(0);
                s < to_ms && s + (e.duration * 1000.0) as i64 > from_ms
            })
            .cloned()
            .collect();
        for i in 0..entries.len() {
            let gap = i > 0 && {
                let p = &entries[i - 1];
                let end = p.start_ms.unwrap_or(0) + (p.duration * 1000.0).round() as i64;
                (entries[i].start_ms.unwrap_or(0) - end).abs() > 500
            };
            entries[i].discontinuity = gap;
        }
        Playlist { init, media_sequence: 0, entries, ended: true }
    }
}

/// What to do in the output directory.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    File(String, Vec<u8>),
    Delete(String),
    Playlist(String),
}

/// Cuts frames into HLS segments.
pub struct Writer {
    format: Format,
    fps: u32,
    audio: Option<Codec>,
    target: u64,
    window: Option<usize>,
    prefix: String,
    playlist: Playlist,
    seq: u64,
    /// The open segment: its first DTS, bytes so far, the TS sink.
    open: Option<(u64, Vec<u8>, Option<Sink>)>,
    /// The wall clock given for the next keyframe, and the one the open
    /// segment started at.
    wall: Option<i64>,
    open_wall: Option<i64>,
    /// fMP4 segments: one sink across them (the init segment kept apart).
    mp4: Option<Sink>,
    last_dts: u64,
    start_ms: Option<i64>,
    pub dropped_before_keyframe: u64,
}

impl Writer {
    /// `format`: TS or MP4 (fragmented) segments. `target`: seconds a
    /// segment lasts at least (cut at the next keyframe). `window`: the
    /// live playlist keeps this many segments (older files are deleted);
    /// `None` keeps everything and `finish` ends the playlist (VOD).
    pub fn new(format: Format, fps: u32, target: f64, window: Option<usize>, prefix: &str) -> Writer {
        let init = (format == Format::Mp4).then(|| format!("{prefix}init.mp4"));
        Writer {
            format,
            fps,
            audio: None,
            target: (target.max(0.1) * 90_000.0) as u64,
            window: window.map(|w| w.max(1)),
            prefix: prefix.to_owned(),
            playlist: Playlist { init, media_sequence: 0, entries: Vec::new(), ended: false },
            seq: 0,
            open: None,
            mp4: None,
            last_dts: 0,
            start_ms: None,
            wall: None,
            open_wall: None,
            dropped_before_keyframe: 0,
        }
    }

    /// Audio carried in the segments (AAC).
    pub fn with_audio(mut self, audio: Option<Codec>) -> Writer {
        self.audio = audio.filter(|a| self.format.carries(*a));
        self
    }

    /// The wall clock (Unix ms) of the first frame, for
    /// `EXT-X-PROGRAM-DATE-TIME`.
    pub fn with_start_ms(mut self, ms: i64) -> Writer {
        self.start_ms = Some(ms);
        self
    }

    /// Whether audio goes into the segments.
    pub fn with_audio_carried(&self) -> bool {
        self.audio.is_some()
    }

    /// The wall clock (Unix ms) of the next frame pushed, as the source
    /// knows it (a recording's device time). A segment starting there is
    /// stamped with it; one that does not follow on from the previous
    /// segment (a gap between recordings) is marked as a discontinuity.
    pub fn set_wall_clock(&mut self, ms: i64) {
        self.wall = Some(ms);
    }

    pub fn playlist(&self) -> &Playlist {
        &self.playlist
    }

    fn ext(&self) -> &'static str {
        if self.format == Format::Mp4 {
            "m4s"
        } else {
            "ts"
        }
    }

    pub fn push(&mut self, f: Frame) -> Result<Vec<Output>, SinkError> {
        let mut out = Vec::new();
        if f.codec.is_video() {
            if self.open.is_none() && !f.keyframe {
                self.dropped_before_keyframe += 1;
                return Ok(out);
            }
            if f.keyframe && self.open.as_ref().is_some_and(|(t0, _, _)| f.dts.saturating_sub(*t0) >= self.target) {
                self.close(f.dts, false, &mut out)?;
            }
            if self.open.is_none() {
                self.open_wall = self.wall.take();
                let sink = (self.format == Format::Ts).then(|| Sink::new(Format::Ts, self.fps).with_audio(self.audio));
                self.open = Some((f.dts, Vec::new(), sink));
            }
            self.last_dts = self.last_dts.max(f.dts);
        } else if self.open.is_none() {
            return Ok(out);
        }
        let Some((_, buf, sink)) = &mut self.open else { return Ok(out) };
        match sink {
            Some(s) => s.push(f, buf)?,
            None => {
                let (fps, audio) = (self.fps, self.audio);
                let m = self.mp4.get_or_insert_with(|| Sink::new(Format::Mp4, fps).with_audio(audio).init_apart());
                m.push(f, buf)?;
                if let Some(init) = m.take_init() {
                    out.push(Output::File(self.playlist.init.clone().unwrap_or_default(), init));
                }
            }
        }
        Ok(out)
    }

    /// Closes the open segment at `end` (90 kHz); the `last` one takes
    /// whatever the fMP4 sink still holds (audio after the last picture).
    fn close(&mut self, end: u64, last: bool, out: &mut Vec<Output>) -> Result<(), SinkError> {
        let Some((t0, mut buf, sink)) = self.open.take() else { return Ok(()) };
        if let Some(mut s) = sink {
            s.finish(&mut buf)?;
        } else if let Some(m) = &mut self.mp4 {
            if last {
                m.finish(&mut buf)?;
            } else {
                m.cut(end, &mut buf)?;
            }
            if let Some(init) = m.take_init() {
                out.push(Output::File(self.playlist.init.clone().unwrap_or_default(), init));
            }
        }
        let uri = format!("{}{}.{}", self.prefix, self.seq, self.ext());
        self.seq += 1;
        out.push(Output::File(uri.clone(), buf));
        let follows =
            self.playlist.entries.last().and_then(|e| Some(e.start_ms? + (e.duration * 1000.0).round() as i64));
        let computed = follows.or(self.start_ms);
        let start_ms = self.open_wall.take().or(computed);
        let discontinuity = matches!((start_ms, follows), (Some(s), Some(f)) if (s - f).abs() > 1000);
        self.playlist.entries.push(Entry {
            uri,
            duration: end.saturating_sub(t0) as f64 / 90_000.0,
            start_ms,
            discontinuity,
        });
        if let Some(w) = self.window {
            while self.playlist.entries.len() > w {
                let old = self.playlist.entries.remove(0);
                self.playlist.media_sequence += 1;
                out.push(Output::Delete(old.uri));
            }
        }
        out.push(Output::Playlist(self.playlist.render()));
        Ok(())
    }

    /// Closes the last segment; a playlist without a live window is ended.
    pub fn finish(&mut self) -> Result<Vec<Output>, SinkError> {
        let mut out = Vec::new();
        let end = self.last_dts.saturating_add(crate::ticks(1, self.fps));
        if self.window.is_none() {
            self.playlist.ended = true;
        }
        if self.open.is_some() {
            self.close(end, true, &mut out)?;
        } else {
            out.push(Output::Playlist(self.playlist.render()));
        }
        Ok(out)
    }
}

/// Carries out `outputs` in `dir`; the playlist is written to
/// `playlist_name` through a temporary file and a rename.
pub fn apply(dir: &Path, playlist_name: &str, outputs: Vec<Output>) -> std::io::Result<()> {
    for o in outputs {
        match o {
            Output::File(name, data) => std::fs::write(dir.join(name), data)?,
            Output::Delete(name) => match std::fs::remove_file(dir.join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Output::Playlist(text) => {
                let tmp = dir.join(format!(".{playlist_name}.tmp"));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, dir.join(playlist_name))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_jump_in_the_source_clock_is_a_discontinuity() {
        use bytes::Bytes;
        // 1 s GOPs of a fake H.264 stream; the source's clock jumps 10 min
        // ahead at the third keyframe (the next recording file).
        let mut w = Writer::new(Format::Ts, 25, 1.0, None, "s");
        for i in 0..100u64 {
            let key = i % 25 == 0;
            if key {
                let jump = if i >= 50 { 600_000 } else { 0 };
                w.set_wall_clock(1_000_000 + i as i64 * 40 + jump);
            }
            let nal: &[u8] = if key { &[0, 0, 0, 1, 0x65, 0x88, 1] } else { &[0, 0, 0, 1, 0x41, 0x9a, 1] };
            let f = Frame {
                codec: Codec::H264,
                keyframe: key,
                pts: 90_000 + i * 3600,
                dts: 90_000 + i * 3600,
                data: Bytes::from_static(nal),
            };
            w.push(f).unwrap();
        }
        w.finish().unwrap();
        let e = &w.playlist().entries;
        assert_eq!(
            e.iter().map(|x| x.start_ms).collect::<Vec<_>>(),
            [Some(1_000_000), Some(1_001_000), Some(1_602_000), Some(1_603_000)]
        );
        assert_eq!(e.iter().map(|x| x.discontinuity).collect::<Vec<_>>(), [false, false, true, false]);
    }

    #[test]
    fn a_range_takes_the_overlapping_segments_and_marks_gaps() {
        let e =
            |uri: &str, s: i64, d: f64| Entry { uri: uri.into(), duration: d, start_ms: Some(s), discontinuity: false };
        let all = [e("a", 0, 2.0), e("b", 2000, 2.0), e("c", 10_000, 2.0), e("d", 12_000, 2.0)];
        let p = Playlist::range(None, &all, 3000, 11_000);
        assert_eq!(p.entries.iter().map(|x| x.uri.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert!(!p.entries[0].discontinuity && p.entries[1].discontinuity);
        let text = p.render();
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.ends_with("#EXT-X-ENDLIST\n"));
        assert!(text
            .contains("#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:10.000Z\n#EXTINF:2.000,\nc\n"));
    }
}
