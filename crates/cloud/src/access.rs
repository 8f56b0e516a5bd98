//! Who is calling, and what they may do. Every API handler takes a
//! [`Caller`]: the admin token (the bootstrap and automation credential),
//! an API token (`Authorization: Bearer ivr_…`), or a console login (the
//! `ivr_session` cookie). A caller sees the devices granted to them (by
//! name or through a group); any other device is *not found* to them, not
//! forbidden, so rights do not reveal which devices exist. Viewers watch;
//! operators also control; admins do everything.
//!
//! Cookies are SameSite=Strict, and a cookie-authenticated request that
//! changes state must also carry an `Origin` (or `Sec-Fetch-Site`) of this
//! site: two defences against cross-site request forgery.

use crate::accounts::{Grant, Role};
use crate::error::{ApiError, ApiResult};
use crate::server::{now, Cloud};
use crate::store::Store;
use crate::trust::Kind;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The console's login cookie.
pub(crate) const COOKIE: &str = "ivr_session";
/// API tokens start with this, so a leaked one is easy to search for.
pub(crate) const TOKEN_PREFIX: &str = "ivr_";

/// Which devices a caller sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Only(BTreeSet<String>),
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// For the audit log: `admin-token`, `user:<name>`, `token:<id>`.
    pub(crate) actor: String,
    pub(crate) role: Role,
    pub(crate) scope: Scope,
    pub(crate) addr: Option<IpAddr>,
    /// The console user, when logged in with a cookie.
    pub(crate) user: Option<String>,
    /// The SHA-256 of the login cookie (to log out).
    pub(crate) session: Option<String>,
    /// The SHA-256 of the API token.
    pub(crate) token: Option<String>,
}

impl Caller {
    pub(crate) fn may_see(&self, lc: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Only(s) => s.contains(lc),
        }
    }

    /// `Ok` when the caller sees `lc`; 404 otherwise, the same answer as
    /// for a device that does not exist.
    pub(crate) fn see(&self, lc: &str) -> ApiResult<()> {
        if self.may_see(lc) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!("no device {:?}", crate::limits::shown(lc))))
        }
    }

    /// `Ok` when the caller may control `lc` (operator or admin).
    pub(crate) fn control(&self, lc: &str) -> ApiResult<()> {
        self.see(lc)?;
        if self.role < Role::Operator {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "viewers may watch, not control (an operator may)"));
        }
        Ok(())
    }

    pub(crate) fn admin(&self) -> ApiResult<()> {
        if self.role < Role::Admin {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "only an admin may do this"));
        }
        Ok(())
    }

    /// The devices the caller sees; `None` for every device.
    pub(crate) fn visible(&self) -> Option<Vec<String>> {
        match &self.scope {
            Scope::All => None,
            Scope::Only(s) => Some(s.iter().cloned().collect()),
        }
    }
}

/// The SHA-256 of a secret, in hex (what the store keeps of tokens and
/// login cookies).
pub(crate) fn digest(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// 256 random bits in hex.
pub(crate) fn secret() -> String {
    format!("{}{}", crate::server::token(), crate::server::token())
}

fn cookie_value<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a state-changing request with a cookie came from a page of
/// this site: its `Origin` names the host it was sent to, or (for
/// browsers that leave `Origin` out) `Sec-Fetch-Site` says same-origin.
fn same_site(parts: &Parts) -> bool {
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let host = header("host").or_else(|| parts.uri.authority().map(|a| a.as_str()));
    match (header("origin"), host) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).is_some_and(|o| o == host)
        }
        (Some(_), None) => false,
        (None, _) => header("sec-fetch-site") == Some("same-origin"),
    }
}

impl<S: Store> Cloud<S> {
    /// The devices a role and its grants reach (groups resolved now, so
    /// a device added to a group is visible at once).
    pub(crate) async fn scope_of(&self, role: Role, devices: &Grant, groups: &[String]) -> ApiResult<Scope> {
        if role == Role::Admin || *devices == Grant::All {
            return Ok(Scope::All);
        }
        let mut set = BTreeSet::new();
        if let Grant::Only(v) = devices {
            set.extend(v.iter().cloned());
        }
        for g in groups {
            if let Some(members) = self.store.group(g).await? {
                set.extend(members);
            }
        }
        Ok(Scope::Only(set))
    }

