//! Captured DVRIP media (XMeye's `.h264` files, `ivr dvrip download
//! --format raw`) read through the DVRIP→Frame adapter and remuxed by the
//! media engine, judged by ffprobe.

use bytes::{Bytes, BytesMut};
use dvrip::media::{write_audio, write_video, AudioCodec, VideoCodec};
use ivr_media::sink::{Format, Sink};
use ivr_media::{annexb, Codec};

fn streams(path: &std::path::Path) -> Vec<(String, u64)> {
    let j =
        ivr_testkit::ffprobe(path, "stream=codec_type,codec_name,nb_read_packets").unwrap_or_else(|e| panic!("{e}"));
    ivr_testkit::decodes_cleanly(path).unwrap_or_else(|e| panic!("{e}"));
    j["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = s["nb_read_packets"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
            (s["codec_name"].as_str().unwrap_or("").to_owned(), n)
        })
        .collect()
}

#[test]
fn a_captured_dvrip_stream_becomes_flv_with_its_g711_audio() {
    let d = std::env::temp_dir().join(format!("ivr-edge-capture-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let units = annexb::access_units(&Bytes::from_static(ivr_fixtures::H264_640X360), Codec::H264);
    let mut cap = BytesMut::new();
    let t = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap().and_hms_opt(10, 0, 0).unwrap();
    for (i, u) in units.iter().enumerate() {
        write_video(&mut cap, VideoCodec::H264, u.keyframe, 640, 360, 25, &t, &u.data);
        // 40 ms of A-law a frame.
        write_audio(&mut cap, AudioCodec::G711A, 8000, &ivr_fixtures::TONE_ALAW[i * 320 % 8000..][..320]);
    }
    cap.extend_from_slice(&[0, 0, 1, 0xfc, 1, 2]); // a torn last frame
    let data = cap.freeze();
    assert!(ivr_edge::dvrip::is_capture(&data), "told by its first bytes, whatever the name");
    let mut dm = ivr_edge::dvrip::read_capture(&data).unwrap();
    assert!(dm.skipped.iter().any(|s| s.contains("incomplete frame")), "{:?}", dm.skipped);
    assert_eq!(dm.audio_codec(), Some(Codec::G711A));
    dm.rebase(90_000);
    for (format, name, want) in [
        (Format::Flv, "cap.flv", vec![("h264".to_owned(), 75), ("pcm_alaw".to_owned(), 75)]),
        // TS cannot carry G.711: the video goes, the audio is counted.
        (Format::Ts, "cap.ts", vec![("h264".to_owned(), 75)]),
    ] {
        let mut sink = Sink::new(format, 25).with_audio(dm.audio_codec());
        let mut out = Vec::new();
        for f in dm.frames.clone() {
            sink.push(f, &mut out).unwrap();
        }
        sink.finish(&mut out).unwrap();
        std::fs::write(d.join(name), out).unwrap();
        assert_eq!(streams(&d.join(name)), want, "{name}");
        if format == Format::Ts {
            assert_eq!(sink.audio_left_out, 75);
        }
    }
    // Not DVRIP: an error that says there is no video, not a panic.
    assert!(!ivr_edge::dvrip::is_capture(b"FLV\x01"));
    let e = ivr_edge::dvrip::read_capture(&Bytes::from_static(&[0, 0, 1, 0xfc, 0, 0])).unwrap_err();
    assert!(e.to_string().contains("DVRIP media: no H.264 or H.265 video"), "{e}");
}
