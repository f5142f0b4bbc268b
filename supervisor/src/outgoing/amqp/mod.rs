//! Outgoing AMQP connections (docs/CONNECTORS.md): `self.out.amqp.send(msg, name,
//! exchange, routing_key, properties, headers)` with publisher confirms. Per connection and
//! server: one AMQP connection (opened at the first send or ping, so a server starts while
//! the broker is down; opened again after it broke) and `pool_size` channels in confirm mode,
//! taken in turn. A send publishes on a channel and waits for that delivery's confirm: many
//! sends are in flight on one channel at once (confirms are per delivery tag), only the
//! publish itself is one at a time per channel ([`Slot::publish`]); a mandatory send is alone
//! in flight on its channel ([`Slot::gate`]). A send is bounded as a whole by its deadline,
//! else by `connect_timeout_ms + confirm_timeout_ms`. Outcomes: ack → done; nack → `nacked`;
//! a mandatory message the broker could not route comes back (basic.return) → `unroutable`
//! with its reply code and text; nothing sent in time, or no confirm within
//! `confirm_timeout_ms` → `timeout`; the broker closed the channel naming the send's
//! exchange → `refused`, and the channel is replaced at the next send; connecting failed →
//! `connect` (remembered for a short backoff); written, then the connection broke or the
//! channel closed because of another publish → `io` (ambiguous).
//!
//! The `connect` step (address, sealed password, TLS, heartbeat) is shared with the AMQP
//! channels ([`connect`]).

pub mod connect;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ErrorKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::lifecycle::ops::OpReply;
use crate::metrics::histogram::DurationHistogram;
use crate::model::amqp::AmqpConn;
use crate::outgoing::{ConnStats, PingOutcome};
use crate::secrets::Key;

/// Why a send failed: its error code (ipc-protocol/SPEC.md), status and message.
#[derive(Debug, Clone)]
struct Failure {
    code: &'static str,
    status: u16,
    message: String,
    /// Extra fields of the error body (`reply_code`, `reply_text` of a return).
    extra: Option<Value>,
}

impl Failure {
    fn new(code: &'static str, status: u16, message: String) -> Failure {
        Failure {
            code,
            status,
            message,
            extra: None,
        }
    }

    fn reply(self) -> OpReply {
        let mut body = json!({ "error": self.message });
        if let (Some(Value::Object(extra)), Some(b)) = (self.extra, body.as_object_mut()) {
            b.extend(extra);
        }
        let mut r = OpReply::json(self.status, &body);
        r.meta.error = Some(self.code.to_owned());
        r
    }
}

#[derive(Debug, Default)]
struct Figures {
    calls: AtomicU64,
    errors: AtomicU64,
    /// Sends waiting for their channel to be opened.
    waiting: AtomicU32,
    latency: DurationHistogram,
}

/// One pooled channel.
#[derive(Debug, Default)]
struct Slot {
    /// The channel and the connection it is on.
    chan: RwLock<Option<(Channel, Arc<Connection>)>>,
    /// Held while the channel is (re)opened: one opening per slot.
    opening: tokio::sync::Mutex<()>,
    /// Sends published on it and not yet confirmed.
    in_flight: AtomicU32,
    /// Held across `basic_publish` (until its frames are queued), never across a confirm:
    /// lapin numbers a publish's delivery tag and queues its frames in two steps, so two
    /// publishes racing on one channel (multi-thread runtime) could swap their confirms.
    publish: tokio::sync::Mutex<()>,
    /// Shared by the sends on the channel from their publish to their confirm; a mandatory
    /// send holds it alone: lapin hands a basic.return to whichever confirm resolves next
    /// (a multiple ack resolves several in no set order), so a mandatory send is the only
    /// one in flight on its channel, and a return is its own.
    gate: tokio::sync::RwLock<()>,
}

/// The connection of an outgoing AMQP connection and its last failure.
#[derive(Debug, Default)]
struct ConnState {
    conn: Option<Arc<Connection>>,
    /// The last connect's failure and until when it answers the sends without a new attempt
    /// (a jittered backoff): the sends that waited for an attempt share its result, and the
    /// later ones fail fast while the broker is away.
    failed: Option<(Instant, Failure)>,
}

