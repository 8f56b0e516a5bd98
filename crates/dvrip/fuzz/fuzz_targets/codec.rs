//! The packet codec on arbitrary bytes, fed in arbitrary chunks: it must
//! never panic, and every packet it yields must respect the cap.
#![no_main]
use bytes::BytesMut;
use dvrip::DvripCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut c = DvripCodec::new(64 * 1024);
    let mut buf = BytesMut::new();
    let step = (split as usize % 61) + 1;
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match c.decode(&mut buf) {
                Ok(Some(p)) => assert!(p.payload.len() <= 64 * 1024),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