    async fn caller_of(&self, parts: &Parts) -> ApiResult<Caller> {
        // Authenticated by the node that relayed it (see `bus`).
        if let Some(crate::bus::Relayed(who)) = parts.extensions.get() {
            return Ok(who.clone());
        }
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let bearer =
            parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if let Some(given) = bearer {
            if crate::auth::constant_eq(given.as_bytes(), self.cfg.admin_token.as_bytes()) {
                return Ok(Caller {
                    actor: "admin-token".into(),
                    role: Role::Admin,
                    scope: Scope::All,
                    addr,
                    user: None,
                    session: None,
                    token: None,
                });
            }
            if given.starts_with(TOKEN_PREFIX) {
                return self.token_caller(&digest(given), addr).await;
            }
            return Err(ApiError::unauthorized("wrong admin token"));
        }
        if let Some(cookie) = cookie_value(parts, COOKIE) {
            let who = self.session_caller(&digest(cookie), addr).await?;
            if !matches!(parts.method, Method::GET | Method::HEAD) && !same_site(parts) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "a cross-site request with the login cookie was refused (no Origin of this site)",
                ));
            }
            return Ok(who);
        }
        Err(ApiError::unauthorized("log in, or send Authorization: Bearer <admin or API token>"))
    }

    /// The caller of an API token (by its SHA-256), as the store says (a
    /// copy verified within [`crate::trust::TRUST`], or read now).
    async fn token_caller(&self, hash: &str, addr: Option<IpAddr>) -> ApiResult<Caller> {
        if let Some(who) = self.verified.get(Kind::Token, hash, now()) {
            return Ok(Caller { addr, ..who });
        }
        let ticket = self.verified.ticket();
        let Some(t) = self.store.token_by_hash(hash).await? else {
            self.verified.forget(Kind::Token, hash);
            return Err(ApiError::unauthorized("unknown or revoked API token"));
        };
        if t.expires.is_some_and(|e| e < now()) {
            self.verified.forget(Kind::Token, hash);
            return Err(ApiError::unauthorized(format!("API token {} expired", t.id)));
        }
        let who = Caller {
            actor: format!("token:{}", t.id),
            scope: self.scope_of(t.role, &t.devices, &t.groups).await?,
            role: t.role,
            addr,
            user: None,
            session: None,
            token: Some(hash.to_owned()),
        };
        self.verified.put(ticket, Kind::Token, hash, &who, t.expires);
        Ok(who)
    }

    /// The caller of a console login (by its cookie's SHA-256), as the
    /// store says (a copy verified within [`crate::trust::TRUST`], or read
    /// now).
    async fn session_caller(&self, hash: &str, addr: Option<IpAddr>) -> ApiResult<Caller> {
        if let Some(who) = self.verified.get(Kind::Login, hash, now()) {
            return Ok(Caller { addr, ..who });
        }
        let ticket = self.verified.ticket();
        let s = self.store.login_session(hash).await?.filter(|s| s.expires >= now());
        let (u, expires) = match s {
            Some(s) => (self.store.user(&s.user).await?, s.expires),
            None => (None, 0),
        };
        let Some(u) = u else {
            self.verified.forget(Kind::Login, hash);
            return Err(ApiError::unauthorized("your login has ended; log in again"));
        };
        let who = Caller {
            actor: format!("user:{}", u.name),
            scope: self.scope_of(u.role, &u.devices, &u.groups).await?,
            role: u.role,
            addr,
            user: Some(u.name),
            session: Some(hash.to_owned()),
            token: None,
        };
        self.verified.put(ticket, Kind::Login, hash, &who, Some(expires));
        Ok(who)
    }

    /// After a change to accounts (a token revoked, a user changed or
    /// deleted, a group changed, a logout): this node forgets what it
    /// verified, and where other nodes share the store, the answer waits
    /// until their copies from before the change have run out (see
    /// `trust`), so that what was revoked is refused everywhere once the
    /// change has answered.
    pub(crate) async fn accounts_changed(&self) {
        self.verified.forget_all();
        if self.store.shared() {
            tokio::time::sleep(crate::trust::TRUST).await;
        }
    }

    /// The caller again, as the store says now (or said within
    /// [`crate::trust::TRUST`]): a long-lived response (the event stream)
    /// asks this every few seconds, so a logout, a revoked token or a
    /// changed grant reaches it too. The admin token stays
    /// valid while the cloud runs.
    pub(crate) async fn refresh(&self, who: &Caller) -> ApiResult<Caller> {
        match (&who.session, &who.token) {
            (Some(h), _) => self.session_caller(h, who.addr).await,
            (None, Some(h)) => self.token_caller(h, who.addr).await,
            (None, None) => Ok(who.clone()),
        }
    }

    /// Writes one line of the audit log (a failure to write is logged,
    /// never the reason a request fails after its work is done).
    pub(crate) async fn audit(&self, who: &Caller, action: &str, target: &str, detail: serde_json::Value) {
        self.audit_as(&who.actor, who.addr, action, target, detail).await;
    }

    pub(crate) async fn audit_as(
        &self,
        actor: &str,
        addr: Option<IpAddr>,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) {
        let e = crate::accounts::AuditEntry {
            id: 0,
            at: now(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail,
            addr: addr.map(|a| a.to_string()),
        };
        if let Err(err) = self.store.add_audit(&e).await {
            tracing::error!(%err, action, target, "cloud: the audit log could not be written");
        }
    }
}

