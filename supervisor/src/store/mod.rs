//! The config store ("ODB"): deployed service modules, REST channels and — as later issues
//! add them — every other object an operator changes at runtime.
//!
//! One schema on two engines: SQLite (a file; the single-server default) and PostgreSQL
//! (any cluster of more than one server). Migrations are versioned per engine under
//! `supervisor/migrations/{sqlite,postgres}` and applied at open. Queries are written once,
//! with `$N` placeholders, which both engines' sqlx drivers bind by number, and run through
//! `on_pool!` so each engine's arm is type-checked on its own. Every change runs in one
//! transaction with a bump of the monotonic config version, so a reader that sees version N
//! sees every change up to N and nothing of N+1.
//!
//! The server opens it at start: deployed modules go to every worker before it takes
//! traffic, and stored channels join server.toml's in the routing table. Secrets are stored
//! sealed only (`crate::secrets` holds the key). Security definitions, cache definitions and
//! scheduler jobs are stored too; the object kinds of later issues (outgoing connections,
//! topics) are not stored yet.
//!
//! Every SQL statement of the crate lives in this folder, one file per group of tables:
//! - this file: the `Store` handle (open, migrate, probe), the config version, the errors;
//! - `modules`: deployed module versions and the services each defines (`service_modules`,
//!   `module_services`), [`PendingDeploy`];
//! - `channels`: stored channels (`channels`);
//! - `secrets`: sealed secrets (`secrets`);
//! - `objects`: the JSON-defined named objects (`security_defs`, `cache_defs`, `jobs`), one
//!   generic list/put/delete over `model::object::ConfigObject` (docs/CONFIG_OBJECTS.md);
//! - `servers`: cluster membership (`servers`);
//! - `plan`: a config import's changes, applied in one transaction across the tables above;
//! - `scheduler`: the scheduler's lease, due times and run history (`scheduler_lease`,
//!   `job_state`, `job_runs`);
//! - `tokens`: named admin API tokens, hashed (`admin_tokens`; not config: no version bump).
//! - `audit`: the audit log of admin changes (`audit_log`) and the digests it records.
//! - `pubsub_cursor`: pub/sub delivery's cursors, leases and dead letters (`pubsub_cursor`,
//!   `pubsub_lease`, `pubsub_dead`) and its backlog reads of the message log.
//! - `pubsub_log`: the pub/sub message log (`pubsub_topic_seq`, `pubsub_msg`, `pubsub_parts`)
//!   and its rotation lease (`pubsub_lease` key `#rotate`).
//!
//! The store knows no HTTP, no workers and no cluster bus: it stores the objects of `model`
//! (and `config`'s channels, `oxbus_cache`'s cache definitions) and checks what a stored
//! object must satisfy, nothing else.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("config store URL {0:?} is neither sqlite:… nor postgres://…")]
    BadUrl(String),
    #[error("config store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("config store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A connection pool to one of the two engines.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the engine's pool; each arm is compiled separately,
/// so the same query text is checked against both drivers' types. Every operation is timed
/// into the store's metrics ([`Timing`]), its `op` the group of tables of the file it is in:
/// the body runs in a block of its own, so that a `?` or a `return Err(…)` in it is seen
/// here on its way out, and a body whose value is itself a result (`rows.iter().map(…)
/// .collect()` into a `Result`) has that result looked into too ([`Outcome`]): an error
/// either way counts.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {{
        let timing = $crate::store::Timing::start(module_path!());
        let result: $crate::store::Result<_> = match $store {
            $crate::store::Store::Sqlite($pool) => async { Ok($body) }.await,
            $crate::store::Store::Postgres($pool) => async { Ok($body) }.await,
        };
        timing.finish(&result);
        match result {
            Ok(v) => v,
            Err(e) => return Err(e),
        }
    }};
}

/// A write transaction. On SQLite `BEGIN IMMEDIATE`: the write lock is taken up front, waiting
/// out the busy timeout behind another writer, where a deferred transaction that reads first
/// fails at once with "database is locked" when it upgrades to a write while another
/// connection writes (WAL cannot wait that out). On PostgreSQL a plain `BEGIN`.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = sqlx::Result<sqlx::Transaction<'static, Self::Db>>> + Send;
}

impl BeginWrite for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.begin().await
    }
}