#[derive(Debug)]
struct Inner {
    def: AmqpConn,
    /// `AMQP connection "name"`, the start of every message.
    who: String,
    key: Arc<Key>,
    /// One connect at a time (single flight: its waiters take its result).
    conn: tokio::sync::Mutex<ConnState>,
    slots: Vec<Slot>,
    next: AtomicUsize,
    figures: Figures,
}

/// One outgoing AMQP connection's publishing channels on this server.
#[derive(Debug)]
pub struct AmqpClient {
    def: AmqpConn,
    inner: Arc<Inner>,
}

/// The meta of `out.amqp` (ipc-protocol/SPEC.md).
#[derive(Debug, Deserialize)]
struct SendMeta {
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    mandatory: bool,
    #[serde(default)]
    properties: Option<Props>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

/// The message properties a send may set (AMQP 0-9-1 basic properties but `headers`,
/// which is its own field; `cluster_id`, deprecated, is accepted and dropped).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Props {
    content_type: Option<String>,
    content_encoding: Option<String>,
    /// 1 transient, 2 persistent (the default).
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration: Option<String>,
    message_id: Option<String>,
    /// Seconds since the epoch.
    timestamp: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
    user_id: Option<String>,
    app_id: Option<String>,
    /// Deprecated in AMQP 0-9-1 (RabbitMQ refuses a message with it): accepted, as Zato
    /// does, and not sent.
    #[serde(default, rename = "cluster_id")]
    _cluster_id: serde::de::IgnoredAny,
}

fn short(field: &str, s: &str) -> Result<ShortString, String> {
    if s.len() > 255 {
        return Err(format!("{field}: {} bytes, more than 255", s.len()));
    }
    Ok(s.into())
}

/// A JSON value as an AMQP field value: strings as long strings, integers as signed 64-bit
/// (unsigned above i64 as a double), other numbers as doubles, lists as arrays, objects as
/// tables, null as void.
fn amqp_value(field: &str, v: &Value) -> Result<AMQPValue, String> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            let mut a = FieldArray::default();
            for item in items {
                a.push(amqp_value(field, item)?);
            }
            AMQPValue::FieldArray(a)
        }
        Value::Object(m) => AMQPValue::FieldTable(field_table(field, m)?),
    })
}

fn field_table(field: &str, m: &serde_json::Map<String, Value>) -> Result<FieldTable, String> {
    let mut t = FieldTable::default();
    for (k, v) in m {
        let name = format!("{field}.{k}");
        t.insert(short(&name, k)?, amqp_value(&name, v)?);
    }
    Ok(t)
}

/// The basic properties of a send: the caller's, `delivery_mode` 2 (persistent) unless
/// given, and the headers.
fn properties(
    props: Option<Props>,
    headers: Option<&serde_json::Map<String, Value>>,
) -> Result<BasicProperties, String> {
    let p = props.unwrap_or_default();
    let mut b = BasicProperties::default();
    let s = |field: &str, v: &Option<String>| v.as_deref().map(|v| short(field, v)).transpose();
    if let Some(v) = s("properties.content_type", &p.content_type)? {
        b = b.with_content_type(v);
    }
    if let Some(v) = s("properties.content_encoding", &p.content_encoding)? {
        b = b.with_content_encoding(v);
    }
    let mode = p.delivery_mode.unwrap_or(2);
    if !(1..=2).contains(&mode) {
        return Err(format!(
            "properties.delivery_mode: {mode} is neither 1 (transient) nor 2 (persistent)"
        ));
    }
    b = b.with_delivery_mode(mode);
    if let Some(v) = p.priority {
        b = b.with_priority(v);
    }
    if let Some(v) = s("properties.correlation_id", &p.correlation_id)? {
        b = b.with_correlation_id(v);
    }
    if let Some(v) = s("properties.reply_to", &p.reply_to)? {
        b = b.with_reply_to(v);
    }
    if let Some(v) = &p.expiration {
        if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "properties.expiration: {v:?} is not a number of milliseconds"
            ));
        }
        b = b.with_expiration(short("properties.expiration", v)?);
    }
    if let Some(v) = s("properties.message_id", &p.message_id)? {
        b = b.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        b = b.with_timestamp(v);
    }
    if let Some(v) = s("properties.type", &p.kind)? {
        b = b.with_type(v);
    }
    if let Some(v) = s("properties.user_id", &p.user_id)? {
        b = b.with_user_id(v);
    }
    if let Some(v) = s("properties.app_id", &p.app_id)? {
        b = b.with_app_id(v);
    }
    if let Some(h) = headers {
        b = b.with_headers(field_table("headers", h)?);
    }
    Ok(b)
}

