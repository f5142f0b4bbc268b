//! The JSON-defined named config objects as one kind of thing: [`ConfigObject`] says what
//! differs between security definitions, cache definitions and scheduler jobs (their table,
//! their names in messages, validation, how a definition is stored), so that the
//! store, the admin API, config export/import, the snapshot and sync handle them with one
//! generic path each. Plain data and pure functions only: no I/O, no store, no HTTP.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a definition is refused: the message an operator reads (it names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidObject(pub String);

/// A named config object kept as a JSON definition in a table of its own with the columns
/// `name TEXT PRIMARY KEY, definition TEXT, updated_by, updated_at` (docs/CONFIG_OBJECTS.md).
pub trait ConfigObject:
    Clone + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Its name in an import's change list ("cache", "job", "security").
    const KIND: &'static str;
    /// Its name in a message ("cache definition", "job", "security definition").
    const WHAT: &'static str;
    /// Its store table; a trusted name, never input.
    const TABLE: &'static str;

    fn name(&self) -> &str;

    /// Checks what a stored definition must satisfy.
    fn validate(&self) -> Result<(), InvalidObject>;

    /// Whether [`ConfigObject::into_stored`] needs the stored definition (jobs fill in
    /// `start_date` from it). A put of such a kind bumps the config version first — its row
    /// lock orders the change after any other still open, so the stored one read is
    /// current — then reads, then writes; a put of any other kind checks only whether the
    /// name exists, writes, then bumps, as a delete does.
    const FILLED_FROM_STORED: bool = false;

    /// The definition as it is to be stored, given the stored one of that name (if any) and
    /// the time of the change: as given unless the kind fills something in. A kind that
    /// overrides this must set [`ConfigObject::FILLED_FROM_STORED`]: puts and imports call it
    /// only then.
    fn into_stored(self, _stored: Option<&Self>, _now: chrono::DateTime<chrono::Utc>) -> Self {
        self
    }

    /// Whether an object of that name always exists, so that it is never deleted (by an
    /// import with `replace` either).
    fn always_exists(_name: &str) -> bool {
        false
    }

    /// Whether this object belongs to something that lives only while a server runs (a
    /// WebSocket client's subscription): it is not exported, not imported, and an import
    /// with `replace` leaves it alone (unless it deletes what the object needs: a
    /// subscription's topic).
    fn runtime_only(&self) -> bool {
        false
    }
}

impl ConfigObject for oxbus_cache::CacheDef {
    const KIND: &'static str = "cache";
    const WHAT: &'static str = "cache definition";
    const TABLE: &'static str = "cache_defs";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        oxbus_cache::CacheDef::validate(self).map_err(|e| InvalidObject(e.to_string()))
    }

    fn always_exists(name: &str) -> bool {
        name == oxbus_cache::DEFAULT_CACHE
    }
}

impl ConfigObject for crate::model::job::JobDef {
    const KIND: &'static str = "job";
    const WHAT: &'static str = "job";
    const TABLE: &'static str = "jobs";
    const FILLED_FROM_STORED: bool = true;

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::job::JobDef::validate(self).map_err(|e| InvalidObject(e.to_string()))
    }

    fn into_stored(self, stored: Option<&Self>, now: chrono::DateTime<chrono::Utc>) -> Self {
        crate::model::job::JobDef::as_stored(self, stored, now)
    }
}

impl ConfigObject for crate::model::security::SecurityDef {
    const KIND: &'static str = "security";
    const WHAT: &'static str = "security definition";
    const TABLE: &'static str = "security_defs";

    fn name(&self) -> &str {
        &self.name
    }

    /// Checked where it is built (`edge::gate::from_input` compiles it).
    fn validate(&self) -> Result<(), InvalidObject> {
        Ok(())
    }
}

impl ConfigObject for crate::model::outgoing::RestConn {
    const KIND: &'static str = "outgoing_rest";
    const WHAT: &'static str = "REST connection";
    const TABLE: &'static str = "outgoing_rest";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::RestConn::validate(self)
    }
}

impl ConfigObject for crate::model::outgoing::SqlConn {
    const KIND: &'static str = "outgoing_sql";
    const WHAT: &'static str = "SQL connection";
    const TABLE: &'static str = "outgoing_sql";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::SqlConn::validate(self)
    }
}

impl ConfigObject for crate::model::pubsub::Topic {
    const KIND: &'static str = "pubsub_topic";
    const WHAT: &'static str = "topic";
    const TABLE: &'static str = "pubsub_topics";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::pubsub::Topic::validate(self)
    }
}

impl ConfigObject for crate::model::pubsub::Subscription {
    const KIND: &'static str = "pubsub_subscription";
    const WHAT: &'static str = "subscription";
    const TABLE: &'static str = "pubsub_subs";
    const FILLED_FROM_STORED: bool = true;

    fn name(&self) -> &str {
        &self.sub_key
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::pubsub::Subscription::validate(self)
    }

    fn runtime_only(&self) -> bool {
        matches!(
            self.delivery,
            crate::model::pubsub::DeliveryKind::Websocket { .. }
        )
    }

    /// A definition that leaves `created_at_ms` (0) or `created_by` out keeps the stored
    /// one's; a new one is created now. The delivery of a topic the subscription matches
    /// later starts at `created_at_ms`, so an edit (or an import of an export, which has
    /// it) must not move it.
    fn into_stored(mut self, stored: Option<&Self>, now: chrono::DateTime<chrono::Utc>) -> Self {
        if self.created_at_ms == 0 {
            self.created_at_ms = stored
                .map(|s| s.created_at_ms)
                .filter(|t| *t != 0)
                .unwrap_or_else(|| now.timestamp_millis());
        }
        if self.created_by.is_none() {
            self.created_by = stored.and_then(|s| s.created_by.clone());
        }
        self
    }
}

