//! `ivr bench media`: remux throughput, ivr's muxers against
//! `ffmpeg -c copy` on the same input, side by side in one run.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args as ClapArgs;
use ivr_media::demux::from_annexb;
use ivr_media::sink::{Format, Sink};
use ivr_media::Codec;
use ivr_sim::clips;
use std::time::{Duration, Instant};

#[derive(ClapArgs)]
pub struct MediaBench {
    /// Times the 2592×1944 fixture is repeated to make the input.
    #[arg(long, default_value_t = 400)]
    repeat: usize,
    /// Runs of each side (the best is reported).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The ffmpeg to compare with.
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: String,
    /// Instead: this many simulated 4 Mbit/s cameras at once, in real
    /// time (DVRIP bytes → demux → hub → MPEG-TS + FLV), for CPU and
    /// memory per stream, beside ffmpeg doing the copy remux of one.
    #[arg(long)]
    streams: Option<usize>,
    /// Seconds the streams run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The results as one JSON object on stdout (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
}

fn best(runs: u32, mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Duration> {
    let mut b = Duration::MAX;
    for _ in 0..runs.max(1) {
        b = b.min(f()?);
    }
    Ok(b)
}

pub async fn run(b: MediaBench) -> anyhow::Result<()> {
    if let Some(n) = b.streams {
        return super::bench_streams::run(n.max(1), b.seconds.max(2), &b.ffmpeg, b.json).await;
    }
    let mut rows = Vec::new();
    let dir = std::env::temp_dir().join(format!("ivr-bench-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (codec, raw, name, fmt) in
        [(Codec::H264, clips::H264_2592X1944, "h264", "h264"), (Codec::H265, clips::H265_2592X1944, "h265", "hevc")]
    {
        let input = Bytes::from(raw.repeat(b.repeat));
        let path = dir.join(format!("in.{name}"));
        std::fs::write(&path, &input)?;
        let mb = input.len() as f64 / 1e6;
        for target in ["ts", "mp4", "flv"] {
            if target == "flv" && codec == Codec::H265 {
                continue; // Debian's ffmpeg 5.1 cannot write H.265 into FLV
            }
            let ours = best(b.runs, || {
                let t = Instant::now();
                let frames = from_annexb(&input, codec, 25);
                let mut out = Vec::with_capacity(input.len() + input.len() / 16);
                let format = Format::parse(target).unwrap_or(Format::Ts);
                let mut sink = Sink::new(format, 25).with_audio(None);
                for f in frames {
                    sink.push(f, &mut out)?;
                }
                sink.finish(&mut out)?;
                std::hint::black_box(&out);
                Ok(t.elapsed())
            })?;
            let out_path = dir.join(format!("out.{target}"));
            let ff = best(b.runs, || {
                let t = Instant::now();
                let mut args: Vec<String> =
                    ["-v", "error", "-y", "-r", "25", "-f", fmt, "-i"].iter().map(|s| s.to_string()).collect();
                args.push(path.display().to_string());
                args.extend(["-c", "copy"].iter().map(|s| s.to_string()));
                if target == "mp4" {
                    args.extend(
                        ["-movflags", "frag_keyframe+empty_moov+default_base_moof"].iter().map(|s| s.to_string()),
                    );
                }
                args.push(out_path.display().to_string());
                let st = std::process::Command::new(&b.ffmpeg)
                    .args(&args)
                    .status()
                    .with_context(|| format!("running {}", b.ffmpeg))?;
                if !st.success() {
                    bail!("{} failed on {}", b.ffmpeg, path.display());
                }
                Ok(t.elapsed())
            })?;
            rows.push((name, target, mb, ours, ff));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    if b.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(c, t, mb, o, f)| {
                serde_json::json!({"codec": c, "to": t, "mb": mb, "ivr_mb_s": mb / o.as_secs_f64(), "ffmpeg_mb_s": mb / f.as_secs_f64(), "ratio": f.as_secs_f64() / o.as_secs_f64()})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!("ivr bench media: raw 2592×1944 elementary stream → container, best of {} (one core each)", b.runs);
    println!("{:<6} {:<4} {:>8} {:>12} {:>14} {:>7}", "codec", "to", "MB", "ivr MB/s", "ffmpeg MB/s", "ratio");
    for (c, t, mb, o, f) in rows {
        println!(
            "{c:<6} {t:<4} {mb:>8.1} {:>12.0} {:>14.0} {:>6.1}×",
            mb / o.as_secs_f64(),
            mb / f.as_secs_f64(),
            f.as_secs_f64() / o.as_secs_f64()
        );
    }
    Ok(())
}
