//! ffprobe and ffmpeg judge the fragmented MP4 writer on the fixtures: an
//! init segment and one fragment per GOP, concatenated into a file.

use bytes::Bytes;
use ivr_media::fmp4::{describe, init_segment, Fragmenter};
use ivr_media::Codec;
use ivr_sim::clips;

#[test]
fn ffprobe_reads_every_fixture_as_fragmented_mp4() {
    let dir = std::env::temp_dir().join(format!("ivr-media-mp4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (raw, codec, name, tag, w, h, frames) in [
        (clips::H264_640X360, Codec::H264, "h264", "avc1", 640, 360, 75),
        (clips::H264_2592X1944, Codec::H264, "h264", "avc1", 2592, 1944, 50),
        (clips::H265_640X360, Codec::H265, "hevc", "hvc1", 640, 360, 75),
        (clips::H265_2592X1944, Codec::H265, "hevc", "hvc1", 2592, 1944, 50),
    ] {
        let fr = ivr_media::demux::from_annexb(&Bytes::from_static(raw), codec, 25);
        let (sps, params) = describe(codec, &fr).unwrap();
        let mut file = init_segment(&sps, &params).unwrap();
        let mut f = Fragmenter::new(codec, 25);
        let starts: Vec<usize> = (0..fr.len()).filter(|i| fr[*i].keyframe).chain([fr.len()]).collect();
        for g in starts.windows(2) {
            let next = fr.get(g[1]).map(|x| x.dts);
            file.extend_from_slice(&f.fragment(&fr[g[0]..g[1]], next));
        }
        let path = dir.join(format!("{name}_{w}.mp4"));
        std::fs::write(&path, &file).unwrap();
        let j = ivr_testkit::ffprobe(
            &path,
            "stream=codec_name,codec_tag_string,width,height,nb_read_frames:format=duration",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let s = &j["streams"][0];
        assert_eq!(s["codec_name"], name, "{path:?}");
        assert_eq!(s["codec_tag_string"], tag, "{path:?}");
        assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(w), Some(h)), "{path:?}");
        assert_eq!(s["nb_read_frames"], frames.to_string(), "{path:?}");
        let dur: f64 = j["format"]["duration"].as_str().unwrap().parse().unwrap();
        assert!((dur - frames as f64 / 25.0).abs() < 0.05, "{path:?}: {dur}");
        ivr_testkit::decodes_cleanly(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::remove_dir_all(&dir).ok();
}
