//! The cloud's HTTP side: the device gateway at `/ivc` (IVR RPC over
//! WebSocket), the JSON API under `/api/v1`, and one-time upload URLs.

use crate::auth::{constant_eq, HashCost, Passwords};
use crate::store::{ChannelRow, Device, Event, EventFilter, Firmware, Store, StoreError};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::{Sink, Stream};
use ivr_rpc::catalogue::{IvcRequest, IvtEvent, IvtRequest, IVT_EVENTS, IVT_METHODS};
use ivr_rpc::conn::{self, CallError, Frame, Handler, RpcHandle};
use ivr_rpc::message::{codes, RpcError};
use ivr_rpc::Peer;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How the cloud runs.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// `Authorization: Bearer <token>` for the API.
    pub admin_token: String,
    /// Base of the URLs handed to devices (uploads), e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
    /// The Keepalive interval devices use; offline after 3 missed.
    pub keepalive: Duration,
    /// How long an API RPC waits for the device.
    pub rpc_timeout: Duration,
    /// Where uploaded pictures go.
    pub data_dir: std::path::PathBuf,
    /// argon2id cost of new device passwords.
    pub hash_cost: HashCost,
    /// How long a device has to answer the cloud's request before the
    /// session closes (rule 3). The seed's 20 s; shorter only in tests.
    pub response_timeout: Duration,
    /// Live view: where devices publish, how long streams outlive viewers.
    pub live: crate::live::LiveConfig,
    /// Stored recordings are kept under this many bytes (oldest deleted first).
    pub recordings_max_bytes: Option<u64>,
}

impl CloudConfig {
    /// The seed's and OWASP's defaults, uploads under `data_dir`.
    pub fn new(admin_token: String, public_url: String, data_dir: std::path::PathBuf) -> Self {
        CloudConfig {
            admin_token,
            public_url,
            keepalive: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(25),
            data_dir,
            hash_cost: HashCost::default(),
            response_timeout: ivr_rpc::peer::RESPONSE_TIMEOUT,
            live: crate::live::LiveConfig::default(),
            recordings_max_bytes: None,
        }
    }
}

/// Counters since start (`GET /api/v1/stats`).
#[derive(Default)]
struct Counters {
    logins: AtomicU64,
    logins_refused: AtomicU64,
    replaced: AtomicU64,
    closed_by_rule: AtomicU64,
    expired: AtomicU64,
    rpc_calls: AtomicU64,
}

struct SessionEntry {
    id: u64,
    handle: RpcHandle,
    last_keepalive: Instant,
}

enum Upload {
    Alarm { event_id: i64 },
    Preview { login_code: String },
}

