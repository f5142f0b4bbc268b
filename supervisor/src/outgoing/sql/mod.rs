//! A SQL connection's client: one sqlx pool per connection (PostgreSQL, MySQL/MariaDB or
//! SQLite, typed per engine), shared by every worker of this server, answering the workers'
//! `out.sql` calls (ipc-protocol/SPEC.md): `execute`, transactions (`begin`, `commit`,
//! `rollback`) and streams (`stream`, `next`, `close`). docs/OUTGOING.md.
//!
//! The pool is created lazily: no connection until the first call, so a server starts while
//! its database is down. A definition that cannot be built (a bad URL, a sealed password that
//! does not open) does not fail the server: the client keeps the reason and every call fails
//! `connect` with it.

pub mod binds;
pub mod engines;
pub mod sessions;
pub mod values;

use bytes::Bytes;
use futures_util::TryStreamExt;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Database, Either, Executor, Pool, Row, Statement};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::{ConnStats, PingOutcome};
use crate::lifecycle::ops::OpReply;
use crate::metrics::histogram::DurationHistogram;
use crate::model::outgoing::{SqlConn, SqlEngine};
use crate::secrets::Key;
use binds::{Style, rewrite};
use engines::Engine;
use sessions::{Held, Msg, Sessions, StreamRx, TxConn};
use values::{Col, Kind, Param, write_header};

/// Why a call failed: SPEC.md's `error` codes of `out.sql`. Every message names the
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Invalid(String),
    #[error("{message}")]
    Sql {
        message: String,
        code: Option<String>,
    },
    #[error("{0}")]
    PoolFull(String),
    #[error("{0}")]
    Timeout(String),
    /// The client-side limit passed: the connection is closed, not returned.
    #[error("{0}")]
    Backstop(String),
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    TooLarge(String),
}

impl Failure {
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Invalid(_) => "invalid",
            Failure::Sql { .. } => "sql",
            Failure::PoolFull(_) => "pool_full",
            Failure::Timeout(_) | Failure::Backstop(_) => "timeout",
            Failure::Connect(_) => "connect",
            Failure::Io(_) => "io",
            Failure::TooLarge(_) => "too_large",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Failure::Invalid(_) | Failure::Sql { .. } => 400,
            Failure::PoolFull(_) => 503,
            Failure::Timeout(_) | Failure::Backstop(_) => 504,
            Failure::Connect(_) | Failure::Io(_) | Failure::TooLarge(_) => 502,
        }
    }

    fn reply(&self) -> OpReply {
        let mut r = OpReply::error(self.status(), self.code(), &self.to_string());
        if let Failure::Sql {
            message,
            code: Some(code),
        } = self
        {
            r.body = Bytes::from(serde_json::json!({ "error": message, "code": code }).to_string());
        }
        r
    }
}

/// Why a definition could not be turned into a pool.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error("the password does not open: {0}")]
    Password(#[from] crate::secrets::SecretError),
    #[error("bad url: {0}")]
    Url(sqlx::Error),
    #[error("the url must start with {0}")]
    Scheme(&'static str),
    #[error(
        "the server's environment sets {0}, which the PostgreSQL driver would use for this \
         connection (its credentials sent to this host): unset it, or give {1} in the url"
    )]
    Environment(&'static str, &'static str),
}

/// The PostgreSQL driver's options from `url` and the sealed password alone. The driver
/// starts from the server process's environment (`PGPASSWORD`, `PGUSER`, `PGPORT`,
/// `PGDATABASE`, `PGSSLMODE`, …) and `~/.pgpass`; each is overridden here by the URL's value
/// or a neutral default (no password, port 5432, database named as the user, sslmode
/// prefer), so that a connection never borrows the server's own credentials. Those that
/// cannot be overridden (client certificate and key, root certificate, options; the user
/// when the URL names none) refuse the connection while set.
fn pg_options(url: &str, password: Option<&str>) -> Result<PgConnectOptions, BuildError> {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
    let query: Vec<String> = rest
        .split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .map(crate::model::outgoing::percent_decoded)
        .collect();
    let in_query = |keys: &[&str]| query.iter().any(|k| keys.contains(&k.as_str()));
    let has_user = !userinfo.is_empty() || in_query(&["user"]);
    let has_port = match hostport.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .is_some_and(|(_, after)| after.starts_with(':')),
        None => hostport.contains(':'),
    } || in_query(&["port"]);
    let has_db = rest
        .split_once('/')
        .is_some_and(|(_, p)| !p.split('?').next().unwrap_or("").is_empty())
        || in_query(&["dbname"]);
    let unclearable: [(&str, &[&str], &str); 5] = [
        ("PGSSLCERT", &["sslcert", "ssl-cert"], "sslcert"),
        ("PGSSLKEY", &["sslkey", "ssl-key"], "sslkey"),
        (
            "PGSSLROOTCERT",
            &["sslrootcert", "ssl-root-cert", "ssl-ca"],
            "sslrootcert",
        ),
        ("PGOPTIONS", &[], "no options (it is added to the url's)"),
        ("PGUSER", &["user"], "the user"),
    ];
    for (var, keys, give) in unclearable {
        let given = if var == "PGUSER" {
            has_user
        } else {
            in_query(keys)
        };
        if !given && std::env::var_os(var).is_some() {
            return Err(BuildError::Environment(var, give));
        }
    }
    let mut o = PgConnectOptions::from_str(url).map_err(BuildError::Url)?;
    // Always set: PGPASSWORD and ~/.pgpass are never used.
    o = o.password(password.unwrap_or(""));
    if !has_port {
        o = o.port(5432);
    }
    if !has_db {
        let user = o.get_username().to_owned();
        o = o.database(&user);
    }
    if !in_query(&["sslmode", "ssl-mode"]) {
        o = o.ssl_mode(sqlx::postgres::PgSslMode::Prefer);
    }
    Ok(o)
}

