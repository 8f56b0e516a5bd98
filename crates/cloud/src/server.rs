//! The cloud itself: its configuration, the device sessions, the store and
//! the event feed. The HTTP side is in `api` (the JSON API and the router),
//! `gateway` (devices at `/ivc`), `live`, `recordings`, `policy`, `uploads`
//! and `listen`.

use crate::auth::{HashCost, Passwords};
use crate::store::{Device, Event, Store, StoreError};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use ivr_rpc::conn::RpcHandle;
use serde_json::Value;
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
pub(crate) struct Counters {
    pub(crate) logins: AtomicU64,
    pub(crate) logins_refused: AtomicU64,
    pub(crate) replaced: AtomicU64,
    pub(crate) closed_by_rule: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) rpc_calls: AtomicU64,
}

pub(crate) struct SessionEntry {
    pub(crate) id: u64,
    pub(crate) handle: RpcHandle,
    pub(crate) last_keepalive: Instant,
}

pub(crate) enum Upload {
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
    pub(crate) sessions: Mutex<HashMap<String, SessionEntry>>,
    pub(crate) uploads: Mutex<HashMap<String, Upload>>,
    feed: broadcast::Sender<Event>,
    pub(crate) next_session: AtomicU64,
    passwords: Passwords,
    pub(crate) counters: Counters,
    pub(crate) started: Instant,
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

    /// A one-time upload URL's target, taken (it works once).
    pub(crate) fn take_upload(&self, token: &str) -> Option<Upload> {
        self.uploads.lock().expect("uploads lock").remove(token)
    }

    /// A deleted device: its remembered password checks forgotten, its
    /// session closed.
    pub(crate) async fn forget_device(&self, login_code: &str) {
        self.passwords.forget(login_code);
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
}
