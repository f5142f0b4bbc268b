//! The pub/sub broker (docs/PUBSUB.md): topics, subscriptions and guaranteed delivery,
//! inside each server.
//!
//! - `publish`: a publish is queued to this server's flusher, which appends every queued
//!   GD message in one store transaction per flush (per topic, the `pubsub_topic_seq` row
//!   lock makes seq order commit order) and answers each publisher only after the commit;
//!   non-GD messages are accepted into memory. After the commit the batch goes to this
//!   server's [`Fanout`] and, over the cluster bus ([`Peers`]), to every peer's.
//! - `deliver`: each subscription is delivered by exactly one server at a time (a lease in
//!   `pubsub_lease`); its delivery task keeps the subscription's queue in memory (fed by
//!   the fanout; the store is read only for a backlog, a gap or at takeover), delivers in
//!   order of priority then publish time, keeps its place as cursors over the topic log
//!   (`pubsub_cursor`), retries with backoff, and dead-letters after the delivery limit.
//!   Pull subscriptions are served by the task too (a pull on another server is forwarded to
//!   the owner over the bus).
//! - `ops`: the workers' `pubsub.*` calls (ipc-protocol/SPEC.md), as a [`ServerOps`].
//! - `retention`: rotation of the log's partitions (truncate, not DELETE).
//!
//! Knows `model`, `store` (its `pubsub_*` files), `lifecycle` (the pool, to invoke
//! subscriber services; [`ServerOps`]), `outgoing` (push deliveries) and `metrics`; never
//! the HTTP edge, the admin API or the cluster bus (reached through [`Peers`]).
//!
//! [`ServerOps`]: crate::lifecycle::ops::ServerOps

pub mod deliver;
pub mod ops;
pub mod publish;
pub mod retention;

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::model::object::ObjectSet;
use crate::model::pubsub::{Access, Endpoint, Message, Subscription, Topic};
use crate::store::Store;

/// Why a pub/sub operation failed: each has its HTTP status and its error code (the same
/// codes on the worker wire, the REST API and the admin API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubsubError {
    #[error("no topic {0}")]
    NoTopic(String),
    #[error("no subscription {0}")]
    NoSub(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    /// The topic is at its depth and refuses (`on_full: refuse`).
    #[error("topic {0} is full")]
    Full(String),
    #[error("message of {size} bytes is over topic {topic}'s max_message_bytes {max}")]
    TooLarge { topic: String, size: u64, max: u64 },
    /// The store is down or failed: a GD publish is not acknowledged.
    #[error("the config store is unavailable: {0}")]
    Unavailable(String),
    /// The subscription's delivering server could not be reached (pull on another server).
    #[error("{0}")]
    NotReachable(String),
    /// A pull on a subscription that is not `pull`, a subscribe that exists already…
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl PubsubError {
    pub fn status(&self) -> u16 {
        match self {
            PubsubError::NoTopic(_) | PubsubError::NoSub(_) => 404,
            PubsubError::Forbidden(_) => 403,
            PubsubError::Invalid(_) => 400,
            PubsubError::Full(_) => 429,
            PubsubError::TooLarge { .. } => 413,
            PubsubError::Unavailable(_) | PubsubError::NotReachable(_) => 503,
            PubsubError::Conflict(_) => 409,
            PubsubError::Internal(_) => 500,
        }
    }

    /// The code in `REPLY` `error` and in REST answers' `{"error": {"code": …}}`.
    pub fn code(&self) -> &'static str {
        match self {
            PubsubError::NoTopic(_) => "no_topic",
            PubsubError::NoSub(_) => "no_sub",
            PubsubError::Forbidden(_) => "forbidden",
            PubsubError::Invalid(_) => "invalid",
            PubsubError::Full(_) => "full",
            PubsubError::TooLarge { .. } => "too_large",
            PubsubError::Unavailable(_) => "unavailable",
            PubsubError::NotReachable(_) => "not_reachable",
            PubsubError::Conflict(_) => "conflict",
            PubsubError::Internal(_) => "internal",
        }
    }
}

/// Who asks: permissions apply to endpoints only (services and the admin API are trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A service of this cluster (`self.pubsub`).
    Service(String),
    /// A REST caller a security definition let in: the definition's name.
    Security(String),
    /// The admin API, as the token's identity.
    Admin(String),
}

