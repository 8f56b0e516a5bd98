//! The server side of RTMP, for publishers only, sans-IO: bytes in
//! (`input`), bytes out (`take_output`), and what happened as events
//! (`next_event`). It does the simple handshake (C0/C1/C2; the digest
//! variant's bytes are echoed the same way, which every publisher in use
//! accepts), the chunk stream (all four header types, extended
//! timestamps, chunk size, abort, acknowledgements both ways), the
//! commands a publisher sends (`connect`, `releaseStream`, `FCPublish`,
//! `createStream`, `publish`, `FCUnpublish`, `deleteStream`), and turns
//! audio/video messages into frames through [`FlvTags`] — classic AVC,
//! Enhanced RTMP `hvc1`/`avc1`, "codec id 12" HEVC, AAC and G.711.
//!
//! The caller decides who may publish: on [`Event::Publish`] it calls
//! [`Conn::accept`] or [`Conn::reject`]. Until a publish is accepted a peer
//! is unauthenticated, and what it can make the connection hold is small:
//! messages of at most [`MAX_COMMAND`] bytes on at most
//! [`MAX_CHUNK_STREAMS`] chunk streams, no media. After it, a message may be
//! up to [`MAX_MESSAGE`] bytes (a 4K keyframe fits).

use crate::demux::FlvTags;
use crate::flv::{amf0, amf0::V};
use crate::rtmp::{chunk, command, OUT_CHUNK};
use crate::Frame;
use std::collections::{HashMap, VecDeque};

/// The largest message before a publish is accepted.
pub const MAX_COMMAND: usize = 64 << 10;
/// The largest message once publishing.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Chunk streams a connection may open.
pub const MAX_CHUNK_STREAMS: usize = 16;
const WINDOW: u32 = 2_500_000;
/// The message stream `createStream` hands out.
const STREAM_ID: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    #[error("RTMP handshake: version {0} (only 3 is RTMP)")]
    Version(u8),
    #[error("RTMP: a message of {size} bytes (at most {max} {when})")]
    TooLarge { size: usize, max: usize, when: &'static str },
    #[error("RTMP: more than {MAX_CHUNK_STREAMS} chunk streams")]
    ChunkStreams,
    #[error("RTMP: chunk stream {0} continues a message it never started")]
    NoHeader(u32),
    #[error("RTMP: {0} before the publish was accepted")]
    NotPublishing(&'static str),
    #[error("RTMP media at {ms} ms: {why}")]
    Media { ms: u64, why: String },
    #[error("RTMP: the peer asked to {0}; this server only takes publishers")]
    Unsupported(String),
}

/// What the connection saw.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// `publish` of `key` in application `app`: answer with `accept` or
    /// `reject`.
    Publish { app: String, key: String },
    /// A frame of the accepted publish (90 kHz from the publisher's clock).
    Frame(Frame),
    /// The publisher said it is done (`FCUnpublish`/`deleteStream`).
    Unpublish,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Waiting for C0+C1.
    Hello,
    /// S0/S1/S2 sent; waiting for C2.
    Ack,
    Chunks,
    /// After `reject`: input is ignored.
    Closed,
}

#[derive(Default, Clone)]
struct InState {
    ts: u64,
    delta: u32,
    len: usize,
    kind: u8,
    sid: u32,
    ext: bool,
    buf: Vec<u8>,
}

/// One publisher's connection.
pub struct Conn {
    phase: Phase,
    buf: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    in_chunk: usize,
    inbox: HashMap<u32, InState>,
    received: u64,
    last_ack: u64,
    peer_window: u64,
    app: String,
    /// `Some(key)` while a publish waits for `accept`/`reject`.
    pending: Option<(String, f64)>,
    publishing: bool,
    tags: FlvTags,
    /// Media messages taken, and their bytes.
    pub messages: u64,
    pub media_bytes: u64,
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new()
    }
}

