//! `ivr bench media --streams N`: what one camera costs. N simulated
//! 4 Mbit/s cameras (the 2592×1944 clip padded, `Clip::padded`) in real time, each as an edge box would carry it:
//! DVRIP bytes in TCP-sized pieces → the DVRIP demuxer → a hub → an
//! MPEG-TS sink and an FLV sink. CPU time and resident memory of the whole
//! process are divided by N. Beside it, one ffmpeg doing the copy remux of
//! the same video to TS and FLV in real time (`-re`), its CPU and peak RSS
//! taken from the kernel.

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use dvrip::media::{write_audio, write_video, AudioCodec, Demuxer, VideoCodec};
use ivr_media::hub::Hub;
use ivr_media::sink::{Format, Sink};
use ivr_media::Codec;
use ivr_sim::clips;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cpu_secs(who: i32) -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |x: libc::timeval| x.tv_sec as f64 + x.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One camera. `start`: when it begins (cameras are not in phase);
/// `paced`: a frame every 40 ms as the camera sends them, or everything at
/// once (the media path alone, without the wake-ups of real time).
async fn camera(chunks: Arc<Vec<Bytes>>, start: Duration, paced: bool) -> anyhow::Result<(u64, u64)> {
    tokio::time::sleep(start).await;
    let hub = Hub::new(64, 8 << 20);
    let sink = |format: Format| {
        let mut sub = hub.subscribe();
        tokio::spawn(async move {
            let mut s = Sink::new(format, 25).with_audio(Some(Codec::G711A));
            let (mut out, mut n) = (Vec::with_capacity(256 << 10), 0u64);
            while let Some(f) = sub.recv().await {
                s.push(f, &mut out)?;
                n += out.len() as u64;
                out.clear();
            }
            s.finish(&mut out)?;
            anyhow::Ok(n + out.len() as u64)
        })
    };
    let (ts, flv) = (sink(Format::Ts), sink(Format::Flv));
    let mut d = Demuxer::new();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    for chunk in chunks.iter() {
        if paced {
            tick.tick().await;
        } else {
            tokio::task::yield_now().await;
        }
        for piece in chunk.chunks(1460) {
            d.feed(piece);
            while let Some(f) = d.next_frame() {
                if let Ok(Some(frame)) = ivr_edge::dvrip::frame(&f) {
                    hub.publish(frame);
                }
            }
        }
    }
    drop(hub);
    Ok((ts.await??, flv.await??))
}

