//! The cloud itself: its configuration, the device sessions, the store and
//! the event feed. The HTTP side is in `api` (the JSON API and the router),
//! `gateway` (devices at `/ivc`), `live`, `recordings`, `policy`, `uploads`
//! and `listen`.

use crate::auth::{HashCost, Passwords};
use crate::store::{Device, Event, Store, StoreError};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use ivr_rpc::conn::RpcHandle;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Connection cap, header deadline, idle timeout.
    pub limits: crate::listen::ConnLimits,
    /// What one device session may do (rates, channels).
    pub device_limits: DeviceLimits,
    /// Events older than this many days are deleted (0: kept for ever).
    pub events_max_age_days: u32,
    /// At most this many events are kept (the oldest deleted first; 0: no cap).
    pub events_max_rows: u64,
    /// How long a console login lasts.
    pub session_ttl: Duration,
    /// This node's name in a cluster (`--node-id`); the store records it
    /// as the holder of each device session it serves.
    pub node_id: String,
}

/// What one device session may do; past a rate the request is refused
/// with an error the device sees, and counted.
#[derive(Clone, Debug)]
pub struct DeviceLimits {
    /// AlarmNotify per second (sustained) per session.
    pub alarms_per_sec: f64,
    /// AlarmNotify in a burst.
    pub alarm_burst: f64,
    /// preview_server per second (sustained) per session.
    pub previews_per_sec: f64,
    /// preview_server in a burst.
    pub preview_burst: f64,
    /// Channels a device may report in a Keepalive.
    pub max_channels: usize,
    /// One-time upload URLs a device may hold unused (oldest dropped).
    pub max_upload_urls: usize,
    /// How long an upload URL works.
    pub upload_url_ttl: Duration,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        DeviceLimits {
            alarms_per_sec: 5.0,
            alarm_burst: 50.0,
            previews_per_sec: 1.0,
            preview_burst: 20.0,
            max_channels: 256,
            max_upload_urls: 64,
            upload_url_ttl: Duration::from_secs(600),
        }
    }
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
            response_timeout: ivr_rpc::RESPONSE_TIMEOUT,
            live: crate::live::LiveConfig::default(),
            recordings_max_bytes: None,
            limits: crate::listen::ConnLimits::default(),
            device_limits: DeviceLimits::default(),
            events_max_age_days: 90,
            events_max_rows: 5_000_000,
            session_ttl: Duration::from_secs(12 * 3600),
            node_id: "local".into(),
        }
    }
}

/// Counters since start (`GET /api/v1/stats`).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) logins: AtomicU64,
    pub(crate) logins_refused: AtomicU64,
    pub(crate) replaced: AtomicU64,
    pub(crate) closed_by_rule: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) rpc_calls: AtomicU64,
    pub(crate) logins_throttled: AtomicU64,
    pub(crate) alarms_dropped: AtomicU64,
    pub(crate) previews_dropped: AtomicU64,
    pub(crate) keepalives_refused: AtomicU64,
    pub(crate) uploads_refused: AtomicU64,
    /// Requests handed to the node holding the device, served for another
    /// node, and handed to a node that no longer held it.
    pub(crate) relayed_out: AtomicU64,
    pub(crate) relayed_in: AtomicU64,
    pub(crate) relays_misdirected: AtomicU64,
    /// Store reads to find which node holds a device (one a batch).
    pub(crate) holder_reads: AtomicU64,
}

