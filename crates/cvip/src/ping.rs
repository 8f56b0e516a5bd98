//! Discovery: the 16-byte Ping Request and the 37-byte Ping Response, over
//! UDP (unicast, broadcast, multicast) or TCP, on the CVIP port or on the
//! common port 9990.

use crate::header::{msg_type, Header, HEADER_LEN};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DEFAULT_PORT: u16 = 7110;
pub const COMMON_PORT: u16 = 9990;
pub const REQUEST_LEN: usize = HEADER_LEN + 7;
pub const RESPONSE_LEN: usize = HEADER_LEN + 28;

/// Connection types of the ping.
pub mod conn {
    pub const UDP_UNICAST: u8 = 0x01;
    pub const UDP_MULTICAST: u8 = 0x02;
    pub const UDP_BROADCAST: u8 = 0x10;
    pub const TCP: u8 = 0x0C;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingRequest {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub conn_type: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingResponse {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub conn_type: u8,
    pub guid: [u8; 16],
    pub manufacturer: u16,
    pub product: u16,
    /// Rebooted since the last request.
    pub rebooted: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PingError {
    #[error("{0}")]
    Header(#[from] crate::header::HeaderError),
    #[error("ping message type {0:#04x}, expected 0x01")]
    Type(u8),
    #[error("ping of {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("a ping response where a request was expected (or the reverse)")]
    Direction,
}

impl PingRequest {
    pub fn encode(&self, transaction: u16) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..HEADER_LEN].copy_from_slice(&Header::new(msg_type::PING, false, transaction, 7).to_bytes());
        b[9..13].copy_from_slice(&self.ip.octets());
        b[13..15].copy_from_slice(&self.port.to_be_bytes());
        b[15] = self.conn_type;
        b
    }

    pub fn decode(b: &[u8]) -> Result<(Header, PingRequest), PingError> {
        let h = check(b, REQUEST_LEN, false)?;
        let port = read_u16(h, &b[13..15]);
        Ok((h, PingRequest { ip: Ipv4Addr::new(b[9], b[10], b[11], b[12]), port, conn_type: b[15] }))
    }
}

fn read_u16(h: Header, b: &[u8]) -> u16 {
    match h.order {
        crate::header::ByteOrder::Big => u16::from_be_bytes([b[0], b[1]]),
        crate::header::ByteOrder::Little => u16::from_le_bytes([b[0], b[1]]),
    }
}

fn check(b: &[u8], want: usize, response: bool) -> Result<Header, PingError> {
    if b.len() < HEADER_LEN {
        return Err(PingError::Length { got: b.len(), want });
    }
    let h = Header::parse(b)?;
    if h.msg_type != msg_type::PING {
        return Err(PingError::Type(h.msg_type));
    }
    if h.response != response {
        return Err(PingError::Direction);
    }
    if b.len() < want || (h.size as usize) < want {
        return Err(PingError::Length { got: b.len().min(h.size as usize), want });
    }
    Ok(h)
}

impl PingResponse {
    pub fn encode(&self, req: &Header) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        let mut h = Header::new(msg_type::PING, true, req.transaction, 28);
        h.order = req.order;
        b[..HEADER_LEN].copy_from_slice(&h.to_bytes());
        b[9..13].copy_from_slice(&self.ip.octets());
        let (port, man, prod) = match req.order {
            crate::header::ByteOrder::Big => {
                (self.port.to_be_bytes(), self.manufacturer.to_be_bytes(), self.product.to_be_bytes())
            }
            crate::header::ByteOrder::Little => {
                (self.port.to_le_bytes(), self.manufacturer.to_le_bytes(), self.product.to_le_bytes())
            }
        };
        b[13..15].copy_from_slice(&port);
        b[15] = self.conn_type;
        b[16..32].copy_from_slice(&self.guid);
        b[32..34].copy_from_slice(&man);
        b[34..36].copy_from_slice(&prod);
        b[36] = self.rebooted as u8;
        b
    }

    pub fn decode(b: &[u8]) -> Result<PingResponse, PingError> {
        let h = check(b, RESPONSE_LEN, true)?;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&b[16..32]);
        Ok(PingResponse {
            ip: Ipv4Addr::new(b[9], b[10], b[11], b[12]),
            port: read_u16(h, &b[13..15]),
            conn_type: b[15],
            guid,
            manufacturer: read_u16(h, &b[32..34]),
            product: read_u16(h, &b[34..36]),
            rebooted: b[36] == 1,
        })
    }

