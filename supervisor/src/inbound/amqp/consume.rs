//! One AMQP channel's run: connect (outgoing/amqp/connect.rs, shared with the outgoing AMQP
//! connections), open `consumers` channels with basic.qos `prefetch`, consume `queue`, hand
//! each delivery to the service and settle it with the broker; reconnect with a jittered,
//! capped backoff when the connection is lost; on stop, cancel, let in-flight messages
//! finish (bounded), close.
//!
//! Why nothing is lost: a delivery is acked only once its service returned without an
//! exception. Anything else — a stop, a lost connection, a drain past its bound, a crash of
//! the whole server — leaves it unacked, and the broker gives an unacked message back to
//! the queue when its channel closes. The price is at-least-once: a service that finished
//! just before its connection was lost sees the message again.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{DRAIN_TIMEOUT, KIND, Status};
use crate::model::amqp::{AmqpChannel, Rejection, redeliveries, rejection};
use crate::outgoing::amqp::connect::{Target, connect};

/// The first wait after a failed connection; doubled up to [`BACKOFF_MAX`], each wait
/// jittered by ±25% so that the servers of a cluster do not all come back at once.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A bound on each call to the broker while stopping (cancel, close).
const BROKER_CALL: Duration = Duration::from_secs(5);
/// The most messages whose failures a channel counts itself (classic queues, which carry
/// no `x-delivery-count`); past it the counts start over (a redelivered message then counts
/// as redelivered once).
const MAX_COUNTED: usize = 10_000;

/// What a run needs from the registry.
pub(super) struct Ctx {
    pub server: String,
    pub key: Arc<crate::secrets::Key>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub pool: Option<Arc<crate::lifecycle::pool::Pool>>,
    pub status: Arc<Status>,
}

/// The signals a consumer stops on: its run's `stop` (the channel changed or went),
/// the server's `shutdown`, and its session's `abort` (another consumer of the same
/// connection failed: all reconnect together).
#[derive(Clone)]
struct Stops {
    stop: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
}

impl Stops {
    fn is_set(&self) -> bool {
        *self.stop.borrow() || *self.shutdown.borrow() || *self.abort.borrow()
    }

    /// Resolves once any of them is set (or its sender is gone).
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.stop.wait_for(|v| *v) => {}
            _ = self.shutdown.wait_for(|v| *v) => {}
            _ = self.abort.wait_for(|v| *v) => {}
        }
    }
}

/// Runs channel `def` until `stop` or `shutdown`.
pub(super) async fn run(
    ctx: Ctx,
    def: AmqpChannel,
    stop: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(ctx);
    let def = Arc::new(def);
    let counted = Arc::new(Mutex::new(HashMap::new()));
    // The run's own stops: `abort` never fires for the run as a whole.
    let (_never, abort) = watch::channel(false);
    let mut stops = Stops {
        stop,
        shutdown,
        abort,
    };
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    while !stops.is_set() {
        let target = Target::of_channel(&def);
        let conn = tokio::select! {
            c = connect(&target, &ctx.key) => c,
            _ = stops.wait() => break,
        };
        match conn {
            Ok(conn) => {
                if connected_before {
                    ctx.status.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                let outcome = session(&ctx, &def, &conn, &stops, &counted).await;
                ctx.status.connected.store(false, Ordering::Relaxed);
                ctx.metrics.inbound.connected(KIND, &def.name, false);
                let _ = tokio::time::timeout(BROKER_CALL, conn.close(200, "OK".into())).await;
                match outcome {
                    Ok(()) => break,
                    Err((e, consumed)) => {
                        warn!(channel = %def.name, error = %e, "AMQP channel lost its connection; reconnecting");
                        ctx.status.set_error(&e);
                        if consumed {
                            // It worked for a while: the next try is soon.
                            backoff = BACKOFF_MIN;
                        }
                    }
                }
            }
            Err(e) => {
                warn!(channel = %def.name, error = %e, "AMQP channel cannot connect");
                ctx.status.set_error(&e);
            }
        }
        let wait = jittered(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stops.wait() => break,
        }
    }
    ctx.status.connected.store(false, Ordering::Relaxed);
    ctx.metrics.inbound.connected(KIND, &def.name, false);
    info!(channel = %def.name, "AMQP channel stopped");
}

/// `d` ±25%.
fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 2;
    Duration::from_millis(ms - ms / 4 + crate::random::random_below(spread.max(1)))
}

