//! RTP in: H.264 (RFC 6184) and H.265 (RFC 7798) payloads back into Annex B
//! access units, and the RFC 4571 framing of RTP over TCP. Sans-IO: feed
//! packets (or TCP bytes), take frames.
//!
//! What is handled: single NAL unit packets, aggregation packets (STAP-A,
//! H.265 AP), fragmentation units (FU-A, H.265 FU). An access unit ends
//! with the marker bit or when the timestamp changes. A lost packet (a gap
//! in the sequence numbers) drops the access unit it belongs to and every
//! frame until the next keyframe, counted, so a decoder never sees a
//! broken picture. Timestamps are unwrapped from 32 bits to a 90 kHz
//! timeline starting at 0. Left out: STAP-B/MTAP, DONL (sprop-max-don-diff
//! > 0), PACI.

use crate::{Codec, Frame};
use bytes::{Bytes, BytesMut};

/// Why a packet was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    #[error("RTP payload type {0}: unsupported NAL unit type {1}")]
    NalType(u8, u8),
    #[error("RTP fragmentation unit without its start")]
    Fragment,
}

/// Depacketizer state for one stream.
#[derive(Debug)]
pub struct Depacketizer {
    codec: Codec,
    au: BytesMut,
    au_ts: Option<u32>,
    /// A fragmented NAL unit being put together.
    fu: Option<BytesMut>,
    next_seq: Option<u16>,
    /// Drop until the next keyframe (start, or after a loss).
    broken: bool,
    unwrap: Option<(u32, u64)>,
    out: std::collections::VecDeque<Frame>,
    /// Packets missing from the sequence.
    pub lost: u64,
    /// Access units dropped (lost packets, waiting for a keyframe).
    pub dropped: u64,
    /// Packets that could not be read (counted; see `last_error`).
    pub bad: u64,
    pub last_error: Option<RtpError>,
}

impl Depacketizer {
    pub fn new(codec: Codec) -> Depacketizer {
        Depacketizer {
            codec,
            au: BytesMut::new(),
            au_ts: None,
            fu: None,
            next_seq: None,
            broken: true,
            unwrap: None,
            out: Default::default(),
            lost: 0,
            dropped: 0,
            bad: 0,
            last_error: None,
        }
    }

    /// The next complete access unit.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// One RTP packet.
    pub fn push(&mut self, pkt: &[u8]) {
        if let Err(e) = self.packet(pkt) {
            self.bad += 1;
            self.last_error = Some(e);
        }
    }

    fn packet(&mut self, p: &[u8]) -> Result<(), RtpError> {
        if p.len() < 12 {
            return Err(RtpError::Short(p.len()));
        }
        if p[0] >> 6 != 2 {
            return Err(RtpError::Version(p[0] >> 6));
        }
        let padding = p[0] & 0x20 != 0;
        let extension = p[0] & 0x10 != 0;
        let csrc = (p[0] & 0x0f) as usize;
        let marker = p[1] & 0x80 != 0;
        let pt = p[1] & 0x7f;
        let seq = u16::from_be_bytes([p[2], p[3]]);
        let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let mut start = 12 + 4 * csrc;
        if extension {
            let ext = p.get(start + 2..start + 4).ok_or(RtpError::Short(p.len()))?;
            start += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
        }
        let mut end = p.len();
        if padding {
            end = end.saturating_sub(*p.last().unwrap_or(&0) as usize);
        }
        let payload = p.get(start..end).ok_or(RtpError::Short(p.len()))?;
        if let Some(want) = self.next_seq {
            if seq != want {
                let gap = seq.wrapping_sub(want);
                if gap < 0x8000 {
                    // Packets lost: what is being built is broken.
                    self.lost += gap as u64;
                    self.au.clear();
                    self.fu = None;
                    self.broken = true;
                } else {
                    return Ok(()); // late or duplicate: ignore
                }
            }
        }
        self.next_seq = Some(seq.wrapping_add(1));
        if self.au_ts.is_some_and(|t| t != ts) {
            self.finish();
        }
        self.au_ts = Some(ts);
        self.payload(pt, payload)?;
        if marker {
            self.finish();
        }
        Ok(())
    }

    fn nal(&mut self, nal: &[u8]) {
        if !nal.is_empty() {
            self.au.extend_from_slice(&[0, 0, 0, 1]);
            self.au.extend_from_slice(nal);
        }
    }

