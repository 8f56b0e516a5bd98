//! People and programs: console login and logout, users, device groups,
//! API tokens and the audit log (`/api/v1/login`, `/logout`, `/me`,
//! `/users…`, `/groups…`, `/tokens…`, `/audit`).

use crate::access::{digest, secret, Admin, Caller, Scope, COOKIE, TOKEN_PREFIX};
use crate::accounts::{ApiToken, AuditEntry, Grant, LoginSession, Role, User};
use crate::error::{ApiError, ApiResult};
use crate::server::{now, Cloud};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The shortest password a user may have.
pub const MIN_PASSWORD: usize = 8;

/// A user or group name: 1–64 characters, no controls, no `/`.
pub(crate) fn check_name(what: &str, name: &str) -> ApiResult<()> {
    if name.is_empty() || !crate::limits::plain_label(name, 64) || name.contains('/') || name.trim() != name {
        return Err(ApiError::bad_request(format!(
            "{what} {:?}: 1 to 64 bytes, no control characters, no '/', no spaces at either end",
            crate::limits::shown(name)
        )));
    }
    Ok(())
}

pub(crate) fn check_password(p: &str) -> ApiResult<()> {
    if p.chars().count() < MIN_PASSWORD || p.len() > 1024 {
        return Err(ApiError::bad_request(format!("password: {MIN_PASSWORD} to 1024 characters")));
    }
    Ok(())
}

fn check_grants(devices: &Grant, groups: &[String]) -> ApiResult<()> {
    if let Grant::Only(v) = devices {
        for lc in v {
            crate::limits::check_login_code(lc).map_err(|e| ApiError::bad_request(format!("devices: {e}")))?;
        }
    }
    for g in groups {
        check_name("group", g)?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    name: String,
    password: String,
}

/// `POST /api/v1/login`: a console login cookie for a name and password.
/// Failures are throttled per name and per address, and audited.
pub(crate) async fn login<S: Store>(
    State(c): State<Arc<Cloud<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: LoginRequest =
        super::json_body(&body)?.ok_or_else(|| ApiError::bad_request("body: {\"name\", \"password\"} expected"))?;
    let addr = peer.ip().to_string();
    let name_key = crate::limits::shown(&req.name);
    for (t, key) in [(&c.user_login_by_name, &name_key), (&c.user_login_by_addr, &addr)] {
        if let Err(wait) = t.check(key) {
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed logins; try again in {} s", wait.as_secs() + 1),
            )
            .into_response();
            r.headers_mut().insert("retry-after", (wait.as_secs() + 1).into());
            return Ok(r);
        }
    }
    // At most 8 logins of one address (64 in all) wait for argon2 at once.
    let _slot = match c.user_login_queue.enter(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            r.headers_mut().insert("retry-after", 1.into());
            return Ok(r);
        }
    };
    let user = if req.name.len() <= 64 { c.store.user(&req.name).await? } else { None };
    let ok = match &user {
        Some(u) => c.passwords.verify(&format!("\0user:{}", u.name), &req.password, &u.passwd_hash).await,
        None => c.passwords.verify_unknown(&req.password).await,
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let Some(user) = user.filter(|_| ok) else {
        c.user_login_by_name.fail(&name_key);
        c.user_login_by_addr.fail(&addr);
        c.audit_as(&format!("user:{name_key}"), Some(peer.ip()), "login_failed", &name_key, json!({})).await;
        return Err(ApiError::unauthorized("wrong name or password"));
    };
    let cookie = secret();
    let expires = now() + c.cfg.session_ttl.as_secs() as i64;
    c.store.add_login_session(&LoginSession { hash: digest(&cookie), user: user.name.clone(), expires }).await?;
    c.audit_as(&format!("user:{}", user.name), Some(peer.ip()), "login", &user.name, json!({})).await;
    let secure = if c.cfg.public_url.starts_with("https://") { "; Secure" } else { "" };
    let set = format!(
        "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        c.cfg.session_ttl.as_secs()
    );
    let mut r = Json(json!({"name": user.name, "role": user.role, "expires": expires})).into_response();
    r.headers_mut().insert("set-cookie", HeaderValue::from_str(&set).map_err(|e| ApiError::internal(e.to_string()))?);
    Ok(r)
}

