//! Deployed service modules: every stored version (`service_modules`), the active one, and
//! which module defines each service (`module_services`); a deploy written but not committed
//! yet ([`PendingDeploy`]). SQL only: checking the code in a worker and telling the workers
//! is the deploy sequence's (`deploy/`), not this file's.

use crate::store::BeginWrite;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Change, Result, Store, StoreError, bump, now_ms};

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
    /// Where the source came from, as its deployer named it (an absolute path: the file
    /// `oxbus deploy` or the pickup directory read); the workers compile the module under
    /// that file name and set its `__file__`. None: not known (then `<oxbus:NAME@vVERSION>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
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
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Module {
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        source: r.try_get("source")?,
        source_hash: r.try_get("source_hash")?,
        deployed_by: r.try_get("deployed_by")?,
        deployed_at: r.try_get("deployed_at")?,
        active: r.try_get("active")?,
        origin: r.try_get("origin")?,
    })
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
            let hash = $crate::store::source_hash(source);
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
            out.push($crate::store::Module {
                name: name.clone(),
                version,
                source: source.clone(),
                source_hash: hash,
                deployed_by: $by.to_owned(),
                deployed_at: $at,
                active: true,
                origin: None,
            });
        }
        out
    }};
}
pub(super) use insert_versions;

const MODULE_COLUMNS: &str =
    "name, version, source, source_hash, deployed_by, deployed_at, active, origin";

impl Store {
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
        self.begin_deploy_from(modules, &[], by).await
    }

    /// [`Store::begin_deploy`], with each module's origin (`origins`: name, path; a module
    /// not listed has none) stored with its version.
    pub async fn begin_deploy_from(
        &self,
        modules: &[(String, String)],
        origins: &[(String, String)],
        by: &str,
    ) -> Result<PendingDeploy> {
        let origin_of = |name: &str| {
            origins
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, o)| o.clone())
        };
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
            let mut tx = p.begin_write().await?;
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
                // $1 = deployed_by, $2 = deployed_at; then name, source, hash, origin per row.
                let rows = (0..chunk.len())
                    .map(|i| {
                        let b = 3 + 4 * i;
                        format!(
                            "(${b}, (SELECT COALESCE(MAX(version), 0) + 1 FROM service_modules WHERE name = ${b}), ${}, ${}, $1, $2, TRUE, ${})",
                            b + 1,
                            b + 2,
                            b + 3
                        )
                    })
                    .collect::<Vec<_>>();
                let sql = format!(
                    "INSERT INTO service_modules (name, version, source, source_hash, deployed_by, deployed_at, active, origin) \
                     VALUES {} RETURNING name, version",
                    rows.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(by).bind(at);
                for (i, (name, source)) in chunk.iter().enumerate() {
                    q = q
                        .bind(name)
                        .bind(source)
                        .bind(&hashes[n * DEPLOY_CHUNK + i])
                        .bind(origin_of(name));
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
                    origin: origin_of(name),
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
            let mut tx = p.begin_write().await?;
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
            let mut tx = p.begin_write().await?;
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
}

/// Modules per batched statement of a deploy: 4 parameters each, far below SQLite's and
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
        let timing = super::Timing::start("modules");
        let result = async {
            match &mut self.tx {
                PendingTx::Sqlite(tx) => claim_services!(tx, &modules, claims),
                PendingTx::Postgres(tx) => claim_services!(tx, &modules, claims),
            }
            Ok(())
        }
        .await;
        timing.finish(&result);
        result
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
        let timing = super::Timing::start("modules");
        let result = match self.tx {
            PendingTx::Sqlite(tx) => tx.commit().await,
            PendingTx::Postgres(tx) => tx.commit().await,
        }
        .map_err(StoreError::from);
        timing.finish(&result);
        result?;
        Ok(self.change)
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