impl AmqpClient {
    /// A client for `def`; nothing is opened until the first send or ping.
    pub fn new(def: AmqpConn, key: &Arc<Key>) -> AmqpClient {
        let slots = (0..def.pool_size.max(1)).map(|_| Slot::default()).collect();
        let inner = Arc::new(Inner {
            who: format!("AMQP connection {:?}", def.name),
            def: def.clone(),
            key: key.clone(),
            conn: tokio::sync::Mutex::new(ConnState::default()),
            slots,
            next: AtomicUsize::new(0),
            figures: Figures::default(),
        });
        AmqpClient { def, inner }
    }

    pub fn def(&self) -> &AmqpConn {
        &self.def
    }

    /// Answers one `out.amqp` call: the body is the message.
    pub async fn call(&self, raw_meta: &[u8], body: Bytes) -> OpReply {
        let start = Instant::now();
        let out = self.inner.send(raw_meta, &body).await;
        let f = &self.inner.figures;
        f.latency.observe(start.elapsed());
        match out {
            Ok(()) => {
                f.calls.fetch_add(1, Ordering::Relaxed);
                OpReply::json(200, &json!({}))
            }
            Err(e) => {
                f.errors.fetch_add(1, Ordering::Relaxed);
                if e.code != "invalid" {
                    // Never the message's body or headers.
                    tracing::warn!(code = e.code, "{}", e.message);
                }
                e.reply()
            }
        }
    }

    /// Connects anew (the address, credentials and TLS as they are now) and opens a channel.
    pub async fn ping(&self) -> PingOutcome {
        let start = Instant::now();
        let target = connect::Target::of_conn(&self.def);
        let limit = Duration::from_millis(self.def.connect_timeout_ms);
        let r = async {
            let conn = connect::connect(&target, &self.inner.key).await?;
            let opened = tokio::time::timeout(limit, async {
                let ch = conn.create_channel().await?;
                ch.close(200, "ping".into()).await?;
                conn.close(200, "ping".into()).await
            })
            .await;
            match opened {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(target.error(format!("opening a channel: {e}"))),
                Err(_) => Err(target.error(format!(
                    "opening a channel: no answer from the broker within {} ms",
                    limit.as_millis()
                ))),
            }
        }
        .await;
        let took_ms = start.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(()) => PingOutcome {
                ok: true,
                took_ms,
                detail: format!("connected and opened a channel in {took_ms:.1} ms"),
            },
            Err(detail) => PingOutcome {
                ok: false,
                took_ms,
                detail,
            },
        }
    }

    /// Figures: `pool_size` channels; `in_use` those with a send awaiting its confirm,
    /// `idle` the other open ones; `waiting` sends waiting for a channel to open.
    pub fn stats(&self) -> ConnStats {
        let f = &self.inner.figures;
        let (buckets, sum) = f.latency.snapshot();
        let (mut in_use, mut idle) = (0, 0);
        for slot in &self.inner.slots {
            let open = slot
                .chan
                .read()
                .expect("slot lock")
                .as_ref()
                .is_some_and(|(c, _)| c.status().connected());
            if open && slot.in_flight.load(Ordering::Relaxed) > 0 {
                in_use += 1;
            } else if open {
                idle += 1;
            }
        }
        ConnStats {
            name: self.def.name.clone(),
            calls: f.calls.load(Ordering::Relaxed),
            errors: f.errors.load(Ordering::Relaxed),
            latency_count: buckets.iter().sum(),
            latency_sum_s: sum,
            latency_buckets: buckets,
            pool_size: self.def.pool_size,
            in_use,
            idle,
            waiting: f.waiting.load(Ordering::Relaxed),
        }
    }
}

