//! The client end: many outstanding calls on one connection, matched by
//! transaction number; events pushed with transaction 0 arrive on a channel.

use crate::header::{msg_type, Packet, PacketCodec};
use crate::value::{Struct, Value};
use crate::xml::{self, Message};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("{peer}: the connection closed{}{reason}", method.as_deref().map(|m| format!(" during {m}")).unwrap_or_default())]
    Closed { peer: SocketAddr, method: Option<String>, reason: String },
    #[error("{peer}: {method} (transaction {txn}): no answer within {timeout:?}")]
    Timeout { peer: SocketAddr, method: String, txn: u16, timeout: Duration },
    #[error("{peer}: {method} (transaction {txn}): fault {code:#010x} ({}): {message}", crate::ack::name(*code as u32))]
    Fault { peer: SocketAddr, method: String, txn: u16, code: i64, message: String },
    #[error("{peer}: {method}: the device answered {code:#010x} ({}){}", crate::ack::name(*code), if message.is_empty() { String::new() } else { format!(": {message}") })]
    Ack { peer: SocketAddr, method: String, code: u32, message: String },
    #[error("{peer}: {method}: unexpected answer: {what}")]
    Unexpected { peer: SocketAddr, method: String, what: String },
    #[error("{peer}: I/O error: {cause}")]
    Io { peer: String, cause: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

/// An event pushed by the server (transaction 0).
#[derive(Clone, Debug)]
pub struct Pushed {
    pub method: String,
    pub params: Vec<Value>,
}

type Waiters = Arc<Mutex<HashMap<u16, oneshot::Sender<Message>>>>;

/// One connection. Cheap to clone; calls from many tasks run concurrently.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Packet>,
    waiters: Waiters,
    next: Arc<Mutex<u16>>,
    timeout: Duration,
    closed: Arc<Mutex<Option<String>>>,
    pub peer: SocketAddr,
    /// Our end of the connection (the address the unit sees us at).
    pub local: SocketAddr,
}

impl Client {
    pub async fn connect(addr: &str) -> Result<(Client, mpsc::Receiver<Pushed>)> {
        let stream =
            TcpStream::connect(addr).await.map_err(|cause| Error::Connect { addr: addr.to_string(), cause })?;
        let io = |cause| Error::Io { peer: addr.to_string(), cause };
        stream.set_nodelay(true).map_err(io)?;
        Client::over(stream).map_err(io)
    }

    pub fn over(stream: TcpStream) -> std::io::Result<(Client, mpsc::Receiver<Pushed>)> {
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let (rd, wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Packet>(256);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let waiters: Waiters = Arc::default();
        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        tokio::spawn(async move {
            let mut w = FramedWrite::new(wr, PacketCodec::default());
            while let Some(p) = rx.recv().await {
                if w.feed(p).await.is_err() {
                    return;
                }
                while let Ok(p) = rx.try_recv() {
                    if w.feed(p).await.is_err() {
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
        });
        let (w2, c2) = (waiters.clone(), closed.clone());
        tokio::spawn(async move {
            let mut r = FramedRead::new(rd, PacketCodec::default());
            let reason = loop {
                match r.next().await {
                    None => break String::new(),
                    Some(Err(e)) => break format!(": {e}"),
                    Some(Ok(p)) => {
                        if p.header.msg_type != msg_type::XML {
                            continue;
                        }
                        let msg = match xml::parse(&p.body) {
                            Ok(m) => {
                                for r in &m.repairs {
                                    tracing::debug!(txn = p.header.transaction, "repaired: {r}");
                                }
                                m.value
                            }
                            Err(e) => {
                                tracing::warn!(txn = p.header.transaction, "unreadable XML from the device: {e}");
                                Message::Fault {
                                    code: crate::ack::INVALID as i64,
                                    message: format!("unreadable answer: {e}"),
                                }
                            }
                        };
                        if p.header.transaction == 0 || !p.header.response {
                            if let Message::Call { method, params } = msg {
                                let _ = ev_tx.try_send(Pushed { method, params });
                            }
                            continue;
                        }
                        let w = w2.lock().unwrap().remove(&p.header.transaction);
                        if let Some(w) = w {
                            let _ = w.send(msg);
                        }
                    }
                }
            };
            *c2.lock().unwrap() = Some(reason);
            w2.lock().unwrap().clear();
        });
        Ok((
            Client {
                tx,
                waiters,
                next: Arc::new(Mutex::new(0)),
                timeout: Duration::from_secs(10),
                closed,
                peer,
                local,
            },
            ev_rx,
        ))
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    fn closed_reason(&self) -> String {
        self.closed.lock().unwrap().clone().unwrap_or_default()
    }

    /// An answer that is not what `method` gives, as an error.
    pub(crate) fn unexpected(&self, method: &str, what: &str) -> Error {
        Error::Unexpected { peer: self.peer, method: method.into(), what: what.into() }
    }

    /// Any method; the answer's params (a fault is an error).
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Vec<Value>> {
        let body = xml::write(&Message::Call { method: method.to_string(), params });
        let (wtx, wrx) = oneshot::channel();
        let txn = {
            let mut waiters = self.waiters.lock().unwrap();
            let mut n = self.next.lock().unwrap();
            loop {
                *n = if *n >= 0x7fff { 1 } else { *n + 1 };
                if !waiters.contains_key(&*n) {
                    break;
                }
            }
            waiters.insert(*n, wtx);
            *n
        };
        let closed =
            || Error::Closed { peer: self.peer, method: Some(method.to_string()), reason: self.closed_reason() };
        if self.tx.send(Packet::new(msg_type::XML, false, txn, body)).await.is_err() {
            return Err(closed());
        }
        let answer = match tokio::time::timeout(self.timeout, wrx).await {
            Err(_) => {
                self.waiters.lock().unwrap().remove(&txn);
                return Err(Error::Timeout { peer: self.peer, method: method.to_string(), txn, timeout: self.timeout });
            }
            Ok(Err(_)) => return Err(closed()),
            Ok(Ok(m)) => m,
        };
        match answer {
            Message::Response { params } => Ok(params),
            Message::Fault { code, message } => {
                Err(Error::Fault { peer: self.peer, method: method.to_string(), txn, code, message })
            }
            Message::Call { method: m, .. } => Err(self.unexpected(method, &format!("a call to {m}"))),
        }
    }

    /// The first answer value (or an empty struct when none came).
    pub async fn call1(&self, method: &str, params: Vec<Value>) -> Result<Value> {
        Ok(self.call(method, params).await?.into_iter().next().unwrap_or(Value::Struct(Struct::new())))
    }

    /// A call answered by an acknowledgement: success or an error naming
    /// the code and the device's reason.
    pub async fn call_ack(&self, method: &str, params: Vec<Value>) -> Result<Value> {
        let v = self.call1(method, params).await?;
        check_ack(self.peer, method, v)
    }
}

/// An answer that carries `ErrorCode` (or `AckReturnCode`) other than
/// success is an error; anything else passes through.
pub fn check_ack(peer: SocketAddr, method: &str, v: Value) -> Result<Value> {
    if let Some(s) = v.as_struct() {
        let code = s.int("ErrorCode").or_else(|| s.int("AckReturnCode"));
        if let Some(code) = code {
            if code != crate::ack::SUCCESS as i64 {
                return Err(Error::Ack {
                    peer,
                    method: method.to_string(),
                    code: code as u32,
                    message: s.str("ErrorString").unwrap_or_default(),
                });
            }
        }
    }
    Ok(v)
}
