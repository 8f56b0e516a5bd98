//! The async client: what a camera's user (python-dvr, an NVR, the edge)
//! does. One control connection with a reader task that routes replies,
//! pushes and media; keep-alive on its own task so no long operation can
//! starve it; reconnect on demand after the device dropped us.

use crate::codec::{DvripCodec, Packet};
use crate::hash::Encryption;
use crate::header::{hex_preview, Header};
use crate::ids;
use crate::json::{encode_body, format_session, format_time, parse_body, parse_time, BodyError, TIME_FORMAT};
use crate::media::{self, Demuxer, MediaFrame};
use crate::messages::{
    self, AlarmInfo, FileEntry, LogEntry, LoginReply, LoginReplyError, LoginRequest, PtzCommand, StreamType,
};
use crate::ret;
use bytes::{Bytes, BytesMut};
use chrono::NaiveDateTime;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

/// How to reach and log in to a device.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port`.
    pub addr: String,
    pub user: String,
    pub password: String,
    pub encryption: Encryption,
    /// `DVRIP-Web` (what the vendor's web plugin and most clients send).
    pub login_type: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_len: usize,
}

impl ClientConfig {
    pub fn new(addr: impl Into<String>, user: impl Into<String>, password: impl Into<String>) -> Self {
        ClientConfig {
            addr: addr.into(),
            user: user.into(),
            password: password.into(),
            encryption: Encryption::Md5,
            login_type: "DVRIP-Web".into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_len: crate::codec::DEFAULT_MAX_LEN,
        }
    }
}

/// What went wrong, with where: the device, the message and its `Ret`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("{addr}: connection timed out after {0:?}", .timeout)]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("{addr}: I/O error: {cause}")]
    Io { addr: String, cause: std::io::Error },
    #[error("{addr}: login as {user:?} refused: {}", ret::describe(*code))]
    Login { addr: String, user: String, code: i64 },
    #[error("{addr}: {cause}")]
    LoginReply { addr: String, cause: LoginReplyError },
    #[error("{addr}: {name} (message {msg_id}) failed: {}", ret::describe(*code))]
    Ret { addr: String, msg_id: u16, name: String, code: i64 },
    #[error("{addr}: no reply to {name} (message {msg_id}, seq {seq}) within {timeout:?}")]
    Timeout { addr: String, msg_id: u16, name: String, seq: u32, timeout: Duration },
    #[error("{addr}: the connection closed (session {session})")]
    Closed { addr: String, session: String },
    #[error("{addr}: reply to message {msg_id} (seq {seq}): {cause}")]
    Body { addr: String, msg_id: u16, seq: u32, cause: BodyError },
    #[error("{addr}: {message}")]
    Protocol { addr: String, message: String },
    /// The peer answered, but not in DVRIP: a wrong port or another service.
    #[error("{addr} answered with bytes that are not DVRIP{guess} (wrong port? DVRIP is usually 34567)")]
    NotDvrip { addr: String, guess: &'static str },
}

/// What a non-DVRIP answer looks like, from its first bytes.
fn guess_service(head: &[u8]) -> &'static str {
    if head.starts_with(b"HTTP/") || head.starts_with(b"<") {
        " (it looks like HTTP)"
    } else if head.starts_with(b"SSH-") {
        " (it looks like SSH)"
    } else if head.len() >= 2 && matches!(head[0], 0x15 | 0x16) && head[1] == 0x03 {
        " (it looks like TLS)"
    } else if head.starts_with(b"RTSP/") {
        " (it looks like RTSP)"
    } else {
        ""
    }
}

pub type Result<T> = std::result::Result<T, Error>;

type FrameSink = FramedWrite<OwnedWriteHalf, DvripCodec>;

struct Pending {
    seq: u32,
    tx: oneshot::Sender<Packet>,
}

#[derive(Default)]
struct Routes {
    pending: HashMap<u16, VecDeque<Pending>>,
    streams: HashMap<u16, mpsc::Sender<Packet>>,
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One logged-in control connection.
struct Conn {
    addr: String,
    session: u32,
    login: LoginReply,
    /// Packets go out in the order they are queued, whichever task queues
    /// them (a Stop queued from a drop cannot overtake a later Start).
    writer: mpsc::UnboundedSender<Packet>,
    seq: AtomicU32,
    routes: Arc<Mutex<Routes>>,
    open: watch::Receiver<bool>,
    timeout: Duration,
    tasks: Mutex<Vec<AbortOnDrop>>,
}

impl Conn {
    fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn closed_err(&self) -> Error {
        Error::Closed { addr: self.addr.clone(), session: format_session(self.session) }
    }

    /// Queues a packet for the writer task (in order, without waiting).
    fn write(&self, p: Packet) -> Result<()> {
        if !self.is_open() {
            return Err(self.closed_err());
        }
        self.writer.send(p).map_err(|_| self.closed_err())
    }

    /// Sends a request and waits for the packet with id + 1. Replies are
    /// matched by id and order; a reply whose seq is neither the request's
    /// nor one more is still taken (devices disagree on seq), but a
    /// matching one is preferred.
    async fn call_packet(&self, msg_id: u16, payload: Bytes, name: &str) -> Result<Packet> {
        let seq = self.next_seq();
        self.send_and_wait(Header::new(msg_id, self.session, seq, payload.len()), payload, name).await
    }

    /// Registers a waiter for the reply (id + 1) to a request with `seq`.
    fn expect_reply(&self, msg_id: u16, seq: u32) -> oneshot::Receiver<Packet> {
        let (tx, rx) = oneshot::channel();
        self.routes
            .lock()
            .expect("routes lock")
            .pending
            .entry(ids::reply_of(msg_id))
            .or_default()
            .push_back(Pending { seq, tx });
        rx
    }

    /// Sends a packet and waits for its reply, within the timeout.
    async fn send_and_wait(&self, h: Header, payload: Bytes, name: &str) -> Result<Packet> {
        let (msg_id, seq) = (h.msg_id, h.seq);
        let rx = self.expect_reply(msg_id, seq);
        if let Err(e) = self.write(Packet::new(h, payload)) {
            self.forget(msg_id, seq);
            return Err(e);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(self.closed_err()),
            Err(_) => {
                self.forget(msg_id, seq);
                Err(Error::Timeout {
                    addr: self.addr.clone(),
                    msg_id,
                    name: name.to_owned(),
                    seq,
                    timeout: self.timeout,
                })
            }
        }
    }

    /// The JSON body of a reply packet.
    fn body(&self, p: &Packet) -> Result<Value> {
        parse_body(&p.payload).map_err(|cause| Error::Body {
            addr: self.addr.clone(),
            msg_id: p.msg_id(),
            seq: p.header.seq,
            cause,
        })
    }

    fn forget(&self, msg_id: u16, seq: u32) {
        if let Some(q) = self.routes.lock().expect("routes lock").pending.get_mut(&ids::reply_of(msg_id)) {
            q.retain(|p| p.seq != seq);
        }
    }

    async fn call_json(&self, msg_id: u16, body: &Value) -> Result<Value> {
        let name = body.get("Name").and_then(Value::as_str).unwrap_or("").to_owned();
        let p = self.call_packet(msg_id, encode_body(body), &name).await?;
        self.body(&p)
    }

