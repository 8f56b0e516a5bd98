//! The tokio layer: runs a [`Peer`] over any stream of text frames (the
//! WebSocket adapters in [`crate::ws`] provide them), hands the other end's
//! requests to a [`Handler`] one at a time, and gives the application a
//! [`RpcHandle`] to call and notify.

use crate::message::{Resp, RpcError};
use crate::peer::{Action, CallId, Close, Peer};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A WebSocket frame as the driver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    /// A close, with the reason (ivr's closes name the rule that fired).
    Close(Option<String>),
}

/// Serves the other end's requests and events.
pub trait Handler: Send + Sync + 'static {
    /// A request, already checked to be a method this side serves. Params
    /// are not validated here: parse them with the catalogue.
    fn request(&self, method: String, params: Option<Value>) -> impl Future<Output = Result<Value, RpcError>> + Send;
    /// An event.
    fn event(&self, name: String, params: Option<Value>) -> impl Future<Output = ()> + Send;
}

/// Why a call of ours failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The other end answered with `err`.
    #[error("{method}: {err}")]
    Remote { method: String, err: RpcError },
    /// The connection closed before the answer (the close says why).
    #[error("{method}: the connection closed before the answer{}", .close.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Closed { method: String, close: Option<Close> },
}

enum Cmd {
    Call { method: String, params: Option<Value>, reply: oneshot::Sender<Result<Resp, CallError>> },
    Notify { name: String, params: Option<Value> },
    Close,
}

/// Calls and notifies the other end. Cheap to clone.
#[derive(Clone)]
pub struct RpcHandle {
    // Boxed: a bounded channel allocates its first block of 32 slots up
    // front, and 32 × 8 bytes is much less per session than 32 × 104.
    tx: mpsc::Sender<Box<Cmd>>,
}

impl RpcHandle {
    /// Calls `method`. Calls wait their turn (one outstanding per
    /// direction), so this may wait for earlier ones.
    pub async fn call(&self, method: &str, params: Option<Value>) -> Result<Value, CallError> {
        self.call_raw(method, params).await.map(|r| r.value())
    }

    /// [`RpcHandle::call`], the answer as the JSON text that came (for a
    /// caller that passes it on unread).
    pub async fn call_raw(&self, method: &str, params: Option<Value>) -> Result<Resp, CallError> {
        let (reply, rx) = oneshot::channel();
        let closed = || CallError::Closed { method: method.to_owned(), close: None };
        self.tx.send(Box::new(Cmd::Call { method: method.to_owned(), params, reply })).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Sends an event.
    pub async fn notify(&self, name: &str, params: Option<Value>) -> bool {
        self.tx.send(Box::new(Cmd::Notify { name: name.to_owned(), params })).await.is_ok()
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.tx.send(Box::new(Cmd::Close)).await;
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs a connection until it closes; returns the close (a rule that fired,
/// or `None` when the other end or we closed it normally).
pub fn spawn<S, H>(socket: S, peer: Peer, handler: Arc<H>) -> (RpcHandle, tokio::task::JoinHandle<Option<Close>>)
where
    S: Stream<Item = Frame> + Sink<Frame> + Send + Unpin + 'static,
    H: Handler,
{
    let (handle, run) = start(socket, peer, handler);
    (handle, tokio::spawn(run))
}

/// Like [`spawn`], but the caller runs the connection (awaits the
/// future) in its own task: one task per connection instead of two.
pub fn start<S, H>(socket: S, peer: Peer, handler: Arc<H>) -> (RpcHandle, impl Future<Output = Option<Close>> + Send)
where
    S: Stream<Item = Frame> + Sink<Frame> + Send + Unpin + 'static,
    H: Handler,
{
    let (tx, rx) = mpsc::channel(64);
    (RpcHandle { tx }, drive(socket, peer, handler, rx))
}

async fn drive<S, H>(
    mut socket: S,
    mut peer: Peer,
    handler: Arc<H>,
    mut cmds: mpsc::Receiver<Box<Cmd>>,
) -> Option<Close>
where
    S: Stream<Item = Frame> + Sink<Frame> + Send + Unpin + 'static,
    H: Handler,
{
    let mut waiting: HashMap<CallId, oneshot::Sender<Result<Resp, CallError>>> = HashMap::new();
    // The request being handled (at most one: rule 2 guarantees it).
    let mut handling: Option<BoxFut<(u64, Result<Value, RpcError>)>> = None;
    let mut cmds_open = true;
    loop {
        let deadline = peer.deadline().map(tokio::time::Instant::from_std);
        // Biased, incoming frames first: a request that arrives while the
        // previous is still being handled is seen as such (rule 2) however
        // the scheduler happens to order the two.
        let actions: Vec<Action> = tokio::select! {
            biased;
            frame = socket.next() => match frame {
                Some(Frame::Text(t)) => peer.receive(&t, Instant::now()),
                other => {
                    let reason = match other { Some(Frame::Close(r)) => r, _ => None };
                    tracing::debug!(?reason, "ivr-rpc: closed by the other end");
                    let out = peer.abandon_all();
                    settle(&mut waiting, out, None);
                    return None;
                }
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                peer.tick(Instant::now())
            },
            done = async { handling.as_mut().expect("guarded").await }, if handling.is_some() => {
                handling = None;
                let (seq, result) = done;
                peer.answer(seq, result).unwrap_or_default()
            },
            cmd = cmds.recv(), if cmds_open => match cmd.map(|c| *c) {
                Some(Cmd::Call { method, params, reply }) => {
                    let (id, out) = peer.call(&method, params, Instant::now());
                    waiting.insert(id, reply);
                    out
                }
                Some(Cmd::Notify { name, params }) => peer.notify(&name, params),
                Some(Cmd::Close) => {
                    let _ = socket.send(Frame::Close(None)).await;
                    settle(&mut waiting, peer.abandon_all(), None);
                    return None;
                }
                None => {
                    cmds_open = false;
                    Vec::new()
                }
            },
        };
        let mut close = None;
        for a in actions {
            match a {
                Action::Send(text) => {
                    if socket.send(Frame::Text(text)).await.is_err() {
                        settle(&mut waiting, peer.abandon_all(), None);
                        return None;
                    }
                }
                Action::Request { seq, method, params } => {
                    let h = handler.clone();
                    handling = Some(Box::pin(async move { (seq, h.request(method, params).await) }));
                }
                Action::Event { name, params } => {
                    let h = handler.clone();
                    tokio::spawn(async move { h.event(name, params).await });
                }
                Action::Response { call, method, result } => {
                    if let Some(w) = waiting.remove(&call) {
                        let _ = w.send(result.map_err(|err| CallError::Remote { method, err }));
                    }
                }
                Action::Abandoned { call, method } => {
                    if let Some(w) = waiting.remove(&call) {
                        let _ = w.send(Err(CallError::Closed { method, close: peer.closed().cloned() }));
                    }
                }
                Action::Close(c) => close = Some(c),
            }
        }
        if let Some(c) = close {
            tracing::warn!(rule = c.rule.number(), detail = %c.detail, "ivr-rpc: closing");
            let _ = socket.send(Frame::Close(Some(c.frame_reason()))).await;
            return Some(c);
        }
    }
}

fn settle(
    waiting: &mut HashMap<CallId, oneshot::Sender<Result<Resp, CallError>>>,
    out: Vec<Action>,
    close: Option<Close>,
) {
    for a in out {
        if let Action::Abandoned { call, method } = a {
            if let Some(w) = waiting.remove(&call) {
                let _ = w.send(Err(CallError::Closed { method, close: close.clone() }));
            }
        }
    }
}