impl ConfigObject for crate::model::pubsub::Endpoint {
    const KIND: &'static str = "pubsub_endpoint";
    const WHAT: &'static str = "pub/sub endpoint";
    const TABLE: &'static str = "pubsub_endpoints";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::pubsub::Endpoint::validate(self)
    }
}

impl ConfigObject for crate::model::amqp::AmqpChannel {
    const KIND: &'static str = "inbound_amqp";
    const WHAT: &'static str = "AMQP channel";
    const TABLE: &'static str = "inbound_amqp";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::amqp::AmqpChannel::validate(self)
    }
}

impl ConfigObject for crate::model::mqtt::MqttChannel {
    const KIND: &'static str = "inbound_mqtt";
    const WHAT: &'static str = "MQTT channel";
    const TABLE: &'static str = "inbound_mqtt";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::mqtt::MqttChannel::validate(self)
    }
}

impl ConfigObject for crate::model::files::FileChannel {
    const KIND: &'static str = "inbound_file";
    const WHAT: &'static str = "file channel";
    const TABLE: &'static str = "inbound_file";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::files::FileChannel::validate(self)
    }
}

impl ConfigObject for crate::model::amqp::AmqpConn {
    const KIND: &'static str = "outgoing_amqp";
    const WHAT: &'static str = "AMQP connection";
    const TABLE: &'static str = "outgoing_amqp";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::amqp::AmqpConn::validate(self)
    }
}

impl ConfigObject for crate::model::mqtt::MqttConn {
    const KIND: &'static str = "outgoing_mqtt";
    const WHAT: &'static str = "MQTT connection";
    const TABLE: &'static str = "outgoing_mqtt";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::mqtt::MqttConn::validate(self)
    }
}

impl ConfigObject for crate::model::redis::RedisConn {
    const KIND: &'static str = "outgoing_redis";
    const WHAT: &'static str = "Redis connection";
    const TABLE: &'static str = "outgoing_redis";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::redis::RedisConn::validate(self)
    }
}

impl ConfigObject for crate::model::user_config::UserConfig {
    const KIND: &'static str = "user_config";
    const WHAT: &'static str = "user config";
    const TABLE: &'static str = "user_config";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::user_config::UserConfig::validate(self)
    }
}

/// Every object of every JSON-defined kind, one list each: what the snapshot holds and the
/// sync loop applies. Its JSON is the snapshot's keys `security`, `caches`, `jobs`,
/// `outgoing_rest`, `outgoing_sql`, `pubsub_topics`, `pubsub_subs`, `pubsub_endpoints`,
/// `inbound_amqp`, `inbound_mqtt`, `inbound_file`, `outgoing_amqp`, `outgoing_mqtt`, `outgoing_redis`, `user_config` (each may
/// be absent: snapshots of older versions lack the later kinds). A new kind is one field
/// here and one line in `Store::object_set`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ObjectSet {
    /// Security definitions (secret material sealed).
    #[serde(default)]
    pub security: Vec<crate::model::security::SecurityDef>,
    /// Cache definitions (the built-in `default` is not among them unless one was stored).
    #[serde(default)]
    pub caches: Vec<oxbus_cache::CacheDef>,
    /// Scheduler jobs.
    #[serde(default)]
    pub jobs: Vec<crate::model::job::JobDef>,
    /// Outgoing REST connections (credentials sealed).
    #[serde(default)]
    pub outgoing_rest: Vec<crate::model::outgoing::RestConn>,
    /// Outgoing SQL connections (password sealed).
    #[serde(default)]
    pub outgoing_sql: Vec<crate::model::outgoing::SqlConn>,
    /// Pub/sub topics.
    #[serde(default)]
    pub pubsub_topics: Vec<crate::model::pubsub::Topic>,
    /// Pub/sub subscriptions.
    #[serde(default)]
    pub pubsub_subs: Vec<crate::model::pubsub::Subscription>,
    /// Pub/sub endpoints (who may publish and subscribe where).
    #[serde(default)]
    pub pubsub_endpoints: Vec<crate::model::pubsub::Endpoint>,
    /// AMQP channels (password sealed).
    #[serde(default)]
    pub inbound_amqp: Vec<crate::model::amqp::AmqpChannel>,
    /// MQTT channels (password sealed).
    #[serde(default)]
    pub inbound_mqtt: Vec<crate::model::mqtt::MqttChannel>,
    /// File-transfer channels.
    #[serde(default)]
    pub inbound_file: Vec<crate::model::files::FileChannel>,
    /// Outgoing AMQP connections (password sealed).
    #[serde(default)]
    pub outgoing_amqp: Vec<crate::model::amqp::AmqpConn>,
    /// Outgoing MQTT connections (password sealed).
    #[serde(default)]
    pub outgoing_mqtt: Vec<crate::model::mqtt::MqttConn>,
    /// Outgoing Redis connections (password sealed).
    #[serde(default)]
    pub outgoing_redis: Vec<crate::model::redis::RedisConn>,
    /// User config (operator settings services read).
    #[serde(default)]
    pub user_config: Vec<crate::model::user_config::UserConfig>,
}
