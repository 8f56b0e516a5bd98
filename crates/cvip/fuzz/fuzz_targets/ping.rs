//! Ping request and response decoders on arbitrary bytes.
#![no_main]
use cvip::ping::{PingRequest, PingResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, r)) = PingRequest::decode(data) {
        assert_eq!(PingRequest::decode(&r.encode(h.transaction)).unwrap().1, r);
    }
    let _ = PingResponse::decode(data);
});