/// `POST /api/v1/logout`: ends this console login (the cookie stops
/// working at once, wherever a copy of it is).
pub(crate) async fn logout<S: Store>(who: Caller, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Response> {
    let Some(hash) = &who.session else {
        return Err(ApiError::bad_request(
            "logout ends a console login; tokens are revoked with DELETE /api/v1/tokens/{id}",
        ));
    };
    c.store.delete_login_session(hash).await?;
    c.accounts_changed().await;
    c.audit(&who, "logout", who.user.as_deref().unwrap_or(""), json!({})).await;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert("set-cookie", HeaderValue::from_static("ivr_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    Ok(r)
}

/// `GET /api/v1/me`: who the caller is and what they may do.
pub(crate) async fn me(who: Caller) -> Json<Value> {
    let devices = match &who.scope {
        Scope::All => json!("*"),
        Scope::Only(s) => json!(s),
    };
    Json(json!({"actor": who.actor, "name": who.user, "role": who.role, "devices": devices}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    name: String,
    password: String,
    role: Role,
    #[serde(default)]
    devices: Grant,
    #[serde(default)]
    groups: Vec<String>,
}

/// Creates a user (shared by the API and `ivr cloud users add`).
pub async fn create_user<S: Store>(
    store: &S,
    passwords: &crate::Passwords,
    name: &str,
    password: &str,
    role: Role,
    devices: Grant,
    groups: Vec<String>,
) -> ApiResult<User> {
    check_name("user", name)?;
    check_password(password)?;
    check_grants(&devices, &groups)?;
    let passwd_hash = passwords.hash(password).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let u = User { name: name.into(), passwd_hash, role, devices, groups, created_at: now() };
    store.create_user(&u).await?;
    Ok(u)
}

/// A random password people can type: 16 letters and digits (≈ 95 bits).
pub fn demo_password() -> String {
    const ABC: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 16];
    argon2::password_hash::rand_core::RngCore::fill_bytes(&mut argon2::password_hash::rand_core::OsRng, &mut b);
    b.iter().map(|x| ABC[*x as usize % ABC.len()] as char).collect()
}

/// `ivr demo`'s admin: created, or given `password` when it exists.
pub async fn set_demo_admin<S: Store>(c: &Cloud<S>, name: &str, password: &str) -> ApiResult<String> {
    match c.store.user(name).await? {
        None => {
            create_user(&*c.store, &c.passwords, name, password, Role::Admin, Grant::All, vec![]).await?;
        }
        Some(mut u) => {
            u.passwd_hash = c.passwords.hash(password).await.map_err(|e| ApiError::internal(e.to_string()))?;
            u.role = Role::Admin;
            c.store.update_user(&u).await?;
            c.store.delete_login_sessions_of(name).await?;
            c.accounts_changed().await;
        }
    }
    Ok(name.to_string())
}

pub(crate) async fn create<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<User>)> {
    let n: NewUser = super::json_body(&body)?.ok_or_else(|| {
        ApiError::bad_request("body: {\"name\", \"password\", \"role\", \"devices\", \"groups\"} expected")
    })?;
    let u = create_user(&*c.store, &c.passwords, &n.name, &n.password, n.role, n.devices, n.groups).await?;
    c.audit(&who, "user_created", &u.name, json!({"role": u.role, "devices": u.devices, "groups": u.groups})).await;
    Ok((StatusCode::CREATED, Json(u)))
}

pub(crate) async fn list<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(c.store.users().await?))
}

/// A user: an admin reads any, a user their own.
async fn user_for<S: Store>(c: &Cloud<S>, who: &Caller, name: &str) -> ApiResult<User> {
    if who.role < Role::Admin && who.user.as_deref() != Some(name) {
        return Err(ApiError::not_found(format!("no user {:?}", crate::limits::shown(name))));
    }
    c.store.user(name).await?.ok_or_else(|| ApiError::not_found(format!("no user {:?}", crate::limits::shown(name))))
}

pub(crate) async fn get<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    user_for(&c, &who, &name).await.map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserPatch {
    password: Option<String>,
    role: Option<Role>,
    devices: Option<Grant>,
    groups: Option<Vec<String>>,
}

/// `PATCH /api/v1/users/{name}`: an admin changes anything; a user may
/// change their own password. Every login of the user ends, except the
/// caller's own.
pub(crate) async fn patch<S: Store>(
    who: Caller,
    State(c): State<Arc<Cloud<S>>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<User>> {
    let p: UserPatch = super::json_body(&body)?
        .ok_or_else(|| ApiError::bad_request("body: any of {\"password\", \"role\", \"devices\", \"groups\"}"))?;
    let mut u = user_for(&c, &who, &name).await?;
    if who.role < Role::Admin && (p.role.is_some() || p.devices.is_some() || p.groups.is_some()) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "only an admin may change roles and grants"));
    }
    let changed: Vec<&str> = [
        ("password", p.password.is_some()),
        ("role", p.role.is_some()),
        ("devices", p.devices.is_some()),
        ("groups", p.groups.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.then_some(k))
    .collect();
    u.role = p.role.unwrap_or(u.role);
    u.devices = p.devices.unwrap_or(u.devices);
    u.groups = p.groups.unwrap_or(u.groups);
    check_grants(&u.devices, &u.groups)?;
    u.passwd_hash = match &p.password {
        Some(pw) => {
            check_password(pw)?;
            c.passwords.hash(pw).await.map_err(|e| ApiError::internal(e.to_string()))?
        }
        None => String::new(),
    };
    if !c.store.update_user(&u).await? {
        return Err(ApiError::not_found(format!("no user {:?}", crate::limits::shown(&name))));
    }
    c.store.delete_login_sessions_of(&u.name).await?;
    if let (Some(hash), Some(me)) = (&who.session, &who.user) {
        if *me == u.name {
            let expires = now() + c.cfg.session_ttl.as_secs() as i64;
            c.store.add_login_session(&LoginSession { hash: hash.clone(), user: me.clone(), expires }).await?;
        }
    }
    c.accounts_changed().await;
    c.audit(&who, "user_changed", &u.name, json!({"changed": changed, "role": u.role})).await;
    Ok(Json(c.store.user(&name).await?.unwrap_or(u)))
}

