//! A config import's changes ([`Plan`]), applied in one transaction with one version bump
//! across every table of the store. Building and validating the plan is the import's
//! (`admin/config_io/import.rs`); this file writes it.

use super::{Change, Module, Result, Store, StoreError, bump, now_ms};
use super::{validate_module_name, validate_secret_name};
use crate::model::amqp::{AmqpChannel, AmqpConn};
use crate::model::channel::Channel;
use crate::model::job::JobDef;
use crate::model::mqtt::{MqttChannel, MqttConn};
use crate::model::object::ConfigObject;
use crate::model::outgoing::{RestConn, SqlConn};
use crate::model::pubsub::{Endpoint, Subscription, Topic};
use crate::model::redis::RedisConn;
use crate::model::security::SecurityDef;
use crate::model::user_config::UserConfig;
use crate::store::BeginWrite;
use oxbus_cache::CacheDef;

use super::channels::{gate_columns, insert_channel};
use super::modules::insert_versions;
use super::objects::{delete_sql, object_into_stored, upsert_object};
use super::secrets::upsert_secret;

/// A plan's changes to the objects of one JSON-defined kind.
#[derive(Debug, Clone)]
pub struct ObjectChanges<K> {
    /// To create or replace (as given: the store fills in what
    /// [`ConfigObject::into_stored`] says).
    pub put: Vec<K>,
    /// To delete, by name.
    pub delete: Vec<String>,
}

impl<K> Default for ObjectChanges<K> {
    fn default() -> Self {
        ObjectChanges {
            put: Vec::new(),
            delete: Vec::new(),
        }
    }
}

impl<K: ConfigObject> ObjectChanges<K> {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }

    /// Every definition to put, checked with [`ConfigObject::validate`].
    fn validate(&self) -> Result<()> {
        for d in &self.put {
            d.validate()
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

/// Inside transaction `$tx`: the deletes, then the puts, of `$changes` (an
/// `&ObjectChanges<$k>`).
macro_rules! apply_objects {
    ($tx:ident, $k:ty, $changes:expr, $by:expr) => {{
        let changes: &ObjectChanges<$k> = $changes;
        for name in &changes.delete {
            sqlx::query(delete_sql::<$k>())
                .bind(name)
                .execute(&mut *$tx)
                .await?;
        }
        for d in &changes.put {
            if <$k as $crate::model::object::ConfigObject>::FILLED_FROM_STORED {
                let (d, _) = object_into_stored!($tx, $k, d);
                upsert_object!($tx, $k, &d, $by);
            } else {
                upsert_object!($tx, $k, d, $by);
            }
        }
    }};
}

/// Every change of a config import, applied in one transaction with one version bump.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Channels to create, or to update in place (keeping their routing order) when one of
    /// that name exists.
    pub put_channels: Vec<Channel>,
    pub delete_channels: Vec<String>,
    /// (name, sealed value) to create or replace.
    pub put_secrets: Vec<(String, String)>,
    /// Who may read each secret of `put_secrets` (service-name patterns); a secret not
    /// listed here gets none.
    pub secret_services: std::collections::BTreeMap<String, Vec<String>>,
    pub delete_secrets: Vec<String>,
    /// Security definitions (secret material sealed).
    pub security: ObjectChanges<SecurityDef>,
    /// Cache definitions.
    pub caches: ObjectChanges<CacheDef>,
    /// Scheduler jobs (`start_date` left out: see [`JobDef::as_stored`]).
    pub jobs: ObjectChanges<JobDef>,
    /// Outgoing REST connections (credentials sealed).
    pub outgoing_rest: ObjectChanges<RestConn>,
    /// Outgoing SQL connections (password sealed).
    pub outgoing_sql: ObjectChanges<SqlConn>,
    /// Pub/sub topics.
    pub pubsub_topics: ObjectChanges<Topic>,
    /// Pub/sub subscriptions (`created_at_ms` left out: the stored one's, else now). Their
    /// cursors are not written here: the delivering server makes a subscription's missing
    /// cursors at its `created_at_ms`.
    pub pubsub_subs: ObjectChanges<Subscription>,
    /// Pub/sub endpoints.
    pub pubsub_endpoints: ObjectChanges<Endpoint>,
    /// AMQP channels (password sealed).
    pub inbound_amqp: ObjectChanges<AmqpChannel>,
    /// MQTT channels (password sealed).
    pub inbound_mqtt: ObjectChanges<MqttChannel>,
    pub inbound_file: ObjectChanges<crate::model::files::FileChannel>,
    /// Outgoing AMQP connections (password sealed).
    pub outgoing_amqp: ObjectChanges<AmqpConn>,
    /// Outgoing MQTT connections (password sealed).
    pub outgoing_mqtt: ObjectChanges<MqttConn>,
    /// Outgoing Redis connections (password sealed).
    pub outgoing_redis: ObjectChanges<RedisConn>,
    /// User config (operator settings services read).
    pub user_config: ObjectChanges<UserConfig>,
    /// (name, source): a new active version each.
    pub deploy_modules: Vec<(String, String)>,
    pub undeploy_modules: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.put_channels.is_empty()
            && self.delete_channels.is_empty()
            && self.put_secrets.is_empty()
            && self.delete_secrets.is_empty()
            && self.security.is_empty()
            && self.caches.is_empty()
            && self.jobs.is_empty()
            && self.outgoing_rest.is_empty()
            && self.outgoing_sql.is_empty()
            && self.pubsub_topics.is_empty()
            && self.pubsub_subs.is_empty()
            && self.pubsub_endpoints.is_empty()
            && self.inbound_amqp.is_empty()
            && self.inbound_mqtt.is_empty()
            && self.inbound_file.is_empty()
            && self.outgoing_amqp.is_empty()
            && self.outgoing_mqtt.is_empty()
            && self.outgoing_redis.is_empty()
            && self.user_config.is_empty()
            && self.deploy_modules.is_empty()
            && self.undeploy_modules.is_empty()
    }
}

