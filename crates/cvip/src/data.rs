//! The data channel for media export and firmware images. The seed only
//! says "a separate data channel using binary transfer mode" identified by
//! an authenticationId; ivr's framing (docs/cvip.md): a new TCP connection
//! whose first packet has message type 0x10 and the authenticationId as its
//! body, then packets of type 0x11 with raw bytes, ended by an empty 0x11.

use crate::header::{msg_type, Packet, PacketCodec};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, FramedWrite};

pub const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data channel: {0}")]
    PacketCodec(#[from] crate::header::CodecError),
    #[error("data channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("data channel: expected packet type {want:#04x}, got {got:#04x}")]
    Type { want: u8, got: u8 },
    #[error("data channel closed before the end-of-transfer packet ({0} bytes received)")]
    Truncated(u64),
    #[error("data channel: authenticationId is not UTF-8")]
    Auth,
}

/// Opens the channel on `io` and sends everything `src` yields; calls
/// `progress` with the running byte count. Returns the bytes sent.
pub async fn send<W, R>(io: W, auth: &str, mut src: R, mut progress: impl FnMut(u64)) -> Result<u64, DataError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut w = FramedWrite::new(io, PacketCodec::default());
    w.send(Packet::new(msg_type::DATA_OPEN, false, 0, auth.as_bytes().to_vec())).await?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.send(Packet::new(msg_type::DATA, false, 0, Bytes::copy_from_slice(&buf[..n]))).await?;
        sent += n as u64;
        progress(sent);
    }
    w.send(Packet::new(msg_type::DATA, false, 0, Bytes::new())).await?;
    let mut io = w.into_inner();
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(sent)
}

/// Reads the opening packet: the authenticationId.
pub async fn accept<R: AsyncRead + Unpin>(r: &mut FramedRead<R, PacketCodec>) -> Result<String, DataError> {
    match r.next().await {
        None => Err(DataError::Truncated(0)),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(p)) if p.header.msg_type == msg_type::DATA_OPEN => {
            String::from_utf8(p.body.to_vec()).map_err(|_| DataError::Auth)
        }
        Some(Ok(p)) => Err(DataError::Type { want: msg_type::DATA_OPEN, got: p.header.msg_type }),
    }
}

/// Copies the data packets into `sink` until the end packet; returns the
/// byte count. A channel that closes early is an error (nothing is taken
/// as complete that was not).
pub async fn receive<R, W>(
    r: &mut FramedRead<R, PacketCodec>,
    sink: &mut W,
    mut progress: impl FnMut(u64),
) -> Result<u64, DataError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut got = 0u64;
    loop {
        match r.next().await {
            None => return Err(DataError::Truncated(got)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(p)) if p.header.msg_type != msg_type::DATA => {
                return Err(DataError::Type { want: msg_type::DATA, got: p.header.msg_type })
            }
            Some(Ok(p)) if p.body.is_empty() => {
                sink.flush().await?;
                return Ok(got);
            }
            Some(Ok(p)) => {
                sink.write_all(&p.body).await?;
                got += p.body.len() as u64;
                progress(got);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_truncation() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (a, b) = tokio::io::duplex(1 << 16);
        let d2 = data.clone();
        let t = tokio::spawn(async move { send(a, "auth-1", &d2[..], |_| {}).await.unwrap() });
        let mut r = FramedRead::new(b, PacketCodec::default());
        assert_eq!(accept(&mut r).await.unwrap(), "auth-1");
        let mut out = Vec::new();
        let mut last = 0;
        assert_eq!(receive(&mut r, &mut out, |n| last = n).await.unwrap(), 200_000);
        assert_eq!(out, data);
        assert_eq!(last, 200_000);
        assert_eq!(t.await.unwrap(), 200_000);

        // Closed without the end packet.
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FramedWrite::new(a, PacketCodec::default());
        w.send(Packet::new(msg_type::DATA_OPEN, false, 0, &b"x"[..])).await.unwrap();
        w.send(Packet::new(msg_type::DATA, false, 0, &b"abc"[..])).await.unwrap();
        drop(w);
        let mut r = FramedRead::new(b, PacketCodec::default());
        accept(&mut r).await.unwrap();
        let mut out = Vec::new();
        assert!(matches!(receive(&mut r, &mut out, |_| {}).await, Err(DataError::Truncated(3))));
    }
}
