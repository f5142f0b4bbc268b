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

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, migrate::Migrator};
use std::str::FromStr;
use std::time::Duration;

use crate::model::channel::{Channel, ChannelType, DataFormat};

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
/// so the same query text is checked against both drivers' types.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

/// One stored version of a service module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Module {
    pub name: String,
    pub version: i64,
    pub source: String,
    pub source_hash: String,
    pub deployed_by: String,
    /// Unix milliseconds.
    pub deployed_at: i64,
    pub active: bool,
}

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

/// Lower-case hex SHA-256 of a module's source.
pub fn source_hash(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn module_from_row<R: Row>(r: &R) -> Result<Module>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    bool: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Module {
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        source: r.try_get("source")?,
        source_hash: r.try_get("source_hash")?,
        deployed_by: r.try_get("deployed_by")?,
        deployed_at: r.try_get("deployed_at")?,
        active: r.try_get("active")?,
    })
}

const SERVERS_SELECT: &str = "SELECT name, http_address, oxbus_version, pid, started_at, \
     last_seen, config_version, bus_address FROM servers ORDER BY name";

fn server_from_row<R: Row>(r: &R) -> Result<ServerRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ServerRecord {
        name: r.try_get("name")?,
        http_address: r.try_get("http_address")?,
        oxbus_version: r.try_get("oxbus_version")?,
        pid: r.try_get("pid")?,
        started_at: r.try_get("started_at")?,
        last_seen: r.try_get("last_seen")?,
        config_version: r.try_get("config_version")?,
        bus_address: r.try_get("bus_address")?,
    })
}

fn channel_from_row<R: Row>(r: &R) -> Result<Channel>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let methods: String = r.try_get("methods")?;
    let format: String = r.try_get("data_format")?;
    let allow_from: String = r.try_get("allow_from")?;
    let rate_limit: Option<String> = r.try_get("rate_limit")?;
    let channel_type: String = r.try_get("channel_type")?;
    let services: String = r.try_get("services")?;
    Ok(Channel {
        name: Some(r.try_get("name")?),
        url_path: r.try_get("url_path")?,
        methods: serde_json::from_str(&methods)
            .map_err(|e| StoreError::Invalid(format!("stored channel methods: {e}")))?,
        service: r.try_get("service")?,
        data_format: match format.as_str() {
            "raw" => DataFormat::Raw,
            _ => DataFormat::Json,
        },
        security: r.try_get("security")?,
        allow_from: serde_json::from_str(&allow_from)
            .map_err(|e| StoreError::Invalid(format!("stored channel allow_from: {e}")))?,
        rate_limit: rate_limit
            .map(|l| serde_json::from_str(&l))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored channel rate_limit: {e}")))?,
        channel_type: match channel_type.as_str() {
            "rest" => ChannelType::Rest,
            "jsonrpc" => ChannelType::JsonRpc,
            other => {
                return Err(StoreError::Invalid(format!(
                    "stored channel type {other:?} is not one this server knows"
                )));
            }
        },
        services: serde_json::from_str(&services)
            .map_err(|e| StoreError::Invalid(format!("stored channel services: {e}")))?,
    })
}

/// A channel's gate columns as stored: security, allow_from (JSON), rate_limit (JSON).
fn gate_columns(c: &Channel) -> (Option<String>, String, Option<String>) {
    (
        c.security.clone(),
        serde_json::to_string(&c.allow_from).expect("a list of strings"),
        c.rate_limit
            .as_ref()
            .map(|l| serde_json::to_string(l).expect("a rate limit serialises")),
    )
}

/// Inside transaction `$tx`: stores each (name, source) of `$modules` as that module's next
/// version and makes it the active one; evaluates to the new `Vec<Module>`.
macro_rules! insert_versions {
    ($tx:ident, $modules:expr, $by:expr, $at:expr) => {{
        let mut out = Vec::with_capacity($modules.len());
        for (name, source) in $modules {
            let version: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM service_modules WHERE name = $1",
            )
            .bind(name)
            .fetch_one(&mut *$tx)
            .await?;
            sqlx::query("UPDATE service_modules SET active = FALSE WHERE name = $1 AND active")
                .bind(name)
                .execute(&mut *$tx)
                .await?;
            let hash = source_hash(source);
            sqlx::query(
                "INSERT INTO service_modules (name, version, source, source_hash, deployed_by, deployed_at, active) \
                 VALUES ($1, $2, $3, $4, $5, $6, TRUE)",
            )
            .bind(name)
            .bind(version)
            .bind(source)
            .bind(&hash)
            .bind($by)
            .bind($at)
            .execute(&mut *$tx)
            .await?;
            out.push(Module {
                name: name.clone(),
                version,
                source: source.clone(),
                source_hash: hash,
                deployed_by: $by.to_owned(),
                deployed_at: $at,
                active: true,
            });
        }
        out
    }};
}

