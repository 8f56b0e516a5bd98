//! Discovery over UDP: a bare 1530 header broadcast to port 34569 (or the
//! multicast group 239.255.255.250), answered by 1531 with the device's
//! `NetWork.NetCommon`; 1532 sets a device's IP.

use crate::codec::Packet;
use crate::header::{Header, HEADER_LEN};
use crate::ids;
use crate::json::{encode_body, format_hex_ip, parse_body};
use crate::messages::DiscoveredDevice;
use bytes::Bytes;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

pub const PORT: u16 = 34569;
pub const MULTICAST: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);

/// The search request: `ff00000000000000000000000000fa0500000000`.
pub fn search_request() -> [u8; HEADER_LEN] {
    let mut h = Header::new(ids::IPSEARCH_REQ, 0, 0, 0);
    h.version = 0;
    h.to_bytes()
}

/// Parses one datagram as a 1531 reply.
pub fn parse_reply(datagram: &[u8]) -> Option<DiscoveredDevice> {
    let h = Header::parse(datagram.get(..HEADER_LEN)?.try_into().ok()?)?;
    if h.msg_id != ids::IPSEARCH_RSP {
        return None;
    }
    let end = (HEADER_LEN + h.len as usize).min(datagram.len());
    let v = parse_body(&datagram[HEADER_LEN..end]).ok()?;
    DiscoveredDevice::parse(&v)
}

/// Sends the search to `target` (a broadcast address, the multicast group,
/// or one host) and collects replies for `wait`. Devices answering more
/// than once are listed once (by MAC and address).
pub async fn search(target: SocketAddr, wait: Duration) -> std::io::Result<Vec<(SocketAddr, DiscoveredDevice)>> {
    let sock = UdpSocket::bind(("0.0.0.0", 0)).await?;
    sock.set_broadcast(true)?;
    sock.send_to(&search_request(), target).await?;
    let mut found: Vec<(SocketAddr, DiscoveredDevice)> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        let (n, from) = r?;
        match parse_reply(&buf[..n]) {
            Some(d) => {
                if !found.iter().any(|(a, e)| *a == from && e.mac == d.mac) {
                    found.push((from, d));
                }
            }
            None => tracing::debug!(%from, "discovery: datagram is not a 1531 reply"),
        }
    }
    Ok(found)
}

/// The 1532 body that re-addresses a device (user and Sofia-hashed password
/// authorise it).
pub fn ip_set_request(mac: &str, ip: Ipv4Addr, mask: Ipv4Addr, gateway: Ipv4Addr, user: &str, password: &str) -> Value {
    json!({
        "NetWork.NetCommon": {
            "GateWay": format_hex_ip(gateway),
            "HostIP": format_hex_ip(ip),
            "MAC": mac,
            "Submask": format_hex_ip(mask),
        },
        "Name": "NetWork.NetCommon",
        "PassWord": crate::hash::sofia_hash(password),
        "UserName": user,
    })
}

/// Sends a 1532 and waits for the 1533 reply's body.
pub async fn set_ip(target: SocketAddr, body: &Value, wait: Duration) -> std::io::Result<Option<Value>> {
    let sock = UdpSocket::bind(("0.0.0.0", 0)).await?;
    sock.set_broadcast(true)?;
    let payload = encode_body(body);
    let mut h = Header::new(ids::IP_SET_REQ, 0, 0, payload.len());
    h.reserved = 0xFE;
    let mut out = bytes::BytesMut::new();
    h.encode(&mut out);
    out.extend_from_slice(&payload);
    sock.send_to(&out, target).await?;
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        let (n, _) = r?;
        let Some(hdr) = buf.get(..HEADER_LEN).and_then(|b| Header::parse(b.try_into().ok()?)) else { continue };
        if hdr.msg_id == ids::IP_SET_RSP {
            let end = (HEADER_LEN + hdr.len as usize).min(n);
            return Ok(parse_body(&buf[HEADER_LEN..end]).ok());
        }
    }
    Ok(None)
}

/// A datagram packet for a reply (used by the device side).
pub fn reply_datagram(msg_id: u16, body: &Value) -> Bytes {
    let payload = encode_body(body);
    let mut out = bytes::BytesMut::new();
    Packet::new(Header::new(msg_id, 0, 0, payload.len()), payload.clone()).header.encode(&mut out);
    out.extend_from_slice(&payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_request_bytes() {
        let hex: String = search_request().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ff00000000000000000000000000fa0500000000");
    }

    #[test]
    fn parses_a_1531_reply_with_little_endian_ips() {
        let body = json!({"NetWork.NetCommon": {"HostIP": "0x0A01A8C0", "Submask": "0x00FFFFFF", "GateWay": "0x0101A8C0", "MAC": "00:12:31:aa:bb:cc", "HostName": "cam", "SN": "abc", "TCPPort": 34567, "HttpPort": 80, "ChannelNum": 1}, "Ret": 100});
        let d = parse_reply(&reply_datagram(ids::IPSEARCH_RSP, &body)).unwrap();
        assert_eq!(d.host_ip, Some(Ipv4Addr::new(192, 168, 1, 10)));
        assert_eq!(d.submask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(d.gateway, Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(d.tcp_port, 34567);
        assert!(parse_reply(b"short").is_none());
    }
}
