//! People and programs that use the API: user accounts (argon2id
//! passwords), device groups (sites), API tokens (kept as SHA-256 hashes:
//! they are 128 random bits, so a fast hash is enough), console login
//! sessions (also hashed), and the audit log. Kept by the same store as
//! devices; [`Accounts`] is the part of [`crate::Store`] about them.

use crate::store::{Result, SqliteStore, StoreError};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

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
    fn create_user(&self, u: &User) -> Result<()>;
    /// Replaces a user's role, grants and (when not empty) password hash;
    /// false when there is no such user.
    fn update_user(&self, u: &User) -> Result<bool>;
    fn user(&self, name: &str) -> Result<Option<User>>;
    fn users(&self) -> Result<Vec<User>>;
    /// Deletes a user and every login session of theirs.
    fn delete_user(&self, name: &str) -> Result<bool>;
    fn user_count(&self) -> Result<u64>;

    /// Creates or replaces a group.
    fn put_group(&self, name: &str, devices: &[String]) -> Result<()>;
    fn group(&self, name: &str) -> Result<Option<Vec<String>>>;
    fn groups(&self) -> Result<Vec<(String, Vec<String>)>>;
    fn delete_group(&self, name: &str) -> Result<bool>;

    fn add_token(&self, t: &ApiToken) -> Result<()>;
    fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>>;
    fn tokens(&self) -> Result<Vec<ApiToken>>;
    fn delete_token(&self, id: &str) -> Result<bool>;

    fn add_login_session(&self, s: &LoginSession) -> Result<()>;
    fn login_session(&self, hash: &str) -> Result<Option<LoginSession>>;
    fn delete_login_session(&self, hash: &str) -> Result<bool>;
    /// Ends every login of a user (password changed, role changed).
    fn delete_login_sessions_of(&self, user: &str) -> Result<u64>;
    /// Forgets logins and tokens that expired before `now`.
    fn expire_credentials(&self, now: i64) -> Result<u64>;

    fn add_audit(&self, e: &AuditEntry) -> Result<i64>;
    /// Newest first; only entries with an id below `before` when given.
    fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>>;
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

/// A column written by [`to_json`]; unreadable JSON is a database error
/// naming the column, not a silent default.
fn from_json<T: serde::de::DeserializeOwned>(col: &str, s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("{col}: {e}").into())
    })
}

fn role_of(s: &str) -> rusqlite::Result<Role> {
    s.parse().map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

const USER_COLS: &str = "name, passwd_hash, role, devices, groups, created_at";

fn row_to_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        passwd_hash: r.get(1)?,
        role: role_of(&r.get::<_, String>(2)?)?,
        devices: from_json("devices", &r.get::<_, String>(3)?)?,
        groups: from_json("groups", &r.get::<_, String>(4)?)?,
        created_at: r.get(5)?,
    })
}

const TOKEN_COLS: &str = "id, hash, name, role, devices, groups, expires, created_at, created_by";

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        id: r.get(0)?,
        hash: r.get(1)?,
        name: r.get(2)?,
        role: role_of(&r.get::<_, String>(3)?)?,
        devices: from_json("devices", &r.get::<_, String>(4)?)?,
        groups: from_json("groups", &r.get::<_, String>(5)?)?,
        expires: r.get(6)?,
        created_at: r.get(7)?,
        created_by: r.get(8)?,
    })
}

fn row_to_audit(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        detail: from_json("detail", &r.get::<_, String>(5)?)?,
        addr: r.get(6)?,
    })
}

