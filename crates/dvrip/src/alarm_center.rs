//! The alarm center: devices configured with `NetWork.AlarmServer` connect
//! to it (TCP, default 15002) and push one 1508 packet per event, version 1,
//! session 0, a JSON body ending in `"\n"` only.

use crate::codec::{DvripCodec, Packet};
use crate::header::Header;
use crate::ids;
use crate::json::{parse_body, TRAILER};
use crate::messages::AlarmCenterMessage;
use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

pub const DEFAULT_PORT: u16 = 15002;

/// One push as received.
#[derive(Clone, Debug)]
pub struct Push {
    pub from: SocketAddr,
    pub message: AlarmCenterMessage,
}

/// Accepts devices and sends every well-formed 1508 push to `out`;
/// malformed ones are logged with the peer and the bytes, and skipped.
pub async fn serve(listener: TcpListener, out: mpsc::Sender<Push>) -> std::io::Result<()> {
    loop {
        let (stream, from) = listener.accept().await?;
        let out = out.clone();
        tokio::spawn(async move {
            let mut r = FramedRead::new(stream, DvripCodec::default());
            let idle = Duration::from_secs(60);
            while let Ok(Some(Ok(p))) = tokio::time::timeout(idle, r.next()).await {
                if p.msg_id() != ids::ALARMCENTER_MSG_REQ {
                    tracing::debug!(%from, msg_id = p.msg_id(), "alarm center: not a 1508 push; ignored");
                    continue;
                }
                let msg = parse_body(&p.payload)
                    .map_err(|e| e.to_string())
                    .and_then(|v| serde_json::from_value::<AlarmCenterMessage>(v).map_err(|e| e.to_string()));
                match msg {
                    Ok(message) => {
                        if out.send(Push { from, message }).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(%from, error = %e, "alarm center: push does not parse"),
                }
            }
        });
    }
}

/// The packet a device sends (trailer `"\n"` only, as devices do).
pub fn push_packet(msg: &AlarmCenterMessage) -> Packet {
    let mut b = BytesMut::new();
    // Serialising a plain struct into memory cannot fail.
    serde_json::to_writer((&mut b).writer(), msg).expect("serialising an alarm");
    b.put_u8(TRAILER[0]);
    Packet::new(Header::new(ids::ALARMCENTER_MSG_REQ, 0, 0, b.len()), b.freeze())
}

/// Connects to an alarm center and pushes one message (the device side).
pub async fn push(addr: &str, msg: &AlarmCenterMessage) -> std::io::Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("alarm center {addr} did not answer"))
    })??;
    let p = push_packet(msg);
    let mut out = BytesMut::new();
    p.header.encode(&mut out);
    out.extend_from_slice(&p.payload);
    s.write_all(&out).await?;
    s.shutdown().await
}