/// The cloud: store, live sessions, event feed.
pub struct Cloud<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) cfg: CloudConfig,
    pub(crate) lives: crate::live::Lives,
    pub(crate) recorder: crate::recordings::Recorder,
    pub(crate) keeper: crate::policy::Keeper,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    uploads: Mutex<HashMap<String, Upload>>,
    feed: broadcast::Sender<Event>,
    next_session: AtomicU64,
    passwords: Passwords,
    counters: Counters,
    started: Instant,
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn token() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl<S: Store> Cloud<S> {
    pub fn new(store: Arc<S>, cfg: CloudConfig) -> Arc<Self> {
        Arc::new(Cloud {
            store,
            sessions: Mutex::default(),
            uploads: Mutex::default(),
            feed: broadcast::channel(1024).0,
            next_session: AtomicU64::new(1),
            passwords: Passwords::new(cfg.hash_cost),
            counters: Counters::default(),
            started: Instant::now(),
            lives: crate::live::Lives::new(cfg.live.clone()),
            recorder: Default::default(),
            keeper: Default::default(),
            cfg,
        })
    }

    /// Provisions a device: its password hashed (argon2id at the configured
    /// cost), then stored.
    pub async fn provision(&self, login_code: &str, login_passwd: &str, name: &str) -> Result<Device, ProvisionError> {
        if login_code.is_empty() || login_code.len() > 128 {
            return Err(ProvisionError::Invalid("login_code: 1 to 128 bytes".into()));
        }
        if login_passwd.len() < 8 {
            return Err(ProvisionError::Invalid("login_passwd: at least 8 characters".into()));
        }
        let hash = self.passwords.hash(login_passwd).await.map_err(|e| StoreError::Db(format!("hashing: {e}")))?;
        Ok(self.store.create_device(login_code, &hash, name, now())?)
    }

    /// Whether a login is right (argon2, bounded, remembered).
    pub async fn check_login(&self, login_code: &str, login_passwd: &str) -> Result<bool, String> {
        let stored = self.store.password_hash(login_code).map_err(|e| e.to_string())?;
        match stored {
            Some(h) => self.passwords.verify(login_code, login_passwd, &h).await,
            None => Ok(false),
        }
    }

    /// How many device sessions are open.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn config(&self) -> &CloudConfig {
        &self.cfg
    }

    /// Events as they happen (state changes, alarms).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.feed.subscribe()
    }

    pub(crate) fn event(&self, login_code: &str, channel: Option<u32>, kind: &str, data: Value) -> Option<Event> {
        match self.store.add_event(login_code, channel, kind, &data, now()) {
            Ok(e) => {
                let _ = self.feed.send(e.clone());
                Some(e)
            }
            Err(e) => {
                tracing::error!(error = %e, "cloud: event not stored");
                None
            }
        }
    }

    /// Closes sessions that missed three Keepalives. Run it periodically.
    pub fn expire(&self) {
        let limit = self.cfg.keepalive * 3;
        let stale: Vec<RpcHandle> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, s)| s.last_keepalive.elapsed() > limit)
            .map(|(lc, s)| {
                tracing::info!(login_code = %lc, "cloud: no Keepalive for three intervals; closing");
                s.handle.clone()
            })
            .collect();
        self.counters.expired.fetch_add(stale.len() as u64, Ordering::Relaxed);
        for h in stale {
            tokio::spawn(async move { h.close().await });
        }
    }

    async fn session(self: Arc<Self>, q: LoginQuery, socket: WebSocket) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let lc = q.login_code.clone();
        let handler = Arc::new(IvcHandler {
            cloud: self.clone(),
            login_code: lc.clone(),
            hardware_model: q.hardware_model.clone(),
        });
        let peer = Peer::ivc().with_timeout(self.cfg.response_timeout);
        self.counters.logins.fetch_add(1, Ordering::Relaxed);
        let (handle, run) = conn::start(AxumFrames(socket), peer, handler);
        let old = self
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(lc.clone(), SessionEntry { id, handle, last_keepalive: Instant::now() });
        if let Some(old) = old {
            tracing::info!(login_code = %lc, "cloud: a new login replaces the old session");
            self.counters.replaced.fetch_add(1, Ordering::Relaxed);
            old.handle.close().await;
        }
        if let Err(e) = self.store.logged_in(&lc, &q.hardware_model, &q.firmware_model, now()) {
            tracing::error!(error = %e, "cloud: login not recorded");
        }
        self.event(
            &lc,
            None,
            "online",
            json!({"hardware_model": q.hardware_model, "firmware_model": q.firmware_model}),
        );
        let close = run.await;
        if close.is_some() {
            self.counters.closed_by_rule.fetch_add(1, Ordering::Relaxed);
        }
        let current = {
            let mut s = self.sessions.lock().expect("sessions lock");
            if s.get(&lc).is_some_and(|e| e.id == id) {
                s.remove(&lc);
                true
            } else {
                false
            }
        };
        if current {
            let _ = self.store.set_offline(&lc, now());
            self.event(&lc, None, "offline", json!({"reason": close.map(|c| c.to_string())}));
        }
    }

    pub(crate) fn handle_of(&self, login_code: &str) -> Option<RpcHandle> {
        self.sessions.lock().expect("sessions lock").get(login_code).map(|s| s.handle.clone())
    }
}

struct IvcHandler<S: Store> {
    cloud: Arc<Cloud<S>>,
    login_code: String,
    hardware_model: String,
}