/// Counts a send on a slot while it waits for its confirm.
struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    fn fail(&self, code: &'static str, status: u16, what: impl std::fmt::Display) -> Failure {
        Failure::new(code, status, format!("{}: {what}", self.who))
    }

    /// A lapin error of a published message's confirm. A channel-level (soft) AMQP error
    /// that names the send's own exchange is `refused`: the broker refused this publish. Any
    /// other error — a channel closed because of another publish on it, a connection-level
    /// (hard) error, the connection broken — is `io`, an ambiguous outcome: the message was
    /// written and may or may not have been taken.
    fn lapin_failure(&self, exchange: &str, e: &lapin::Error) -> Failure {
        use lapin::protocol::AMQPErrorKind;
        match e.kind() {
            ErrorKind::ProtocolError(amqp)
                if matches!(amqp.kind(), AMQPErrorKind::Soft(_))
                    && !exchange.is_empty()
                    && amqp
                        .get_message()
                        .as_str()
                        .contains(&format!("'{exchange}'")) =>
            {
                self.fail(
                    "refused",
                    502,
                    format!(
                        "the broker refused the publish to exchange {exchange:?} and closed \
                         the channel: {} {}",
                        amqp.get_id(),
                        amqp.get_message()
                    ),
                )
            }
            ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => self
                .fail(
                    "io",
                    502,
                    format!(
                        "the broker closed the channel because of another publish on it ({} \
                         {}): the message may or may not have been taken",
                        amqp.get_id(),
                        amqp.get_message()
                    ),
                ),
            ErrorKind::ProtocolError(amqp) => self.fail(
                "io",
                502,
                format!(
                    "the broker closed the connection ({} {}): the message may or may not \
                     have been taken",
                    amqp.get_id(),
                    amqp.get_message()
                ),
            ),
            _ => self.fail(
                "io",
                502,
                format!(
                    "the connection to the broker broke ({e}): the message may or may not \
                     have been taken"
                ),
            ),
        }
    }

    /// After a failed or unconfirmed publish: the slot's channel is not used again, nor,
    /// when the failure was the connection's (I/O, heartbeat, a hard AMQP error) or the
    /// connection is no longer open, the connection — so the next send opens new ones.
    /// Sends in flight on them keep them until they end.
    async fn forget(
        &self,
        i: usize,
        ch: &Channel,
        conn: &Arc<Connection>,
        e: Option<&lapin::Error>,
    ) {
        use lapin::protocol::AMQPErrorKind;
        {
            let mut held = self.slots[i].chan.write().expect("slot lock");
            if held
                .as_ref()
                .is_some_and(|(c, k)| c.id() == ch.id() && Arc::ptr_eq(k, conn))
            {
                *held = None;
            }
        }
        // No error: a confirm that did not come; the channel alone is replaced.
        let channel_only = e.is_none_or(|e| {
            matches!(
                e.kind(),
                ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_))
            ) || matches!(e.kind(), ErrorKind::InvalidChannelState(..))
        });
        if !channel_only || !conn.status().connected() {
            let mut held = self.conn.lock().await;
            if held.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                held.conn = None;
            }
        }
    }

    /// How long a failed connect answers the sends: between a half and the whole of
    /// `min(connect_timeout_ms, 2 s)`, at least 100 ms.
    fn backoff(&self) -> Duration {
        let base = self.def.connect_timeout_ms.clamp(100, 2000);
        let half = base / 2;
        Duration::from_millis(half + crate::random::random_below(base - half + 1))
    }

    /// The open connection, connecting when there is none (or it broke). One connect at a
    /// time; a failure answers every send for a backoff window without a new attempt.
    async fn connection(&self) -> Result<Arc<Connection>, Failure> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.conn.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        held.conn = None;
        if let Some((until, f)) = &held.failed
            && Instant::now() < *until
        {
            return Err(f.clone());
        }
        held.failed = None;
        let target = connect::Target::of_conn(&self.def);
        match connect::connect(&target, &self.key).await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                held.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(m) => {
                let f = if m.contains("no answer within") {
                    Failure::new("timeout", 504, m)
                } else {
                    Failure::new("connect", 502, m)
                };
                held.failed = Some((Instant::now() + self.backoff(), f.clone()));
                Err(f)
            }
        }
    }

    /// Slot `i`'s channel, opened (with confirms) when it has none or it was closed.
    async fn channel(&self, i: usize) -> Result<(Channel, Arc<Connection>), Failure> {
        let slot = &self.slots[i];
        let open = || {
            slot.chan
                .read()
                .expect("slot lock")
                .as_ref()
                .filter(|(c, _)| c.status().connected())
                .cloned()
        };
        if let Some(c) = open() {
            return Ok(c);
        }
        self.figures.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = InFlight(&self.figures.waiting);
        let _one = slot.opening.lock().await;
        if let Some(c) = open() {
            return Ok(c);
        }
        let conn = self.connection().await?;
        let limit = Duration::from_millis(self.def.connect_timeout_ms);
        let opened = tokio::time::timeout(limit, async {
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| format!("opening a channel: {e}"))?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("enabling publisher confirms: {e}"))?;
            Ok::<_, String>(ch)
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "opening a channel: no answer from the broker within {} ms",
                limit.as_millis()
            ))
        });
        match opened {
            Ok(ch) => {
                let pair = (ch, conn);
                *slot.chan.write().expect("slot lock") = Some(pair.clone());
                Ok(pair)
            }
            Err(m) => {
                // A connection that cannot open a channel is not used again, whatever its
                // state says: the next send connects anew.
                let mut held = self.conn.lock().await;
                if held.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    held.conn = None;
                }
                Err(self.fail("io", 502, m))
            }
        }
    }

    /// One send, bounded as a whole: by the caller's deadline when given, otherwise by
    /// `connect_timeout_ms + confirm_timeout_ms` (taking a channel, connecting included);
    /// the confirm itself by `confirm_timeout_ms`.
    async fn send(&self, raw_meta: &[u8], body: &[u8]) -> Result<(), Failure> {
        let mut meta: SendMeta = serde_json::from_slice(raw_meta)
            .map_err(|e| self.fail("invalid", 400, format!("out.amqp: bad meta: {e}")))?;
        let invalid = |m: String| self.fail("invalid", 400, m);
        let exchange = short("exchange", &meta.exchange).map_err(invalid)?;
        let routing_key = short("routing_key", &meta.routing_key).map_err(invalid)?;
        let props = properties(meta.properties.take(), meta.headers.as_ref()).map_err(invalid)?;
        let start = Instant::now();
        let total = match meta.deadline_ms {
            Some(d) => Duration::from_millis(d),
            None => Duration::from_millis(
                self.def
                    .connect_timeout_ms
                    .saturating_add(self.def.confirm_timeout_ms),
            ),
        };
        let end = tokio::time::Instant::from_std(start + total);
        let not_sent = |what: &str| {
            self.fail(
                "timeout",
                504,
                format!(
                    "{what} within {} ms: nothing was sent (exchange {:?}, routing key {:?})",
                    total.as_millis(),
                    meta.exchange,
                    meta.routing_key
                ),
            )
        };
        let mut retried = false;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            let (ch, conn) = tokio::time::timeout_at(end, self.channel(i))
                .await
                .map_err(|_| not_sent("no open channel"))??;
            let slot = &self.slots[i];
            let _gate = if meta.mandatory {
                Gate::Alone(
                    tokio::time::timeout_at(end, slot.gate.write())
                        .await
                        .map_err(|_| not_sent("no channel free for a mandatory send"))?,
                )
            } else {
                Gate::Shared(
                    tokio::time::timeout_at(end, slot.gate.read())
                        .await
                        .map_err(|_| not_sent("no channel free"))?,
                )
            };
            slot.in_flight.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(&slot.in_flight);
            let confirm_end = end.min(tokio::time::Instant::now() + self.confirm_limit());
            let published = {
                let _one = tokio::time::timeout_at(end, slot.publish.lock())
                    .await
                    .map_err(|_| not_sent("no channel free"))?;
                ch.basic_publish(
                    exchange.clone(),
                    routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: meta.mandatory,
                        immediate: false,
                    },
                    body,
                    props.clone(),
                )
                .await
            };
            let confirm = match published {
                Ok(c) => c,
                Err(e) => {
                    self.forget(i, &ch, &conn, Some(&e)).await;
                    // Refused before anything was written (the channel closed meanwhile,
                    // by another send's failure): once more, on a fresh channel.
                    if matches!(e.kind(), ErrorKind::InvalidChannelState(..)) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(self.fail(
                        "io",
                        502,
                        format!("publishing on the channel failed: {e}"),
                    ));
                }
            };
            let confirmation = match tokio::time::timeout_at(confirm_end, confirm).await {
                Err(_) => {
                    self.forget(i, &ch, &conn, None).await;
                    return Err(self.fail(
                        "timeout",
                        504,
                        format!(
                            "no confirm from the broker within {} ms (publish to exchange \
                             {:?}, routing key {:?}): the message may or may not have been \
                             taken",
                            (confirm_end - tokio::time::Instant::from_std(start)).as_millis(),
                            meta.exchange,
                            meta.routing_key
                        ),
                    ));
                }
                Ok(Err(e)) => {
                    self.forget(i, &ch, &conn, Some(&e)).await;
                    return Err(self.lapin_failure(&meta.exchange, &e));
                }
                Ok(Ok(c)) => c,
            };
            return self.outcome(&meta, confirmation);
        }
    }

    fn confirm_limit(&self) -> Duration {
        Duration::from_millis(self.def.confirm_timeout_ms)
    }

    fn outcome(&self, meta: &SendMeta, confirmation: Confirmation) -> Result<(), Failure> {
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)) => {
                let mut f = self.fail(
                    "unroutable",
                    502,
                    format!(
                        "the broker returned the mandatory message: {} {} (exchange {:?}, \
                         routing key {:?})",
                        ret.reply_code, ret.reply_text, meta.exchange, meta.routing_key
                    ),
                );
                f.extra = Some(json!({
                    "reply_code": ret.reply_code,
                    "reply_text": ret.reply_text.as_str(),
                }));
                Err(f)
            }
            Confirmation::Nack(None) => Err(self.fail(
                "nacked",
                502,
                format!(
                    "the broker refused the message (basic.nack; exchange {:?}, routing key \
                     {:?})",
                    meta.exchange, meta.routing_key
                ),
            )),
            Confirmation::NotRequested => {
                Err(self.fail("internal", 500, "the channel is not in confirm mode"))
            }
        }
    }
}