    fn route(&self, msg_id: u16, capacity: usize) -> mpsc::Receiver<Packet> {
        let (tx, rx) = mpsc::channel(capacity);
        self.routes.lock().expect("routes lock").streams.insert(msg_id, tx);
        rx
    }

    fn unroute(&self, msg_id: u16) {
        self.routes.lock().expect("routes lock").streams.remove(&msg_id);
    }
}

/// Routes what arrives on a connection until it closes.
async fn read_loop(
    mut reader: FramedRead<tokio::net::tcp::OwnedReadHalf, DvripCodec>,
    routes: Arc<Mutex<Routes>>,
    alarms: broadcast::Sender<AlarmInfo>,
    open: watch::Sender<bool>,
    addr: String,
    foreign: Arc<Mutex<Option<&'static str>>>,
) {
    let mut seen = false;
    while let Some(item) = reader.next().await {
        if !seen {
            seen = item.is_ok();
        }
        let p = match item {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "dvrip client: read error");
                break;
            }
        };
        let id = p.msg_id();
        let stream = routes.lock().expect("routes lock").streams.get(&id).cloned();
        if let Some(tx) = stream {
            // Waiting here slows the socket down to the consumer's pace.
            if tx.send(p).await.is_err() {
                routes.lock().expect("routes lock").streams.remove(&id);
            }
            continue;
        }
        let waiter = {
            let mut r = routes.lock().expect("routes lock");
            r.pending.get_mut(&id).and_then(|q| {
                let seq = p.header.seq;
                let i = q.iter().position(|w| w.seq == seq || w.seq.wrapping_add(1) == seq).unwrap_or(0);
                q.remove(i)
            })
        };
        if let Some(w) = waiter {
            let _ = w.tx.send(p);
            continue;
        }
        if id == ids::ALARM_REQ {
            match parse_body(&p.payload) {
                Ok(v) => {
                    match serde_json::from_value::<AlarmInfo>(v.get("AlarmInfo").cloned().unwrap_or(Value::Null)) {
                        Ok(a) => {
                            let _ = alarms.send(a);
                        }
                        Err(e) => tracing::warn!(%addr, error = %e, "dvrip client: alarm without AlarmInfo"),
                    }
                }
                Err(e) => tracing::warn!(%addr, error = %e, "dvrip client: alarm body"),
            }
            continue;
        }
        tracing::debug!(%addr, msg_id = id, seq = p.header.seq, payload = %hex_preview(&p.payload, 32), "dvrip client: unsolicited packet ignored");
    }
    if !seen {
        // Closed before one packet, after bytes that were not DVRIP.
        if let Some(first) = reader.decoder_mut().take_skipped().first() {
            let head: Vec<u8> = (0..first.preview.len() / 2)
                .filter_map(|i| first.preview.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect();
            *foreign.lock().expect("foreign lock") = Some(guess_service(&head));
        }
    }
    open.send_replace(false);
    // Dropping the senders fails every waiter and ends every stream.
    let mut r = routes.lock().expect("routes lock");
    r.pending.clear();
    r.streams.clear();
}

/// A DVRIP client. Cheap to clone; all clones share one connection, and any
/// number of tasks may call it at once.
#[derive(Clone)]
pub struct Client {
    cfg: Arc<ClientConfig>,
    conn: Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    alarms: broadcast::Sender<AlarmInfo>,
    /// Snapshot replies (1561) are routed by message id, so one snapshot at
    /// a time per connection; callers from many tasks wait their turn.
    snap: Arc<tokio::sync::Mutex<()>>,
}

/// How live media reaches us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SocketMode {
    /// Claim and media on the control connection.
    #[default]
    Single,
    /// The vendor's way: claim on a second TCP connection (same SessionID,
    /// no login) that then carries the media.
    Second,
}

/// A file search (1440). Times are the device's local time.
#[derive(Clone, Debug)]
pub struct FileQuery {
    pub begin: NaiveDateTime,
    pub end: NaiveDateTime,
    pub channel: u32,
    /// `*` all, or the letters A alarm, M motion, R regular, H manual.
    pub event: String,
    /// `h264` (video) or `jpg`.
    pub kind: String,
    pub stream: StreamType,
}

impl FileQuery {
    pub fn new(channel: u32, begin: NaiveDateTime, end: NaiveDateTime) -> Self {
        FileQuery { begin, end, channel, event: "*".into(), kind: "h264".into(), stream: StreamType::Main }
    }
}

