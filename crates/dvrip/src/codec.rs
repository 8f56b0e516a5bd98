//! A tokio-util codec for DVRIP packets: reassembles multi-packet control
//! replies, resynchronises after garbage, caps sizes.

use crate::header::{hex_preview, Header, HEADER_LEN, MAGIC};
use crate::ids;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on one packet's payload and on a reassembled message.
pub const DEFAULT_MAX_LEN: usize = 1 << 20;
/// The vendor's packet size: larger JSON bodies are split into fragments.
pub const VENDOR_FRAGMENT: usize = 16 * 1024;

/// A packet: header plus payload (for reassembled messages, the whole
/// payload, with `header.len` its full length and fragment bytes zeroed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub header: Header,
    pub payload: Bytes,
}

impl Packet {
    pub fn new(header: Header, payload: Bytes) -> Self {
        let mut header = header;
        header.len = payload.len() as u32;
        Packet { header, payload }
    }

    pub fn msg_id(&self) -> u16 {
        self.header.msg_id
    }

    /// Splits a control message into vendor-sized fragments (bytes 12/13 =
    /// total/current); a small one stays a single packet with both zero.
    pub fn fragmented(header: Header, payload: Bytes, max: usize) -> Vec<Packet> {
        if payload.len() <= max || max == 0 {
            return vec![Packet::new(header, payload)];
        }
        let total = payload.len().div_ceil(max);
        // More than 255 fragments cannot be expressed; such bodies go whole.
        if total > u8::MAX as usize {
            return vec![Packet::new(header, payload)];
        }
        (0..total)
            .map(|i| {
                let mut h = header;
                h.byte12 = total as u8;
                h.byte13 = i as u8;
                let end = ((i + 1) * max).min(payload.len());
                Packet::new(h, payload.slice(i * max..end))
            })
            .collect()
    }
}

/// Why bytes were skipped while resynchronising.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub bytes: usize,
    pub reason: &'static str,
    pub preview: String,
}

#[derive(Debug)]
struct Partial {
    header: Header,
    expected: u8,
    next: u8,
    buf: BytesMut,
}

/// The codec. Decoding never fails on content: bytes that cannot start a
/// plausible header are skipped (and reported by [`DvripCodec::take_skipped`]
/// and a `tracing` warning) until one does.
#[derive(Debug)]
pub struct DvripCodec {
    max_len: usize,
    partial: Option<Partial>,
    skipped: Vec<Skipped>,
    /// Reassemble fragmented control messages (on by default).
    pub reassemble: bool,
}

impl Default for DvripCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LEN)
    }
}

/// Whether `h` can be a real header: magic, version 0/1, byte 3 zero, length
/// within the cap.
fn plausible(b: &[u8], max_len: usize) -> Result<Header, &'static str> {
    if b[0] != MAGIC {
        return Err("no 0xFF magic");
    }
    if b[1] > 1 {
        return Err("version byte is neither 0 nor 1");
    }
    if b[3] != 0 {
        return Err("reserved byte 3 is not zero");
    }
    let h = Header::parse(b[..HEADER_LEN].try_into().expect("20 bytes")).ok_or("no 0xFF magic")?;
    if h.len as usize > max_len {
        return Err("length beyond the cap");
    }
    Ok(h)
}

impl DvripCodec {
    pub fn new(max_len: usize) -> Self {
        DvripCodec { max_len, partial: None, skipped: Vec::new(), reassemble: true }
    }

    /// Reports of garbage skipped since the last call.
    pub fn take_skipped(&mut self) -> Vec<Skipped> {
        std::mem::take(&mut self.skipped)
    }

    fn skip(&mut self, src: &mut BytesMut, reason: &'static str) {
        // Drop at least one byte, then up to the next candidate magic.
        let n = src[1..].iter().position(|&b| b == MAGIC).map_or(src.len(), |p| p + 1);
        let preview = hex_preview(&src[..n], 24);
        tracing::warn!(bytes = n, reason, %preview, "dvrip: skipping bytes that do not start a packet");
        self.skipped.push(Skipped { bytes: n, reason, preview });
        src.advance(n);
    }

