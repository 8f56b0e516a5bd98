//! Remux between every container, judged by ffprobe/ffmpeg and by reading
//! our own output back: sources made by Debian's ffmpeg (H.264 with
//! B-frames and AAC, in MP4, fragmented MP4, MPEG-TS and FLV), the
//! fixtures through our muxers and readers, a captured DVRIP stream with
//! G.711, and HLS playlists (recorded and live window).

use bytes::Bytes;
use ivr_media::demux::{self, from_annexb, Input};
use ivr_media::hls::{self, Output};
use ivr_media::sink::{Format, Sink};
use ivr_media::{annexb, Codec, Frame};
use ivr_sim::clips;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ivr-remux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (codec, packets) per stream as ffprobe counts them, after checking that
/// ffmpeg decodes the file without a word and timestamps never go back.
fn judge(path: &Path) -> Vec<(String, u64)> {
    let j =
        ivr_testkit::ffprobe(path, "stream=codec_type,codec_name,nb_read_packets").unwrap_or_else(|e| panic!("{e}"));
    ivr_testkit::decodes_cleanly(path).unwrap_or_else(|e| panic!("{e}"));
    // Video packets in decoding order: DTS strictly rising.
    let pk = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries", "packet=dts", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let dts: Vec<i64> = String::from_utf8_lossy(&pk.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(dts.windows(2).all(|w| w[0] < w[1]), "{path:?}: video DTS not rising");
    j["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_name"].as_str().unwrap_or("").to_owned(),
                s["nb_read_packets"].as_str().unwrap_or("0").parse().unwrap(),
            )
        })
        .collect()
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg").args(["-y", "-v", "error"]).args(args).output().expect("ffmpeg");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Reads `path` as ivr would, and writes it as `format`.
fn remux(path: &Path, format: Format) -> (Vec<u8>, Sink) {
    let data = Bytes::from(std::fs::read(path).unwrap());
    let kind = Input::detect(path, &data[..512.min(data.len())]).unwrap();
    let mut d = demux::read(kind, &data, 25).unwrap();
    d.rebase(90_000);
    let mut sink = Sink::new(format, 25).with_audio(d.audio_codec());
    let mut out = Vec::new();
    for f in d.frames {
        sink.push(f, &mut out).unwrap();
    }
    sink.finish(&mut out).unwrap();
    (out, sink)
}

#[test]
fn ffmpeg_made_files_remux_into_every_container() {
    let d = dir("ffmpeg");
    let src = d.join("src.mp4");
    let s = src.to_str().unwrap();
    // 4 s of H.264 with B-frames (pts ≠ dts) and AAC at 44.1 kHz.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-g",
        "25",
        "-bf",
        "2",
        "-c:a",
        "aac",
        "-shortest",
        s,
    ]);
    let inputs = [
        ("src.mp4", vec![]),
        ("src.ts", vec!["-c", "copy"]),
        ("src.flv", vec!["-c", "copy"]),
        ("frag.mp4", vec!["-c", "copy", "-movflags", "frag_keyframe+empty_moov+default_base_moof"]),
    ];
    let expect = judge(&src);
    let aac = expect.iter().find(|x| x.0 == "aac").unwrap().1;
    assert!(aac > 150, "{expect:?}");
    for (name, args) in inputs {
        let p = d.join(name);
        if !args.is_empty() {
            let mut a = vec!["-i", s];
            a.extend(args);
            a.push(p.to_str().unwrap());
            ffmpeg(&a);
        }
        for (format, ext, with_audio) in
            [(Format::Ts, "ts", true), (Format::Flv, "flv", true), (Format::Mp4, "mp4", true)]
        {
            let (bytes, sink) = remux(&p, format);
            let out = d.join(format!("{name}.{ext}"));
            std::fs::write(&out, bytes).unwrap();
            let got = judge(&out);
            let mut want = vec![("h264".to_owned(), 100)];
            if with_audio {
                want.push(("aac".to_owned(), aac));
            } else {
                assert_eq!(sink.audio_left_out, aac, "{out:?}: the left-out audio is counted");
            }
            assert_eq!(got, want, "{out:?}");
        }
        // HLS with the audio, both segment kinds.
        let data = Bytes::from(std::fs::read(&p).unwrap());
        let mut dm = demux::read(Input::detect(&p, &data).unwrap(), &data, 25).unwrap();
        dm.rebase(90_000);
        for format in [Format::Ts, Format::Mp4] {
            let hd = d.join(format!("hls-{name}-{format:?}"));
            std::fs::create_dir_all(&hd).unwrap();
            let mut w = hls::Writer::new(format, 25, 1.0, None, "s").with_audio(dm.audio_codec());
            run_hls(&mut w, dm.frames.clone(), &hd);
            let got = judge(&hd.join("index.m3u8"));
            assert_eq!(got, [("h264".to_owned(), 100), ("aac".to_owned(), aac)], "HLS {format:?} from {name}");
        }
    }
}