/// Where the store's operations are timed (`metrics/store.rs`): set once by boot. One server
/// runs per process; a store opened by a tool or a test records nothing.
static METRICS: std::sync::OnceLock<std::sync::Arc<crate::metrics::Metrics>> =
    std::sync::OnceLock::new();

/// From now on, the store's operations are timed into `metrics` (boot calls it once).
pub fn record_into(metrics: std::sync::Arc<crate::metrics::Metrics>) {
    let _ = METRICS.set(metrics);
}

/// One store operation being timed: finished with its result, or dropped on the way out
/// (the caller gave up on it, a timeout around it) and then counted as cancelled, not as
/// an error: the store did not fail, its caller stopped waiting.
#[doc(hidden)]
pub struct Timing {
    op: Option<usize>,
    started: std::time::Instant,
}

/// The op (`metrics/store.rs`) of the store file whose `module_path!()` is `module`: the
/// file's name, except this file (`version`) and `plan` (`import`). None for a module that
/// is no store file (a debug build stops there: every file of the store has its op).
fn op_of(module: &str) -> Option<usize> {
    // The file right under `store` (`…::store::tokens`, even from a module inside it), or
    // `store` for this file.
    let mut path = module.split("::").skip_while(|p| *p != "store");
    path.next();
    let group = match path.next().unwrap_or("store") {
        "store" => "version",
        "plan" => "import",
        other => other,
    };
    let op = crate::metrics::store::StoreMetrics::op(group);
    debug_assert!(
        op.is_some(),
        "store module {module} has no op in metrics/store.rs OPS"
    );
    op
}

impl Timing {
    /// Starts timing an operation of the store file `module` (its `module_path!()`).
    pub fn start(module: &str) -> Timing {
        Timing {
            op: op_of(module),
            started: std::time::Instant::now(),
        }
    }

    /// Records it. Only a failure of the store counts as an error: a refusal it answered
    /// with (no such object, a name taken) is a result like any other. The result's value
    /// is looked into as well ([`Outcome`]): a failure the body returned as its value is
    /// a failure too.
    pub fn finish<T: Outcome>(mut self, result: &Result<T>) {
        self.record(Some(failed(result)));
    }

    /// `failed`: None when the operation was dropped before it ended.
    fn record(&mut self, failed: Option<bool>) {
        if let (Some(op), Some(m)) = (self.op.take(), METRICS.get())
            && m.enabled()
        {
            match failed {
                Some(failed) => m.store.observe(op, self.started.elapsed(), failed),
                None => m.store.cancelled(op),
            }
        }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        // Not finished: the future was dropped while the store had not answered.
        self.record(None);
    }
}

/// Whether `e` is a failure of the store (rather than a refusal it answered with).
fn failure(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(_) | StoreError::Migrate(_))
}

/// Whether an `on_pool!` body's result is a failure of the store: its error, or one its
/// value carries.
fn failed<T: Outcome>(result: &Result<T>) -> bool {
    match result {
        Err(e) => failure(e),
        Ok(v) => v.failed(),
    }
}

/// What an `on_pool!` body may give as its value, and whether that value is a failure of
/// the store: a `Result` is looked into (its error counts as the operation's), anything
/// else is a success. A body of a type not listed here does not compile: add it, as a
/// plain value or, if it can carry an error, saying how to see it.
#[doc(hidden)]
pub trait Outcome {
    fn failed(&self) -> bool;
}

impl<T> Outcome for Result<T> {
    fn failed(&self) -> bool {
        self.as_ref().err().is_some_and(failure)
    }
}

/// A driver's error: always a failure of the store.
impl<T> Outcome for Result<T, sqlx::Error> {
    fn failed(&self) -> bool {
        self.is_err()
    }
}

macro_rules! plain_outcome {
    ($($t:ty),* $(,)?) => {
        $(impl Outcome for $t {
            fn failed(&self) -> bool {
                false
            }
        })*
    };
}

plain_outcome!((), bool, i64, u64, String);

impl<T: Outcome> Outcome for Option<T> {
    fn failed(&self) -> bool {
        self.as_ref().is_some_and(Outcome::failed)
    }
}

impl<T> Outcome for Vec<T> {
    fn failed(&self) -> bool {
        false
    }
}

impl<K, V, S> Outcome for std::collections::HashMap<K, V, S> {
    fn failed(&self) -> bool {
        false
    }
}

