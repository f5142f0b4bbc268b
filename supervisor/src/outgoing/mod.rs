//! Outgoing connections: the REST, SQL and AMQP pools the services of this server share
//! (`self.out.rest[name]`, `self.out.sql[name]`), and the secrets services may read
//! (`self.secrets[name]`). The workers reach them through the `out.*` and `secret.get` ops of
//! the IPC protocol (ipc-protocol/SPEC.md), answered by [`Outgoing`] as the pool's
//! [`ServerOps`]; no credential ever crosses the worker socket. Boot builds one [`Outgoing`],
//! applies the stored definitions, and hands it to the pool, the sync loop and the admin API.
//!
//! Knows `model`, `secrets`, `metrics` and the lifecycle's [`ServerOps`] trait only: no store,
//! no HTTP edge, no admin. Live edits: [`Outgoing::apply_rest`] / [`Outgoing::apply_sql`]
//! swap in a new client for each changed definition; calls in flight keep the client they
//! started with, new calls take the new one; a deleted connection's calls fail
//! `unknown_conn` naming it. docs/OUTGOING.md.

pub mod amqp;
pub mod mqtt;
pub mod redis;
pub mod rest;
pub mod service_secrets;
pub mod sql;

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::lifecycle::ops::{OpReply, ServerOps};
use crate::model::amqp::AmqpConn;
use crate::model::mqtt::MqttConn;
use crate::model::outgoing::{RestConn, SqlConn};
use crate::model::redis::RedisConn;
use crate::secrets::Key;

/// The types of outgoing connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnType {
    Rest,
    Sql,
    Mqtt,
    Redis,
    Amqp,
}

impl ConnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnType::Rest => "rest",
            ConnType::Redis => "redis",
            ConnType::Sql => "sql",
            ConnType::Mqtt => "mqtt",
            ConnType::Amqp => "amqp",
        }
    }
}

/// One connection's figures on this server since its client was built (an edit that
/// replaces the client starts them again from 0).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ConnStats {
    pub name: String,
    /// Calls answered (REST: any status of the remote; SQL: any result).
    pub calls: u64,
    /// Calls that failed (every `error` of SPEC.md's table).
    pub errors: u64,
    /// Calls' durations, seconds: count, sum and the buckets of `metrics::DURATION_BUCKETS`
    /// (not cumulative; the last is +Inf).
    pub latency_count: u64,
    pub latency_sum_s: f64,
    pub latency_buckets: Vec<u64>,
    /// Pool size (REST `pool_size`, SQL `pool_max`).
    pub pool_size: u32,
    /// Connections lent to a call (or held by a transaction or stream).
    pub in_use: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// Calls waiting for a connection.
    pub waiting: u32,
}

/// What a ping found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PingOutcome {
    /// Whether the remote answered as a live one does (REST: any HTTP answer below 500 —
    /// a 404 still proves the server is there; SQL: `SELECT 1` returned).
    pub ok: bool,
    /// Round trip, milliseconds.
    pub took_ms: f64,
    /// What answered, or why it failed ("HTTP 200", "connect: connection refused…").
    pub detail: String,
}

/// Why an admin-side operation on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum OutgoingError {
    #[error("no {} connection {name:?}", kind.as_str())]
    Unknown { kind: ConnType, name: String },
}

/// This server's outgoing connections and the answer to the workers' `out.*` / `secret.get`.
#[derive(Debug)]
pub struct Outgoing {
    key: Arc<Key>,
    metrics: Arc<crate::metrics::Metrics>,
    redis: RwLock<HashMap<String, Arc<redis::RedisClient>>>,
    rest: RwLock<HashMap<String, Arc<rest::RestClient>>>,
    sql: RwLock<HashMap<String, Arc<sql::SqlClient>>>,
    mqtt: RwLock<HashMap<String, Arc<mqtt::MqttClient>>>,
    amqp: RwLock<HashMap<String, Arc<amqp::AmqpClient>>>,
    /// Held through an apply (not through lookups): two applies do not interleave.
    applying: std::sync::Mutex<()>,
    /// The secrets services may read (`secret.get`).
    secrets: service_secrets::ServiceSecrets,
}