/// The pool, per engine.
#[derive(Debug, Clone)]
enum Pools {
    Pg(Pool<Postgres>),
    My(Pool<MySql>),
    Lite(Pool<Sqlite>),
}

impl Pools {
    fn size_idle(&self) -> (u32, u32) {
        match self {
            Pools::Pg(p) => (p.size(), p.num_idle() as u32),
            Pools::My(p) => (p.size(), p.num_idle() as u32),
            Pools::Lite(p) => (p.size(), p.num_idle() as u32),
        }
    }
}

/// What a connection's calls count.
#[derive(Debug, Default)]
struct Figures {
    calls: AtomicU64,
    errors: AtomicU64,
    waiting: AtomicU32,
    latency: DurationHistogram,
}

#[derive(Debug)]
struct Inner {
    def: SqlConn,
    /// `SQL connection "name"`, the start of every message.
    who: String,
    /// Built at once inside a runtime, else at the first call (sqlx spawns its pool's
    /// maintenance on the runtime): the reason when it cannot be built.
    pool: std::sync::OnceLock<Result<Pools, String>>,
    key: Arc<Key>,
    figures: Figures,
    sessions: Sessions,
    /// The last probe of why connecting fails, and when (see `acquire_failure`).
    probe: tokio::sync::Mutex<Option<(Instant, String)>>,
    /// The client-side limit of one database operation: a little above the statement
    /// timeout, for what the server's own limit does not cover.
    backstop: Duration,
}

/// One SQL connection's client. Dropping it (a live edit or a delete) drops its pool once
/// the calls in flight finish; its open transactions are rolled back.
#[derive(Debug)]
pub struct SqlClient {
    def: SqlConn,
    inner: Arc<Inner>,
    /// Set once the idle-session reaper runs (at once inside a runtime, else at the first
    /// call: sessions only come from calls).
    reaper: std::sync::OnceLock<()>,
}

/// How long the reason a connect probe found answers other failing callers.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// The call's meta, as `out.sql` sends it.
#[derive(serde::Deserialize)]
struct Meta {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    tx: Option<u64>,
    #[serde(default)]
    stream: Option<u64>,
}

/// The call's body.
#[derive(serde::Deserialize, Default)]
struct Body {
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    params: Option<serde_json::Value>,
    #[serde(default)]
    batch: Option<u64>,
}