impl Accounts for SqliteStore {
    fn create_user(&self, u: &User) -> Result<()> {
        let r = self.db().execute(
            &format!("INSERT INTO user_account ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![u.name, u.passwd_hash, u.role.as_str(), to_json(&u.devices), to_json(&u.groups), u.created_at],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::Taken(format!("a user named {:?} exists already", u.name)))
            }
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    fn update_user(&self, u: &User) -> Result<bool> {
        let n = self.db().execute(
            "UPDATE user_account SET role = ?2, devices = ?3, groups = ?4,
                passwd_hash = CASE WHEN ?5 = '' THEN passwd_hash ELSE ?5 END
             WHERE name = ?1",
            params![u.name, u.role.as_str(), to_json(&u.devices), to_json(&u.groups), u.passwd_hash],
        )?;
        Ok(n == 1)
    }

    fn user(&self, name: &str) -> Result<Option<User>> {
        let db = self.db();
        let mut q = db.prepare_cached(&format!("SELECT {USER_COLS} FROM user_account WHERE name = ?1"))?;
        Ok(q.query_row([name], row_to_user).optional()?)
    }

    fn users(&self) -> Result<Vec<User>> {
        let db = self.db();
        let mut q = db.prepare_cached(&format!("SELECT {USER_COLS} FROM user_account ORDER BY name"))?;
        let rows = q.query_map([], row_to_user)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn delete_user(&self, name: &str) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM login_session WHERE user_name = ?1", [name])?;
        let n = tx.execute("DELETE FROM user_account WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn user_count(&self) -> Result<u64> {
        Ok(self.db().query_row("SELECT COUNT(*) FROM user_account", [], |r| r.get::<_, i64>(0))? as u64)
    }

    fn put_group(&self, name: &str, devices: &[String]) -> Result<()> {
        self.db().execute(
            "INSERT INTO device_group (name, devices) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET devices = excluded.devices",
            params![name, to_json(&devices)],
        )?;
        Ok(())
    }

    fn group(&self, name: &str) -> Result<Option<Vec<String>>> {
        let db = self.db();
        let mut q = db.prepare_cached("SELECT devices FROM device_group WHERE name = ?1")?;
        Ok(q.query_row([name], |r| from_json("devices", &r.get::<_, String>(0)?)).optional()?)
    }

    fn groups(&self) -> Result<Vec<(String, Vec<String>)>> {
        let db = self.db();
        let mut q = db.prepare_cached("SELECT name, devices FROM device_group ORDER BY name")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, from_json("devices", &r.get::<_, String>(1)?)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn delete_group(&self, name: &str) -> Result<bool> {
        Ok(self.db().execute("DELETE FROM device_group WHERE name = ?1", [name])? == 1)
    }

    fn add_token(&self, t: &ApiToken) -> Result<()> {
        self.db().execute(
            &format!("INSERT INTO api_token ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                t.id,
                t.hash,
                t.name,
                t.role.as_str(),
                to_json(&t.devices),
                to_json(&t.groups),
                t.expires,
                t.created_at,
                t.created_by
            ],
        )?;
        Ok(())
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>> {
        let db = self.db();
        let mut q = db.prepare_cached(&format!("SELECT {TOKEN_COLS} FROM api_token WHERE hash = ?1"))?;
        Ok(q.query_row([hash], row_to_token).optional()?)
    }

    fn tokens(&self) -> Result<Vec<ApiToken>> {
        let db = self.db();
        let mut q = db.prepare_cached(&format!("SELECT {TOKEN_COLS} FROM api_token ORDER BY created_at, id"))?;
        let rows = q.query_map([], row_to_token)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn delete_token(&self, id: &str) -> Result<bool> {
        Ok(self.db().execute("DELETE FROM api_token WHERE id = ?1", [id])? == 1)
    }

    fn add_login_session(&self, s: &LoginSession) -> Result<()> {
        self.db().execute(
            "INSERT INTO login_session (hash, user_name, expires) VALUES (?1, ?2, ?3)",
            params![s.hash, s.user, s.expires],
        )?;
        Ok(())
    }

    fn login_session(&self, hash: &str) -> Result<Option<LoginSession>> {
        let db = self.db();
        let mut q = db.prepare_cached("SELECT hash, user_name, expires FROM login_session WHERE hash = ?1")?;
        Ok(q.query_row([hash], |r| Ok(LoginSession { hash: r.get(0)?, user: r.get(1)?, expires: r.get(2)? }))
            .optional()?)
    }

    fn delete_login_session(&self, hash: &str) -> Result<bool> {
        Ok(self.db().execute("DELETE FROM login_session WHERE hash = ?1", [hash])? == 1)
    }

    fn delete_login_sessions_of(&self, user: &str) -> Result<u64> {
        Ok(self.db().execute("DELETE FROM login_session WHERE user_name = ?1", [user])? as u64)
    }

    fn expire_credentials(&self, now: i64) -> Result<u64> {
        let db = self.db();
        let a = db.execute("DELETE FROM login_session WHERE expires < ?1", [now])?;
        let b = db.execute("DELETE FROM api_token WHERE expires IS NOT NULL AND expires < ?1", [now])?;
        Ok((a + b) as u64)
    }

    fn add_audit(&self, e: &AuditEntry) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO audit (at, actor, action, target, detail, addr) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.at, e.actor, e.action, e.target, to_json(&e.detail), e.addr],
        )?;
        Ok(db.last_insert_rowid())
    }

    fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let db = self.db();
        let mut q = db.prepare_cached(
            "SELECT id, at, actor, action, target, detail, addr FROM audit
             WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = q.query_map(params![before.unwrap_or(i64::MAX), limit.clamp(1, 10_000)], row_to_audit)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, role: Role, devices: Grant) -> User {
        User { name: name.into(), passwd_hash: "h1".into(), role, devices, groups: vec![], created_at: 1 }
    }

    #[test]
    fn users_groups_tokens_sessions_and_audit_are_kept() {
        let s = SqliteStore::in_memory().unwrap();
        s.create_user(&user("ann", Role::Admin, Grant::All)).unwrap();
        let e = s.create_user(&user("ann", Role::Viewer, Grant::None)).unwrap_err();
        assert_eq!(e.to_string(), "a user named \"ann\" exists already");
        let mut bob = user("bob", Role::Viewer, Grant::Only(vec!["cam-1".into()]));
        bob.groups = vec!["site-a".into()];
        s.create_user(&bob).unwrap();
        assert_eq!(s.user("bob").unwrap().unwrap(), bob);
        // An empty hash keeps the password.
        let changed = User { role: Role::Operator, passwd_hash: String::new(), ..bob.clone() };
        assert!(s.update_user(&changed).unwrap());
        let got = s.user("bob").unwrap().unwrap();
        assert_eq!((got.role, got.passwd_hash.as_str()), (Role::Operator, "h1"));
        assert!(!s.update_user(&user("nobody", Role::Viewer, Grant::None)).unwrap());
        assert_eq!(s.users().unwrap().len(), 2);

        s.put_group("site-a", &["cam-2".into(), "cam-3".into()]).unwrap();
        s.put_group("site-a", &["cam-2".into()]).unwrap();
        assert_eq!(s.group("site-a").unwrap(), Some(vec!["cam-2".to_string()]));
        assert_eq!(s.groups().unwrap().len(), 1);

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
        s.add_token(&t).unwrap();
        assert_eq!(s.token_by_hash("abc").unwrap(), Some(t.clone()));
        s.add_login_session(&LoginSession { hash: "s1".into(), user: "bob".into(), expires: 50 }).unwrap();
        assert_eq!(s.login_session("s1").unwrap().unwrap().user, "bob");
        assert_eq!(s.expire_credentials(60).unwrap(), 1, "the session expired, the token not yet");
        assert!(s.login_session("s1").unwrap().is_none());
        assert!(s.delete_token("t1").unwrap());
        assert!(s.token_by_hash("abc").unwrap().is_none());

        s.add_login_session(&LoginSession { hash: "s2".into(), user: "bob".into(), expires: 500 }).unwrap();
        assert!(s.delete_user("bob").unwrap());
        assert!(s.login_session("s2").unwrap().is_none(), "a deleted user's logins end with them");

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
            .unwrap();
        }
        let page = s.audit(None, 2).unwrap();
        assert_eq!(page.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["u2", "u1"]);
        assert_eq!(s.audit(Some(page[1].id), 10).unwrap()[0].target, "u0");
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