impl<T> Outcome for Change<T> {
    fn failed(&self) -> bool {
        false
    }
}

impl<A, B> Outcome for (A, B) {
    fn failed(&self) -> bool {
        false
    }
}

impl<A, B, C> Outcome for (A, B, C) {
    fn failed(&self) -> bool {
        false
    }
}

// After `on_pool!`, which they use.
mod audit;
mod channels;
pub mod files;
mod modules;
mod objects;
mod plan;
mod pubsub_cursor;
pub mod pubsub_log;
mod scheduler;
mod secrets;
mod servers;
mod tokens;

pub use audit::{
    AuditQuery, AuditRecord, canonical_json, digest, module_digest, module_head_digest,
    secret_digest,
};
pub use channels::validate_channel_name;
pub use modules::{Module, PendingDeploy, source_hash, validate_module_name};
pub use plan::{ObjectChanges, Plan};
pub use pubsub_cursor::{CursorRow, CursorStart, DeadRow};
pub use scheduler::{Claim, JobState, RUNS_KEPT, Run};
pub use secrets::{SealedSecret, validate_secret_name, validate_services};
pub use servers::{SERVER_HEARTBEAT, SERVER_STALE, ServerRecord};
pub use tokens::{StoredToken, validate_token_name};

/// What a change did: the module (or object) and the config version it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<T> {
    pub config_version: i64,
    pub value: T,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The URL with any password replaced by `***`, for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// What one connection attempt to the store found (`Store::probe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// It answered and let this server in.
    Up,
    /// Nothing answers at its address (connection refused, no route, no such socket): it is
    /// down now, and waiting for it serves nothing.
    Down(String),
    /// It may be there but did not let this server in within the limit (a database starting
    /// up, a slow or silent host, a refusal of another kind): not known to be down.
    Unsure(String),
}

async fn probe_pg(opts: &sqlx::postgres::PgConnectOptions, limit: Duration) -> Reach {
    use sqlx::Connection;
    match tokio::time::timeout(limit, sqlx::PgConnection::connect_with(opts)).await {
        Ok(Ok(conn)) => {
            // Closed off the caller's path: the answer is known already.
            tokio::spawn(async move {
                let _ = conn.close().await;
            });
            Reach::Up
        }
        Ok(Err(sqlx::Error::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            ) =>
        {
            Reach::Down(e.to_string())
        }
        Ok(Err(e)) => Reach::Unsure(e.to_string()),
        Err(_) => Reach::Unsure(format!("no answer within {} ms", limit.as_millis())),
    }
}

impl Store {
    /// `sqlite:/path/to/oxbus.db` or `postgres://user@host/db`.
    pub async fn open(url: &str) -> Result<Store> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                // An fsync of the WAL at every commit: an acknowledged change survives a
                // power loss. (NORMAL would save that fsync, ~0.5-1.5 ms per change on the
                // machines measured, and could lose the last commits on power loss.)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            Store::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await?,
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await?,
            )
        } else {
            return Err(StoreError::BadUrl(redact_url(url)));
        };
        store.migrate().await?;
        Ok(store)
    }

    /// A PostgreSQL store that connects on first use (for a server booting from its snapshot
    /// while the store is down); `migrate` must run once it is reachable.
    pub fn lazy(url: &str) -> Result<Store> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::BadUrl(redact_url(url)));
        }
        Ok(Store::Postgres(
            PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy(url)?,
        ))
    }

    /// One connection attempt to a PostgreSQL store at `url`, bounded by `limit`, without the
    /// pool's retries: a pool treats a refused connection as a database starting up and keeps
    /// trying until its acquire timeout (5 s), which is right for a query that must run and
    /// wrong for a question ("is the store there?") whose answer decides how to boot.
    pub async fn probe_url(url: &str, limit: Duration) -> Reach {
        let opts = match sqlx::postgres::PgConnectOptions::from_str(url) {
            Ok(o) => o,
            Err(e) => return Reach::Unsure(e.to_string()),
        };
        probe_pg(&opts, limit).await
    }

    /// Whether the store answers now: one connection attempt bounded by `limit` (PostgreSQL;
    /// a refused connection fails in microseconds, a silent host takes `limit`), or one
    /// query (SQLite, a local file that has no outage of its own).
    pub async fn probe(&self, limit: Duration) -> Reach {
        match self {
            Store::Sqlite(_) => match tokio::time::timeout(limit, self.version()).await {
                Ok(Ok(_)) => Reach::Up,
                Ok(Err(e)) => Reach::Unsure(e.to_string()),
                Err(_) => Reach::Unsure(format!("no answer within {} ms", limit.as_millis())),
            },
            Store::Postgres(p) => probe_pg(&p.connect_options(), limit).await,
        }
    }

    /// Applies the migrations this build has and the store lacks.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
            Store::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }

    /// The current config version.
    pub async fn version(&self) -> Result<i64> {
        let sql = "SELECT version FROM config_version WHERE id = 1";
        Ok(on_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?))
    }
}

