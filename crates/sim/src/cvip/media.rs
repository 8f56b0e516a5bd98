//! What the simulated CVIP unit sends as video: the fixture clip, paced at
//! its frame rate, over
//! - `udp` / `rtp`: RTP (RFC 6184 for H.264, RFC 7798 for H.265; payload
//!   type 96, 90 kHz clock, single NAL unit packets up to 1400 bytes and
//!   fragmentation units above, marker on an access unit's last packet);
//! - `tcp`: the same RTP packets, each prefixed with its 16-bit length
//!   (RFC 4571);
//! - `raw`: the Annex B byte stream over TCP.

use crate::clips::{AccessUnit, Clip, ClipCodec};
use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub const MTU_PAYLOAD: usize = 1400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    RtpUdp,
    RtpTcp,
    RawTcp,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Transport> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "udp" | "rtp" | "rtp/udp" => Some(Transport::RtpUdp),
            "tcp" | "rtp/tcp" => Some(Transport::RtpTcp),
            "raw" | "raw/tcp" => Some(Transport::RawTcp),
            _ => None,
        }
    }
}

pub use ivr_media::annexb::nal_units;

/// RTP packetizer state for one stream.
pub struct Rtp {
    pub seq: u16,
    pub ssrc: u32,
    pub codec: ClipCodec,
}

impl Rtp {
    fn header(&mut self, out: &mut BytesMut, marker: bool, ts: u32) {
        out.put_u8(0x80);
        out.put_u8(96 | if marker { 0x80 } else { 0 });
        out.put_u16(self.seq);
        self.seq = self.seq.wrapping_add(1);
        out.put_u32(ts);
        out.put_u32(self.ssrc);
    }

    /// The RTP packets of one access unit at 90 kHz time `ts`.
    pub fn packetize(&mut self, au: &AccessUnit, ts: u32) -> Vec<Bytes> {
        let nals = nal_units(&au.data);
        let mut out = Vec::new();
        for (k, nal) in nals.iter().enumerate() {
            let last_nal = k + 1 == nals.len();
            if nal.len() <= MTU_PAYLOAD {
                let mut b = BytesMut::with_capacity(12 + nal.len());
                self.header(&mut b, last_nal, ts);
                b.extend_from_slice(nal);
                out.push(b.freeze());
                continue;
            }
            // Fragmentation units.
            let (hdr_len, body) = match self.codec {
                ClipCodec::H264 => (1, &nal[1..]),
                ClipCodec::H265 => (2, &nal[2..]),
            };
            let chunks: Vec<&[u8]> = body.chunks(MTU_PAYLOAD - hdr_len - 1).collect();
            for (c, chunk) in chunks.iter().enumerate() {
                let (first, last) = (c == 0, c + 1 == chunks.len());
                let mut b = BytesMut::with_capacity(12 + hdr_len + 1 + chunk.len());
                self.header(&mut b, last && last_nal, ts);
                let flags = if first { 0x80 } else { 0 } | if last { 0x40 } else { 0 };
                match self.codec {
                    ClipCodec::H264 => {
                        b.put_u8(nal[0] & 0xe0 | 28);
                        b.put_u8(flags | nal[0] & 0x1f);
                    }
                    ClipCodec::H265 => {
                        let ty = (nal[0] >> 1) & 0x3f;
                        b.put_u8(nal[0] & 0x81 | 49 << 1);
                        b.put_u8(nal[1]);
                        b.put_u8(flags | ty);
                    }
                }
                b.extend_from_slice(chunk);
                out.push(b.freeze());
            }
        }
        out
    }
}

