//! The device gateway at `/ivc`: the login checked before the WebSocket
//! upgrade, then IVR RPC with the device (what the IVT calls: Keepalive,
//! preview_server, GetFirmware, AlarmNotify).

use crate::error::ApiError;
use crate::limits::{plain_label, shown, Bucket, Upload};
use crate::server::{now, Cloud, Login, SessionEntry};
use crate::store::{ChannelRow, Store, StoreError};
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream};
use ivr_rpc::catalogue::IvcRequest;
use ivr_rpc::conn::{self, Frame, Handler};
use ivr_rpc::Peer;
use ivr_rpc::{codes, RpcError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

impl<S: Store> Cloud<S> {
    /// One device's session: registered (replacing an older one), online,
    /// served until it closes, then offline.
    ///
    /// This future lives as long as the connection, and a future is as
    /// large as everything it may hold at any await: opening and closing
    /// (the store's futures, PostgreSQL's are kilobytes; the bus; events)
    /// run boxed, so that a session holds only its connection while it is
    /// served (5.5 KiB → under 2 KiB a session).
    /// (Not an `async fn`: its arguments would stay in the future for the
    /// whole session, beside the copy the connection holds.)
    pub(crate) fn session(
        self: Arc<Self>,
        q: LoginQuery,
        peer: SocketAddr,
        socket: WebSocket,
    ) -> impl Future<Output = ()> + Send {
        let opening = Box::pin(self.clone().open_session(q, peer, socket));
        async move {
            let Some(Opened { login_code, id, epoch, run }) = opening.await else { return };
            // Awaited in place: `run.await` would move it into a second
            // slot of this future as large as the first.
            let mut run = std::pin::pin!(run);
            let close = run.as_mut().await;
            Box::pin(self.close_session(login_code, id, epoch, close)).await;
        }
    }

    /// Records the login (its epoch fences out any older session, on this
    /// node or another), replaces an older session here, says `online`.
    async fn open_session(
        self: Arc<Self>,
        q: LoginQuery,
        peer: SocketAddr,
        socket: WebSocket,
    ) -> Option<Opened<impl Future<Output = Option<ivr_rpc::Close>> + Send>> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let lc = q.login_code.clone();
        let epoch =
            match self.store.logged_in(&lc, &q.hardware_model, &q.firmware_model, now(), &self.cfg.node_id).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(login_code = %shown(&lc), error = %e, "cloud: login not recorded; session refused");
                    let mut socket = socket;
                    let _ = futures_util::SinkExt::send(
                        &mut socket,
                        AxMessage::Close(Some(axum::extract::ws::CloseFrame {
                            code: 1011,
                            reason: "the cloud could not record the login; try again".into(),
                        })),
                    )
                    .await;
                    return None;
                }
            };
        self.bus_takeover(&lc, epoch).await;
        let dl = &self.cfg.device_limits;
        let handler = Arc::new(IvcHandler {
            cloud: self.clone(),
            login_code: lc.clone(),
            hardware_model: q.hardware_model.clone(),
            epoch,
            alarms: Mutex::new(Bucket::new(dl.alarms_per_sec, dl.alarm_burst)),
            previews: Mutex::new(Bucket::new(dl.previews_per_sec, dl.preview_burst)),
        });
        let rpc_peer = Peer::ivc().with_timeout(self.cfg.response_timeout);
        self.counters.logins.fetch_add(1, Ordering::Relaxed);
        let (handle, run) = conn::start(AxumFrames(socket), rpc_peer, handler);
        let old = self
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(lc.clone(), SessionEntry { id, epoch, handle, last_keepalive: Instant::now() });
        if let Some(old) = old {
            tracing::info!(login_code = %shown(&lc), %peer, "cloud: a new login replaces the old session");
            self.counters.replaced.fetch_add(1, Ordering::Relaxed);
            self.event(
                &lc,
                None,
                "session_replaced",
                json!({"reason": "a new login with this login_code", "peer": peer.to_string(), "node": self.cfg.node_id}),
            )
            .await;
            old.handle.close().await;
        }
        self.event(
            &lc,
            None,
            "online",
            json!({"hardware_model": q.hardware_model, "firmware_model": q.firmware_model, "node": self.cfg.node_id}),
        )
        .await;
        Some(Opened { login_code: lc, id, epoch, run })
    }

    /// The session ended (`close`: the protocol rule that ended it): gone
    /// from the table unless a newer one took its place, offline unless a
    /// later login (here or on another node) holds the device.
    async fn close_session(&self, lc: String, id: u64, epoch: i64, close: Option<ivr_rpc::Close>) {
        if close.is_some() {
            self.counters.closed_by_rule.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut s = self.sessions.lock().expect("sessions lock");
            if s.get(&lc).is_some_and(|e| e.id == id) {
                s.remove(&lc);
            }
        }
        match self.store.set_offline(&lc, now(), epoch).await {
            Ok(true) => {
                let reason =
                    close.map(|c| c.to_string()).or_else(|| self.stopping.lock().expect("stopping lock").clone());
                self.event(&lc, None, "offline", json!({ "reason": reason })).await;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(login_code = %shown(&lc), error = %e, "cloud: offline not recorded"),
        }
    }
}

/// A session once its login is recorded: what closing it needs, and the
/// connection to serve.
struct Opened<R> {
    login_code: String,
    id: u64,
    epoch: i64,
    run: R,
}

pub(crate) struct IvcHandler<S: Store> {
    cloud: Arc<Cloud<S>>,
    login_code: String,
    hardware_model: String,
    /// The session's epoch (see [`crate::Store::logged_in`]).
    epoch: i64,
    alarms: Mutex<Bucket>,
    previews: Mutex<Bucket>,
}

