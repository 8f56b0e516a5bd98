//! The device side: a TCP server that does what every DVRIP device does
//! (sessions, login check, keep-alive expiry, second-socket data channels,
//! fragmenting large replies) and hands every other request to a
//! [`Device`]. The simulator and, later, the edge build on it.

use crate::codec::{DvripCodec, Packet, VENDOR_FRAGMENT};
use crate::header::Header;
use crate::ids;
use crate::json::{encode_body, format_session, parse_body, BodyError};
use crate::messages::{LoginReply, LoginRequest};
use crate::ret::code;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Settings every device has.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Seconds, announced as `AliveInterval` in the login reply.
    pub alive_interval: u32,
    /// A session with no packet for `alive_interval * keepalive_misses`
    /// seconds is dropped, as devices do.
    pub keepalive_misses: u32,
    /// How long a connection may stay without logging in.
    pub login_timeout: Duration,
    pub max_len: usize,
    /// Outgoing packets queued per connection before senders wait.
    pub queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            alive_interval: 20,
            keepalive_misses: 3,
            login_timeout: Duration::from_secs(30),
            max_len: crate::codec::DEFAULT_MAX_LEN,
            queue: 512,
        }
    }
}

/// What a login decision gives the reply.
#[derive(Clone, Debug)]
pub struct LoginGrant {
    pub channels: u32,
    pub extra_channels: u32,
    /// `"DeviceType "`: IPC, DVR, NVR, HVR…
    pub device_type: String,
}

/// A request on a session (or on a data connection attached to one).
#[derive(Debug)]
pub struct Request {
    pub header: Header,
    /// The JSON body, or why the payload is not one (binary messages such
    /// as upgrade chunks are in `payload`).
    pub body: Result<Value, BodyError>,
    pub payload: Bytes,
    /// Whether it came on a second (claim) connection.
    pub on_data_channel: bool,
}

impl Request {
    /// `body[Name]`, the command name, if the body is JSON.
    pub fn name(&self) -> Option<&str> {
        self.body.as_ref().ok()?.get("Name")?.as_str()
    }
}

/// What the device answers.
#[derive(Debug)]
pub enum Response {
    /// A JSON reply sent as message id + 1 with the request's seq.
    Json(Value),
    /// An already encoded JSON body (trailer included), sent like `Json`:
    /// lets a device serialise straight from its own data.
    Body(Bytes),
    /// Exactly these packets (binary replies, odd ids).
    Packets(Vec<Packet>),
    /// No reply (data messages, or a reply sent later by a task).
    Nothing,
    /// Reply, then close the connection (reboot, forced logout).
    JsonThenClose(Value),
}

/// The device behind the server.
pub trait Device: Send + Sync + 'static {
    /// Decides a login: a grant, or the `Ret` code of the refusal.
    fn login(&self, req: &LoginRequest, peer: SocketAddr) -> Result<LoginGrant, i64>;

    /// Handles one request of a logged-in session, in arrival order.
    /// Long work belongs in a spawned task that uses the [`Session`].
    fn handle(self: &Arc<Self>, session: &Session, req: Request) -> impl Future<Output = Response> + Send;

    /// A session ended (logout, expiry, disconnect).
    fn session_closed(&self, _session: &Session) {}
}

struct SessionInner {
    id: u32,
    user: String,
    peer: SocketAddr,
    control: mpsc::Sender<Packet>,
    /// Second (claim) connections, each with the key of its claim
    /// ([`claim_key`]), newest last: an NVR client claims one per stream.
    data: Mutex<Vec<(String, mpsc::Sender<Packet>)>>,
    seq: AtomicU32,
    closed: watch::Sender<bool>,
}

/// A logged-in session: who, and where to send packets.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({}, {}@{})", format_session(self.inner.id), self.inner.user, self.inner.peer)
    }
}