impl<S: Store> FromRequestParts<Arc<Cloud<S>>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, c: &Arc<Cloud<S>>) -> Result<Caller, ApiError> {
        c.caller_of(parts).await
    }
}

/// A caller who is an admin (403 for anyone else).
pub(crate) struct Admin(pub(crate) Caller);

impl<S: Store> FromRequestParts<Arc<Cloud<S>>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, c: &Arc<Cloud<S>>) -> Result<Admin, ApiError> {
        let who = c.caller_of(parts).await?;
        who.admin()?;
        Ok(Admin(who))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder().method(method).uri("/api/v1/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn same_site_needs_an_origin_of_this_host() {
        let p = parts(Method::POST, &[("host", "cam.example:8080"), ("origin", "http://cam.example:8080")]);
        assert!(same_site(&p));
        let p = parts(Method::POST, &[("host", "cam.example:8080"), ("origin", "http://evil.example")]);
        assert!(!same_site(&p));
        let p = parts(Method::POST, &[("host", "cam.example:8080")]);
        assert!(!same_site(&p), "no Origin and no Sec-Fetch-Site");
        let p = parts(Method::POST, &[("host", "h"), ("sec-fetch-site", "same-origin")]);
        assert!(same_site(&p));
        let p = parts(Method::POST, &[("host", "h"), ("origin", "null")]);
        assert!(!same_site(&p));
    }

    #[test]
    fn digests_are_sha256_in_lowercase_hex() {
        assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let p = parts(Method::GET, &[("cookie", "a=1; ivr_session=abc; b=2")]);
        assert_eq!(cookie_value(&p, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&p, "c"), None);
    }

    #[test]
    fn scopes_hide_other_devices_as_not_found() {
        let c = Caller {
            actor: "user:v".into(),
            role: Role::Viewer,
            scope: Scope::Only(["cam-1".to_string()].into()),
            addr: None,
            user: Some("v".into()),
            session: None,
            token: None,
        };
        assert!(c.see("cam-1").is_ok());
        assert_eq!(c.see("cam-2").unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(c.control("cam-1").unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(c.control("cam-2").unwrap_err().status, StatusCode::NOT_FOUND, "not found comes first");
        assert_eq!(c.admin().unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(digest("a").len(), 64);
    }
}
