//! Named admin API tokens (`admin_tokens`): a name, a role, and the SHA-256 of the token,
//! never the token. What a role may do, and the tokens themselves, are `admin::auth`'s; the
//! store keeps the role as its name. Tokens are not config: a change bumps no config version
//! and is in no export.

use sqlx::Row;

use super::{Result, Store, StoreError, now_ms};

/// A stored token: everything but the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub name: String,
    /// `admin`, `deployer` or `viewer`.
    pub role: String,
    /// Lower-case hex SHA-256 of the token.
    pub token_hash: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The identity that created it.
    pub created_by: String,
    /// Unix milliseconds of its last use, to the minute (`None`: never used).
    pub last_used_at: Option<i64>,
}

/// Token names: 1–200 characters of letters, digits and `._-` (as security definitions and
/// jobs are named).
pub fn validate_token_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{name:.60?} is not a valid token name (1-200 characters: letters, digits, ._-)"
        )))
    }
}

fn row_token<R: Row>(r: &R) -> Result<StoredToken>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredToken {
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        token_hash: r.try_get("token_hash")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

impl Store {
    /// Every stored token, by name.
    pub async fn tokens(&self) -> Result<Vec<StoredToken>> {
        let sql = "SELECT name, role, token_hash, created_at, created_by, last_used_at \
                   FROM admin_tokens ORDER BY name";
        on_pool!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter().map(row_token).collect()
        })
    }

    /// The token whose SHA-256 is `token_hash`, if one is stored.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<StoredToken>> {
        let sql = "SELECT name, role, token_hash, created_at, created_by, last_used_at \
                   FROM admin_tokens WHERE token_hash = $1";
        on_pool!(self, p => {
            let row = sqlx::query(sql).bind(token_hash).fetch_optional(p).await?;
            row.as_ref().map(row_token).transpose()
        })
    }

    /// Stores a new token; `None` when a token of that name exists already (nothing changed).
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        token_hash: &str,
        by: &str,
    ) -> Result<Option<StoredToken>> {
        validate_token_name(name)?;
        let created_at = now_ms();
        let sql = "INSERT INTO admin_tokens (name, role, token_hash, created_at, created_by) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING";
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(name)
            .bind(role)
            .bind(token_hash)
            .bind(created_at)
            .bind(by)
            .execute(p)
            .await?
            .rows_affected());
        Ok((n == 1).then(|| StoredToken {
            name: name.to_owned(),
            role: role.to_owned(),
            token_hash: token_hash.to_owned(),
            created_at,
            created_by: by.to_owned(),
            last_used_at: None,
        }))
    }

    /// Deletes (revokes) a token by name.
    pub async fn delete_token(&self, name: &str) -> Result<()> {
        let sql = "DELETE FROM admin_tokens WHERE name = $1";
        let n = on_pool!(self, p => sqlx::query(sql).bind(name).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound(format!("no token named {name}")));
        }
        Ok(())
    }

    /// Records that the token `token_hash` was used at `at` (Unix ms).
    pub async fn token_used(&self, token_hash: &str, at: i64) -> Result<()> {
        let sql = "UPDATE admin_tokens SET last_used_at = $1 WHERE token_hash = $2";
        on_pool!(self, p => sqlx::query(sql).bind(at).bind(token_hash).execute(p).await.map(drop)?);
        Ok(())
    }
}