impl Outgoing {
    pub fn new(key: Arc<Key>, metrics: Arc<crate::metrics::Metrics>) -> Outgoing {
        Outgoing {
            key,
            redis: RwLock::new(HashMap::new()),
            metrics,
            rest: RwLock::new(HashMap::new()),
            sql: RwLock::new(HashMap::new()),
            mqtt: RwLock::new(HashMap::new()),
            amqp: RwLock::new(HashMap::new()),
            applying: std::sync::Mutex::new(()),
            secrets: service_secrets::ServiceSecrets::default(),
        }
    }

    /// Makes `secrets` the stored secrets services may read (`secret.get`): boot's and each
    /// config version's.
    pub fn apply_secrets(
        &self,
        secrets: impl IntoIterator<Item = service_secrets::ReadableSecret>,
    ) {
        self.secrets.apply(secrets);
    }

    /// Makes `defs` the REST connections: a new client for each new or changed definition,
    /// the same one for an unchanged one, none for one no longer there.
    pub fn apply_rest(&self, defs: &[RestConn]) {
        // New clients are built outside the lock (reading CA files, loading roots): lookups
        // go on meanwhile; the lock is only held for the swap.
        let _one = self.applying.lock().expect("apply lock");
        let current = self.rest.read().expect("rest lock").clone();
        let mut next = HashMap::with_capacity(defs.len());
        for def in defs {
            let client = match current.get(&def.name) {
                Some(c) if c.def() == def => c.clone(),
                _ => Arc::new(rest::RestClient::new(def.clone(), &self.key, &self.metrics)),
            };
            next.insert(def.name.clone(), client);
        }
        *self.rest.write().expect("rest lock") = next;
    }

    /// Makes `defs` the SQL connections, as [`Outgoing::apply_rest`] does.
    pub fn apply_sql(&self, defs: &[SqlConn]) {
        let _one = self.applying.lock().expect("apply lock");
        let current = self.sql.read().expect("sql lock").clone();
        let mut next = HashMap::with_capacity(defs.len());
        for def in defs {
            let client = match current.get(&def.name) {
                Some(c) if c.def() == def => c.clone(),
                _ => Arc::new(sql::SqlClient::new(def.clone(), &self.key, &self.metrics)),
            };
            next.insert(def.name.clone(), client);
        }
        *self.sql.write().expect("sql lock") = next;
    }

    /// Makes `defs` the outgoing AMQP connections, as [`Outgoing::apply_rest`] does: sends
    /// in flight finish on the channels they started on (the replaced client's connection
    /// closes once the last of them is done).
    pub fn apply_amqp(&self, defs: &[AmqpConn]) {
        let _one = self.applying.lock().expect("apply lock");
        let current = self.amqp.read().expect("amqp lock").clone();
        let mut next = HashMap::with_capacity(defs.len());
        for def in defs {
            let client = match current.get(&def.name) {
                Some(c) if c.def() == def => c.clone(),
                _ => Arc::new(amqp::AmqpClient::new(def.clone(), &self.key)),
            };
            next.insert(def.name.clone(), client);
        }
        *self.amqp.write().expect("amqp lock") = next;
    }

    pub fn amqp_client(&self, name: &str) -> Option<Arc<amqp::AmqpClient>> {
        self.amqp.read().expect("amqp lock").get(name).cloned()
    }

    /// Makes `defs` the Redis connections, as [`Outgoing::apply_rest`] does.
    pub fn apply_redis(&self, defs: &[RedisConn]) {
        let _one = self.applying.lock().expect("apply lock");
        let current = self.redis.read().expect("redis lock").clone();
        let mut next = HashMap::with_capacity(defs.len());
        for def in defs {
            let client = match current.get(&def.name) {
                Some(c) if c.def() == def => c.clone(),
                _ => Arc::new(redis::RedisClient::new(
                    def.clone(),
                    &self.key,
                    &self.metrics,
                )),
            };
            next.insert(def.name.clone(), client);
        }
        *self.redis.write().expect("redis lock") = next;
    }

