//! The media demuxer on arbitrary bytes: no panic, no frame beyond the cap,
//! and every byte fed is either returned, skipped or still pending.
#![no_main]
use dvrip::media::Demuxer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Demuxer::new().with_max_frame(32 * 1024);
    let mut out = 0usize;
    for chunk in data.chunks(97) {
        d.feed(chunk);
        while let Some(f) = d.next_frame() {
            assert!(f.payload.len() <= 32 * 1024);
            out += f.payload.len();
        }
    }
    let skipped: usize = d.take_resyncs().iter().map(|r| r.bytes).sum();
    assert!(out + skipped + d.pending() <= data.len());
    let _ = dvrip::media::snapshot_jpeg(bytes::Bytes::copy_from_slice(data));
});
