//! `ivr media …`: media files.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use ivr_media::demux::{self, Input};
use ivr_media::hls;
use ivr_media::sink::{Format, Sink};
use ivr_media::Codec;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum MediaCmd {
    /// What a media file holds, read by ivr's own readers: container,
    /// video codec with its RFC 6381 string, size, frames, keyframes and
    /// GOP, duration, bitrate, audio; what a reader left out.
    Info {
        /// The file to read (TS, FLV, MP4, raw H.264/H.265 or captured DVRIP media).
        input: PathBuf,
        /// Frame rate of a raw stream (it carries no timestamps).
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=240))]
        fps: u32,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rewrap without re-encoding. Input (told by its first bytes, then
    /// its name): raw H.264/H.265 (`.h264`, `.h265`, …), MPEG-TS, FLV
    /// (incl. Enhanced RTMP and codec-12 HEVC), MP4 (plain or
    /// fragmented), or a captured DVRIP stream (`ivr dvrip download`,
    /// XMeye `.h264` files). Output by extension: `.ts`, `.mp4`
    /// (fragmented), `.flv`, `.m3u8` (HLS, segments beside it),
    /// `.h264`/`.h265` (raw video).
    Remux {
        /// The file to read (as `info` reads).
        input: PathBuf,
        /// Where to write; the container follows the extension (.ts, .mp4, .flv, .m3u8, .h264/.h265).
        output: PathBuf,
        /// Frame rate of a raw stream (it carries no timestamps).
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=240))]
        fps: u32,
        /// HLS: seconds a segment lasts at least (cut at the next keyframe).
        #[arg(long, default_value_t = 4.0)]
        segment: f64,
        /// HLS: segment container, ts or mp4 (fragmented, with an init segment).
        #[arg(long, default_value = "ts")]
        segment_format: String,
        /// What was written, as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: MediaCmd) -> anyhow::Result<()> {
    match cmd {
        MediaCmd::Info { input, fps, json } => info(&input, fps, json),
        MediaCmd::Remux { input, output, fps, segment, segment_format, json } => {
            remux(&input, &output, fps, segment, &segment_format, json)
        }
    }
}

/// Any input ivr reads: captured DVRIP media (told by its first bytes),
/// else what `Input::detect` recognises.
fn read_input(input: &Path, data: &Bytes, fps: u32) -> anyhow::Result<(&'static str, demux::Demuxed)> {
    let head = &data[..data.len().min(512)];
    if ivr_edge::dvrip::is_capture(head) {
        let d = ivr_edge::dvrip::read_capture(data).with_context(|| format!("reading {}", input.display()))?;
        return Ok(("DVRIP media", d));
    }
    let kind = Input::detect(input, head).with_context(|| {
        format!("{}: not a format ivr reads (raw H.264/H.265, MPEG-TS, FLV, MP4, DVRIP media)", input.display())
    })?;
    Ok((kind.name(), demux::read(kind, data, fps).with_context(|| format!("reading {}", input.display()))?))
}

fn remux(input: &Path, output: &Path, fps: u32, segment: f64, seg_format: &str, json: bool) -> anyhow::Result<()> {
    let data = Bytes::from(std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?);
    let (kind, mut d) = read_input(input, &data, fps)?;
    d.rebase(90_000);
    for s in &d.skipped {
        eprintln!("{}: left out: {s}", input.display());
    }
    let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let video = d.video_codec().unwrap_or(Codec::H264);
    let audio = d.audio_codec();
    if d.frames.iter().find(|f| f.codec.is_video()).is_some_and(|f| !f.keyframe) {
        eprintln!(
            "warning: {} does not start with a keyframe; what comes before the first one is left out",
            input.display()
        );
    }
    let (bytes_out, frames, audio_frames, audio_left) = match ext.as_str() {
        "m3u8" => {
            if !(0.5..=60.0).contains(&segment) {
                bail!("--segment {segment}: expected 0.5 to 60 seconds");
            }
            let sf = match Format::parse(seg_format) {
                Some(f @ (Format::Ts | Format::Mp4)) => f,
                _ => bail!("--segment-format {seg_format:?}: expected ts or mp4"),
            };
            let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let name = output.file_name().and_then(|n| n.to_str()).context("the playlist needs a file name")?;
            let stem = output.file_stem().and_then(|n| n.to_str()).unwrap_or("stream");
            let mut w = hls::Writer::new(sf, fps, segment, None, &format!("{stem}_")).with_audio(audio);
            let (mut bytes, mut n, mut na) = (0usize, 0u64, 0u64);
            let mut outs = Vec::new();
            for f in d.frames {
                if f.codec.is_video() {
                    n += 1
                } else {
                    na += 1
                }
                outs.extend(w.push(f)?);
            }
            outs.extend(w.finish()?);
            for o in &outs {
                if let hls::Output::File(_, b) = o {
                    bytes += b.len();
                }
            }
            hls::apply(dir, name, outs).with_context(|| format!("writing HLS into {}", dir.display()))?;
            let left = if w.with_audio_carried() { 0 } else { na };
            (bytes, n - w.dropped_before_keyframe, na - left, left)
        }
        "h264" | "264" | "h265" | "265" | "hevc" => {
            let mut out = Vec::with_capacity(data.len());
            let mut n = 0;
            for f in d.frames.iter().filter(|f| f.codec.is_video()) {
                out.extend_from_slice(&f.data);
                n += 1;
            }
            let na = d.frames.len() as u64 - n;
            write_whole(output, &out)?;
            (out.len(), n, 0, na)
        }
        e => {
            let format = match e {
                "ts" | "m2ts" => Format::Ts,
                "mp4" | "m4v" => Format::Mp4,
                "flv" => Format::Flv,
                _ => bail!("{}: write .ts, .mp4, .flv, .m3u8 or .h264/.h265", output.display()),
            };
            let mut sink = Sink::new(format, fps).with_audio(audio);
            let mut out = Vec::with_capacity(data.len() + data.len() / 20);
            for f in d.frames {
                sink.push(f, &mut out)?;
            }
            sink.finish(&mut out)?;
            write_whole(output, &out)?;
            (out.len(), sink.frames, sink.audio_frames, sink.audio_left_out)
        }
    };
    if audio_left > 0 {
        eprintln!(
            "{}: {audio_left} {:?} audio frame(s) left out: {} does not carry {:?} (see docs/media.md)",
            output.display(),
            audio.unwrap_or(Codec::Aac),
            ext,
            audio.unwrap_or(Codec::Aac)
        );
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"input": kind, "video": format!("{video:?}"), "frames": frames, "audio_frames": audio_frames,
                "audio_left_out": audio_left, "bytes_in": data.len(), "bytes_out": bytes_out, "output": output.display().to_string(),
                "skipped": d.skipped})
        );
    } else {
        println!(
            "{}: {frames} {video:?} frames, {audio_frames} audio frames from {} ({}), {bytes_out} bytes",
            output.display(),
            input.display(),
            kind
        );
    }
    Ok(())
}

