//! An RTMP publisher: handshake (the simple one of the 2012 spec),
//! chunking, `connect` / `createStream` / `publish`, then `@setDataFrame`
//! metadata and FLV video bodies as video messages. It reads the server's
//! control messages (chunk size, window size, acknowledgements it asks
//! for) and its command answers; an `_error` or a failed `onStatus` is an
//! error that names the server's code and description.

use crate::flv::{amf0, amf0::V, AudioTags, VideoTags};
use crate::Frame;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The chunk size both ends of ivr send with.
pub(crate) const OUT_CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("{url}: not an rtmp://host[:port]/app/stream URL")]
    Url { url: String },
    #[error("RTMP {0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("RTMP server refused {step}: {code} {description}")]
    Refused { step: &'static str, code: String, description: String },
    #[error("RTMP protocol: {0}")]
    Protocol(String),
    #[error("RTMP server closed the connection during {0} (wrong application name or stream key?)")]
    Closed(&'static str),
    #[error("RTMP: no answer to {0} within 10 s")]
    Timeout(&'static str),
    #[error(transparent)]
    Flv(#[from] crate::flv::FlvError),
}

/// `rtmp://host[:port]/app[/more]/stream` → (host:port, app, tcUrl, stream).
pub fn parse_url(url: &str) -> Result<(String, String, String, String), RtmpError> {
    let bad = || RtmpError::Url { url: url.to_string() };
    let rest = url.strip_prefix("rtmp://").ok_or_else(bad)?;
    let (host, path) = rest.split_once('/').ok_or_else(bad)?;
    let (app, stream) = path.rsplit_once('/').ok_or_else(bad)?;
    if host.is_empty() || app.is_empty() || stream.is_empty() {
        return Err(bad());
    }
    let addr = if host.contains(':') { host.to_string() } else { format!("{host}:1935") };
    Ok((addr, app.to_string(), format!("rtmp://{host}/{app}"), stream.to_string()))
}

struct Msg {
    kind: u8,
    ts: u32,
    body: Vec<u8>,
}

/// Chunk reader state per chunk stream id.
#[derive(Default, Clone)]
struct InState {
    ts: u32,
    len: usize,
    kind: u8,
    sid: u32,
    buf: Vec<u8>,
}

pub struct Publisher {
    s: TcpStream,
    in_chunk: usize,
    inbox: HashMap<u32, InState>,
    stream_id: u32,
    tags: Option<VideoTags>,
    audio: Option<AudioTags>,
    t0: Option<u64>,
    fps: u32,
    pub bytes_sent: u64,
    received: u64,
    ack_window: u64,
    last_ack: u64,
}

/// One message as chunks: a type-0 header, then type-3 continuations.
pub(crate) fn chunk(csid: u8, kind: u8, sid: u32, ts: u32, body: &[u8], out: &mut Vec<u8>) {
    // Type 0 header, then type 3 continuations.
    out.push(csid & 0x3f);
    let t = ts.min(0xff_ffff);
    out.extend_from_slice(&t.to_be_bytes()[1..]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.extend_from_slice(&sid.to_le_bytes());
    if ts >= 0xff_ffff {
        out.extend_from_slice(&ts.to_be_bytes());
    }
    for (i, c) in body.chunks(OUT_CHUNK).enumerate() {
        if i > 0 {
            out.push(0xc0 | (csid & 0x3f));
            if ts >= 0xff_ffff {
                out.extend_from_slice(&ts.to_be_bytes());
            }
        }
        out.extend_from_slice(c);
    }
}

/// An AMF0 command message body.
pub(crate) fn command(name: &str, txn: f64, args: &[V]) -> Vec<u8> {
    let mut b = Vec::new();
    amf0::write(&V::Str(name.into()), &mut b);
    amf0::write(&V::Num(txn), &mut b);
    for a in args {
        amf0::write(a, &mut b);
    }
    b
}

/// A connection the server closed while we waited is named by the step.
fn closed_in<T>(step: &'static str, r: Result<T, RtmpError>) -> Result<T, RtmpError> {
    match r {
        Err(RtmpError::Io(_, e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(RtmpError::Closed(step)),
        r => r,
    }
}

fn status_of(v: &[V]) -> (String, String) {
    for x in v {
        if let V::Obj(m) = x {
            let get = |k: &str| {
                m.iter().find(|(n, _)| n == k).and_then(|(_, v)| if let V::Str(s) = v { Some(s.clone()) } else { None })
            };
            return (get("code").unwrap_or_default(), get("description").unwrap_or_default());
        }
    }
    (String::new(), String::new())
}

impl Publisher {
    /// Connects and publishes; ready for `send`.
    pub async fn connect(url: &str, fps: u32) -> Result<Publisher, RtmpError> {
        let (mut p, stream) = Publisher::open(url, fps).await?;
        let mut out = Vec::new();
        chunk(
            4,
            20,
            p.stream_id,
            0,
            &command("publish", 5.0, &[V::Null, V::Str(stream), V::Str("live".into())]),
            &mut out,
        );
        p.write(&out).await?;
        p.expect_status("publish", "NetStream.Publish.Start").await?;
        Ok(p)
    }

    /// Handshake, `connect`, `createStream`: the connection and the stream
    /// name of `url`.
    async fn open(url: &str, fps: u32) -> Result<(Publisher, String), RtmpError> {
        let (addr, app, tc_url, stream) = parse_url(url)?;
        let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
            .await
            .map_err(|_| RtmpError::Timeout("the TCP connection"))?
            .map_err(|e| RtmpError::Io("connect", e))?;
        let _ = s.set_nodelay(true);
        let mut p = Publisher {
            s,
            in_chunk: 128,
            inbox: HashMap::new(),
            stream_id: 0,
            tags: None,
            audio: None,
            t0: None,
            fps,
            bytes_sent: 0,
            received: 0,
            ack_window: 2_500_000,
            last_ack: 0,
        };
        p.handshake().await?;
        let mut out = Vec::new();
        chunk(2, 1, 0, 0, &(OUT_CHUNK as u32).to_be_bytes(), &mut out);
        let obj = V::Obj(vec![
            ("app".into(), V::Str(app.clone())),
            ("type".into(), V::Str("nonprivate".into())),
            ("flashVer".into(), V::Str("FMLE/3.0 (compatible; ivr)".into())),
            ("tcUrl".into(), V::Str(tc_url)),
        ]);
        chunk(3, 20, 0, 0, &command("connect", 1.0, &[obj]), &mut out);
        p.write(&out).await?;
        p.expect_result(1.0, "connect").await?;
        let mut out = Vec::new();
        chunk(3, 20, 0, 0, &command("releaseStream", 2.0, &[V::Null, V::Str(stream.clone())]), &mut out);
        chunk(3, 20, 0, 0, &command("FCPublish", 3.0, &[V::Null, V::Str(stream.clone())]), &mut out);
        chunk(3, 20, 0, 0, &command("createStream", 4.0, &[V::Null]), &mut out);
        p.write(&out).await?;
        let r = p.expect_result(4.0, "createStream").await?;
        p.stream_id = r.iter().find_map(|v| if let V::Num(n) = v { Some(*n as u32) } else { None }).unwrap_or(1);
        Ok((p, stream))
    }

    async fn write(&mut self, b: &[u8]) -> Result<(), RtmpError> {
        self.s.write_all(b).await.map_err(|e| RtmpError::Io("write", e))?;
        self.bytes_sent += b.len() as u64;
        Ok(())
    }

    async fn handshake(&mut self) -> Result<(), RtmpError> {
        let mut c1 = vec![0u8; 1537];
        c1[0] = 3;
        for (i, b) in c1[9..].iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
        }
        self.write(&c1).await?;
        let mut s = vec![0u8; 1 + 1536 * 2];
        tokio::time::timeout(Duration::from_secs(10), self.s.read_exact(&mut s))
            .await
            .map_err(|_| RtmpError::Timeout("the handshake"))?
            .map_err(|e| RtmpError::Io("handshake", e))?;
        if s[0] != 3 {
            return Err(RtmpError::Protocol(format!("server handshake version {}", s[0])));
        }
        // C2 echoes S1.
        let c2 = s[1..1537].to_vec();
        self.write(&c2).await
    }

    async fn read_msg(&mut self) -> Result<Msg, RtmpError> {
        loop {
            let mut b = [0u8; 1];
            self.read_exact(&mut b).await?;
            let fmt = b[0] >> 6;
            let mut csid = (b[0] & 0x3f) as u32;
            if csid == 0 {
                let mut x = [0u8; 1];
                self.read_exact(&mut x).await?;
                csid = 64 + x[0] as u32;
            } else if csid == 1 {
                let mut x = [0u8; 2];
                self.read_exact(&mut x).await?;
                csid = 64 + x[0] as u32 + 256 * x[1] as u32;
            }
            let mut st = self.inbox.get(&csid).cloned().unwrap_or_default();
            let hlen = [11, 7, 3, 0][fmt as usize];
            let mut h = [0u8; 11];
            self.read_exact(&mut h[..hlen]).await?;
            if hlen >= 3 {
                let t = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                if hlen >= 7 {
                    st.len = u32::from_be_bytes([0, h[3], h[4], h[5]]) as usize;
                    st.kind = h[6];
                }
                if hlen == 11 {
                    st.sid = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
                }
                let t = if t == 0xff_ffff {
                    let mut x = [0u8; 4];
                    self.read_exact(&mut x).await?;
                    u32::from_be_bytes(x)
                } else {
                    t
                };
                // Type 0 carries the time, types 1 and 2 the delta.
                st.ts = if fmt == 0 { t } else { st.ts.wrapping_add(t) };
            }
            if st.len > 16 << 20 {
                return Err(RtmpError::Protocol(format!("message of {} bytes", st.len)));
            }
            let n = (st.len - st.buf.len()).min(self.in_chunk);
            let mut data = vec![0u8; n];
            self.read_exact(&mut data).await?;
            st.buf.extend_from_slice(&data);
            if st.buf.len() >= st.len {
                let body = std::mem::take(&mut st.buf);
                let kind = st.kind;
                self.inbox.insert(csid, st);
                match kind {
                    1 if body.len() >= 4 => {
                        self.in_chunk = (u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff)
                            .clamp(1, 1 << 24) as usize;
                    }
                    5 if body.len() >= 4 => {
                        self.ack_window = u32::from_be_bytes([body[0], body[1], body[2], body[3]]).max(1) as u64;
                    }
                    _ => return Ok(Msg { kind, ts: self.inbox.get(&csid).map_or(0, |s| s.ts), body }),
                }
            } else {
                self.inbox.insert(csid, st);
            }
        }
    }

    async fn read_exact(&mut self, b: &mut [u8]) -> Result<(), RtmpError> {
        self.s.read_exact(b).await.map_err(|e| RtmpError::Io("read", e))?;
        self.received += b.len() as u64;
        if self.received - self.last_ack >= self.ack_window {
            self.last_ack = self.received;
            let mut out = Vec::new();
            chunk(2, 3, 0, 0, &(self.received as u32).to_be_bytes(), &mut out);
            self.write(&out).await?;
        }
        Ok(())
    }

    /// The next AMF0 command message, as its values.
    async fn read_command(&mut self) -> Result<Vec<V>, RtmpError> {
        loop {
            let m = self.read_msg().await?;
            if m.kind != 20 {
                continue;
            }
            let mut pos = 0;
            let mut vals = Vec::new();
            while let Some(v) = amf0::read(&m.body, &mut pos) {
                vals.push(v);
            }
            return Ok(vals);
        }
    }

    /// Waits for `_result` of transaction `txn`.
    async fn expect_result(&mut self, txn: f64, step: &'static str) -> Result<Vec<V>, RtmpError> {
        let fut = async {
            loop {
                let vals = self.read_command().await?;
                match (vals.first(), vals.get(1)) {
                    (Some(V::Str(n)), Some(V::Num(t))) if n == "_result" && *t == txn => return Ok(vals[2..].to_vec()),
                    (Some(V::Str(n)), Some(V::Num(t))) if n == "_error" && *t == txn => {
                        let (code, description) = status_of(&vals[2..]);
                        return Err(RtmpError::Refused { step, code, description });
                    }
                    _ => {}
                }
            }
        };
        closed_in(step, tokio::time::timeout(Duration::from_secs(10), fut).await.map_err(|_| RtmpError::Timeout(step))?)
    }

    async fn expect_status(&mut self, step: &'static str, want: &str) -> Result<(), RtmpError> {
        let fut = async {
            loop {
                let vals = self.read_command().await?;
                if matches!(vals.first(), Some(V::Str(n)) if n == "onStatus") {
                    let (code, description) = status_of(&vals);
                    if code == want {
                        return Ok(());
                    }
                    if code.contains("Failed")
                        || code.contains("BadName")
                        || code.contains("Rejected")
                        || code.ends_with("Error")
                    {
                        return Err(RtmpError::Refused { step, code, description });
                    }
                }
            }
        };
        closed_in(step, tokio::time::timeout(Duration::from_secs(10), fut).await.map_err(|_| RtmpError::Timeout(step))?)
    }

    /// Sends one frame; the first must be a keyframe with parameter sets
    /// (earlier frames are skipped). Returns whether it was sent.
    pub async fn send(&mut self, f: &Frame) -> Result<bool, RtmpError> {
        if !f.codec.is_video() {
            // Audio (G.711, AAC) once the video has started.
            let (Some(t0), true) = (self.t0, self.tags.is_some()) else { return Ok(false) };
            let a = match &mut self.audio {
                Some(a) => a,
                None => self.audio.insert(AudioTags::new(f.codec)?),
            };
            let ms = (f.dts.saturating_sub(t0) / 90) as u32;
            let mut out = Vec::new();
            for body in a.bodies(f)? {
                chunk(5, 8, self.stream_id, ms, &body, &mut out);
            }
            self.write(&out).await?;
            return Ok(true);
        }
        if self.tags.is_none() {
            if !f.keyframe {
                return Ok(false);
            }
            let tags = VideoTags::new(f)?;
            let mut out = Vec::new();
            let mut meta = Vec::new();
            amf0::write(&V::Str("@setDataFrame".into()), &mut meta);
            meta.extend_from_slice(&tags.metadata(self.fps, None));
            chunk(4, 18, self.stream_id, 0, &meta, &mut out);
            chunk(6, 9, self.stream_id, 0, &tags.sequence_header(), &mut out);
            self.write(&out).await?;
            self.tags = Some(tags);
            self.t0 = Some(f.dts);
        }
        let ms = (f.dts.saturating_sub(self.t0.unwrap_or(f.dts)) / 90) as u32;
        let body = self.tags.as_ref().map(|t| t.frame(f)).unwrap_or_default();
        let mut out = Vec::with_capacity(body.len() + body.len() / OUT_CHUNK + 16);
        chunk(6, 9, self.stream_id, ms, &body, &mut out);
        self.write(&out).await?;
        Ok(true)
    }

    /// Ends the publication politely.
    pub async fn close(mut self) -> Result<(), RtmpError> {
        let mut out = Vec::new();
        chunk(
            4,
            20,
            self.stream_id,
            0,
            &command("deleteStream", 6.0, &[V::Null, V::Num(self.stream_id as f64)]),
            &mut out,
        );
        self.write(&out).await?;
        let _ = self.s.shutdown().await;
        Ok(())
    }
}

/// An RTMP player: `play`s a stream and hands out its audio/video
/// messages (FLV tag bodies). For benchmarks and as a judge of servers.
pub struct Player {
    inner: Publisher,
}

impl Player {
    pub async fn connect(url: &str) -> Result<Player, RtmpError> {
        let (mut p, stream) = Publisher::open(url, 25).await?;
        let mut out = Vec::new();
        chunk(8, 20, p.stream_id, 0, &command("play", 5.0, &[V::Null, V::Str(stream)]), &mut out);
        // Our buffer length (user control 3): players send it; some servers wait for it.
        let mut ctl = vec![0, 3];
        ctl.extend_from_slice(&p.stream_id.to_be_bytes());
        ctl.extend_from_slice(&3000u32.to_be_bytes());
        chunk(2, 4, 0, 0, &ctl, &mut out);
        p.write(&out).await?;
        p.expect_status("play", "NetStream.Play.Start").await?;
        Ok(Player { inner: p })
    }

    /// The next audio (8) or video (9) message: its type, timestamp (ms)
    /// and body.
    pub async fn next(&mut self) -> Result<(u8, u32, Vec<u8>), RtmpError> {
        loop {
            let m = self.inner.read_msg().await?;
            if m.kind == 8 || m.kind == 9 {
                return Ok((m.kind, m.ts, m.body));
            }
        }
    }

    /// Bytes read from the server so far.
    pub fn received(&self) -> u64 {
        self.inner.received
    }
}

/// What a reconnecting publication did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PublishStats {
    /// Frames sent (video and audio).
    pub frames: u64,
    pub bytes: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Frames that arrived while no connection was up (or before the next
    /// keyframe after one came back).
    pub dropped: u64,
    /// The last failure, as the user should see it.
    pub last_error: Option<String>,
}

/// Publishes what a hub subscriber gives until the source ends, keeping
/// the publication up: when the server hangs up or refuses, the publisher
/// reconnects after 1 s, doubling up to `max_backoff`, and resumes at the
/// next keyframe (a new connection starts with metadata and sequence
/// header). Frames arriving during the outage are dropped and counted, not
/// queued: a live publication shows now, not the past.
/// `on_event` hears about each disconnect and reconnect.
pub async fn publish_loop(
    mut sub: crate::hub::Subscriber,
    url: &str,
    fps: u32,
    max_backoff: Duration,
    mut on_event: impl FnMut(&str),
) -> PublishStats {
    let mut st = PublishStats::default();
    let mut p: Option<Publisher> = None;
    let mut backoff = Duration::from_secs(1);
    let mut retry_at = tokio::time::Instant::now();
    let mut connected_once = false;
    while let Some(f) = sub.recv().await {
        if p.is_none() {
            if tokio::time::Instant::now() < retry_at || !(f.codec.is_video() && f.keyframe) {
                st.dropped += 1;
                continue;
            }
            match Publisher::connect(url, fps).await {
                Ok(np) => {
                    if connected_once {
                        st.reconnects += 1;
                        on_event(&format!("reconnected to {url}"));
                    }
                    connected_once = true;
                    backoff = Duration::from_secs(1);
                    p = Some(np);
                }
                Err(e) => {
                    st.dropped += 1;
                    st.last_error = Some(e.to_string());
                    on_event(&format!("cannot publish to {url}: {e}; retrying in {} s", backoff.as_secs()));
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            }
        }
        let Some(pb) = &mut p else { continue };
        let before = pb.bytes_sent;
        match pb.send(&f).await {
            Ok(true) => {
                st.frames += 1;
                st.bytes += pb.bytes_sent - before;
            }
            Ok(false) => st.dropped += 1,
            Err(e) => {
                st.dropped += 1;
                st.bytes += pb.bytes_sent - before;
                st.last_error = Some(e.to_string());
                on_event(&format!("the publication to {url} broke: {e}; retrying in {} s", backoff.as_secs()));
                p = None;
                retry_at = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    if let Some(pb) = p {
        let _ = pb.close().await;
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, app, tc, s) = parse_url("rtmp://127.0.0.1:1936/live/cam1").unwrap();
        assert_eq!(
            (a.as_str(), app.as_str(), tc.as_str(), s.as_str()),
            ("127.0.0.1:1936", "live", "rtmp://127.0.0.1:1936/live", "cam1")
        );
        assert_eq!(parse_url("rtmp://h/a/b/c").unwrap().1, "a/b");
        assert_eq!(parse_url("rtmp://h/app/k").unwrap().0, "h:1935");
        assert!(parse_url("http://h/a/b").is_err());
        assert!(parse_url("rtmp://h/onlyapp").is_err());
    }

    #[test]
    fn amf0_round_trip() {
        let v = V::Obj(vec![
            ("code".into(), V::Str("NetStream.Publish.Start".into())),
            ("n".into(), V::Num(1.5)),
            ("b".into(), V::Bool(true)),
        ]);
        let mut b = Vec::new();
        amf0::write(&v, &mut b);
        let mut p = 0;
        assert_eq!(amf0::read(&b, &mut p), Some(v));
        assert_eq!(p, b.len());
        assert_eq!(amf0::read(&[3, 0, 5], &mut 0), None, "truncated object");
    }

    #[test]
    fn long_messages_are_chunked() {
        let body = vec![7u8; OUT_CHUNK * 2 + 10];
        let mut out = Vec::new();
        chunk(6, 9, 1, 40, &body, &mut out);
        assert_eq!(out.len(), 12 + body.len() + 2);
        assert_eq!(out[12 + OUT_CHUNK], 0xc6);
    }
}
