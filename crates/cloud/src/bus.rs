//! The cluster's bus: NATS between the cloud nodes (`--bus nats://…`).
//!
//! - `ivr.takeover`: a node that took a device's session says so with the
//!   session's epoch; the node that held it closes its own (the store's
//!   epoch already fences it: this makes it go at once).
//! - `ivr.released`: devices the node that held them can no longer hold
//!   (it stopped heartbeating and they were set offline): every node
//!   forgets where they were, so a request for one asks the store instead
//!   of waiting on a node that does not answer.
//! - `ivr.events.<device>`: every event a node stores, so the event stream
//!   of every node carries every node's events.
//! - `ivr.node.<node>.http`: a request about a device whose session another
//!   node holds (its RPC, events, live view, preview, recording) is handed
//!   to that node, which serves it as if it had come in itself and answers
//!   with its own URLs and statuses. Request and reply, never pipelined: a
//!   relayed RPC waits in the device's session like a local one. The
//!   relaying node authenticates the caller; what crosses the bus is who
//!   they are (never their token or cookie), signed with a key every node
//!   derives from the admin token and dated, so a peer on the bus without
//!   that secret cannot make a node act, and a copy replayed later than
//!   [`RELAY_FRESH`] is refused. An RPC is served straight from the relayed
//!   head; anything else goes through the node's router.
//!
//! Without a bus (one node) none of this runs.
//!
//! Upgrades go one node at a time, so nodes of two versions share a bus
//! for a while: every message is JSON whose new fields have defaults (an
//! older node ignores what it does not know, a newer one fills in what an
//! older one did not send), and a relayed request says the cluster
//! protocol ([`PROTOCOL`]) it was written in. A node handed a request in
//! a protocol newer than its own refuses it in words that name both
//! (never by misreading it); every node's heartbeat carries its version
//! and protocol for `GET /api/v1/nodes`.

