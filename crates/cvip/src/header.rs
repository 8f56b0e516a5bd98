//! The 9-byte CVIP header and a tokio-util codec for whole packets.
//!
//! The seed does not state a byte order. ivr writes big-endian and reads
//! the version field as a byte-order mark: `02 01` is big-endian, `01 02`
//! little-endian (docs/cvip.md).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub const VERSION: u16 = 0x0201;
pub const HEADER_LEN: usize = 9;
/// Largest packet accepted (image entities reach ~1 MiB per packet).
pub const MAX_PACKET: usize = 8 << 20;

/// Message types. The seed only names the ping; the data channel types are
/// ivr's decision (docs/cvip.md).
pub mod msg_type {
    pub const XML: u8 = 0x00;
    pub const PING: u8 = 0x01;
    pub const DATA_OPEN: u8 = 0x10;
    pub const DATA: u8 = 0x11;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    Big,
    Little,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub order: ByteOrder,
    pub msg_type: u8,
    /// Bit 15 of the transaction field.
    pub response: bool,
    /// Bits 0–14. 0 is reserved for pushed events.
    pub transaction: u16,
    /// Whole packet, header included.
    pub size: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a CVIPv2 header: version bytes {0:02x} {1:02x} (expected 02 01 or 01 02)")]
    Version(u8, u8),
    #[error("packet size {0} is smaller than the 9-byte header")]
    TooSmall(u32),
    #[error("packet size {0} exceeds the {MAX_PACKET}-byte limit")]
    TooLarge(u32),
}

impl Header {
    pub fn new(msg_type: u8, response: bool, transaction: u16, body_len: usize) -> Header {
        Header {
            order: ByteOrder::Big,
            msg_type,
            response,
            transaction: transaction & 0x7fff,
            size: (HEADER_LEN + body_len) as u32,
        }
    }

    pub fn body_len(&self) -> usize {
        self.size as usize - HEADER_LEN
    }

    /// Parses the first 9 bytes of `b` (which must hold at least 9).
    pub fn parse(b: &[u8]) -> Result<Header, HeaderError> {
        let order = match (b[0], b[1]) {
            (0x02, 0x01) => ByteOrder::Big,
            (0x01, 0x02) => ByteOrder::Little,
            (x, y) => return Err(HeaderError::Version(x, y)),
        };
        let (txn, size) = match order {
            ByteOrder::Big => (u16::from_be_bytes([b[3], b[4]]), u32::from_be_bytes([b[5], b[6], b[7], b[8]])),
            ByteOrder::Little => (u16::from_le_bytes([b[3], b[4]]), u32::from_le_bytes([b[5], b[6], b[7], b[8]])),
        };
        if (size as usize) < HEADER_LEN {
            return Err(HeaderError::TooSmall(size));
        }
        if size as usize > MAX_PACKET {
            return Err(HeaderError::TooLarge(size));
        }
        Ok(Header { order, msg_type: b[2], response: txn & 0x8000 != 0, transaction: txn & 0x7fff, size })
    }

    pub fn write(&self, out: &mut impl BufMut) {
        let txn = self.transaction & 0x7fff | if self.response { 0x8000 } else { 0 };
        match self.order {
            ByteOrder::Big => {
                out.put_u16(VERSION);
                out.put_u8(self.msg_type);
                out.put_u16(txn);
                out.put_u32(self.size);
            }
            ByteOrder::Little => {
                out.put_u16_le(VERSION);
                out.put_u8(self.msg_type);
                out.put_u16_le(txn);
                out.put_u32_le(self.size);
            }
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.write(&mut &mut b[..]);
        b
    }
}

/// A header and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub header: Header,
    pub body: Bytes,
}

impl Packet {
    pub fn new(msg_type: u8, response: bool, transaction: u16, body: impl Into<Bytes>) -> Packet {
        let body = body.into();
        Packet { header: Header::new(msg_type, response, transaction, body.len()), body }
    }

