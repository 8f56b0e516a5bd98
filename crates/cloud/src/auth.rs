//! Device passwords: argon2id hashes in the store, verified off the async
//! threads with bounded concurrency, and a memo of verified logins so a
//! reconnecting device does not pay argon2 again.
//!
//! Why the bound: each argon2 verification takes ~19 MiB and tens of
//! milliseconds. A reconnect storm (the cloud restarts and every device
//! dials at once) would otherwise start hundreds of blocking threads at
//! once and take gigabytes. With the bound, logins queue and finish at the
//! machine's argon2 rate.
//!
//! Why the memo is safe: it keeps, per login_code, a keyed BLAKE2b digest
//! of (stored hash, presented password), with a key that lives only in
//! this process. It answers only "this exact password was verified against
//! this exact stored hash"; a changed password has a new hash (new salt)
//! and misses. A wrong password always pays the full argon2 cost. Nothing
//! weaker than argon2 is ever written to disk.
//!
//! In a cluster the nodes share the memo's key (derived from the admin
//! token they share, [`Passwords::share_key`]) and hand each other every
//! memo they make over the bus, never through the database: a device that
//! fails over to another node logs in without argon2 there, and a leaked
//! database still holds nothing but argon2 hashes (`docs/design/scale.md`).

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2b512, Digest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// argon2id cost for new hashes, as `m=<KiB>,t=<passes>,p=<lanes>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashCost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for HashCost {
    /// OWASP's first recommendation for argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        HashCost { m_kib: 19 * 1024, t: 2, p: 1 }
    }
}

impl std::str::FromStr for HashCost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = HashCost::default();
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected key=value (m=, t= or p=)"))?;
            let v: u32 = v.trim().parse().map_err(|_| format!("{part:?}: {v:?} is not a number"))?;
            match k.trim() {
                "m" => c.m_kib = v,
                "t" => c.t = v,
                "p" => c.p = v,
                other => return Err(format!("{other:?}: unknown argon2 parameter (m=, t= or p=)")),
            }
        }
        Params::new(c.m_kib, c.t, c.p, None).map_err(|e| format!("{s:?}: {e} (m is in KiB, at least 8×p)"))?;
        Ok(c)
    }
}

impl std::fmt::Display for HashCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m={},t={},p={}", self.m_kib, self.t, self.p)
    }
}

/// Why a password could not be hashed or checked (never "wrong password":
/// that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing a password: {0}")]
    Hash(String),
    #[error("the stored hash of {login_code:?} is unreadable: {reason}")]
    StoredHash { login_code: String, reason: String },
    #[error("the password worker failed: {0}")]
    Worker(String),
}

/// Hashes and verifies device passwords.
pub struct Passwords {
    cost: HashCost,
    permits: Arc<Semaphore>,
    key: std::sync::RwLock<[u8; 32]>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// A hash at the configured cost that no password matches: unknown
    /// login codes are verified against it, so they cost what a wrong
    /// password costs (no enumeration by timing).
    dummy: tokio::sync::OnceCell<String>,
}

impl Passwords {
    pub fn new(cost: HashCost) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let lanes = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Passwords {
            cost,
            permits: Arc::new(Semaphore::new(lanes)),
            key: std::sync::RwLock::new(key),
            verified: Mutex::default(),
            dummy: tokio::sync::OnceCell::new(),
        }
    }

    fn argon2(cost: HashCost) -> Argon2<'static> {
        let params = Params::new(cost.m_kib, cost.t, cost.p, None).expect("checked when parsed");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A new PHC hash string of `password` at the configured cost.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let _permit = self.permits.clone().acquire_owned().await.map_err(|e| PasswordError::Worker(e.to_string()))?;
        let (cost, pw) = (self.cost, password.to_owned());
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Passwords::argon2(cost)
                .hash_password(pw.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Hash(e.to_string()))
        })
        .await
        .map_err(|e| PasswordError::Worker(e.to_string()))?
    }

    /// Uses a key every node of a cluster derives from `secret` (the admin
    /// token they share), so their memos agree; memos made before are
    /// forgotten.
    pub fn share_key(&self, secret: &str) {
        let k = digest32(&[b"ivr cluster login memo\0", secret.as_bytes()]);
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = k;
        self.verified.lock().expect("memo lock").clear();
    }

    /// Takes a memo another node made (see [`Passwords::verify_fresh`]).
    pub fn remember(&self, login_code: &str, memo: [u8; 32]) {
        let mut v = self.verified.lock().expect("memo lock");
        // Bounded like the sessions it serves: a flood of memos from the
        // bus cannot grow it past a million devices.
        if v.len() < 1_000_000 || v.contains_key(login_code) {
            v.insert(login_code.to_owned(), memo);
        }
    }

    fn memo_key(&self, stored: &str, password: &str) -> [u8; 32] {
        let key = *self.key.read().unwrap_or_else(|p| p.into_inner());
        digest32(&[&key, &(stored.len() as u64).to_le_bytes(), stored.as_bytes(), password.as_bytes()])
    }

    /// Whether a login of `login_code` was verified with argon2 before
    /// (on this node or, in a cluster, another).
    pub fn has_memo(&self, login_code: &str) -> bool {
        self.verified.lock().expect("memo lock").contains_key(login_code)
    }

    /// Whether `password` is the one verified before for `login_code`
    /// against `stored`: a keyed hash, no argon2.
    pub fn remembered(&self, login_code: &str, password: &str, stored: &str) -> bool {
        let memo = self.memo_key(stored, password);
        self.verified.lock().expect("memo lock").get(login_code).is_some_and(|m| constant_eq(m, &memo))
    }

    /// Whether `password` matches `stored` (a PHC string; its own
    /// parameters are used). `Err` when the stored hash is unreadable.
    pub async fn verify(&self, login_code: &str, password: &str, stored: &str) -> Result<bool, PasswordError> {
        Ok(self.verify_fresh(login_code, password, stored).await?.0)
    }

    /// As [`Passwords::verify`], and the memo when argon2 just made one
    /// (for the other nodes of a cluster).
    pub async fn verify_fresh(
        &self,
        login_code: &str,
        password: &str,
        stored: &str,
    ) -> Result<(bool, Option<[u8; 32]>), PasswordError> {
        if self.remembered(login_code, password, stored) {
            return Ok((true, None));
        }
        let ok = self.argon2_verify(login_code, password, stored).await?;
        let memo = ok.then(|| self.memo_key(stored, password));
        if let Some(m) = memo {
            self.verified.lock().expect("memo lock").insert(login_code.to_owned(), m);
        }
        Ok((ok, memo))
    }

    /// argon2 verification, off the async threads, at most one per core.
    async fn argon2_verify(&self, login_code: &str, password: &str, stored: &str) -> Result<bool, PasswordError> {
        let _permit = self.permits.clone().acquire_owned().await.map_err(|e| PasswordError::Worker(e.to_string()))?;
        let (pw, st, lc) = (password.to_owned(), stored.to_owned(), login_code.to_owned());
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&st)
                .map_err(|e| PasswordError::StoredHash { login_code: lc, reason: e.to_string() })?;
            Ok(Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| PasswordError::Worker(e.to_string()))?
    }

    /// A login code that does not exist: always false, after the work a
    /// wrong password of a real device takes.
    pub async fn verify_unknown(&self, password: &str) -> Result<bool, PasswordError> {
        let dummy = self.dummy.get_or_try_init(|| self.hash("ivr: this device does not exist")).await?;
        self.argon2_verify("(unknown)", password, dummy).await.map(|_| false)
    }

    /// Forgets a device (deleted).
    pub fn forget(&self, login_code: &str) {
        self.verified.lock().expect("memo lock").remove(login_code);
    }
}

