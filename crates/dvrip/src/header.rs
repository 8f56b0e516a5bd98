//! The 20-byte DVRIP packet header (integers little-endian).

use bytes::BufMut;

pub const HEADER_LEN: usize = 20;
pub const MAGIC: u8 = 0xFF;

/// One packet header. Bytes 12 and 13 mean "total packets / current packet"
/// on control messages and "channel / end flag" on media messages; both
/// readings are offered as accessors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// Cameras reply with 1; clients send 0 or 1.
    pub version: u8,
    /// Byte 2: 0; some devices put 1 on sub-stream media, 0xFE on IP-set packets.
    pub reserved: u8,
    pub session: u32,
    pub seq: u32,
    /// Byte 12: total packets (0 or 1 = single) or media channel.
    pub byte12: u8,
    /// Byte 13: current packet (from 0) or media end flag.
    pub byte13: u8,
    pub msg_id: u16,
    /// Payload length, header excluded, trailer included.
    pub len: u32,
}

impl Header {
    /// A header as devices send it (version 1), for a payload of `len` bytes.
    pub fn new(msg_id: u16, session: u32, seq: u32, len: usize) -> Self {
        Header { version: 1, msg_id, session, seq, len: len as u32, ..Header::default() }
    }

    pub fn fragments(&self) -> u8 {
        self.byte12
    }
    pub fn fragment(&self) -> u8 {
        self.byte13
    }
    pub fn channel(&self) -> u8 {
        self.byte12
    }
    /// The end flag of media/download/upgrade packets.
    pub fn end(&self) -> bool {
        self.byte13 != 0
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(MAGIC);
        dst.put_u8(self.version);
        dst.put_u8(self.reserved);
        dst.put_u8(0);
        dst.put_u32_le(self.session);
        dst.put_u32_le(self.seq);
        dst.put_u8(self.byte12);
        dst.put_u8(self.byte13);
        dst.put_u16_le(self.msg_id);
        dst.put_u32_le(self.len);
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.encode(&mut &mut b[..]);
        b
    }

    /// Parses 20 bytes. Only the magic is checked here; the codec decides
    /// what else makes a header plausible.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Option<Header> {
        if b[0] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Header {
            version: b[1],
            reserved: b[2],
            session: u32_at(4),
            seq: u32_at(8),
            byte12: b[12],
            byte13: b[13],
            msg_id: u16::from_le_bytes([b[14], b[15]]),
            len: u32_at(16),
        })
    }
}

/// Up to `max` bytes as hex, for error messages and logs.
pub fn hex_preview(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes.iter().take(max).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > max {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn real_login_reply_header() {
        let b = unhex("ff0100001b000000f80300000000e90380000000");
        let h = Header::parse(b.as_slice().try_into().unwrap()).unwrap();
        assert_eq!((h.version, h.session, h.seq, h.msg_id, h.len), (1, 0x1b, 0x3f8, 1001, 0x80));
        assert_eq!(h.to_bytes().to_vec(), b);
    }

    #[test]
    fn generic_packet_vector() {
        let b = unhex("ff010000cdab0000fade0000123456780500000068656c6c6f");
        let h = Header::parse(b[..20].try_into().unwrap()).unwrap();
        assert_eq!(h.session, 0xabcd);
        assert_eq!(h.seq, 0xdefa);
        assert_eq!((h.byte12, h.byte13), (0x12, 0x34));
        assert_eq!(h.msg_id, 0x7856);
        assert_eq!(h.len, 5);
        assert_eq!(&b[20..], b"hello");
    }

    #[test]
    fn alarm_push_header() {
        let b = unhex("ff01000000000000000000000000e405c0000000");
        let h = Header::parse(b.as_slice().try_into().unwrap()).unwrap();
        assert_eq!((h.msg_id, h.len, h.session), (crate::ids::ALARMCENTER_MSG_REQ, 192, 0));
    }
}