impl<S: Store> Handler for IvcHandler<S> {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        let c = &self.cloud;
        let lc = &self.login_code;
        let internal = |e: StoreError| RpcError::new(codes::INTERNAL, e.to_string());
        match IvcRequest::parse(&method, params.as_ref())? {
            IvcRequest::Keepalive(k) => {
                if let Some(s) = c.sessions.lock().expect("sessions lock").get_mut(lc) {
                    s.last_keepalive = Instant::now();
                }
                let rows: Vec<ChannelRow> = k
                    .channels
                    .iter()
                    .map(|ch| ChannelRow {
                        channel: ch.channel,
                        state: ch.state as u8,
                        record_session: ch.record_session.clone(),
                        alarm: ch.alarm.unwrap_or(0),
                        changed_at: 0,
                    })
                    .collect();
                for ch in c.store.keepalive(lc, &rows, now()).map_err(internal)? {
                    c.event(
                        lc,
                        Some(ch.channel),
                        "channel_state",
                        json!({"state": ch.state, "record_session": ch.record_session, "alarm": ch.alarm}),
                    );
                }
                Ok(json!({}))
            }
            IvcRequest::PreviewServer => {
                let t = token();
                c.uploads.lock().expect("uploads lock").insert(t.clone(), Upload::Preview { login_code: lc.clone() });
                Ok(json!({"url": format!("{}/upload/{t}", c.cfg.public_url)}))
            }
            IvcRequest::GetFirmware => match c.store.latest_firmware(&self.hardware_model).map_err(internal)? {
                Some(fw) => Ok(
                    json!({"firmware_model": fw.firmware_model, "url": format!("{}/firmware/{}", c.cfg.public_url, fw.token)}),
                ),
                None => Err(RpcError::new(
                    codes::INTERNAL,
                    format!("no firmware in the catalogue for hardware model {:?}", self.hardware_model),
                )),
            },
            IvcRequest::AlarmNotify(a) => {
                c.policy_alarm(lc, a.channel, a.start);
                let data =
                    json!({"type": a.kind as i64, "state": if a.start { "start" } else { "end" }, "desc": a.desc});
                let e = c
                    .event(lc, Some(a.channel), "alarm", data)
                    .ok_or_else(|| RpcError::new(codes::INTERNAL, "the alarm was not stored"))?;
                let t = token();
                c.uploads.lock().expect("uploads lock").insert(t.clone(), Upload::Alarm { event_id: e.id });
                Ok(json!({"pic_upload_url": format!("{}/upload/{t}", c.cfg.public_url)}))
            }
        }
    }

    async fn event(&self, name: String, _: Option<Value>) {
        tracing::info!(login_code = %self.login_code, event = %name, "cloud: event from a device ignored (the IVC accepts none)");
    }
}

/// axum's WebSocket as frames.
struct AxumFrames(WebSocket);

impl Stream for AxumFrames {
    type Item = Frame;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        loop {
            return match Pin::new(&mut self.0).poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => Poll::Ready(None),
                Poll::Ready(Some(Ok(m))) => match m {
                    AxMessage::Text(t) => Poll::Ready(Some(Frame::Text(t.as_str().to_owned()))),
                    AxMessage::Binary(b) => {
                        Poll::Ready(Some(Frame::Text(format!("<binary frame of {} bytes>", b.len()))))
                    }
                    AxMessage::Close(c) => Poll::Ready(Some(Frame::Close(c.map(|c| c.reason.as_str().to_owned())))),
                    AxMessage::Ping(_) | AxMessage::Pong(_) => continue,
                },
            };
        }
    }
}

impl Sink<Frame> for AxumFrames {
    type Error = axum::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, f: Frame) -> Result<(), Self::Error> {
        let m = match f {
            Frame::Text(t) => AxMessage::Text(t.into()),
            Frame::Close(reason) => AxMessage::Close(Some(axum::extract::ws::CloseFrame {
                code: if reason.is_some() { 1008 } else { 1000 },
                reason: reason.unwrap_or_default().into(),
            })),
        };
        Pin::new(&mut self.0).start_send(m)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    login_code: String,
    login_passwd: String,
    hardware_model: String,
    firmware_model: String,
}

fn api_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

