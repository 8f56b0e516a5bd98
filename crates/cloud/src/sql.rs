//! The one SQL the store speaks, and the two databases that run it.
//!
//! Statements are written once, in the subset SQLite and PostgreSQL share:
//! `$1`-numbered parameters, `ON CONFLICT`, `RETURNING`, `CAST(… AS
//! BIGINT)`. Values are integers, text or NULL ([`Val`]); every integer
//! column is 64-bit on both. The migrations are the same list for both:
//! [`pg_ddl`] turns SQLite's row-id keys into PostgreSQL identity columns
//! and `INTEGER` into `BIGINT`, nothing else.
//!
//! [`Sqlite`] runs a statement inline under a lock (a file on this disk,
//! microseconds a statement). [`crate::pg::Postgres`] is asynchronous all
//! the way (tokio-postgres, pipelined shared connections, prepared
//! statements cached per connection).

use crate::store::{Result, StoreError};
use std::future::Future;
use std::sync::Mutex;

/// A parameter or a column's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::Int(i64::from(v))
    }
}
impl From<u8> for Val {
    fn from(v: u8) -> Val {
        Val::Int(i64::from(v))
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Val {
        Val::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::Int(i64::from(v))
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_owned())
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(v.clone())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// `args![a, b, …]`: the parameters `$1, $2, …` of a statement.
macro_rules! args {
    ($($v:expr),* $(,)?) => { vec![$($crate::sql::Val::from($v)),*] };
}
pub(crate) use args;

/// One result row; the getters name the column on a type mismatch.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Val>);

impl Row {
    fn col(&self, i: usize) -> Result<&Val> {
        self.0.get(i).ok_or_else(|| StoreError::Db(format!("result has no column {i}")))
    }
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.col(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            Val::Text(t) => Err(StoreError::Db(format!("column {i}: expected an integer, found text {t:?}"))),
        }
    }
    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| StoreError::Db(format!("column {i}: NULL where an integer must be")))
    }
    /// An integer column that must fit `T` (a channel number, a size).
    pub(crate) fn num<T: TryFrom<i64>>(&self, i: usize) -> Result<T> {
        let v = self.int(i)?;
        T::try_from(v).map_err(|_| StoreError::Db(format!("column {i}: {v} is out of range")))
    }
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.col(i)? {
            Val::Null => Ok(None),
            Val::Text(t) => Ok(Some(t.clone())),
            Val::Int(v) => Err(StoreError::Db(format!("column {i}: expected text, found {v}"))),
        }
    }
    pub(crate) fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?.ok_or_else(|| StoreError::Db(format!("column {i}: NULL where text must be")))
    }
    /// A JSON column; unreadable JSON is an error naming the column.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self, i: usize, name: &str) -> Result<T> {
        let s = self.text(i)?;
        serde_json::from_str(&s).map_err(|e| StoreError::Db(format!("column {name}: {e}")))
    }
}

/// A statement and its parameters, for [`Backend::transaction`].
pub(crate) struct Stmt {
    pub(crate) sql: String,
    pub(crate) args: Vec<Val>,
    /// Runs only if the statement at this index (earlier in the same
    /// transaction) changed a row; otherwise its outcome is empty.
    pub(crate) when: Option<usize>,
}

impl Stmt {
    pub(crate) fn new(sql: impl Into<String>, args: Vec<Val>) -> Stmt {
        Stmt { sql: sql.into(), args, when: None }
    }

    /// Only if statement `k` of the transaction changed a row (a counter
    /// that follows an `INSERT … ON CONFLICT DO NOTHING`, say).
    pub(crate) fn if_changed(mut self, k: usize) -> Stmt {
        self.when = Some(k);
        self
    }

    /// Whether to run, given the outcomes so far.
    pub(crate) fn due(&self, so_far: &[Outcome]) -> bool {
        self.when.is_none_or(|k| so_far.get(k).is_some_and(|o| o.changed > 0))
    }
}

/// What a statement in a transaction gave: its rows (a `SELECT` or a
/// `… RETURNING`) and how many rows it changed.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) rows: Vec<Row>,
    pub(crate) changed: u64,
}

/// A database that runs the shared SQL.
pub trait Backend: Send + Sync + 'static {
    /// The rows of one statement.
    #[doc(hidden)]
    fn query(&self, sql: &str, args: Vec<Val>) -> impl Future<Output = Result<Vec<Row>>> + Send;
    /// How many rows one statement changed.
    #[doc(hidden)]
    fn execute(&self, sql: &str, args: Vec<Val>) -> impl Future<Output = Result<u64>> + Send;
    /// Every statement or none, in order.
    #[doc(hidden)]
    fn transaction(&self, stmts: Vec<Stmt>) -> impl Future<Output = Result<Vec<Outcome>>> + Send;
    /// Runs the migrations not yet run (each in its own transaction).
    #[doc(hidden)]
    fn migrate(&self, migrations: &[&str]) -> impl Future<Output = Result<()>> + Send;
    /// `sqlite` or `postgres`, for logs and `/api/v1/stats`.
    fn kind(&self) -> &'static str;
}