impl Caller {
    /// As `Message::published_by` records it.
    pub fn label(&self, defs: &Defs) -> String {
        match self {
            Caller::Service(s) => format!("service:{s}"),
            Caller::Security(sec) => match defs.endpoint_of(sec) {
                Some(e) => format!("endpoint:{}", e.name),
                None => format!("security:{sec}"),
            },
            Caller::Admin(a) => format!("admin:{a}"),
        }
    }
}

/// A message as a publisher gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMsg {
    pub data: Bytes,
    /// Default `application/json` when the data is JSON the publisher encoded, else
    /// `text/plain`; the caller decides.
    pub mime_type: Option<String>,
    /// 1-9; default 5.
    pub priority: Option<u8>,
    /// ms from now; default the topic's `expiration_ms`.
    pub expiration_ms: Option<u64>,
    /// Default the topic's `has_gd`.
    pub has_gd: Option<bool>,
    pub correl_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub ext_client_id: Option<String>,
}

/// A subscribe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeReq {
    /// A topic name or pattern.
    pub topic: String,
    pub delivery: crate::model::pubsub::DeliveryKind,
    /// A sub_key to use; none: one is generated.
    pub sub_key: Option<String>,
    pub batch_size: Option<u32>,
    pub retry: Option<crate::model::pubsub::Retry>,
    pub dead_letter_topic: Option<String>,
    pub ack_timeout_ms: Option<u64>,
}

/// A message as a subscriber gets it (pull answers, service and push deliveries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub msg: Arc<Message>,
    pub sub_key: String,
    /// 1 on the first delivery.
    pub delivery_count: u32,
}

/// One flush's messages, committed (GD) or accepted (non-GD): what the fanout carries to
/// the delivery tasks. For each topic, its GD messages are in seq order and contiguous
/// (`first_seq..=last_seq` of that topic in this flush).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The server whose flush it was.
    pub server: String,
    pub msgs: Vec<Arc<Message>>,
}

/// Hands committed batches to this server's delivery tasks: a broadcast channel, whose
/// lagging receiver learns it lagged (then it reads the store).
#[derive(Debug)]
pub struct Fanout {
    tx: tokio::sync::broadcast::Sender<Arc<Committed>>,
}

impl Fanout {
    /// Batches a receiver may fall behind by before it lags.
    pub const CAPACITY: usize = 4096;

    pub fn new() -> Fanout {
        Fanout {
            tx: tokio::sync::broadcast::channel(Self::CAPACITY).0,
        }
    }

    pub fn send(&self, batch: Arc<Committed>) {
        let _ = self.tx.send(batch);
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Committed>> {
        self.tx.subscribe()
    }
}

impl Default for Fanout {
    fn default() -> Fanout {
        Fanout::new()
    }
}

/// The other servers of the cluster, as the broker reaches them (implemented by the
/// cluster bus; none on a single server).
#[async_trait::async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Sends a committed batch (encoded by `publish::encode_committed`) to every linked
    /// peer; fire and forget (a peer that misses it finds the gap in the store).
    fn send_committed(&self, frame: Bytes);

    /// Calls `op` on server `peer` with a JSON meta and a body; its (status, body).
    async fn call(
        &self,
        peer: &str,
        meta: serde_json::Value,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String>;
}

/// Why a batch did not reach a WebSocket subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsDeliverError {
    /// No server holds the client: its connection is gone (ids are never reused), and so
    /// is its subscription.
    Gone,
    /// It may still be there (its server did not answer, its queue is full): delivered
    /// again after the retry's backoff.
    Failed(String),
}

/// WebSocket clients as the broker delivers to them (boot hands in `wsx`; the broker never
/// names it).
#[async_trait::async_trait]
pub trait WsClients: Send + Sync + 'static {
    /// Sends a batch of subscription `sub_key` (`messages`: each as a pull answer gives it)
    /// to client `client_id`, on whichever server holds it: Ok once queued to its socket.
    async fn deliver(
        &self,
        client_id: &str,
        sub_key: &str,
        messages: Vec<serde_json::Value>,
    ) -> Result<(), WsDeliverError>;

    /// Whether client `client_id` is connected to this server, let in and not closing:
    /// then the security definition its channel let it in by (none: an open channel).
    fn subscriber(&self, client_id: &str) -> Option<Option<String>>;
}