/// Inside transaction `$tx`: inserts a named channel.
macro_rules! insert_channel {
    ($tx:ident, $channel:expr, $name:expr) => {{
        let methods = serde_json::to_string(&$channel.methods).expect("a list of strings");
        let (security, allow_from, rate_limit) = gate_columns(&$channel);
        let services = serde_json::to_string(&$channel.services).expect("a list of strings");
        sqlx::query(
            "INSERT INTO channels (name, url_path, methods, service, data_format, created_at, \
             security, allow_from, rate_limit, channel_type, services) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind($name)
        .bind(&$channel.url_path)
        .bind(&methods)
        .bind(&$channel.service)
        .bind($channel.data_format.as_str())
        .bind(now_ms())
        .bind(security)
        .bind(allow_from)
        .bind(rate_limit)
        .bind($channel.channel_type.as_str())
        .bind(&services)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Inside transaction `$tx`: creates or replaces a sealed secret.
macro_rules! upsert_secret {
    ($tx:ident, $name:expr, $sealed:expr, $by:expr) => {{
        sqlx::query(
            "INSERT INTO secrets (name, sealed, updated_by, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind($name)
        .bind($sealed)
        .bind($by)
        .bind(now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Inside transaction `$tx`: creates or replaces a security definition.
macro_rules! upsert_security {
    ($tx:ident, $def:expr, $by:expr) => {{
        let json = serde_json::to_string($def).expect("a definition serialises");
        sqlx::query(
            "INSERT INTO security_defs (name, definition, updated_by, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(&$def.name)
        .bind(json)
        .bind($by)
        .bind(now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Inside transaction `$tx`: creates or replaces a cache definition.
macro_rules! upsert_cache_def {
    ($tx:ident, $def:expr, $by:expr) => {{
        let json = serde_json::to_string($def).expect("a definition serialises");
        sqlx::query(
            "INSERT INTO cache_defs (name, definition, updated_by, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(&$def.name)
        .bind(json)
        .bind($by)
        .bind(now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Inside transaction `$tx`: the job definition `$def` as it is to be stored (`start_date`
/// filled in from the stored job, else with the time of creation: see
/// [`crate::scheduler::jobs::JobDef::as_stored`]); evaluates to it and whether the job existed.
macro_rules! job_as_stored {
    ($tx:ident, $def:expr) => {{
        let def: &crate::scheduler::jobs::JobDef = $def;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT definition FROM jobs WHERE name = $1")
                .bind(&def.name)
                .fetch_optional(&mut *$tx)
                .await?;
        let stored: Option<crate::scheduler::jobs::JobDef> = stored
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored job {}: {e}", def.name)))?;
        let existed = stored.is_some();
        (
            def.clone().as_stored(stored.as_ref(), chrono::Utc::now()),
            existed,
        )
    }};
}

/// Inside transaction `$tx`: creates or replaces a job definition (as given: see
/// `job_as_stored!`).
macro_rules! upsert_job {
    ($tx:ident, $def:expr, $by:expr) => {{
        let def: &crate::scheduler::jobs::JobDef = $def;
        let json = serde_json::to_string(def).expect("a definition serialises");
        sqlx::query(
            "INSERT INTO jobs (name, definition, updated_by, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(&def.name)
        .bind(json)
        .bind($by)
        .bind(now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// A stored secret: its sealed value only (see `crate::secrets`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedSecret {
    pub name: String,
    pub sealed: String,
    pub updated_by: String,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// A server registered in the store (see `Store::register_server`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerRecord {
    pub name: String,
    pub http_address: String,
    pub oxbus_version: String,
    pub pid: i64,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds of its last heartbeat.
    pub last_seen: i64,
    /// The config version it has applied, as of its last heartbeat.
    pub config_version: i64,
    /// Where its cluster bus listens (None: it runs no bus).
    pub bus_address: Option<String>,
}

/// A server whose heartbeat is older than this is gone (it refreshes every
/// `SERVER_HEARTBEAT`).
pub const SERVER_STALE: Duration = Duration::from_secs(30);
pub const SERVER_HEARTBEAT: Duration = Duration::from_secs(5);

/// Every change of a config import, applied in one transaction with one version bump.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Channels to create, or to update in place (keeping their routing order) when one of
    /// that name exists.
    pub put_channels: Vec<Channel>,
    pub delete_channels: Vec<String>,
    /// (name, sealed value) to create or replace.
    pub put_secrets: Vec<(String, String)>,
    pub delete_secrets: Vec<String>,
    /// Security definitions to create or replace (secret material sealed), and to delete.
    pub put_security: Vec<crate::model::security::SecurityDef>,
    pub delete_security: Vec<String>,
    /// Cache definitions to create or replace, and to delete (by name).
    pub put_caches: Vec<oxbus_cache::CacheDef>,
    pub delete_caches: Vec<String>,
    /// Scheduler jobs to create or replace (`start_date` left out: see
    /// [`crate::scheduler::jobs::JobDef::as_stored`]), and to delete (by name).
    pub put_jobs: Vec<crate::scheduler::jobs::JobDef>,
    pub delete_jobs: Vec<String>,
    /// (name, source): a new active version each.
    pub deploy_modules: Vec<(String, String)>,
    pub undeploy_modules: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.put_channels.is_empty()
            && self.delete_channels.is_empty()
            && self.put_secrets.is_empty()
            && self.delete_secrets.is_empty()
            && self.put_security.is_empty()
            && self.delete_security.is_empty()
            && self.put_caches.is_empty()
            && self.delete_caches.is_empty()
            && self.put_jobs.is_empty()
            && self.delete_jobs.is_empty()
            && self.deploy_modules.is_empty()
            && self.undeploy_modules.is_empty()
    }
}

/// Secret names: 1–200 characters of letters, digits and `._-/:@`.
pub fn validate_secret_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{name:?} is not a valid secret name (1-200 characters: letters, digits, ._-/:@)"
        )))
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

const MODULE_COLUMNS: &str = "name, version, source, source_hash, deployed_by, deployed_at, active";

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the store at `url`:
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
        on_pool!(self, p => p.close().await)
    }

    /// The current config version.
    pub async fn version(&self) -> Result<i64> {
        let sql = "SELECT version FROM config_version WHERE id = 1";
        Ok(on_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?))
    }

    /// Stores `source` as the next version of module `name`, makes it the active one and
    /// bumps the config version, all in one transaction.
    pub async fn deploy_module(
        &self,
        name: &str,
        source: &str,
        by: &str,
    ) -> Result<Change<Module>> {
        let mut c = self
            .deploy_modules(&[(name.to_owned(), source.to_owned())], by)
            .await?;
        Ok(Change {
            config_version: c.config_version,
            value: c.value.remove(0),
        })
    }

    /// Deploys several modules in one transaction (one config version for all of them):
    /// either every module gets its next version or none does.
    pub async fn deploy_modules(
        &self,
        modules: &[(String, String)],
        by: &str,
    ) -> Result<Change<Vec<Module>>> {
        self.begin_deploy(modules, by).await?.commit().await
    }

    /// Writes a deploy of several modules (each gets its next version, made the active one;
    /// one config version for all of them) in a transaction that stays open until
    /// [`PendingDeploy::commit`]; dropping the result rolls it back. The deploy sequence
    /// opens it only after a worker checked the code, claims the services in it and commits
    /// at once: no transaction stays open while user code runs.
    /// Statements are batched (a few per 500 modules, not three per module).
    pub async fn begin_deploy(
        &self,
        modules: &[(String, String)],
        by: &str,
    ) -> Result<PendingDeploy> {
        let mut seen = std::collections::HashSet::with_capacity(modules.len());
        for (name, _) in modules {
            validate_module_name(name)?;
            if !seen.insert(name) {
                return Err(StoreError::Invalid(format!(
                    "module {name} is listed twice"
                )));
            }
        }
        let at = now_ms();
        let hashes: Vec<String> = modules.iter().map(|(_, s)| source_hash(s)).collect();
        let mut versions = std::collections::HashMap::with_capacity(modules.len());
        let (tx, config_version) = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in modules.chunks(DEPLOY_CHUNK) {
                let names = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>();
                let sql = format!(
                    "UPDATE service_modules SET active = FALSE WHERE active AND name IN ({})",
                    names.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (name, _) in chunk {
                    q = q.bind(name);
                }
                q.execute(&mut *tx).await?;
            }
            for (n, chunk) in modules.chunks(DEPLOY_CHUNK).enumerate() {
                // $1 = deployed_by, $2 = deployed_at; then name, source, hash per row.
                let rows = (0..chunk.len())
                    .map(|i| {
                        let b = 3 + 3 * i;
                        format!(
                            "(${b}, (SELECT COALESCE(MAX(version), 0) + 1 FROM service_modules WHERE name = ${b}), ${}, ${}, $1, $2, TRUE)",
                            b + 1,
                            b + 2
                        )
                    })
                    .collect::<Vec<_>>();
                let sql = format!(
                    "INSERT INTO service_modules (name, version, source, source_hash, deployed_by, deployed_at, active) \
                     VALUES {} RETURNING name, version",
                    rows.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(by).bind(at);
                for (i, (name, source)) in chunk.iter().enumerate() {
                    q = q.bind(name).bind(source).bind(&hashes[n * DEPLOY_CHUNK + i]);
                }
                for row in q.fetch_all(&mut *tx).await? {
                    let name: String = row.try_get("name")?;
                    let version: i64 = row.try_get("version")?;
                    versions.insert(name, version);
                }
            }
            let config_version = bump(&mut tx).await?;
            (PendingTx::from(tx), config_version)
        });
        let value = modules
            .iter()
            .zip(hashes)
            .map(|((name, source), source_hash)| {
                let version = versions.get(name).copied().ok_or_else(|| {
                    StoreError::Invalid(format!("the store returned no version for {name}"))
                })?;
                Ok(Module {
                    name: name.clone(),
                    version,
                    source: source.clone(),
                    source_hash,
                    deployed_by: by.to_owned(),
                    deployed_at: at,
                    active: true,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PendingDeploy {
            tx,
            change: Change {
                config_version,
                value,
            },
        })
    }

    /// The active version of every deployed module, by name.
    pub async fn active_modules(&self) -> Result<Vec<Module>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MODULE_COLUMNS} FROM service_modules WHERE active ORDER BY name"
        ));
        on_pool!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter().map(module_from_row).collect()
        })
    }

    /// Every stored version of one module, newest first.
    pub async fn module_history(&self, name: &str) -> Result<Vec<Module>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MODULE_COLUMNS} FROM service_modules WHERE name = $1 ORDER BY version DESC"
        ));
        on_pool!(self, p => {
            let rows = sqlx::query(sql).bind(name).fetch_all(p).await?;
            rows.iter().map(module_from_row).collect()
        })
    }

    /// Makes the version before the active one active again.
    pub async fn rollback_module(&self, name: &str) -> Result<Change<Module>> {
        let history = self.module_history(name).await?;
        let active = history
            .iter()
            .position(|m| m.active)
            .ok_or_else(|| StoreError::NotFound(format!("module {name} is not deployed")))?;
        let previous = history
            .get(active + 1)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "module {name} has no earlier version to roll back to"
                ))
            })?
            .clone();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("UPDATE service_modules SET active = (version = $2) WHERE name = $1")
                .bind(name)
                .bind(previous.version)
                .execute(&mut *tx)
                .await?;
            // The earlier version's services are not known here: its claims lapse until the
            // module is deployed again.
            sqlx::query("DELETE FROM module_services WHERE module = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: Module { active: true, ..previous } })
        })
    }

    /// Deactivates a module (its history stays for a later deploy or audit).
    pub async fn undeploy_module(&self, name: &str) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query("UPDATE service_modules SET active = FALSE WHERE name = $1 AND active")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("module {name} is not deployed")));
            }
            sqlx::query("DELETE FROM module_services WHERE module = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// Adds a channel (REST or JSON-RPC); its name (default: the URL path) must be new.
    pub async fn create_channel(&self, channel: &Channel) -> Result<Change<Channel>> {
        let mut all = self.channels().await?;
        let name = channel
            .name
            .clone()
            .unwrap_or_else(|| channel.url_path.clone());
        validate_channel_name(&name)?;
        if all.iter().any(|c| c.name.as_deref() == Some(name.as_str())) {
            return Err(StoreError::Invalid(format!(
                "a channel named {name} exists already"
            )));
        }
        let stored = Channel {
            name: Some(name.clone()),
            ..channel.clone()
        };
        all.push(stored.clone());
        // The whole table must still route unambiguously.
        crate::edge::router::Router::new(&all).map_err(|e| StoreError::Invalid(e.to_string()))?;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            insert_channel!(tx, stored, &name);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: stored })
        })
    }

    /// Every stored channel, in creation order.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let sql = "SELECT name, url_path, methods, service, data_format, security, allow_from, \
                   rate_limit, channel_type, services FROM channels ORDER BY id";
        on_pool!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter().map(channel_from_row).collect()
        })
    }

    /// Deletes a channel by name.
    pub async fn delete_channel(&self, name: &str) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM channels WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("no channel named {name}")));
            }
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// The objects kept as JSON in `table`'s `definition` column (security definitions,
    /// cache definitions, jobs), by name; `what` names them in an error.
    async fn json_objects<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        what: &str,
    ) -> Result<Vec<T>> {
        // `table` is one of this module's own names, never input.
        let sql = sqlx::AssertSqlSafe(format!("SELECT definition FROM {table} ORDER BY name"));
        let rows: Vec<String> = on_pool!(self, p => sqlx::query_scalar(sql).fetch_all(p).await?);
        rows.iter()
            .map(|j| {
                serde_json::from_str(j)
                    .map_err(|e| StoreError::Invalid(format!("stored {what}: {e}")))
            })
            .collect()
    }

    /// Deletes the row `name` of `table` and bumps the config version; `what` names the
    /// object in the not-found error.
    async fn delete_named(
        &self,
        table: &'static str,
        name: &str,
        what: &str,
    ) -> Result<Change<()>> {
        // `table` is one of this module's own names, never input.
        let sql = sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE name = $1"));
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("no {what} named {name}")));
            }
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// Every security definition, by name.
    pub async fn security_defs(&self) -> Result<Vec<crate::model::security::SecurityDef>> {
        self.json_objects("security_defs", "security definition")
            .await
    }

    /// Creates (`create`: refused when it exists) or replaces a security definition.
    pub async fn put_security(
        &self,
        def: &crate::model::security::SecurityDef,
        create: bool,
        by: &str,
    ) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let existed: Option<String> =
                sqlx::query_scalar("SELECT name FROM security_defs WHERE name = $1")
                    .bind(&def.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            put_allowed(create, existed.is_some(), "security definition", &def.name)?;
            upsert_security!(tx, def, by);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// Deletes a security definition; refused while a stored channel names it.
    pub async fn delete_security(&self, name: &str) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let users: Vec<String> =
                sqlx::query_scalar("SELECT name FROM channels WHERE security = $1 ORDER BY id")
                    .bind(name)
                    .fetch_all(&mut *tx)
                    .await?;
            if !users.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "security definition {name} is used by channel(s) {}: change them first",
                    users.join(", ")
                )));
            }
            let n = sqlx::query("DELETE FROM security_defs WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("no security definition named {name}")));
            }
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// Every cache definition, by name.
    pub async fn cache_defs(&self) -> Result<Vec<oxbus_cache::CacheDef>> {
        self.json_objects("cache_defs", "cache definition").await
    }

    /// Creates (`create`: refused when it exists) or replaces (refused when it does not) a
    /// cache definition; checked with [`oxbus_cache::CacheDef::validate`] first.
    pub async fn put_cache_def(
        &self,
        def: &oxbus_cache::CacheDef,
        create: bool,
        by: &str,
    ) -> Result<Change<()>> {
        def.validate().map_err(StoreError::Invalid)?;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let existed: Option<String> =
                sqlx::query_scalar("SELECT name FROM cache_defs WHERE name = $1")
                    .bind(&def.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            put_allowed(create, existed.is_some(), "cache definition", &def.name)?;
            upsert_cache_def!(tx, def, by);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// Deletes a cache definition by name.
    pub async fn delete_cache_def(&self, name: &str) -> Result<Change<()>> {
        self.delete_named("cache_defs", name, "cache definition")
            .await
    }

    /// Every scheduler job, by name.
    pub async fn jobs(&self) -> Result<Vec<crate::scheduler::jobs::JobDef>> {
        self.json_objects("jobs", "job").await
    }

    /// Creates (`create`: refused when it exists) or replaces (refused when it does not) a
    /// job; checked with [`crate::scheduler::jobs::JobDef::validate`] first. Returns the job as stored
    /// (`start_date` left out: the stored job's on a replace, now on a create).
    pub async fn put_job(
        &self,
        def: &crate::scheduler::jobs::JobDef,
        create: bool,
        by: &str,
    ) -> Result<Change<crate::scheduler::jobs::JobDef>> {
        def.validate().map_err(StoreError::Invalid)?;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            // The version first: its row lock orders this change after any other one still
            // open, so what is read below is current.
            let config_version = bump(&mut tx).await?;
            let (def, existed) = job_as_stored!(tx, def);
            put_allowed(create, existed, "job", &def.name)?;
            upsert_job!(tx, &def, by);
            tx.commit().await?;
            Ok(Change { config_version, value: def })
        })
    }

    /// Sets a job's `active` flag (enable / disable): a change like a replace, read and
    /// written in one transaction. Returns the job as stored.
    pub async fn set_job_active(
        &self,
        name: &str,
        active: bool,
        by: &str,
    ) -> Result<Change<crate::scheduler::jobs::JobDef>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let config_version = bump(&mut tx).await?;
            let stored: Option<String> =
                sqlx::query_scalar("SELECT definition FROM jobs WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(stored) = stored else {
                return Err(StoreError::NotFound(format!("no job named {name}")));
            };
            let mut def: crate::scheduler::jobs::JobDef = serde_json::from_str(&stored)
                .map_err(|e| StoreError::Invalid(format!("stored job {name}: {e}")))?;
            def.active = active;
            upsert_job!(tx, &def, by);
            tx.commit().await?;
            Ok(Change { config_version, value: def })
        })
    }

    /// Deletes a job by name.
    pub async fn delete_job(&self, name: &str) -> Result<Change<()>> {
        self.delete_named("jobs", name, "job").await
    }

    /// Every stored secret, sealed, by name.
    pub async fn secrets(&self) -> Result<Vec<SealedSecret>> {
        let sql = "SELECT name, sealed, updated_by, updated_at FROM secrets ORDER BY name";
        on_pool!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    Ok(SealedSecret {
                        name: r.try_get("name")?,
                        sealed: r.try_get("sealed")?,
                        updated_by: r.try_get("updated_by")?,
                        updated_at: r.try_get("updated_at")?,
                    })
                })
                .collect()
        })
    }

    /// One sealed value, if any secret is stored (to check the key against at start).
    pub async fn any_sealed(&self) -> Result<Option<String>> {
        let sql = "SELECT sealed FROM secrets ORDER BY name LIMIT 1";
        let secret: Option<String> =
            on_pool!(self, p => sqlx::query_scalar(sql).fetch_optional(p).await?);
        if secret.is_some() {
            return Ok(secret);
        }
        Ok(self
            .security_defs()
            .await?
            .into_iter()
            .find_map(|d| d.sealed))
    }

    /// Creates or replaces a secret (already sealed); `value` is true when it was created.
    pub async fn put_secret(&self, name: &str, sealed: &str, by: &str) -> Result<Change<bool>> {
        validate_secret_name(name)?;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let existed: Option<String> = sqlx::query_scalar("SELECT name FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            upsert_secret!(tx, name, sealed, by);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: existed.is_none() })
        })
    }

    /// Deletes a secret by name.
    pub async fn delete_secret(&self, name: &str) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM secrets WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("no secret named {name}")));
            }
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// Applies a whole plan in one transaction with one config version: every change or none.
    /// Returns the module versions it deployed. The caller validates the plan first (channels
    /// route unambiguously, modules were checked in a worker, secrets are sealed).
    pub async fn apply(&self, plan: &Plan, by: &str) -> Result<Change<Vec<Module>>> {
        for (name, _) in &plan.deploy_modules {
            validate_module_name(name)?;
        }
        for (name, _) in &plan.put_secrets {
            validate_secret_name(name)?;
        }
        for d in &plan.put_caches {
            d.validate().map_err(StoreError::Invalid)?;
        }
        for d in &plan.put_jobs {
            d.validate().map_err(StoreError::Invalid)?;
        }
        let at = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for name in &plan.delete_channels {
                sqlx::query("DELETE FROM channels WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for c in &plan.put_channels {
                // In place when it exists: a channel keeps its place in the routing order.
                let name = c.name.clone().unwrap_or_else(|| c.url_path.clone());
                let methods = serde_json::to_string(&c.methods).expect("a list of strings");
                let (security, allow_from, rate_limit) = gate_columns(c);
                let services = serde_json::to_string(&c.services).expect("a list of strings");
                let updated = sqlx::query(
                    "UPDATE channels SET url_path = $2, methods = $3, service = $4, data_format = $5, \
                     security = $6, allow_from = $7, rate_limit = $8, channel_type = $9, services = $10 \
                     WHERE name = $1",
                )
                .bind(&name)
                .bind(&c.url_path)
                .bind(&methods)
                .bind(&c.service)
                .bind(c.data_format.as_str())
                .bind(security)
                .bind(allow_from)
                .bind(rate_limit)
                .bind(c.channel_type.as_str())
                .bind(&services)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    insert_channel!(tx, c, &name);
                }
            }
            // Definitions before channels are written and after they are deleted would need
            // two passes; there are no foreign keys, so one order serves: the import checked
            // that every channel's definition exists in the resulting config.
            for name in &plan.delete_security {
                sqlx::query("DELETE FROM security_defs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for d in &plan.put_security {
                upsert_security!(tx, d, by);
            }
            for name in &plan.delete_caches {
                sqlx::query("DELETE FROM cache_defs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for d in &plan.put_caches {
                upsert_cache_def!(tx, d, by);
            }
            for name in &plan.delete_jobs {
                sqlx::query("DELETE FROM jobs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for d in &plan.put_jobs {
                let (d, _) = job_as_stored!(tx, d);
                upsert_job!(tx, &d, by);
            }
            for name in &plan.delete_secrets {
                sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for (name, sealed) in &plan.put_secrets {
                upsert_secret!(tx, name, sealed, by);
            }
            for name in &plan.undeploy_modules {
                sqlx::query("UPDATE service_modules SET active = FALSE WHERE name = $1 AND active")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM module_services WHERE module = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            let deployed = insert_versions!(tx, &plan.deploy_modules, by, at);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: deployed })
        })
    }
}

