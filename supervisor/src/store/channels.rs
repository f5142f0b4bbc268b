//! Stored channels (`channels`): create, list, delete, and a channel's row as stored. The
//! table as a whole must route unambiguously: checked here with the edge's router before a
//! channel is added (the one place the store looks at routing).

use crate::store::BeginWrite;
use sqlx::Row;

use super::{Change, Result, Store, StoreError, bump};
use crate::model::channel::{Channel, ChannelType, DataFormat};

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
    let settings: Option<String> = r.try_get("settings")?;
    let params_priority: Option<String> = r.try_get("params_priority")?;
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
            "pubsub" => ChannelType::Pubsub,
            "websocket" => ChannelType::Websocket,
            other => {
                return Err(StoreError::Invalid(format!(
                    "stored channel type {other:?} is not one this server knows"
                )));
            }
        },
        services: serde_json::from_str(&services)
            .map_err(|e| StoreError::Invalid(format!("stored channel services: {e}")))?,
        websocket: settings
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored channel websocket settings: {e}")))?,
        params_priority: params_priority
            .map(|p| serde_json::from_value(serde_json::Value::String(p)))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored channel params_priority: {e}")))?,
    })
}

/// A channel's gate columns as stored: security, allow_from (JSON), rate_limit (JSON).
pub(super) fn gate_columns(c: &Channel) -> (Option<String>, String, Option<String>) {
    (
        c.security.clone(),
        serde_json::to_string(&c.allow_from).expect("a list of strings"),
        c.rate_limit
            .as_ref()
            .map(|l| serde_json::to_string(l).expect("a rate limit serialises")),
    )
}

/// Inside transaction `$tx`: inserts a named channel.
macro_rules! insert_channel {
    ($tx:ident, $channel:expr, $name:expr) => {{
        let methods = serde_json::to_string(&$channel.methods).expect("a list of strings");
        let (security, allow_from, rate_limit) = $crate::store::channels::gate_columns(&$channel);
        let services = serde_json::to_string(&$channel.services).expect("a list of strings");
        let settings = $channel
            .websocket
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("websocket settings serialise"));
        sqlx::query(
            "INSERT INTO channels (name, url_path, methods, service, data_format, created_at, \
             security, allow_from, rate_limit, channel_type, services, settings, params_priority) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind($name)
        .bind(&$channel.url_path)
        .bind(&methods)
        .bind(&$channel.service)
        .bind($channel.data_format.as_str())
        .bind($crate::store::now_ms())
        .bind(security)
        .bind(allow_from)
        .bind(rate_limit)
        .bind($channel.channel_type.as_str())
        .bind(&services)
        .bind(settings)
        .bind($channel.params_priority.map(|p| p.as_str()))
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use insert_channel;

impl Store {
    /// Adds a channel (of any type); its name (default: the URL path) must be new.
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
        crate::model::channel::routes(&all).map_err(|e| StoreError::Invalid(e.to_string()))?;
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            insert_channel!(tx, stored, &name);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: stored })
        })
    }

    /// Every stored channel, in creation order.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let sql = "SELECT name, url_path, methods, service, data_format, security, allow_from, \
                   rate_limit, channel_type, services, settings, params_priority FROM channels ORDER BY id";
        on_pool!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter().map(channel_from_row).collect()
        })
    }

    /// Deletes a channel by name.
    pub async fn delete_channel(&self, name: &str) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
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