/// Video NAL units other than AUDs and parameter sets: the picture data
/// every container must carry unchanged.
fn pictures(frames: &[Frame]) -> Vec<(bool, u64, Vec<Vec<u8>>)> {
    frames
        .iter()
        .filter(|f| f.codec.is_video())
        .map(|f| {
            let skip: &[u8] = if f.codec == Codec::H265 { &[32, 33, 34, 35] } else { &[7, 8, 9] };
            let nals = annexb::nal_units(&f.data)
                .into_iter()
                .filter(|n| !annexb::nal_type(f.codec, n).is_some_and(|t| skip.contains(&t)))
                .map(<[u8]>::to_vec)
                .collect();
            (f.keyframe, f.dts, nals)
        })
        .collect()
}

#[test]
fn our_containers_read_back_to_the_same_pictures() {
    let d = dir("roundtrip");
    for (raw, codec) in [
        (clips::H264_640X360, Codec::H264),
        (clips::H265_640X360, Codec::H265),
        (clips::H264_2592X1944, Codec::H264),
        (clips::H265_2592X1944, Codec::H265),
    ] {
        let mut frames = from_annexb(&Bytes::from_static(raw), codec, 25);
        for f in &mut frames {
            f.pts += 90_000;
            f.dts += 90_000;
        }
        let want = pictures(&frames);
        for format in [Format::Ts, Format::Flv, Format::Mp4] {
            let mut sink = Sink::new(format, 25).with_audio(None);
            let mut out = Vec::new();
            for f in frames.clone() {
                sink.push(f, &mut out).unwrap();
            }
            sink.finish(&mut out).unwrap();
            let path = d.join(format!("x.{format:?}"));
            let kind = Input::detect(&path, &out).unwrap();
            let mut back = demux::read(kind, &Bytes::from(out), 25).unwrap();
            back.rebase(90_000);
            assert!(back.skipped.is_empty(), "{codec:?} {format:?}: {:?}", back.skipped);
            let got = pictures(&back.frames);
            assert_eq!(got.len(), want.len(), "{codec:?} {format:?}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{codec:?} {format:?}: frame {i}");
            }
            // Every keyframe read back carries its parameter sets.
            for f in back.frames.iter().filter(|f| f.keyframe) {
                assert!(ivr_media::params::find_sps(codec, &f.data).is_ok(), "{codec:?} {format:?}");
            }
        }
    }
}

#[test]
fn hls_recordings_play_whole_with_ts_and_fmp4_segments() {
    for (raw, codec, name) in [(clips::H264_640X360, Codec::H264, "h264"), (clips::H265_640X360, Codec::H265, "hevc")] {
        // The clip three times over: 225 frames, a keyframe every 25.
        let one = from_annexb(&Bytes::from_static(raw), codec, 25);
        let frames: Vec<Frame> = (0..3u64)
            .flat_map(|k| {
                one.iter().map(move |f| Frame {
                    pts: f.pts + 90_000 * (1 + 3 * k),
                    dts: f.dts + 90_000 * (1 + 3 * k),
                    ..f.clone()
                })
            })
            .collect();
        for format in [Format::Ts, Format::Mp4] {
            let d = dir(&format!("hls-{name}-{format:?}"));
            let mut w = hls::Writer::new(format, 25, 2.0, None, "seg").with_start_ms(1_795_000_000_000);
            run_hls(&mut w, frames.clone(), &d);
            let text = std::fs::read_to_string(d.join("index.m3u8")).unwrap();
            assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
            assert_eq!(text.matches("#EXTINF:2.000,").count(), 4, "{text}");
            assert_eq!(w.playlist().entries.len(), 5, "9 s cut at keyframes after 2 s: 4×2 s + 1 s");
            assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2026-11-18T11:06:42.000Z"), "{text}");
            if format == Format::Mp4 {
                assert!(text.contains("#EXT-X-MAP:URI=\"seginit.mp4\""), "{text}");
            }
            assert_eq!(judge(&d.join("index.m3u8")), [(name.to_owned(), 225)], "{format:?}");
        }
    }
}