/// The definitions as of one config version, indexed for the hot path.
#[derive(Debug, Default)]
pub struct Defs {
    pub topics: HashMap<String, Arc<Topic>>,
    pub subs: HashMap<String, Arc<Subscription>>,
    /// Endpoints by name.
    pub endpoints: HashMap<String, Arc<Endpoint>>,
    /// Endpoints by their security definition's name.
    by_security: HashMap<String, Arc<Endpoint>>,
    /// For each topic, the subscriptions whose name or pattern matches it.
    subs_by_topic: HashMap<String, Vec<Arc<Subscription>>>,
}

impl Defs {
    pub fn new(topics: &[Topic], subs: &[Subscription], endpoints: &[Endpoint]) -> Defs {
        let topics: HashMap<_, _> = topics
            .iter()
            .map(|t| (t.name.clone(), Arc::new(t.clone())))
            .collect();
        let subs: HashMap<_, _> = subs
            .iter()
            .map(|s| (s.sub_key.clone(), Arc::new(s.clone())))
            .collect();
        let mut subs_by_topic: HashMap<String, Vec<Arc<Subscription>>> = HashMap::new();
        for name in topics.keys() {
            let mut v: Vec<_> = subs
                .values()
                .filter(|s| crate::model::pubsub::matches(&s.topic, name))
                .cloned()
                .collect();
            v.sort_by(|a, b| a.sub_key.cmp(&b.sub_key));
            subs_by_topic.insert(name.clone(), v);
        }
        let endpoints: HashMap<_, _> = endpoints
            .iter()
            .map(|e| (e.name.clone(), Arc::new(e.clone())))
            .collect();
        let by_security = endpoints
            .values()
            .map(|e| (e.security.clone(), e.clone()))
            .collect();
        Defs {
            topics,
            subs,
            endpoints,
            by_security,
            subs_by_topic,
        }
    }

    /// The subscriptions of `topic` (by name or pattern), by sub_key.
    pub fn subs_of(&self, topic: &str) -> &[Arc<Subscription>] {
        self.subs_by_topic.get(topic).map_or(&[], |v| v.as_slice())
    }

    /// The topics a subscription's name or pattern matches, by name.
    pub fn topics_of(&self, sub: &Subscription) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self
            .topics
            .values()
            .filter(|t| crate::model::pubsub::matches(&sub.topic, &t.name))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The endpoint whose security definition is `security`.
    pub fn endpoint_of(&self, security: &str) -> Option<&Arc<Endpoint>> {
        self.by_security.get(security)
    }

    /// Whether `caller` may do `access` on `topic`: services and the admin may do
    /// anything; a REST caller only what its endpoint's patterns allow (no endpoint for its
    /// security definition: nothing).
    pub fn permits(&self, caller: &Caller, access: Access, topic: &str) -> bool {
        match caller {
            Caller::Service(_) | Caller::Admin(_) => true,
            Caller::Security(sec) => self
                .endpoint_of(sec)
                .is_some_and(|e| e.allows(access, topic)),
        }
    }
}

/// The broker of one server. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

/// What the parts of the broker share.
pub(crate) struct Inner {
    /// This server's name.
    pub server: String,
    pub store: Store,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The current definitions, swapped whole by [`Broker::apply`].
    pub defs: RwLock<Arc<Defs>>,
    pub fanout: Fanout,
    /// Set by boot once the pool exists (service deliveries invoke through it).
    pub pool: OnceLock<Arc<crate::lifecycle::pool::Pool>>,
    /// Push deliveries to REST connections go through it.
    pub outgoing: Arc<crate::outgoing::Outgoing>,
    /// The cluster bus, when there is one.
    pub peers: OnceLock<Arc<dyn Peers>>,
    /// The WebSocket clients (boot), for `websocket` deliveries.
    pub ws_clients: OnceLock<Arc<dyn WsClients>>,
    pub publisher: publish::Publisher,
    pub delivery: deliver::Delivery,
    pub retention: retention::Retention,
}

impl Broker {
    pub fn new(
        server: &str,
        store: Store,
        metrics: Arc<crate::metrics::Metrics>,
        outgoing: Arc<crate::outgoing::Outgoing>,
    ) -> Broker {
        Broker {
            inner: Arc::new(Inner {
                server: server.to_owned(),
                store,
                metrics,
                defs: RwLock::new(Arc::new(Defs::default())),
                fanout: Fanout::new(),
                pool: OnceLock::new(),
                outgoing,
                peers: OnceLock::new(),
                ws_clients: OnceLock::new(),
                publisher: publish::Publisher::new(),
                delivery: deliver::Delivery::new(),
                retention: retention::Retention::new(),
            }),
        }
    }

