//! The tolerant XML-RPC parser on arbitrary bytes: never a panic; whatever
//! it recovers, the strict writer writes and the parser reads back the
//! same, with no repair.
#![no_main]
use cvip::{parse, parse_analytics, parse_strict, parse_tolerant, write, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_analytics(data);
    // The strict pass never accepts what the tolerant parser would read
    // differently or need to repair.
    if let Some(m) = parse_strict(data) {
        let t = parse_tolerant(data).expect("strict accepted, tolerant refused");
        assert!(t.repairs.is_empty(), "strict accepted what needs repairs: {:?}", t.repairs);
        if !format!("{m:?}").contains("NaN") {
            assert_eq!(m, t.value);
        }
    }
    let Ok(p) = parse(data) else { return };
    // NaN never equals itself; skip those.
    let text = format!("{:?}", p.value);
    if text.contains("NaN") || text.contains("inf") {
        return;
    }
    let again = parse(write(&p.value).as_bytes()).expect("our own output parses");
    // A struct may repeat a member name (the seed does); that note is the
    // only one well-formed output can draw.
    assert!(again.repairs.iter().all(|r| r.what.contains("appears twice")), "{:?}", again.repairs);
    if let (Message::Call { method: a, .. }, Message::Call { method: b, .. }) = (&p.value, &again.value) {
        assert_eq!(a.trim(), b.trim());
    }
    assert_eq!(format!("{:?}", again.value), format!("{:?}", parse(write(&again.value).as_bytes()).unwrap().value));
});
