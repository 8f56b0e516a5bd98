//! Access-unit splitting and the muxers on arbitrary bytes: no panic;
//! every byte after the first start code lands in exactly one unit; the TS
//! output is whole 188-byte packets.
#![no_main]
use bytes::Bytes;
use ivr_media::annexb::{access_units, nal_starts};
use ivr_media::{fmp4, ts, Codec, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    for codec in [Codec::H264, Codec::H265] {
        let units = access_units(&b, codec);
        let first = nal_starts(&b).first().map(|x| x.0).unwrap_or(b.len());
        assert_eq!(units.iter().map(|u| u.data.len()).sum::<usize>(), b.len() - first);
        let frames: Vec<Frame> = units
            .iter()
            .enumerate()
            .map(|(i, u)| Frame { codec, keyframe: u.keyframe, pts: i as u64 * 3600, dts: i as u64 * 3600, data: u.data.clone() })
            .collect();
        let mut m = ts::Muxer::new(codec).unwrap();
        let mut out = Vec::new();
        for f in &frames {
            m.write(f, &mut out).unwrap();
        }
        assert_eq!(out.len() % ts::PACKET, 0);
        if let Ok((sps, params)) = fmp4::describe(codec, &frames) {
            let _ = fmp4::init_segment(&sps, &params);
        }
        let _ = fmp4::Fragmenter::new(codec, 25).fragment(&frames, None);
    }
});