    /// The pool service deliveries invoke through (boot, once the pool exists).
    pub fn set_pool(&self, pool: Arc<crate::lifecycle::pool::Pool>) {
        let _ = self.inner.pool.set(pool);
    }

    /// The cluster bus (boot, when there is one).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.inner.peers.set(peers);
    }

    /// The WebSocket clients `websocket` deliveries go to (boot).
    pub fn set_ws_clients(&self, clients: Arc<dyn WsClients>) {
        let _ = self.inner.ws_clients.set(clients);
    }

    /// Deletes the subscriptions delivered to WebSocket client `client_id` (its connection
    /// ended); nothing is done when it has none (checked in memory).
    pub async fn forget_ws_client(&self, client_id: &str) {
        deliver::forget_ws_clients(&self.inner, |id| id == client_id).await;
    }

    /// Deletes the subscriptions delivered to WebSocket clients of server `server` made
    /// before it started (at boot: its clients of an earlier run are gone, whether it
    /// stopped or crashed).
    pub async fn forget_ws_clients_of(&self, server: &str) {
        deliver::forget_ws_clients(&self.inner, |id| {
            crate::model::websocket::client_server(id) == Some(server)
        })
        .await;
    }

    /// Makes the definitions of `objects` current (boot, and each config version): new
    /// subscriptions get a delivery task on the server that wins their lease, deleted ones
    /// lose theirs.
    pub fn apply(&self, objects: &ObjectSet) {
        let defs = Arc::new(Defs::new(
            &objects.pubsub_topics,
            &objects.pubsub_subs,
            &objects.pubsub_endpoints,
        ));
        *self.inner.defs.write().expect("defs lock") = defs.clone();
        deliver::applied(&self.inner, &defs);
    }

    /// The current definitions.
    pub fn defs(&self) -> Arc<Defs> {
        self.inner.defs.read().expect("defs lock").clone()
    }

    /// Starts the broker's tasks (the flusher, delivery leases, retention); they end when
    /// `shutdown` turns true, the flusher after answering what it had queued.
    pub fn start(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        publish::start(&self.inner, shutdown.clone());
        deliver::start(&self.inner, shutdown.clone());
        retention::start(&self.inner, shutdown);
    }

    /// A committed batch a peer sent over the bus (`publish::encode_committed`): into this
    /// server's fanout.
    pub fn peer_committed(&self, frame: &[u8]) -> Result<(), String> {
        publish::peer_committed(&self.inner, frame)
    }

    /// A call a peer forwarded (`deliver`: pulls and acks of a subscription this server
    /// delivers): its (status, body).
    pub async fn peer_call(&self, meta: &serde_json::Value, body: Bytes) -> (u16, Bytes) {
        deliver::peer_call(&self.inner, meta, body).await
    }

    /// Publishes `msgs` to `topic` as `caller`: their msg_ids, in order, once each is
    /// durable (GD) or accepted into memory (non-GD). Refused as a whole when the caller may
    /// not publish there, the topic does not exist, a message is invalid or too large;
    /// `full` when the topic is at its depth and refuses.
    pub async fn publish(
        &self,
        caller: &Caller,
        topic: &str,
        msgs: Vec<NewMsg>,
    ) -> Result<Vec<String>, PubsubError> {
        publish::publish(&self.inner, caller, topic, msgs).await
    }

    /// Subscribes `caller` (its sub_key answered): stores the subscription (a config object:
    /// the cluster learns of it with the config version) and its cursors.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        req: SubscribeReq,
    ) -> Result<String, PubsubError> {
        deliver::subscribe(&self.inner, caller, req).await
    }

    /// Deletes a subscription (a REST caller only its own endpoint's), its cursors and dead
    /// letters.
    pub async fn unsubscribe(&self, caller: &Caller, sub_key: &str) -> Result<(), PubsubError> {
        deliver::unsubscribe(&self.inner, caller, sub_key).await
    }

    /// Up to `max` messages of pull subscription `sub_key`, waiting up to `wait` for the
    /// first when none is there (long poll). They are delivered again after the
    /// subscription's `ack_timeout_ms` unless acked.
    pub async fn get_messages(
        &self,
        caller: &Caller,
        sub_key: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, PubsubError> {
        deliver::get_messages(&self.inner, caller, sub_key, max, wait).await
    }

    /// Acks pulled messages by msg_id: how many were waiting for it (an unknown or already
    /// acked msg_id is no error: acks are idempotent).
    pub async fn ack(
        &self,
        caller: &Caller,
        sub_key: &str,
        msg_ids: &[String],
    ) -> Result<usize, PubsubError> {
        deliver::ack(&self.inner, caller, sub_key, msg_ids).await
    }
}