    fn payload(&mut self, pt: u8, b: &[u8]) -> Result<(), RtpError> {
        let Some(&first) = b.first() else { return Ok(()) };
        match self.codec {
            Codec::H265 => {
                if b.len() < 2 {
                    return Err(RtpError::Short(b.len()));
                }
                match (first >> 1) & 0x3f {
                    48 => self.aggregate(&b[2..]),
                    49 => {
                        let fu = *b.get(2).ok_or(RtpError::Short(b.len()))?;
                        let ty = fu & 0x3f;
                        let hdr = [(b[0] & 0x81) | (ty << 1), b[1]];
                        self.fragment(fu & 0x80 != 0, fu & 0x40 != 0, &hdr, &b[3..])
                    }
                    50 => Err(RtpError::NalType(pt, 50)),
                    _ => {
                        self.nal(b);
                        Ok(())
                    }
                }
            }
            _ => match first & 0x1f {
                24 => self.aggregate(&b[1..]),
                28 => {
                    let fu = *b.get(1).ok_or(RtpError::Short(b.len()))?;
                    let hdr = [(first & 0xe0) | (fu & 0x1f)];
                    self.fragment(fu & 0x80 != 0, fu & 0x40 != 0, &hdr, &b[2..])
                }
                t @ (25..=27 | 29) => Err(RtpError::NalType(pt, t)),
                _ => {
                    self.nal(b);
                    Ok(())
                }
            },
        }
    }

    /// STAP-A / AP: 16-bit sizes, each followed by a NAL unit.
    fn aggregate(&mut self, mut b: &[u8]) -> Result<(), RtpError> {
        while b.len() >= 2 {
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            let nal = b.get(2..2 + n).ok_or(RtpError::Short(b.len()))?;
            self.nal(nal);
            b = &b[2 + n..];
        }
        Ok(())
    }