fn info(input: &Path, fps: u32, json: bool) -> anyhow::Result<()> {
    let data = Bytes::from(std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?);
    let (kind, d) = read_input(input, &data, fps)?;
    let video: Vec<&ivr_media::Frame> = d.frames.iter().filter(|f| f.codec.is_video()).collect();
    let codec = d.video_codec().unwrap_or(Codec::H264);
    let sps = video.iter().find(|f| f.keyframe).and_then(|f| ivr_media::params::find_sps(codec, &f.data).ok());
    let keys: Vec<usize> = video.iter().enumerate().filter(|(_, f)| f.keyframe).map(|(i, _)| i).collect();
    let gop =
        if keys.len() > 1 { Some((keys[keys.len() - 1] - keys[0]) as f64 / (keys.len() - 1) as f64) } else { None };
    let span = |fs: &[&ivr_media::Frame]| -> f64 {
        let (Some(a), Some(b)) = (fs.iter().map(|f| f.pts).min(), fs.iter().map(|f| f.pts).max()) else { return 0.0 };
        let step = if fs.len() > 1 { (b - a) as f64 / (fs.len() - 1) as f64 } else { 0.0 };
        (b - a) as f64 / 90_000.0 + step / 90_000.0
    };
    let duration = span(&video);
    let vbytes: usize = video.iter().map(|f| f.data.len()).sum();
    let audio: Vec<&ivr_media::Frame> = d.frames.iter().filter(|f| !f.codec.is_video()).collect();
    let v = serde_json::json!({
        "input": input.display().to_string(),
        "container": kind,
        "video": {
            "codec": format!("{codec:?}"),
            "codec_string": sps.as_ref().map(|s| s.codec_string()),
            "width": sps.as_ref().map(|s| s.width),
            "height": sps.as_ref().map(|s| s.height),
            "frames": video.len(),
            "keyframes": keys.len(),
            "gop": gop,
            "duration_s": duration,
            "fps": if duration > 0.0 { Some(video.len() as f64 / duration) } else { None },
            "bitrate": if duration > 0.0 { Some((vbytes as f64 * 8.0 / duration) as u64) } else { None },
        },
        "audio": d.audio_codec().map(|c| serde_json::json!({"codec": format!("{c:?}"), "frames": audio.len()})),
        "skipped": d.skipped,
    });
    if json {
        println!("{v}");
        return Ok(());
    }
    let vv = &v["video"];
    println!("{}: {}", input.display(), kind);
    println!(
        "video: {codec:?} {} {}x{}, {} frames ({} keyframes{}), {:.2} s, {:.2} fps, {:.0} kbit/s",
        vv["codec_string"].as_str().unwrap_or("?"),
        vv["width"],
        vv["height"],
        video.len(),
        keys.len(),
        gop.map(|g| format!(", a keyframe every {g:.0}")).unwrap_or_default(),
        duration,
        vv["fps"].as_f64().unwrap_or(0.0),
        vv["bitrate"].as_f64().unwrap_or(0.0) / 1000.0
    );
    if let Some(c) = d.audio_codec() {
        println!("audio: {c:?}, {} frames", audio.len());
    }
    for s in &d.skipped {
        println!("left out: {s}");
    }
    Ok(())
}

/// Written whole or not at all.
fn write_whole(output: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))
}