impl Session {
    pub fn id(&self) -> u32 {
        self.inner.id
    }
    pub fn user(&self) -> &str {
        &self.inner.user
    }
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }
    /// A sequence number for device-originated packets (media, alarms).
    pub fn next_seq(&self) -> u32 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }
    /// A header for a device-originated packet of this session.
    pub fn header(&self, msg_id: u16) -> Header {
        Header::new(msg_id, self.inner.id, self.next_seq(), 0)
    }
    /// Sends on the control connection; false once it is gone.
    pub async fn send(&self, p: Packet) -> bool {
        self.inner.control.send(p).await.is_ok()
    }
    /// Sends a JSON message on the control connection.
    pub async fn send_json(&self, msg_id: u16, body: &Value) -> bool {
        let h = self.header(msg_id);
        self.send(Packet::new(h, encode_body(body))).await
    }
    fn data_for(&self, key: Option<&str>) -> Option<mpsc::Sender<Packet>> {
        let data = self.inner.data.lock().expect("session lock");
        match key {
            Some(k) => data.iter().rev().find(|(dk, _)| dk == k).map(|(_, d)| d.clone()),
            None => data.last().map(|(_, d)| d.clone()),
        }
    }
    /// Sends media: on the newest claimed second connection if there is
    /// one, else on the control connection (single-socket clients).
    pub async fn send_media(&self, p: Packet) -> bool {
        match self.data_for(None) {
            Some(d) => d.send(p).await.is_ok(),
            None => self.send(p).await,
        }
    }
    /// Sends on the newest claimed second connection only: false if there
    /// is none (any more). A stream that began there must end with it, never
    /// spill onto the control connection, where strict clients take it as stray.
    pub async fn send_data(&self, p: Packet) -> bool {
        match self.data_for(None) {
            Some(d) => d.send(p).await.is_ok(),
            None => false,
        }
    }

    /// Sends a stream's packet where the stream was claimed: the second
    /// connection whose claim had this key, or (`None`) the control
    /// connection. False once that connection is gone.
    pub async fn send_stream(&self, p: Packet, claim: Option<&str>) -> bool {
        match claim {
            Some(k) => match self.data_for(Some(k)) {
                Some(d) => d.send(p).await.is_ok(),
                None => false,
            },
            None => self.send(p).await,
        }
    }

    /// Whether a second connection with this claim key is attached.
    pub fn has_data_channel(&self, claim: &str) -> bool {
        self.data_for(Some(claim)).is_some()
    }
    /// Ends the session: its connections close.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow() || self.inner.control.is_closed()
    }
    /// Resolves when the session ends.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.subscribe();
        let control = self.inner.control.clone();
        tokio::select! {
            _ = rx.wait_for(|c| *c) => {}
            _ = control.closed() => {}
        }
    }
}

/// A DVRIP server for one device.
pub struct Server<D: Device> {
    device: Arc<D>,
    cfg: ServerConfig,
    sessions: Arc<Mutex<HashMap<u32, Session>>>,
    next_id: AtomicU32,
}

