//! Delivery: each subscription is delivered by one server at a time, the holder of its
//! lease in `pubsub_lease` (TTL [`LEASE_TTL`], renewed every [`LEASE_EVERY`]); its delivery
//! task (`task.rs`) keeps the subscription's queue in memory (`queue.rs`), fed by this
//! server's fanout right after each publish commit and by the log for a backlog, a gap or
//! a takeover, and delivers it (service, push) or hands it out (pull). The places in the
//! topics' logs are the cursors in `pubsub_cursor`: a server that takes a lease over goes
//! on from them, so an unacked message is delivered again and an acked one is not
//! (at-least-once).
//!
//! - this file: the lease loop (take a fair share of free leases, renew, release at stop),
//!   subscribe/unsubscribe, and every operation on one subscription (pull, ack, figures,
//!   browse, purge, dead letters, requeue), run by its owner: a server that does not
//!   deliver the subscription forwards the call to the one that does ([`peer_call`]);
//! - `queue.rs`: one subscription's queue and cursors in memory;
//! - `task.rs`: the delivery task;
//! - `send.rs`: service and push deliveries, and the JSON shape of a delivered message.

mod queue;
mod send;
mod task;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{
    Caller, Defs, Delivered, Inner, PubsubError, QueuedMsg, SubStats, SubscribeReq, now_ms,
};
use crate::model::pubsub::{Access, DeliveryKind, OnNoSubs, Subscription};
use crate::store::StoreError;

pub use send::{delivered_from_json, delivered_json};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long before its lease would expire, unrenewed, a task stops delivering.
const LEASE_MARGIN: Duration = Duration::from_secs(3);
/// How often the lease loop renews and takes leases.
pub const LEASE_EVERY: Duration = Duration::from_secs(2);
/// How long a free lease is left to the other servers before this one takes it past its
/// fair share.
const ORPHAN_AFTER: Duration = Duration::from_secs(5);
/// The most data of a message the admin's listings show, bytes.
const MAX_DATA_SHOWN: usize = 2048;

