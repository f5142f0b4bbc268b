//! The JSON-defined named objects ([`ConfigObject`]: security definitions, cache definitions,
//! scheduler jobs, ...), one table each with the same shape (`name`, `definition`,
//! `updated_by`, `updated_at`): one generic list, put and delete for every kind. Each
//! definition is validated by its own type before it is stored; what it means at runtime is
//! its subsystem's. Kind-specific rules that need SQL are small hooks here
//! ([`Store::delete_object`]'s check of a security definition's users, [`Store::set_job_active`]).

use super::{Change, Result, Store, StoreError, bump};
use crate::model::job::JobDef;
use crate::model::object::{ConfigObject, ObjectSet};
use crate::model::security::SecurityDef;
use crate::store::BeginWrite;

/// `SELECT definition FROM <K's table> WHERE name = $1`.
pub(super) fn select_one_sql<K: ConfigObject>() -> sqlx::AssertSqlSafe<String> {
    // `K::TABLE` is a constant of the code, never input.
    sqlx::AssertSqlSafe(format!(
        "SELECT definition FROM {} WHERE name = $1",
        K::TABLE
    ))
}

/// `SELECT name FROM <K's table> WHERE name = $1` (whether it exists).
fn select_name_sql<K: ConfigObject>() -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT name FROM {} WHERE name = $1", K::TABLE))
}

/// `DELETE FROM <K's table> WHERE name = $1`.
pub(super) fn delete_sql<K: ConfigObject>() -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("DELETE FROM {} WHERE name = $1", K::TABLE))
}

/// Creates or replaces a row of `<K's table>` ($1 name, $2 definition, $3 by, $4 at).
pub(super) fn upsert_sql<K: ConfigObject>() -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (name, definition, updated_by, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
         updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        K::TABLE
    ))
}

/// A stored definition (the `definition` column) as its type; `name` names it in the error.
pub(super) fn stored<K: ConfigObject>(json: &str, name: &str) -> Result<K> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Invalid(format!("stored {} {name}: {e}", K::WHAT)))
}

/// Inside transaction `$tx`: the definition `$def` (a `&$k`) as it is to be stored (see
/// [`ConfigObject::into_stored`]), given the stored one; evaluates to it and whether one of
/// that name existed.
macro_rules! object_into_stored {
    ($tx:ident, $k:ty, $def:expr) => {{
        let def: &$k = $def;
        let name = $crate::model::object::ConfigObject::name(def);
        let json: Option<String> =
            sqlx::query_scalar($crate::store::objects::select_one_sql::<$k>())
                .bind(name)
                .fetch_optional(&mut *$tx)
                .await?;
        let stored: Option<$k> = json
            .map(|j| $crate::store::objects::stored::<$k>(&j, name))
            .transpose()?;
        let existed = stored.is_some();
        (
            $crate::model::object::ConfigObject::into_stored(
                def.clone(),
                stored.as_ref(),
                chrono::Utc::now(),
            ),
            existed,
        )
    }};
}
pub(super) use object_into_stored;

/// Inside transaction `$tx`: creates or replaces the definition `$def` (a `&$k`, as given:
/// see `object_into_stored!`).
macro_rules! upsert_object {
    ($tx:ident, $k:ty, $def:expr, $by:expr) => {{
        let def: &$k = $def;
        let json = serde_json::to_string(def).expect("a definition serialises");
        sqlx::query($crate::store::objects::upsert_sql::<$k>())
            .bind($crate::model::object::ConfigObject::name(def))
            .bind(json)
            .bind($by)
            .bind($crate::store::now_ms())
            .execute(&mut *$tx)
            .await?;
    }};
}
pub(super) use upsert_object;

impl Store {
    /// Every object of kind `K`, by name.
    pub async fn objects<K: ConfigObject>(&self) -> Result<Vec<K>> {
        // `K::TABLE` is a constant of the code, never input.
        let sql = sqlx::AssertSqlSafe(format!("SELECT definition FROM {} ORDER BY name", K::TABLE));
        let rows: Vec<String> = on_pool!(self, p => sqlx::query_scalar(sql).fetch_all(p).await?);
        rows.iter()
            .map(|j| {
                serde_json::from_str(j)
                    .map_err(|e| StoreError::Invalid(format!("stored {}: {e}", K::WHAT)))
            })
            .collect()
    }