/// Modules per batched statement of a deploy: 3 parameters each, far below SQLite's and
/// PostgreSQL's limits on parameters per statement.
const DEPLOY_CHUNK: usize = 500;

/// A deploy written in a transaction that is not committed yet ([`Store::begin_deploy`]).
/// Dropping it rolls the transaction back.
#[derive(Debug)]
pub struct PendingDeploy {
    tx: PendingTx,
    change: Change<Vec<Module>>,
}

#[derive(Debug)]
enum PendingTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl From<sqlx::Transaction<'static, sqlx::Sqlite>> for PendingTx {
    fn from(tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> Self {
        PendingTx::Sqlite(tx)
    }
}

impl From<sqlx::Transaction<'static, sqlx::Postgres>> for PendingTx {
    fn from(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Self {
        PendingTx::Postgres(tx)
    }
}

/// Inside `$tx` (a `&mut Transaction`): the services of `$modules` are now `$claims`
/// (service, module); a service another module defines is refused.
macro_rules! claim_services {
    ($tx:expr, $modules:expr, $claims:expr) => {{
        for m in $modules {
            sqlx::query("DELETE FROM module_services WHERE module = $1")
                .bind(m)
                .execute(&mut **$tx)
                .await?;
        }
        for (service, module) in $claims {
            sqlx::query(
                "INSERT INTO module_services (service, module) VALUES ($1, $2) \
                 ON CONFLICT (service) DO NOTHING",
            )
            .bind(service)
            .bind(module)
            .execute(&mut **$tx)
            .await?;
            let owner: String =
                sqlx::query_scalar("SELECT module FROM module_services WHERE service = $1")
                    .bind(service)
                    .fetch_one(&mut **$tx)
                    .await?;
            if &owner != module {
                return Err(StoreError::Invalid(format!(
                    "service {service} is already defined by module {owner} (deployed \
                     meanwhile, perhaps through another server): rename one of them"
                )));
            }
        }
    }};
}