/// BLAKE2b over `parts` in turn, its first 32 bytes: the keys, memos and
/// MACs of a cluster (keyed by prefix; BLAKE2 has no length extension).
pub(crate) fn digest32(parts: &[&[u8]]) -> [u8; 32] {
    let d = parts.iter().fold(Blake2b512::new(), |h, p| h.chain_update(p)).finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&d[..32]);
    out
}

pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_parses_and_names_what_is_wrong() {
        assert_eq!("m=64,t=1,p=1".parse::<HashCost>().unwrap(), HashCost { m_kib: 64, t: 1, p: 1 });
        assert_eq!("t=3".parse::<HashCost>().unwrap(), HashCost { m_kib: 19456, t: 3, p: 1 });
        assert!("m=lots".parse::<HashCost>().unwrap_err().contains("not a number"));
        assert!("q=1".parse::<HashCost>().unwrap_err().contains("unknown argon2 parameter"));
        assert!("m=1,p=1".parse::<HashCost>().unwrap_err().contains("at least 8"));
        assert_eq!(HashCost::default().to_string(), "m=19456,t=2,p=1");
    }

    #[tokio::test]
    async fn verifies_remembers_and_refuses() {
        let p = Passwords::new("m=64,t=1,p=1".parse().unwrap());
        let h = p.hash("s3cret-pw").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(p.verify("a", "s3cret-pw", &h).await.unwrap());
        assert!(p.verified.lock().unwrap().contains_key("a"));
        assert!(p.verify("a", "s3cret-pw", &h).await.unwrap(), "from the memo");
        assert!(!p.verify("a", "S3cret-pw", &h).await.unwrap());
        // A new password (new hash) does not match the memo of the old one.
        let h2 = p.hash("other-pw").await.unwrap();
        assert!(!p.verify("a", "s3cret-pw", &h2).await.unwrap());
        assert!(p.verify("a", "other-pw", &h2).await.unwrap());
        p.forget("a");
        assert!(p.verified.lock().unwrap().is_empty());
        // Two nodes with one shared key: a memo one made works on the other.
        let (n1, n2) =
            (Passwords::new("m=64,t=1,p=1".parse().unwrap()), Passwords::new("m=64,t=1,p=1".parse().unwrap()));
        n1.share_key("cluster-token");
        n2.share_key("cluster-token");
        let (ok, memo) = n1.verify_fresh("a", "other-pw", &h2).await.unwrap();
        assert!(ok);
        n2.remember("a", memo.unwrap());
        assert_eq!(n2.verify_fresh("a", "other-pw", &h2).await.unwrap(), (true, None), "no argon2 on n2");
        assert_eq!(n2.verify_fresh("a", "wrong", &h2).await.unwrap(), (false, None));
        let n3 = Passwords::new("m=64,t=1,p=1".parse().unwrap());
        n3.remember("a", memo.unwrap());
        assert!(n3.verify_fresh("a", "other-pw", &h2).await.unwrap().1.is_some(), "another key: argon2 again");
        let e = p.verify("a", "x", "not a hash").await.unwrap_err().to_string();
        assert!(e.starts_with("the stored hash of \"a\" is unreadable"), "{e}");
    }
}
