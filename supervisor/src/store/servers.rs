//! Cluster membership (`servers`): each server registers at start, refreshes its heartbeat,
//! records the config version it applied, and deregisters at a clean stop. The bus and the
//! following of the store are `cluster/`'s.

use crate::store::BeginWrite;
use sqlx::Row;
use std::time::Duration;

use super::{Result, Store, StoreError, now_ms};

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
            let mut tx = p.begin_write().await?;
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
