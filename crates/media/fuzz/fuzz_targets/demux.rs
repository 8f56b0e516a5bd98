//! Every remux reader on arbitrary bytes (MPEG-TS, FLV, MP4, raw Annex B)
//! and the RTP depacketizer (the bytes as an RFC 4571 stream): an error or
//! frames, never a panic; whatever is read goes through the sinks (TS, FLV,
//! MP4) and the HLS writer without a panic. (Captured DVRIP media is read
//! by the edge crate; the dvrip crate's own `demux` target covers it.)
#![no_main]
use bytes::Bytes;
use ivr_media::demux::{read, Input};
use ivr_media::sink::{Format, Sink};
use ivr_media::{hls, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for codec in [Codec::H264, Codec::H265] {
        let mut r = ivr_media::rtp::Rfc4571::default();
        let mut d = ivr_media::rtp::Depacketizer::new(codec);
        r.feed(data);
        while let Some(p) = r.next_packet() {
            d.push(&p);
        }
        d.push(data);
        while let Some(f) = d.next_frame() {
            assert!(f.data.starts_with(&[0, 0, 0, 1]));
        }
    }
    let b = Bytes::copy_from_slice(data);
    let _ = Input::detect(std::path::Path::new("x"), data);
    for kind in [Input::Ts, Input::Flv, Input::Mp4, Input::AnnexB(Codec::H264), Input::AnnexB(Codec::H265)] {
        let Ok(mut d) = read(kind, &b, 25) else { continue };
        d.rebase(90_000);
        for format in [Format::Ts, Format::Flv, Format::Mp4] {
            let mut s = Sink::new(format, 25);
            let mut out = Vec::new();
            for f in &d.frames {
                if s.push(f.clone(), &mut out).is_err() {
                    break;
                }
            }
            let _ = s.finish(&mut out);
        }
        let mut w = hls::Writer::new(Format::Ts, 25, 1.0, Some(3), "s");
        for f in &d.frames {
            if w.push(f.clone()).is_err() {
                break;
            }
        }
        let _ = w.finish();
    }
});