fn status(level: &str, code: &str, description: &str) -> V {
    V::Obj(vec![
        ("level".into(), V::Str(level.into())),
        ("code".into(), V::Str(code.into())),
        ("description".into(), V::Str(description.into())),
    ])
}

impl Conn {
    pub fn new() -> Conn {
        Conn {
            phase: Phase::Hello,
            buf: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            in_chunk: 128,
            inbox: HashMap::new(),
            received: 0,
            last_ack: 0,
            peer_window: WINDOW as u64,
            app: String::new(),
            pending: None,
            publishing: false,
            tags: FlvTags::default(),
            messages: 0,
            media_bytes: 0,
        }
    }

    /// Whether a publish was accepted.
    pub fn publishing(&self) -> bool {
        self.publishing
    }

    /// Bytes to send to the peer (taken).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// What the tag reader left out (codecs it does not carry).
    pub fn skipped(&self) -> &[String] {
        &self.tags.skipped
    }

    /// Lets the pending publish go ahead.
    pub fn accept(&mut self) {
        if let Some((key, _)) = self.pending.take() {
            self.publishing = true;
            let mut out = Vec::new();
            // User control: StreamBegin.
            let mut sb = vec![0, 0];
            sb.extend_from_slice(&STREAM_ID.to_be_bytes());
            chunk(2, 4, 0, 0, &sb, &mut out);
            let st = status("status", "NetStream.Publish.Start", &format!("{key} is now published"));
            chunk(5, 20, STREAM_ID, 0, &command("onStatus", 0.0, &[V::Null, st]), &mut out);
            self.out.extend_from_slice(&out);
        }
    }

    /// Refuses the pending publish with `why` (sent to the peer as the
    /// `onStatus` description); the connection takes nothing more.
    pub fn reject(&mut self, why: &str) {
        if self.pending.take().is_some() {
            let st = status("error", "NetStream.Publish.BadName", why);
            let mut out = Vec::new();
            chunk(5, 20, STREAM_ID, 0, &command("onStatus", 0.0, &[V::Null, st]), &mut out);
            self.out.extend_from_slice(&out);
        }
        self.phase = Phase::Closed;
    }