/// Sends `clip` from frame `start` to `dest` until cancelled (or, with
/// `frames`, for that many frames), paced at `fps * speed`.
pub async fn send(
    clip: &'static Clip,
    dest: SocketAddr,
    transport: Transport,
    start: u64,
    frames: Option<u64>,
    speed: f64,
) -> std::io::Result<u64> {
    let period = Duration::from_secs_f64(1.0 / (clip.fps as f64 * speed.max(0.01)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rtp = Rtp { seq: rand_u16(), ssrc: rand_u32(), codec: clip.codec };
    let end = frames.map(|n| start + n);
    let mut i = start;
    let ts0 = rand_u32();
    let ts_of = |i: u64| ts0.wrapping_add((i * 90_000 / clip.fps as u64) as u32);
    match transport {
        Transport::RtpUdp => {
            let bind: SocketAddr = if dest.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.connect(dest).await?;
            while end.is_none_or(|e| i < e) {
                tick.tick().await;
                for p in rtp.packetize(clip.frame(i), ts_of(i)) {
                    // A receiver that is not there yet is not an error for a
                    // UDP stream.
                    let _ = sock.send(&p).await;
                }
                i += 1;
            }
        }
        Transport::RtpTcp | Transport::RawTcp => {
            let mut s = tokio::net::TcpStream::connect(dest).await?;
            s.set_nodelay(true)?;
            while end.is_none_or(|e| i < e) {
                tick.tick().await;
                let au = clip.frame(i);
                if transport == Transport::RawTcp {
                    s.write_all(&au.data).await?;
                } else {
                    let mut b = BytesMut::new();
                    for p in rtp.packetize(au, ts_of(i)) {
                        b.put_u16(p.len() as u16);
                        b.extend_from_slice(&p);
                    }
                    s.write_all(&b).await?;
                }
                i += 1;
            }
        }
    }
    Ok(i - start)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
    );
    h.finish() as u32
}

fn rand_u16() -> u16 {
    rand_u32() as u16
}

/// The bytes of a recording of `frames` frames: the clip's Annex B access
/// units from a keyframe on, looping.
pub fn recording_bytes(clip: &Clip, frames: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..frames {
        out.extend_from_slice(&clip.frame(i).data);
    }
    out
}

pub fn recording_size(clip: &Clip, frames: u64) -> u64 {
    let per_loop: u64 = clip.frames.iter().map(|f| f.data.len() as u64).sum();
    let n = clip.frames.len() as u64;
    per_loop * (frames / n) + (0..frames % n).map(|i| clip.frame(i).data.len() as u64).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_fragments_and_marks_the_last_packet() {
        for codec in [ClipCodec::H264, ClipCodec::H265] {
            let clip = crate::clips::clip(codec, true);
            let au = clip.frame(0);
            let mut rtp = Rtp { seq: 65534, ssrc: 1, codec };
            let pkts = rtp.packetize(au, 1234);
            assert!(pkts.len() > 2, "{codec:?}: an I-frame of the big clip needs fragments");
            assert!(pkts.iter().all(|p| p.len() <= 12 + MTU_PAYLOAD));
            let markers: Vec<bool> = pkts.iter().map(|p| p[1] & 0x80 != 0).collect();
            assert_eq!(markers.iter().filter(|m| **m).count(), 1);
            assert!(markers.last().unwrap());
            // Sequence numbers wrap.
            assert_eq!(u16::from_be_bytes([pkts[2][2], pkts[2][3]]), 0);
            // Reassembling gives back every NAL byte.
            let payload: usize = nal_units(&au.data).iter().map(|n| n.len()).sum();
            let hdr = if codec == ClipCodec::H264 { 1 } else { 2 };
            let mut got = 0;
            for p in &pkts {
                let ty = match codec {
                    ClipCodec::H264 => p[12] & 0x1f,
                    ClipCodec::H265 => (p[12] >> 1) & 0x3f,
                };
                let fu = if codec == ClipCodec::H264 { ty == 28 } else { ty == 49 };
                if fu {
                    got += p.len() - 12 - hdr - 1 + if p[12 + hdr] & 0x80 != 0 { hdr } else { 0 };
                } else {
                    got += p.len() - 12;
                }
            }
            assert_eq!(got, payload);
        }
    }

    #[test]
    fn recording_size_matches_bytes() {
        let c = crate::clips::clip(ClipCodec::H264, false);
        for n in [0, 1, 74, 75, 76, 200] {
            assert_eq!(recording_size(c, n), recording_bytes(c, n).len() as u64);
        }
    }
}