type Counted = Arc<Mutex<HashMap<u64, u32>>>;

/// One connection's consumers, until a stop (`Ok`) or a failure (`Err`: the error, and
/// whether the session got as far as consuming).
async fn session(
    ctx: &Arc<Ctx>,
    def: &Arc<AmqpChannel>,
    conn: &Connection,
    stops: &Stops,
    counted: &Counted,
) -> Result<(), (String, bool)> {
    let fail =
        |what: &str, e: lapin::Error| (format!("AMQP channel {:?}: {what}: {e}", def.name), false);
    let mut consumers = Vec::with_capacity(usize::from(def.consumers));
    for i in 0..def.consumers {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| fail("open a channel", e))?;
        ch.basic_qos(def.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| fail("basic.qos", e))?;
        let tag = format!(
            "oxbus.{}.{}.{i}.{}",
            ctx.server,
            def.name,
            crate::random::random_hex(4)
        );
        let consumer = ch
            .basic_consume(
                def.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| fail(&format!("consume queue {:?}", def.queue), e))?;
        consumers.push((ch, consumer, tag));
    }
    ctx.status.connected.store(true, Ordering::Relaxed);
    ctx.metrics.inbound.connected(KIND, &def.name, true);
    info!(channel = %def.name, queue = %def.queue, consumers = def.consumers, prefetch = def.prefetch, "AMQP channel consuming");
    let (abort_tx, abort) = watch::channel(false);
    let mut set = JoinSet::new();
    for (ch, consumer, tag) in consumers {
        let s = Stops {
            abort: abort.clone(),
            ..stops.clone()
        };
        set.spawn(consume(
            ctx.clone(),
            def.clone(),
            ch,
            consumer,
            tag,
            s,
            counted.clone(),
        ));
    }
    // A lost connection shows as an event; a consumer's stream may not end on it.
    let mut events = conn.events_listener();
    let mut outcome = Ok(());
    loop {
        let err = tokio::select! {
            r = set.join_next() => match r {
                None => break,
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => e,
                Some(Err(e)) => format!("AMQP channel {:?}: a consumer task failed: {e}", def.name),
            },
            ev = events.next(), if outcome.is_ok() => match ev {
                Some(lapin::Event::Error(e)) => {
                    format!("AMQP channel {:?}: connection lost: {e}", def.name)
                }
                Some(_) => continue,
                None => format!("AMQP channel {:?}: connection closed", def.name),
            },
        };
        if outcome.is_ok() {
            outcome = Err((err, true));
            // Every consumer of the connection stops and the run reconnects.
            let _ = abort_tx.send(true);
        }
    }
    outcome
}

/// One consumer: each delivery handled in a task of its own (at most `prefetch` at once:
/// the broker sends no more unacked); on a stop, basic.cancel, then the in-flight ones
/// finish (bounded), then the channel closes, giving back whatever was delivered but not
/// yet handed to the service.
async fn consume(
    ctx: Arc<Ctx>,
    def: Arc<AmqpChannel>,
    ch: Channel,
    mut consumer: Consumer,
    tag: String,
    mut stops: Stops,
    counted: Counted,
) -> Result<(), String> {
    let mut inflight = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            biased;
            _ = stops.wait() => break Ok(()),
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            d = consumer.next() => match d {
                Some(Ok(delivery)) => {
                    ctx.status.consumed.fetch_add(1, Ordering::Relaxed);
                    inflight.spawn(handle(
                        ctx.clone(),
                        def.clone(),
                        tag.clone(),
                        delivery,
                        counted.clone(),
                    ));
                }
                Some(Err(e)) => break Err(format!("AMQP channel {:?}: consumer {tag}: {e}", def.name)),
                None => break Err(format!(
                    "AMQP channel {:?}: the broker cancelled consumer {tag} (queue {:?} deleted?)",
                    def.name, def.queue
                )),
            },
        }
    };
    if outcome.is_ok() {
        // No new deliveries from here; those already sent to us stay unacked.
        let _ = tokio::time::timeout(
            BROKER_CALL,
            ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while inflight.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        warn!(channel = %def.name, in_flight = inflight.len(), "AMQP channel: messages still in flight at the drain bound go back to the queue unacked");
        inflight.abort_all();
    }
    let _ = tokio::time::timeout(BROKER_CALL, ch.close(200, "OK".into())).await;
    drop(consumer);
    outcome
}

