//! The SPS reader against ffprobe on the fixture clips.

use ivr_media::params::find_sps;
use ivr_media::Codec;
use ivr_sim::clips;
use std::process::Command;

#[test]
fn sps_agrees_with_ffprobe() {
    let dir = std::env::temp_dir().join(format!("ivr-media-sps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (raw, codec, ext, want) in [
        (clips::H264_640X360, Codec::H264, "h264", "avc1.4d401e"),
        (clips::H264_2592X1944, Codec::H264, "h264", "avc1.4d4032"),
        (clips::H265_640X360, Codec::H265, "hevc", "hvc1.1.6.L63.90"),
        (clips::H265_2592X1944, Codec::H265, "hevc", "hvc1.1.6.L150.90"),
    ] {
        let sps = find_sps(codec, raw).unwrap();
        let path = dir.join(format!("clip.{ext}"));
        std::fs::write(&path, raw).unwrap();
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "stream=width,height,level,pix_fmt,profile", "-of", "json"])
            .arg(&path)
            .output()
            .expect("ffprobe");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let s = &j["streams"][0];
        assert_eq!(
            (s["width"].as_u64(), s["height"].as_u64()),
            (Some(sps.width as u64), Some(sps.height as u64)),
            "{sps:?}"
        );
        assert_eq!(s["level"].as_i64(), Some(sps.level_idc as i64), "{sps:?}");
        assert_eq!(s["pix_fmt"], "yuv420p");
        assert_eq!((sps.chroma_format_idc, sps.bit_depth_luma), (1, 8));
        let cs = sps.codec_string();
        // Main profile; level as ffprobe says; progressive, frame-only.
        assert_eq!(cs, want);
        match codec {
            Codec::H264 => {
                assert_eq!(s["profile"], "Main");
                assert_eq!(sps.profile_idc, 77);
                assert!(cs.starts_with("avc1.4d"), "{cs}");
            }
            _ => {
                assert_eq!(s["profile"], "Main");
                assert!(cs.starts_with("hvc1.1.6.L"), "{cs}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
