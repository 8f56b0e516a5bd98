//! The packet codec on arbitrary bytes fed in arbitrary chunks: never a
//! panic, every packet within the cap, its body the size its header says.
#![no_main]
use bytes::BytesMut;
use cvip::{PacketCodec, HEADER_LEN, MAX_PACKET};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut c = PacketCodec::default();
    let mut buf = BytesMut::new();
    let step = (split as usize % 61) + 1;
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match c.decode(&mut buf) {
                Ok(Some(p)) => {
                    assert!(p.header.size as usize <= MAX_PACKET);
                    assert_eq!(p.body.len() + HEADER_LEN, p.header.size as usize);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