/// How a login check ended.
#[derive(Debug)]
pub(crate) enum Login {
    Ok,
    Wrong,
    /// Too many failures for this address or login_code: retry after.
    Throttled(Duration, &'static str),
    /// The argon2 queue is full (for this address or in all).
    Busy(&'static str),
    Failed(String),
}

pub(crate) struct SessionEntry {
    pub(crate) id: u64,
    /// The store's epoch of this session.
    pub(crate) epoch: i64,
    pub(crate) handle: RpcHandle,
    pub(crate) last_keepalive: Instant,
}

/// The cloud: store, live sessions, event feed.
pub struct Cloud<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) cfg: CloudConfig,
    pub(crate) lives: crate::live::Lives,
    pub(crate) recorder: crate::recordings::Recorder,
    pub(crate) keeper: crate::policy::Keeper,
    pub(crate) sessions: Mutex<HashMap<String, SessionEntry>>,
    pub(crate) uploads: crate::limits::UploadUrls,
    pub(crate) gate: Arc<crate::listen::Gate>,
    /// Why the cloud is stopping (set by [`Cloud::shutdown`]): the reason
    /// recorded for each session it closes.
    pub(crate) stopping: Mutex<Option<String>>,
    login_by_code: crate::limits::Throttle,
    login_by_addr: crate::limits::Throttle,
    login_queue: crate::limits::Pending,
    /// Console logins: failures per user name and per address.
    pub(crate) user_login_by_name: crate::limits::Throttle,
    pub(crate) user_login_by_addr: crate::limits::Throttle,
    /// Console logins waiting for argon2 (apart from the devices' queue).
    pub(crate) user_login_queue: crate::limits::Pending,
    pub(crate) feed: broadcast::Sender<Event>,
    /// The cluster's bus, once joined ([`Cloud::join_bus`]).
    pub(crate) bus: std::sync::OnceLock<async_nats::Client>,
    /// Which node holds which device (see [`crate::bus::Holders`]).
    pub(crate) holders: crate::bus::Holders,
    /// What requests relayed between nodes are signed with (from the admin
    /// token, see `bus`).
    pub(crate) relay_key: [u8; 32],
    pub(crate) next_session: AtomicU64,
    pub(crate) passwords: Passwords,
    pub(crate) counters: Counters,
    pub(crate) started: Instant,
    /// API tokens and console logins verified lately (see `trust`).
    pub(crate) verified: crate::trust::Verified,
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
            uploads: crate::limits::UploadUrls::new(
                cfg.device_limits.max_upload_urls,
                cfg.device_limits.upload_url_ttl,
            ),
            gate: crate::listen::Gate::new(&cfg.limits),
            stopping: Mutex::default(),
            login_by_code: crate::limits::Throttle::new(10, Duration::from_secs(60), 100_000),
            login_by_addr: crate::limits::Throttle::new(30, Duration::from_secs(60), 100_000),
            login_queue: crate::limits::Pending::new(32, 1024),
            user_login_by_name: crate::limits::Throttle::new(10, Duration::from_secs(60), 100_000),
            user_login_by_addr: crate::limits::Throttle::new(30, Duration::from_secs(60), 100_000),
            user_login_queue: crate::limits::Pending::new(8, 64),
            feed: broadcast::channel(1024).0,
            bus: std::sync::OnceLock::new(),
            holders: crate::bus::Holders::default(),
            relay_key: crate::bus::relay_key(&cfg.admin_token),
            next_session: AtomicU64::new(1),
            passwords: Passwords::new(cfg.hash_cost),
            counters: Counters::default(),
            started: Instant::now(),
            verified: Default::default(),
            lives: crate::live::Lives::new(cfg.live.clone()),
            recorder: Default::default(),
            keeper: Default::default(),
            cfg,
        })
    }

    /// Provisions a device: its password hashed (argon2id at the configured
    /// cost), then stored.
    pub async fn provision(&self, login_code: &str, login_passwd: &str, name: &str) -> Result<Device, ProvisionError> {
        crate::limits::check_login_code(login_code).map_err(|e| ProvisionError::Invalid(e.to_string()))?;
        let n = login_passwd.chars().count();
        if !(8..=256).contains(&n) {
            return Err(ProvisionError::Invalid(format!("login_passwd: 8 to 256 characters (this one has {n})")));
        }
        if name.chars().count() > 256 || !crate::limits::plain_label(name, usize::MAX) {
            return Err(ProvisionError::Invalid("name: at most 256 characters, no control or bidi characters".into()));
        }
        let hash = self.passwords.hash(login_passwd).await?;
        Ok(self.store.create_device(login_code, &hash, name, now()).await?)
    }

    /// Whether a login is right (argon2, bounded, remembered). An unknown
    /// login_code costs what a wrong password costs.
    pub async fn check_login(&self, login_code: &str, login_passwd: &str) -> Result<bool, LoginCheckError> {
        let stored = self.store.password_hash(login_code).await?;
        Ok(match stored {
            Some(h) => {
                let (ok, fresh) = self.passwords.verify_fresh(login_code, login_passwd, &h).await?;
                if let Some(memo) = fresh {
                    self.bus_memo(login_code, memo).await;
                }
                ok
            }
            None => self.passwords.verify_unknown(login_passwd).await?,
        })
    }

    /// A device's login from `peer`: throttled per address and per
    /// login_code (failures only count), queued fairly, refusals logged.
    pub(crate) async fn login(&self, login_code: &str, login_passwd: &str, peer: std::net::IpAddr) -> Login {
        let addr = peer.to_string();
        let throttled = match self.login_by_addr.check(&addr) {
            Err(d) => Some((d, "this address")),
            Ok(()) => self.login_by_code.check(login_code).err().map(|d| (d, "this login_code")),
        };
        if let Some((d, what)) = throttled {
            self.counters.logins_throttled.fetch_add(1, Ordering::Relaxed);
            return Login::Throttled(d, what);
        }
        // A login verified with argon2 before (on this node or, in a
        // cluster, another: the memos) costs a database read and a keyed
        // hash, so it does not wait for a place among the argon2 work: a
        // fleet behind one address (a NAT) that fails over from a dead node
        // is not let in 32 at a time. Only devices with a memo get here
        // before the queue; anything else, and a wrong password, queues.
        if self.passwords.has_memo(login_code) {
            if let Ok(Some(stored)) = self.store.password_hash(login_code).await {
                if self.passwords.remembered(login_code, login_passwd, &stored) {
                    return Login::Ok;
                }
            }
        }
        let queued = match self.login_queue.enter(peer) {
            Ok(g) => g,
            Err(why) => {
                self.counters.logins_throttled.fetch_add(1, Ordering::Relaxed);
                return Login::Busy(why);
            }
        };
        let r = self.check_login(login_code, login_passwd).await;
        drop(queued);
        match r {
            Ok(true) => Login::Ok,
            Ok(false) => {
                self.counters.logins_refused.fetch_add(1, Ordering::Relaxed);
                let by_addr = self.login_by_addr.fail(&addr);
                let by_code = self.login_by_code.fail(login_code);
                let shown = crate::limits::shown(login_code);
                if by_addr == 1 || by_code == 1 {
                    tracing::warn!(%peer, login_code = %shown, "cloud: login refused (wrong login_code or login_passwd)");
                }
                if by_addr == self.login_by_addr.limit() {
                    tracing::warn!(%peer, failures = by_addr, "cloud: logins from this address refused for 60 s (too many failures)");
                }
                if by_code == self.login_by_code.limit() {
                    tracing::warn!(%peer, login_code = %shown, failures = by_code, "cloud: logins with this login_code refused for 60 s (too many failures)");
                }
                Login::Wrong
            }
            Err(e) => Login::Failed(e.to_string()),
        }
    }

    /// Event retention: older than `events_max_age_days`, or past
    /// `events_max_rows`, deleted (housekeeping).
    pub async fn sweep_events(&self) {
        let age = self.cfg.events_max_age_days;
        let before = (age > 0).then(|| now() - i64::from(age) * 86_400);
        match self.store.trim_events(before, self.cfg.events_max_rows).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "cloud: event retention deleted events"),
            Err(e) => tracing::error!(error = %e, "cloud: event retention failed"),
        }
        match self.store.expire_credentials(now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(forgotten = n, "cloud: expired console logins and API tokens forgotten"),
            Err(e) => tracing::error!(error = %e, "cloud: forgetting expired logins failed"),
        }
    }

    /// Connections open now and the cap.
    pub fn connections(&self) -> (usize, usize) {
        (self.gate.open(), self.gate.max())
    }

    /// How long a connection may be silent: the configured idle timeout,
    /// but never under four Keepalive intervals (devices are quiet between).
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.cfg.limits.idle_timeout.max(self.cfg.keepalive * 4)
    }

    /// Marks every device offline that the store still has online: run at
    /// start, when no session can exist yet (the last run may have been
    /// killed). Each gets an `offline` event saying so.
    pub async fn reset_sessions(&self) -> Result<usize, StoreError> {
        self.all_offline("the cloud restarted; its last run ended without closing this session").await
    }

    /// Closes every device session, recording `reason` for each, and waits
    /// (up to `wait`) until they are all closed and marked offline.
    pub async fn shutdown(&self, reason: &str, wait: Duration) {
        *self.stopping.lock().expect("stopping lock") = Some(reason.to_owned());
        let handles: Vec<RpcHandle> =
            self.sessions.lock().expect("sessions lock").values().map(|s| s.handle.clone()).collect();
        for h in handles {
            tokio::spawn(async move { h.close().await });
        }
        let deadline = Instant::now() + wait;
        while self.sessions() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Sessions that did not close in time: offline in the store anyway.
        if let Err(e) = self.all_offline(reason).await {
            tracing::error!(error = %e, "cloud: devices not marked offline at shutdown");
        }
    }

    /// Every device the store has online set offline, with an `offline`
    /// event giving `reason`; how many.
    async fn all_offline(&self, reason: &str) -> Result<usize, StoreError> {
        let stale = self.store.all_offline(now(), &self.cfg.node_id).await?;
        for lc in &stale {
            self.event(lc, None, "offline", json!({ "reason": reason })).await;
        }
        Ok(stale.len())
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

    pub(crate) async fn event(&self, login_code: &str, channel: Option<u32>, kind: &str, data: Value) -> Option<Event> {
        match self.store.add_event(login_code, channel, kind, &data, now()).await {
            Ok(e) => {
                let _ = self.feed.send(e.clone());
                self.bus_event(&e).await;
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
        // One clock read for the whole scan, not one a session (a node
        // scans its ~20,000 sessions every second).
        let now = Instant::now();
        let stale: Vec<RpcHandle> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_keepalive) > limit)
            .map(|(lc, s)| {
                tracing::info!(login_code = %crate::limits::shown(lc), "cloud: no Keepalive for three intervals; closing");
                s.handle.clone()
            })
            .collect();
        self.counters.expired.fetch_add(stale.len() as u64, Ordering::Relaxed);
        for h in stale {
            tokio::spawn(async move { h.close().await });
        }
    }

    /// A deleted device: its remembered password checks forgotten, its
    /// session closed.
    pub(crate) async fn forget_device(&self, login_code: &str) {
        self.passwords.forget(login_code);
        self.uploads.forget(login_code);
        if let Some(h) = self.handle_of(login_code) {
            h.close().await;
        }
    }

    pub(crate) fn handle_of(&self, login_code: &str) -> Option<RpcHandle> {
        self.sessions.lock().expect("sessions lock").get(login_code).map(|s| s.handle.clone())
    }
}

