//! The named objects kept as JSON definitions, one table each with the same shape (`name`,
//! `definition`, `updated_by`, `updated_at`): security definitions (`security_defs`), cache
//! definitions (`cache_defs`) and scheduler jobs (`jobs`). Each definition is validated by its
//! own type before it is stored; what it means at runtime is its subsystem's.

use super::{Change, Result, Store, StoreError, bump};
use crate::model::job::JobDef;

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
        .bind($crate::store::now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use upsert_security;

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
        .bind($crate::store::now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use upsert_cache_def;

/// Inside transaction `$tx`: the job definition `$def` as it is to be stored (`start_date`
/// filled in from the stored job, else with the time of creation: see
/// [`JobDef::as_stored`]); evaluates to it and whether the job existed.
macro_rules! job_as_stored {
    ($tx:ident, $def:expr) => {{
        let def: &$crate::model::job::JobDef = $def;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT definition FROM jobs WHERE name = $1")
                .bind(&def.name)
                .fetch_optional(&mut *$tx)
                .await?;
        let stored: Option<$crate::model::job::JobDef> = stored
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| {
                $crate::store::StoreError::Invalid(format!("stored job {}: {e}", def.name))
            })?;
        let existed = stored.is_some();
        (
            def.clone().as_stored(stored.as_ref(), chrono::Utc::now()),
            existed,
        )
    }};
}
pub(super) use job_as_stored;

/// Inside transaction `$tx`: creates or replaces a job definition (as given: see
/// `job_as_stored!`).
macro_rules! upsert_job {
    ($tx:ident, $def:expr, $by:expr) => {{
        let def: &$crate::model::job::JobDef = $def;
        let json = serde_json::to_string(def).expect("a definition serialises");
        sqlx::query(
            "INSERT INTO jobs (name, definition, updated_by, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(&def.name)
        .bind(json)
        .bind($by)
        .bind($crate::store::now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use upsert_job;

impl Store {
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
        def.validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
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
    pub async fn jobs(&self) -> Result<Vec<JobDef>> {
        self.json_objects("jobs", "job").await
    }

    /// Creates (`create`: refused when it exists) or replaces (refused when it does not) a
    /// job; checked with [`JobDef::validate`] first. Returns the job as stored
    /// (`start_date` left out: the stored job's on a replace, now on a create).
    pub async fn put_job(&self, def: &JobDef, create: bool, by: &str) -> Result<Change<JobDef>> {
        def.validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
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
    ) -> Result<Change<JobDef>> {
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
            let mut def: JobDef = serde_json::from_str(&stored)
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