impl<D: Device> Server<D> {
    pub fn new(device: Arc<D>, cfg: ServerConfig) -> Arc<Self> {
        Arc::new(Server { device, cfg, sessions: Arc::default(), next_id: AtomicU32::new(1) })
    }

    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The sessions logged in now.
    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().expect("sessions lock").values().cloned().collect()
    }

    /// Closes every session (a reboot).
    pub fn close_all(&self) {
        for s in self.sessions() {
            s.close();
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                me.serve_connection(stream, peer).await;
            });
        }
    }

    /// Runs one accepted connection to its end (for callers with their
    /// own accept loop).
    pub async fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let (rd, wr) = stream.into_split();
        let mut reader = FramedRead::new(rd, DvripCodec::new(self.cfg.max_len));
        let (tx, mut rx) = mpsc::channel::<Packet>(self.cfg.queue);
        let writer = tokio::spawn(async move {
            let mut sink = FramedWrite::new(wr, DvripCodec::new(usize::MAX));
            while let Some(p) = rx.recv().await {
                // Flush only when nothing else is queued: batches media.
                if sink.feed(p).await.is_err() {
                    return;
                }
                if rx.is_empty() && sink.flush().await.is_err() {
                    return;
                }
            }
        });

        enum State {
            Fresh,
            Control(Session),
            Data(Session),
        }
        let mut state = State::Fresh;
        let expiry = Duration::from_secs((self.cfg.alive_interval * self.cfg.keepalive_misses).max(1) as u64);

        loop {
            let wait = match &state {
                State::Fresh => self.cfg.login_timeout,
                State::Control(_) => expiry,
                State::Data(_) => Duration::from_secs(24 * 3600),
            };
            let closed = async {
                match &state {
                    State::Control(s) | State::Data(s) => s.closed().await,
                    State::Fresh => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                r = tokio::time::timeout(wait, reader.next()) => r,
                _ = closed => break,
            };
            let packet = match next {
                Err(_) => {
                    tracing::info!(%peer, "dvrip server: no keep-alive within {:?}; dropping the session", wait);
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::info!(%peer, error = %e, "dvrip server: connection error");
                    break;
                }
                Ok(Some(Ok(p))) => p,
            };
            let h = packet.header;
            let body = parse_body(&packet.payload);
            let reply_hdr = |session: u32| Header::new(ids::reply_of(h.msg_id), session, h.seq, 0);
            match &state {
                State::Fresh => match h.msg_id {
                    ids::LOGIN_REQ => {
                        let req = body.as_ref().ok().and_then(LoginRequest::parse);
                        let Some(req) = req else {
                            let v = failed_login(code::MESSAGE_FORMAT);
                            let _ = tx.send(Packet::new(reply_hdr(0), encode_body(&v))).await;
                            continue;
                        };
                        match self.device.login(&req, peer) {
                            Ok(grant) => {
                                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                                let session = Session {
                                    inner: Arc::new(SessionInner {
                                        id,
                                        user: req.user.clone(),
                                        peer,
                                        control: tx.clone(),
                                        data: Mutex::new(Vec::new()),
                                        seq: AtomicU32::new(0),
                                        closed: watch::channel(false).0,
                                    }),
                                };
                                self.sessions.lock().expect("sessions lock").insert(id, session.clone());
                                let r = LoginReply {
                                    ret: code::OK,
                                    session: id,
                                    alive_interval: self.cfg.alive_interval,
                                    channels: grant.channels,
                                    extra_channels: grant.extra_channels,
                                    device_type: grant.device_type,
                                    data_use_aes: false,
                                };
                                tracing::info!(%peer, user = %req.user, session = id, "dvrip server: login");
                                let _ = tx.send(Packet::new(reply_hdr(id), encode_body(&r.to_json()))).await;
                                state = State::Control(session);
                            }
                            Err(ret) => {
                                tracing::info!(%peer, user = %req.user, ret, "dvrip server: login refused");
                                let _ = tx.send(Packet::new(reply_hdr(0), encode_body(&failed_login(ret)))).await;
                            }
                        }
                    }
                    ids::OPMONITOR_CLAIM_REQ | ids::PLAY_CLAIM | ids::TALK_CLAIM => {
                        let existing = self.sessions.lock().expect("sessions lock").get(&h.session).cloned();
                        match existing {
                            Some(session) => {
                                let key = body.as_ref().map(claim_key).unwrap_or_default();
                                {
                                    let mut data = session.inner.data.lock().expect("session lock");
                                    data.retain(|(k, _)| *k != key);
                                    data.push((key, tx.clone()));
                                }
                                let req = Request { header: h, body, payload: packet.payload, on_data_channel: true };
                                let resp = self.device.handle(&session, req).await;
                                send_response(&tx, resp, reply_hdr(session.id()), self.cfg.max_len).await;
                                state = State::Data(session);
                            }
                            None => {
                                let v = json!({"Name": "", "Ret": code::NOT_LOGGED_IN, "SessionID": format_session(h.session)});
                                let _ = tx.send(Packet::new(reply_hdr(h.session), encode_body(&v))).await;
                            }
                        }
                    }
                    _ => {
                        let name = body.as_ref().ok().and_then(|b| b.get("Name")).cloned().unwrap_or(json!(""));
                        let v = json!({"Name": name, "Ret": code::NOT_LOGGED_IN, "SessionID": "0x00000000"});
                        let _ = tx.send(Packet::new(reply_hdr(0), encode_body(&v))).await;
                    }
                },
                State::Control(session) | State::Data(session) => {
                    let on_data = matches!(state, State::Data(_));
                    let sid = session.id();
                    match h.msg_id {
                        ids::KEEPALIVE_REQ => {
                            let v = json!({"Name": "KeepAlive", "Ret": code::OK, "SessionID": format_session(sid)});
                            let _ = tx.send(Packet::new(reply_hdr(sid), encode_body(&v))).await;
                        }
                        ids::LOGOUT_REQ => {
                            let v = json!({"Name": "", "Ret": code::OK, "SessionID": format_session(sid)});
                            let _ = tx.send(Packet::new(reply_hdr(sid), encode_body(&v))).await;
                            break;
                        }
                        ids::LOGIN_REQ => {
                            let v = failed_login(code::ALREADY_LOGGED_IN);
                            let _ = tx.send(Packet::new(reply_hdr(sid), encode_body(&v))).await;
                        }
                        _ => {
                            let req = Request { header: h, body, payload: packet.payload, on_data_channel: on_data };
                            let session = session.clone();
                            let resp = self.device.handle(&session, req).await;
                            let close = matches!(resp, Response::JsonThenClose(_));
                            send_response(&tx, resp, reply_hdr(sid), self.cfg.max_len).await;
                            if close {
                                break;
                            }
                        }
                    }
                }
            }
        }

        match state {
            State::Control(session) => {
                self.sessions.lock().expect("sessions lock").remove(&session.id());
                session.close();
                self.device.session_closed(&session);
                tracing::info!(%peer, session = session.id(), "dvrip server: session ended");
            }
            State::Data(session) => {
                let mut data = session.inner.data.lock().expect("session lock");
                data.retain(|(_, d)| !d.same_channel(&tx));
            }
            State::Fresh => {}
        }
        drop(tx);
        // Let queued replies go out before the socket closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
}