/// A migration in PostgreSQL's words: row-id keys become identity
/// columns, `INTEGER` becomes `BIGINT`, `/*postgres … postgres*/` is run;
/// the rest is common SQL.
pub(crate) fn pg_ddl(m: &str) -> String {
    // `/*postgres … postgres*/`: a statement only PostgreSQL runs (a
    // comment to SQLite).
    m.replace("/*postgres ", "")
        .replace(" postgres*/", "")
        .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        .replace("id INTEGER PRIMARY KEY", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
}

/// SQLite in one file (or in memory), one connection under a lock.
pub struct Sqlite {
    db: Mutex<rusqlite::Connection>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
    }
}

/// `$1` → `?1` (no statement has a `$` anywhere else).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_rows(st: &mut rusqlite::CachedStatement<'_>, args: &[Val]) -> Result<Vec<Row>> {
    use rusqlite::types::ValueRef;
    let n = st.column_count();
    let mut rows = st.query(rusqlite::params_from_iter(args.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            vals.push(match r.get_ref(i)? {
                ValueRef::Null => Val::Null,
                ValueRef::Integer(v) => Val::Int(v),
                ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Real(f) => Val::Int(f as i64),
                ValueRef::Blob(_) => return Err(StoreError::Db(format!("column {i}: a blob, which no table has"))),
            });
        }
        out.push(Row(vals));
    }
    Ok(out)
}

impl Sqlite {
    pub(crate) fn open_file(file: &std::path::Path) -> Result<Sqlite> {
        Sqlite::init(rusqlite::Connection::open(file)?)
    }

    pub(crate) fn open_memory() -> Result<Sqlite> {
        Sqlite::init(rusqlite::Connection::open_in_memory()?)
    }

    fn init(db: rusqlite::Connection) -> Result<Sqlite> {
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        // Every statement the store runs stays prepared: rusqlite keeps 16
        // by default, fewer than the store has, so the housekeeping's and
        // the recorder's queries pushed each other out and were parsed
        // again on every run.
        db.set_prepared_statement_cache_capacity(256);
        Ok(Sqlite { db: Mutex::new(db) })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for Sqlite {
    async fn query(&self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>> {
        let db = self.lock();
        let mut st = db.prepare_cached(&sqlite_sql(sql))?;
        sqlite_rows(&mut st, &args)
    }

    async fn execute(&self, sql: &str, args: Vec<Val>) -> Result<u64> {
        let db = self.lock();
        let mut st = db.prepare_cached(&sqlite_sql(sql))?;
        Ok(st.execute(rusqlite::params_from_iter(args.iter()))? as u64)
    }

    async fn transaction(&self, stmts: Vec<Stmt>) -> Result<Vec<Outcome>> {
        let mut db = self.lock();
        let tx = db.transaction()?;
        let mut out = Vec::with_capacity(stmts.len());
        for s in &stmts {
            if !s.due(&out) {
                out.push(Outcome::default());
                continue;
            }
            let mut st = tx.prepare_cached(&sqlite_sql(&s.sql))?;
            if st.column_count() > 0 {
                let rows = sqlite_rows(&mut st, &s.args)?;
                out.push(Outcome { changed: rows.len() as u64, rows });
            } else {
                let changed = st.execute(rusqlite::params_from_iter(s.args.iter()))? as u64;
                out.push(Outcome { rows: Vec::new(), changed });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    async fn migrate(&self, migrations: &[&str]) -> Result<()> {
        self.migrate_now(migrations)
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

impl Sqlite {
    pub(crate) fn migrate_now(&self, migrations: &[&str]) -> Result<()> {
        let db = self.lock();
        let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, m) in migrations.iter().enumerate().skip(version as usize) {
            db.execute_batch(&format!("BEGIN; {m}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
            tracing::info!(migration = i + 1, "store: migrated");
        }
        Ok(())
    }
}

/// Either database, chosen at start (`--store`).
pub enum AnyDb {
    Sqlite(Sqlite),
    Postgres(Box<crate::pg::Postgres>),
}

impl Backend for AnyDb {
    async fn query(&self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>> {
        match self {
            AnyDb::Sqlite(d) => d.query(sql, args).await,
            AnyDb::Postgres(d) => d.query(sql, args).await,
        }
    }
    async fn execute(&self, sql: &str, args: Vec<Val>) -> Result<u64> {
        match self {
            AnyDb::Sqlite(d) => d.execute(sql, args).await,
            AnyDb::Postgres(d) => d.execute(sql, args).await,
        }
    }
    async fn transaction(&self, stmts: Vec<Stmt>) -> Result<Vec<Outcome>> {
        match self {
            AnyDb::Sqlite(d) => d.transaction(stmts).await,
            AnyDb::Postgres(d) => d.transaction(stmts).await,
        }
    }
    async fn migrate(&self, migrations: &[&str]) -> Result<()> {
        match self {
            AnyDb::Sqlite(d) => d.migrate(migrations).await,
            AnyDb::Postgres(d) => d.migrate(migrations).await,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            AnyDb::Sqlite(d) => d.kind(),
            AnyDb::Postgres(d) => d.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_read_the_same_in_postgres_words() {
        let m = "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL);
                 CREATE TABLE u (id INTEGER PRIMARY KEY, s TEXT)";
        let pg = pg_ddl(m);
        assert!(pg.contains("t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL)"), "{pg}");
        assert!(pg.contains("u (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, s TEXT)"), "{pg}");
        assert_eq!(
            pg_ddl("/*postgres ALTER TABLE t SET (fillfactor = 70) postgres*/"),
            "ALTER TABLE t SET (fillfactor = 70)"
        );
    }
}
