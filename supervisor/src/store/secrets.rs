//! Stored secrets (`secrets`): sealed values only, and the service-name patterns that may
//! read each (`services`, a JSON list: `crate::model::secret_access`). Sealing and
//! unsealing are `crate::secrets`' (it holds the key); this file never sees a plain value.

use crate::store::BeginWrite;
use sqlx::Row;

use super::{Change, Result, Store, StoreError, bump};

/// Inside transaction `$tx`: creates or replaces a sealed secret and who may read it
/// (`$services`, a `&[String]`).
macro_rules! upsert_secret {
    ($tx:ident, $name:expr, $sealed:expr, $services:expr, $by:expr) => {{
        sqlx::query(
            "INSERT INTO secrets (name, sealed, services, updated_by, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, \
             services = excluded.services, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind($name)
        .bind($sealed)
        .bind(serde_json::to_string($services).expect("a list of strings"))
        .bind($by)
        .bind($crate::store::now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use upsert_secret;

/// A stored secret: its sealed value only (see `crate::secrets`), and who may read it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedSecret {
    pub name: String,
    pub sealed: String,
    /// Service-name patterns that may read it from Python (`self.secrets[name]`); empty:
    /// none (`crate::model::secret_access`). Absent in snapshots written before issue 19.
    #[serde(default)]
    pub services: Vec<String>,
    pub updated_by: String,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// The prefixes of the names credentials are sealed under (`RestConn::seal_name`,
/// `SqlConn::seal_name`, a security definition's): a secret of such a name would be sealed
/// under the same associated data as that credential, so that a credential copied into it
/// (an import checks that a sealed value opens under the secret's name) would open, and
/// services could read it.
pub const RESERVED_SECRET_PREFIXES: [&str; 2] = ["outgoing/", "security/"];

/// Secret names: 1–200 characters of letters, digits and `._-/:@`, not starting with one of
/// [`RESERVED_SECRET_PREFIXES`].
pub fn validate_secret_name(name: &str) -> Result<()> {
    if let Some(p) = RESERVED_SECRET_PREFIXES
        .iter()
        .find(|p| name.to_ascii_lowercase().starts_with(*p))
    {
        return Err(StoreError::Invalid(format!(
            "{name:?} is not a valid secret name: names starting with {p:?} are reserved for \
             the server's own sealed credentials (a secret of that name could open one of them)"
        )));
    }
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

/// Checks a secret's `services` patterns.
pub fn validate_services(name: &str, services: &[String]) -> Result<()> {
    crate::model::secret_access::validate_patterns(services)
        .map_err(|e| StoreError::Invalid(format!("secret {name}: {e}")))
}

/// The `services` column: a JSON list of strings.
fn services_column(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("a secret's stored services are unreadable: {e}")))
}

impl Store {
    /// Every stored secret, sealed, by name.
    pub async fn secrets(&self) -> Result<Vec<SealedSecret>> {
        let sql =
            "SELECT name, sealed, services, updated_by, updated_at FROM secrets ORDER BY name";
        on_pool!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    Ok(SealedSecret {
                        name: r.try_get("name")?,
                        sealed: r.try_get("sealed")?,
                        services: services_column(&r.try_get::<String, _>("services")?)?,
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
            .objects::<crate::model::security::SecurityDef>()
            .await?
            .into_iter()
            .find_map(|d| d.sealed))
    }

    /// Creates or replaces a secret (already sealed), keeping who may read it (none for a
    /// new one); `value` is true when it was created.
    pub async fn put_secret(&self, name: &str, sealed: &str, by: &str) -> Result<Change<bool>> {
        self.put_secret_with(name, Some(sealed), None, by).await
    }

    /// Creates or changes a secret: its sealed value and/or the service patterns that may
    /// read it. `None` keeps what is stored (a new secret: `sealed` is required, `services`
    /// defaults to none). `value` is true when it was created.
    pub async fn put_secret_with(
        &self,
        name: &str,
        sealed: Option<&str>,
        services: Option<&[String]>,
        by: &str,
    ) -> Result<Change<bool>> {
        validate_secret_name(name)?;
        if let Some(s) = services {
            validate_services(name, s)?;
        }
        // PostgreSQL: the row is locked until the commit, so that two servers changing the
        // value and the readers of one secret at once do not lose either change (SQLite's
        // `BEGIN IMMEDIATE` already serialises writers).
        let select = match self {
            Store::Postgres(_) => "SELECT sealed, services FROM secrets WHERE name = $1 FOR UPDATE",
            Store::Sqlite(_) => "SELECT sealed, services FROM secrets WHERE name = $1",
        };
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let existed = sqlx::query(select)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            let (old_sealed, old_services) = match &existed {
                Some(r) => (
                    Some(r.try_get::<String, _>("sealed")?),
                    services_column(&r.try_get::<String, _>("services")?)?,
                ),
                None => (None, Vec::new()),
            };
            let Some(sealed) = sealed.map(str::to_owned).or(old_sealed) else {
                return Err(StoreError::NotFound(format!(
                    "no secret named {name} (a new secret needs a value)"
                )));
            };
            let services = services.map(<[String]>::to_vec).unwrap_or(old_services);
            upsert_secret!(tx, name, &sealed, &services, by);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: existed.is_none() })
        })
    }

    /// Deletes a secret by name.
    pub async fn delete_secret(&self, name: &str) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
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
}