pub(crate) async fn delete<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if !c.store.delete_user(&name).await? {
        return Err(ApiError::not_found(format!("no user {:?}", crate::limits::shown(&name))));
    }
    c.accounts_changed().await;
    c.audit(&who, "user_deleted", &name, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/groups`: every group and its devices.
pub(crate) async fn groups<S: Store>(who: Caller, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Value>> {
    // A caller sees the groups' devices they may see (the console's tree).
    let all = c.store.groups().await?;
    let out: Vec<Value> = all
        .into_iter()
        .map(|(name, devs)| {
            let devs: Vec<String> = devs.into_iter().filter(|d| who.may_see(d)).collect();
            (name, devs)
        })
        .filter(|(_, d)| who.role == Role::Admin || !d.is_empty())
        .map(|(name, devices)| json!({"name": name, "devices": devices}))
        .collect();
    Ok(Json(json!(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupBody {
    devices: Vec<String>,
}

pub(crate) async fn put_group<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_name("group", &name)?;
    let g: GroupBody =
        super::json_body(&body)?.ok_or_else(|| ApiError::bad_request("body: {\"devices\": [login_code, …]}"))?;
    check_grants(&Grant::Only(g.devices.clone()), &[])?;
    c.store.put_group(&name, &g.devices).await?;
    c.accounts_changed().await;
    c.audit(&who, "group_set", &name, json!({"devices": g.devices})).await;
    Ok(Json(json!({"name": name, "devices": g.devices})))
}

pub(crate) async fn delete_group<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if !c.store.delete_group(&name).await? {
        return Err(ApiError::not_found(format!("no group {:?}", crate::limits::shown(&name))));
    }
    c.accounts_changed().await;
    c.audit(&who, "group_deleted", &name, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    name: String,
    role: Role,
    #[serde(default)]
    devices: Grant,
    #[serde(default)]
    groups: Vec<String>,
    /// RFC 3339, Unix seconds, or a duration such as `30d`, `12h`; absent:
    /// until revoked.
    expires: Option<Value>,
}

fn expiry(v: &Value) -> ApiResult<Option<i64>> {
    let bad = || ApiError::bad_request("expires: RFC 3339, Unix seconds, a duration (90m, 12h, 30d) or null");
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_i64().map(Some).ok_or_else(bad),
        Value::String(s) => {
            let unit = |u: char| match u {
                'm' => Some(60),
                'h' => Some(3600),
                'd' => Some(86_400),
                _ => None,
            };
            let last = s.chars().last().unwrap_or(' ');
            if let (Some(mul), Ok(n)) = (unit(last), s[..s.len() - last.len_utf8()].parse::<i64>()) {
                return Ok(Some(now() + n.max(0) * mul));
            }
            crate::recordings::parse_time("expires", s).map(|ms| Some(ms / 1000))
        }
        _ => Err(bad()),
    }
}

/// `POST /api/v1/tokens`: a new API token, its secret in this answer only.
pub(crate) async fn create_token<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let n: NewToken = super::json_body(&body)?.ok_or_else(|| {
        ApiError::bad_request("body: {\"name\", \"role\", \"devices\", \"groups\", \"expires\"} expected")
    })?;
    check_name("token name", &n.name)?;
    check_grants(&n.devices, &n.groups)?;
    let expires = n.expires.as_ref().map(expiry).transpose()?.flatten();
    if expires.is_some_and(|e| e <= now()) {
        return Err(ApiError::bad_request("expires: that time has passed"));
    }
    let token = format!("{TOKEN_PREFIX}{}", secret());
    let t = ApiToken {
        id: crate::server::token()[..12].to_string(),
        hash: digest(&token),
        name: n.name,
        role: n.role,
        devices: n.devices,
        groups: n.groups,
        expires,
        created_at: now(),
        created_by: who.actor.clone(),
    };
    c.store.add_token(&t).await?;
    c.audit(&who, "token_created", &t.id, json!({"name": t.name, "role": t.role, "expires": t.expires})).await;
    let mut out = json!(t);
    out["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(out)))
}

pub(crate) async fn tokens<S: Store>(_: Admin, State(c): State<Arc<Cloud<S>>>) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(c.store.tokens().await?))
}

pub(crate) async fn revoke_token<S: Store>(
    Admin(who): Admin,
    State(c): State<Arc<Cloud<S>>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !c.store.delete_token(&id).await? {
        return Err(ApiError::not_found(format!("no token {:?}", crate::limits::shown(&id))));
    }
    c.accounts_changed().await;
    c.audit(&who, "token_revoked", &id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/v1/audit?before=&limit=`: newest first.
pub(crate) async fn audit<S: Store>(
    _: Admin,
    State(c): State<Arc<Cloud<S>>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(c.store.audit(q.before, q.limit.unwrap_or(200)).await?))
}