    /// Replies in the byte order the peer used.
    pub fn reply_to(req: &Header, body: impl Into<Bytes>) -> Packet {
        let mut p = Packet::new(req.msg_type, true, req.transaction, body);
        p.header.order = req.order;
        p
    }
}

/// Frames a byte stream into packets. A bad version or size is an error
/// (the stream cannot be resynchronised); the connection should close.
#[derive(Default, Debug)]
pub struct PacketCodec {
    /// Byte order of the last packet read: replies and pushes follow it.
    pub peer_order: Option<ByteOrder>,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if src.len() < HEADER_LEN {
            src.reserve(HEADER_LEN);
            return Ok(None);
        }
        let h = Header::parse(&src[..HEADER_LEN])?;
        let size = h.size as usize;
        if src.len() < size {
            src.reserve(size - src.len());
            return Ok(None);
        }
        self.peer_order = Some(h.order);
        let mut whole = src.split_to(size);
        whole.advance(HEADER_LEN);
        Ok(Some(Packet { header: h, body: whole.freeze() }))
    }
}

impl Encoder<Packet> for PacketCodec {
    type Error = CodecError;

    fn encode(&mut self, p: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        if p.header.size as usize > MAX_PACKET {
            return Err(HeaderError::TooLarge(p.header.size).into());
        }
        dst.reserve(p.header.size as usize);
        p.header.write(dst);
        dst.extend_from_slice(&p.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_big_endian() {
        // The seed's example: a request of 40 bytes, transaction 1.
        let h = Header::new(msg_type::XML, false, 1, 31);
        assert_eq!(h.to_bytes(), [0x02, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x28]);
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn little_endian_detected_from_version() {
        let b = [0x01, 0x02, 0x00, 0x05, 0x80, 0x28, 0x00, 0x00, 0x00];
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.order, ByteOrder::Little);
        assert!(h.response);
        assert_eq!(h.transaction, 5);
        assert_eq!(h.size, 40);
        assert_eq!(h.to_bytes(), b, "written back in the order it came");
    }

    #[test]
    fn response_bit_and_15_bit_transactions() {
        let h = Header::new(msg_type::XML, true, 0x7fff, 0);
        let b = h.to_bytes();
        assert_eq!(&b[3..5], &[0xff, 0xff]);
        let back = Header::parse(&b).unwrap();
        assert!(back.response);
        assert_eq!(back.transaction, 0x7fff);
    }

    #[test]
    fn bad_headers_are_named() {
        assert_eq!(Header::parse(&[0x47, 0x45, 0, 0, 0, 0, 0, 0, 9]), Err(HeaderError::Version(0x47, 0x45)));
        assert_eq!(Header::parse(&[2, 1, 0, 0, 0, 0, 0, 0, 8]), Err(HeaderError::TooSmall(8)));
        assert!(matches!(Header::parse(&[2, 1, 0, 0, 0, 0x7f, 0, 0, 0]), Err(HeaderError::TooLarge(_))));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), step in 1usize..20) {
            let mut c = PacketCodec::default();
            let mut buf = BytesMut::new();
            for chunk in b.chunks(step) {
                buf.extend_from_slice(chunk);
                loop {
                    match c.decode(&mut buf) {
                        Ok(Some(p)) => proptest::prop_assert_eq!(p.body.len() + HEADER_LEN, p.header.size as usize),
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
            }
        }
    }

    #[test]
    fn codec_splits_and_joins() {
        let mut c = PacketCodec::default();
        let mut buf = BytesMut::new();
        c.encode(Packet::new(0, false, 7, &b"<a/>"[..]), &mut buf).unwrap();
        c.encode(Packet::new(0, true, 8, &b""[..]), &mut buf).unwrap();
        let mut part = buf.split_to(5);
        assert!(c.decode(&mut part).unwrap().is_none());
        part.unsplit(buf);
        let p1 = c.decode(&mut part).unwrap().unwrap();
        assert_eq!((p1.header.transaction, &p1.body[..]), (7, &b"<a/>"[..]));
        let p2 = c.decode(&mut part).unwrap().unwrap();
        assert!(p2.header.response && p2.body.is_empty());
        assert!(part.is_empty());
    }
}
