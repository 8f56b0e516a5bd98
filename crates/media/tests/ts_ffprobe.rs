//! ffprobe and ffmpeg (Debian's) judge the TS muxer on the fixture clips:
//! codec, size, frame count, duration, increasing timestamps, and a decode
//! with no error.

use bytes::Bytes;
use ivr_media::annexb::access_units;
use ivr_media::ts::Muxer;
use ivr_media::{ticks, Codec, Frame};
use ivr_sim::clips;
use std::process::Command;

fn mux(raw: &'static [u8], codec: Codec) -> Vec<u8> {
    let units = access_units(&Bytes::from_static(raw), codec);
    let mut m = Muxer::new(codec).unwrap();
    let mut out = Vec::new();
    for (i, u) in units.iter().enumerate() {
        let t = 90_000 + ticks(i as u64, 25);
        m.write(&Frame { codec, keyframe: u.keyframe, pts: t, dts: t, data: u.data.clone() }, &mut out).unwrap();
    }
    out
}

#[test]
fn ffprobe_reads_every_fixture_as_muxed() {
    let dir = std::env::temp_dir().join(format!("ivr-media-ts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (raw, codec, name, w, h, frames) in [
        (clips::H264_640X360, Codec::H264, "h264", 640, 360, 75),
        (clips::H264_2592X1944, Codec::H264, "h264", 2592, 1944, 50),
        (clips::H265_640X360, Codec::H265, "hevc", 640, 360, 75),
        (clips::H265_2592X1944, Codec::H265, "hevc", 2592, 1944, 50),
    ] {
        let ts = mux(raw, codec);
        let path = dir.join(format!("{name}_{w}.ts"));
        std::fs::write(&path, &ts).unwrap();
        let j =
            ivr_testkit::ffprobe(&path, "stream=codec_name,width,height,nb_read_frames:format=duration,format_name")
                .unwrap_or_else(|e| panic!("{e}"));
        let s = &j["streams"][0];
        assert_eq!(j["format"]["format_name"], "mpegts", "{path:?}");
        assert_eq!(s["codec_name"], name, "{path:?}");
        assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(w), Some(h)), "{path:?}");
        assert_eq!(s["nb_read_frames"], frames.to_string(), "{path:?}");
        let dur: f64 = j["format"]["duration"].as_str().unwrap().parse().unwrap();
        let want = frames as f64 / 25.0;
        assert!((dur - want).abs() < 0.05, "{path:?}: duration {dur}, want {want}");

        // Packet timestamps strictly increase, 3600 ticks apart.
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "packet=pts,flags", "-of", "csv=p=0"])
            .arg(&path)
            .output()
            .unwrap();
        let lines: Vec<String> =
            String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
        assert_eq!(lines.len(), frames, "{path:?}");
        let pts: Vec<i64> = lines.iter().map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
        assert!(pts.windows(2).all(|p| p[1] - p[0] == 3600), "{path:?}: {pts:?}");
        let keys: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains(",K")).map(|(i, _)| i).collect();
        assert_eq!(
            keys,
            (0..frames).step_by(25).collect::<Vec<_>>(),
            "{path:?}: a keyframe every 25 frames, from the first"
        );

        ivr_testkit::decodes_cleanly(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::remove_dir_all(&dir).ok();
}
