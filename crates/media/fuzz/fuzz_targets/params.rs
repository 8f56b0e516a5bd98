//! The SPS readers on arbitrary bytes: an error or a sane picture size,
//! never a panic.
#![no_main]
use ivr_media::params::{parse_h264_sps, parse_h265_sps};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for r in [parse_h264_sps(data), parse_h265_sps(data)] {
        if let Ok(s) = r {
            assert!(s.width > 0 && s.width <= 16384 && s.height > 0 && s.height <= 16384);
            let _ = s.codec_string();
        }
    }
});
