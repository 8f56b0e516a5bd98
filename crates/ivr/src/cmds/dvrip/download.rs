//! `ivr dvrip download`: recordings to files and HLS ranges.

use super::*;

/// `/idea0/2024-05-17/001/10.00.00-10.02.00[R]…` → its begin and end.
pub(super) fn file_times(name: &str) -> Option<(NaiveDateTime, NaiveDateTime)> {
    let mut parts = name.split('/').filter(|s| !s.is_empty());
    let _disk = parts.next()?;
    let date = parts.next()?;
    let _ch = parts.next()?;
    let file = parts.next()?;
    let (a, rest) = file.split_once('-')?;
    let b = rest.get(..8)?;
    let t = |hms: &str| parse_local_time(&format!("{date} {}", hms.replace('.', ":")));
    Some((t(a)?, t(b)?))
}

pub(super) fn channel_of(name: &str) -> Option<u32> {
    name.split('/').filter(|s| !s.is_empty()).nth(2)?.parse::<u32>().ok()?.checked_sub(1)
}

pub(super) async fn write_file(path: &str, data: &[u8]) -> anyhow::Result<()> {
    if path == "-" {
        let mut o = tokio::io::stdout();
        o.write_all(data).await?;
        o.flush().await?;
        return Ok(());
    }
    tokio::fs::write(path, data).await.with_context(|| format!("cannot write {path}"))
}

/// A recording as an HLS VOD playlist with TS segments beside it, each
/// stamped with the device's clock (`EXT-X-PROGRAM-DATE-TIME`, the device's
/// local time read in this machine's time zone).
pub(super) async fn download_hls(
    s: &mut dvrip::client::MediaStream,
    output: &str,
    pb: &ProgressBar,
) -> anyhow::Result<(u64, usize)> {
    use chrono::TimeZone;
    let path = std::path::Path::new(output);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).context("the playlist needs a file name")?;
    let stem = path.file_stem().and_then(|n| n.to_str()).unwrap_or("recording");
    let apply = |o: Vec<ivr_media::hls::Output>| {
        ivr_media::hls::apply(dir, name, o).with_context(|| format!("writing HLS into {}", dir.display()))
    };
    let mut w: Option<ivr_media::hls::Writer> = None;
    let mut frames = 0u64;
    while let Some(f) = s.next_frame().await {
        pb.set_position(s.bytes());
        let Ok(Some(mut frame)) = ivr_edge::dvrip::frame(&f) else { continue };
        frame.pts += 90_000;
        frame.dts += 90_000;
        if w.is_none() && frame.codec.is_video() && frame.keyframe {
            let mut nw = ivr_media::hls::Writer::new(ivr_media::sink::Format::Ts, 25, 4.0, None, &format!("{stem}_"));
            if let Some(ms) = f.device_time.and_then(|t| chrono::Local.from_local_datetime(&t).single()) {
                nw = nw.with_start_ms(ms.timestamp_millis());
            }
            w = Some(nw);
        }
        let Some(w) = &mut w else { continue };
        if frame.codec.is_video() {
            frames += 1;
            if frame.keyframe {
                if let Some(ms) = f.device_time.and_then(|t| chrono::Local.from_local_datetime(&t).single()) {
                    w.set_wall_clock(ms.timestamp_millis());
                }
            }
        }
        apply(w.push(frame)?)?;
    }
    let Some(mut w) = w else { return Ok((0, 0)) };
    apply(w.finish()?)?;
    Ok((frames, w.playlist().entries.len()))
}