/// A send's hold on its channel's gate (see [`Slot::gate`]).
enum Gate<'a> {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'a, ()>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_headers() {
        let p: Props = serde_json::from_value(json!({
            "content_type": "application/json", "priority": 3, "type": "order.created",
            "timestamp": 1_700_000_000u64, "expiration": "60000", "message_id": "m-1",
        }))
        .unwrap();
        let h = json!({"n": 1, "s": "x", "b": true, "l": [1, "a"], "t": {"k": null}});
        let b = properties(Some(p), h.as_object()).unwrap();
        assert_eq!(b.delivery_mode(), &Some(2));
        assert_eq!(b.priority(), &Some(3));
        assert_eq!(b.kind().as_ref().map(|s| s.as_str()), Some("order.created"));
        let headers = b.headers().as_ref().unwrap();
        let get = |k: &str| headers.inner().get(&ShortString::from(k)).cloned();
        assert_eq!(get("n"), Some(AMQPValue::LongLongInt(1)));
        assert_eq!(get("b"), Some(AMQPValue::Boolean(true)));
        assert!(matches!(get("l"), Some(AMQPValue::FieldArray(_))));
        assert!(matches!(get("t"), Some(AMQPValue::FieldTable(_))));

        let transient: Props = serde_json::from_value(json!({"delivery_mode": 1})).unwrap();
        assert_eq!(
            properties(Some(transient), None).unwrap().delivery_mode(),
            &Some(1)
        );
        let bad: Props = serde_json::from_value(json!({"delivery_mode": 3})).unwrap();
        assert!(properties(Some(bad), None).is_err());
        let bad: Props = serde_json::from_value(json!({"expiration": "soon"})).unwrap();
        assert!(properties(Some(bad), None).is_err());
        assert!(serde_json::from_value::<Props>(json!({"colour": "red"})).is_err());
        let zato: Props = serde_json::from_value(json!({"cluster_id": "c1"})).unwrap();
        assert_eq!(properties(Some(zato), None).unwrap().cluster_id(), &None);
        let long = "x".repeat(256);
        assert!(properties(None, json!({ long: 1 }).as_object()).is_err());
    }
}
