//! Credentials a node has verified lately. An API token or a console
//! login is looked up in the store (token or session, the user, the
//! groups behind its scope); the answer is trusted for [`TRUST`] after the
//! read began, so a script calling thousands of times a second costs the
//! store one read a second per node instead of one per call (a quarter
//! of a cross-node RPC's cost, see BENCHMARKS).
//!
//! What keeps "revoked at once" true:
//! - A change to accounts through the API clears this node's copies
//!   before it answers ([`Verified::forget_all`]), and where other nodes
//!   share the store it answers only once [`TRUST`] has passed, by which
//!   time every node's copy read before the change has run out. No bus
//!   message is needed, so a node cut from NATS is no exception.
//! - A read that began before a clear is never kept (the generation it
//!   began under is gone), so a copy can never outlive the change it
//!   missed by more than [`TRUST`].
//! - `ivr cloud users` writing to the database directly reaches a running
//!   node within [`TRUST`].
//!
//! Only credentials that verified are kept (a wrong one reads the store
//! every time, as before), at most [`MAX`] of them.

use crate::access::Caller;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a verified credential is trusted without asking the store.
pub(crate) const TRUST: Duration = Duration::from_secs(1);
/// Credentials of each kind kept at most (in use at once).
const MAX: usize = 10_000;

/// Which kind of credential a digest is of.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Token,
    Login,
}

struct Copy {
    caller: Caller,
    /// Unix seconds after which the credential is refused, whatever the copy.
    expires: Option<i64>,
    read_at: Instant,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    tokens: HashMap<String, Copy>,
    logins: HashMap<String, Copy>,
}

impl Inner {
    fn of(&mut self, kind: Kind) -> &mut HashMap<String, Copy> {
        match kind {
            Kind::Token => &mut self.tokens,
            Kind::Login => &mut self.logins,
        }
    }
}

/// What a node remembers of credentials it verified.
pub(crate) struct Verified {
    trust: Duration,
    inner: Mutex<Inner>,
    /// Credentials answered from a copy, and read from the store.
    pub(crate) from_copy: AtomicU64,
    pub(crate) read: AtomicU64,
}

/// Taken before a store read: the copy is kept only if nothing was
/// cleared since.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    generation: u64,
    at: Instant,
}

impl Default for Verified {
    fn default() -> Self {
        Verified::new(TRUST)
    }
}

impl Verified {
    pub(crate) fn new(trust: Duration) -> Verified {
        Verified { trust, inner: Mutex::default(), from_copy: AtomicU64::new(0), read: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller of a credential verified less than the trust ago and not
    /// expired at `now` (Unix seconds).
    pub(crate) fn get(&self, kind: Kind, digest: &str, now: i64) -> Option<Caller> {
        let mut inner = self.lock();
        let c = inner.of(kind).get(digest)?;
        let fresh = c.read_at.elapsed() < self.trust && c.expires.is_none_or(|e| e >= now);
        let out = fresh.then(|| c.caller.clone());
        if out.is_some() {
            self.from_copy.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Taken before reading the store for a credential.
    pub(crate) fn ticket(&self) -> Ticket {
        self.read.fetch_add(1, Ordering::Relaxed);
        Ticket { generation: self.lock().generation, at: Instant::now() }
    }

    /// Keeps what a read begun at `ticket` found, unless the accounts were
    /// changed since it began.
    pub(crate) fn put(&self, t: Ticket, kind: Kind, digest: &str, caller: &Caller, expires: Option<i64>) {
        let mut inner = self.lock();
        if inner.generation != t.generation {
            return;
        }
        let trust = self.trust;
        let map = inner.of(kind);
        if map.len() >= MAX {
            map.retain(|_, c| c.read_at.elapsed() < trust);
            if map.len() >= MAX {
                map.clear();
            }
        }
        let caller = Caller { addr: None, ..caller.clone() };
        map.insert(digest.to_owned(), Copy { caller, expires, read_at: t.at });
    }

    /// Forgets the copy of one credential (the store no longer has it).
    pub(crate) fn forget(&self, kind: Kind, digest: &str) {
        self.lock().of(kind).remove(digest);
    }

    /// Forgets every copy, and any read begun before now.
    pub(crate) fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.tokens.clear();
        inner.logins.clear();
    }

    pub(crate) fn len(&self) -> usize {
        let inner = self.lock();
        inner.tokens.len() + inner.logins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Scope;
    use crate::accounts::Role;

    fn caller(actor: &str) -> Caller {
        Caller {
            actor: actor.into(),
            role: Role::Operator,
            scope: Scope::All,
            addr: Some([10, 0, 0, 1].into()),
            user: None,
            session: None,
            token: Some("d".into()),
        }
    }

    #[test]
    fn a_verified_credential_is_trusted_for_a_while_then_read_again() {
        let v = Verified::new(Duration::from_millis(50));
        assert!(v.get(Kind::Token, "d", 0).is_none());
        v.put(v.ticket(), Kind::Token, "d", &caller("token:a"), None);
        let c = v.get(Kind::Token, "d", 0).expect("kept");
        assert_eq!(c.actor, "token:a");
        assert_eq!(c.addr, None, "the address is the request's, not the copy's");
        assert!(v.get(Kind::Login, "d", 0).is_none(), "a login is not a token");
        std::thread::sleep(Duration::from_millis(60));
        assert!(v.get(Kind::Token, "d", 0).is_none(), "trusted no longer than the trust");
    }

    #[test]
    fn an_expired_credential_is_not_trusted_from_a_copy() {
        let v = Verified::default();
        v.put(v.ticket(), Kind::Login, "d", &caller("user:a"), Some(100));
        assert!(v.get(Kind::Login, "d", 100).is_some());
        assert!(v.get(Kind::Login, "d", 101).is_none());
    }

    #[test]
    fn a_read_begun_before_a_change_is_not_kept() {
        let v = Verified::default();
        v.put(v.ticket(), Kind::Token, "old", &caller("token:old"), None);
        let t = v.ticket();
        // The accounts change while the read is under way.
        v.forget_all();
        assert!(v.get(Kind::Token, "old", 0).is_none(), "cleared");
        v.put(t, Kind::Token, "d", &caller("token:a"), None);
        assert!(v.get(Kind::Token, "d", 0).is_none(), "what the read found may be what was just revoked");
        v.put(v.ticket(), Kind::Token, "d", &caller("token:a"), None);
        assert!(v.get(Kind::Token, "d", 0).is_some());
    }

    #[test]
    fn copies_are_bounded() {
        let v = Verified::default();
        for i in 0..MAX + 10 {
            v.put(v.ticket(), Kind::Token, &i.to_string(), &caller("t"), None);
        }
        assert!(v.len() <= MAX, "{}", v.len());
    }
}