/// Progress of a firmware upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeProgress {
    /// Bytes sent of the total.
    Sent(u64, u64),
    /// Percent the device has written.
    Writing(u8),
    Done,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Self {
        Client { cfg: Arc::new(cfg), conn: Arc::default(), alarms: broadcast::channel(256).0, snap: Arc::default() }
    }

    /// Connects and logs in now (calls do it on demand otherwise).
    pub async fn connect(cfg: ClientConfig) -> Result<Self> {
        let c = Client::new(cfg);
        c.conn().await?;
        Ok(c)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn addr(&self) -> String {
        self.cfg.addr.clone()
    }

    /// The current connection, dialling and logging in if there is none or
    /// the device dropped it (e.g. after a reboot).
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.is_open() {
                return Ok(c.clone());
            }
            tracing::info!(addr = %self.cfg.addr, "dvrip client: connection lost; logging in again");
        }
        let c = self.login().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Whether a logged-in connection is open now (never dials).
    pub async fn is_connected(&self) -> bool {
        self.conn.lock().await.as_ref().is_some_and(|c| c.is_open())
    }

    /// Drops the connection and logs in again.
    pub async fn reconnect(&self) -> Result<()> {
        let mut slot = self.conn.lock().await;
        *slot = None;
        *slot = Some(self.login().await?);
        Ok(())
    }

    /// What the device said at login.
    pub async fn login_info(&self) -> Result<LoginReply> {
        Ok(self.conn().await?.login.clone())
    }

    pub async fn session_id(&self) -> Result<u32> {
        Ok(self.conn().await?.session)
    }

    async fn dial(&self) -> Result<TcpStream> {
        let addr = self.addr();
        let s = tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(&self.cfg.addr))
            .await
            .map_err(|_| Error::ConnectTimeout { addr: addr.clone(), timeout: self.cfg.connect_timeout })?
            .map_err(|cause| Error::Connect { addr: addr.clone(), cause })?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    async fn login(&self) -> Result<Arc<Conn>> {
        let addr = self.addr();
        let stream = self.dial().await?;
        let (rd, wr) = stream.into_split();
        let reader = FramedRead::new(rd, DvripCodec::new(self.cfg.max_len));
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (open_tx, open_rx) = watch::channel(true);
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Packet>();
        let write_open = open_tx.clone();
        let write_addr = addr.clone();
        let writer_task = tokio::spawn(async move {
            let mut sink: FrameSink = FramedWrite::new(wr, DvripCodec::new(usize::MAX));
            while let Some(p) = wrx.recv().await {
                let mut r = sink.feed(p).await;
                if r.is_ok() && wrx.is_empty() {
                    r = sink.flush().await;
                }
                if let Err(e) = r {
                    tracing::warn!(addr = %write_addr, error = %e, "dvrip client: write error");
                    write_open.send_replace(false);
                    return;
                }
            }
        });
        let foreign = Arc::new(Mutex::new(None));
        let reader_task = tokio::spawn(read_loop(
            reader,
            routes.clone(),
            self.alarms.clone(),
            open_tx,
            addr.clone(),
            foreign.clone(),
        ));
        let mut conn = Conn {
            addr: addr.clone(),
            session: 0,
            login: LoginReply {
                ret: 0,
                session: 0,
                alive_interval: 0,
                channels: 0,
                extra_channels: 0,
                device_type: String::new(),
                data_use_aes: false,
            },
            writer: wtx,
            seq: AtomicU32::new(0),
            routes,
            open: open_rx,
            timeout: self.cfg.timeout,
            tasks: Mutex::new(vec![AbortOnDrop(reader_task), AbortOnDrop(writer_task)]),
        };
        let req = LoginRequest {
            user: self.cfg.user.clone(),
            password: self.cfg.encryption.encode(&self.cfg.password),
            encrypt_type: self.cfg.encryption.as_str().into(),
            login_type: self.cfg.login_type.clone(),
        };
        let v = match conn.call_json(ids::LOGIN_REQ, &req.to_json()).await {
            Ok(v) => v,
            Err(e @ Error::Closed { .. }) => {
                // Let the reader finish its note on what came instead.
                tokio::task::yield_now().await;
                return Err(match *foreign.lock().expect("foreign lock") {
                    Some(guess) => Error::NotDvrip { addr, guess },
                    None => e,
                });
            }
            Err(e) => return Err(e),
        };
        let reply = LoginReply::parse(&v).map_err(|cause| Error::LoginReply { addr: addr.clone(), cause })?;
        if !ret::is_success(reply.ret) {
            return Err(Error::Login { addr, user: self.cfg.user.clone(), code: reply.ret });
        }
        conn.session = reply.session;
        conn.login = reply;
        let conn = Arc::new(conn);
        // Keep-alive on its own task: it only needs the writer for a moment,
        // so downloads, streams and alarm reading never starve it.
        let weak = Arc::downgrade(&conn);
        let every = Duration::from_secs(conn.login.alive_interval.clamp(1, 3600) as u64);
        let ka = tokio::spawn(async move {
            let mut misses = 0;
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = weak.upgrade() else { return };
                if !c.is_open() {
                    return;
                }
                let body = json!({"Name": "KeepAlive", "SessionID": format_session(c.session)});
                match c.call_json(ids::KEEPALIVE_REQ, &body).await {
                    Ok(_) => misses = 0,
                    Err(e) => {
                        misses += 1;
                        tracing::warn!(addr = %c.addr, error = %e, misses, "dvrip client: keep-alive failed");
                        if misses >= 3 {
                            return;
                        }
                    }
                }
            }
        });
        conn.tasks.lock().expect("tasks lock").push(AbortOnDrop(ka));
        Ok(conn)
    }

    /// Logs out and closes the connection.
    pub async fn logout(&self) -> Result<()> {
        let conn = self.conn.lock().await.take();
        if let Some(c) = conn {
            if c.is_open() {
                let body = json!({"Name": "", "SessionID": format_session(c.session)});
                let _ = c.call_json(ids::LOGOUT_REQ, &body).await;
            }
        }
        Ok(())
    }

    // ---- raw calls ----

    /// Any message id with any JSON body; the reply as the device sent it,
    /// whatever its `Ret` (for what firmware adds later).
    pub async fn raw(&self, msg_id: u16, body: Value) -> Result<Value> {
        let c = self.conn().await?;
        c.call_json(msg_id, &body).await
    }

    /// `{"Name": name, "SessionID", name: body}` → the reply, failing on a
    /// `Ret` that is not a success.
    pub async fn command(&self, msg_id: u16, name: &str, body: Option<Value>) -> Result<Value> {
        let c = self.conn().await?;
        let v = c.call_json(msg_id, &messages::request(name, c.session, body)).await?;
        self.check(msg_id, name, v)
    }

    /// Stream set-up must be answered 100: 119 ("no files") is a success
    /// for a search but means there is nothing to play.
    fn check_ok(&self, msg_id: u16, name: &str, v: Value) -> Result<Value> {
        match crate::json::ret(&v) {
            Some(code) if code != ret::code::OK => {
                Err(Error::Ret { addr: self.addr(), msg_id, name: name.to_owned(), code })
            }
            _ => Ok(v),
        }
    }

    fn check(&self, msg_id: u16, name: &str, v: Value) -> Result<Value> {
        match crate::json::ret(&v) {
            Some(code) if !ret::is_success(code) => {
                Err(Error::Ret { addr: self.addr(), msg_id, name: name.to_owned(), code })
            }
            _ => Ok(v),
        }
    }

    /// The `name` member of a reply (or `Null`).
    async fn get(&self, msg_id: u16, name: &str, body: Option<Value>) -> Result<Value> {
        let mut v = self.command(msg_id, name, body).await?;
        Ok(v.get_mut(name).map(Value::take).unwrap_or(Value::Null))
    }

    // ---- information ----

    /// 1020 `SystemInfo`: channels, build time, model, run time, serial…
    pub async fn system_info(&self) -> Result<Value> {
        self.get(ids::SYSTEM_INFO_REQ, "SystemInfo", None).await
    }
    pub async fn storage_info(&self) -> Result<Value> {
        self.get(ids::SYSTEM_INFO_REQ, "StorageInfo", None).await
    }
    pub async fn work_state(&self) -> Result<Value> {
        self.get(ids::SYSTEM_INFO_REQ, "WorkState", None).await
    }
    pub async fn oem_info(&self) -> Result<Value> {
        self.get(ids::SYSTEM_INFO_REQ, "OEMInfo", None).await
    }
    /// 1360 `SystemFunction`: nested boolean capability groups.
    pub async fn system_function(&self) -> Result<Value> {
        self.get(ids::SYSTEMFUNCTION_REQ, "SystemFunction", None).await
    }
    pub async fn encode_capability(&self) -> Result<Value> {
        self.get(ids::SYSTEMFUNCTION_REQ, "EncodeCapability", None).await
    }

    // ---- configuration ----

    /// 1042: a config path such as `General.General` or `Camera.Param.[0]`.
    pub async fn config_get(&self, path: &str) -> Result<Value> {
        self.get(ids::CONFIG_GET, path, None).await
    }
    /// 1040: sets a path; a sparse object merges into the device's tree.
    pub async fn config_set(&self, path: &str, value: Value) -> Result<()> {
        self.command(ids::CONFIG_SET, path, Some(value)).await.map(drop)
    }
    /// 1044: the factory default of a path.
    pub async fn config_default(&self, path: &str) -> Result<Value> {
        self.get(ids::DEFAULT_CONFIG_GET, path, None).await
    }
    /// 1048: channel titles.
    pub async fn channel_titles(&self) -> Result<Vec<String>> {
        let v = self.get(ids::CHANNELTITLE_REQ, "ChannelTitle", None).await?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }
    /// 1050: a channel title as a 1-bit bitmap (`width × height` pixels,
    /// rows packed MSB first), for devices that draw titles from bitmaps.
    pub async fn set_title_bitmap(&self, width: u16, height: u16, bits: &[u8]) -> Result<()> {
        let need = (width as usize * height as usize).div_ceil(8);
        if bits.len() != need {
            return Err(Error::Protocol {
                addr: self.addr(),
                message: format!("a {width}x{height} bitmap is {need} bytes, got {}", bits.len()),
            });
        }
        let c = self.conn().await?;
        let mut payload = BytesMut::with_capacity(16 + bits.len());
        payload.extend_from_slice(&width.to_le_bytes());
        payload.extend_from_slice(&height.to_le_bytes());
        payload.extend_from_slice(&[0; 12]);
        payload.extend_from_slice(bits);
        let seq = c.next_seq();
        let v = self.call_binary(&c, ids::CONFIG_CHANNELTILE_DOT_SET, seq, payload.freeze(), false).await?;
        self.check(ids::CONFIG_CHANNELTILE_DOT_SET, "ChannelTitleDot", v).map(drop)
    }

    /// 1046: sets channel titles.
    pub async fn set_channel_titles(&self, titles: &[String]) -> Result<()> {
        self.command(ids::CONFIG_CHANNELTILE_SET, "ChannelTitle", Some(json!(titles))).await.map(drop)
    }

    // ---- time and machine ----

    /// 1452: the device clock (`None` if unset: `0000-00-00 00:00:00`).
    pub async fn time(&self) -> Result<Option<NaiveDateTime>> {
        let v = self.get(ids::OPTIMEQUERY_REQ, "OPTimeQuery", None).await?;
        Ok(v.as_str().and_then(parse_time))
    }
    /// 1450 `OPTimeSetting`.
    pub async fn set_time(&self, t: &NaiveDateTime) -> Result<()> {
        self.command(ids::SYSMANAGER_REQ, "OPTimeSetting", Some(json!(format_time(t)))).await.map(drop)
    }
    /// 1590 `OPTimeSettingNoRTC`, for devices without a real-time clock.
    pub async fn set_time_no_rtc(&self, t: &NaiveDateTime) -> Result<()> {
        self.command(ids::OPTIMESETTING_NORTC_REQ, "OPTimeSettingNoRTC", Some(json!(format_time(t)))).await.map(drop)
    }
    /// 1450 `OPMachine {"Action": "Reboot"}`. The device drops the
    /// connection; the next call logs in again once it is back.
    pub async fn reboot(&self) -> Result<()> {
        let r = self.command(ids::SYSMANAGER_REQ, "OPMachine", Some(json!({"Action": "Reboot"}))).await;
        *self.conn.lock().await = None;
        r.map(drop)
    }
    /// 1450 `OPLogManager {"Action": "RemoveAll"}`.
    pub async fn clear_log(&self) -> Result<()> {
        self.command(ids::SYSMANAGER_REQ, "OPLogManager", Some(json!({"Action": "RemoveAll"}))).await.map(drop)
    }
    /// 1450 `OPDefaultConfig`: restores the groups set to true.
    pub async fn restore_defaults(&self, groups: Value) -> Result<()> {
        self.command(ids::SYSMANAGER_REQ, "OPDefaultConfig", Some(groups)).await.map(drop)
    }

    // ---- PTZ ----

    /// 1400 `OPPTZControl`: start moving (or set/goto/clear a preset, start
    /// a tour).
    pub async fn ptz(&self, cmd: PtzCommand, channel: u32, step: u32, preset: i64, tour: u32) -> Result<()> {
        self.command(ids::PTZ_REQ, "OPPTZControl", Some(cmd.body(channel, step, preset, tour, false))).await.map(drop)
    }
    /// Stops a movement: the same command with `Preset: -1`.
    pub async fn ptz_stop(&self, cmd: PtzCommand, channel: u32) -> Result<()> {
        self.command(ids::PTZ_REQ, "OPPTZControl", Some(cmd.body(channel, 5, -1, 0, true))).await.map(drop)
    }

    // ---- search ----

    /// 1440 with paging: at most 64 files a reply, so re-query from the
    /// last `BeginTime` until the device says all (110) or none (119).
    pub async fn files(&self, q: &FileQuery) -> Result<Vec<FileEntry>> {
        let mut out: Vec<FileEntry> = Vec::new();
        let mut begin = q.begin;
        for _page in 0..10_000 {
            let body = json!({
                "BeginTime": format_time(&begin),
                "Channel": q.channel,
                "DriverTypeMask": "0x0000FFFF",
                "EndTime": format_time(&q.end),
                "Event": q.event,
                "StreamType": if q.stream == StreamType::Main { "0x00000000" } else { "0x00000001" },
                "Type": q.kind,
            });
            let v = self.command(ids::FILESEARCH_REQ, "OPFileQuery", Some(body)).await?;
            let code = crate::json::ret(&v).unwrap_or(ret::code::OK);
            let list = v.get("OPFileQuery").or_else(|| v.get("FileList")).cloned().unwrap_or(Value::Null);
            let page: Vec<FileEntry> = match list {
                Value::Null => Vec::new(),
                l => serde_json::from_value(l).map_err(|e| Error::Protocol {
                    addr: self.addr(),
                    message: format!("file list entries do not parse: {e}"),
                })?,
            };
            let before = out.len();
            for f in page {
                if !out.iter().any(|o| o.name == f.name) {
                    out.push(f);
                }
            }
            let last_begin = out.last().and_then(FileEntry::begin_time);
            if code != ret::code::SEARCH_PARTIAL || out.len() == before {
                break;
            }
            match last_begin {
                Some(t) if t >= begin => begin = t,
                _ => break,
            }
        }
        Ok(out)
    }

    /// 1442 with paging by `LogPosition`.
    pub async fn logs(&self, begin: &NaiveDateTime, end: &NaiveDateTime, kind: &str) -> Result<Vec<LogEntry>> {
        let mut out: Vec<LogEntry> = Vec::new();
        let mut pos = 0u64;
        for _page in 0..10_000 {
            let body = json!({
                "BeginTime": format_time(begin),
                "EndTime": format_time(end),
                "LogPosition": pos,
                "Type": kind,
            });
            let v = self.command(ids::LOGSEARCH_REQ, "OPLogQuery", Some(body)).await?;
            let list = v.get("OPLogQuery").or_else(|| v.get("LogList")).cloned().unwrap_or(Value::Null);
            let page: Vec<LogEntry> = match list {
                Value::Null => Vec::new(),
                l => serde_json::from_value(l).map_err(|e| Error::Protocol {
                    addr: self.addr(),
                    message: format!("log entries do not parse: {e}"),
                })?,
            };
            if page.is_empty() {
                break;
            }
            pos = page.iter().map(|e| e.position).max().unwrap_or(pos) + 1;
            out.extend(page);
        }
        Ok(out)
    }

    // ---- users and groups ----

    pub async fn authority_list(&self) -> Result<Vec<String>> {
        let v = self.get(ids::FULLAUTHORITYLIST_GET, "AuthorityList", None).await?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }
    pub async fn users(&self) -> Result<Vec<Value>> {
        let v = self.get(ids::USERS_GET, "Users", None).await?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }
    pub async fn groups(&self) -> Result<Vec<Value>> {
        let v = self.get(ids::GROUPS_GET, "Groups", None).await?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }
    /// 1476: `{"Group": {AuthorityList, Memo, Name}}`.
    pub async fn add_group(&self, name: &str, memo: &str, authorities: &[String]) -> Result<()> {
        let g = json!({"AuthorityList": authorities, "Memo": memo, "Name": name});
        self.command(ids::ADDGROUP_REQ, "AddGroup", Some(json!({"Group": g}))).await.map(drop)
    }
    /// 1478: `{"Group": {…}, "GroupName": old}`.
    pub async fn modify_group(&self, old: &str, group: Value) -> Result<()> {
        let c = self.conn().await?;
        let body =
            json!({"Group": group, "GroupName": old, "Name": "ModifyGroup", "SessionID": format_session(c.session)});
        let v = c.call_json(ids::MODIFYGROUP_REQ, &body).await?;
        self.check(ids::MODIFYGROUP_REQ, "ModifyGroup", v).map(drop)
    }
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let c = self.conn().await?;
        let v =
            c.call_json(ids::DELETEGROUP_REQ, &json!({"Name": name, "SessionID": format_session(c.session)})).await?;
        self.check(ids::DELETEGROUP_REQ, "DelGroup", v).map(drop)
    }
    /// 1482. The password is sent as its Sofia hash.
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        group: &str,
        memo: &str,
        authorities: &[String],
    ) -> Result<()> {
        let u = json!({
            "AuthorityList": authorities, "Group": group, "Memo": memo, "Name": name,
            "Password": crate::hash::sofia_hash(password), "Reserved": false, "Sharable": true,
        });
        self.command(ids::ADDUSER_REQ, "AddUser", Some(json!({"User": u}))).await.map(drop)
    }
    /// 1484: `{"User": {…}, "UserName": old}`.
    pub async fn modify_user(&self, old: &str, user: Value) -> Result<()> {
        let c = self.conn().await?;
        let body = json!({"Name": "ModifyUser", "SessionID": format_session(c.session), "User": user, "UserName": old});
        let v = c.call_json(ids::MODIFYUSER_REQ, &body).await?;
        self.check(ids::MODIFYUSER_REQ, "ModifyUser", v).map(drop)
    }
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let c = self.conn().await?;
        let v = c.call_json(ids::OPDELUSER_REQ, &json!({"Name": name, "SessionID": format_session(c.session)})).await?;
        self.check(ids::OPDELUSER_REQ, "DelUser", v).map(drop)
    }
    /// 1488: both passwords as Sofia hashes.
    pub async fn change_password(&self, user: &str, old: &str, new: &str) -> Result<()> {
        let c = self.conn().await?;
        let body = json!({
            "EncryptType": "MD5", "NewPassWord": crate::hash::sofia_hash(new),
            "PassWord": crate::hash::sofia_hash(old), "SessionID": format_session(c.session), "UserName": user,
        });
        let v = c.call_json(ids::MODIFYPASSWORD_REQ, &body).await?;
        self.check(ids::MODIFYPASSWORD_REQ, "ModifyPassword", v).map(drop)
    }

    // ---- alarms ----

    /// Alarms pushed on this client's sessions (1504), once guarded.
    pub fn alarms(&self) -> broadcast::Receiver<AlarmInfo> {
        self.alarms.subscribe()
    }
    /// 1500: subscribe to alarms.
    pub async fn guard(&self) -> Result<()> {
        self.command(ids::GUARD_REQ, "", None).await.map(drop)
    }
    /// 1502: unsubscribe.
    pub async fn unguard(&self) -> Result<()> {
        self.command(ids::UNGUARD_REQ, "", None).await.map(drop)
    }
    /// 1506 `OPNetAlarm`: raise (true) or clear a network alarm input.
    pub async fn net_alarm(&self, on: bool) -> Result<()> {
        self.command(ids::NET_ALARM_REQ, "OPNetAlarm", Some(json!({"Event": 0, "State": on}))).await.map(drop)
    }

    // ---- keyboard ----

    /// 1550 `OPNetKeyboard {"Status": "KeyDown"|"KeyUp", "Value": key}`.
    pub async fn key(&self, key: &str, down: bool) -> Result<()> {
        let status = if down { "KeyDown" } else { "KeyUp" };
        self.command(ids::NET_KEYBOARD_REQ, "OPNetKeyboard", Some(json!({"Status": status, "Value": key})))
            .await
            .map(drop)
    }

    // ---- snapshot ----

    /// 1560 `OPSNAP`: the JPEG, whether the device sends it raw or framed
    /// as a 0x1FE picture, in one packet or many.
    pub async fn snapshot(&self, channel: u32) -> Result<Bytes> {
        let _one_at_a_time = self.snap.lock().await;
        let c = self.conn().await?;
        let mut rx = c.route(ids::NET_SNAP_RSP, 64);
        let body = messages::request("OPSNAP", c.session, Some(json!({"Channel": channel})));
        let h = Header::new(ids::NET_SNAP_REQ, c.session, c.next_seq(), 0);
        let res = async {
            c.write(Packet::new(h, encode_body(&body)))?;
            let mut buf = BytesMut::new();
            let deadline = tokio::time::Instant::now() + c.timeout;
            loop {
                // A raw JPEG that ends in FF D9 is probably whole: devices
                // that set no end flag get 300 ms to send more.
                let wait = if buf.starts_with(&[0xFF, 0xD8]) && buf.ends_with(&[0xFF, 0xD9]) {
                    deadline.min(tokio::time::Instant::now() + Duration::from_millis(300))
                } else {
                    deadline
                };
                let p = match tokio::time::timeout_at(wait, rx.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) => return Err(c.closed_err()),
                    Err(_) if !buf.is_empty() => break,
                    Err(_) => {
                        return Err(Error::Timeout {
                            addr: c.addr.clone(),
                            msg_id: ids::NET_SNAP_REQ,
                            name: "OPSNAP".into(),
                            seq: h.seq,
                            timeout: c.timeout,
                        })
                    }
                };
                if buf.is_empty() && p.payload.first() == Some(&b'{') {
                    // A JSON refusal (NVRs answer 108 when the channel cannot snap).
                    let v = c.body(&p)?;
                    self.check(ids::NET_SNAP_REQ, "OPSNAP", v)?;
                    continue;
                }
                buf.extend_from_slice(&p.payload);
                if p.header.end() || p.payload.is_empty() || snapshot_complete(&buf) {
                    break;
                }
            }
            media::snapshot_jpeg(buf.freeze())
                .map_err(|e| Error::Protocol { addr: c.addr.clone(), message: e.to_string() })
        }
        .await;
        c.unroute(ids::NET_SNAP_RSP);
        res
    }

    // ---- live, playback, download ----

    async fn open_stream(&self, setup: StreamSetup) -> Result<MediaStream> {
        let c = self.conn().await?;
        let (tx, rx) = mpsc::channel(256);
        let mut direct = None;
        let claim = messages::request(setup.name, c.session, Some(setup.claim_body.clone()));
        match setup.mode {
            SocketMode::Single => {
                c.routes.lock().expect("routes lock").streams.insert(setup.data_id, tx.clone());
                if let Some(end) = setup.eof_id {
                    c.routes.lock().expect("routes lock").streams.insert(end, tx.clone());
                }
                let v = c.call_json(setup.claim_id, &claim).await?;
                self.check_ok(setup.claim_id, setup.name, v)?;
            }
            SocketMode::Second => {
                let stream = self.dial().await?;
                let (rd, wr) = stream.into_split();
                let mut reader = FramedRead::new(rd, DvripCodec::new(self.cfg.max_len));
                let mut writer = FramedWrite::new(wr, DvripCodec::new(usize::MAX));
                let h = Header::new(setup.claim_id, c.session, 0, 0);
                writer
                    .send(Packet::new(h, encode_body(&claim)))
                    .await
                    .map_err(|e| Error::Io { addr: self.addr(), cause: std::io::Error::other(e.to_string()) })?;
                let reply = tokio::time::timeout(c.timeout, async {
                    while let Some(p) = reader.next().await {
                        let p = p.map_err(|e| Error::Io {
                            addr: self.addr(),
                            cause: std::io::Error::other(e.to_string()),
                        })?;
                        if p.msg_id() == ids::reply_of(setup.claim_id) {
                            return Ok(p);
                        }
                    }
                    Err(c.closed_err())
                })
                .await
                .map_err(|_| Error::Timeout {
                    addr: self.addr(),
                    msg_id: setup.claim_id,
                    name: setup.name.into(),
                    seq: 0,
                    timeout: c.timeout,
                })??;
                let v = parse_body(&reply.payload).map_err(|cause| Error::Body {
                    addr: self.addr(),
                    msg_id: reply.msg_id(),
                    seq: 0,
                    cause,
                })?;
                self.check_ok(setup.claim_id, setup.name, v)?;
                // The stream reads its own socket: no relay task (a wake-up per
                // packet less, which is what a camera costs on small boxes).
                direct = Some(Direct { reader, _writer: writer });
            }
        }
        let start = messages::request(setup.name, c.session, Some(setup.start_body.clone()));
        if setup.mode == SocketMode::Second {
            let v = c.call_json(setup.start_id, &start).await?;
            self.check_ok(setup.start_id, setup.name, v)?;
        } else {
            // On a single socket devices answer Start with the media itself
            // (python-dvr reads media right after it); a JSON reply some
            // firmware sends anyway is dropped by the reader as unsolicited.
            let h = Header::new(setup.start_id, c.session, c.next_seq(), 0);
            c.write(Packet::new(h, encode_body(&start)))?;
        }
        let source = match direct {
            Some(d) => Source::Direct(Box::new(d)),
            None => Source::Routed(rx),
        };
        Ok(MediaStream {
            source,
            demux: Demuxer::new(),
            ended: false,
            data_id: setup.data_id,
            eof_id: setup.eof_id,
            ends_on_flag: setup.ends_on_flag,
            stop: Some((c, setup.start_id, setup.name, setup.stop_body)),
            bytes: 0,
        })
    }

    /// Live view of a channel (1413 claim, 1410 start; media 1412).
    pub async fn monitor(&self, channel: u32, stream: StreamType, mode: SocketMode) -> Result<MediaStream> {
        let param =
            json!({"Channel": channel, "CombinMode": "NONE", "StreamType": stream.as_str(), "TransMode": "TCP"});
        self.open_stream(StreamSetup {
            name: "OPMonitor",
            claim_id: ids::OPMONITOR_CLAIM_REQ,
            start_id: ids::OPMONITOR_REQ,
            data_id: ids::OPMONITOR_DATA,
            eof_id: None,
            ends_on_flag: false,
            claim_body: json!({"Action": "Claim", "Parameter": param}),
            start_body: json!({"Action": "Start", "Parameter": param}),
            stop_body: json!({"Action": "Stop", "Parameter": param}),
            mode,
        })
        .await
    }

    fn playback_setup(&self, what: PlaybackTarget, download: bool, mode: SocketMode) -> StreamSetup {
        let (param, start, end) = match &what {
            PlaybackTarget::File(f) => (
                json!({"FileName": f.name, "PlayMode": "ByName", "TransMode": "TCP", "Value": 0}),
                f.begin.clone(),
                f.end.clone(),
            ),
            PlaybackTarget::Time { channel, begin, end, stream } => (
                json!({
                    "Channel": channel, "FileName": "", "PlayMode": "ByTime",
                    "StreamType": if *stream == StreamType::Main { 0 } else { 1 }, "TransMode": "TCP", "Value": 0,
                }),
                format_time(begin),
                format_time(end),
            ),
        };
        let (go, stop) = if download { ("DownloadStart", "DownloadStop") } else { ("Start", "Stop") };
        let body = |action: &str| json!({"Action": action, "EndTime": end, "Parameter": param, "StartTime": start});
        StreamSetup {
            name: "OPPlayBack",
            claim_id: ids::PLAY_CLAIM,
            start_id: ids::PLAY_REQ,
            data_id: if download { ids::DOWNLOAD_DATA } else { ids::PLAY_DATA },
            eof_id: Some(ids::PLAY_EOF),
            ends_on_flag: true,
            claim_body: body("Claim"),
            start_body: body(go),
            stop_body: body(stop),
            mode,
        }
    }

    /// Downloads a recording (data 1426, as fast as the device sends).
    pub async fn download(&self, what: PlaybackTarget, mode: SocketMode) -> Result<MediaStream> {
        let s = self.playback_setup(what, true, mode);
        self.open_stream(s).await
    }

    /// Plays a recording back at its own pace (data 1422).
    pub async fn playback(&self, what: PlaybackTarget, mode: SocketMode) -> Result<MediaStream> {
        let s = self.playback_setup(what, false, mode);
        self.open_stream(s).await
    }

    // ---- talk ----

    /// Two-way audio (1434 claim, 1430 start; up 1432, down 1433), G.711.
    pub async fn talk(&self, codec: media::AudioCodec) -> Result<Talk> {
        let c = self.conn().await?;
        let enc = if codec == media::AudioCodec::G711U { "G711_ULAW" } else { "G711_ALAW" };
        let fmt = json!({"BitRate": 128, "EncodeType": enc, "SampleBit": 8, "SampleRate": 8});
        let rx = c.route(ids::TALK_PU_CU_DATA, 256);
        let claim = messages::request("OPTalk", c.session, Some(json!({"Action": "Claim", "AudioFormat": fmt})));
        let v = c.call_json(ids::TALK_CLAIM, &claim).await?;
        self.check(ids::TALK_CLAIM, "OPTalk", v)?;
        let start = messages::request("OPTalk", c.session, Some(json!({"Action": "Start", "AudioFormat": fmt})));
        let v = c.call_json(ids::TALK_REQ, &start).await?;
        self.check(ids::TALK_REQ, "OPTalk", v)?;
        Ok(Talk { conn: c, rx, codec, demux: Demuxer::new(), fmt })
    }

    // ---- upgrade ----

    /// Firmware upgrade: 1520 start, 32 KiB chunks as 1522 (seq = block
    /// index, a JSON `Ret` after each), an end-flagged empty 1522, then
    /// progress until 515 (success) or 512/513/514 (failure).
    pub async fn upgrade(&self, image: &[u8], mut progress: impl FnMut(UpgradeProgress)) -> Result<()> {
        const CHUNK: usize = 32 * 1024;
        let c = self.conn().await?;
        let mut progress_rx = c.route(ids::UPGRADE_PROGRESS, 64);
        let res = async {
            self.command(ids::UPGRADE_REQ, "OPSystemUpgrade", Some(json!({"Action": "Start", "Type": "System"})))
                .await?;
            let total = image.len() as u64;
            let mut sent = 0u64;
            for (block, chunk) in image.chunks(CHUNK).enumerate() {
                let v =
                    self.call_binary(&c, ids::UPGRADE_DATA, block as u32, Bytes::copy_from_slice(chunk), false).await?;
                self.check(ids::UPGRADE_DATA, "OPSystemUpgrade", v)?;
                sent += chunk.len() as u64;
                progress(UpgradeProgress::Sent(sent, total));
            }
            let blocks = image.len().div_ceil(CHUNK) as u32;
            let v = self.call_binary(&c, ids::UPGRADE_DATA, blocks, Bytes::new(), true).await?;
            self.check(ids::UPGRADE_DATA, "OPSystemUpgrade", v)?;
            loop {
                let p = tokio::time::timeout(Duration::from_secs(120), progress_rx.recv())
                    .await
                    .map_err(|_| Error::Timeout {
                        addr: self.addr(),
                        msg_id: ids::UPGRADE_PROGRESS,
                        name: "OPSystemUpgrade".into(),
                        seq: 0,
                        timeout: Duration::from_secs(120),
                    })?
                    .ok_or_else(|| c.closed_err())?;
                let v = c.body(&p)?;
                match crate::json::ret(&v) {
                    Some(ret::code::UPGRADE_OK) => {
                        progress(UpgradeProgress::Done);
                        return Ok(());
                    }
                    Some(
                        code @ (ret::code::UPGRADE_NOT_STARTED
                        | ret::code::UPGRADE_DATA_ERROR
                        | ret::code::UPGRADE_FAILED),
                    ) => {
                        return Err(Error::Ret {
                            addr: self.addr(),
                            msg_id: ids::UPGRADE_PROGRESS,
                            name: "OPSystemUpgrade".into(),
                            code,
                        })
                    }
                    Some(pct @ 0..=100) => progress(UpgradeProgress::Writing(pct as u8)),
                    other => tracing::warn!(?other, "dvrip client: unexpected upgrade progress"),
                }
            }
        }
        .await;
        c.unroute(ids::UPGRADE_PROGRESS);
        res
    }

    async fn call_binary(&self, c: &Conn, msg_id: u16, seq: u32, payload: Bytes, end: bool) -> Result<Value> {
        let mut h = Header::new(msg_id, c.session, seq, payload.len());
        h.byte13 = end as u8;
        let p = c.send_and_wait(h, payload, ids::name(msg_id).unwrap_or("")).await?;
        c.body(&p)
    }

    // ---- import / export ----

    async fn export(&self, req_id: u16, name: &str) -> Result<Bytes> {
        let c = self.conn().await?;
        let mut rx = c.route(ids::reply_of(req_id), 64);
        let res = async {
            let h = Header::new(req_id, c.session, c.next_seq(), 0);
            c.write(Packet::new(h, encode_body(&messages::request(name, c.session, None))))?;
            let mut buf = BytesMut::new();
            loop {
                let p = tokio::time::timeout(c.timeout, rx.recv())
                    .await
                    .map_err(|_| Error::Timeout {
                        addr: self.addr(),
                        msg_id: req_id,
                        name: name.into(),
                        seq: h.seq,
                        timeout: c.timeout,
                    })?
                    .ok_or_else(|| c.closed_err())?;
                if buf.is_empty() && p.payload.first() == Some(&b'{') {
                    let v = c.body(&p)?;
                    self.check(req_id, name, v)?;
                    if p.header.end() {
                        break;
                    }
                    continue;
                }
                buf.extend_from_slice(&p.payload);
                if p.header.end() || p.payload.is_empty() {
                    break;
                }
            }
            Ok(buf.freeze())
        }
        .await;
        c.unroute(ids::reply_of(req_id));
        res
    }

    /// 1542: the configuration as the device's archive (a zip).
    pub async fn export_config(&self) -> Result<Bytes> {
        self.export(ids::CONFIG_EXPORT_REQ, "OPConfigExport").await
    }
    /// 1544: the log as a file.
    pub async fn export_log(&self) -> Result<Bytes> {
        self.export(ids::LOG_EXPORT_REQ, "OPLogExport").await
    }
    /// 1540: uploads a configuration archive (as exported) in chunks; the
    /// last one carries the end flag, and the device answers once.
    pub async fn import_config(&self, archive: &[u8]) -> Result<()> {
        const CHUNK: usize = 16 * 1024;
        let c = self.conn().await?;
        let chunks: Vec<&[u8]> = if archive.is_empty() { vec![&[][..]] } else { archive.chunks(CHUNK).collect() };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut h = Header::new(ids::CONFIG_IMPORT_REQ, c.session, i as u32, chunk.len());
            if i == last {
                h.byte13 = 1;
                let p = c.send_and_wait(h, Bytes::copy_from_slice(chunk), "OPConfigImport").await?;
                let v = c.body(&p)?;
                self.check(ids::CONFIG_IMPORT_REQ, "OPConfigImport", v)?;
            } else {
                c.write(Packet::new(h, Bytes::copy_from_slice(chunk)))?;
            }
        }
        Ok(())
    }

    // ---- serial ports ----

    /// 1578 `OPTransCommChannel`: opens (or closes) transparent piping of
    /// a serial port; data then flows as 1582 (RS-232) or 1580 (RS-485)
    /// both ways.
    pub async fn serial_open(&self, port: SerialPort, baud: u32) -> Result<SerialPipe> {
        let c = self.conn().await?;
        let data_id = port.data_id();
        let rx = c.route(data_id, 64);
        let body = json!({"Action": "Start", "SerialType": port.as_str(), "BaudRate": baud, "DataBits": 8, "Parity": "None", "StopBits": 1});
        let v = c
            .call_json(ids::TRANSPARENT_COMM_REQ, &messages::request("OPTransCommChannel", c.session, Some(body)))
            .await;
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                c.unroute(data_id);
                return Err(e);
            }
        };
        if let Err(e) = self.check(ids::TRANSPARENT_COMM_REQ, "OPTransCommChannel", v) {
            c.unroute(data_id);
            return Err(e);
        }
        Ok(SerialPipe { conn: c, port, rx })
    }

    /// 1570/1574: one read of a serial port (bytes as hex in `Data`).
    pub async fn serial_read(&self, port: SerialPort) -> Result<Vec<u8>> {
        let (id, name) = match port {
            SerialPort::Rs232 => (ids::RS232_READ_REQ, "OPRS232Read"),
            SerialPort::Rs485 => (ids::RS485_READ_REQ, "OPRS485Read"),
        };
        let v = self.get(id, name, None).await?;
        let hex = v.get("Data").and_then(Value::as_str).unwrap_or("");
        unhex(hex)
            .ok_or_else(|| Error::Protocol { addr: self.addr(), message: format!("serial data is not hex: {hex:?}") })
    }

    /// 1572/1576: one write to a serial port.
    pub async fn serial_write(&self, port: SerialPort, data: &[u8]) -> Result<()> {
        let (id, name) = match port {
            SerialPort::Rs232 => (ids::RS232_WRITE_REQ, "OPRS232Write"),
            SerialPort::Rs485 => (ids::RS485_WRITE_REQ, "OPRS485Write"),
        };
        let hex: String = data.iter().map(|b| format!("{b:02X}")).collect();
        self.command(id, name, Some(json!({"Data": hex, "Length": data.len()}))).await.map(drop)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Whether a snapshot buffer holds a whole picture already (for devices
/// that set no end flag).
fn snapshot_complete(buf: &[u8]) -> bool {
    if buf.starts_with(&[0, 0, 1, 0xFE]) && buf.len() >= 16 {
        let len = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
        return buf.len() >= 16 + len;
    }
    false
}

/// What to play back or download.
#[derive(Clone, Debug)]
pub enum PlaybackTarget {
    File(FileEntry),
    Time { channel: u32, begin: NaiveDateTime, end: NaiveDateTime, stream: StreamType },
}

struct StreamSetup {
    name: &'static str,
    claim_id: u16,
    start_id: u16,
    data_id: u16,
    eof_id: Option<u16>,
    ends_on_flag: bool,
    claim_body: Value,
    start_body: Value,
    stop_body: Value,
    mode: SocketMode,
}

/// A media stream: live, playback or download. Read raw chunks (what the
/// device sends, e.g. to save a `.h264` file as the device stores it) or
/// demuxed frames.
pub struct MediaStream {
    source: Source,
    demux: Demuxer,
    ended: bool,
    data_id: u16,
    eof_id: Option<u16>,
    ends_on_flag: bool,
    stop: Option<(Arc<Conn>, u16, &'static str, Value)>,
    bytes: u64,
}

/// A second connection read by its stream.
struct Direct {
    reader: FramedRead<tokio::net::tcp::OwnedReadHalf, DvripCodec>,
    /// Kept open: closing it ends the device's stream.
    _writer: FramedWrite<OwnedWriteHalf, DvripCodec>,
}

/// Where a stream's packets come from: routed from the control connection
/// by the reader task, or read straight from its own second connection.
enum Source {
    Routed(mpsc::Receiver<Packet>),
    Direct(Box<Direct>),
}

impl MediaStream {
    /// The next chunk of the byte stream; `None` at its end (end flag,
    /// empty packet or 1423), or when the connection closed.
    async fn next_packet(&mut self) -> Option<Packet> {
        match &mut self.source {
            Source::Routed(rx) => rx.recv().await,
            Source::Direct(d) => loop {
                match d.reader.next().await {
                    Some(Ok(p)) if p.msg_id() == self.data_id || Some(p.msg_id()) == self.eof_id => return Some(p),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            },
        }
    }

    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        while !self.ended {
            let p = self.next_packet().await?;
            if Some(p.msg_id()) == self.eof_id && p.msg_id() != self.data_id {
                self.ended = true;
                return None;
            }
            if self.ends_on_flag && (p.header.end() || p.payload.is_empty()) {
                self.ended = true;
                if p.payload.is_empty() {
                    return None;
                }
                self.bytes += p.payload.len() as u64;
                return Some(p.payload);
            }
            if p.payload.is_empty() {
                continue;
            }
            self.bytes += p.payload.len() as u64;
            return Some(p.payload);
        }
        None
    }

    /// The next demuxed frame; `None` at the end.
    pub async fn next_frame(&mut self) -> Option<MediaFrame> {
        loop {
            if let Some(f) = self.demux.next_frame() {
                return Some(f);
            }
            let chunk = self.next_chunk().await?;
            self.demux.feed(&chunk);
        }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Media bytes skipped while resynchronising the frame stream.
    pub fn resyncs(&mut self) -> Vec<media::Resync> {
        self.demux.take_resyncs()
    }

    /// Asks the device to stop (unless the stream already ended), and
    /// closes the stream.
    pub async fn stop(mut self) -> Result<()> {
        if let Some((c, id, name, body)) = self.stop.take() {
            c.unroute(self.data_id);
            if let Some(e) = self.eof_id {
                c.unroute(e);
            }
            if c.is_open() && !self.ended {
                // Not every device answers Stop; do not wait for it.
                let h = Header::new(id, c.session, c.next_seq(), 0);
                c.write(Packet::new(h, encode_body(&messages::request(name, c.session, Some(body)))))?;
            }
        }
        Ok(())
    }
}

impl Drop for MediaStream {
    fn drop(&mut self) {
        if let Some((c, id, name, body)) = self.stop.take() {
            c.unroute(self.data_id);
            if let Some(e) = self.eof_id {
                c.unroute(e);
            }
            if c.is_open() && !self.ended {
                // Queued now, so it goes out before anything sent later (a
                // spawned send could overtake the next stream's Start).
                let h = Header::new(id, c.session, c.next_seq(), 0);
                let _ = c.write(Packet::new(h, encode_body(&messages::request(name, c.session, Some(body)))));
            }
        }
    }
}

/// A two-way audio session.
pub struct Talk {
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Packet>,
    codec: media::AudioCodec,
    demux: Demuxer,
    fmt: Value,
}

impl Talk {
    /// Sends G.711 audio, framed as the device expects: `00 00 01 FA`,
    /// codec, rate, u16 length, in 320-byte frames.
    pub async fn send(&self, audio: &[u8]) -> Result<()> {
        for chunk in audio.chunks(320) {
            let mut b = BytesMut::with_capacity(8 + chunk.len());
            media::write_audio(&mut b, self.codec, 8000, chunk);
            let h = Header::new(ids::TALK_CU_PU_DATA, self.conn.session, self.conn.next_seq(), b.len());
            self.conn.write(Packet::new(h, b.freeze()))?;
        }
        Ok(())
    }

    /// The next audio frame from the device.
    pub async fn recv(&mut self) -> Option<MediaFrame> {
        loop {
            if let Some(f) = self.demux.next_frame() {
                return Some(f);
            }
            let p = self.rx.recv().await?;
            self.demux.feed(&p.payload);
        }
    }

    /// Stops talking (1430 `Stop`).
    pub async fn stop(self) -> Result<()> {
        self.conn.unroute(ids::TALK_PU_CU_DATA);
        let body =
            messages::request("OPTalk", self.conn.session, Some(json!({"Action": "Stop", "AudioFormat": self.fmt})));
        self.conn.call_json(ids::TALK_REQ, &body).await.map(drop)
    }
}

/// A device serial port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerialPort {
    Rs232,
    Rs485,
}

impl SerialPort {
    pub fn as_str(self) -> &'static str {
        match self {
            SerialPort::Rs232 => "RS232",
            SerialPort::Rs485 => "RS485",
        }
    }
    pub fn data_id(self) -> u16 {
        match self {
            SerialPort::Rs232 => ids::RS232_TRANSPARENT_DATA_REQ,
            SerialPort::Rs485 => ids::RS485_TRANSPARENT_DATA_REQ,
        }
    }
}

/// Transparent piping to a serial port.
pub struct SerialPipe {
    conn: Arc<Conn>,
    port: SerialPort,
    rx: mpsc::Receiver<Packet>,
}

impl SerialPipe {
    pub async fn send(&self, data: &[u8]) -> Result<()> {
        let h = Header::new(self.port.data_id(), self.conn.session, self.conn.next_seq(), data.len());
        self.conn.write(Packet::new(h, Bytes::copy_from_slice(data)))
    }
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await.map(|p| p.payload)
    }
    pub async fn close(self) -> Result<()> {
        self.conn.unroute(self.port.data_id());
        let body = json!({"Action": "Stop", "SerialType": self.port.as_str()});
        let v = self
            .conn
            .call_json(
                ids::TRANSPARENT_COMM_REQ,
                &messages::request("OPTransCommChannel", self.conn.session, Some(body)),
            )
            .await?;
        let _ = v;
        Ok(())
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` (or `YYYY-MM-DDTHH:MM:SS`) for command lines.
pub fn parse_local_time(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, TIME_FORMAT)
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .ok()
}