/// One delivery: the service, then ack, or reject (requeued or not).
async fn handle(
    ctx: Arc<Ctx>,
    def: Arc<AmqpChannel>,
    consumer_tag: String,
    delivery: Delivery,
    counted: Counted,
) {
    let header_count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(as_i64);
    let key = (header_count.is_none()).then(|| message_key(&delivery));
    let seen = key.map_or(0, |k| {
        counted
            .lock()
            .expect("counted lock")
            .get(&k)
            .copied()
            .unwrap_or(0)
    });
    let redelivered = redeliveries(header_count, delivery.redelivered, seen);
    let meta = delivery_meta(&def.queue, &consumer_tag, &delivery, redelivered);
    let result = invoke(&ctx, &def, &meta, &delivery.data).await;
    let forget = |counted: &Counted| {
        if let Some(k) = key {
            counted.lock().expect("counted lock").remove(&k);
        }
    };
    match result {
        Ok(()) => {
            forget(&counted);
            match delivery.acker.ack(BasicAckOptions::default()).await {
                Ok(_) => {
                    ctx.status.acked.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.inbound.message(KIND, &def.name, "acked");
                }
                Err(e) => {
                    // The channel is gone: the broker redelivers it (at least once).
                    let e = format!(
                        "AMQP channel {:?}: ack of delivery {} failed (it will be redelivered): {e}",
                        def.name, delivery.delivery_tag
                    );
                    warn!(channel = %def.name, error = %e, "AMQP ack failed");
                    ctx.status.set_error(&e);
                }
            }
        }
        Err(e) => {
            let decision = rejection(def.on_error, def.max_redeliveries, redelivered);
            let requeue = decision == Rejection::Requeue;
            warn!(channel = %def.name, service = %def.service, redeliveries = redelivered, requeue, error = %e, "AMQP message failed");
            ctx.status.set_error(&e);
            if requeue {
                if let Some(k) = key {
                    let mut c = counted.lock().expect("counted lock");
                    if c.len() >= MAX_COUNTED && !c.contains_key(&k) {
                        c.clear();
                    }
                    *c.entry(k).or_insert(0) += 1;
                }
            } else {
                forget(&counted);
            }
            match delivery.acker.reject(BasicRejectOptions { requeue }).await {
                Ok(_) if requeue => {
                    ctx.status.requeued.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.inbound.message(KIND, &def.name, "requeued");
                }
                Ok(_) => {
                    ctx.status.rejected.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.inbound.message(KIND, &def.name, "rejected");
                }
                Err(e) => {
                    let e = format!(
                        "AMQP channel {:?}: reject of delivery {} failed (it will be redelivered): {e}",
                        def.name, delivery.delivery_tag
                    );
                    ctx.status.set_error(&e);
                }
            }
        }
    }
}

/// Invokes the channel's service with one message: `Ok` only when it returned without an
/// exception.
async fn invoke(ctx: &Ctx, def: &AmqpChannel, meta: &Value, body: &[u8]) -> Result<(), String> {
    let Some(pool) = &ctx.pool else {
        return Err(format!(
            "AMQP channel {:?}: this server has no worker pool to invoke services",
            def.name
        ));
    };
    let cid = crate::random::random_hex(12);
    let call: oxbus_ipc::InvokeMeta<'_> = oxbus_ipc::InvokeMeta {
        op: "invoke",
        service: &def.service,
        cid: &cid,
        channel: Some("amqp"),
        data_format: Some("raw"),
        method: None,
        path: None,
        params: None,
        query: None,
        headers: None,
        deadline_ms: Some(def.service_timeout_ms),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: Some(&def.name),
        security: None,
        traceparent: None,
        tracestate: None,
        pubsub: None,
        amqp: Some(meta),
        mqtt: None,
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(def.service_timeout_ms);
    match pool.invoke(&call, body, deadline).await {
        Ok(r) if r.exc.is_none() && r.error.is_none() => Ok(()),
        Ok(r) => Err(format!(
            "AMQP channel {:?}: service {} failed (cid {cid}): {}",
            def.name,
            def.service,
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        )),
        Err(e) => Err(format!(
            "AMQP channel {:?}: service {} (cid {cid}): {e}",
            def.name, def.service
        )),
    }
}

