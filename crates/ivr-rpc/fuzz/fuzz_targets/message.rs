//! Any text frame: parsing it, feeding it to both kinds of peer and
//! validating its params against the catalogue never panics, and whatever
//! parses re-encodes to something that parses the same.
#![no_main]
use ivr_rpc::catalogue::{IvcRequest, IvtEvent, IvtRequest};
use ivr_rpc::{Message, Peer};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = Message::parse(text) {
        assert_eq!(Message::parse(&m.to_text()).as_ref(), Ok(&m));
        match &m {
            Message::Request { method, params, .. } => {
                let _ = IvcRequest::parse(method, params.as_ref());
                let _ = IvtRequest::parse(method, params.as_ref());
            }
            Message::Event { name, params } => {
                let _ = IvtEvent::parse(name, params.as_ref());
            }
            _ => {}
        }
    }
    let now = Instant::now();
    let _ = Peer::ivc().receive(text, now);
    let _ = Peer::ivt().receive(text, now);
});
