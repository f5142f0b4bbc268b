//! The audit log (`audit_log`): one row per admin change — who, when, on which server, what
//! object, a digest of it before and after — written by the admin API (`admin::audit`) and
//! the pickup directory, read newest first by `GET /v1/audit`, pruned past the retention.
//! A digest is SHA-256 over a canonical JSON of the stored object ([`digest`]); a secret's is
//! over its sealed form, so no row holds or reveals a value.

use crate::store::BeginWrite;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Module, Result, Store};

/// One row of the audit log (`id` and `at` are set by [`Store::audit_insert`] when written).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// The server the change went through.
    pub server: String,
    /// The identity's name (`root`, a token's name, `pickup`).
    pub who: String,
    pub action: String,
    pub kind: String,
    /// `""` when the change names no object (a config import's summary).
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub cid: Option<String>,
    /// A small JSON object (module versions, an import's counts, a refusal's status).
    pub detail: Value,
}

/// What [`Store::audit_page`] selects: every filter is optional; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub who: Option<String>,
    /// Rows at or after this Unix ms.
    pub since: Option<i64>,
    /// Rows with a smaller id (the paging cursor).
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// `value` with every object's keys in order and no insignificant whitespace: the same
/// object always gives the same bytes.
pub fn canonical_json(value: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// SHA-256 (lower-case hex) of [`canonical_json`] of `value`.
pub fn digest(value: &Value) -> String {
    Sha256::digest(canonical_json(value).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest of a stored module version: its name, version and source hash (the source
/// itself is in the hash).
pub fn module_digest(m: &Module) -> String {
    module_head_digest(&m.name, m.version, &m.source_hash)
}

/// [`module_digest`] from a module version's name, version and source hash.
pub fn module_head_digest(name: &str, version: i64, source_hash: &str) -> String {
    digest(&serde_json::json!({
        "name": name, "version": version, "source_hash": source_hash,
    }))
}

/// The digest of a stored secret: over its name, sealed form and readers, never its value
/// (a new value is sealed with a fresh nonce, so every update gives a new digest).
pub fn secret_digest(name: &str, sealed: &str, services: &[String]) -> String {
    // Without readers the digest is the one of before issue 19 (no `services` member).
    if services.is_empty() {
        digest(&serde_json::json!({ "name": name, "sealed": sealed }))
    } else {
        digest(&serde_json::json!({ "name": name, "sealed": sealed, "services": services }))
    }
}

/// The statement of [`Store::audit_page`] for `q`, with its parameters in order: the text
/// ones, then the numbers, then the limit (the last).
fn audit_page_sql(q: &AuditQuery) -> (String, Vec<&str>, Vec<i64>) {
    let mut sql = String::from(
        "SELECT id, at, server, who, action, kind, name, before_digest, after_digest, cid, \
         detail FROM audit_log",
    );
    let mut conditions = Vec::new();
    let mut text = Vec::new();
    let mut int = Vec::new();
    let mut n = 0;
    let mut param = || {
        n += 1;
        format!("${n}")
    };
    for (column, value) in [("kind", &q.kind), ("name", &q.name), ("who", &q.who)] {
        if let Some(v) = value {
            conditions.push(format!("{column} = {}", param()));
            text.push(v.as_str());
        }
    }
    for (condition, value) in [("at >=", q.since), ("id <", q.before_id)] {
        if let Some(v) = value {
            conditions.push(format!("{condition} {}", param()));
            int.push(v);
        }
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", param()));
    (sql, text, int)
}

/// Reading a row on either engine.
trait AuditRow {
    fn record(&self) -> Result<AuditRecord>;
}

macro_rules! impl_audit_row {
    ($row:ty) => {
        impl AuditRow for $row {
            fn record(&self) -> Result<AuditRecord> {
                let detail: String = self.try_get("detail")?;
                Ok(AuditRecord {
                    id: self.try_get("id")?,
                    at: self.try_get("at")?,
                    server: self.try_get("server")?,
                    who: self.try_get("who")?,
                    action: self.try_get("action")?,
                    kind: self.try_get("kind")?,
                    name: self.try_get("name")?,
                    before: self.try_get("before_digest")?,
                    after: self.try_get("after_digest")?,
                    cid: self.try_get("cid")?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
                })
            }
        }
    };
}
impl_audit_row!(sqlx::sqlite::SqliteRow);
impl_audit_row!(sqlx::postgres::PgRow);

impl Store {
    /// Writes `rows` in one transaction, each at `at` (Unix ms; `now` when 0); their `id`s
    /// are the store's.
    pub async fn audit_insert(&self, rows: &[AuditRecord]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = "INSERT INTO audit_log (at, server, who, action, kind, name, before_digest, \
                   after_digest, cid, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
        let now = super::now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            for r in rows {
                sqlx::query(sql)
                    .bind(if r.at == 0 { now } else { r.at })
                    .bind(&r.server)
                    .bind(&r.who)
                    .bind(&r.action)
                    .bind(&r.kind)
                    .bind(&r.name)
                    .bind(&r.before)
                    .bind(&r.after)
                    .bind(&r.cid)
                    .bind(r.detail.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The rows `q` selects, newest first, at most `q.limit`. The statement names only the
    /// filters `q` sets, so that an object's or an identity's rows are found through its
    /// index (`audit_log_object`, `audit_log_who`) rather than by a scan of every row.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let (sql, text, int) = audit_page_sql(q);
        on_pool!(self, p => {
            // Built from fixed column names and numbered parameters only: no value in it.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for v in text {
                query = query.bind(v);
            }
            for v in int {
                query = query.bind(v);
            }
            let rows = query.bind(q.limit.max(0)).fetch_all(p).await?;
            rows.iter().map(AuditRow::record).collect()
        })
    }

    /// The active module versions without their sources: (name, version, source hash), by
    /// name (what a module's digest covers, without reading every source).
    pub async fn active_module_heads(&self) -> Result<Vec<(String, i64, String)>> {
        let sql =
            "SELECT name, version, source_hash FROM service_modules WHERE active ORDER BY name";
        Ok(on_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Deletes up to `batch` rows older than `cutoff` (Unix ms), oldest first (by `at`, the
    /// order of its index `audit_log_at`); the number deleted (fewer than `batch`: nothing
    /// older is left).
    pub async fn audit_prune(&self, cutoff: i64, batch: i64) -> Result<u64> {
        let sql = "DELETE FROM audit_log WHERE id IN \
                   (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)";
        Ok(on_pool!(self, p => sqlx::query(sql)
            .bind(cutoff)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected()))
    }
}
