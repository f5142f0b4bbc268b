//! Config export and import: every object of the config store as one document, one list per
//! object kind (the shape Zato users know from enmasse). The admin API speaks it as JSON at
//! `GET /v1/config` and `POST /v1/config`; `oxbus config export|import` turns it into YAML.
//!
//! An import is validated in full before anything is written — the channels must route
//! unambiguously beside server.toml's, every secret must be a plain value or a value sealed
//! with this server's key, and every changed module is imported in a worker first — and then
//! applied in one store transaction (one config version). It is idempotent: an object equal to
//! the stored one is left alone, so importing the same file twice changes nothing the second
//! time. With `replace`, stored objects the document does not list are deleted (modules
//! undeployed; a stored definition of the `default` cache is kept, since that cache always
//! exists). server.toml's channels are not part of the document: they live in the file.
//! A job that leaves `start_date` out keeps the stored job's (a new one starts when it is
//! created), so a document without start dates imports idempotently too.
//!
//! `document` is the document's shape and parsing (no I/O), `import` the validation and the
//! apply; export is here. The admin endpoints are `admin::config`'s.

use serde::Serialize;
use serde_json::{Value, json};

use crate::admin::Ctx;
use crate::deploy::{DeployError, WorkerAck};
use crate::model::channel::{Channel, ChannelType};

mod import;

pub use crate::model::document::{Document, FORMAT, ModuleDoc, without_values};
pub use import::{check_modules, import};

/// One line of an import report.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub name: String,
    /// create | update | delete
    pub action: &'static str,
}

/// What an import did (or, with `dry_run`, would do).
#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub config_version: i64,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    pub workers: Vec<WorkerAck>,
}

fn bad(msg: impl Into<String>) -> DeployError {
    DeployError::Invalid(msg.into())
}

fn unavailable(e: impl std::fmt::Display) -> DeployError {
    DeployError::Unavailable(e.to_string())
}

/// The store's objects as a document (channels in routing order, the rest by name; secrets
/// sealed). Taken under the deploy lock by the caller, so it is one consistent version.
pub async fn export(cx: &Ctx) -> Result<Document, DeployError> {
    let store = &cx.store;
    let config_version = store.version().await.map_err(unavailable)?;
    // Channels in creation order: parameterised routes are tried in that order.
    let (channel_jsonrpc, channels): (Vec<Channel>, Vec<Channel>) = store
        .channels()
        .await
        .map_err(unavailable)?
        .into_iter()
        .partition(|c| c.channel_type == ChannelType::JsonRpc);
    let secrets = store.secrets().await.map_err(unavailable)?;
    let modules = store.active_modules().await.map_err(unavailable)?;
    let objects = store.object_set().await.map_err(unavailable)?;
    Ok(Document {
        cache: objects.caches,
        job: objects.jobs,
        security: serde_json::to_value(objects.security).expect("definitions serialise"),
        outgoing_rest: serde_json::to_value(objects.outgoing_rest).expect("definitions serialise"),
        outgoing_sql: serde_json::to_value(objects.outgoing_sql).expect("definitions serialise"),
        pubsub_topic: objects.pubsub_topics,
        // A WebSocket client's subscription lives and dies with its connection.
        pubsub_subscription: objects
            .pubsub_subs
            .into_iter()
            .filter(|s| !crate::model::object::ConfigObject::runtime_only(s))
            .collect(),
        pubsub_endpoint: objects.pubsub_endpoints,
        channel_amqp: serde_json::to_value(objects.inbound_amqp).expect("definitions serialise"),
        channel_mqtt: serde_json::to_value(objects.inbound_mqtt).expect("definitions serialise"),
        channel_file: objects.inbound_file,
        outgoing_amqp: serde_json::to_value(objects.outgoing_amqp).expect("definitions serialise"),
        outgoing_mqtt: serde_json::to_value(objects.outgoing_mqtt).expect("definitions serialise"),
        outgoing_redis: serde_json::to_value(objects.outgoing_redis)
            .expect("definitions serialise"),
        user_config: objects.user_config,
        oxbus_config: Some(FORMAT),
        config_version: Some(config_version),
        channel_rest: channels,
        channel_jsonrpc,
        secret: Value::Array(
            secrets
                .into_iter()
                .map(|s| json!({"name": s.name, "sealed": s.sealed, "services": s.services}))
                .collect(),
        ),
        service_module: modules
            .into_iter()
            .map(|m| ModuleDoc {
                name: m.name,
                source: m.source,
            })
            .collect(),
    })
}
