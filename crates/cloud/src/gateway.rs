//! The device gateway at `/ivc`: the login checked before the WebSocket
//! upgrade, then IVR RPC with the device (what the IVT calls: Keepalive,
//! preview_server, GetFirmware, AlarmNotify).

use crate::error::ApiError;
use crate::server::{now, token, Cloud, SessionEntry, Upload};
use crate::store::{ChannelRow, Store, StoreError};
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream};
use ivr_rpc::catalogue::IvcRequest;
use ivr_rpc::conn::{self, Frame, Handler};
use ivr_rpc::message::{codes, RpcError};
use ivr_rpc::Peer;
use serde::Deserialize;
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

impl<S: Store> Cloud<S> {
    /// One device's session: registered (replacing an older one), online,
    /// served until it closes, then offline.
    pub(crate) async fn session(self: Arc<Self>, q: LoginQuery, socket: WebSocket) {
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
}

pub(crate) struct IvcHandler<S: Store> {
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
            ApiError::unauthorized("login_code or login_passwd is wrong").into_response()
        }
        Err(e) => {
            tracing::error!(login_code = %q.login_code, error = %e, "cloud: cannot check a login");
            ApiError::internal("cannot check the login").into_response()
        }
    }
}