async fn gateway<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Query(q): Query<LoginQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    match c.check_login(&q.login_code, &q.login_passwd).await {
        Ok(true) => ws
            // Small buffers: most of a session's memory is its read buffer
            // (tungstenite's default is 128 KiB, zero-filled on first read).
            // IVR RPC messages are a few hundred bytes; larger ones grow it.
            .read_buffer_size(ivr_rpc::ws::READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(ivr_rpc::ws::MAX_MESSAGE)
            .max_frame_size(ivr_rpc::ws::MAX_MESSAGE)
            .on_upgrade(move |socket| c.session(q, socket)),
        Ok(false) => {
            c.counters.logins_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(login_code = %q.login_code, "cloud: login refused");
            api_error(StatusCode::UNAUTHORIZED, "login_code or login_passwd is wrong")
        }
        Err(e) => {
            tracing::error!(login_code = %q.login_code, error = %e, "cloud: cannot check a login");
            api_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot check the login")
        }
    }
}

/// The admin bearer token, checked.
pub(crate) struct Admin;

impl<S: Store> FromRequestParts<Arc<Cloud<S>>> for Admin {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, c: &Arc<Cloud<S>>) -> Result<Admin, Response> {
        let given =
            parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_eq(t.as_bytes(), c.cfg.admin_token.as_bytes()) => Ok(Admin),
            Some(_) => Err(api_error(StatusCode::UNAUTHORIZED, "wrong admin token")),
            None => Err(api_error(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <admin token>")),
        }
    }
}

#[derive(Deserialize)]
struct NewDevice {
    login_code: String,
    login_passwd: String,
    #[serde(default)]
    name: String,
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Exists(_) => api_error(StatusCode::CONFLICT, e.to_string()),
        StoreError::NoDevice(_) => api_error(StatusCode::NOT_FOUND, e.to_string()),
        StoreError::Db(_) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn create_device<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    body: Result<Json<NewDevice>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(d) = match body {
        Ok(b) => b,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    match c.provision(&d.login_code, &d.login_passwd, &d.name).await {
        Ok(dev) => (StatusCode::CREATED, Json(dev)).into_response(),
        Err(ProvisionError::Invalid(msg)) => api_error(StatusCode::BAD_REQUEST, msg),
        Err(ProvisionError::Store(e)) => store_error(e),
    }
}

/// Why a device was not provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn list_devices<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> Response {
    match c.store.devices() {
        Ok(d) => Json(d).into_response(),
        Err(e) => store_error(e),
    }
}

async fn get_device<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>, Path(lc): Path<String>) -> Response {
    match c.store.device(&lc) {
        Ok(Some(d)) => Json::<Device>(d).into_response(),
        Ok(None) => api_error(StatusCode::NOT_FOUND, format!("no device {lc:?}")),
        Err(e) => store_error(e),
    }
}

async fn delete_device<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>, Path(lc): Path<String>) -> Response {
    match c.store.delete_device(&lc) {
        Ok(true) => {
            c.passwords.forget(&lc);
            if let Some(h) = c.handle_of(&lc) {
                h.close().await;
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => api_error(StatusCode::NOT_FOUND, format!("no device {lc:?}")),
        Err(e) => store_error(e),
    }
}

/// Checks that `name` is one of `known` (404 otherwise) and parses the body
/// as its params (absent when the body is empty; 400 when not JSON).
fn api_params(name: &str, known: &[&str], what: &str, body: &[u8]) -> Result<Option<Value>, (StatusCode, String)> {
    if !known.contains(&name) {
        return Err((StatusCode::NOT_FOUND, format!("{name:?} is not an {what}; one of {}", known.join(", "))));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))
}

async fn rpc<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, method)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    // Sending an unknown method would make the device close the session (rule 4).
    let params = match api_params(&method, &IVT_METHODS, "IVT method", &body) {
        Ok(p) => p,
        Err((status, msg)) => return api_error(status, msg),
    };
    if let Err(e) = IvtRequest::parse(&method, params.as_ref()) {
        return api_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let Some(h) = c.handle_of(&lc) else {
        return api_error(StatusCode::CONFLICT, format!("device {lc:?} is offline"));
    };
    c.counters.rpc_calls.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(c.cfg.rpc_timeout, h.call(&method, params)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(CallError::Remote { err, .. })) => {
            (StatusCode::BAD_GATEWAY, Json(json!({"code": err.code, "msg": err.msg}))).into_response()
        }
        Ok(Err(e @ CallError::Closed { .. })) => api_error(StatusCode::CONFLICT, e.to_string()),
        Err(_) => api_error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{method}: no answer from {lc:?} within {:?}", c.cfg.rpc_timeout),
        ),
    }
}