/// Why a device was not provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] crate::auth::PasswordError),
}

/// Why a login could not be checked (a wrong one is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum LoginCheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] crate::auth::PasswordError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_login_verified_before_does_not_wait_behind_the_argon2_queue() {
        let dir = std::env::temp_dir().join(format!("ivr-login-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(crate::store::SqlStore::open(&dir).unwrap());
        let cfg = CloudConfig {
            hash_cost: "m=64,t=1,p=1".parse().unwrap(),
            ..CloudConfig::new("t".repeat(24), "http://127.0.0.1:1".into(), dir.clone())
        };
        let c = Cloud::new(store, cfg);
        c.provision("cam-1", "pw-123456", "one").await.unwrap();
        c.provision("cam-2", "pw-123456", "two").await.unwrap();
        let nat: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert!(matches!(c.login("cam-1", "pw-123456", nat).await, Login::Ok), "argon2, the first time");
        // Every place for this address taken by logins still checking.
        let held: Vec<_> = (0..32).map(|_| c.login_queue.enter(nat).unwrap()).collect();
        assert!(matches!(c.login("cam-1", "pw-123456", nat).await, Login::Ok), "remembered: no place needed");
        assert!(matches!(c.login("cam-2", "pw-123456", nat).await, Login::Busy(_)), "never verified: it queues");
        assert!(matches!(c.login("cam-1", "wrong-pass", nat).await, Login::Busy(_)), "a wrong password queues");
        drop(held);
        assert!(matches!(c.login("cam-1", "wrong-pass", nat).await, Login::Wrong));
        assert!(matches!(c.login("cam-2", "pw-123456", nat).await, Login::Ok));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