    /// The GUID as 8-4-4-4-12 hex.
    pub fn guid_string(&self) -> String {
        guid_string(&self.guid)
    }
}

pub fn guid_string(g: &[u8; 16]) -> String {
    let h: String = g.iter().map(|b| format!("{b:02X}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A device found by discovery, and the address its answer came from.
#[derive(Clone, Debug)]
pub struct Found {
    pub from: SocketAddr,
    pub response: PingResponse,
}

/// Sends one Ping Request to each target over UDP and collects the
/// responses that arrive within `wait` (duplicates by GUID dropped).
pub async fn discover_udp(targets: &[SocketAddr], wait: Duration) -> std::io::Result<Vec<Found>> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    sock.set_broadcast(true)?;
    let local_port = sock.local_addr()?.port();
    for (i, t) in targets.iter().enumerate() {
        let conn_type = match t.ip() {
            std::net::IpAddr::V4(ip) if ip.is_broadcast() || ip.octets()[3] == 255 => conn::UDP_BROADCAST,
            std::net::IpAddr::V4(ip) if ip.is_multicast() => conn::UDP_MULTICAST,
            _ => conn::UDP_UNICAST,
        };
        let req = PingRequest { ip: Ipv4Addr::UNSPECIFIED, port: local_port, conn_type };
        sock.send_to(&req.encode(i as u16 + 1), t).await?;
    }
    let mut out: Vec<Found> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 512];
    loop {
        let r = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
        let Ok(r) = r else { break };
        let (n, from) = r?;
        match PingResponse::decode(&buf[..n]) {
            Ok(resp) => {
                if !out.iter().any(|f| f.response.guid == resp.guid && f.response.port == resp.port) {
                    out.push(Found { from, response: resp });
                }
            }
            Err(e) => tracing::debug!(%from, "not a ping response: {e}"),
        }
    }
    Ok(out)
}

/// Ping over TCP (the CVIP port or the common port).
pub async fn ping_tcp(addr: SocketAddr, wait: Duration) -> std::io::Result<PingResponse> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let local = match s.local_addr()? {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        let req = PingRequest { ip: local, port: 0, conn_type: conn::TCP };
        s.write_all(&req.encode(1)).await?;
        let mut b = [0u8; RESPONSE_LEN];
        s.read_exact(&mut b).await?;
        PingResponse::decode(&b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    };
    tokio::time::timeout(wait, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no ping response from {addr}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_16_bytes_and_round_trips() {
        let r = PingRequest { ip: Ipv4Addr::new(192, 168, 1, 10), port: 7110, conn_type: conn::UDP_BROADCAST };
        let b = r.encode(3);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..9], &[2, 1, 1, 0, 3, 0, 0, 0, 16]);
        assert_eq!(&b[9..], &[192, 168, 1, 10, 0x1b, 0xc6, 0x10]);
        assert_eq!(PingRequest::decode(&b).unwrap().1, r);
    }

    #[test]
    fn response_is_37_bytes_in_the_requests_byte_order() {
        let resp = PingResponse {
            ip: Ipv4Addr::new(10, 0, 0, 2),
            port: 7110,
            conn_type: conn::TCP,
            guid: *b"0123456789abcdef",
            manufacturer: 0x1234,
            product: 7,
            rebooted: true,
        };
        let mut le = PingRequest { ip: Ipv4Addr::LOCALHOST, port: 1, conn_type: 1 }.encode(9);
        // Rewrite the request little-endian.
        le[0] = 1;
        le[1] = 2;
        le[3..5].copy_from_slice(&9u16.to_le_bytes());
        le[5..9].copy_from_slice(&16u32.to_le_bytes());
        let (h, _) = PingRequest::decode(&le).unwrap();
        let b = resp.encode(&h);
        assert_eq!(b.len(), 37);
        assert_eq!(&b[..2], &[1, 2]);
        assert_eq!(&b[13..15], &7110u16.to_le_bytes());
        assert_eq!(PingResponse::decode(&b).unwrap(), resp);
        assert_eq!(resp.guid_string(), "30313233-3435-3637-3839-616263646566");
        assert_eq!(PingResponse::decode(&b[..30]), Err(PingError::Length { got: 30, want: 37 }));
        assert_eq!(PingResponse::decode(&le), Err(PingError::Direction));
    }
}
