//! `ivr media …`: media files.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use ivr_media::annexb::access_units;
use ivr_media::fmp4;
use ivr_media::ts::Muxer;
use ivr_media::{ticks, Codec, Frame};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum MediaCmd {
    /// Rewrap without re-encoding. Today: a raw H.264/H.265 elementary
    /// stream (`.h264`, `.264`, `.h265`, `.265`, `.hevc`) into MPEG-TS
    /// (`.ts`) or fragmented MP4 (`.mp4`); timestamps from --fps.
    Remux {
        input: PathBuf,
        output: PathBuf,
        /// Frame rate of a raw stream (it carries no timestamps).
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=240))]
        fps: u32,
        #[arg(long)]
        json: bool,
    },
}

fn kind(p: &Path) -> Option<&'static str> {
    let ext = p.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "h264" | "264" | "avc" => "h264",
        "h265" | "265" | "hevc" => "h265",
        "ts" | "m2ts" => "ts",
        "mp4" | "m4v" => "mp4",
        _ => return None,
    })
}

pub async fn run(cmd: MediaCmd) -> anyhow::Result<()> {
    match cmd {
        MediaCmd::Remux { input, output, fps, json } => {
            let codec = match (kind(&input), kind(&output)) {
                (Some("h264"), Some("ts" | "mp4")) => Codec::H264,
                (Some("h265"), Some("ts" | "mp4")) => Codec::H265,
                (i, o) => bail!(
                    "remux {} → {}: only raw .h264/.h265 → .ts or .mp4 (fragmented) so far (got {} → {})",
                    input.display(),
                    output.display(),
                    i.unwrap_or("unknown"),
                    o.unwrap_or("unknown")
                ),
            };
            let raw = Bytes::from(std::fs::read(&input).with_context(|| format!("cannot read {}", input.display()))?);
            let units = access_units(&raw, codec);
            if units.is_empty() {
                bail!("{}: no {codec:?} access units (no Annex B start code found)", input.display());
            }
            if !units[0].keyframe {
                eprintln!(
                    "warning: {} does not start with a keyframe; players show nothing until the first one",
                    input.display()
                );
            }
            let frames: Vec<Frame> = units
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let t = 90_000 + ticks(i as u64, fps);
                    Frame { codec, keyframe: u.keyframe, pts: t, dts: t, data: u.data.clone() }
                })
                .collect();
            let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
            if kind(&output) == Some("mp4") {
                // Fragmented: the init segment, then one fragment per GOP.
                let (sps, params) = fmp4::describe(codec, &frames)?;
                out.extend_from_slice(&fmp4::init_segment(&sps, &params)?);
                let mut f = fmp4::Fragmenter::new(codec, fps);
                let starts: Vec<usize> =
                    (0..frames.len()).filter(|i| frames[*i].keyframe || *i == 0).chain([frames.len()]).collect();
                for g in starts.windows(2) {
                    out.extend_from_slice(&f.fragment(&frames[g[0]..g[1]], frames.get(g[1]).map(|x| x.dts)));
                }
            } else {
                let mut m = Muxer::new(codec)?;
                for f in &frames {
                    m.write(f, &mut out)?;
                }
            }
            // Written whole or not at all.
            let tmp = output.with_extension("part");
            std::fs::write(&tmp, &out).with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &output)?;
            let keys = units.iter().filter(|u| u.keyframe).count();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"frames": units.len(), "keyframes": keys, "bytes_in": raw.len(), "bytes_out": out.len(), "output": output.display().to_string()})
                );
            } else {
                println!(
                    "{}: {} frames ({keys} keyframes), {:.1} s at {fps} fps, {} bytes",
                    output.display(),
                    units.len(),
                    units.len() as f64 / fps as f64,
                    out.len()
                );
            }
            Ok(())
        }
    }
}