fn build(def: &SqlConn, key: &Key) -> Result<Pools, BuildError> {
    let password = match &def.sealed {
        Some(s) => Some(key.open(&SqlConn::seal_name(&def.name), s)?),
        None => None,
    };
    let wait = Duration::from_millis(def.pool_wait_ms);
    let stmt_ms = def.statement_timeout_ms;
    Ok(match def.engine {
        SqlEngine::Postgresql => {
            if !(def.url.starts_with("postgres://") || def.url.starts_with("postgresql://")) {
                return Err(BuildError::Scheme("postgres:// or postgresql://"));
            }
            let o = pg_options(&def.url, password.as_ref().map(|p| p.expose()))?;
            let o = o
                .application_name(&format!("oxbus:{}", def.name))
                .options([("statement_timeout", stmt_ms.to_string())])
                .disable_statement_logging();
            Pools::Pg(
                PgPoolOptions::new()
                    .max_connections(def.pool_max)
                    .min_connections(def.pool_min)
                    .acquire_timeout(wait)
                    .connect_lazy_with(o),
            )
        }
        SqlEngine::Mysql => {
            if !(def.url.starts_with("mysql://") || def.url.starts_with("mariadb://")) {
                return Err(BuildError::Scheme("mysql:// or mariadb://"));
            }
            let url = def.url.replacen("mariadb://", "mysql://", 1);
            let mut o = MySqlConnectOptions::from_str(&url).map_err(BuildError::Url)?;
            if let Some(p) = &password {
                o = o.password(p.expose());
            }
            let o = o.disable_statement_logging();
            Pools::My(
                MySqlPoolOptions::new()
                    .max_connections(def.pool_max)
                    .min_connections(def.pool_min)
                    .acquire_timeout(wait)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // MariaDB: max_statement_time (seconds); MySQL: max_execution_time
                            // (milliseconds, SELECT only). Whichever the server accepts.
                            let secs = stmt_ms as f64 / 1000.0;
                            let maria = format!("SET SESSION max_statement_time = {secs}");
                            if sqlx::raw_sql(AssertSqlSafe(maria))
                                .execute(&mut *conn)
                                .await
                                .is_err()
                            {
                                let my = format!("SET SESSION max_execution_time = {stmt_ms}");
                                let _ = sqlx::raw_sql(AssertSqlSafe(my)).execute(&mut *conn).await;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy_with(o),
            )
        }
        SqlEngine::Sqlite => {
            if !def.url.starts_with("sqlite:") {
                return Err(BuildError::Scheme("sqlite:"));
            }
            let o = SqliteConnectOptions::from_str(&def.url)
                .map_err(BuildError::Url)?
                .busy_timeout(Duration::from_millis(if stmt_ms == 0 {
                    def.pool_wait_ms
                } else {
                    stmt_ms
                }))
                .disable_statement_logging();
            Pools::Lite(
                SqlitePoolOptions::new()
                    .max_connections(def.pool_max)
                    .min_connections(def.pool_min)
                    .acquire_timeout(wait)
                    .connect_lazy_with(o),
            )
        }
    })
}

impl SqlClient {
    pub fn new(def: SqlConn, key: &Arc<Key>, _metrics: &Arc<crate::metrics::Metrics>) -> Self {
        let who = format!("SQL connection {:?}", def.name);
        let pool = std::sync::OnceLock::new();
        let stmt = Duration::from_millis(def.statement_timeout_ms);
        // statement_timeout_ms 0: no limit (as the engines read 0), so no backstop either.
        let backstop = if def.statement_timeout_ms == 0 {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            stmt + (stmt / 10).max(Duration::from_millis(500))
        };
        let inner = Arc::new(Inner {
            def: def.clone(),
            who,
            pool,
            key: key.clone(),
            figures: Figures::default(),
            sessions: Sessions::default(),
            probe: tokio::sync::Mutex::new(None),
            backstop,
        });
        let reaper = std::sync::OnceLock::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            inner.pools();
            spawn_reaper(&inner);
            let _ = reaper.set(());
        }
        SqlClient { def, inner, reaper }
    }

    pub fn def(&self) -> &SqlConn {
        &self.def
    }

    /// Answers one `out.sql` call of worker `worker`.
    pub async fn call(&self, worker: u32, raw_meta: &[u8], body: Bytes) -> OpReply {
        let start = Instant::now();
        self.reaper.get_or_init(|| spawn_reaper(&self.inner));
        let f = &self.inner.figures;
        let out = self.inner.dispatch(worker, raw_meta, &body).await;
        f.latency.observe(start.elapsed());
        match out {
            Ok(json) => {
                f.calls.fetch_add(1, Ordering::Relaxed);
                let mut r = OpReply::json(200, &serde_json::Value::Null);
                r.body = Bytes::from(json);
                r
            }
            Err(e) => {
                f.errors.fetch_add(1, Ordering::Relaxed);
                e.reply()
            }
        }
    }

    /// `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> PingOutcome {
        let start = Instant::now();
        let r = self.inner.ping().await;
        let took_ms = start.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(()) => PingOutcome {
                ok: true,
                took_ms,
                detail: format!("SELECT 1 in {took_ms:.1} ms"),
            },
            Err(e) => PingOutcome {
                ok: false,
                took_ms,
                detail: e.to_string(),
            },
        }
    }

    pub fn stats(&self) -> ConnStats {
        let f = &self.inner.figures;
        let (buckets, sum) = f.latency.snapshot();
        let (size, idle) = match self.inner.pool.get() {
            Some(Ok(p)) => p.size_idle(),
            _ => (0, 0),
        };
        ConnStats {
            name: self.def.name.clone(),
            calls: f.calls.load(Ordering::Relaxed),
            errors: f.errors.load(Ordering::Relaxed),
            latency_count: buckets.iter().sum(),
            latency_sum_s: sum,
            latency_buckets: buckets,
            pool_size: self.def.pool_max,
            in_use: size.saturating_sub(idle),
            idle,
            waiting: f.waiting.load(Ordering::Relaxed),
        }
    }

    /// Worker `worker` is gone: its transactions are rolled back, its streams closed.
    pub fn worker_gone(&self, worker: u32) {
        self.inner.sessions.mark_gone(worker);
        sessions::roll_back_all(self.inner.sessions.take(Some(worker), None));
    }

    /// Open transactions and streams.
    pub fn open_sessions(&self) -> (usize, usize) {
        self.inner.sessions.open()
    }
}

impl Drop for SqlClient {
    fn drop(&mut self) {
        sessions::roll_back_all(self.inner.sessions.take(None, None));
    }
}

/// Rolls back idle transactions and closes idle streams, until the client is dropped.
fn spawn_reaper(inner: &Arc<Inner>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let idle = inner.def.session_idle_ms;
    let period = Duration::from_millis((idle / 4).clamp(20, 5_000));
    let weak: Weak<Inner> = Arc::downgrade(inner);
    rt.spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(inner) = weak.upgrade() else { return };
            sessions::roll_back_all(inner.sessions.take(None, Some(idle)));
        }
    });
}

/// Access to an engine's pool and transaction connection from the engine-neutral types.
trait Driver: Engine
where
    for<'c> &'c mut Self::Connection: Executor<'c, Database = Self>,
{
    fn pool(p: &Pools) -> Option<&Pool<Self>>;
    fn tx_conn(t: &mut TxConn) -> Option<&mut Self::Connection>;
    fn wrap(t: Held<Self>) -> TxConn;
    /// Whether an untyped NULL may fail to be inferred (PostgreSQL's 42P18) and be retried
    /// typed.
    const UNTYPED_NULLS: bool = false;
    /// Fills in what a column's declared type left open, from the first row (SQLite).
    fn refine(_row: &Self::Row, _cols: &mut [Col]) {}
}

impl Driver for Postgres {
    fn pool(p: &Pools) -> Option<&Pool<Self>> {
        match p {
            Pools::Pg(p) => Some(p),
            _ => None,
        }
    }
    fn tx_conn(t: &mut TxConn) -> Option<&mut Self::Connection> {
        match t {
            TxConn::Pg(t) => Some(&mut *t.conn),
            _ => None,
        }
    }
    fn wrap(t: Held<Self>) -> TxConn {
        TxConn::Pg(t)
    }
    const UNTYPED_NULLS: bool = true;
}

impl Driver for MySql {
    fn pool(p: &Pools) -> Option<&Pool<Self>> {
        match p {
            Pools::My(p) => Some(p),
            _ => None,
        }
    }
    fn tx_conn(t: &mut TxConn) -> Option<&mut Self::Connection> {
        match t {
            TxConn::My(t) => Some(&mut *t.conn),
            _ => None,
        }
    }
    fn wrap(t: Held<Self>) -> TxConn {
        TxConn::My(t)
    }
}