/// One subscription this server delivers.
pub(crate) struct SubTask {
    pub sub: RwLock<Arc<Subscription>>,
    pub q: Mutex<queue::Queue>,
    /// Wakes the task: an ack, a pull, a requeue, a new definition.
    pub wake: tokio::sync::Notify,
    /// Wakes pulls waiting for messages.
    pub arrived: tokio::sync::Notify,
    /// One cursor write at a time, so that an older snapshot never lands after a newer one.
    pub flushing: tokio::sync::Mutex<()>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Whether the task hands its lease back when it stops (a clean stop, a subscription
    /// gone), rather than losing it (another server took it).
    release: AtomicBool,
    /// When the lease was last renewed (Unix ms).
    renewed_at: AtomicI64,
    handle: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SubTask {
    pub fn sub(&self) -> Arc<Subscription> {
        self.sub.read().expect("sub lock").clone()
    }

    /// Whether the lease was renewed recently enough to deliver: within its TTL less a
    /// margin, so that a server cut off from the store stops before its lease can expire
    /// and another server take the subscription over (two owners at once).
    pub fn lease_fresh(&self, now: i64) -> bool {
        now - self.renewed_at.load(Ordering::SeqCst) < (LEASE_TTL - LEASE_MARGIN).as_millis() as i64
    }

    fn stop(&self, release: bool) {
        self.release.store(release, Ordering::SeqCst);
        let _ = self.stop.send(true);
        self.wake.notify_one();
    }
}

/// This server's delivery tasks.
pub struct Delivery {
    tasks: Mutex<HashMap<String, Arc<SubTask>>>,
    /// Wakes the lease loop (a new definition).
    wake: tokio::sync::Notify,
    stopping: AtomicBool,
    /// For each subscription whose lease this server saw free but left to the others (its
    /// fair share reached): since when it has seen it free (Unix ms).
    free_since: Mutex<HashMap<String, i64>>,
    /// The subscriptions of the last definitions applied (to drop the metrics of those
    /// that leave them).
    seen: Mutex<std::collections::HashSet<String>>,
}

impl Delivery {
    pub fn new() -> Delivery {
        Delivery {
            tasks: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            free_since: Mutex::new(HashMap::new()),
            seen: Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn get(&self, sub_key: &str) -> Option<Arc<SubTask>> {
        self.tasks.lock().expect("tasks lock").get(sub_key).cloned()
    }

    fn all(&self) -> Vec<(String, Arc<SubTask>)> {
        self.tasks
            .lock()
            .expect("tasks lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery::new()
    }
}

fn store_err(e: StoreError) -> PubsubError {
    match e {
        StoreError::Invalid(m) => PubsubError::Invalid(m),
        StoreError::NotFound(m) => PubsubError::NoSub(m),
        other => PubsubError::Unavailable(other.to_string()),
    }
}

/// Starts delivering `sub` here (the caller holds its lease).
fn start_task(inner: &Arc<Inner>, sub: Arc<Subscription>) -> Arc<SubTask> {
    let mut tasks = inner.delivery.tasks.lock().expect("tasks lock");
    if let Some(t) = tasks.get(&sub.sub_key) {
        return t.clone();
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let st = Arc::new(SubTask {
        sub: RwLock::new(sub.clone()),
        q: Mutex::new(queue::Queue::default()),
        wake: tokio::sync::Notify::new(),
        arrived: tokio::sync::Notify::new(),
        flushing: tokio::sync::Mutex::new(()),
        stop,
        release: AtomicBool::new(false),
        renewed_at: AtomicI64::new(now_ms()),
        handle: Mutex::new(None),
    });
    tasks.insert(sub.sub_key.clone(), st.clone());
    // Subscribed to the fanout here, before the task's first read of the log: a batch
    // committed after this is in the channel, one committed before it is in what is read.
    let rx = inner.fanout.subscribe();
    let handle = tokio::spawn(task::run(inner.clone(), st.clone(), stop_rx, rx));
    *st.handle.lock().expect("handle lock") = Some(handle);
    tracing::info!(sub_key = %sub.sub_key, "pubsub: delivering subscription");
    st
}

/// Stops delivering `sub_key` here.
fn stop_task(inner: &Inner, sub_key: &str, release: bool) -> Option<Arc<SubTask>> {
    let st = inner
        .delivery
        .tasks
        .lock()
        .expect("tasks lock")
        .remove(sub_key)?;
    st.stop(release);
    Some(st)
}

/// The definitions changed: running tasks get their subscription's new definition, those
/// whose subscription is gone stop, and the lease loop looks for new ones at once.
pub(crate) fn applied(inner: &Arc<Inner>, defs: &Arc<Defs>) {
    for (key, st) in inner.delivery.all() {
        match defs.subs.get(&key) {
            Some(sub) => {
                let old = std::mem::replace(&mut *st.sub.write().expect("sub lock"), sub.clone());
                // Another kind of delivery (an admin put, pull -> service): what the old
                // one had handed out is offered again under the new one, not waited for
                // (an ack that may never come would hold an in-order delivery up).
                if std::mem::discriminant(&old.delivery) != std::mem::discriminant(&sub.delivery) {
                    st.q.lock().expect("queue lock").reset_in_flight();
                }
                st.wake.notify_one();
            }
            None => {
                stop_task(inner, &key, true);
            }
        }
    }
    // The series of subscriptions gone from the definitions go with them.
    let mut seen = inner.delivery.seen.lock().expect("seen lock");
    for gone in seen.iter().filter(|k| !defs.subs.contains_key(*k)) {
        inner.metrics.pubsub.forget_sub(gone);
    }
    *seen = defs.subs.keys().cloned().collect();
    drop(seen);
    inner.delivery.wake.notify_one();
}

/// The lease loop: every [`LEASE_EVERY`] (and at once after a new definition) it renews
/// this server's leases and takes free or expired ones up to its fair share; at shutdown
/// it stops every task, which hands its lease back.
pub(crate) fn start(inner: &Arc<Inner>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let inner = inner.clone();
    tokio::spawn(async move {
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = lease_round(&inner).await {
                tracing::warn!("pubsub: the lease round failed: {e}");
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(LEASE_EVERY) => {}
                _ = inner.delivery.wake.notified() => {}
            }
        }
        inner.delivery.stopping.store(true, Ordering::SeqCst);
        let mut handles = Vec::new();
        for (key, _) in inner.delivery.all() {
            if let Some(st) = stop_task(&inner, &key, true) {
                handles.extend(st.handle.lock().expect("handle lock").take());
            }
        }
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    });
}

/// A stable spread of subscriptions over servers: each server tries its subscriptions in
/// its own order, so that servers starting together do not all race for the same ones.
fn spread(me: &str, sub_key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(sub_key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

async fn lease_round(inner: &Arc<Inner>) -> Result<(), StoreError> {
    if inner.delivery.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    let defs = inner.defs.read().expect("defs lock").clone();
    let me = inner.server.as_str();
    let now = now_ms();
    // Renew what this server delivers, in one statement; a lease lost (taken over after an
    // expiry) stops the task, and so does one not renewed for a whole TTL (the store
    // unreachable: another server may have it by now; the task itself stops delivering a
    // little earlier, see `SubTask::lease_fresh`).
    let mut running = Vec::new();
    for (key, st) in inner.delivery.all() {
        if defs.subs.contains_key(&key) {
            running.push((key, st));
        } else {
            stop_task(inner, &key, true);
        }
    }
    let keys: Vec<String> = running.iter().map(|(k, _)| k.clone()).collect();
    match inner
        .store
        .sub_leases_renew(me, &keys, now, LEASE_TTL)
        .await
    {
        Ok(renewed) => {
            let renewed: std::collections::HashSet<String> = renewed.into_iter().collect();
            for (key, st) in &running {
                if renewed.contains(key) {
                    st.renewed_at.store(now, Ordering::SeqCst);
                } else {
                    tracing::warn!(sub_key = %key, "pubsub: lease lost to another server");
                    stop_task(inner, key, false);
                }
            }
        }
        Err(e) => {
            for (key, st) in &running {
                if now - st.renewed_at.load(Ordering::SeqCst) >= LEASE_TTL.as_millis() as i64 {
                    tracing::warn!(sub_key = %key, "pubsub: lease not renewed for its TTL: {e}");
                    stop_task(inner, key, false);
                }
            }
        }
    }
    if defs.subs.is_empty() {
        return Ok(());
    }
    let leases: HashMap<String, (String, i64)> = inner
        .store
        .sub_leases()
        .await?
        .into_iter()
        .map(|(k, h, e)| (k, (h, e)))
        .collect();
    let stale = crate::store::SERVER_STALE.as_millis() as i64;
    let mut live = inner
        .store
        .servers()
        .await?
        .iter()
        .filter(|s| s.last_seen >= now - stale && s.name != me)
        .count()
        + 1;
    // A holder of a live lease is alive, registered or not.
    let holders: std::collections::HashSet<&str> = leases
        .values()
        .filter(|(h, e)| *e >= now && h != me)
        .map(|(h, _)| h.as_str())
        .collect();
    live = live.max(holders.len() + 1);
    let share = defs.subs.len().div_ceil(live);
    let mut mine = inner.delivery.tasks.lock().expect("tasks lock").len();
    let mut candidates: Vec<&Arc<Subscription>> = defs
        .subs
        .values()
        .filter(|s| inner.delivery.get(&s.sub_key).is_none())
        .filter(|s| match leases.get(&s.sub_key) {
            None => true,
            Some((h, e)) => h == me || *e < now,
        })
        .collect();
    candidates.sort_by_key(|s| spread(me, &s.sub_key));
    // Past its share, a server leaves a free lease to the others; but one nobody took for
    // ORPHAN_AFTER (its server stopped or crashed while still counted as live) it takes
    // anyway: a subscription is never left undelivered for long.
    let mut free_since = std::mem::take(&mut *inner.delivery.free_since.lock().expect("free lock"));
    let mut still_free = HashMap::new();
    for sub in candidates {
        let since = free_since.remove(&sub.sub_key).unwrap_or(now);
        if mine >= share && now - since < ORPHAN_AFTER.as_millis() as i64 {
            still_free.insert(sub.sub_key.clone(), since);
            continue;
        }
        if inner
            .store
            .sub_lease_take(&sub.sub_key, me, now, LEASE_TTL)
            .await?
        {
            start_task(inner, sub.clone());
            mine += 1;
        }
    }
    *inner.delivery.free_since.lock().expect("free lock") = still_free;
    Ok(())
}

/// Who delivers a subscription.
enum Owner {
    Local(Arc<SubTask>),
    Remote(String),
    Nobody,
}

/// The owner of `sub_key`; with `take`, this server takes a free lease and becomes it.
async fn owner(inner: &Arc<Inner>, sub_key: &str, take: bool) -> Result<Owner, PubsubError> {
    if let Some(st) = inner.delivery.get(sub_key) {
        return Ok(Owner::Local(st));
    }
    let sub = inner
        .defs
        .read()
        .expect("defs lock")
        .subs
        .get(sub_key)
        .cloned()
        .ok_or_else(|| PubsubError::NoSub(sub_key.to_owned()))?;
    let now = now_ms();
    let holder = inner
        .store
        .sub_leases()
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|(k, _, _)| k == sub_key)
        .filter(|(_, h, e)| *e >= now && h != &inner.server)
        .map(|(_, h, _)| h);
    if let Some(h) = holder {
        return Ok(Owner::Remote(h));
    }
    if !take || inner.delivery.stopping.load(Ordering::SeqCst) {
        return Ok(Owner::Nobody);
    }
    if inner
        .store
        .sub_lease_take(sub_key, &inner.server, now, LEASE_TTL)
        .await
        .map_err(store_err)?
    {
        return Ok(Owner::Local(start_task(inner, sub)));
    }
    // Taken meanwhile by another server: ask again who.
    Box::pin(owner(inner, sub_key, false)).await
}

/// Waits (up to 10 s) until a task has read its cursors and its first backlog.
async fn loaded(st: &SubTask) -> Result<(), PubsubError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = st.arrived.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if st.q.lock().expect("queue lock").loaded {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, n).await.is_err() {
            return Err(PubsubError::Unavailable(format!(
                "subscription {} could not load its queue from the store",
                st.sub().sub_key
            )));
        }
    }
}

/// Forwards an operation on `sub_key` to its owner `peer`: the answer's JSON body.
async fn forward(
    inner: &Arc<Inner>,
    peer: &str,
    op: &str,
    sub_key: &str,
    mut meta: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, PubsubError> {
    let Some(peers) = inner.peers.get() else {
        return Err(PubsubError::NotReachable(format!(
            "subscription {sub_key} is delivered by server {peer}, and this server has no \
             cluster bus to reach it"
        )));
    };
    meta["op"] = serde_json::Value::from(format!("pubsub.{op}"));
    meta["sub_key"] = serde_json::Value::from(sub_key);
    let (status, body) = peers
        .call(peer, meta, Bytes::new(), timeout)
        .await
        .map_err(|e| {
            PubsubError::NotReachable(format!(
                "subscription {sub_key} is delivered by server {peer}, not reachable: {e}"
            ))
        })?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        PubsubError::Internal(format!(
            "server {peer} answered pubsub.{op} unreadably: {e}"
        ))
    })?;
    if status >= 300 {
        let code = v["error"]["code"].as_str().unwrap_or("internal");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_owned();
        return Err(match code {
            "no_sub" => PubsubError::NoSub(msg),
            "no_topic" => PubsubError::NoTopic(msg),
            "forbidden" => PubsubError::Forbidden(msg),
            "invalid" => PubsubError::Invalid(msg),
            "conflict" => PubsubError::Conflict(msg),
            "unavailable" => PubsubError::Unavailable(msg),
            "not_reachable" => PubsubError::NotReachable(msg),
            _ => PubsubError::Internal(msg),
        });
    }
    Ok(v)
}

fn error_body(e: &PubsubError) -> (u16, Bytes) {
    let v = serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
    (e.status(), Bytes::from(v.to_string()))
}

fn ok_body(v: serde_json::Value) -> (u16, Bytes) {
    (200, Bytes::from(v.to_string()))
}

/// A call a peer forwarded for a subscription it believes this server delivers: served
/// here when this server delivers it (or can take its free lease), never forwarded again.
pub(crate) async fn peer_call(
    inner: &Arc<Inner>,
    meta: &serde_json::Value,
    _body: Bytes,
) -> (u16, Bytes) {
    let op = meta["op"].as_str().unwrap_or("");
    let Some(sub_key) = meta["sub_key"].as_str() else {
        return error_body(&PubsubError::Invalid(format!(
            "{op}: meta.sub_key is missing"
        )));
    };
    let st = match owner(inner, sub_key, true).await {
        Ok(Owner::Local(st)) => st,
        Ok(Owner::Remote(h)) => {
            return error_body(&PubsubError::NotReachable(format!(
                "subscription {sub_key} is delivered by server {h}, not {}",
                inner.server
            )));
        }
        Ok(Owner::Nobody) => {
            return error_body(&PubsubError::NotReachable(format!(
                "subscription {sub_key} has no delivering server"
            )));
        }
        Err(e) => return error_body(&e),
    };
    let r: Result<serde_json::Value, PubsubError> = match op {
        "pubsub.get" => {
            let max = meta["max"].as_u64().unwrap_or(1) as usize;
            let wait = Duration::from_millis(meta["wait_ms"].as_u64().unwrap_or(0));
            local_get(&st, max, wait)
                .await
                .map(|v| serde_json::Value::Array(v.iter().map(delivered_json).collect()))
        }
        "pubsub.ack" => {
            let ids: Vec<String> = meta["msg_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Ok(serde_json::json!({"acked": local_ack(&st, &ids)}))
        }
        "pubsub.stats" => local_stats(inner, &st)
            .await
            .map(|s| serde_json::to_value(s).expect("stats serialise")),
        "pubsub.browse" => {
            let limit = meta["limit"].as_u64().unwrap_or(100) as usize;
            local_browse(&st, limit)
                .await
                .map(|v| serde_json::to_value(v).expect("messages serialise"))
        }
        "pubsub.purge" => local_purge(inner, &st)
            .await
            .map(|n| serde_json::json!({"purged": n})),
        "pubsub.requeue" => {
            let ids: Option<Vec<String>> = meta["msg_ids"].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            });
            local_requeue(inner, &st, ids.as_deref())
                .await
                .map(|n| serde_json::json!({"requeued": n}))
        }
        other => Err(PubsubError::Invalid(format!(
            "no pubsub peer call {other:?}"
        ))),
    };
    match r {
        Ok(v) => ok_body(v),
        Err(e) => error_body(&e),
    }
}

/// Whether `caller` may use subscription `sub`: a REST caller only its own endpoint's.
fn may_use(defs: &Defs, caller: &Caller, sub: &Subscription) -> Result<(), PubsubError> {
    match caller {
        Caller::Service(_) | Caller::Admin(_) => Ok(()),
        Caller::Security(sec) => {
            let mine = defs.endpoint_of(sec).map(|e| e.name.as_str());
            if mine.is_some() && mine == sub.endpoint.as_deref() {
                Ok(())
            } else {
                Err(PubsubError::Forbidden(format!(
                    "subscription {} is not this caller's",
                    sub.sub_key
                )))
            }
        }
    }
}

fn sub_of(inner: &Inner, sub_key: &str) -> Result<(Arc<Defs>, Arc<Subscription>), PubsubError> {
    let defs = inner.defs.read().expect("defs lock").clone();
    let sub = defs
        .subs
        .get(sub_key)
        .cloned()
        .ok_or_else(|| PubsubError::NoSub(sub_key.to_owned()))?;
    Ok((defs, sub))
}

/// Swaps in definitions with `sub` added (or, `None`, `sub_key` removed): the caller can use
/// its subscription at once, before the config version reaches this server.
fn apply_local(inner: &Arc<Inner>, sub_key: &str, sub: Option<Subscription>) {
    let defs = {
        let mut cur = inner.defs.write().expect("defs lock");
        let topics: Vec<_> = cur.topics.values().map(|t| (**t).clone()).collect();
        let endpoints: Vec<_> = cur.endpoints.values().map(|e| (**e).clone()).collect();
        let mut subs: Vec<_> = cur
            .subs
            .values()
            .filter(|s| s.sub_key != sub_key)
            .map(|s| (**s).clone())
            .collect();
        subs.extend(sub);
        let defs = Arc::new(Defs::new(&topics, &subs, &endpoints));
        *cur = defs.clone();
        defs
    };
    applied(inner, &defs);
}

pub(crate) async fn subscribe(
    inner: &Arc<Inner>,
    caller: &Caller,
    req: SubscribeReq,
) -> Result<String, PubsubError> {
    let defs = inner.defs.read().expect("defs lock").clone();
    crate::model::pubsub::check_pattern(&req.topic)
        .map_err(|e| PubsubError::Invalid(e.to_string()))?;
    if !req.topic.contains('*') && !defs.topics.contains_key(&req.topic) {
        return Err(PubsubError::NoTopic(req.topic));
    }
    if !defs.permits(caller, Access::Subscribe, &req.topic) {
        return Err(PubsubError::Forbidden(format!(
            "this caller may not subscribe to {}",
            req.topic
        )));
    }
    let sub_key = req
        .sub_key
        .clone()
        .unwrap_or_else(|| format!("sk.{}", crate::random::random_hex(12)));
    if defs.subs.contains_key(&sub_key) {
        return Err(PubsubError::Conflict(format!(
            "subscription {sub_key} exists already"
        )));
    }
    // A REST caller may only pull: a service or push delivery runs a service of this
    // cluster, or calls a URL (or through an operator's REST connection, with its
    // credentials) from inside the cluster, which only an operator may set up.
    if matches!(caller, Caller::Security(_)) && !matches!(req.delivery, DeliveryKind::Pull) {
        return Err(PubsubError::Forbidden(format!(
            "subscription to {}: a REST caller may only make pull subscriptions; push and \
             service deliveries are made through the admin API",
            req.topic
        )));
    }
    // A service subscribes the WebSocket client whose message it is handling: connected
    // here, and let in by a security definition whose endpoint may subscribe to the topic
    // (as Zato's WebSocket subscribers: the channel's endpoint, its sub= patterns).
    if let (Caller::Service(_), DeliveryKind::Websocket { client_id }) = (caller, &req.delivery) {
        let here = inner.ws_clients.get().and_then(|c| c.subscriber(client_id));
        match here {
            None => {
                return Err(PubsubError::Invalid(format!(
                    "WebSocket client {client_id} is not connected to this server: a service subscribes the client whose message it is handling"
                )));
            }
            Some(None) => {
                return Err(PubsubError::Forbidden(format!(
                    "WebSocket client {client_id} came in through a channel without a security definition: a WebSocket subscriber is the endpoint of its channel's definition (its sub= patterns)"
                )));
            }
            Some(Some(sec)) => {
                if !defs.permits(
                    &Caller::Security(sec.clone()),
                    Access::Subscribe,
                    &req.topic,
                ) {
                    return Err(PubsubError::Forbidden(format!(
                        "WebSocket client {client_id} (security definition {sec}) may not subscribe to {}: no endpoint of {sec} with a sub= pattern for it",
                        req.topic
                    )));
                }
            }
        }
    }
    // Dead letters are published to their topic: the caller must be one that could.
    if let Some(dl) = &req.dead_letter_topic {
        if !defs.topics.contains_key(dl) {
            return Err(PubsubError::NoTopic(format!(
                "dead_letter_topic {dl} of a subscription to {}: no such topic",
                req.topic
            )));
        }
        if !defs.permits(caller, Access::Publish, dl) {
            return Err(PubsubError::Forbidden(format!(
                "this caller may not publish to {dl}, so may not make it a dead_letter_topic"
            )));
        }
    }
    let endpoint = match caller {
        Caller::Security(sec) => defs.endpoint_of(sec).map(|e| e.name.clone()),
        _ => None,
    };
    let now = now_ms();
    let sub = Subscription {
        sub_key: sub_key.clone(),
        topic: req.topic.clone(),
        endpoint,
        delivery: req.delivery,
        batch_size: req.batch_size.unwrap_or(1),
        retry: req.retry.unwrap_or_default(),
        dead_letter_topic: req.dead_letter_topic,
        ack_timeout_ms: req.ack_timeout_ms.unwrap_or(30_000),
        created_at_ms: now,
        created_by: Some(caller.label(&defs)),
    };
    sub.validate()
        .map_err(|e| PubsubError::Invalid(e.to_string()))?;
    // The subscription and its cursors in one transaction: neither is ever stored without
    // the other, and a sub_key taken meanwhile (stored, not yet in this server's
    // definitions) fails the whole of it, touching nothing of the other subscription. Its
    // delivery task finds the cursors in place (a topic's first subscription starts at the
    // messages kept for it, not at the end).
    let topics: Vec<(String, bool)> = defs
        .topics_of(&sub)
        .iter()
        .map(|t| (t.name.clone(), t.on_no_subs == OnNoSubs::Keep))
        .collect();
    let by = caller.label(&defs);
    if let Err(e) = inner.store.sub_create(&sub, &by, &topics, now).await {
        return Err(match e {
            // Another subscribe put this sub_key first (a service's concurrent subscribe
            // derives the same key): nothing of this one was stored, nothing of that one
            // touched.
            StoreError::Invalid(m) if m.contains("exists already") => PubsubError::Conflict(m),
            other => store_err(other),
        });
    }
    tracing::info!(%sub_key, topic = %sub.topic, by = %by, "pubsub: subscribed");
    apply_local(inner, &sub_key, Some(sub.clone()));
    // A WebSocket client that left meanwhile did not see this subscription when its
    // connection ended (the registry lets it go before it tells): it goes now.
    if let DeliveryKind::Websocket { client_id } = &sub.delivery
        && matches!(caller, Caller::Service(_))
        && inner
            .ws_clients
            .get()
            .and_then(|c| c.subscriber(client_id))
            .is_none()
    {
        let _ = unsubscribe(inner, &Caller::Admin("websocket".into()), &sub_key).await;
        return Err(PubsubError::Invalid(format!(
            "WebSocket client {client_id} disconnected while it was being subscribed"
        )));
    }
    // This server delivers it from now on unless another took it meanwhile (the lease
    // loop spreads subscriptions later): what is published from here on reaches it, non-GD
    // messages included.
    if inner
        .store
        .sub_lease_take(&sub_key, &inner.server, now_ms(), LEASE_TTL)
        .await
        .unwrap_or(false)
        && !inner.delivery.stopping.load(Ordering::SeqCst)
    {
        start_task(inner, Arc::new(sub));
    }
    Ok(sub_key)
}

pub(crate) async fn unsubscribe(
    inner: &Arc<Inner>,
    caller: &Caller,
    sub_key: &str,
) -> Result<(), PubsubError> {
    let (defs, sub) = sub_of(inner, sub_key)?;
    may_use(&defs, caller, &sub)?;
    // The definition, cursors, lease and dead letters go in one transaction.
    inner.store.sub_delete(sub_key).await.map_err(store_err)?;
    // Out of the definitions first: a lease round from here on no longer sees it, so it
    // cannot start its task again; that stops the task, which is waited for. What it
    // still writes is refused by the store now (no lease, no definition).
    let st = inner.delivery.get(sub_key);
    apply_local(inner, sub_key, None);
    if let Some(st) = st {
        st.stop(false);
        let h = st.handle.lock().expect("handle lock").take();
        if let Some(h) = h {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
    Ok(())
}

async fn local_get(
    st: &Arc<SubTask>,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivered>, PubsubError> {
    let sub = st.sub();
    if !matches!(sub.delivery, DeliveryKind::Pull) {
        return Err(PubsubError::Conflict(format!(
            "subscription {} is not a pull subscription",
            sub.sub_key
        )));
    }
    let max = max.clamp(1, crate::model::pubsub::MAX_BATCH as usize);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let n = st.arrived.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        let got = {
            let mut q = st.q.lock().expect("queue lock");
            if q.loaded && st.lease_fresh(now_ms()) {
                let now = now_ms();
                let sub = st.sub();
                let until = now.saturating_add(queue::ms_i64(sub.ack_timeout_ms));
                q.take(max, now, until, false)
            } else {
                Vec::new()
            }
        };
        if !got.is_empty() {
            // The task watches the ack deadlines.
            st.wake.notify_one();
            return Ok(got
                .into_iter()
                .map(|e| Delivered {
                    msg: e.msg,
                    sub_key: sub.sub_key.clone(),
                    delivery_count: e.delivery_count,
                })
                .collect());
        }
        if tokio::time::timeout_at(deadline, n).await.is_err() {
            return Ok(Vec::new());
        }
    }
}

pub(crate) async fn get_messages(
    inner: &Arc<Inner>,
    caller: &Caller,
    sub_key: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivered>, PubsubError> {
    let (defs, sub) = sub_of(inner, sub_key)?;
    may_use(&defs, caller, &sub)?;
    if !matches!(sub.delivery, DeliveryKind::Pull) {
        return Err(PubsubError::Conflict(format!(
            "subscription {sub_key} is not a pull subscription"
        )));
    }
    match owner(inner, sub_key, true).await? {
        Owner::Local(st) => local_get(&st, max, wait).await,
        Owner::Remote(peer) => {
            let v = forward(
                inner,
                &peer,
                "get",
                sub_key,
                serde_json::json!({"max": max, "wait_ms": wait.as_millis() as u64}),
                wait + Duration::from_secs(10),
            )
            .await?;
            v.as_array()
                .map(|a| a.iter().map(delivered_from_json).collect())
                .unwrap_or_else(|| {
                    Err(PubsubError::Internal(format!(
                        "server {peer} answered pubsub.get without a list"
                    )))
                })
        }
        Owner::Nobody => Err(PubsubError::NotReachable(format!(
            "subscription {sub_key} has no delivering server"
        ))),
    }
}

fn local_ack(st: &SubTask, msg_ids: &[String]) -> usize {
    let now = now_ms();
    let n = {
        let mut q = st.q.lock().expect("queue lock");
        msg_ids.iter().filter(|id| q.ack(id, now)).count()
    };
    if n > 0 {
        st.wake.notify_one();
    }
    n
}

pub(crate) async fn ack(
    inner: &Arc<Inner>,
    caller: &Caller,
    sub_key: &str,
    msg_ids: &[String],
) -> Result<usize, PubsubError> {
    let (defs, sub) = sub_of(inner, sub_key)?;
    may_use(&defs, caller, &sub)?;
    match owner(inner, sub_key, false).await? {
        Owner::Local(st) => Ok(local_ack(&st, msg_ids)),
        Owner::Remote(peer) => {
            let v = forward(
                inner,
                &peer,
                "ack",
                sub_key,
                serde_json::json!({"msg_ids": msg_ids}),
                Duration::from_secs(10),
            )
            .await?;
            Ok(v["acked"].as_u64().unwrap_or(0) as usize)
        }
        // Nobody delivers it: nothing is in flight (a new owner delivers again what was
        // handed out), so there is nothing to ack.
        Owner::Nobody => Ok(0),
    }
}

async fn local_stats(inner: &Arc<Inner>, st: &Arc<SubTask>) -> Result<SubStats, PubsubError> {
    let sub = st.sub();
    let dead = inner
        .store
        .sub_dead_count(&sub.sub_key)
        .await
        .map_err(store_err)?;
    let q = st.q.lock().expect("queue lock");
    Ok(SubStats {
        sub_key: sub.sub_key.clone(),
        topic: sub.topic.clone(),
        delivery: kind_name(&sub.delivery).into(),
        owner: Some(inner.server.clone()),
        depth: q.depth(),
        in_flight: q.in_flight(),
        delivered: q.counts.delivered,
        acked: q.counts.acked,
        failed_attempts: q.counts.failed_attempts,
        expired: q.counts.expired,
        overflowed: q.counts.overflowed,
        dead_letters: dead,
        last_delivery_ms: q.counts.last_delivery_ms,
    })
}

fn kind_name(k: &DeliveryKind) -> &'static str {
    match k {
        DeliveryKind::Service { .. } => "service",
        DeliveryKind::Push { .. } => "push",
        DeliveryKind::Pull => "pull",
        DeliveryKind::Websocket { .. } => "websocket",
    }
}

/// Deletes every subscription delivered to a WebSocket client `gone` says is gone (by its
/// id); a failure is logged (the delivery finds the client gone and tries again).
pub(crate) async fn forget_ws_clients(inner: &Arc<Inner>, gone: impl Fn(&str) -> bool) {
    let keys: Vec<String> = inner
        .defs
        .read()
        .expect("defs lock")
        .subs
        .values()
        .filter(|s| matches!(&s.delivery, DeliveryKind::Websocket { client_id } if gone(client_id)))
        .map(|s| s.sub_key.clone())
        .collect();
    for sub_key in keys {
        match unsubscribe(inner, &Caller::Admin("websocket".into()), &sub_key).await {
            Ok(()) => {
                tracing::info!(%sub_key, "pubsub: a WebSocket subscriber's connection ended: unsubscribed")
            }
            // Deleted meanwhile (the client's disconnect and a failed delivery both ask).
            Err(PubsubError::NoSub(_)) => {}
            Err(e) => {
                tracing::warn!(%sub_key, error = %e, "pubsub: a gone WebSocket subscriber's subscription could not be deleted")
            }
        }
    }
}

/// The figures of every subscription this server delivers (the metrics' gauges: no peer
/// is asked, no lease table read).
pub(crate) async fn local_sub_stats(inner: &Arc<Inner>) -> Vec<SubStats> {
    let mut out = Vec::new();
    for (_, st) in inner.delivery.all() {
        if let Ok(s) = local_stats(inner, &st).await {
            out.push(s);
        }
    }
    out
}

pub(crate) async fn sub_stats(inner: &Arc<Inner>, sub_key: &str) -> Result<SubStats, PubsubError> {
    let (_, sub) = sub_of(inner, sub_key)?;
    match owner(inner, sub_key, false).await? {
        Owner::Local(st) => local_stats(inner, &st).await,
        Owner::Remote(peer) => {
            let v = forward(
                inner,
                &peer,
                "stats",
                sub_key,
                serde_json::json!({}),
                Duration::from_secs(10),
            )
            .await?;
            serde_json::from_value(v).map_err(|e| {
                PubsubError::Internal(format!("server {peer} answered pubsub.stats: {e}"))
            })
        }
        Owner::Nobody => {
            // Nobody delivers it right now: its depth by the stored cursors.
            let store = &inner.store;
            let mut depth = 0u64;
            for c in store.sub_cursors(sub_key).await.map_err(store_err)? {
                let last = store.sub_last_seq(&c.topic).await.map_err(store_err)?;
                depth += (last - c.acked_upto).max(0) as u64;
            }
            Ok(SubStats {
                sub_key: sub.sub_key.clone(),
                topic: sub.topic.clone(),
                delivery: kind_name(&sub.delivery).into(),
                owner: None,
                depth,
                dead_letters: store.sub_dead_count(sub_key).await.map_err(store_err)?,
                ..SubStats::default()
            })
        }
    }
}

fn queued(
    m: &crate::model::pubsub::Message,
    delivery_count: u32,
    reason: Option<String>,
) -> QueuedMsg {
    let cut = &m.data[..m.data.len().min(MAX_DATA_SHOWN)];
    QueuedMsg {
        msg_id: m.msg_id.clone(),
        topic: m.topic.clone(),
        seq: m.seq,
        priority: m.priority,
        pub_time_ms: m.pub_time_ms,
        expires_at_ms: m.expires_at_ms,
        mime_type: m.mime_type.clone(),
        size: m.data.len(),
        data: String::from_utf8_lossy(cut).into_owned(),
        delivery_count,
        reason,
    }
}

async fn local_browse(st: &Arc<SubTask>, limit: usize) -> Result<Vec<QueuedMsg>, PubsubError> {
    loaded(st).await?;
    let q = st.q.lock().expect("queue lock");
    Ok(q.peek(limit)
        .into_iter()
        .map(|e| queued(&e.msg, e.delivery_count, e.last_error.clone()))
        .collect())
}

pub(crate) async fn browse(
    inner: &Arc<Inner>,
    sub_key: &str,
    limit: usize,
) -> Result<Vec<QueuedMsg>, PubsubError> {
    sub_of(inner, sub_key)?;
    match owner(inner, sub_key, true).await? {
        Owner::Local(st) => local_browse(&st, limit).await,
        Owner::Remote(peer) => {
            let v = forward(
                inner,
                &peer,
                "browse",
                sub_key,
                serde_json::json!({"limit": limit}),
                Duration::from_secs(10),
            )
            .await?;
            serde_json::from_value(v).map_err(|e| {
                PubsubError::Internal(format!("server {peer} answered pubsub.browse: {e}"))
            })
        }
        Owner::Nobody => Err(PubsubError::NotReachable(format!(
            "subscription {sub_key} has no delivering server"
        ))),
    }
}

async fn local_purge(inner: &Arc<Inner>, st: &Arc<SubTask>) -> Result<u64, PubsubError> {
    loaded(st).await?;
    let topics: Vec<String> =
        st.q.lock()
            .expect("queue lock")
            .topics
            .keys()
            .cloned()
            .collect();
    let mut last = HashMap::new();
    for t in topics {
        let s = inner.store.sub_last_seq(&t).await.map_err(store_err)?;
        last.insert(t, s);
    }
    let n = st.q.lock().expect("queue lock").purge(&last);
    task::flush(inner, st).await.map_err(store_err)?;
    st.wake.notify_one();
    Ok(n)
}

pub(crate) async fn purge(inner: &Arc<Inner>, sub_key: &str) -> Result<u64, PubsubError> {
    sub_of(inner, sub_key)?;
    match owner(inner, sub_key, true).await? {
        Owner::Local(st) => local_purge(inner, &st).await,
        Owner::Remote(peer) => {
            let v = forward(
                inner,
                &peer,
                "purge",
                sub_key,
                serde_json::json!({}),
                Duration::from_secs(30),
            )
            .await?;
            Ok(v["purged"].as_u64().unwrap_or(0))
        }
        Owner::Nobody => Err(PubsubError::NotReachable(format!(
            "subscription {sub_key} has no delivering server"
        ))),
    }
}

pub(crate) async fn dead_letters(
    inner: &Arc<Inner>,
    sub_key: &str,
    limit: usize,
) -> Result<Vec<QueuedMsg>, PubsubError> {
    sub_of(inner, sub_key)?;
    let rows = inner
        .store
        .sub_dead(sub_key, None, limit.min(u32::MAX as usize) as u32)
        .await
        .map_err(store_err)?;
    Ok(rows
        .iter()
        .map(|d| queued(&d.msg, d.attempts, Some(d.reason.clone())))
        .collect())
}

async fn local_requeue(
    inner: &Arc<Inner>,
    st: &Arc<SubTask>,
    msg_ids: Option<&[String]>,
) -> Result<u64, PubsubError> {
    loaded(st).await?;
    let sub_key = st.sub().sub_key.clone();
    let n = inner
        .store
        .sub_dead_requeue(&sub_key, msg_ids)
        .await
        .map_err(store_err)?;
    task::load_requeued(inner, st).await.map_err(store_err)?;
    Ok(n)
}

pub(crate) async fn requeue(
    inner: &Arc<Inner>,
    sub_key: &str,
    msg_ids: Option<&[String]>,
) -> Result<u64, PubsubError> {
    sub_of(inner, sub_key)?;
    match owner(inner, sub_key, true).await? {
        Owner::Local(st) => local_requeue(inner, &st, msg_ids).await,
        Owner::Remote(peer) => {
            let v = forward(
                inner,
                &peer,
                "requeue",
                sub_key,
                serde_json::json!({"msg_ids": msg_ids}),
                Duration::from_secs(30),
            )
            .await?;
            Ok(v["requeued"].as_u64().unwrap_or(0))
        }
        Owner::Nobody => Err(PubsubError::NotReachable(format!(
            "subscription {sub_key} has no delivering server"
        ))),
    }
}