async fn send_event<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let params = match api_params(&name, &IVT_EVENTS, "IVT event", &body) {
        Ok(p) => p,
        Err((status, msg)) => return api_error(status, msg),
    };
    if let Err(e) = IvtEvent::parse(&name, params.as_ref()) {
        return api_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match c.handle_of(&lc) {
        Some(h) if h.notify(&name, params).await => (StatusCode::ACCEPTED, Json(json!({"sent": name}))).into_response(),
        _ => api_error(StatusCode::CONFLICT, format!("device {lc:?} is offline")),
    }
}

#[derive(Deserialize)]
struct EventQuery {
    login_code: Option<String>,
    channel: Option<u32>,
    #[serde(rename = "type")]
    kind: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<u32>,
}

async fn list_events<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>, Query(q): Query<EventQuery>) -> Response {
    let f = EventFilter {
        login_code: q.login_code,
        channel: q.channel,
        kind: q.kind,
        since: q.since,
        until: q.until,
        limit: q.limit,
    };
    match c.store.events(&f) {
        Ok(e) => Json(e).into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    /// Which channel a preview shows (ivr's addition; the seed's URL is per device).
    #[serde(default)]
    channel: u32,
}

/// One-time upload URLs: alarm pictures and channel previews.
async fn upload<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    Path(t): Path<String>,
    Query(q): Query<UploadQuery>,
    body: axum::body::Bytes,
) -> Response {
    let Some(target) = c.uploads.lock().expect("uploads lock").remove(&t) else {
        return api_error(StatusCode::NOT_FOUND, "unknown or used upload URL");
    };
    if body.len() > 8 << 20 {
        return api_error(StatusCode::PAYLOAD_TOO_LARGE, "pictures are at most 8 MiB");
    }
    let (dir, name) = match &target {
        Upload::Alarm { event_id } => ("pictures", format!("{event_id}.jpg")),
        Upload::Preview { login_code } => ("previews", format!("{}-{}.jpg", crate::safe_name(login_code), q.channel)),
    };
    let dir = c.cfg.data_dir.join(dir);
    let path = dir.join(name);
    let r = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(&path, &body).await
    }
    .await;
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("storing the picture: {e}")),
    }
}

async fn event_picture<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>, Path(id): Path<i64>) -> Response {
    match tokio::fs::read(c.cfg.data_dir.join("pictures").join(format!("{id}.jpg"))).await {
        Ok(b) => ([("content-type", "image/jpeg")], b).into_response(),
        Err(_) => api_error(StatusCode::NOT_FOUND, format!("no picture for event {id}")),
    }
}

async fn preview<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>, Path((lc, ch)): Path<(String, u32)>) -> Response {
    match tokio::fs::read(c.cfg.data_dir.join("previews").join(format!("{}-{ch}.jpg", crate::safe_name(&lc)))).await {
        Ok(b) => ([("content-type", "image/jpeg")], b).into_response(),
        Err(_) => api_error(StatusCode::NOT_FOUND, format!("no preview of {lc:?} channel {ch} yet")),
    }
}