/// What a claim is for, from its body: the command and the `Parameter`'s
/// channel, stream type and file name. A Start carries the same
/// `Parameter` as its claim, so a device finds the claimed connection of
/// each stream by it (one login, one second connection per stream).
pub fn claim_key(body: &Value) -> String {
    let name = body.get("Name").and_then(Value::as_str).unwrap_or("");
    let p = body.get(name).and_then(|c| c.get("Parameter"));
    let field = |k: &str| p.and_then(|p| p.get(k)).map(|v| v.to_string()).unwrap_or_default();
    format!("{name}/{}/{}/{}", field("Channel"), field("StreamType"), field("FileName"))
}

/// A refused login with every key a strict client expects.
fn failed_login(ret: i64) -> Value {
    json!({
        "AliveInterval": 0,
        "ChannelNum": 0,
        "DeviceType ": "",
        "ExtraChannel": 0,
        "Ret": ret,
        "SessionID": "0x00000000",
    })
}

async fn send_response(tx: &mpsc::Sender<Packet>, resp: Response, hdr: Header, max: usize) {
    match resp {
        Response::Json(v) | Response::JsonThenClose(v) => send_body(tx, hdr, encode_body(&v), max).await,
        Response::Body(body) => send_body(tx, hdr, body, max).await,
        Response::Packets(ps) => {
            for p in ps {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
        }
        Response::Nothing => {}
    }
}

async fn send_body(tx: &mpsc::Sender<Packet>, hdr: Header, body: Bytes, max: usize) {
    let frag = if body.len() > max { max } else { VENDOR_FRAGMENT };
    for p in Packet::fragmented(hdr, body, frag) {
        if tx.send(p).await.is_err() {
            return;
        }
    }
}