    /// One raw packet, or `None` if more bytes are needed.
    fn decode_packet(&mut self, src: &mut BytesMut) -> Option<Packet> {
        loop {
            if src.is_empty() {
                return None;
            }
            if src[0] != MAGIC {
                self.skip(src, "no 0xFF magic");
                continue;
            }
            if src.len() < HEADER_LEN {
                // Check what we can already see, so a stream of garbage
                // shorter than a header does not stall.
                if src.len() >= 2 && src[1] > 1 {
                    self.skip(src, "version byte is neither 0 nor 1");
                    continue;
                }
                if src.len() >= 4 && src[3] != 0 {
                    self.skip(src, "reserved byte 3 is not zero");
                    continue;
                }
                return None;
            }
            match plausible(src, self.max_len) {
                Err(reason) => {
                    self.skip(src, reason);
                    continue;
                }
                Ok(h) => {
                    let total = HEADER_LEN + h.len as usize;
                    if src.len() < total {
                        src.reserve(total - src.len());
                        return None;
                    }
                    src.advance(HEADER_LEN);
                    let payload = src.split_to(h.len as usize).freeze();
                    return Some(Packet { header: h, payload });
                }
            }
        }
    }
}

/// Errors of the codec: only I/O (decoding never rejects content).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("message of {len} bytes exceeds the cap of {max} (message id {msg_id})")]
    TooLong { len: usize, max: usize, msg_id: u16 },
}

impl Decoder for DvripCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        loop {
            let Some(p) = self.decode_packet(src) else { return Ok(None) };
            let h = p.header;
            let fragmented = self.reassemble && h.byte12 > 1 && !ids::is_stream(h.msg_id);
            if !fragmented {
                if self.partial.take().is_some() {
                    tracing::warn!(msg_id = h.msg_id, "dvrip: fragmented message interrupted; dropped");
                }
                return Ok(Some(p));
            }
            // A fragment: start, continue or restart a reassembly.
            let restart = match &self.partial {
                None => true,
                Some(part) => part.header.msg_id != h.msg_id || part.expected != h.byte12 || part.next != h.byte13,
            };
            if restart {
                if self.partial.is_some() {
                    tracing::warn!(msg_id = h.msg_id, "dvrip: fragment out of order; restarting reassembly");
                }
                if h.byte13 != 0 {
                    // A middle fragment with no start: nothing to attach it to.
                    self.partial = None;
                    self.skipped.push(Skipped {
                        bytes: HEADER_LEN + p.payload.len(),
                        reason: "fragment without its first part",
                        preview: hex_preview(&h.to_bytes(), 20),
                    });
                    continue;
                }
                self.partial = Some(Partial { header: h, expected: h.byte12, next: 0, buf: BytesMut::new() });
            }
            let part = self.partial.as_mut().expect("set above");
            if part.buf.len() + p.payload.len() > self.max_len {
                let len = part.buf.len() + p.payload.len();
                self.partial = None;
                return Err(CodecError::TooLong { len, max: self.max_len, msg_id: h.msg_id });
            }
            part.buf.put_slice(&p.payload);
            part.next += 1;
            if part.next == part.expected {
                let part = self.partial.take().expect("set above");
                let mut header = part.header;
                header.byte12 = 0;
                header.byte13 = 0;
                header.seq = h.seq;
                header.len = part.buf.len() as u32;
                return Ok(Some(Packet { header, payload: part.buf.freeze() }));
            }
        }
    }
}

impl Encoder<Packet> for DvripCodec {
    type Error = CodecError;