/// Server-sent events: every stored event as it happens (`event: <kind>`,
/// `data: <event JSON>`).
async fn stream<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let mut rx = c.subscribe();
    let s = async_stream(move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let ev =
                        SseEvent::default().event(e.kind.clone()).data(serde_json::to_string(&e).unwrap_or_default());
                    if tx.send(Ok::<_, std::convert::Infallible>(ev)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "cloud: SSE client too slow"),
                Err(_) => return,
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// A stream fed by a task (no extra crate for one use).
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T> + Send
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The largest firmware image the catalogue takes.
const MAX_FIRMWARE: usize = 256 << 20;

async fn put_firmware<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((hw, fw)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if hw.is_empty() || fw.is_empty() || hw.len() > 128 || fw.len() > 128 {
        return api_error(StatusCode::BAD_REQUEST, "hardware_model and firmware_model: 1 to 128 bytes");
    }
    if body.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "the body (the image) is empty");
    }
    let t = token();
    let dir = c.cfg.data_dir.join("firmware");
    let path = dir.join(format!("{t}.bin"));
    let written = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(&path, &body).await
    }
    .await;
    if let Err(e) = written {
        return api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("storing the image: {e}"));
    }
    let f = Firmware {
        hardware_model: hw,
        firmware_model: fw,
        token: t.clone(),
        size: body.len() as u64,
        uploaded_at: now(),
    };
    match c.store.add_firmware(&f) {
        Ok(()) => {
            let url = format!("{}/firmware/{t}", c.cfg.public_url);
            (StatusCode::CREATED, Json(json!({"hardware_model": f.hardware_model, "firmware_model": f.firmware_model, "size": f.size, "url": url}))).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn list_firmware<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> Response {
    match c.store.firmwares() {
        Ok(f) => Json(f).into_response(),
        Err(e) => store_error(e),
    }
}

/// Firmware download: the unguessable token is the authorisation (devices
/// have no admin token).
async fn download_firmware<S: Store>(State(c): State<Arc<Cloud<S>>>, Path(t): Path<String>) -> Response {
    match c.store.firmware_by_token(&t) {
        Ok(Some(f)) => match tokio::fs::read(c.cfg.data_dir.join("firmware").join(format!("{}.bin", f.token))).await {
            Ok(b) => ([("content-type", "application/octet-stream")], b).into_response(),
            Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the image: {e}")),
        },
        Ok(None) => api_error(StatusCode::NOT_FOUND, "no such firmware"),
        Err(e) => store_error(e),
    }
}

/// Counts for monitoring and benchmarks: sessions open now, devices, and
/// counters since start.
async fn stats<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> Response {
    let devices = match c.store.device_count() {
        Ok(n) => n,
        Err(e) => return store_error(e),
    };
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let k = &c.counters;
    Json(json!({
        "devices": devices,
        "sessions": c.sessions(),
        "uptime_secs": c.started.elapsed().as_secs(),
        "logins": n(&k.logins),
        "logins_refused": n(&k.logins_refused),
        "sessions_replaced": n(&k.replaced),
        "sessions_closed_by_rule": n(&k.closed_by_rule),
        "sessions_expired": n(&k.expired),
        "rpc_calls": n(&k.rpc_calls),
        "recordings": {
            "stored": n(&c.recorder.stored),
            "stored_bytes": n(&c.recorder.stored_bytes),
            "uploads_refused": n(&c.recorder.refused),
            "disk_errors": n(&c.recorder.disk_errors),
            "deleted": n(&c.recorder.deleted),
            "deleted_bytes": n(&c.recorder.deleted_bytes),
        },
        "live": {
            "channels": c.lives.active().len(),
            "viewers": c.lives.active().iter().map(|a| a.2).sum::<usize>(),
            "publish_requests": n(&c.lives.publishes),
            "stop_requests": n(&c.lives.stops),
            "publishes_refused": n(&c.lives.refused),
            "starts_failed": n(&c.lives.failures),
        },
    }))
    .into_response()
}

/// The OpenAPI 3 description of this API (written by hand, kept next to
/// the handlers it describes).
async fn openapi() -> Response {
    ([("content-type", "application/json")], include_str!("openapi.json")).into_response()
}

async fn status_page() -> Response {
    ([("content-type", "text/html; charset=utf-8")], include_str!("status.html")).into_response()
}

/// The whole HTTP service.
pub fn router<S: Store>(c: Arc<Cloud<S>>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/stream", get(stream::<S>))
        .route("/ivc", get(gateway::<S>))
        .route("/api/v1/devices", post(create_device::<S>).get(list_devices::<S>))
        .route("/api/v1/devices/{login_code}", get(get_device::<S>).delete(delete_device::<S>))
        .route("/api/v1/devices/{login_code}/rpc/{method}", post(rpc::<S>))
        .route("/api/v1/devices/{login_code}/events/{event}", post(send_event::<S>))
        .route("/api/v1/devices/{login_code}/channels/{channel}/preview", get(preview::<S>))
        .route("/api/v1/devices/{login_code}/channels/{channel}/live", post(start_live::<S>))
        .route("/live/{token}/stream.mp4", get(crate::live::live_mp4::<S>))
        .route("/live/{token}/ws", get(crate::live::live_ws::<S>))
        .route("/live/{token}/{file}", get(crate::live::live_hls::<S>))
        .route("/live/{token}/", get(player::<S>))
        .route(
            "/api/v1/devices/{login_code}/channels/{channel}/recording",
            post(crate::recordings::start::<S>).delete(crate::recordings::stop::<S>),
        )
        .route(
            "/api/v1/devices/{login_code}/channels/{channel}/record-policy",
            axum::routing::put(crate::policy::put::<S>).get(crate::policy::get::<S>),
        )
        .route("/api/v1/devices/{login_code}/channels/{channel}/recordings", get(crate::recordings::list::<S>))
        .route("/api/v1/devices/{login_code}/channels/{channel}/playback", post(crate::recordings::playback::<S>))
        .route("/record/{session}", post(crate::recordings::callback::<S>))
        .route("/record/{session}/{seq}/{token}", axum::routing::put(crate::recordings::put_segment::<S>))
        .route("/recordings/{token}/play.mp4", get(crate::recordings::playback_mp4::<S>))
        .route("/recordings/{token}/{file}", get(crate::recordings::playback_hls::<S>))
        .route("/api/v1/events", get(list_events::<S>))
        .route("/api/v1/stats", get(stats::<S>))
        .route("/api/v1/events/{id}/picture", get(event_picture::<S>))
        .route("/upload/{token}", post(upload::<S>))
        .route(
            "/api/v1/firmware/{hardware_model}/{firmware_model}",
            axum::routing::put(put_firmware::<S>).layer(axum::extract::DefaultBodyLimit::max(MAX_FIRMWARE)),
        )
        .route("/api/v1/firmware", get(list_firmware::<S>))
        .route("/firmware/{token}", get(download_firmware::<S>))
        .with_state(c)
}

/// Serves until the listener fails, expiring silent sessions every second.
pub async fn serve<S: Store>(c: Arc<Cloud<S>>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    spawn_expiry(&c);
    axum::serve(listener.tap_io(|tcp| drop(tcp.set_nodelay(true))), router(c)).await
}

/// Serves HTTPS (devices dial wss://…/ivc), each TLS handshake on its own
/// task so a slow or broken client holds up nobody.
pub async fn serve_tls<S: Store>(
    c: Arc<Cloud<S>>,
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
) -> std::io::Result<()> {
    spawn_expiry(&c);
    let local = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "cloud: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => drop(tx.send((s, peer)).await),
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "cloud: TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "cloud: TLS handshake timed out"),
                }
            });
        }
    });
    axum::serve(TlsListener { rx, local }, router(c)).await
}