    pub fn redis_client(&self, name: &str) -> Option<Arc<redis::RedisClient>> {
        self.redis.read().expect("redis lock").get(name).cloned()
    }

    /// `out.redis`: the named connection's call; with `kvdb: true` and no `conn`, Zato's
    /// `self.kvdb.conn`: the connection named `kvdb`, else the one named `default`.
    async fn redis_call(&self, raw_meta: &[u8], body: Bytes) -> OpReply {
        #[derive(serde::Deserialize)]
        struct Which {
            #[serde(default)]
            conn: Option<String>,
            #[serde(default)]
            kvdb: bool,
        }
        let which = match serde_json::from_slice::<Which>(raw_meta) {
            Ok(w) => w,
            Err(e) => return OpReply::error(400, "invalid", &format!("out.redis: bad meta: {e}")),
        };
        let client = match (&which.conn, which.kvdb) {
            (Some(c), _) => self
                .redis_client(c)
                .ok_or_else(|| format!("no Redis connection {c:?} (it may have been deleted)")),
            (None, true) => self
                .redis_client("kvdb")
                .or_else(|| self.redis_client("default"))
                .ok_or_else(|| {
                    "self.kvdb.conn: no Redis connection named \"kvdb\" or \"default\" \
                     (define one: it is the connection self.kvdb.conn uses)"
                        .to_owned()
                }),
            (None, false) => {
                return OpReply::error(400, "invalid", "out.redis: conn is missing");
            }
        };
        match client {
            Ok(c) => c.call(raw_meta, body).await,
            Err(m) => OpReply::error(404, "unknown_conn", &m),
        }
    }

    /// Makes `defs` the MQTT connections, as [`Outgoing::apply_rest`] does (a replaced
    /// client disconnects once its last publish in flight is done).
    pub fn apply_mqtt(&self, defs: &[MqttConn]) {
        let _one = self.applying.lock().expect("apply lock");
        let current = self.mqtt.read().expect("mqtt lock").clone();
        let mut next = HashMap::with_capacity(defs.len());
        for def in defs {
            let client = match current.get(&def.name) {
                Some(c) if c.def() == def => c.clone(),
                _ => Arc::new(mqtt::MqttClient::new(def.clone(), &self.key)),
            };
            next.insert(def.name.clone(), client);
        }
        *self.mqtt.write().expect("mqtt lock") = next;
    }

    pub fn mqtt_client(&self, name: &str) -> Option<Arc<mqtt::MqttClient>> {
        self.mqtt.read().expect("mqtt lock").get(name).cloned()
    }

    pub fn rest_client(&self, name: &str) -> Option<Arc<rest::RestClient>> {
        self.rest.read().expect("rest lock").get(name).cloned()
    }

    pub fn sql_client(&self, name: &str) -> Option<Arc<sql::SqlClient>> {
        self.sql.read().expect("sql lock").get(name).cloned()
    }

    /// Pings one connection from this server.
    pub async fn ping(&self, kind: ConnType, name: &str) -> Result<PingOutcome, OutgoingError> {
        let unknown = || OutgoingError::Unknown {
            kind,
            name: name.to_owned(),
        };
        match kind {
            ConnType::Rest => Ok(self.rest_client(name).ok_or_else(unknown)?.ping().await),
            ConnType::Sql => Ok(self.sql_client(name).ok_or_else(unknown)?.ping().await),
            ConnType::Mqtt => Ok(self.mqtt_client(name).ok_or_else(unknown)?.ping().await),
            ConnType::Redis => Ok(self.redis_client(name).ok_or_else(unknown)?.ping().await),
            ConnType::Amqp => Ok(self.amqp_client(name).ok_or_else(unknown)?.ping().await),
        }
    }

