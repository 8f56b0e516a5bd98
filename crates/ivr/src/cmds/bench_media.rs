//! `ivr bench media`: remux throughput, ivr's muxers against
//! `ffmpeg -c copy` on the same input, side by side in one run.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args as ClapArgs;
use ivr_media::annexb::access_units;
use ivr_media::{fmp4, ticks, ts, Codec, Frame};
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
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: String,
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
        for target in ["ts", "mp4"] {
            let ours = best(b.runs, || {
                let t = Instant::now();
                let units = access_units(&input, codec);
                let frames: Vec<Frame> = units
                    .into_iter()
                    .enumerate()
                    .map(|(i, u)| {
                        let p = ticks(i as u64, 25);
                        Frame { codec, keyframe: u.keyframe, pts: p, dts: p, data: u.data }
                    })
                    .collect();
                let mut out = Vec::with_capacity(input.len() + input.len() / 16);
                if target == "ts" {
                    let mut m = ts::Muxer::new(codec)?;
                    for f in &frames {
                        m.write(f, &mut out)?;
                    }
                } else {
                    let (sps, params) = fmp4::describe(codec, &frames)?;
                    out.extend_from_slice(&fmp4::init_segment(&sps, &params)?);
                    let mut fr = fmp4::Fragmenter::new(codec, 25);
                    let starts: Vec<usize> =
                        (0..frames.len()).filter(|i| frames[*i].keyframe).chain([frames.len()]).collect();
                    for g in starts.windows(2) {
                        out.extend_from_slice(&fr.fragment(&frames[g[0]..g[1]], frames.get(g[1]).map(|x| x.dts)));
                    }
                }
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