#[test]
fn a_live_hls_window_keeps_the_last_segments_and_deletes_the_rest() {
    let d = dir("hls-live");
    let one = from_annexb(&Bytes::from_static(clips::H264_640X360), Codec::H264, 25);
    let frames: Vec<Frame> = (0..4u64)
        .flat_map(|k| {
            one.iter().map(move |f| Frame { pts: f.pts + 270_000 * k, dts: f.dts + 270_000 * k, ..f.clone() })
        })
        .collect();
    let mut w = hls::Writer::new(Format::Ts, 25, 1.0, Some(3), "live");
    let outs = run_hls(&mut w, frames, &d);
    let deleted: Vec<&String> =
        outs.iter().filter_map(|o| if let Output::Delete(n) = o { Some(n) } else { None }).collect();
    assert_eq!(deleted.len(), 9, "12 one-second segments, 3 kept");
    assert_eq!(deleted[0], "live0.ts");
    let text = std::fs::read_to_string(d.join("index.m3u8")).unwrap();
    assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:9\n") && !text.contains("ENDLIST"), "{text}");
    let mut files: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["index.m3u8", "live10.ts", "live11.ts", "live9.ts"]);
    // A player joining now gets the three seconds the window holds (ffprobe
    // would wait for more on a live playlist: judge a closed copy of it).
    std::fs::write(d.join("closed.m3u8"), text + "#EXT-X-ENDLIST\n").unwrap();
    assert_eq!(judge(&d.join("closed.m3u8")), [("h264".to_owned(), 75)]);
}

#[test]
fn broken_input_is_an_error_that_says_where() {
    let frames = from_annexb(&Bytes::from_static(clips::H264_640X360), Codec::H264, 25);
    let mut sink = Sink::new(Format::Mp4, 25);
    let mut mp4 = Vec::new();
    for f in frames.clone() {
        sink.push(f, &mut mp4).unwrap();
    }
    sink.finish(&mut mp4).unwrap();
    // A box that claims more than the file has.
    let mut bad = mp4.clone();
    bad[3] = 0xff;
    bad[2] = 0xff;
    let e = demux::read(Input::Mp4, &Bytes::from(bad), 25).unwrap_err().to_string();
    assert!(e.starts_with("MP4 at byte 0: box 'ftyp'"), "{e}");
    // An FLV frame whose NAL length runs past its tag.
    let mut sink = Sink::new(Format::Flv, 25);
    let mut flv = Vec::new();
    for f in frames.clone() {
        sink.push(f, &mut flv).unwrap();
    }
    let tags = ivr_media::flv::read_tags(&flv).unwrap();
    let mut p = 13;
    for t in &tags[..3] {
        p += 15 + t.body.len();
    }
    // Tag 3 is the first frame: its first NAL length is at body offset 5.
    flv[p + 11 + 5] = 0x7f;
    let e = demux::read(Input::Flv, &Bytes::from(flv), 25).unwrap_err().to_string();
    assert_eq!(e, format!("FLV at byte {p}: a NAL unit length runs past the tag"));
    // TS with garbage in the middle: skipped, said, and the rest read.
    let mut ts = Vec::new();
    let mut m = ivr_media::ts::Muxer::new(Codec::H264).unwrap();
    for f in &frames {
        let mut f = f.clone();
        f.dts += 90_000;
        f.pts += 90_000;
        m.write(&f, &mut ts).unwrap();
    }
    ts.splice(188 * 40..188 * 40, [0x11u8; 100]);
    let r = demux::read(Input::Ts, &Bytes::from(ts), 25).unwrap();
    assert_eq!(r.skipped, [format!("100 bytes at byte {} lost sync", 188 * 40)]);
    assert!(r.frames.len() >= 74, "{}", r.frames.len());
    assert_eq!(
        demux::read(Input::Ts, &Bytes::from_static(&[0x47; 376]), 25).unwrap_err(),
        demux::DemuxError::NoVideo("MPEG-TS")
    );
}

fn run_hls(w: &mut hls::Writer, frames: Vec<Frame>, dir: &Path) -> Vec<Output> {
    let mut all = Vec::new();
    for f in frames {
        let o = w.push(f).unwrap();
        all.extend(o.clone());
        hls::apply(dir, "index.m3u8", o).unwrap();
    }
    let o = w.finish().unwrap();
    all.extend(o.clone());
    hls::apply(dir, "index.m3u8", o).unwrap();
    all
}