impl<S: Store> IvcHandler<S> {
    /// Takes a token from one of this session's buckets; past the rate
    /// the request is refused (the device sees why) and counted.
    fn allow(&self, bucket: &Mutex<Bucket>, dropped: &AtomicU64, what: &str) -> Result<(), RpcError> {
        if bucket.lock().expect("bucket lock").take() {
            return Ok(());
        }
        if dropped.fetch_add(1, Ordering::Relaxed).is_multiple_of(100) {
            tracing::warn!(login_code = %shown(&self.login_code), "cloud: {what} over its rate; refused (counted in /api/v1/stats)");
        }
        Err(RpcError::new(codes::INTERNAL, format!("{what} refused: over the cloud's rate limit for one device")))
    }
}

impl<S: Store> Handler for IvcHandler<S> {
    async fn request(&self, method: String, params: Option<Value>) -> Result<Value, RpcError> {
        let c = &self.cloud;
        let lc = &self.login_code;
        let internal = |e: StoreError| RpcError::new(codes::INTERNAL, e.to_string());
        match IvcRequest::parse(&method, params.as_ref())? {
            IvcRequest::Keepalive(k) => {
                let max = c.cfg.device_limits.max_channels;
                if k.channels.len() > max {
                    c.counters.keepalives_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(RpcError::new(
                        codes::INTERNAL,
                        format!("{} channels: a device may report at most {max}", k.channels.len()),
                    ));
                }
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
                let Some(changed) = c.store.keepalive(lc, &rows, now(), self.epoch).await.map_err(internal)? else {
                    // A later login holds the device: this session is stale.
                    tracing::info!(login_code = %shown(lc), "cloud: a later login holds this device; closing the stale session");
                    c.close_older(lc, self.epoch + 1, "another node");
                    return Err(RpcError::new(codes::INTERNAL, "a later login of this device replaced this session"));
                };
                for ch in changed {
                    c.event(
                        lc,
                        Some(ch.channel),
                        "channel_state",
                        json!({"state": ch.state, "record_session": ch.record_session, "alarm": ch.alarm}),
                    )
                    .await;
                }
                Ok(json!({}))
            }
            IvcRequest::PreviewServer => {
                self.allow(&self.previews, &c.counters.previews_dropped, "preview_server")?;
                let t = c.uploads.issue(lc, Upload::Preview);
                Ok(json!({"url": format!("{}/upload/{t}", c.cfg.public_url)}))
            }
            IvcRequest::GetFirmware => match c.store.latest_firmware(&self.hardware_model).await.map_err(internal)? {
                Some(fw) => Ok(json!({
                    "firmware_model": fw.firmware_model,
                    "url": format!("{}/firmware/{}", c.cfg.public_url, fw.token),
                    "size": fw.size,
                    "sha256": fw.sha256,
                })),
                None => Err(RpcError::new(
                    codes::INTERNAL,
                    format!("no firmware in the catalogue for hardware model {:?}", self.hardware_model),
                )),
            },
            IvcRequest::AlarmNotify(a) => {
                self.allow(&self.alarms, &c.counters.alarms_dropped, "AlarmNotify")?;
                c.policy_alarm(lc, a.channel, a.start).await;
                let data =
                    json!({"type": a.kind as i64, "state": if a.start { "start" } else { "end" }, "desc": a.desc});
                let e = c
                    .event(lc, Some(a.channel), "alarm", data)
                    .await
                    .ok_or_else(|| RpcError::new(codes::INTERNAL, "the alarm was not stored"))?;
                let t = c.uploads.issue(lc, Upload::Alarm { event_id: e.id });
                Ok(json!({"pic_upload_url": format!("{}/upload/{t}", c.cfg.public_url)}))
            }
        }
    }

    async fn event(&self, name: String, _: Option<Value>) {
        tracing::info!(login_code = %shown(&self.login_code), event = %name, "cloud: event from a device ignored (the IVC accepts none)");
    }
}

/// axum's WebSocket as frames.
pub(crate) struct AxumFrames(WebSocket);

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
pub(crate) struct LoginQuery {
    login_code: String,
    login_passwd: String,
    hardware_model: String,
    firmware_model: String,
}

pub(crate) async fn gateway<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<LoginQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    for (what, v) in [("hardware_model", &q.hardware_model), ("firmware_model", &q.firmware_model)] {
        if !plain_label(v, 128) {
            let msg = format!("{what}: at most 128 bytes, no control or bidi characters");
            return ApiError::bad_request(msg).into_response();
        }
    }
    match c.login(&q.login_code, &q.login_passwd, peer.ip()).await {
        Login::Ok => ws
            // Small buffers: most of a session's memory is its read buffer
            // (tungstenite's default is 128 KiB, zero-filled on first read).
            // IVR RPC messages are a few hundred bytes; larger ones grow it.
            .read_buffer_size(ivr_rpc::ws::READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(ivr_rpc::ws::MAX_MESSAGE)
            .max_frame_size(ivr_rpc::ws::MAX_MESSAGE)
            .on_upgrade(move |socket| c.session(q, peer, socket)),
        Login::Wrong => ApiError::unauthorized("login_code or login_passwd is wrong").into_response(),
        Login::Throttled(after, what) => {
            let msg = format!("too many failed logins for {what}; try again in {} s", after.as_secs() + 1);
            let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, msg).into_response();
            r.headers_mut().insert("retry-after", (after.as_secs() + 1).into());
            r
        }
        Login::Busy(why) => {
            let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            r.headers_mut().insert("retry-after", 1.into());
            r
        }
        Login::Failed(e) => {
            tracing::error!(login_code = %shown(&q.login_code), error = %e, "cloud: cannot check a login");
            ApiError::internal("cannot check the login").into_response()
        }
    }
}