    /// Takes bytes from the peer. An error is the peer's fault and ends
    /// the connection; events and output produced before it stay queued.
    pub fn input(&mut self, data: &[u8]) -> Result<(), IngestError> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        self.received += data.len() as u64;
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let r = self.parse(&mut pos);
        self.buf.drain(..pos);
        if self.received - self.last_ack >= self.peer_window && self.phase == Phase::Chunks {
            self.last_ack = self.received;
            let mut out = Vec::new();
            chunk(2, 3, 0, 0, &(self.received as u32).to_be_bytes(), &mut out);
            self.out.extend_from_slice(&out);
        }
        r
    }

    fn parse(&mut self, pos: &mut usize) -> Result<(), IngestError> {
        loop {
            match self.phase {
                Phase::Closed => return Ok(()),
                Phase::Hello => {
                    let Some(c) = self.buf.get(*pos..*pos + 1537) else { return Ok(()) };
                    if c[0] != 3 {
                        return Err(IngestError::Version(c[0]));
                    }
                    let c1 = c[1..].to_vec();
                    *pos += 1537;
                    self.out.push(3);
                    // S1: time 0, zero, then our random-ish bytes.
                    let mut s1 = vec![0u8; 1536];
                    for (i, b) in s1[8..].iter_mut().enumerate() {
                        *b = (i as u32).wrapping_mul(2_246_822_519).to_be_bytes()[1];
                    }
                    self.out.extend_from_slice(&s1);
                    // S2 echoes C1.
                    self.out.extend_from_slice(&c1);
                    self.phase = Phase::Ack;
                }
                Phase::Ack => {
                    if self.buf.len() < *pos + 1536 {
                        return Ok(());
                    }
                    *pos += 1536;
                    self.phase = Phase::Chunks;
                    let mut out = Vec::new();
                    chunk(2, 5, 0, 0, &WINDOW.to_be_bytes(), &mut out);
                    let mut bw = WINDOW.to_be_bytes().to_vec();
                    bw.push(2); // dynamic
                    chunk(2, 6, 0, 0, &bw, &mut out);
                    chunk(2, 1, 0, 0, &(OUT_CHUNK as u32).to_be_bytes(), &mut out);
                    self.out.extend_from_slice(&out);
                }
                Phase::Chunks => {
                    if !self.read_chunk(pos)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reads one chunk if it is all there; `Ok(false)` when more bytes are
    /// needed.
    fn read_chunk(&mut self, pos: &mut usize) -> Result<bool, IngestError> {
        let b = &self.buf[*pos..];
        let Some(&b0) = b.first() else { return Ok(false) };
        let fmt = b0 >> 6;
        let (csid, mut p) = match b0 & 0x3f {
            0 => match b.get(1) {
                Some(&x) => (64 + x as u32, 2),
                None => return Ok(false),
            },
            1 => match b.get(1..3) {
                Some(x) => (64 + x[0] as u32 + 256 * x[1] as u32, 3),
                None => return Ok(false),
            },
            n => (n as u32, 1),
        };
        let known = self.inbox.contains_key(&csid);
        if !known && self.inbox.len() >= MAX_CHUNK_STREAMS {
            return Err(IngestError::ChunkStreams);
        }
        if !known && fmt >= 2 {
            return Err(IngestError::NoHeader(csid));
        }
        let mut st = self.inbox.get(&csid).cloned().unwrap_or_default();
        let hlen = [11, 7, 3, 0][fmt as usize];
        let Some(h) = b.get(p..p + hlen) else { return Ok(false) };
        let h = h.to_vec();
        p += hlen;
        let starting = st.buf.is_empty();
        if hlen >= 3 {
            let t = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            if hlen >= 7 {
                // A new header in the middle of a message: the rest is lost.
                st.buf.clear();
                st.len = u32::from_be_bytes([0, h[3], h[4], h[5]]) as usize;
                st.kind = h[6];
            }
            if hlen == 11 {
                st.sid = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
            }
            st.ext = t == 0xff_ffff;
            let t = if st.ext {
                let Some(x) = b.get(p..p + 4) else { return Ok(false) };
                p += 4;
                u32::from_be_bytes([x[0], x[1], x[2], x[3]])
            } else {
                t
            };
            if fmt == 0 {
                st.ts = t as u64;
                st.delta = 0;
            } else {
                st.delta = t;
                st.ts += t as u64;
            }
        } else {
            // Type 3: a continuation, or a new message with the last delta.
            if st.ext {
                if b.len() < p + 4 {
                    return Ok(false);
                }
                p += 4;
            }
            if starting {
                st.ts += st.delta as u64;
            }
        }
        let (max, when) = if self.publishing {
            (MAX_MESSAGE, "while publishing")
        } else {
            (MAX_COMMAND, "before a publish is accepted")
        };
        if st.len > max {
            return Err(IngestError::TooLarge { size: st.len, max, when });
        }
        let n = st.len.saturating_sub(st.buf.len()).min(self.in_chunk);
        let Some(data) = b.get(p..p + n) else { return Ok(false) };
        if st.buf.capacity() == 0 {
            st.buf.reserve_exact(st.len);
        }
        st.buf.extend_from_slice(data);
        p += n;
        *pos += p;
        if st.buf.len() >= st.len {
            let body = std::mem::take(&mut st.buf);
            let (kind, ts) = (st.kind, st.ts);
            self.inbox.insert(csid, st);
            self.message(kind, ts, body)?;
        } else {
            self.inbox.insert(csid, st);
        }
        Ok(true)
    }

    fn message(&mut self, kind: u8, ts: u64, body: Vec<u8>) -> Result<(), IngestError> {
        let u32at = |b: &[u8]| b.get(..4).map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]));
        match kind {
            1 => {
                if let Some(n) = u32at(&body) {
                    self.in_chunk = (n & 0x7fff_ffff).clamp(1, 1 << 24) as usize;
                }
            }
            2 => {
                if let Some(c) = u32at(&body) {
                    if let Some(st) = self.inbox.get_mut(&c) {
                        st.buf.clear();
                    }
                }
            }
            5 => self.peer_window = u32at(&body).unwrap_or(WINDOW).max(1) as u64,
            // Acknowledgement, user control, bandwidth: nothing to do.
            3 | 4 | 6 => {}
            8 | 9 => {
                if !self.publishing {
                    return Err(IngestError::NotPublishing("media"));
                }
                self.messages += 1;
                self.media_bytes += body.len() as u64;
                match self.tags.push(kind, ts, &body) {
                    Ok(Some(f)) => self.events.push_back(Event::Frame(f)),
                    Ok(None) => {}
                    Err(why) => return Err(IngestError::Media { ms: ts, why: why.0 }),
                }
            }
            20 => self.command(&body)?,
            // Data (@setDataFrame/onMetaData), shared objects, AMF3: not needed.
            _ => {}
        }
        Ok(())
    }

    fn command(&mut self, body: &[u8]) -> Result<(), IngestError> {
        let mut pos = 0;
        let mut vals = Vec::new();
        while let Some(v) = amf0::read(body, &mut pos) {
            vals.push(v);
        }
        let name = match vals.first() {
            Some(V::Str(s)) => s.as_str(),
            _ => return Ok(()),
        };
        let txn = match vals.get(1) {
            Some(V::Num(n)) => *n,
            _ => 0.0,
        };
        let arg_str = |i: usize| match vals.get(i) {
            Some(V::Str(s)) => s.clone(),
            _ => String::new(),
        };
        let mut out = Vec::new();
        match name {
            "connect" => {
                if let Some(V::Obj(m)) = vals.get(2) {
                    if let Some((_, V::Str(app))) = m.iter().find(|(k, _)| k == "app") {
                        self.app = app.chars().take(256).collect();
                    }
                }
                let props = V::Obj(vec![
                    ("fmsVer".into(), V::Str("FMS/3,0,1,123".into())),
                    ("capabilities".into(), V::Num(31.0)),
                ]);
                let info = status("status", "NetConnection.Connect.Success", "Connection succeeded.");
                chunk(3, 20, 0, 0, &command("_result", txn, &[props, info]), &mut out);
            }
            "releaseStream" | "FCPublish" => {
                chunk(3, 20, 0, 0, &command("_result", txn, &[V::Null]), &mut out);
            }
            "createStream" => {
                chunk(3, 20, 0, 0, &command("_result", txn, &[V::Null, V::Num(STREAM_ID as f64)]), &mut out);
            }
            "publish" => {
                if self.publishing || self.pending.is_some() {
                    return Err(IngestError::Unsupported("publish twice on one connection".into()));
                }
                let key: String = arg_str(3).chars().take(512).collect();
                self.pending = Some((key.clone(), txn));
                self.events.push_back(Event::Publish { app: self.app.clone(), key });
            }
            "FCUnpublish" | "deleteStream" | "closeStream" if self.publishing => {
                self.publishing = false;
                self.events.push_back(Event::Unpublish);
            }
            "play" | "play2" => return Err(IngestError::Unsupported(name.to_string())),
            _ => {}
        }
        self.out.extend_from_slice(&out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::Publisher;
    use crate::{Codec, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn clip() -> Vec<Frame> {
        let data = bytes::Bytes::from_static(ivr_sim::clips::H264_640X360);
        crate::demux::from_annexb(&data, Codec::H264, 25)
    }

    /// A server loop over one TCP connection: accepts `want_key`.
    async fn serve(mut s: tokio::net::TcpStream, want_key: &str) -> (Vec<Event>, Result<(), IngestError>) {
        let mut c = Conn::new();
        let mut seen = Vec::new();
        let mut b = vec![0u8; 65536];
        loop {
            let n = match s.read(&mut b).await {
                Ok(0) | Err(_) => return (seen, Ok(())),
                Ok(n) => n,
            };
            let r = c.input(&b[..n]);
            while let Some(e) = c.next_event() {
                if let Event::Publish { key, .. } = &e {
                    if key == want_key {
                        c.accept()
                    } else {
                        c.reject("unknown stream key")
                    }
                }
                seen.push(e);
            }
            let out = c.take_output();
            if !out.is_empty() && s.write_all(&out).await.is_err() {
                return (seen, Ok(()));
            }
            if r.is_err() {
                return (seen, r);
            }
        }
    }

    #[tokio::test]
    async fn ivr_publisher_frames_arrive_as_they_were_sent() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move { serve(l.accept().await.unwrap().0, "k1").await });
        let frames = clip();
        let mut p = Publisher::connect(&format!("rtmp://{addr}/live/k1"), 25).await.unwrap();
        for f in &frames {
            p.send(f).await.unwrap();
        }
        p.close().await.unwrap();
        let (seen, r) = srv.await.unwrap();
        r.unwrap();
        assert_eq!(seen[0], Event::Publish { app: "live".into(), key: "k1".into() });
        let got: Vec<&Frame> =
            seen.iter().filter_map(|e| if let Event::Frame(f) = e { Some(f) } else { None }).collect();
        assert_eq!(got.len(), frames.len());
        assert!(got[0].keyframe);
        // Timestamps are milliseconds on the wire.
        assert_eq!(got[10].dts, frames[10].dts / 90 * 90);
        assert_eq!(got.iter().filter(|f| f.keyframe).count(), frames.iter().filter(|f| f.keyframe).count());
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_with_its_reason() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move { serve(l.accept().await.unwrap().0, "right").await });
        let e = Publisher::connect(&format!("rtmp://{addr}/live/wrong"), 25).await.err().unwrap();
        assert!(e.to_string().contains("unknown stream key"), "{e}");
        drop(srv);
    }

    #[test]
    fn an_unauthenticated_peer_cannot_make_it_hold_much() {
        let mut c = Conn::new();
        let mut hello = vec![3u8];
        hello.extend(vec![0u8; 1536 * 2]);
        c.input(&hello).unwrap();
        // A type-0 header announcing a 1 MiB command.
        let mut m = vec![3u8, 0, 0, 0, 0x10, 0, 0, 20, 0, 0, 0, 0];
        m.extend(vec![0u8; 128]);
        let e = c.input(&m).unwrap_err();
        assert!(matches!(e, IngestError::TooLarge { size: 0x10_0000, .. }), "{e}");
        // Media before a publish.
        let mut c = Conn::new();
        c.input(&hello).unwrap();
        let e = c.input(&[4, 0, 0, 0, 0, 0, 2, 9, 1, 0, 0, 0, 0x17, 0]).unwrap_err();
        assert_eq!(e, IngestError::NotPublishing("media"));
        // A continuation of nothing; too many chunk streams.
        let mut c = Conn::new();
        c.input(&hello).unwrap();
        assert_eq!(c.input(&[0xc5]).unwrap_err(), IngestError::NoHeader(5));
        let mut c = Conn::new();
        c.input(&hello).unwrap();
        let mut many = Vec::new();
        for cs in 3..40u8 {
            many.extend([cs, 0, 0, 0, 0, 0, 1, 20, 0, 0, 0, 0, 5]);
        }
        assert_eq!(c.input(&many).unwrap_err(), IngestError::ChunkStreams);
        // A bad handshake version.
        assert_eq!(Conn::new().input(&[6; 1537]).unwrap_err(), IngestError::Version(6));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..400), 0..20)) {
            let mut c = Conn::new();
            let mut hello = vec![3u8];
            hello.extend(vec![0u8; 1536 * 2]);
            let _ = c.input(&hello);
            for ch in chunks {
                if c.input(&ch).is_err() {
                    break;
                }
                while c.next_event().is_some() {}
            }
        }
    }
}
