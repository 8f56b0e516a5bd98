//! People and programs that use the API: user accounts (argon2id
//! passwords), device groups (sites), API tokens (kept as SHA-256 hashes:
//! they are 128 random bits, so a fast hash is enough), console login
//! sessions (also hashed), and the audit log. Kept by the same store as
//! devices; [`Accounts`] is the part of [`crate::Store`] about them.

use crate::sql::{args, Backend, Row, Stmt};
use crate::store::{Result, SqlStore, StoreError};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// What an account or a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Watch live, recordings and events of the devices granted.
    Viewer,
    /// And control them: PTZ, recording, configuration, reboot, time.
    Operator,
    /// Everything, on every device: users, tokens, groups, firmware.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role {s:?}: one of admin, operator, viewer")),
        }
    }
}

/// Which devices are granted by name: every one (`"*"`) or a list.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Grant {
    All,
    #[default]
    None,
    Only(Vec<String>),
}

impl Serialize for Grant {
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> std::result::Result<Se::Ok, Se::Error> {
        match self {
            Grant::All => s.serialize_str("*"),
            Grant::None => Vec::<String>::new().serialize(s),
            Grant::Only(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Grant, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum G {
            S(String),
            L(Vec<String>),
        }
        match G::deserialize(d)? {
            G::S(s) if s == "*" => Ok(Grant::All),
            G::S(s) => Err(serde::de::Error::custom(format!(
                "devices: {s:?} is neither \"*\" (every device) nor a list of login codes"
            ))),
            G::L(v) if v.is_empty() => Ok(Grant::None),
            G::L(v) => Ok(Grant::Only(v)),
        }
    }
}

/// A console user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    #[serde(skip)]
    pub passwd_hash: String,
    pub role: Role,
    pub devices: Grant,
    pub groups: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// An API token (its secret is shown once, only its hash is kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: String,
    #[serde(skip)]
    pub hash: String,
    pub name: String,
    pub role: Role,
    pub devices: Grant,
    pub groups: Vec<String>,
    /// Unix seconds; `None`: until revoked.
    pub expires: Option<i64>,
    pub created_at: i64,
    pub created_by: String,
}

/// A console login: the SHA-256 of its cookie, whose it is, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginSession {
    pub hash: String,
    pub user: String,
    pub expires: i64,
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// `user:alice`, `token:1f2e…`, `admin-token`, `cli`.
    pub actor: String,
    /// `login`, `login_failed`, `user_created`, `rpc`, `recording_started`…
    pub action: String,
    /// What it was done to: a user, a device, a token id.
    pub target: String,
    pub detail: serde_json::Value,
    /// The caller's address, when it came over HTTP.
    pub addr: Option<String>,
}

