//! PostgreSQL for a cluster of cloud nodes (`--store postgres://…`):
//! tokio-postgres, asynchronous all the way.
//!
//! Plain statements go over a few shared connections, pipelined (many
//! tasks' statements in flight on one connection at once), each keeping
//! its prepared statements, so a statement costs one round trip after its
//! first use. A transaction takes a connection of its own for its length.
//! A connection that broke is opened again on next use.

use crate::sql::{pg_ddl, Backend, Outcome, Row, Stmt, Val};
use crate::store::{Result, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

/// Shared (pipelined) connections.
const SHARED: usize = 4;
/// Connections for transactions.
const DEDICATED: usize = 4;
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Db(format!("postgres: {} ({})", d.message(), d.code().code())),
        None => StoreError::Db(format!("postgres: {e}")),
    }
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_string().as_str().to_sql(ty, out),
            },
            Val::Text(t) => t.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn to_row(r: &tokio_postgres::Row) -> Result<Row> {
    let mut vals = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let bad = |e: tokio_postgres::Error| StoreError::Db(format!("column {}: {e}", c.name()));
        let v = match *c.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i).map_err(bad)?.map(Val::Int),
            Type::INT4 => r.try_get::<_, Option<i32>>(i).map_err(bad)?.map(|v| Val::Int(v.into())),
            Type::INT2 => r.try_get::<_, Option<i16>>(i).map_err(bad)?.map(|v| Val::Int(v.into())),
            Type::BOOL => r.try_get::<_, Option<bool>>(i).map_err(bad)?.map(|v| Val::Int(v.into())),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                r.try_get::<_, Option<String>>(i).map_err(bad)?.map(Val::Text)
            }
            ref t => return Err(StoreError::Db(format!("column {}: type {t} is not one the store reads", c.name()))),
        };
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

/// A statement's parameters as tokio-postgres takes them.
fn params(args: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    prepared: Mutex<HashMap<String, Statement>>,
}

impl Conn {
    async fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await.map_err(db_error)?;
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    async fn query(&self, sql: &str, args: &[Val]) -> Result<Vec<Row>> {
        let st = self.statement(sql).await?;
        let rows = self.client.query(&st, &params(args)).await.map_err(db_error)?;
        rows.iter().map(to_row).collect()
    }

    async fn execute(&self, sql: &str, args: &[Val]) -> Result<u64> {
        let st = self.statement(sql).await?;
        self.client.execute(&st, &params(args)).await.map_err(db_error)
    }

    /// A statement in a transaction: rows when it returns any, else the count.
    async fn run(&self, s: &Stmt) -> Result<Outcome> {
        let st = self.statement(&s.sql).await?;
        if st.columns().is_empty() {
            let changed = self.client.execute(&st, &params(&s.args)).await.map_err(db_error)?;
            Ok(Outcome { rows: Vec::new(), changed })
        } else {
            let rows = self.client.query(&st, &params(&s.args)).await.map_err(db_error)?;
            let rows: Vec<Row> = rows.iter().map(to_row).collect::<Result<_>>()?;
            Ok(Outcome { changed: rows.len() as u64, rows })
        }
    }
}

/// A PostgreSQL database.
pub struct Postgres {
    cfg: tokio_postgres::Config,
    /// What logs may show of the URL (no password).
    shown: String,
    shared: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    idle: Mutex<Vec<Conn>>,
    dedicated: tokio::sync::Semaphore,
}