impl Driver for Sqlite {
    fn pool(p: &Pools) -> Option<&Pool<Self>> {
        match p {
            Pools::Lite(p) => Some(p),
            _ => None,
        }
    }
    fn tx_conn(t: &mut TxConn) -> Option<&mut Self::Connection> {
        match t {
            TxConn::Lite(t) => Some(&mut *t.conn),
            _ => None,
        }
    }
    fn wrap(t: Held<Self>) -> TxConn {
        TxConn::Lite(t)
    }
    fn refine(row: &Self::Row, cols: &mut [Col]) {
        for (i, c) in cols.iter_mut().enumerate() {
            if let Kind::Dynamic(declared) = c.kind {
                c.kind = Kind::Dynamic(engines::sqlite_code(row, i, declared));
            }
        }
    }
}

/// What a finished `execute` collected.
struct Collected {
    cols: Vec<Col>,
    rows: Vec<u8>,
    nrows: u64,
    affected: u64,
    last_id: Option<i64>,
}

/// Why collecting stopped.
enum Stop {
    Db(sqlx::Error),
    Invalid(String),
    TooMany,
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Stop {
        Stop::Db(e)
    }
}

/// Runs one statement on `conn` and collects at most `max_rows` rows.
async fn collect<DB: Driver>(
    conn: &mut DB::Connection,
    text: Arc<String>,
    args: DB::Arguments,
    max_rows: u64,
) -> Result<Collected, Stop>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut c = Collected {
        cols: Vec::new(),
        rows: Vec::with_capacity(256),
        nrows: 0,
        affected: 0,
        last_id: None,
    };
    let mut header = false;
    {
        let q = sqlx::query_with(AssertSqlSafe(text.clone()), args);
        let mut s = (&mut *conn).fetch_many(q);
        while let Some(item) = s.try_next().await? {
            match item {
                Either::Left(r) => {
                    let (n, id) = DB::done(&r);
                    c.affected += n;
                    c.last_id = id.or(c.last_id);
                }
                Either::Right(row) => {
                    if !header {
                        c.cols = row
                            .columns()
                            .iter()
                            .map(DB::column)
                            .collect::<Result<_, _>>()
                            .map_err(Stop::Invalid)?;
                        DB::refine(&row, &mut c.cols);
                        header = true;
                    }
                    c.nrows += 1;
                    if c.nrows > max_rows {
                        return Err(Stop::TooMany);
                    }
                    write_row::<DB>(&row, &c.cols, &mut c.rows).map_err(Stop::Invalid)?;
                }
            }
        }
    }
    if !header {
        // No row: the columns from the statement sqlx just prepared (a cache hit).
        c.cols = columns_of::<DB>(conn, text).await?;
    }
    Ok(c)
}

async fn columns_of<DB: Driver>(
    conn: &mut DB::Connection,
    text: Arc<String>,
) -> Result<Vec<Col>, Stop>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let st = (&mut *conn)
        .prepare(sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(text)))
        .await?;
    let mut cols: Vec<Col> = st
        .columns()
        .iter()
        .map(DB::column)
        .collect::<Result<_, _>>()
        .map_err(Stop::Invalid)?;
    for c in &mut cols {
        if c.kind == Kind::Dynamic("") {
            c.kind = Kind::Dynamic("text");
        }
    }
    Ok(cols)
}

fn write_row<DB: Driver>(row: &DB::Row, cols: &[Col], out: &mut Vec<u8>) -> Result<(), String>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    if !out.is_empty() {
        out.push(b',');
    }
    out.push(b'[');
    for (i, col) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        DB::write_value(row, i, col, out)?;
    }
    out.push(b']');
    Ok(())
}