    fn fragment(&mut self, start: bool, end: bool, hdr: &[u8], body: &[u8]) -> Result<(), RtpError> {
        if start {
            let mut f = BytesMut::with_capacity(hdr.len() + body.len() * 4);
            f.extend_from_slice(hdr);
            f.extend_from_slice(body);
            self.fu = Some(f);
        } else {
            let Some(f) = self.fu.as_mut() else {
                self.broken = true;
                return Err(RtpError::Fragment);
            };
            f.extend_from_slice(body);
        }
        if end {
            if let Some(f) = self.fu.take() {
                self.nal(&f);
            }
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.fu = None;
        let Some(ts) = self.au_ts.take() else { return };
        if self.au.is_empty() {
            return;
        }
        let data: Bytes = self.au.split().freeze();
        let keyframe = crate::annexb::is_keyframe(self.codec, &data);
        if self.broken && !keyframe {
            self.dropped += 1;
            return;
        }
        self.broken = false;
        let t = match self.unwrap {
            None => {
                self.unwrap = Some((ts, 0));
                0
            }
            Some((last, at)) => {
                // Signed difference: a camera may step back a little.
                let d = ts.wrapping_sub(last) as i32 as i64;
                let t = (at as i64 + d).max(0) as u64;
                self.unwrap = Some((ts, t));
                t
            }
        };
        self.out.push_back(Frame { codec: self.codec, keyframe, pts: t, dts: t, data });
    }
}

/// RFC 4571: RTP packets over a byte stream, each behind a 16-bit length.
#[derive(Debug, Default)]
pub struct Rfc4571 {
    buf: BytesMut,
}

impl Rfc4571 {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet.
    pub fn next_packet(&mut self) -> Option<Bytes> {
        if self.buf.len() < 2 {
            return None;
        }
        let n = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        if self.buf.len() < 2 + n {
            return None;
        }
        let _ = self.buf.split_to(2);
        Some(self.buf.split_to(n).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u16, ts: u32, marker: bool) -> Vec<u8> {
        let mut h = vec![0x80, 96 | if marker { 0x80 } else { 0 }];
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&ts.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn pkt(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = header(seq, ts, marker);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn h264_single_stap_and_fu_make_access_units() {
        let mut d = Depacketizer::new(Codec::H264);
        let sps = [0x67, 0x42, 0, 0x1e];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let mut stap = vec![0x78];
        for n in [&sps[..], &pps[..]] {
            stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
            stap.extend_from_slice(n);
        }
        d.push(&pkt(10, u32::MAX - 1000, false, &stap));
        // An IDR slice in three fragments.
        let idr: Vec<u8> = (0..300).map(|i| (i % 251) as u8 + 1).collect();
        d.push(&pkt(11, u32::MAX - 1000, false, &[[0x7c, 0x85].as_slice(), &idr[..100]].concat()));
        d.push(&pkt(12, u32::MAX - 1000, false, &[[0x7c, 0x05].as_slice(), &idr[100..200]].concat()));
        d.push(&pkt(13, u32::MAX - 1000, true, &[[0x7c, 0x45].as_slice(), &idr[200..]].concat()));
        let f = d.next_frame().expect("a keyframe");
        assert!(f.keyframe);
        assert_eq!(f.pts, 0);
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(&sps);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&pps);
        want.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        want.extend_from_slice(&idr);
        assert_eq!(&f.data[..], &want[..]);
        // The next picture, across the 32-bit wrap.
        d.push(&pkt(14, 2600, true, &[0x41, 0x9a, 1, 2]));
        let f = d.next_frame().unwrap();
        assert!(!f.keyframe);
        assert_eq!(f.pts, 3601, "unwrapped");
    }

    #[test]
    fn a_lost_packet_drops_until_the_next_keyframe() {
        let mut d = Depacketizer::new(Codec::H264);
        d.push(&pkt(1, 0, true, &[0x65, 0x88, 1]));
        assert!(d.next_frame().unwrap().keyframe);
        d.push(&pkt(3, 3600, true, &[0x41, 0x9a, 1])); // seq 2 lost
        d.push(&pkt(4, 7200, true, &[0x41, 0x9a, 2]));
        assert!(d.next_frame().is_none());
        assert_eq!((d.lost, d.dropped), (1, 2));
        d.push(&pkt(5, 10800, true, &[0x65, 0x88, 3]));
        assert!(d.next_frame().unwrap().keyframe);
    }

    #[test]
    fn h265_fragments_and_garbage() {
        let mut d = Depacketizer::new(Codec::H265);
        // IDR_W_RADL (19): header 0x26 0x01; FU header type 19.
        d.push(&pkt(7, 0, false, &[49 << 1, 1, 0x80 | 19, 0xaf, 1]));
        d.push(&pkt(8, 0, true, &[49 << 1, 1, 0x40 | 19, 2, 3]));
        let f = d.next_frame().unwrap();
        assert!(f.keyframe);
        assert_eq!(&f.data[..], &[0, 0, 0, 1, 0x26, 1, 0xaf, 1, 2, 3]);
        for junk in [&[][..], &[0x40; 5], &[0x80, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 49 << 1], &[0x90; 13]] {
            d.push(junk);
        }
        assert!(d.bad >= 3, "{d:?}");
    }

    proptest::proptest! {
        /// Bytes from the network: any packets, any codec, never a panic,
        /// and every frame out is whole Annex B.
        #[test]
        fn arbitrary_packets_never_panic(
            pkts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..60),
            h265 in proptest::prelude::any::<bool>(),
        ) {
            let mut d = Depacketizer::new(if h265 { Codec::H265 } else { Codec::H264 });
            let mut r = Rfc4571::default();
            for p in &pkts {
                // Half as valid RTP headers around the noise, half raw.
                let mut q = p.clone();
                if p.first().is_some_and(|b| b & 1 == 0) && q.len() >= 12 {
                    q[0] = 0x80;
                }
                d.push(&q);
                r.feed(&q);
                while let Some(x) = r.next_packet() {
                    d.push(&x);
                }
            }
            while let Some(f) = d.next_frame() {
                proptest::prop_assert!(f.data.starts_with(&[0, 0, 0, 1]));
            }
        }
    }

    #[test]
    fn rfc4571_frames_split_anywhere() {
        let mut r = Rfc4571::default();
        let stream = [0u8, 3, 1, 2, 3, 0, 1, 9];
        for b in stream {
            r.feed(&[b]);
        }
        assert_eq!(&r.next_packet().unwrap()[..], &[1, 2, 3]);
        assert_eq!(&r.next_packet().unwrap()[..], &[9]);
        assert!(r.next_packet().is_none());
    }
}