/// Identifies a message of a classic queue across its redeliveries (for the failures a
/// channel counts itself): its `message_id` when it has one, else its exchange, routing
/// key and body. Two messages alike in all of these share a count, which can only dead-
/// letter one of them early, never keep one forever.
fn message_key(d: &Delivery) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match d.properties.message_id() {
        Some(id) => ("id", id.as_str()).hash(&mut h),
        None => ("body", d.exchange.as_str(), d.routing_key.as_str(), &d.data).hash(&mut h),
    }
    h.finish()
}

/// The `amqp` meta of one delivery (ipc-protocol/SPEC.md "AMQP deliveries").
pub(crate) fn delivery_meta(
    queue: &str,
    consumer_tag: &str,
    d: &Delivery,
    redeliveries: u32,
) -> Value {
    json!({
        "queue": queue,
        "consumer_tag": consumer_tag,
        "delivery_tag": d.delivery_tag,
        "redelivered": d.redelivered,
        "redeliveries": redeliveries,
        "exchange": d.exchange.as_str(),
        "routing_key": d.routing_key.as_str(),
        "properties": properties_json(&d.properties),
        "headers": d.properties.headers().as_ref().map_or(Value::Object(Map::new()), table_json),
    })
}

/// The properties a message has (those it has not are left out), by their AMQP names
/// (`type` for the `type` property).
fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut text = |k: &str, v: &Option<lapin::types::ShortString>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.as_str().to_owned()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(v) = p.delivery_mode() {
        m.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        m.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        m.insert("timestamp".into(), json!(v));
    }
    Value::Object(m)
}

fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_json(v)))
            .collect(),
    )
}

/// A header value as JSON: numbers, booleans, strings, arrays and tables as themselves; a
/// byte string that is not UTF-8 (and every byte array) as `{"$bytes": "<base64>"}`, which
/// the worker turns back into `bytes`.
fn value_json(v: &AMQPValue) -> Value {
    let bytes = |b: &[u8]| json!({"$bytes": base64::engine::general_purpose::STANDARD.encode(b)});
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(t) => json!(t),
            Err(_) => bytes(s.as_bytes()),
        },
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => bytes(b.as_slice()),
        AMQPValue::Void => Value::Null,
    }
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};
    use std::collections::BTreeMap;

    #[test]
    fn headers_become_plain_json() {
        let mut t = BTreeMap::new();
        t.insert(ShortString::from("n"), AMQPValue::LongInt(-7));
        t.insert(ShortString::from("ok"), AMQPValue::Boolean(true));
        t.insert(
            ShortString::from("s"),
            AMQPValue::LongString(LongString::from("żółw")),
        );
        t.insert(
            ShortString::from("raw"),
            AMQPValue::LongString(LongString::from(vec![0xff, 0x00])),
        );
        t.insert(
            ShortString::from("list"),
            AMQPValue::FieldArray(vec![AMQPValue::LongLongInt(1), AMQPValue::Void].into()),
        );
        let v = table_json(&FieldTable::from(t));
        assert_eq!(
            v,
            json!({"n": -7, "ok": true, "s": "żółw", "raw": {"$bytes": "/wA="}, "list": [1, null]})
        );
    }

    #[test]
    fn a_delivery_count_header_is_read_from_any_integer() {
        assert_eq!(as_i64(&AMQPValue::LongLongInt(3)), Some(3));
        assert_eq!(as_i64(&AMQPValue::LongInt(2)), Some(2));
        assert_eq!(as_i64(&AMQPValue::Boolean(true)), None);
    }

    #[test]
    fn the_backoff_is_jittered_within_a_quarter() {
        for _ in 0..200 {
            let d = jittered(Duration::from_millis(1000));
            assert!((750..=1250).contains(&d.as_millis()), "{d:?}");
        }
    }
}