    /// Every object of every kind (in one view only under the caller's deploy lock).
    pub async fn object_set(&self) -> Result<ObjectSet> {
        Ok(ObjectSet {
            security: self.objects().await?,
            caches: self.objects().await?,
            jobs: self.objects().await?,
            outgoing_rest: self.objects().await?,
            outgoing_sql: self.objects().await?,
            pubsub_topics: self.objects().await?,
            pubsub_subs: self.objects().await?,
            pubsub_endpoints: self.objects().await?,
            inbound_amqp: self.objects().await?,
            inbound_mqtt: self.objects().await?,
            inbound_file: self.objects().await?,
            outgoing_amqp: self.objects().await?,
            outgoing_mqtt: self.objects().await?,
            outgoing_redis: self.objects().await?,
            user_config: self.objects().await?,
        })
    }

    /// Creates (`create`: refused when it exists) or replaces (refused when it does not) an
    /// object; checked with [`ConfigObject::validate`] first. Returns it as stored (see
    /// [`ConfigObject::into_stored`]).
    pub async fn put_object<K: ConfigObject>(
        &self,
        def: &K,
        create: bool,
        by: &str,
    ) -> Result<Change<K>> {
        def.validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if !K::FILLED_FROM_STORED {
                // As a delete: the object's row, then the version.
                let existed: Option<String> = sqlx::query_scalar(select_name_sql::<K>())
                    .bind(def.name())
                    .fetch_optional(&mut *tx)
                    .await?;
                put_allowed::<K>(create, existed.is_some(), def.name())?;
                upsert_object!(tx, K, def, by);
                let config_version = bump(&mut tx).await?;
                tx.commit().await?;
                Ok(Change { config_version, value: def.clone() })
            } else {
                // The version first: its row lock orders this change after any other one
                // still open, so what is read below is current.
                let config_version = bump(&mut tx).await?;
                let (def, existed) = object_into_stored!(tx, K, def);
                put_allowed::<K>(create, existed, def.name())?;
                upsert_object!(tx, K, &def, by);
                tx.commit().await?;
                Ok(Change { config_version, value: def })
            }
        })
    }

    /// Deletes an object by name and bumps the config version; a security definition is
    /// refused while a stored channel names it (the one kind other objects refer to).
    pub async fn delete_object<K: ConfigObject>(&self, name: &str) -> Result<Change<()>> {
        let sql = delete_sql::<K>();
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if named_by_channels::<K>() {
                let users: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM channels WHERE security = $1 ORDER BY id",
                )
                .bind(name)
                .fetch_all(&mut *tx)
                .await?;
                in_use(name, &users)?;
            }
            let n = sqlx::query(sql)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("no {} named {name}", K::WHAT)));
            }
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
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
            let mut tx = p.begin_write().await?;
            let config_version = bump(&mut tx).await?;
            let json: Option<String> = sqlx::query_scalar(select_one_sql::<JobDef>())
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(json) = json else {
                return Err(StoreError::NotFound(format!("no job named {name}")));
            };
            let mut def: JobDef = stored(&json, name)?;
            def.active = active;
            upsert_object!(tx, JobDef, &def, by);
            tx.commit().await?;
            Ok(Change { config_version, value: def })
        })
    }
}

/// Whether stored channels name objects of kind `K` (`channels.security`).
fn named_by_channels<K: ConfigObject>() -> bool {
    K::TABLE == <SecurityDef as ConfigObject>::TABLE
}

/// A security definition that stored channels (`users`) name is not deleted.
fn in_use(name: &str, users: &[String]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "security definition {name} is used by channel(s) {}: change them first",
        users.join(", ")
    )))
}

/// Whether a put may go on: a create of an object that exists, or a replace of one that does
/// not, is refused.
fn put_allowed<K: ConfigObject>(create: bool, existed: bool, name: &str) -> Result<()> {
    match (create, existed) {
        (true, true) => Err(StoreError::Invalid(format!(
            "a {} named {name} exists already",
            K::WHAT
        ))),
        (false, false) => Err(StoreError::NotFound(format!("no {} named {name}", K::WHAT))),
        _ => Ok(()),
    }
}