fn spawn_expiry<S: Store>(c: &Arc<Cloud<S>>) {
    let expiry = c.clone();
    tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            expiry.expire();
            expiry.live_reap();
            if tick.is_multiple_of(2) {
                expiry.keep_policies();
            }
            if tick.is_multiple_of(10) {
                let c = expiry.clone();
                // Deleting files blocks: not on the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || match c.sweep() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "cloud: retention deleted segments"),
                    Err(e) => tracing::error!(error = %e, "cloud: retention sweep failed"),
                })
                .await;
            }
        }
    });
}

/// A JSON body: `None` when empty, 400 naming the problem otherwise.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Option<T>, crate::error::ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| crate::error::ApiError::bad_request(format!("body: {e}")))
}

/// `POST …/channels/{channel}/live`: the stream on, and viewer URLs.
async fn start_live<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path((lc, ch)): Path<(String, u32)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, crate::error::ApiError> {
    let req: crate::live::LiveRequest = json_body(&body)?.unwrap_or_default();
    let q = req.quality()?;
    Ok(Json(c.live_urls(&lc, ch, q).await?))
}

async fn player<S: Store>(State(c): State<Arc<Cloud<S>>>, Path(t): Path<String>) -> Response {
    crate::live::live_hls(State(c), Path((t, String::new()))).await
}

/// Finished TLS handshakes, as axum's listener.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (it does not): wait forever.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