impl Postgres {
    /// Parses `postgres://user[:password]@host[:port]/db` and opens one
    /// connection to prove it works.
    pub async fn connect(url: &str) -> Result<Postgres> {
        let mut cfg: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Db(format!("store URL {url:?} is not a PostgreSQL URL: {e}")))?;
        cfg.connect_timeout(CONNECT_TIMEOUT).application_name("ivr-cloud");
        let shown = format!(
            "postgres://{}@{:?}/{}",
            cfg.get_user().unwrap_or("?"),
            cfg.get_hosts().first().map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            }),
            cfg.get_dbname().unwrap_or("?")
        );
        let pg = Postgres {
            cfg,
            shown,
            shared: (0..SHARED).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            dedicated: tokio::sync::Semaphore::new(DEDICATED),
        };
        let first = pg.open().await?;
        *pg.shared[0].lock().await = Some(Arc::new(first));
        Ok(pg)
    }

    async fn open(&self) -> Result<Conn> {
        let (client, conn) = self
            .cfg
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::Db(format!("cannot connect to {}: {}", self.shown, db_error(e))))?;
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(store = %shown, error = %e, "store: a PostgreSQL connection ended");
            }
        });
        Ok(Conn { client, prepared: Mutex::default() })
    }

    /// A shared connection, round robin, opened again if it broke.
    async fn shared(&self) -> Result<Arc<Conn>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        let mut slot = self.shared[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.open().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn with_dedicated<T>(&self, f: impl AsyncFnOnce(&Conn) -> Result<T>) -> Result<T> {
        let _permit = self.dedicated.acquire().await.map_err(|_| StoreError::Db("store closed".into()))?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle.filter(|c| !c.client.is_closed()) {
            Some(c) => c,
            None => self.open().await?,
        };
        let r = f(&conn).await;
        if r.is_err() && !conn.client.is_closed() {
            // Whatever state it was left in ends here.
            let _ = conn.client.batch_execute("ROLLBACK").await;
        }
        if !conn.client.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
        r
    }
}

impl Backend for Postgres {
    async fn query(&self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>> {
        self.shared().await?.query(sql, &args).await
    }

    async fn execute(&self, sql: &str, args: Vec<Val>) -> Result<u64> {
        self.shared().await?.execute(sql, &args).await
    }

    async fn transaction(&self, stmts: Vec<Stmt>) -> Result<Vec<Outcome>> {
        self.with_dedicated(async |c: &Conn| {
            c.client.batch_execute("BEGIN").await.map_err(db_error)?;
            let mut out = Vec::with_capacity(stmts.len());
            for s in &stmts {
                let o = if s.due(&out) { c.run(s).await? } else { Outcome::default() };
                out.push(o);
            }
            c.client.batch_execute("COMMIT").await.map_err(db_error)?;
            Ok(out)
        })
        .await
    }

    async fn migrate(&self, migrations: &[&str]) -> Result<()> {
        let shown = self.shown.clone();
        self.with_dedicated(async |c: &Conn| {
            // One node migrates at a time; the others wait, then find
            // nothing left to do.
            c.client
                .batch_execute(
                    "BEGIN; SELECT pg_advisory_xact_lock(7734120);
                     CREATE TABLE IF NOT EXISTS ivr_schema (version BIGINT NOT NULL)",
                )
                .await
                .map_err(db_error)?;
            let v = c.client.query_opt("SELECT version FROM ivr_schema", &[]).await.map_err(db_error)?;
            let version: i64 = match v {
                Some(r) => r.get(0),
                None => {
                    c.client.batch_execute("INSERT INTO ivr_schema VALUES (0)").await.map_err(db_error)?;
                    0
                }
            };
            if version as usize > migrations.len() {
                return Err(StoreError::Db(format!(
                    "{shown} has schema version {version}, newer than this ivr knows ({}): run the newer release",
                    migrations.len()
                )));
            }
            for (i, m) in migrations.iter().enumerate().skip(version as usize) {
                c.client
                    .batch_execute(&pg_ddl(m))
                    .await
                    .map_err(|e| StoreError::Db(format!("migration {} on {shown}: {}", i + 1, db_error(e))))?;
                c.client
                    .batch_execute(&format!("UPDATE ivr_schema SET version = {}", i + 1))
                    .await
                    .map_err(db_error)?;
                tracing::info!(migration = i + 1, store = %shown, "store: migrated");
            }
            c.client.batch_execute("COMMIT").await.map_err(db_error)?;
            Ok(())
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}