/// The accounts half of the store.
pub trait Accounts {
    /// A new user; [`StoreError::Exists`] when the name is taken.
    fn create_user(&self, u: &User) -> impl Future<Output = Result<()>> + Send;
    /// Replaces a user's role, grants and (when not empty) password hash;
    /// false when there is no such user.
    fn update_user(&self, u: &User) -> impl Future<Output = Result<bool>> + Send;
    fn user(&self, name: &str) -> impl Future<Output = Result<Option<User>>> + Send;
    fn users(&self) -> impl Future<Output = Result<Vec<User>>> + Send;
    /// Deletes a user and every login session of theirs.
    fn delete_user(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
    fn user_count(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Creates or replaces a group.
    fn put_group(&self, name: &str, devices: &[String]) -> impl Future<Output = Result<()>> + Send;
    fn group(&self, name: &str) -> impl Future<Output = Result<Option<Vec<String>>>> + Send;
    fn groups(&self) -> impl Future<Output = Result<Vec<(String, Vec<String>)>>> + Send;
    fn delete_group(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    fn add_token(&self, t: &ApiToken) -> impl Future<Output = Result<()>> + Send;
    fn token_by_hash(&self, hash: &str) -> impl Future<Output = Result<Option<ApiToken>>> + Send;
    fn tokens(&self) -> impl Future<Output = Result<Vec<ApiToken>>> + Send;
    fn delete_token(&self, id: &str) -> impl Future<Output = Result<bool>> + Send;

    fn add_login_session(&self, s: &LoginSession) -> impl Future<Output = Result<()>> + Send;
    fn login_session(&self, hash: &str) -> impl Future<Output = Result<Option<LoginSession>>> + Send;
    fn delete_login_session(&self, hash: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Ends every login of a user (password changed, role changed).
    fn delete_login_sessions_of(&self, user: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Forgets logins and tokens that expired before `now`.
    fn expire_credentials(&self, now: i64) -> impl Future<Output = Result<u64>> + Send;

    fn add_audit(&self, e: &AuditEntry) -> impl Future<Output = Result<i64>> + Send;
    /// Newest first; only entries with an id below `before` when given.
    fn audit(&self, before: Option<i64>, limit: u32) -> impl Future<Output = Result<Vec<AuditEntry>>> + Send;
}

pub(crate) const MIGRATION: &str = "CREATE TABLE user_account (
        name TEXT PRIMARY KEY,
        passwd_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        devices TEXT NOT NULL,
        groups TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE device_group (name TEXT PRIMARY KEY, devices TEXT NOT NULL);
    CREATE TABLE api_token (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        devices TEXT NOT NULL,
        groups TEXT NOT NULL,
        expires INTEGER,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE login_session (
        hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE INDEX login_session_user ON login_session(user_name);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        addr TEXT
    );";

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn role_of(s: &str) -> Result<Role> {
    s.parse().map_err(|e: String| StoreError::Db(format!("column role: {e}")))
}

const USER_COLS: &str = "name, passwd_hash, role, devices, groups, created_at";

fn row_to_user(r: &Row) -> Result<User> {
    Ok(User {
        name: r.text(0)?,
        passwd_hash: r.text(1)?,
        role: role_of(&r.text(2)?)?,
        devices: r.json(3, "devices")?,
        groups: r.json(4, "groups")?,
        created_at: r.int(5)?,
    })
}

const TOKEN_COLS: &str = "id, hash, name, role, devices, groups, expires, created_at, created_by";

fn row_to_token(r: &Row) -> Result<ApiToken> {
    Ok(ApiToken {
        id: r.text(0)?,
        hash: r.text(1)?,
        name: r.text(2)?,
        role: role_of(&r.text(3)?)?,
        devices: r.json(4, "devices")?,
        groups: r.json(5, "groups")?,
        expires: r.opt_int(6)?,
        created_at: r.int(7)?,
        created_by: r.text(8)?,
    })
}

fn row_to_audit(r: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.int(0)?,
        at: r.int(1)?,
        actor: r.text(2)?,
        action: r.text(3)?,
        target: r.text(4)?,
        detail: r.json(5, "detail")?,
        addr: r.opt_text(6)?,
    })
}

impl Accounts for SqlStore {
    async fn create_user(&self, u: &User) -> Result<()> {
        let n = self
            .db
            .execute(
                &format!(
                    "INSERT INTO user_account ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
                ),
                args![&u.name, &u.passwd_hash, u.role.as_str(), to_json(&u.devices), to_json(&u.groups), u.created_at],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Taken(format!("a user named {:?} exists already", u.name)));
        }
        Ok(())
    }

    async fn update_user(&self, u: &User) -> Result<bool> {
        let n = self
            .db
            .execute(
                "UPDATE user_account SET role = $2, devices = $3, groups = $4,
                    passwd_hash = CASE WHEN $5 = '' THEN passwd_hash ELSE $5 END
                 WHERE name = $1",
                args![&u.name, u.role.as_str(), to_json(&u.devices), to_json(&u.groups), &u.passwd_hash],
            )
            .await?;
        Ok(n == 1)
    }

    async fn user(&self, name: &str) -> Result<Option<User>> {
        let rows = self.db.query(&format!("SELECT {USER_COLS} FROM user_account WHERE name = $1"), args![name]).await?;
        rows.first().map(row_to_user).transpose()
    }

    async fn users(&self) -> Result<Vec<User>> {
        let rows = self.db.query(&format!("SELECT {USER_COLS} FROM user_account ORDER BY name"), vec![]).await?;
        rows.iter().map(row_to_user).collect()
    }

    async fn delete_user(&self, name: &str) -> Result<bool> {
        let out = self
            .db
            .transaction(vec![
                Stmt::new("DELETE FROM login_session WHERE user_name = $1", args![name]),
                Stmt::new("DELETE FROM user_account WHERE name = $1", args![name]),
            ])
            .await?;
        Ok(out[1].changed == 1)
    }

    async fn user_count(&self) -> Result<u64> {
        let rows = self.db.query("SELECT COUNT(*) FROM user_account", vec![]).await?;
        rows.first().map_or(Ok(0), |r| r.num(0))
    }

    async fn put_group(&self, name: &str, devices: &[String]) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO device_group (name, devices) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET devices = excluded.devices",
                args![name, to_json(&devices)],
            )
            .await?;
        Ok(())
    }

    async fn group(&self, name: &str) -> Result<Option<Vec<String>>> {
        let rows = self.db.query("SELECT devices FROM device_group WHERE name = $1", args![name]).await?;
        rows.first().map(|r| r.json(0, "devices")).transpose()
    }

    async fn groups(&self) -> Result<Vec<(String, Vec<String>)>> {
        let rows = self.db.query("SELECT name, devices FROM device_group ORDER BY name", vec![]).await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.json(1, "devices")?))).collect()
    }

    async fn delete_group(&self, name: &str) -> Result<bool> {
        Ok(self.db.execute("DELETE FROM device_group WHERE name = $1", args![name]).await? == 1)
    }

    async fn add_token(&self, t: &ApiToken) -> Result<()> {
        self.db
            .execute(
                &format!("INSERT INTO api_token ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
                args![
                    &t.id,
                    &t.hash,
                    &t.name,
                    t.role.as_str(),
                    to_json(&t.devices),
                    to_json(&t.groups),
                    t.expires,
                    t.created_at,
                    &t.created_by
                ],
            )
            .await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>> {
        let rows = self.db.query(&format!("SELECT {TOKEN_COLS} FROM api_token WHERE hash = $1"), args![hash]).await?;
        rows.first().map(row_to_token).transpose()
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>> {
        let rows =
            self.db.query(&format!("SELECT {TOKEN_COLS} FROM api_token ORDER BY created_at, id"), vec![]).await?;
        rows.iter().map(row_to_token).collect()
    }

    async fn delete_token(&self, id: &str) -> Result<bool> {
        Ok(self.db.execute("DELETE FROM api_token WHERE id = $1", args![id]).await? == 1)
    }

    async fn add_login_session(&self, s: &LoginSession) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO login_session (hash, user_name, expires) VALUES ($1, $2, $3)",
                args![&s.hash, &s.user, s.expires],
            )
            .await?;
        Ok(())
    }

    async fn login_session(&self, hash: &str) -> Result<Option<LoginSession>> {
        let rows =
            self.db.query("SELECT hash, user_name, expires FROM login_session WHERE hash = $1", args![hash]).await?;
        rows.first().map(|r| Ok(LoginSession { hash: r.text(0)?, user: r.text(1)?, expires: r.int(2)? })).transpose()
    }

    async fn delete_login_session(&self, hash: &str) -> Result<bool> {
        Ok(self.db.execute("DELETE FROM login_session WHERE hash = $1", args![hash]).await? == 1)
    }

    async fn delete_login_sessions_of(&self, user: &str) -> Result<u64> {
        self.db.execute("DELETE FROM login_session WHERE user_name = $1", args![user]).await
    }

    async fn expire_credentials(&self, now: i64) -> Result<u64> {
        let a = self.db.execute("DELETE FROM login_session WHERE expires < $1", args![now]).await?;
        let b = self.db.execute("DELETE FROM api_token WHERE expires IS NOT NULL AND expires < $1", args![now]).await?;
        Ok(a + b)
    }

    async fn add_audit(&self, e: &AuditEntry) -> Result<i64> {
        let rows = self
            .db
            .query(
                "INSERT INTO audit (at, actor, action, target, detail, addr) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                args![e.at, &e.actor, &e.action, &e.target, to_json(&e.detail), e.addr.clone()],
            )
            .await?;
        rows.first().ok_or_else(|| StoreError::Db("INSERT … RETURNING gave no row".into()))?.int(0)
    }

    async fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = self
            .db
            .query(
                "SELECT id, at, actor, action, target, detail, addr FROM audit
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
                args![before.unwrap_or(i64::MAX), limit.clamp(1, 10_000)],
            )
            .await?;
        rows.iter().map(row_to_audit).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn user(name: &str, role: Role, devices: Grant) -> User {
        User { name: name.into(), passwd_hash: "h1".into(), role, devices, groups: vec![], created_at: 1 }
    }

    #[tokio::test]
    async fn users_groups_tokens_sessions_and_audit_are_kept() {
        exercise(&SqlStore::in_memory().unwrap()).await;
    }

    /// Run on every database by the store's tests too.
    pub(crate) async fn exercise(s: &SqlStore) {
        s.create_user(&user("ann", Role::Admin, Grant::All)).await.unwrap();
        let e = s.create_user(&user("ann", Role::Viewer, Grant::None)).await.unwrap_err();
        assert_eq!(e.to_string(), "a user named \"ann\" exists already");
        let mut bob = user("bob", Role::Viewer, Grant::Only(vec!["cam-1".into()]));
        bob.groups = vec!["site-a".into()];
        s.create_user(&bob).await.unwrap();
        assert_eq!(s.user("bob").await.unwrap().unwrap(), bob);
        // An empty hash keeps the password.
        let changed = User { role: Role::Operator, passwd_hash: String::new(), ..bob.clone() };
        assert!(s.update_user(&changed).await.unwrap());
        let got = s.user("bob").await.unwrap().unwrap();
        assert_eq!((got.role, got.passwd_hash.as_str()), (Role::Operator, "h1"));
        assert!(!s.update_user(&user("nobody", Role::Viewer, Grant::None)).await.unwrap());
        assert_eq!(s.users().await.unwrap().len(), 2);

        s.put_group("site-a", &["cam-2".into(), "cam-3".into()]).await.unwrap();
        s.put_group("site-a", &["cam-2".into()]).await.unwrap();
        assert_eq!(s.group("site-a").await.unwrap(), Some(vec!["cam-2".to_string()]));
        assert_eq!(s.groups().await.unwrap().len(), 1);

        let t = ApiToken {
            id: "t1".into(),
            hash: "abc".into(),
            name: "ci".into(),
            role: Role::Viewer,
            devices: Grant::All,
            groups: vec![],
            expires: Some(100),
            created_at: 1,
            created_by: "user:ann".into(),
        };
        s.add_token(&t).await.unwrap();
        assert_eq!(s.token_by_hash("abc").await.unwrap(), Some(t.clone()));
        s.add_login_session(&LoginSession { hash: "s1".into(), user: "bob".into(), expires: 50 }).await.unwrap();
        assert_eq!(s.login_session("s1").await.unwrap().unwrap().user, "bob");
        assert_eq!(s.expire_credentials(60).await.unwrap(), 1, "the session expired, the token not yet");
        assert!(s.login_session("s1").await.unwrap().is_none());
        assert!(s.delete_token("t1").await.unwrap());
        assert!(s.token_by_hash("abc").await.unwrap().is_none());

        s.add_login_session(&LoginSession { hash: "s2".into(), user: "bob".into(), expires: 500 }).await.unwrap();
        assert!(s.delete_user("bob").await.unwrap());
        assert!(s.login_session("s2").await.unwrap().is_none(), "a deleted user's logins end with them");

        for i in 0..3 {
            s.add_audit(&AuditEntry {
                id: 0,
                at: i,
                actor: "cli".into(),
                action: "user_created".into(),
                target: format!("u{i}"),
                detail: serde_json::json!({"role": "viewer"}),
                addr: None,
            })
            .await
            .unwrap();
        }
        let page = s.audit(None, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["u2", "u1"]);
        assert_eq!(s.audit(Some(page[1].id), 10).await.unwrap()[0].target, "u0");
    }

    #[test]
    fn grants_read_star_or_a_list() {
        let g: Grant = serde_json::from_str("\"*\"").unwrap();
        assert_eq!(g, Grant::All);
        let g: Grant = serde_json::from_str("[\"a\"]").unwrap();
        assert_eq!(serde_json::to_string(&g).unwrap(), "[\"a\"]");
        let e = serde_json::from_str::<Grant>("\"all\"").unwrap_err().to_string();
        assert!(e.contains("neither \"*\""), "{e}");
    }
}