    fn encode(&mut self, p: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut h = p.header;
        h.len = p.payload.len() as u32;
        dst.reserve(HEADER_LEN + p.payload.len());
        h.encode(dst);
        dst.put_slice(&p.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(id: u16, seq: u32, payload: &[u8]) -> Packet {
        Packet::new(Header::new(id, 7, seq, payload.len()), Bytes::copy_from_slice(payload))
    }

    fn encode_all(ps: &[Packet]) -> BytesMut {
        let mut c = DvripCodec::default();
        let mut out = BytesMut::new();
        for p in ps {
            c.encode(p.clone(), &mut out).unwrap();
        }
        out
    }

    fn decode_all(c: &mut DvripCodec, buf: &mut BytesMut) -> Vec<Packet> {
        let mut v = Vec::new();
        while let Some(p) = c.decode(buf).unwrap() {
            v.push(p);
        }
        v
    }

    #[test]
    fn resynchronises_after_garbage() {
        let mut buf = BytesMut::from(&b"garbage\xff\x07junk"[..]);
        buf.extend_from_slice(&encode_all(&[pkt(1043, 3, b"{\"Ret\":100}\n\0")]));
        let mut c = DvripCodec::default();
        let got = decode_all(&mut c, &mut buf);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header.msg_id, 1043);
        let skipped: usize = c.take_skipped().iter().map(|s| s.bytes).sum();
        assert_eq!(skipped, 13);
    }

    #[test]
    fn oversized_length_is_treated_as_corruption() {
        let mut h = Header::new(1043, 0, 0, 0);
        h.len = 0x7fff_ffff;
        let mut buf = BytesMut::new();
        h.encode(&mut buf);
        buf.extend_from_slice(&encode_all(&[pkt(1007, 1, b"{}")]));
        let mut c = DvripCodec::default();
        let got = decode_all(&mut c, &mut buf);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header.msg_id, 1007);
        assert!(c.take_skipped().iter().any(|s| s.reason == "length beyond the cap"));
    }

    #[test]
    fn reassembles_fragmented_control_reply() {
        let body: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let frags = Packet::fragmented(Header::new(1043, 1, 9, 0), Bytes::from(body.clone()), VENDOR_FRAGMENT);
        assert_eq!(frags.len(), 3);
        let mut buf = encode_all(&frags);
        let mut c = DvripCodec::default();
        let got = decode_all(&mut c, &mut buf);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload.as_ref(), body.as_slice());
        assert_eq!(got[0].header.len as usize, body.len());
    }

    #[test]
    fn media_packets_are_not_reassembled() {
        // 1412 with byte12 = channel 3 and byte13 = 0: not fragments.
        let mut h = Header::new(ids::OPMONITOR_DATA, 1, 0, 0);
        h.byte12 = 3;
        let mut buf = encode_all(&[Packet::new(h, Bytes::from_static(b"\x00\x00\x01\xfd"))]);
        let got = decode_all(&mut DvripCodec::default(), &mut buf);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header.channel(), 3);
    }

    #[test]
    fn reassembled_message_over_the_cap_is_an_error() {
        let frags = Packet::fragmented(Header::new(1043, 1, 9, 0), Bytes::from(vec![b'x'; 3000]), 1000);
        let mut buf = encode_all(&frags);
        let mut c = DvripCodec::new(2000);
        let err = match c.decode(&mut buf) {
            Ok(Some(_)) => panic!("should not reassemble"),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        assert!(matches!(err, Some(CodecError::TooLong { msg_id: 1043, .. })));
    }

    proptest! {
        /// Splitting the byte stream at arbitrary points yields the same packets.
        #[test]
        fn split_anywhere(cuts in proptest::collection::vec(0usize..2000, 0..8), sizes in proptest::collection::vec(0usize..600, 1..6)) {
            let ps: Vec<Packet> = sizes.iter().enumerate().map(|(i, &n)| pkt(1043 + 2 * i as u16, i as u32, &vec![b'z'; n])).collect();
            let whole = encode_all(&ps);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (whole.len() + 1)).collect();
            cuts.sort_unstable();
            let mut c = DvripCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([whole.len()]) {
                buf.extend_from_slice(&whole[last..cut]);
                last = cut;
                got.extend(decode_all(&mut c, &mut buf));
            }
            prop_assert_eq!(got, ps);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut c = DvripCodec::new(4096);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = c.decode(&mut buf) {}
        }
    }
}