    /// Every connection's figures, of one type, sorted by name.
    pub fn stats(&self, kind: ConnType) -> Vec<ConnStats> {
        let mut out: Vec<ConnStats> = match kind {
            ConnType::Rest => self
                .rest
                .read()
                .expect("rest lock")
                .values()
                .map(|c| c.stats())
                .collect(),
            ConnType::Sql => self
                .sql
                .read()
                .expect("sql lock")
                .values()
                .map(|c| c.stats())
                .collect(),
            ConnType::Amqp => self
                .amqp
                .read()
                .expect("amqp lock")
                .values()
                .map(|c| c.stats())
                .collect(),
            ConnType::Redis => self
                .redis
                .read()
                .expect("redis lock")
                .values()
                .map(|c| c.stats())
                .collect(),
            ConnType::Mqtt => self
                .mqtt
                .read()
                .expect("mqtt lock")
                .values()
                .map(|c| c.stats())
                .collect(),
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The meta of `secret.get`.
#[derive(serde::Deserialize)]
struct SecretGetMeta {
    name: String,
    service: String,
}

impl Outgoing {
    /// `secret.get`: the value of a secret the calling service may read, as a JSON string.
    fn secret_get(&self, raw_meta: &[u8]) -> OpReply {
        let meta: SecretGetMeta = match serde_json::from_slice(raw_meta) {
            Ok(m) => m,
            Err(e) => {
                return OpReply::error(400, "invalid", &format!("secret.get: bad meta: {e}"));
            }
        };
        match self.secrets.get(&self.key, &meta.name, &meta.service) {
            Ok(value) => OpReply::json(200, &serde_json::Value::String(value)),
            Err(e) => {
                let (status, code) = e.code();
                OpReply::error(status, code, &e.to_string())
            }
        }
    }
}

/// The `conn` field every `out.*` meta has.
#[derive(serde::Deserialize)]
struct ConnField {
    #[serde(default)]
    conn: Option<String>,
}

#[async_trait::async_trait]
impl ServerOps for Outgoing {
    fn handles(&self, op: &str) -> bool {
        op.starts_with("out.") || op.starts_with("secret.")
    }

    async fn call(&self, worker: u32, op: &str, raw_meta: Bytes, body: Bytes) -> OpReply {
        let kind = match op {
            "out.rest" => ConnType::Rest,
            "out.sql" => ConnType::Sql,
            "out.amqp" => ConnType::Amqp,
            "out.mqtt" => ConnType::Mqtt,
            "secret.get" => return self.secret_get(&raw_meta),
            "out.redis" => return self.redis_call(&raw_meta, body).await,
            _ => return OpReply::error(501, "invalid", &format!("unknown op: {op}")),
        };
        let conn = match serde_json::from_slice::<ConnField>(&raw_meta) {
            Ok(ConnField { conn: Some(c) }) => c,
            Ok(_) => return OpReply::error(400, "invalid", &format!("{op}: conn is missing")),
            Err(e) => return OpReply::error(400, "invalid", &format!("{op}: bad meta: {e}")),
        };
        match kind {
            ConnType::Rest => match self.rest_client(&conn) {
                Some(c) => c.call(&raw_meta, body).await,
                None => OpReply::error(
                    404,
                    "unknown_conn",
                    &format!("no REST connection {conn:?} (it may have been deleted)"),
                ),
            },
            ConnType::Sql => match self.sql_client(&conn) {
                Some(c) => c.call(worker, &raw_meta, body).await,
                None => OpReply::error(
                    404,
                    "unknown_conn",
                    &format!("no SQL connection {conn:?} (it may have been deleted)"),
                ),
            },
            ConnType::Amqp => match self.amqp_client(&conn) {
                Some(c) => c.call(&raw_meta, body).await,
                None => OpReply::error(
                    404,
                    "unknown_conn",
                    &format!("no AMQP connection {conn:?} (it may have been deleted)"),
                ),
            },
            ConnType::Mqtt => match self.mqtt_client(&conn) {
                Some(c) => c.call(&raw_meta, body).await,
                None => OpReply::error(
                    404,
                    "unknown_conn",
                    &format!("no MQTT connection {conn:?} (it may have been deleted)"),
                ),
            },
            // Answered above (its `conn` may be left out for `kvdb`); the same answer here.
            ConnType::Redis => self.redis_call(&raw_meta, body).await,
        }
    }

    fn worker_gone(&self, worker: u32) {
        for c in self.sql.read().expect("sql lock").values() {
            c.worker_gone(worker);
        }
    }
}
