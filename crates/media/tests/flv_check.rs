//! FLV: H.264 judged by ffprobe/ffmpeg; H.265 (Enhanced RTMP, which
//! Debian's ffmpeg 5.1 cannot read) checked against the spec with our own
//! reader: ex-header bits, FourCC, the HEVCDecoderConfigurationRecord's
//! SPS, one CodedFramesX tag per frame, keyframes where the stream has them.

use bytes::Bytes;
use ivr_media::flv::{file, read_tags, TAG_SCRIPT, TAG_VIDEO};
use ivr_media::params::parse_h265_sps;
use ivr_media::{Codec, Frame};
use ivr_sim::clips;

fn frames(raw: &'static [u8], codec: Codec) -> Vec<Frame> {
    ivr_media::demux::from_annexb(&Bytes::from_static(raw), codec, 25)
}

#[test]
fn h264_flv_is_read_by_ffprobe() {
    let dir = std::env::temp_dir().join(format!("ivr-media-flv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (raw, w, h, n) in [(clips::H264_640X360, 640, 360, 75), (clips::H264_2592X1944, 2592, 1944, 50)] {
        let path = dir.join(format!("{w}.flv"));
        std::fs::write(&path, file(&frames(raw, Codec::H264), 25).unwrap()).unwrap();
        let j = ivr_testkit::ffprobe(&path, "stream=codec_name,width,height,nb_read_frames:format=format_name")
            .unwrap_or_else(|e| panic!("{e}"));
        let s = &j["streams"][0];
        assert_eq!(j["format"]["format_name"], "flv");
        assert_eq!(s["codec_name"], "h264");
        assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(w), Some(h)));
        assert_eq!(s["nb_read_frames"], n.to_string());
        ivr_testkit::decodes_cleanly(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn h265_enhanced_flv_follows_the_spec() {
    for (raw, w, h) in [(clips::H265_640X360, 640, 360), (clips::H265_2592X1944, 2592, 1944)] {
        let fr = frames(raw, Codec::H265);
        let tags = read_tags(&file(&fr, 25).unwrap()).unwrap();
        assert_eq!(tags[0].kind, TAG_SCRIPT);
        let video: Vec<_> = tags.iter().filter(|t| t.kind == TAG_VIDEO).collect();
        assert_eq!(video.len(), fr.len() + 1, "sequence start + one tag per frame");
        // SequenceStart: IsExHeader, keyframe, packet type 0, FourCC hvc1.
        let seq = &video[0].body;
        assert_eq!(seq[0], 0x90);
        assert_eq!(&seq[1..5], b"hvc1");
        // HEVCDecoderConfigurationRecord: version 1, then the arrays after
        // 22 bytes; find the SPS (type 33) and read it.
        let rec = &seq[5..];
        assert_eq!(rec[0], 1);
        let mut p = 23;
        let mut sps = None;
        for _ in 0..rec[22] {
            let t = rec[p] & 0x3f;
            let count = u16::from_be_bytes([rec[p + 1], rec[p + 2]]);
            p += 3;
            for _ in 0..count {
                let len = u16::from_be_bytes([rec[p], rec[p + 1]]) as usize;
                if t == 33 {
                    sps = Some(rec[p + 2..p + 2 + len].to_vec());
                }
                p += 2 + len;
            }
        }
        assert_eq!(p, rec.len(), "arrays fill the record");
        let sps = parse_h265_sps(&sps.expect("an SPS in hvcC")).unwrap();
        assert_eq!((sps.width, sps.height), (w, h));
        // Frames: CodedFramesX (3), keyframe flag matches, samples are
        // length-prefixed NAL units that add up.
        for (t, f) in video[1..].iter().zip(&fr) {
            let b = &t.body;
            assert_eq!(b[0] & 0x80, 0x80);
            assert_eq!(b[0] & 0x0f, 3);
            assert_eq!((b[0] >> 4) & 0x07, if f.keyframe { 1 } else { 2 });
            assert_eq!(&b[1..5], b"hvc1");
            let mut q = 5;
            while q < b.len() {
                let n = u32::from_be_bytes([b[q], b[q + 1], b[q + 2], b[q + 3]]) as usize;
                q += 4 + n;
            }
            assert_eq!(q, b.len());
            assert_eq!(t.ms as u64, (f.dts - fr[0].dts) / 90);
        }
    }
}