pub async fn run(n: usize, seconds: u64, ffmpeg: &str, json: bool) -> anyhow::Result<()> {
    // The camera: the 2592×1944 fixture padded to 4 Mbit/s, with 8 kHz
    // G.711 A-law, framed as a DVRIP device sends it; and the same video
    // as Annex B for ffmpeg.
    let units = clips::clip(clips::ClipCodec::H264, true).padded(4_000_000);
    let t = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).and_then(|d| d.and_hms_opt(12, 0, 0)).context("date")?;
    let (mut chunks, mut annexb, mut video_bytes) = (Vec::new(), Vec::new(), 0usize);
    for i in 0..(seconds * 25) as usize {
        let u = &units[i % units.len()];
        let mut b = BytesMut::with_capacity(u.data.len() + 400);
        write_video(&mut b, VideoCodec::H264, u.keyframe, 2592, 1944, 25, &t, &u.data);
        write_audio(&mut b, AudioCodec::G711A, 8000, &clips::TONE_ALAW[(i * 320) % 8000..][..320]);
        video_bytes += u.data.len();
        annexb.extend_from_slice(&u.data);
        chunks.push(b.freeze());
    }
    let mbit = video_bytes as f64 * 8.0 / seconds as f64 / 1e6;
    let chunks = Arc::new(chunks);

    let rss0 = rss_kib();
    let cpu0 = cpu_secs(libc::RUSAGE_SELF);
    let wall = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|k| tokio::spawn(camera(chunks.clone(), Duration::from_micros((k as u64 * 40_000) / n as u64), true)))
        .collect();
    // Resident memory while every camera is running (sampled, the peak).
    let mut rss_peak = rss0;
    let sampling = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            rss_peak = rss_peak.max(rss_kib());
        }
    };
    let all = async {
        let mut out = (0u64, 0u64);
        for t in tasks {
            let (a, b) = t.await??;
            out.0 += a;
            out.1 += b;
        }
        anyhow::Ok(out)
    };
    let (ts_bytes, flv_bytes) = tokio::select! {
        r = all => r?,
        _ = sampling => unreachable!(),
    };
    let cpu = cpu_secs(libc::RUSAGE_SELF) - cpu0;
    let elapsed = wall.elapsed().as_secs_f64();
    let ivr_pct = cpu / (n as f64 * seconds as f64) * 100.0;
    let ivr_kib = rss_peak.saturating_sub(rss0) as f64 / n as f64;

    // The same streams unpaced: the CPU of the media path itself.
    let cpu1 = cpu_secs(libc::RUSAGE_SELF);
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(camera(chunks.clone(), Duration::ZERO, false))).collect();
    for t in tasks {
        t.await??;
    }
    let path_cpu = cpu_secs(libc::RUSAGE_SELF) - cpu1;
    let path_pct = path_cpu / (n as f64 * seconds as f64) * 100.0;

    // ffmpeg: one stream, real time, the same video to TS and FLV.
    let dir = std::env::temp_dir().join(format!("ivr-bench-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("camera.h264");
    std::fs::write(&input, &annexb)?;
    let child0 = cpu_secs(libc::RUSAGE_CHILDREN);
    let mut child = std::process::Command::new(ffmpeg)
        .args(["-v", "error", "-y", "-re", "-f", "h264", "-r", "25", "-i"])
        .arg(&input)
        .args([
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "mpegts",
            "/dev/null",
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "flv",
            "/dev/null",
        ])
        .spawn()
        .with_context(|| format!("running {ffmpeg}"))?;
    // Its resident memory, sampled (the kernel's max RSS of children
    // would count our own pages from before its exec).
    let status = format!("/proc/{}/status", child.id());
    let mut ff_kib = 0f64;
    let st = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if let Some(k) = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        }) {
            ff_kib = ff_kib.max(k);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !st.success() {
        bail!("{ffmpeg} failed on {}", input.display());
    }
    let ff_cpu = cpu_secs(libc::RUSAGE_CHILDREN) - child0;
    let ff_pct = ff_cpu / seconds as f64 * 100.0;
    std::fs::remove_dir_all(&dir).ok();

    let v = serde_json::json!({
        "streams": n, "seconds": seconds, "video_mbit_s": mbit, "elapsed_s": elapsed,
        "ivr": {"cpu_s": cpu, "core_pct_per_stream": ivr_pct, "rss_kib_per_stream": ivr_kib,
                "unpaced_cpu_s": path_cpu, "unpaced_core_pct_per_stream": path_pct,
                "ts_bytes": ts_bytes, "flv_bytes": flv_bytes},
        "ffmpeg": {"cpu_s": ff_cpu, "core_pct_per_stream": ff_pct, "max_rss_kib": ff_kib},
        "cpu_ratio": ff_pct / ivr_pct.max(1e-9),
    });
    if json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "ivr bench media --streams {n}: {n} cameras of {mbit:.2} Mbit/s H.264 2592×1944 + G.711, {seconds} s in real time"
    );
    println!("{:<34} {:>16} {:>16}", "", "ivr (per stream)", "ffmpeg (one)");
    println!("{:<34} {:>15.3}% {:>15.3}%", "CPU, share of one core", ivr_pct, ff_pct);
    println!("{:<34} {:>15.3}%", "  of which the media path (unpaced)", path_pct);
    println!("{:<34} {:>13.0} KiB {:>13.0} KiB", "memory (RSS)", ivr_kib, ff_kib);
    println!(
        "ivr: DVRIP demux → hub → TS + FLV (with audio), {:.1} s of CPU for {} stream-seconds; ffmpeg: Annex B → TS + FLV (video only); ratio {:.1}×",
        cpu,
        n as u64 * seconds,
        ff_pct / ivr_pct.max(1e-9)
    );
    Ok(())
}