/// Bumps the config version inside a transaction; returns the new version.
async fn bump<'c, DB>(tx: &mut sqlx::Transaction<'c, DB>) -> Result<i64>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    i64: for<'a> sqlx::Decode<'a, DB> + sqlx::Type<DB>,
    for<'a> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let (v,): (i64,) = sqlx::query_as(
        "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the store times its statements under an op of the metrics' fixed set:
    /// the files are read from `src/store/` itself, so a new file without its op fails here.
    #[test]
    fn every_store_file_has_an_op() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
        let mut modules = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let module = if path.is_dir() {
                // A folder module (`store/x/mod.rs`): its files are `x`'s submodules.
                name
            } else if let Some(stem) = name.strip_suffix(".rs") {
                stem.to_owned()
            } else {
                continue;
            };
            modules.push(match module.as_str() {
                "mod" => "oxbus_supervisor::store".to_owned(),
                m => format!("oxbus_supervisor::store::{m}"),
            });
        }
        let mut ops = std::collections::BTreeSet::new();
        for module in &modules {
            let mut t = Timing::start(module);
            assert!(t.op.is_some(), "{module} has no op in metrics/store.rs OPS");
            ops.insert(t.op.take());
        }
        // And every op is some file's.
        assert_eq!(ops.len(), crate::metrics::store::OPS.len(), "{modules:?}");
        let path = module_path!();
        assert!(
            modules
                .iter()
                .any(|m| m.as_str() == path.trim_end_matches("::tests"))
        );
    }

    /// A module that is no file of the store has no op: a debug build says so at once.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "has no op in metrics/store.rs OPS")]
    fn an_unknown_store_module_is_caught() {
        let _ = op_of("oxbus_supervisor::store::nowhere");
    }

    /// A failure of the store counts whether it leaves the body through `?` or as the
    /// body's value; a refusal the store answered with counts in neither.
    #[test]
    fn failures_in_the_value_count() {
        let db = || StoreError::Db(sqlx::Error::RowNotFound);
        assert!(failed::<i64>(&Err(db())));
        assert!(failed::<Result<Vec<i64>>>(&Ok(Err(db()))));
        assert!(failed::<Result<(), sqlx::Error>>(&Ok(Err(
            sqlx::Error::PoolTimedOut
        ))));
        assert!(failed::<Option<Result<i64>>>(&Ok(Some(Err(db())))));
        assert!(!failed::<Result<Vec<i64>>>(&Ok(Ok(vec![1]))));
        assert!(!failed::<Result<i64>>(&Ok(Err(StoreError::NotFound(
            "no such thing".into()
        )))));
        assert!(!failed::<i64>(&Err(StoreError::Invalid("taken".into()))));
        assert!(!failed::<Vec<i64>>(&Ok(vec![])));
    }

    /// Nothing listening at the address: down, without the pool's retries.
    #[tokio::test]
    async fn a_refused_connection_is_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://oxbus@127.0.0.1:{port}/oxbus");
        let r = Store::probe_url(&url, Duration::from_secs(5)).await;
        assert!(matches!(r, Reach::Down(_)), "{r:?}");
    }

    /// A host that takes the connection and never answers is not known to be down: the
    /// caller waits for it the usual way.
    #[tokio::test]
    async fn a_silent_store_is_not_down() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let url = format!("postgres://oxbus@127.0.0.1:{port}/oxbus");
        let r = Store::probe_url(&url, Duration::from_millis(200)).await;
        assert!(matches!(r, Reach::Unsure(_)), "{r:?}");
        drop(silent);
    }
}