impl Store {
    /// Applies a whole plan in one transaction with one config version: every change or none.
    /// Returns the module versions it deployed. The caller validates the plan first (channels
    /// route unambiguously, modules were checked in a worker, secrets are sealed).
    pub async fn apply(&self, plan: &Plan, by: &str) -> Result<Change<Vec<Module>>> {
        for (name, _) in &plan.deploy_modules {
            validate_module_name(name)?;
        }
        for (name, _) in &plan.put_secrets {
            validate_secret_name(name)?;
        }
        for (name, services) in &plan.secret_services {
            super::secrets::validate_services(name, services)?;
        }
        plan.security.validate()?;
        plan.caches.validate()?;
        plan.jobs.validate()?;
        plan.outgoing_rest.validate()?;
        plan.outgoing_sql.validate()?;
        plan.pubsub_topics.validate()?;
        plan.pubsub_subs.validate()?;
        plan.pubsub_endpoints.validate()?;
        plan.inbound_amqp.validate()?;
        plan.inbound_mqtt.validate()?;
        plan.inbound_file.validate()?;
        plan.outgoing_amqp.validate()?;
        plan.outgoing_mqtt.validate()?;
        plan.outgoing_redis.validate()?;
        plan.user_config.validate()?;
        let at = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            for name in &plan.delete_channels {
                sqlx::query("DELETE FROM channels WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for c in &plan.put_channels {
                // In place when it exists: a channel keeps its place in the routing order.
                let name = c.name.clone().unwrap_or_else(|| c.url_path.clone());
                let methods = serde_json::to_string(&c.methods).expect("a list of strings");
                let (security, allow_from, rate_limit) = gate_columns(c);
                let services = serde_json::to_string(&c.services).expect("a list of strings");
                let settings = c
                    .websocket
                    .as_ref()
                    .map(|s| serde_json::to_string(s).expect("websocket settings serialise"));
                let updated = sqlx::query(
                    "UPDATE channels SET url_path = $2, methods = $3, service = $4, data_format = $5, \
                     security = $6, allow_from = $7, rate_limit = $8, channel_type = $9, services = $10, \
                     settings = $11, params_priority = $12 WHERE name = $1",
                )
                .bind(&name)
                .bind(&c.url_path)
                .bind(&methods)
                .bind(&c.service)
                .bind(c.data_format.as_str())
                .bind(security)
                .bind(allow_from)
                .bind(rate_limit)
                .bind(c.channel_type.as_str())
                .bind(&services)
                .bind(settings)
                .bind(c.params_priority.map(|p| p.as_str()))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    insert_channel!(tx, c, &name);
                }
            }
            // Definitions before channels are written and after they are deleted would need
            // two passes; there are no foreign keys, so one order serves: the import checked
            // that every channel's definition exists in the resulting config.
            apply_objects!(tx, SecurityDef, &plan.security, by);
            apply_objects!(tx, CacheDef, &plan.caches, by);
            apply_objects!(tx, JobDef, &plan.jobs, by);
            apply_objects!(tx, RestConn, &plan.outgoing_rest, by);
            apply_objects!(tx, SqlConn, &plan.outgoing_sql, by);
            apply_objects!(tx, Topic, &plan.pubsub_topics, by);
            apply_objects!(tx, Subscription, &plan.pubsub_subs, by);
            apply_objects!(tx, Endpoint, &plan.pubsub_endpoints, by);
            apply_objects!(tx, AmqpChannel, &plan.inbound_amqp, by);
            apply_objects!(tx, MqttChannel, &plan.inbound_mqtt, by);
            apply_objects!(tx, crate::model::files::FileChannel, &plan.inbound_file, by);
            apply_objects!(tx, AmqpConn, &plan.outgoing_amqp, by);
            apply_objects!(tx, MqttConn, &plan.outgoing_mqtt, by);
            apply_objects!(tx, RedisConn, &plan.outgoing_redis, by);
            apply_objects!(tx, UserConfig, &plan.user_config, by);
            for name in &plan.delete_secrets {
                sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for (name, sealed) in &plan.put_secrets {
                let services = plan.secret_services.get(name).map(Vec::as_slice).unwrap_or(&[]);
                upsert_secret!(tx, name, sealed, services, by);
            }
            for name in &plan.undeploy_modules {
                sqlx::query("UPDATE service_modules SET active = FALSE WHERE name = $1 AND active")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM module_services WHERE module = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            let deployed = insert_versions!(tx, &plan.deploy_modules, by, at);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: deployed })
        })
    }
}