/// The statement's text and its parameters in order.
fn prepare_params<DB: Driver>(who: &str, body: Body) -> Result<(String, Vec<Param>), Failure>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let Some(sql) = body.sql else {
        return Err(Failure::Invalid(format!("{who}: the body has no \"sql\"")));
    };
    let bad = |n: String, e: String| Failure::Invalid(format!("{who}: parameter {n}: {e}"));
    match body.params {
        None | Some(serde_json::Value::Null) => Ok((sql, Vec::new())),
        Some(serde_json::Value::Array(items)) => {
            let params = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| Param::parse(v).map_err(|e| bad((i + 1).to_string(), e)))
                .collect::<Result<_, _>>()?;
            Ok((sql, params))
        }
        Some(serde_json::Value::Object(mut map)) => {
            let r = rewrite(&sql, DB::DIALECT);
            let mut params = Vec::with_capacity(r.names.len());
            for name in &r.names {
                let v = match DB::DIALECT.style() {
                    // `$n` numbers each name once: the value can move.
                    Style::Dollar => map.remove(name),
                    Style::Question => map.get(name).cloned(),
                };
                let Some(v) = v else {
                    return Err(Failure::Invalid(format!(
                        "{who}: no value for :{name} (params has {})",
                        if map.is_empty() {
                            "no other names".to_owned()
                        } else {
                            map.keys()
                                .map(|k| format!(":{k}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    )));
                };
                params.push(Param::parse(v).map_err(|e| bad(format!(":{name}"), e))?);
            }
            Ok((r.sql, params))
        }
        Some(_) => Err(Failure::Invalid(format!(
            "{who}: params must be a list, an object or null"
        ))),
    }
}

impl Inner {
    fn pools(&self) -> &Result<Pools, String> {
        self.pool
            .get_or_init(|| build(&self.def, &self.key).map_err(|e| format!("{}: {e}", self.who)))
    }

    async fn dispatch(
        &self,
        worker: u32,
        raw_meta: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let meta: Meta = serde_json::from_slice(raw_meta)
            .map_err(|e| Failure::Invalid(format!("{}: bad meta: {e}", self.who)))?;
        let body: Body = if body.is_empty() {
            Body::default()
        } else {
            serde_json::from_slice(body)
                .map_err(|e| Failure::Invalid(format!("{}: bad body: {e}", self.who)))?
        };
        let pool = self
            .pools()
            .as_ref()
            .map_err(|e| Failure::Connect(e.clone()))?;
        match pool {
            Pools::Pg(_) => self.act::<Postgres>(worker, meta, body).await,
            Pools::My(_) => self.act::<MySql>(worker, meta, body).await,
            Pools::Lite(_) => self.act::<Sqlite>(worker, meta, body).await,
        }
    }

    fn pool<DB: Driver>(&self) -> Result<&Pool<DB>, Failure>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        self.pools()
            .as_ref()
            .ok()
            .and_then(DB::pool)
            .ok_or_else(|| Failure::Io(format!("{}: engine mismatch", self.who)))
    }

    async fn act<DB: Driver>(&self, worker: u32, meta: Meta, body: Body) -> Result<Vec<u8>, Failure>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        let action = meta.action.as_deref().unwrap_or("");
        match action {
            "execute" => {
                let (sql, params) = prepare_params::<DB>(&self.who, body)?;
                self.allowed::<DB>(&sql, meta.tx.is_some())?;
                match meta.tx {
                    None => {
                        let mut conn = self.acquire::<DB>().await?;
                        let r = self.execute::<DB>(&mut conn, sql, &params, true).await;
                        // After too_large the rest of the rows are unread: not worth draining.
                        if matches!(
                            r,
                            Err(Failure::Backstop(_) | Failure::Io(_) | Failure::TooLarge(_))
                        ) {
                            conn.close_on_drop();
                        }
                        r
                    }
                    Some(id) => {
                        let slot = self.tx_slot_free(worker, id)?;
                        let mut guard = slot.conn.lock().await;
                        let r = match guard.as_mut().and_then(DB::tx_conn) {
                            Some(conn) => self.execute::<DB>(conn, sql, &params, false).await,
                            None => Err(self.unknown_tx(id)),
                        };
                        self.sessions.touch_tx(&slot);
                        if matches!(r, Err(Failure::Backstop(_)) | Err(Failure::Io(_))) {
                            // The connection may be mid-statement: the transaction ends.
                            self.sessions.remove_tx(id);
                            drop(guard.take());
                        }
                        r
                    }
                }
            }
            "begin" => {
                let mut conn = self.acquire::<DB>().await?;
                let begun =
                    tokio::time::timeout(self.backstop, sqlx::raw_sql("BEGIN").execute(&mut *conn))
                        .await;
                match begun {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        conn.close_on_drop();
                        return Err(self.db_failure(e));
                    }
                    Err(_) => {
                        // BEGIN may still be on its way: the connection is not reused.
                        conn.close_on_drop();
                        return Err(self.backstop_failure());
                    }
                }
                match self.sessions.add_tx(worker, DB::wrap(Held::begun(conn))) {
                    Ok(id) => Ok(format!("{{\"tx\":{id}}}").into_bytes()),
                    Err(conn) => {
                        let _ = tokio::time::timeout(self.backstop, conn.rollback()).await;
                        Err(self.worker_gone_failure(worker))
                    }
                }
            }
            "commit" | "rollback" => {
                let Some(id) = meta.tx else {
                    return Err(Failure::Invalid(format!(
                        "{}: {action} needs \"tx\" in the meta",
                        self.who
                    )));
                };
                let slot = self.tx_slot(worker, id)?;
                // A stream still reading inside it ends first (its task then lets go).
                if let Some(stream) = self.sessions.stream_in_tx(id) {
                    self.sessions.remove_stream(stream);
                }
                let conn = slot.conn.lock().await.take();
                self.sessions.remove_tx(id);
                let Some(conn) = conn else {
                    return Err(self.unknown_tx(id));
                };
                let fut = async {
                    if action == "commit" {
                        conn.commit().await
                    } else {
                        conn.rollback().await
                    }
                };
                match tokio::time::timeout(self.backstop, fut).await {
                    Ok(Ok(())) => Ok(b"{}".to_vec()),
                    Ok(Err(e)) => Err(self.db_failure(e)),
                    Err(_) => Err(self.backstop_failure()),
                }
            }
            "stream" => {
                let batch = body.batch.unwrap_or(1000).clamp(1, 100_000) as usize;
                let (sql, params) = prepare_params::<DB>(&self.who, body)?;
                self.allowed::<DB>(&sql, meta.tx.is_some())?;
                let (args, sig) = DB::args(&params, false)
                    .map_err(|e| Failure::Invalid(format!("{}: {e}", self.who)))?;
                let text = Arc::new(if sig.is_empty() {
                    sql
                } else {
                    format!("{sig}{sql}")
                });
                let (tx, rx) = mpsc::channel(batch.min(1024));
                match meta.tx {
                    None => {
                        let conn = self.acquire::<DB>().await?;
                        tokio::spawn(stream_task::<DB>(
                            Holder::Pooled(conn),
                            text,
                            args,
                            tx,
                            self.who.clone(),
                        ));
                    }
                    Some(id) => {
                        let slot = self.tx_slot_free(worker, id)?;
                        let guard = slot.conn.clone().lock_owned().await;
                        tokio::spawn(stream_task::<DB>(
                            Holder::Tx(guard),
                            text,
                            args,
                            tx,
                            self.who.clone(),
                        ));
                    }
                }
                let Some((id, slot)) = self.sessions.add_stream(
                    worker,
                    meta.tx,
                    StreamRx {
                        rx,
                        pending: None,
                        batch,
                    },
                ) else {
                    return Err(self.worker_gone_failure(worker));
                };
                let mut guard = slot.rx.lock().await;
                let first = match tokio::time::timeout(self.backstop, guard.rx.recv()).await {
                    Ok(Some(Msg::Header(cols))) => cols,
                    Ok(Some(Msg::Failed(f))) => {
                        self.sessions.remove_stream(id);
                        return Err(f);
                    }
                    Ok(_) => {
                        self.sessions.remove_stream(id);
                        return Err(Failure::Io(format!(
                            "{}: the stream ended before its columns",
                            self.who
                        )));
                    }
                    Err(_) => {
                        self.sessions.remove_stream(id);
                        return Err(self.backstop_failure());
                    }
                };
                let mut out = Vec::with_capacity(1024);
                out.extend_from_slice(format!("{{\"stream\":{id},").as_bytes());
                write_header(&first, &mut out);
                let r = self.batch(&mut guard, &mut out).await;
                drop(guard);
                self.batch_done(id, &slot, r, out)
            }
            "next" | "close" => {
                let Some(id) = meta.stream else {
                    return Err(Failure::Invalid(format!(
                        "{}: {action} needs \"stream\" in the meta",
                        self.who
                    )));
                };
                let slot = self.sessions.stream(worker, id).ok_or_else(|| {
                    Failure::Invalid(format!(
                        "{}: unknown stream {id} (closed, ended, idle too long or another worker's)",
                        self.who
                    ))
                })?;
                if action == "close" {
                    self.sessions.remove_stream(id);
                    return Ok(b"{}".to_vec());
                }
                let mut guard = slot.rx.lock().await;
                let mut out = Vec::with_capacity(1024);
                out.push(b'{');
                let r = self.batch(&mut guard, &mut out).await;
                drop(guard);
                self.batch_done(id, &slot, r, out)
            }
            other => Err(Failure::Invalid(format!(
                "{}: unknown action {other:?} (execute, begin, commit, rollback, stream, next, close)",
                self.who
            ))),
        }
    }

    /// Reads the next batch of a stream into `out` as `"rows":[…],"done":B}` (after `out`'s
    /// opening); returns whether the stream ended.
    async fn batch(&self, s: &mut StreamRx, out: &mut Vec<u8>) -> Result<bool, Failure> {
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        out.extend_from_slice(b"\"rows\":[");
        let mut n = 0;
        let mut done = false;
        loop {
            let msg = match s.pending.take() {
                Some(m) => Some(m),
                None if n == s.batch => {
                    // A full batch: the stream's end may already be waiting.
                    match s.rx.try_recv() {
                        Ok(m) => {
                            if matches!(m, Msg::Row(_)) {
                                s.pending = Some(m);
                                break;
                            }
                            Some(m)
                        }
                        Err(_) => break,
                    }
                }
                None => match tokio::time::timeout(self.backstop, s.rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => return Err(self.backstop_failure()),
                },
            };
            match msg {
                Some(Msg::Row(r)) => {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&r);
                    n += 1;
                }
                Some(Msg::Failed(f)) => return Err(f),
                Some(Msg::Header(_)) => {}
                Some(Msg::Done) => {
                    done = true;
                    break;
                }
                None => {
                    return Err(Failure::Io(format!(
                        "{}: the stream's reader stopped before the end of the rows",
                        self.who
                    )));
                }
            }
        }
        out.extend_from_slice(format!("],\"done\":{done}}}").as_bytes());
        Ok(done)
    }

    fn tx_slot(&self, worker: u32, id: u64) -> Result<Arc<sessions::TxSlot>, Failure> {
        self.sessions
            .tx(worker, id)
            .ok_or_else(|| self.unknown_tx(id))
    }

    /// A transaction for a statement: not while a stream reads inside it (the stream holds
    /// its connection until it is read to the end or closed).
    fn tx_slot_free(&self, worker: u32, id: u64) -> Result<Arc<sessions::TxSlot>, Failure> {
        let slot = self.tx_slot(worker, id)?;
        match self.sessions.stream_in_tx(id) {
            Some(stream) => Err(Failure::Invalid(format!(
                "{}: stream {stream} of tx {id} is open: read it to the end or close it first",
                self.who
            ))),
            None => Ok(slot),
        }
    }

    /// Refuses what would leak state through the pool (binds.rs [`binds::refused`]).
    fn allowed<DB: Driver>(&self, sql: &str, in_tx: bool) -> Result<(), Failure>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        match binds::refused(sql, DB::DIALECT, in_tx) {
            Some(why) => Err(Failure::Invalid(format!("{}: {why}", self.who))),
            None => Ok(()),
        }
    }

    fn worker_gone_failure(&self, worker: u32) -> Failure {
        Failure::Io(format!(
            "{}: worker {worker} is gone: its new session was ended at once",
            self.who
        ))
    }

    fn unknown_tx(&self, id: u64) -> Failure {
        Failure::Invalid(format!(
            "{}: unknown tx {id} (committed, rolled back, idle too long or another worker's)",
            self.who
        ))
    }

    /// Runs one statement on `conn` and renders its result.
    async fn execute<DB: Driver>(
        &self,
        conn: &mut DB::Connection,
        sql: String,
        params: &[Param],
        may_retry: bool,
    ) -> Result<Vec<u8>, Failure>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        let max = self.def.max_rows;
        let mut typed_nulls = false;
        let sql = Arc::new(sql);
        loop {
            let (args, sig) = DB::args(params, typed_nulls)
                .map_err(|e| Failure::Invalid(format!("{}: {e}", self.who)))?;
            let text = if sig.is_empty() {
                sql.clone()
            } else {
                Arc::new(format!("{sig}{sql}"))
            };
            let r = tokio::time::timeout(self.backstop, collect::<DB>(conn, text, args, max)).await;
            let c = match r {
                Err(_) => return Err(self.backstop_failure()),
                Ok(Ok(c)) => c,
                Ok(Err(Stop::TooMany)) => {
                    return Err(Failure::TooLarge(format!(
                        "{}: the statement returns more than max_rows ({max}) rows: use a stream",
                        self.who
                    )));
                }
                Ok(Err(Stop::Invalid(e))) => {
                    return Err(Failure::Invalid(format!("{}: {e}", self.who)));
                }
                Ok(Err(Stop::Db(sqlx::Error::Database(d))))
                    if DB::UNTYPED_NULLS
                        && may_retry
                        && !typed_nulls
                        && d.code().as_deref() == Some("42P18")
                        && params.iter().any(|p| matches!(p, Param::Null)) =>
                {
                    typed_nulls = true;
                    continue;
                }
                Ok(Err(Stop::Db(e))) => return Err(self.db_failure(e)),
            };
            let mut out = Vec::with_capacity(c.rows.len() + 128);
            out.push(b'{');
            write_header(&c.cols, &mut out);
            out.extend_from_slice(b",\"rows\":[");
            out.extend_from_slice(&c.rows);
            let rowcount = if c.cols.is_empty() {
                c.affected
            } else {
                c.nrows
            };
            out.extend_from_slice(
                format!("],\"rowcount\":{rowcount},\"last_insert_id\":").as_bytes(),
            );
            // SQLite's last insert rowid is the connection's: only an INSERT's own.
            let last_id = if DB::DIALECT == binds::Dialect::Sqlite
                && !(c.affected > 0 && binds::is_insert(&sql, DB::DIALECT))
            {
                None
            } else {
                c.last_id
            };
            match last_id {
                Some(id) => out.extend_from_slice(id.to_string().as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
            return Ok(out);
        }
    }

    /// A pooled connection, counting the caller as waiting meanwhile.
    async fn acquire<DB: Driver>(&self) -> Result<PoolConnection<DB>, Failure>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        let pool = self.pool::<DB>()?;
        if let Some(c) = pool.try_acquire() {
            return Ok(c);
        }
        self.figures.waiting.fetch_add(1, Ordering::Relaxed);
        let r = pool.acquire().await;
        self.figures.waiting.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(c) => Ok(c),
            Err(e) => Err(self.acquire_failure::<DB>(e).await),
        }
    }

    /// A failure to get a connection: `pool_full` when every connection was in use;
    /// otherwise connecting failed (sqlx retries a refused connect until the pool wait
    /// ends, then says only "timed out": one more attempt finds the reason).
    async fn acquire_failure<DB: Driver>(&self, e: sqlx::Error) -> Failure
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        let who = &self.who;
        let Ok(pool) = self.pool::<DB>() else {
            return Failure::Connect(format!("{who}: {e}"));
        };
        match e {
            sqlx::Error::PoolTimedOut if pool.size() >= self.def.pool_max => {
                Failure::PoolFull(format!(
                    "{who}: no free connection within {} ms (pool_max {}, all in use)",
                    self.def.pool_wait_ms, self.def.pool_max
                ))
            }
            sqlx::Error::PoolTimedOut => {
                // One probe at a time; the callers failing meanwhile (or within a second)
                // take its answer rather than open connections of their own.
                let mut last = self.probe.lock().await;
                let why = match &*last {
                    Some((at, why)) if at.elapsed() < PROBE_REUSE => why.clone(),
                    _ => {
                        let opts = pool.connect_options();
                        let why = match tokio::time::timeout(Duration::from_secs(2), opts.connect())
                            .await
                        {
                            Ok(Ok(c)) => {
                                let _ = sqlx::Connection::close(c).await;
                                "connecting took longer than the pool wait".to_owned()
                            }
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "connecting did not finish".to_owned(),
                        };
                        *last = Some((Instant::now(), why.clone()));
                        why
                    }
                };
                drop(last);
                Failure::Connect(format!(
                    "{who}: cannot connect to {} within {} ms: {why}",
                    self.address(),
                    self.def.pool_wait_ms
                ))
            }
            e => Failure::Connect(format!("{who}: cannot connect to {}: {e}", self.address())),
        }
    }

    /// The URL's host and port (or file), for messages.
    fn address(&self) -> String {
        let url = &self.def.url;
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
        rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
    }

    /// After a stream's batch: its session (and its transaction's) touched, the stream
    /// removed when it is done or failed; the answer.
    fn batch_done(
        &self,
        id: u64,
        slot: &sessions::StreamSlot,
        r: Result<bool, Failure>,
        out: Vec<u8>,
    ) -> Result<Vec<u8>, Failure> {
        self.sessions.touch_stream(slot);
        if let Some(tx) = slot.tx {
            self.sessions.touch_tx_id(tx);
        }
        if !matches!(r, Ok(false)) {
            self.sessions.remove_stream(id);
        }
        r.map(|_| out)
    }

    fn backstop_failure(&self) -> Failure {
        Failure::Backstop(format!(
            "{}: no answer within {} ms (statement_timeout_ms {}): the connection was closed",
            self.who,
            self.backstop.as_millis(),
            self.def.statement_timeout_ms
        ))
    }

    /// A failure of the database after a connection was obtained.
    fn db_failure(&self, e: sqlx::Error) -> Failure {
        let who = &self.who;
        match e {
            sqlx::Error::Database(d) => {
                let code = match d.try_downcast_ref::<MySqlDatabaseError>() {
                    Some(my) => Some(my.number().to_string()),
                    None => d.code().map(|c| c.into_owned()),
                };
                if matches!(code.as_deref(), Some("57014" | "1969" | "3024")) {
                    return Failure::Timeout(format!(
                        "{who}: the statement ran longer than statement_timeout_ms ({} ms): {}",
                        self.def.statement_timeout_ms,
                        d.message()
                    ));
                }
                Failure::Sql {
                    message: format!("{who}: {}", d.message()),
                    code,
                }
            }
            sqlx::Error::PoolTimedOut => Failure::PoolFull(format!(
                "{who}: no free connection within {} ms (pool_max {}, all in use)",
                self.def.pool_wait_ms, self.def.pool_max
            )),
            sqlx::Error::Io(e) => Failure::Io(format!("{who}: the connection broke: {e}")),
            sqlx::Error::Tls(e) => Failure::Connect(format!("{who}: TLS: {e}")),
            e @ (sqlx::Error::Encode(_)
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::TypeNotFound { .. }) => Failure::Invalid(format!("{who}: {e}")),
            e => Failure::Io(format!("{who}: {e}")),
        }
    }

    async fn ping(&self) -> Result<(), Failure> {
        match self
            .pools()
            .as_ref()
            .map_err(|e| Failure::Connect(e.clone()))?
        {
            Pools::Pg(_) => self.ping_on::<Postgres>().await,
            Pools::My(_) => self.ping_on::<MySql>().await,
            Pools::Lite(_) => self.ping_on::<Sqlite>().await,
        }
    }

    async fn ping_on<DB: Driver>(&self) -> Result<(), Failure>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        let mut conn = self.acquire::<DB>().await?;
        match tokio::time::timeout(
            self.backstop,
            sqlx::query::<DB>("SELECT 1").fetch_one(&mut *conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.db_failure(e)),
            Err(_) => {
                conn.close_on_drop();
                Err(self.backstop_failure())
            }
        }
    }
}