/// A topic's figures (admin API, `oxbus pubsub topics`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TopicStats {
    pub name: String,
    /// The last seq appended to its log (GD messages published since it was made).
    pub last_seq: i64,
    /// GD messages the slowest subscription has still to finish (or, with no subscription
    /// and `on_no_subs: keep`, those kept).
    pub depth_gd: u64,
    /// Published through this server since it started, GD and non-GD.
    pub published: u64,
    /// Messages per second published through this server, last minute.
    pub rate_1m: f64,
    /// Refused `full`, through this server.
    pub refused_full: u64,
    /// Dropped (no subscription and `on_no_subs: drop`; non-GD without subscription).
    pub dropped: u64,
    pub subscriptions: Vec<String>,
}

/// A subscription's figures (admin API, `oxbus pubsub subs`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubStats {
    pub sub_key: String,
    pub topic: String,
    /// `service`, `push` or `pull`.
    pub delivery: String,
    /// The server delivering it (its lease holder), if any holds it.
    pub owner: Option<String>,
    /// Messages waiting (GD, by the cursors; plus non-GD in the owner's memory).
    pub depth: u64,
    /// Delivered and not yet acked.
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub failed_attempts: u64,
    pub expired: u64,
    pub overflowed: u64,
    pub dead_letters: u64,
    /// When the last delivery succeeded (Unix ms).
    pub last_delivery_ms: Option<i64>,
}

/// A message waiting in a subscription's queue or among its dead letters, as the admin
/// API lists it (data cut to `max_data` bytes).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueuedMsg {
    pub msg_id: String,
    pub topic: String,
    pub seq: i64,
    pub priority: u8,
    pub pub_time_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub mime_type: String,
    pub size: usize,
    /// The data (UTF-8, lossy), cut.
    pub data: String,
    pub delivery_count: u32,
    /// Dead letters: why (`max_attempts`: the last failure's text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Broker {
    /// Every topic's figures.
    pub async fn topic_stats(&self) -> Result<Vec<TopicStats>, PubsubError> {
        publish::topic_stats(&self.inner).await
    }

    /// A subscription's figures (asked of its owner when another server delivers it).
    pub async fn sub_stats(&self, sub_key: &str) -> Result<SubStats, PubsubError> {
        deliver::sub_stats(&self.inner, sub_key).await
    }

    /// The figures of every subscription this server delivers.
    pub async fn local_sub_stats(&self) -> Vec<SubStats> {
        deliver::local_sub_stats(&self.inner).await
    }

    /// Up to `limit` messages waiting in a subscription's queue, in delivery order.
    pub async fn browse(&self, sub_key: &str, limit: usize) -> Result<Vec<QueuedMsg>, PubsubError> {
        deliver::browse(&self.inner, sub_key, limit).await
    }

    /// Empties a subscription's queue (its cursors move to the end of each topic): how many
    /// messages were dropped.
    pub async fn purge(&self, sub_key: &str) -> Result<u64, PubsubError> {
        deliver::purge(&self.inner, sub_key).await
    }

    /// Up to `limit` of a subscription's dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        sub_key: &str,
        limit: usize,
    ) -> Result<Vec<QueuedMsg>, PubsubError> {
        deliver::dead_letters(&self.inner, sub_key, limit).await
    }

    /// Puts dead letters (these msg_ids; none: all) back into the subscription's queue,
    /// their attempts from 0: how many.
    pub async fn requeue(
        &self,
        sub_key: &str,
        msg_ids: Option<&[String]>,
    ) -> Result<u64, PubsubError> {
        deliver::requeue(&self.inner, sub_key, msg_ids).await
    }
}

/// Unix ms now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