impl PendingDeploy {
    /// Records which module defines each service of this deploy (`claims`: service, module),
    /// refusing a service that another deployed module defines. Runs in the deploy's
    /// transaction, so two deploys of one service at once cannot both commit.
    pub async fn claim_services(&mut self, claims: &[(String, String)]) -> Result<()> {
        let modules: Vec<String> = self.change.value.iter().map(|m| m.name.clone()).collect();
        match &mut self.tx {
            PendingTx::Sqlite(tx) => claim_services!(tx, &modules, claims),
            PendingTx::Postgres(tx) => claim_services!(tx, &modules, claims),
        }
        Ok(())
    }

    /// The versions the commit will make active.
    pub fn modules(&self) -> &[Module] {
        &self.change.value
    }

    /// Rolls the deploy back now (a drop does too, but lets the pool finish it later).
    pub async fn rollback(self) -> Result<()> {
        match self.tx {
            PendingTx::Sqlite(tx) => tx.rollback().await?,
            PendingTx::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    /// Commits the deploy (durable when this returns: SQLite runs with `synchronous=FULL`).
    pub async fn commit(self) -> Result<Change<Vec<Module>>> {
        match self.tx {
            PendingTx::Sqlite(tx) => tx.commit().await?,
            PendingTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(self.change)
    }
}

/// Membership: the servers that share this store.
impl Store {
    /// Registers `me` among the servers of this store, in one transaction: rows whose
    /// heartbeat is older than `SERVER_STALE` are dropped first; then a SQLite store refuses
    /// a second live server (clusters need PostgreSQL), a fourth live server is refused
    /// (`MAX_SERVERS`), and a live server of the same name is refused unless it is this
    /// server's previous run (same HTTP address: a restart after a crash). Returns the other
    /// live servers.
    pub async fn register_server(&self, me: &ServerRecord) -> Result<Vec<ServerRecord>> {
        let now = now_ms();
        let stale_before = now - SERVER_STALE.as_millis() as i64;
        let postgres = matches!(self, Store::Postgres(_));
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            if postgres {
                // Two servers starting at once must not both see room for themselves.
                sqlx::query("LOCK TABLE servers IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM servers WHERE last_seen < $1")
                .bind(stale_before)
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(
                SERVERS_SELECT,
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut others = Vec::new();
            for r in &rows {
                let rec = server_from_row(r)?;
                if rec.name == me.name {
                    if rec.http_address != me.http_address {
                        return Err(StoreError::Invalid(format!(
                            "a server named {} is already running at {} (pid {}, seen {} s ago): \
                             give this one another name (cluster.server)",
                            rec.name,
                            rec.http_address,
                            rec.pid,
                            (now - rec.last_seen) / 1000
                        )));
                    }
                    continue; // this server's previous run
                }
                others.push(rec);
            }
            if !postgres && !others.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "server {} already uses this SQLite config store (at {}): a cluster of \
                     servers needs a PostgreSQL store (store.url = \"postgres://…\")",
                    others[0].name, others[0].http_address
                )));
            }
            if others.len() >= crate::config::MAX_SERVERS {
                return Err(StoreError::Invalid(format!(
                    "this config store already has {} live servers ({}): a cluster has at most \
                     {} servers; start another cluster (another store) for more capacity",
                    others.len(),
                    others.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", "),
                    crate::config::MAX_SERVERS
                )));
            }
            sqlx::query("DELETE FROM servers WHERE name = $1")
                .bind(&me.name)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO servers (name, http_address, oxbus_version, pid, started_at, last_seen, \
                 config_version, bus_address) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&me.name)
            .bind(&me.http_address)
            .bind(&me.oxbus_version)
            .bind(me.pid)
            .bind(me.started_at)
            .bind(now)
            .bind(me.config_version)
            .bind(&me.bus_address)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(others)
        })
    }

    /// Refreshes this server's heartbeat; false when its row is gone (another server found
    /// it stale): the caller registers again.
    pub async fn heartbeat_server(
        &self,
        name: &str,
        pid: i64,
        config_version: i64,
    ) -> Result<bool> {
        let n = on_pool!(self, p => sqlx::query(
                "UPDATE servers SET last_seen = $3, config_version = $4 WHERE name = $1 AND pid = $2",
            )
            .bind(name)
            .bind(pid)
            .bind(now_ms())
            .bind(config_version)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    /// Records that this server has applied `config_version`, as soon as it has (the
    /// heartbeat records it too, every 5 s): `cluster status` is right straight after a
    /// change. A lower version never overwrites a higher one (two recordings may race).
    pub async fn record_applied(&self, name: &str, pid: i64, config_version: i64) -> Result<()> {
        on_pool!(self, p => sqlx::query(
                "UPDATE servers SET config_version = $3 \
                 WHERE name = $1 AND pid = $2 AND config_version < $3",
            )
            .bind(name)
            .bind(pid)
            .bind(config_version)
            .execute(p)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Removes this server's row (a clean shutdown).
    pub async fn deregister_server(&self, name: &str, pid: i64) -> Result<()> {
        on_pool!(self, p => sqlx::query("DELETE FROM servers WHERE name = $1 AND pid = $2")
            .bind(name)
            .bind(pid)
            .execute(p)
            .await
            .map(drop)?);
        Ok(())
    }

    /// The registered servers (live or not yet found stale), by name.
    pub async fn servers(&self) -> Result<Vec<ServerRecord>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                SERVERS_SELECT,
            )
            .fetch_all(p)
            .await?;
            rows.iter().map(server_from_row).collect()
        })
    }
}

/// Whether a put may go on: a create of an object that exists, or a replace of one that does
/// not, is refused (`what` names the kind of object).
fn put_allowed(create: bool, existed: bool, what: &str, name: &str) -> Result<()> {
    match (create, existed) {
        (true, true) => Err(StoreError::Invalid(format!(
            "a {what} named {name} exists already"
        ))),
        (false, false) => Err(StoreError::NotFound(format!("no {what} named {name}"))),
        _ => Ok(()),
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

/// Channel names (by default the URL path): 1–200 printable characters, no spaces.
pub fn validate_channel_name(name: &str) -> Result<()> {
    if !name.is_empty() && name.len() <= 200 && name.chars().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{name:.40?} is not a valid channel name (1-200 printable ASCII characters, no spaces)"
        )))
    }
}

/// Module names are Python module names: dotted identifiers.
pub fn validate_module_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !part.starts_with(|c: char| c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{name:?} is not a valid Python module name (dotted identifiers)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