/// The connection a stream's task reads from.
enum Holder<DB: Database> {
    Pooled(PoolConnection<DB>),
    Tx(tokio::sync::OwnedMutexGuard<Option<TxConn>>),
}

/// Runs a stream's statement, sending its columns, then its rows as they come (the channel
/// bounds how far it reads ahead of the caller). Ends when the rows do, on a failure, or
/// when the stream is closed (its receiver dropped).
async fn stream_task<DB: Driver>(
    mut holder: Holder<DB>,
    text: Arc<String>,
    args: DB::Arguments,
    tx: mpsc::Sender<Msg>,
    who: String,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let abandoned = {
        let conn: &mut DB::Connection = match &mut holder {
            Holder::Pooled(c) => c,
            Holder::Tx(g) => match g.as_mut().and_then(DB::tx_conn) {
                Some(c) => c,
                None => {
                    let _ = tx
                        .send(Msg::Failed(Failure::Invalid(format!(
                            "{who}: the transaction ended"
                        ))))
                        .await;
                    return;
                }
            },
        };
        stream_rows::<DB>(conn, text, args, &tx, &who).await
    };
    if abandoned && let Holder::Pooled(c) = &mut holder {
        // Rows may be left unread on it.
        c.close_on_drop();
    }
}

/// Returns whether the receiver went away before the end.
async fn stream_rows<DB: Driver>(
    conn: &mut DB::Connection,
    text: Arc<String>,
    args: DB::Arguments,
    tx: &mpsc::Sender<Msg>,
    who: &str,
) -> bool
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut cols: Option<Vec<Col>> = None;
    let failed = |e: String| Msg::Failed(Failure::Invalid(format!("{who}: {e}")));
    {
        let q = sqlx::query_with(AssertSqlSafe(text.clone()), args);
        let mut s = (&mut *conn).fetch(q);
        loop {
            let row = match s.try_next().await {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    let f = db_failure_for_stream(who, e);
                    return tx.send(Msg::Failed(f)).await.is_err();
                }
            };
            if cols.is_none() {
                let mut c = match row
                    .columns()
                    .iter()
                    .map(DB::column)
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(c) => c,
                    Err(e) => return tx.send(failed(e)).await.is_err(),
                };
                DB::refine(&row, &mut c);
                if tx.send(Msg::Header(c.clone())).await.is_err() {
                    return true;
                }
                cols = Some(c);
            }
            let mut out = Vec::with_capacity(64);
            if let Err(e) = write_row::<DB>(&row, cols.as_deref().unwrap_or_default(), &mut out) {
                return tx.send(failed(e)).await.is_err();
            }
            if tx.send(Msg::Row(out)).await.is_err() {
                return true;
            }
        }
    }
    if cols.is_none() {
        match columns_of::<DB>(conn, text).await {
            Ok(c) => {
                if tx.send(Msg::Header(c)).await.is_err() {
                    return true;
                }
            }
            Err(Stop::Invalid(e)) => return tx.send(failed(e)).await.is_err(),
            Err(Stop::Db(e)) => {
                return tx
                    .send(Msg::Failed(db_failure_for_stream(who, e)))
                    .await
                    .is_err();
            }
            Err(Stop::TooMany) => {}
        }
    }
    tx.send(Msg::Done).await.is_err()
}

fn db_failure_for_stream(who: &str, e: sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(d) => {
            let code = match d.try_downcast_ref::<MySqlDatabaseError>() {
                Some(my) => Some(my.number().to_string()),
                None => d.code().map(|c| c.into_owned()),
            };
            if matches!(code.as_deref(), Some("57014" | "1969" | "3024")) {
                Failure::Timeout(format!(
                    "{who}: the statement ran too long: {}",
                    d.message()
                ))
            } else {
                Failure::Sql {
                    message: format!("{who}: {}", d.message()),
                    code,
                }
            }
        }
        sqlx::Error::Io(e) => Failure::Io(format!("{who}: the connection broke: {e}")),
        e => Failure::Io(format!("{who}: {e}")),
    }
}