use crate::access::{Caller, Scope};
use crate::accounts::Role;
use crate::api::batch::{Call, Outcome};
use crate::api::devices::percent_encode;
use crate::error::ApiError;
use crate::server::{now, Cloud};
use crate::store::{Event, Store};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Marks the answer of a node handed a request for a device it does not hold.
const NOT_HERE: &str = "x-ivr-not-here";
/// The largest request or answer relayed (NATS's default payload cap is 1 MiB).
const RELAY_MAX: usize = 900 << 10;
/// How long a node waits for the holder's answer past the RPC timeout.
const RELAY_MARGIN: Duration = Duration::from_secs(5);
/// How far a relayed request's date may be from the holder's clock.
pub(crate) const RELAY_FRESH: Duration = Duration::from_secs(30);
/// The cluster protocol this node speaks on the bus. Raised only by a
/// change an older node would misread; added fields do not raise it.
pub(crate) const PROTOCOL: u32 = 1;
/// The ivr version this node runs (in its heartbeat).
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Request headers that stay on the relaying node: credentials (the
/// caller crosses as an identity) and the framing of the original body.
const KEPT_HERE: [&str; 3] = ["authorization", "cookie", "content-length"];

#[derive(Serialize, Deserialize)]
struct Takeover {
    login_code: String,
    epoch: i64,
    node: String,
}

#[derive(Serialize, Deserialize)]
struct Memo {
    node: String,
    login_code: String,
    memo: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Released {
    login_codes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct BusEvent {
    node: String,
    event: Event,
}

/// The caller of a relayed request, as the relaying node authenticated
/// them; on the holder they see only the device the request is about.
#[derive(Serialize, Deserialize)]
struct RelayedCaller {
    actor: String,
    role: Role,
    user: Option<String>,
}

impl RelayedCaller {
    fn of(who: &Caller) -> RelayedCaller {
        RelayedCaller { actor: who.actor.clone(), role: who.role, user: who.user.clone() }
    }

    /// The caller on the holder: seeing only `devices`, from `peer`.
    fn caller(self, devices: std::collections::BTreeSet<String>, peer: SocketAddr) -> Caller {
        Caller {
            actor: self.actor,
            role: self.role,
            scope: Scope::Only(devices),
            addr: Some(peer.ip()),
            user: self.user,
            session: None,
            token: None,
        }
    }
}

/// The caller's address as a relayed request carries it.
fn peer_of(who: &Caller) -> SocketAddr {
    SocketAddr::new(who.addr.unwrap_or([127, 0, 0, 1].into()), 0)
}

#[derive(Serialize, Deserialize)]
struct RelayHead {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    peer: SocketAddr,
    /// The device the request is about (decoded from the path).
    lc: String,
    caller: RelayedCaller,
    /// When it was sent, Unix milliseconds.
    sent_ms: i64,
    /// The cluster protocol it is written in (0: a node from before the
    /// protocol was said, which wrote what protocol 1 reads).
    #[serde(default)]
    bus: u32,
}

/// Calls of a batch (`POST /api/v1/rpc`) for the devices one node holds,
/// handed to it as one message on `ivr.node.<node>.rpc`; signed and dated
/// like a [`RelayHead`].
#[derive(Serialize, Deserialize)]
struct BatchHead<C> {
    caller: RelayedCaller,
    peer: SocketAddr,
    sent_ms: i64,
    bus: u32,
    calls: Vec<C>,
}

/// A request that came over the bus (set by the holder, never by a client:
/// a request extension, not a header).
#[derive(Clone)]
pub(crate) struct Relayed(pub(crate) Caller);

/// The key relayed requests are signed with: every node of a cluster
/// shares the admin token, and nothing else on the bus knows it.
pub(crate) fn relay_key(secret: &str) -> [u8; 32] {
    crate::auth::digest32(&[b"ivr cluster relay\0", secret.as_bytes()])
}

fn relay_mac(key: &[u8; 32], frame: &[u8]) -> [u8; 32] {
    crate::auth::digest32(&[key, frame])
}

/// A signed relayed request: the MAC, then the frame.
fn sign(key: &[u8; 32], frame: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(32 + frame.len());
    out.extend_from_slice(&relay_mac(key, frame));
    out.extend_from_slice(frame);
    out.into()
}

/// The frame of a signed request, when its MAC is this cluster's.
fn verified(key: &[u8; 32], signed: &bytes::Bytes) -> Option<bytes::Bytes> {
    let (mac, frame) = (signed.get(..32)?, signed.get(32..)?);
    crate::auth::constant_eq(mac, &relay_mac(key, frame)).then(|| signed.slice(32..))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `/api/v1/devices/{lc}/rpc/{method}` → the method, decoded.
fn rpc_method(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/devices/")?;
    let (_, rest) = rest.split_once('/')?;
    let m = rest.strip_prefix("rpc/")?;
    (!m.is_empty() && !m.contains('/')).then(|| percent_decode(m))?
}

#[derive(Serialize, Deserialize)]
struct ReplyHead {
    status: u16,
    headers: Vec<(String, String)>,
}

/// A JSON head, a newline, then raw bytes.
fn frame<T: Serialize>(head: &T, body: &[u8]) -> bytes::Bytes {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out.into()
}

/// The head and the body (a view of `b`, not a copy).
fn unframe<T: for<'de> Deserialize<'de>>(b: &bytes::Bytes) -> Option<(T, bytes::Bytes)> {
    let i = b.iter().position(|&c| c == b'\n')?;
    let head = serde_json::from_slice(&b[..i]).ok()?;
    Some((head, b.slice(i + 1..)))
}

/// A login code as one NATS subject token (no `.`, `*`, `>` or spaces).
fn token(lc: &str) -> String {
    crate::safe_name(lc)
}

/// The login code of a path whose answer needs the device's session:
/// `/api/v1/devices/{lc}/rpc/…`, `…/events/…`, `…/channels/{ch}/preview`,
/// `…/live`, `…/recording`.
fn session_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/devices/")?;
    let (lc, rest) = rest.split_once('/')?;
    let needs = rest.starts_with("rpc/")
        || rest.starts_with("events/")
        || rest.split_once('/').is_some_and(|(c, tail)| {
            c == "channels"
                && tail.split_once('/').is_some_and(|(_, what)| matches!(what, "preview" | "live" | "recording"))
        });
    needs.then(|| percent_decode(lc))?
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Which node holds which device, and under which epoch, as the bus's
/// takeovers (and, for a device no takeover was heard of, the store) said:
/// a request for a device held elsewhere goes there without a database
/// read. Kept for every device of the cluster, compactly: a 64-bit keyed
/// hash of the login code and a node number, 24 bytes a device. A wrong
/// answer (a collision, or a node that let the device go) costs one
/// misdirected hop: that node answers "not here" and the store is asked.
pub(crate) struct Holders {
    keys: std::hash::RandomState,
    inner: std::sync::Mutex<HoldersInner>,
}

#[derive(Default)]
struct HoldersInner {
    nodes: Vec<Arc<str>>,
    by_device: std::collections::HashMap<u64, (i64, u16)>,
}

/// More node names than this on the bus are not remembered (a bound on
/// what a misbehaving peer can make a node keep; real clusters are far
/// smaller).
const MAX_NODES: usize = 4096;

impl Default for Holders {
    fn default() -> Holders {
        Holders { keys: std::hash::RandomState::new(), inner: std::sync::Mutex::default() }
    }
}

impl Holders {
    fn key(&self, lc: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, lc)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HoldersInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` holds `lc` under `epoch`; a later epoch wins (ties too: the
    /// store's answer, epoch 0, gives way to any takeover).
    pub(crate) fn learn(&self, lc: &str, node: &str, epoch: i64) {
        let key = self.key(lc);
        let mut h = self.lock();
        let n = match h.nodes.iter().position(|n| **n == *node) {
            Some(n) => n,
            None if h.nodes.len() < MAX_NODES => {
                h.nodes.push(node.into());
                h.nodes.len() - 1
            }
            None => return,
        };
        let n = n as u16;
        h.by_device.entry(key).and_modify(|e| *e = if e.0 <= epoch { (epoch, n) } else { *e }).or_insert((epoch, n));
    }

    /// The node said to hold `lc`.
    pub(crate) fn get(&self, lc: &str) -> Option<Arc<str>> {
        let key = self.key(lc);
        let h = self.lock();
        h.by_device.get(&key).and_then(|&(_, n)| h.nodes.get(usize::from(n)).cloned())
    }

    pub(crate) fn forget(&self, lc: &str) {
        let key = self.key(lc);
        self.lock().by_device.remove(&key);
    }

    /// Devices remembered.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_device.len()
    }
}

impl<S: Store> Cloud<S> {
    /// Joins the cluster's bus: takeovers, events and relayed requests
    /// from the other nodes start arriving.
    pub async fn join_bus(self: &Arc<Self>, url: &str) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("ivr-cloud {}", self.cfg.node_id))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| format!("--bus {url}: cannot connect to NATS: {e}"))?;
        let sub = |s: String| {
            let client = client.clone();
            async move { client.subscribe(s.clone()).await.map_err(|e| format!("--bus: cannot subscribe to {s}: {e}")) }
        };
        // Memos of verified logins are comparable across nodes from here on.
        self.passwords.share_key(&self.cfg.admin_token);
        let mut takeovers = sub("ivr.takeover".into()).await?;
        let mut memos = sub("ivr.memo".into()).await?;
        let mut released = sub("ivr.released".into()).await?;
        let mut events = sub("ivr.events.>".into()).await?;
        let mut relayed = sub(format!("ivr.node.{}.http", self.cfg.node_id)).await?;
        let mut batches = sub(format!("ivr.node.{}.rpc", self.cfg.node_id)).await?;
        subscribed(&client).await.map_err(|e| format!("--bus {url}: {e}"))?;
        // The heartbeat is there before any session: a node with none yet
        // would look dead to the others, and its first devices orphaned.
        self.store
            .node_alive(&self.cfg.node_id, &self.cfg.public_url, VERSION, PROTOCOL, now())
            .await
            .map_err(|e| format!("the node's heartbeat cannot be written: {e}"))?;
        if self.bus.set(client.clone()).is_err() {
            return Err("the cloud is on a bus already".into());
        }
        let c = self.clone();
        tokio::spawn(async move {
            while let Some(m) = takeovers.next().await {
                let Ok(t) = serde_json::from_slice::<Takeover>(&m.payload) else { continue };
                c.holders.learn(&t.login_code, &t.node, t.epoch);
                if t.node != c.cfg.node_id {
                    c.close_older(&t.login_code, t.epoch, &t.node);
                }
            }
        });
        let c = self.clone();
        tokio::spawn(async move {
            while let Some(m) = memos.next().await {
                let Ok(t) = serde_json::from_slice::<Memo>(&m.payload) else { continue };
                if t.node != c.cfg.node_id {
                    c.passwords.remember(&t.login_code, t.memo);
                }
            }
        });
        let c = self.clone();
        tokio::spawn(async move {
            while let Some(m) = released.next().await {
                let Ok(r) = serde_json::from_slice::<Released>(&m.payload) else { continue };
                for lc in &r.login_codes {
                    c.holders.forget(lc);
                }
            }
        });
        let c = self.clone();
        tokio::spawn(async move {
            while let Some(m) = events.next().await {
                // Nobody watches this node's stream: nothing to read.
                if c.feed.receiver_count() == 0 {
                    continue;
                }
                let Ok(e) = serde_json::from_slice::<BusEvent>(&m.payload) else { continue };
                if e.node != c.cfg.node_id {
                    let _ = c.feed.send(e.event);
                }
            }
        });
        let c = self.clone();
        let app = crate::api::router(self.clone());
        tokio::spawn(async move {
            while let Some(m) = relayed.next().await {
                let Some(reply) = m.reply.clone() else { continue };
                c.counters.relayed_in.fetch_add(1, Ordering::Relaxed);
                let (app, c) = (app.clone(), c.clone());
                tokio::spawn(async move {
                    let answer = c.serve_relayed(app, &m.payload).await;
                    if let Some(client) = c.bus.get() {
                        let _ = client.publish(reply, answer).await;
                    }
                });
            }
        });
        let c = self.clone();
        tokio::spawn(async move {
            while let Some(m) = batches.next().await {
                let Some(reply) = m.reply.clone() else { continue };
                c.counters.relayed_in.fetch_add(1, Ordering::Relaxed);
                let c = c.clone();
                tokio::spawn(async move {
                    let answer = c.serve_batch(&m.payload).await;
                    if let Some(client) = c.bus.get() {
                        let _ = client.publish(reply, answer).await;
                    }
                });
            }
        });
        tracing::info!(node = %self.cfg.node_id, bus = %url, "cloud: on the cluster's bus");
        Ok(())
    }

    /// Says on the bus that this node holds `login_code`'s session of `epoch`.
    pub(crate) async fn bus_takeover(&self, login_code: &str, epoch: i64) {
        let Some(b) = self.bus.get() else { return };
        let t = Takeover { login_code: login_code.to_owned(), epoch, node: self.cfg.node_id.clone() };
        let payload = serde_json::to_vec(&t).unwrap_or_default();
        if let Err(e) = b.publish("ivr.takeover", payload.into()).await {
            tracing::warn!(error = %e, "cloud: takeover not published; the old holder stops at its next write");
        }
    }

    /// Hands a login this node verified with argon2 to the other nodes, so
    /// a failover to them costs no argon2 (see `auth`).
    pub(crate) async fn bus_memo(&self, login_code: &str, memo: [u8; 32]) {
        let Some(b) = self.bus.get() else { return };
        let m = Memo { node: self.cfg.node_id.clone(), login_code: login_code.to_owned(), memo };
        let _ = b.publish("ivr.memo", serde_json::to_vec(&m).unwrap_or_default().into()).await;
    }

    /// Hands a stored event to the other nodes' event streams.
    pub(crate) async fn bus_event(&self, e: &Event) {
        let Some(b) = self.bus.get() else { return };
        let m = BusEvent { node: self.cfg.node_id.clone(), event: e.clone() };
        let payload = serde_json::to_vec(&m).unwrap_or_default();
        if let Err(err) = b.publish(format!("ivr.events.{}", token(&e.login_code)), payload.into()).await {
            tracing::warn!(error = %err, "cloud: event not published on the bus (it is stored)");
        }
    }

    /// Housekeeping of a node, every second: Keepalive times written in
    /// batches; in a cluster, this node's heartbeat and the devices of
    /// nodes that died set offline.
    pub(crate) async fn heartbeat(&self, tick: u64) {
        if tick.is_multiple_of(5) {
            if let Err(e) = self.store.flush_seen().await {
                tracing::warn!(error = %e, "cloud: last_seen not written; kept for the next try");
            }
        }
        if self.bus.get().is_none() {
            return;
        }
        let ka = self.cfg.keepalive.as_secs().max(1);
        if tick.is_multiple_of((ka / 3).max(1)) {
            if let Err(e) =
                self.store.node_alive(&self.cfg.node_id, &self.cfg.public_url, VERSION, PROTOCOL, now()).await
            {
                tracing::warn!(error = %e, "cloud: node heartbeat not written");
            }
        }
        if tick.is_multiple_of(ka) {
            match self.store.orphans_offline(now(), self.dead_before(now())).await {
                Ok(lcs) => {
                    if !lcs.is_empty() {
                        for lc in &lcs {
                            self.holders.forget(lc);
                        }
                        let r = Released { login_codes: lcs.clone() };
                        if let Some(b) = self.bus.get() {
                            let _ = b.publish("ivr.released", serde_json::to_vec(&r).unwrap_or_default().into()).await;
                        }
                    }
                    for lc in lcs {
                        let reason = "the cloud node that held this session stopped (no heartbeat for three Keepalive intervals)";
                        self.event(&lc, None, "offline", json!({ "reason": reason })).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cloud: devices of dead nodes not swept"),
            }
        }
    }

    /// A node whose last heartbeat is older than this (Unix seconds, at
    /// `now`) is dead: three Keepalive intervals, after which its devices
    /// are set offline.
    pub(crate) fn dead_before(&self, now: i64) -> i64 {
        now - 3 * self.cfg.keepalive.as_secs().max(1) as i64
    }

    /// Closes this node's session of `login_code` if it is older than
    /// `epoch` (a later login, on `by`, holds the device).
    pub(crate) fn close_older(&self, login_code: &str, epoch: i64, by: &str) {
        let h = {
            let s = self.sessions.lock().expect("sessions lock");
            s.get(login_code).filter(|e| e.epoch < epoch).map(|e| e.handle.clone())
        };
        if let Some(h) = h {
            tracing::info!(login_code = %crate::limits::shown(login_code), node = %by, "cloud: the device logged in on another node; closing this session");
            self.counters.replaced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move { h.close().await });
        }
    }

    /// The node to hand a request about `lc` to: the one holding its
    /// session, when that is not this one. `fresh`: ask the store, not
    /// what the bus said.
    pub(crate) async fn holder(&self, lc: &str, fresh: bool) -> Option<Arc<str>> {
        self.bus.get()?;
        if self.handle_of(lc).is_some() {
            return None;
        }
        if !fresh {
            if let Some(n) = self.holders.get(lc) {
                return (*n != *self.cfg.node_id).then_some(n);
            }
        }
        self.counters.holder_reads.fetch_add(1, Ordering::Relaxed);
        let node = self.store.holder(lc).await.ok()??;
        if node == self.cfg.node_id {
            return None;
        }
        // Epoch 0: the next takeover the bus carries for it wins.
        self.holders.learn(lc, &node, 0);
        Some(node.into())
    }

    /// [`Cloud::holder`] for many devices (a batch's): the node for each
    /// one another node holds; those held here, or nowhere, are absent.
    /// What the bus has not named is read from the store at once, not a
    /// read per device.
    pub(crate) async fn holders_of<'a>(&self, lcs: &[&'a str]) -> HashMap<&'a str, Arc<str>> {
        let mut found = HashMap::new();
        if self.bus.get().is_none() {
            return found;
        }
        let mut unknown = Vec::new();
        for &lc in lcs {
            if self.handle_of(lc).is_some() {
                continue;
            }
            match self.holders.get(lc) {
                Some(n) if *n != *self.cfg.node_id => drop(found.insert(lc, n)),
                Some(_) => {}
                None => unknown.push(lc),
            }
        }
        if unknown.is_empty() {
            return found;
        }
        self.counters.holder_reads.fetch_add(1, Ordering::Relaxed);
        let rows = match self.store.holders(&unknown).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cloud: where a batch's devices are held could not be read");
                return found;
            }
        };
        let asked: std::collections::HashSet<&'a str> = unknown.into_iter().collect();
        for (lc, node) in rows {
            let Some(&lc) = asked.get(lc.as_str()) else { continue };
            if node != self.cfg.node_id {
                self.holders.learn(lc, &node, 0);
                found.insert(lc, node.into());
            }
        }
        found
    }
}

/// When node `node` cannot read a relayed request of protocol `bus`: the
/// answer that says so (the relaying node hands it on to the caller).
fn newer_protocol(node: &str, bus: u32) -> Option<bytes::Bytes> {
    if bus <= PROTOCOL {
        return None;
    }
    tracing::warn!(
        protocol = bus,
        "cloud: a relayed request in a newer cluster protocol was refused; upgrade this node"
    );
    Some(fail(
        StatusCode::BAD_GATEWAY,
        &format!(
            "node {node:?} runs ivr {VERSION} (cluster protocol {PROTOCOL}) and cannot serve a request in cluster protocol {bus}: upgrade it like the others"
        ),
    ))
}

/// A response as a framed answer for the relaying node.
async fn framed(res: Response) -> bytes::Bytes {
    let (parts, body) = res.into_parts();
    let Ok(body) = axum::body::to_bytes(body, RELAY_MAX).await else {
        return fail(StatusCode::BAD_GATEWAY, "the answer is too large to relay between nodes");
    };
    let headers =
        parts.headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
    frame(&ReplyHead { status: parts.status.as_u16(), headers }, &body)
}

fn fail(status: StatusCode, msg: &str) -> bytes::Bytes {
    frame(&ReplyHead { status: status.as_u16(), headers: vec![] }, json!({ "error": msg }).to_string().as_bytes())
}

fn not_here(lc: &str) -> Response {
    let mut r = ApiError::new(StatusCode::MISDIRECTED_REQUEST, format!("this node does not hold device {lc:?}"))
        .into_response();
    r.headers_mut().insert(NOT_HERE, HeaderValue::from_static("1"));
    r
}

impl<S: Store> Cloud<S> {
    /// Serves a request another node handed over: an RPC straight to the
    /// device's session, anything else through this node's router; the
    /// framed answer.
    async fn serve_relayed(self: &Arc<Self>, app: axum::Router, payload: &bytes::Bytes) -> bytes::Bytes {
        let (head, body) = match self.opened::<RelayHead>(payload) {
            Ok(opened) => opened,
            Err(refused) => return refused,
        };
        if let Some(refused) = self.refused(head.bus, head.sent_ms) {
            return refused;
        }
        // Handed over by a node that thought this one holds the device: if
        // it does not (any more), say so, and that node asks the store.
        if self.handle_of(&head.lc).is_none() {
            return framed(not_here(&head.lc)).await;
        }
        let who = head.caller.caller([head.lc.clone()].into(), head.peer);
        let path = head.uri.split('?').next().unwrap_or_default();
        if let (true, Some(method)) = (head.method == "POST", rpc_method(path)) {
            return match crate::api::devices::call(self, &who, &head.lc, &method, &body).await {
                // The device's JSON as it came, framed without a
                // response built and read back.
                Ok(v) => frame(
                    &ReplyHead { status: 200, headers: vec![("content-type".into(), "application/json".into())] },
                    v.text().as_bytes(),
                ),
                Err(e) => framed(e.into_response()).await,
            };
        }
        let mut b = axum::http::Request::builder().method(head.method.as_str()).uri(head.uri.as_str());
        for (k, v) in &head.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let Ok(mut req) = b.body(axum::body::Body::from(body)) else {
            return fail(StatusCode::BAD_REQUEST, "a relayed request with a bad method, path or header");
        };
        req.extensions_mut().insert(ConnectInfo(head.peer));
        req.extensions_mut().insert(Relayed(who));
        let Ok(res) = app.oneshot(req).await;
        framed(res).await
    }
}

impl<S: Store> Cloud<S> {
    /// The head and body of a relayed request signed with this cluster's
    /// key; the framed refusal otherwise.
    fn opened<T: for<'de> Deserialize<'de>>(&self, payload: &bytes::Bytes) -> Result<(T, bytes::Bytes), bytes::Bytes> {
        let Some(signed) = verified(&self.relay_key, payload) else {
            tracing::warn!(
                "cloud: a relayed request not signed with this cluster's key (another admin token?) was refused"
            );
            return Err(fail(
                StatusCode::FORBIDDEN,
                "a relayed request not signed with this cluster's key (do the nodes share --admin-token?)",
            ));
        };
        unframe::<T>(&signed).ok_or_else(|| fail(StatusCode::BAD_REQUEST, "a relayed request this node cannot read"))
    }

    /// The refusal of a relayed request written in cluster protocol `bus`
    /// and sent at `sent_ms`, when this node cannot read it or it is stale.
    fn refused(&self, bus: u32, sent_ms: i64) -> Option<bytes::Bytes> {
        if let Some(refused) = newer_protocol(&self.cfg.node_id, bus) {
            return Some(refused);
        }
        ((now_ms() - sent_ms).unsigned_abs() > RELAY_FRESH.as_millis() as u64).then(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "a relayed request dated more than 30 s from this node's clock (a replay, or clocks apart)",
            )
        })
    }

    /// Serves a batch's calls another node handed over (see
    /// `api::batch`): each device's calls in order, devices at once; the
    /// outcomes in the calls' order as [`encode_outcomes`] writes them. A
    /// device this node does not hold gets `421` for each of its calls
    /// (the relaying node asks the store and tries again).
    async fn serve_batch(self: &Arc<Self>, payload: &bytes::Bytes) -> bytes::Bytes {
        let head = match self.opened::<BatchHead<Call>>(payload) {
            Ok((head, _)) => head,
            Err(refused) => return refused,
        };
        if let Some(refused) = self.refused(head.bus, head.sent_ms) {
            return refused;
        }
        let calls = head.calls;
        let who = head.caller.caller(calls.iter().map(|c| c.device.clone()).collect(), head.peer);
        let groups = crate::api::batch::by_device(&calls);
        // Answers are dropped as they arrive once they could not be sent
        // back in one message anyway (see `encode_outcomes`).
        let room = crate::api::batch::Room::new(RELAY_MAX.saturating_sub(256 * calls.len()), TOO_LARGE_FOR_BUS);
        let runs = groups.iter().map(|(lc, idx)| {
            let (who, calls, room) = (&who, &calls, &room);
            async move {
                if self.handle_of(lc).is_none() {
                    let o = Outcome::error(ApiError::new(
                        StatusCode::MISDIRECTED_REQUEST,
                        format!("this node does not hold device {lc:?}"),
                    ));
                    return idx.iter().map(|&i| (i, o.clone())).collect();
                }
                crate::api::batch::run_here(self, who, lc, idx, calls, room).await
            }
        });
        let mut out: Vec<Option<Outcome>> = vec![None; calls.len()];
        for (i, o) in futures_util::future::join_all(runs).await.into_iter().flatten() {
            out[i] = Some(o);
        }
        let outcomes: Vec<Outcome> = out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::error(ApiError::internal("the call was not made"))))
            .collect();
        frame(&ReplyHead { status: 200, headers: vec![] }, &encode_outcomes(&outcomes))
    }

    /// Hands the calls of `groups` (devices `node` holds, each with its
    /// calls' indices into `calls`) to `node` as one message; (index,
    /// outcome) for each. Calls the node turns away as not held there, and
    /// every call when it cannot take a batch (gone, or a version from
    /// before batches), go one by one as `POST …/rpc/{method}` would.
    pub(crate) async fn relay_calls(
        self: &Arc<Self>,
        who: &Caller,
        node: Arc<str>,
        groups: Vec<(&str, &[usize])>,
        calls: &[Call],
    ) -> Vec<(usize, Outcome)> {
        let order: Vec<usize> = groups.iter().flat_map(|(_, idx)| idx.iter().copied()).collect();
        let head = BatchHead {
            caller: RelayedCaller::of(who),
            peer: peer_of(who),
            sent_ms: now_ms(),
            bus: PROTOCOL,
            calls: order.iter().map(|&i| &calls[i]).collect::<Vec<&Call>>(),
        };
        let payload = sign(&self.relay_key, &frame(&head, b""));
        // The longest run of one device's calls bounds how long it takes.
        let longest = groups.iter().map(|(_, idx)| idx.len()).max().unwrap_or(1) as u32;
        let answer = match self.bus.get() {
            Some(bus) if payload.len() <= RELAY_MAX => {
                self.counters.relayed_out.fetch_add(1, Ordering::Relaxed);
                let ask = async_nats::Request::new()
                    .payload(payload)
                    .timeout(Some(self.cfg.rpc_timeout * longest + RELAY_MARGIN));
                Some(bus.send_request(format!("ivr.node.{node}.rpc"), ask).await)
            }
            _ => None,
        };
        let outcomes = match answer {
            Some(Ok(m)) => match unframe::<ReplyHead>(&m.payload) {
                Some((h, body)) if h.status == 200 => match decode_outcomes(&body, order.len()) {
                    Some(o) => o,
                    None => vec![Outcome::error(unreadable(&node)); order.len()],
                },
                // The node refused the whole batch (say, a newer protocol).
                Some((h, body)) => vec![Outcome { status: h.status, body }; order.len()],
                None => vec![Outcome::error(unreadable(&node)); order.len()],
            },
            Some(Err(e)) if matches!(e.kind(), async_nats::RequestErrorKind::TimedOut) => {
                for (lc, _) in &groups {
                    self.holders.forget(lc);
                }
                let e = ApiError::timeout(format!("node {node:?}, which holds the devices, did not answer in time"));
                vec![Outcome::error(e); order.len()]
            }
            // Too large for one message, or nobody took it: one by one.
            _ => {
                let misdirected = ApiError::new(StatusCode::MISDIRECTED_REQUEST, "");
                vec![Outcome::error(misdirected); order.len()]
            }
        };
        let mut done: HashMap<usize, Outcome> = order.iter().copied().zip(outcomes).collect();
        // Devices the node does not hold (all of a device's calls are
        // turned away together, before any is made): again, one by one,
        // after the store says where they are.
        let again = groups.iter().filter(|(_, idx)| {
            idx.iter().any(|i| done.get(i).is_some_and(|o| o.status == StatusCode::MISDIRECTED_REQUEST.as_u16()))
        });
        let retried = futures_util::future::join_all(again.map(|(lc, idx)| async move {
            self.counters.relays_misdirected.fetch_add(1, Ordering::Relaxed);
            self.holders.forget(lc);
            let mut out = Vec::with_capacity(idx.len());
            for &i in *idx {
                out.push((i, self.rpc_anywhere(who, lc, &calls[i]).await));
            }
            out
        }))
        .await;
        done.extend(retried.into_iter().flatten());
        done.into_iter().collect()
    }

    /// One call of a batch, as `POST …/rpc/{method}` would make it: handed
    /// to the node holding the device, or made here.
    async fn rpc_anywhere(self: &Arc<Self>, who: &Caller, lc: &str, call: &Call) -> Outcome {
        let here = || crate::api::devices::call_with(self, who, lc, &call.method, call.params.clone());
        let Some(node) = self.holder(lc, false).await else { return Outcome::of(here().await) };
        let head = RelayHead {
            method: "POST".into(),
            uri: format!("/api/v1/devices/{}/rpc/{}", percent_encode(lc), percent_encode(&call.method)),
            headers: Vec::new(),
            peer: peer_of(who),
            lc: lc.to_owned(),
            caller: RelayedCaller::of(who),
            sent_ms: now_ms(),
            bus: PROTOCOL,
        };
        let body = call.params.as_ref().map(|p| p.to_string()).unwrap_or_default();
        match self.ask_holder(lc, node, sign(&self.relay_key, &frame(&head, body.as_bytes()))).await {
            Asked::Answered(h, body, _) => Outcome { status: h.status, body },
            Asked::Failed(e) => Outcome::error(e),
            Asked::Nobody => Outcome::of(here().await),
        }
    }
}

fn unreadable(node: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, format!("node {node:?} answered something unreadable"))
}

/// The error of a batch's answer that does not fit in the message back.
const TOO_LARGE_FOR_BUS: &str = "the device answered, but this batch's answers are more than one message between nodes carries: make fewer calls at once";

/// A batch's outcomes for the bus: each as its status (2 bytes) and the
/// length of its body (4 bytes, big-endian), then the body. A node
/// answers at most [`RELAY_MAX`]: answers past that are replaced by a 502
/// that says so (the call was made; its answer did not fit).
fn encode_outcomes(outcomes: &[Outcome]) -> Vec<u8> {
    let mut out = Vec::with_capacity(outcomes.iter().map(|o| 6 + o.body.len()).sum());
    for (n, o) in outcomes.iter().enumerate() {
        let room = RELAY_MAX.saturating_sub(out.len() + 256 * (outcomes.len() - n));
        let too_large;
        let o = if o.body.len() > room {
            too_large = Outcome::error(ApiError::new(StatusCode::BAD_GATEWAY, TOO_LARGE_FOR_BUS));
            &too_large
        } else {
            o
        };
        out.extend_from_slice(&o.status.to_be_bytes());
        out.extend_from_slice(&(o.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&o.body);
    }
    out
}

/// What [`encode_outcomes`] wrote, when it holds exactly `n` (views of
/// `b`, not copies).
fn decode_outcomes(b: &bytes::Bytes, n: usize) -> Option<Vec<Outcome>> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    while at < b.len() {
        let status = u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?);
        let len = u32::from_be_bytes(b.get(at + 2..at + 6)?.try_into().ok()?) as usize;
        let end = (at + 6).checked_add(len).filter(|&e| e <= b.len())?;
        out.push(Outcome { status, body: b.slice(at + 6..end) });
        at = end;
    }
    (out.len() == n).then_some(out)
}

/// The router's layer: a request that needs the session of a device held
/// by another node is authenticated here, then handed to that node.
pub(crate) async fn relay<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(lc) = session_path(req.uri().path()) else { return next.run(req).await };
    if req.extensions().get::<Relayed>().is_some() {
        // Handed over already (and checked to be held here): never on.
        return next.run(req).await;
    }
    let Some(node) = c.holder(&lc, false).await else { return next.run(req).await };
    let (mut parts, body) = req.into_parts();
    let who = match Caller::from_request_parts(&mut parts, &c).await {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    // What the holder would say to a caller who does not see the device.
    if let Err(e) = who.see(&lc) {
        return e.into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, RELAY_MAX).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body: too large to hand to another node").into_response();
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |c| c.0);
    // An RPC is served from the head alone (see `serve_relayed`): its
    // headers would cross the bus for nothing.
    let rpc = parts.method == axum::http::Method::POST && rpc_method(parts.uri.path()).is_some();
    let head = RelayHead {
        method: parts.method.to_string(),
        uri: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.to_string()),
        headers: if rpc {
            Vec::new()
        } else {
            parts
                .headers
                .iter()
                .filter(|(k, _)| !KEPT_HERE.contains(&k.as_str()))
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect()
        },
        peer,
        lc: lc.clone(),
        caller: RelayedCaller::of(&who),
        sent_ms: now_ms(),
        bus: PROTOCOL,
    };
    if c.bus.get().is_none() {
        return next.run(axum::extract::Request::from_parts(parts, body.into())).await;
    }
    let payload = sign(&c.relay_key, &frame(&head, &body));
    match c.ask_holder(&lc, node, payload).await {
        Asked::Answered(h, body, node) => relayed_answer(h, body, &node),
        Asked::Failed(e) => e.into_response(),
        // Nobody else holds it: as good as offline, which this node says.
        Asked::Nobody => next.run(axum::extract::Request::from_parts(parts, body.into())).await,
    }
}

/// Returns once the server has taken every subscription `client` made
/// before: a flush only writes them out, and a takeover published by
/// another node in between would pass this one by. The server handles a
/// connection's messages in order, so this connection's own message on
/// an inbox of its own coming back means the earlier ones were taken.
/// A server not reachable yet is waited for (the client retries), as the
/// flush did, with a warning every 10 s.
async fn subscribed(client: &async_nats::Client) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.map_err(|e| format!("cannot subscribe to {inbox}: {e}"))?;
    client.publish(inbox, bytes::Bytes::new()).await.map_err(|e| format!("cannot publish: {e}"))?;
    let mut waited = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => return Err("the connection closed while subscribing".into()),
            Err(_) => {
                waited += 10;
                tracing::warn!("cloud: --bus: no answer from nats-server for {waited} s; still waiting");
            }
        }
    }
}

/// What the node holding a device answered to a relayed request.
enum Asked {
    /// Its answer, and which node gave it.
    Answered(ReplyHead, bytes::Bytes, Arc<str>),
    /// No answer in time, or one that cannot be read.
    Failed(ApiError),
    /// No other node holds the device (any more): this one answers.
    Nobody,
}

impl<S: Store> Cloud<S> {
    /// Hands a signed relayed request about `lc` to `node`, which the bus
    /// said holds it; when that node no longer does or is gone, to the
    /// one the store names.
    async fn ask_holder(&self, lc: &str, mut node: Arc<str>, payload: bytes::Bytes) -> Asked {
        let Some(bus) = self.bus.get() else { return Asked::Nobody };
        for attempt in 0..2 {
            if attempt == 1 {
                self.holders.forget(lc);
                match self.holder(lc, true).await {
                    Some(n) => node = n,
                    None => break,
                }
            }
            let ask =
                async_nats::Request::new().payload(payload.clone()).timeout(Some(self.cfg.rpc_timeout + RELAY_MARGIN));
            self.counters.relayed_out.fetch_add(1, Ordering::Relaxed);
            match bus.send_request(format!("ivr.node.{node}.http"), ask).await {
                Ok(m) => match unframe::<ReplyHead>(&m.payload) {
                    Some((h, _)) if h.headers.iter().any(|(k, _)| k == NOT_HERE) => {
                        self.counters.relays_misdirected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Some((h, body)) => return Asked::Answered(h, body, node),
                    None => return Asked::Failed(unreadable(&node)),
                },
                Err(e) if matches!(e.kind(), async_nats::RequestErrorKind::TimedOut) => {
                    // Slow, hung or gone: the next request asks the store.
                    self.holders.forget(lc);
                    return Asked::Failed(ApiError::timeout(format!(
                        "node {node:?}, which holds device {lc:?}, did not answer in time"
                    )));
                }
                // Nobody listens for that node: it died.
                Err(_) => continue,
            }
        }
        Asked::Nobody
    }
}

/// The holder's answer, as this node's.
fn relayed_answer(h: ReplyHead, body: bytes::Bytes, node: &str) -> Response {
    let mut res = Response::new(axum::body::Body::from(body));
    *res.status_mut() = StatusCode::from_u16(h.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in h.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            if k != axum::http::header::CONTENT_LENGTH {
                res.headers_mut().insert(k, v);
            }
        }
    }
    res.headers_mut().insert("x-ivr-node", HeaderValue::try_from(node).unwrap_or(HeaderValue::from_static("?")));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_need_the_session_are_handed_over() {
        assert_eq!(session_path("/api/v1/devices/cam%2E1/rpc/GetTime").as_deref(), Some("cam.1"));
        assert_eq!(session_path("/api/v1/devices/a/events/Reboot").as_deref(), Some("a"));
        assert_eq!(session_path("/api/v1/devices/a/channels/0/live").as_deref(), Some("a"));
        assert_eq!(session_path("/api/v1/devices/a/channels/0/recording").as_deref(), Some("a"));
        assert_eq!(session_path("/api/v1/devices/a/channels/0/preview").as_deref(), Some("a"));
        assert_eq!(session_path("/api/v1/devices/a/channels/0/recordings"), None, "the index is shared");
        assert_eq!(session_path("/api/v1/devices/a/channels/0/playback"), None, "storage is shared");
        assert_eq!(session_path("/api/v1/devices/a"), None);
        assert_eq!(session_path("/api/v1/devices/%zz/rpc/x"), None);
    }

    #[test]
    fn the_latest_takeover_says_who_holds_a_device() {
        let h = Holders::default();
        assert!(h.get("cam-1").is_none());
        h.learn("cam-1", "n1", 5);
        h.learn("cam-2", "n2", 1);
        assert_eq!(h.get("cam-1").as_deref(), Some("n1"));
        h.learn("cam-1", "n3", 4);
        assert_eq!(h.get("cam-1").as_deref(), Some("n1"), "an older takeover arriving late changes nothing");
        h.learn("cam-1", "n3", 7);
        assert_eq!(h.get("cam-1").as_deref(), Some("n3"));
        assert_eq!(h.get("cam-2").as_deref(), Some("n2"));
        // The store's answer (epoch 0) gives way to the next takeover.
        h.forget("cam-2");
        assert!(h.get("cam-2").is_none());
        h.learn("cam-2", "n1", 0);
        h.learn("cam-2", "n2", 0);
        assert_eq!(h.get("cam-2").as_deref(), Some("n2"));
        assert_eq!(h.len(), 2);
        // Node names are kept once each, and only so many.
        for i in 0..MAX_NODES + 10 {
            h.learn(&format!("d{i}"), &format!("node-{i}"), 1);
        }
        assert_eq!(h.lock().nodes.len(), MAX_NODES);
        assert!(h.get(&format!("d{}", MAX_NODES + 5)).is_none(), "a name past the cap is not remembered");
        assert_eq!(h.get("d7").as_deref(), Some("node-7"));
    }

    #[test]
    fn relayed_requests_are_signed_with_the_clusters_key() {
        let key = relay_key("admin-secret");
        let signed = sign(&key, b"{\"a\":1}\nbody");
        assert_eq!(verified(&key, &signed).as_deref(), Some(&b"{\"a\":1}\nbody"[..]));
        assert_eq!(verified(&relay_key("another"), &signed), None, "another cluster's key");
        let mut altered = signed.to_vec();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(verified(&key, &altered.into()), None, "one byte changed");
        assert_eq!(verified(&key, &signed.slice(..20)), None, "shorter than a MAC");
        assert_ne!(relay_key("admin-secret"), crate::bus::relay_key("admin-secreT"));
    }

    #[test]
    fn an_rpc_is_known_by_its_path() {
        assert_eq!(rpc_method("/api/v1/devices/cam%2E1/rpc/GetTime").as_deref(), Some("GetTime"));
        assert_eq!(rpc_method("/api/v1/devices/a/rpc/Get%54ime").as_deref(), Some("GetTime"));
        assert_eq!(rpc_method("/api/v1/devices/a/rpc/"), None);
        assert_eq!(rpc_method("/api/v1/devices/a/rpc/x/y"), None);
        assert_eq!(rpc_method("/api/v1/devices/a/events/Reboot"), None);
        assert_eq!(rpc_method("/api/v1/devices/a/channels/0/live"), None);
    }

    #[test]
    fn nodes_of_two_versions_read_each_others_relays() {
        // From a node before the protocol was said: no `bus`, read as 0.
        let older = br#"{"method":"POST","uri":"/api/v1/devices/a/rpc/GetTime","headers":[],"peer":"127.0.0.1:5","lc":"a","caller":{"actor":"admin-token","role":"admin","user":null},"sent_ms":1}"#;
        let (head, body): (RelayHead, _) = unframe(&frame_raw(older, b"{}")).unwrap();
        assert_eq!((head.bus, head.lc.as_str(), &body[..]), (0, "a", &b"{}"[..]));
        assert!(newer_protocol("n1", head.bus).is_none(), "served");
        // From a newer node with a field this one does not know: read.
        let newer = br#"{"method":"POST","uri":"/x","headers":[],"peer":"127.0.0.1:5","lc":"a","caller":{"actor":"t","role":"viewer","user":"v"},"sent_ms":1,"bus":1,"trace":"abc"}"#;
        let (head, _): (RelayHead, _) = unframe(&frame_raw(newer, b"")).unwrap();
        assert!(newer_protocol("n1", head.bus).is_none());
        // A protocol this node does not speak: refused, saying why.
        let answer = newer_protocol("n1", PROTOCOL + 1).expect("refused");
        let (h, body): (ReplyHead, _) = unframe(&answer).unwrap();
        let msg: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let msg = msg["error"].as_str().unwrap_or_default();
        assert_eq!(h.status, 502);
        assert!(msg.contains("\"n1\"") && msg.contains(&format!("cluster protocol {}", PROTOCOL + 1)), "{msg}");
        // What this node sends says its protocol.
        let mine = RelayHead {
            method: "GET".into(),
            uri: "/".into(),
            headers: vec![],
            peer: "127.0.0.1:1".parse().unwrap(),
            lc: "a".into(),
            caller: RelayedCaller { actor: "x".into(), role: Role::Admin, user: None },
            sent_ms: 0,
            bus: PROTOCOL,
        };
        assert!(String::from_utf8_lossy(&frame(&mine, b"")).contains(&format!("\"bus\":{PROTOCOL}")));
    }

    fn frame_raw(head: &[u8], body: &[u8]) -> bytes::Bytes {
        [head, b"\n", body].concat().into()
    }

    #[test]
    fn frames_carry_a_head_and_raw_bytes() {
        let h = ReplyHead { status: 504, headers: vec![("a".into(), "b".into())] };
        let f = frame(&h, b"\n\x00body");
        let (back, body): (ReplyHead, _) = unframe(&f).unwrap();
        assert_eq!((back.status, &body[..]), (504, &b"\n\x00body"[..]));
        assert!(unframe::<ReplyHead>(&bytes::Bytes::from_static(b"no newline")).is_none());
    }

    #[test]
    fn a_batchs_outcomes_cross_the_bus_as_they_were() {
        let outcomes = vec![
            Outcome { status: 200, body: bytes::Bytes::from_static(b"[{\"token\":\"1\"}]") },
            Outcome { status: 409, body: bytes::Bytes::from_static(b"{\"error\":\"offline\"}") },
            Outcome { status: 200, body: bytes::Bytes::new() },
        ];
        let b: bytes::Bytes = encode_outcomes(&outcomes).into();
        let back = decode_outcomes(&b, 3).unwrap();
        for (a, z) in outcomes.iter().zip(&back) {
            assert_eq!((a.status, &a.body), (z.status, &z.body));
        }
        // Another count, or bytes cut anywhere: refused, never misread.
        assert!(decode_outcomes(&b, 2).is_none());
        for cut in 1..b.len() {
            let part = b.slice(..cut);
            assert!(decode_outcomes(&part, 3).is_none(), "cut at {cut}");
        }
        // Answers past what one message carries are replaced by a 502 that
        // says so; the others arrive.
        let big = Outcome { status: 200, body: vec![b'1'; RELAY_MAX / 2].into() };
        let b: bytes::Bytes = encode_outcomes(&[big.clone(), big.clone(), big]).into();
        assert!(b.len() <= RELAY_MAX);
        let back = decode_outcomes(&b, 3).unwrap();
        assert_eq!(back.iter().map(|o| o.status).collect::<Vec<_>>(), [200, 502, 502]);
        assert!(String::from_utf8_lossy(&back[1].body).contains("fewer calls"));
    }
}
