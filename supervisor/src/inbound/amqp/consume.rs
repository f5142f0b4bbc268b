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
use lapin::Acker;
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

use super::acks::{AckOp, AckWindow};
use super::{DRAIN_TIMEOUT, KIND, Status};
use crate::model::amqp::{AmqpChannel, Rejection, redeliveries, rejection};
use crate::outgoing::amqp::connect::{Target, connect};

/// The first wait after a failed connection; doubled up to [`BACKOFF_MAX`], each wait
/// jittered by ±25% so that the servers of a cluster do not all come back at once.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A bound on each call to the broker while stopping (cancel, close).
const BROKER_CALL: Duration = Duration::from_secs(5);
/// The most messages whose failures a channel counts itself; past it the least recently
/// counted one is forgotten (its next redelivery then counts as redelivered once).
const MAX_COUNTED: usize = 10_000;
/// A session that stayed up this long (or acked a message) was a working one: the
/// reconnect after it starts again from [`BACKOFF_MIN`].
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// The first pause of a consumer whose message could not be handed to a worker (the pool
/// busy, no worker yet, the service not deployed yet); doubled up to [`PAUSE_MAX`].
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);
/// How often a session waiting for a ready worker looks again.
const READY_POLL: Duration = Duration::from_millis(100);
/// The longest consumer tag AMQP carries (a short string).
const MAX_TAG: usize = 255;

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
    let counted: Counted = Arc::new(Mutex::new(Counts::default()));
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
                let began = std::time::Instant::now();
                let acked_before = ctx.status.acked.load(Ordering::Relaxed);
                let outcome = session(&ctx, &def, &conn, &stops, &counted).await;
                ctx.status.connected.store(false, Ordering::Relaxed);
                ctx.metrics.inbound.connected(KIND, &def.name, false);
                let _ = tokio::time::timeout(BROKER_CALL, conn.close(200, "OK".into())).await;
                match outcome {
                    Ok(()) => break,
                    Err(e) => {
                        warn!(channel = %def.name, error = %e, "AMQP channel lost its connection; reconnecting");
                        ctx.status.set_error(&e);
                        let acked = ctx.status.acked.load(Ordering::Relaxed) > acked_before;
                        if healthy(began.elapsed(), acked) {
                            // It worked: the next try is soon.
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

/// Whether a lost session worked (stayed up [`HEALTHY_SESSION`] or acked a message): only
/// then the reconnect backoff starts over, so a session that fails at once (a message the
/// channel cannot take, a balancer that cuts connections) keeps backing off.
fn healthy(up: Duration, acked: bool) -> bool {
    acked || up >= HEALTHY_SESSION
}

/// The failures a channel counted itself, by message key, the least recently counted
/// forgotten past [`MAX_COUNTED`].
#[derive(Default)]
struct Counts {
    by_key: HashMap<u64, (u32, u64)>,
    /// Keys by the stamp of their last count: the first is the least recent.
    by_stamp: std::collections::BTreeMap<u64, u64>,
    stamp: u64,
}

impl Counts {
    fn get(&self, k: u64) -> u32 {
        self.by_key.get(&k).map_or(0, |e| e.0)
    }

    /// Counts one more failure of `k`, evicting the least recently counted key when full.
    fn bump(&mut self, k: u64) {
        self.stamp += 1;
        let stamp = self.stamp;
        let n = match self.by_key.get(&k) {
            Some(&(n, old)) => {
                self.by_stamp.remove(&old);
                n
            }
            None => {
                if self.by_key.len() >= MAX_COUNTED
                    && let Some((_, oldest)) = self.by_stamp.pop_first()
                {
                    self.by_key.remove(&oldest);
                }
                0
            }
        };
        self.by_key.insert(k, (n.saturating_add(1), stamp));
        self.by_stamp.insert(stamp, k);
    }

    fn forget(&mut self, k: u64) {
        if let Some((_, stamp)) = self.by_key.remove(&k) {
            self.by_stamp.remove(&stamp);
        }
    }
}

type Counted = Arc<Mutex<Counts>>;

/// The consumer tag of consumer `i` of channel `channel` on server `server`: readable when
/// it fits an AMQP short string, else the names hashed.
fn consumer_tag(server: &str, channel: &str, i: u16, suffix: &str) -> String {
    let tag = format!("oxbus.{server}.{channel}.{i}.{suffix}");
    if tag.len() <= MAX_TAG {
        return tag;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (server, channel).hash(&mut h);
    format!("oxbus.{:016x}.{i}.{suffix}", h.finish())
}

/// Waits until the pool has a ready worker (`false`: stopped first). At boot the channels
/// start before the workers are up: consuming earlier would only hand messages back.
async fn ready_pool(ctx: &Ctx, stops: &Stops) -> bool {
    let Some(pool) = &ctx.pool else {
        return true;
    };
    let mut stops = stops.clone();
    while pool.ready_count() == 0 {
        tokio::select! {
            _ = tokio::time::sleep(READY_POLL) => {}
            _ = stops.wait() => return false,
        }
    }
    true
}

/// One connection's consumers, until a stop (`Ok`) or a failure (`Err`).
async fn session(
    ctx: &Arc<Ctx>,
    def: &Arc<AmqpChannel>,
    conn: &Connection,
    stops: &Stops,
    counted: &Counted,
) -> Result<(), String> {
    let fail = |what: &str, e: lapin::Error| format!("AMQP channel {:?}: {what}: {e}", def.name);
    if !ready_pool(ctx, stops).await {
        return Ok(());
    }
    // What this channel hands the pool at once: never more than the pool's queue can
    // hold (prefetch × consumers could), and at least one per consumer.
    let permits = usize::from(def.prefetch) * usize::from(def.consumers);
    let permits = ctx
        .pool
        .as_ref()
        .map_or(permits, |p| permits.min(p.max_queue()))
        .max(usize::from(def.consumers));
    let slots = Arc::new(tokio::sync::Semaphore::new(permits));
    let mut consumers = Vec::with_capacity(usize::from(def.consumers));
    for i in 0..def.consumers {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| fail("open a channel", e))?;
        ch.basic_qos(def.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| fail("basic.qos", e))?;
        let tag = consumer_tag(&ctx.server, &def.name, i, &crate::random::random_hex(4));
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
            slots.clone(),
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
            outcome = Err(err);
            // Shown at once: the consumers' teardown on a dead connection can take a while
            // (each call to the broker is bounded by BROKER_CALL).
            ctx.status.connected.store(false, Ordering::Relaxed);
            ctx.metrics.inbound.connected(KIND, &def.name, false);
            // Every consumer of the connection stops and the run reconnects.
            let _ = abort_tx.send(true);
        }
    }
    outcome
}

/// One consumer: each delivery handled in a task of its own, at most `prefetch` at once
/// (the broker sends no more unacked) and within the channel's `slots` (what the pool can
/// take); a message the pool could not take pauses this consumer (backing off) before it
/// takes more. Succeeded messages are acked in batches (acks.rs). On a stop, basic.cancel,
/// then the in-flight ones finish (bounded) and the acks due are sent, then the channel
/// closes, giving back whatever was delivered but not yet handed to the service.
#[allow(clippy::too_many_arguments)]
async fn consume(
    ctx: Arc<Ctx>,
    def: Arc<AmqpChannel>,
    ch: Channel,
    mut consumer: Consumer,
    tag: String,
    mut stops: Stops,
    counted: Counted,
    slots: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let mut inflight: JoinSet<Done> = JoinSet::new();
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut pause = Duration::ZERO;
    let mut paused_until: Option<tokio::time::Instant> = None;
    let mut window: AckWindow<Acker> = AckWindow::default();
    let (acks, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(send_acks(ctx.clone(), def.clone(), acks_rx));
    let outcome = loop {
        tokio::select! {
            biased;
            _ = stops.wait() => break Ok(()),
            Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                let mut settled = Vec::with_capacity(8);
                settled.push(r);
                // The others that finished meanwhile go in the same ack.
                while let Some(r) = inflight.try_join_next() {
                    settled.push(r);
                }
                for r in settled {
                    match r {
                        Ok(done) => {
                            match done.settled {
                                Settled::NotAttempted => {
                                    pause = (pause * 2).clamp(PAUSE_MIN, PAUSE_MAX);
                                    paused_until = Some(tokio::time::Instant::now() + jittered(pause));
                                }
                                Settled::Attempted => pause = Duration::ZERO,
                            }
                            record(&mut window, done);
                        }
                        // A panicked task: its delivery stays open (unacked), as held.
                        Err(e) => warn!(channel = %def.name, error = %e, "AMQP channel: a delivery's task failed; the message stays unacked"),
                    }
                }
                for op in window.take() {
                    let _ = acks.send(op);
                }
            },
            _ = async { tokio::time::sleep_until(paused_until.expect("guarded")).await }, if paused_until.is_some() => {
                paused_until = None;
            }
            p = slots.clone().acquire_owned(), if permit.is_none() && paused_until.is_none() => {
                permit = Some(p.expect("the semaphore is never closed"));
            }
            d = consumer.next(), if permit.is_some() && paused_until.is_none() => match d {
                Some(Ok(delivery)) => {
                    ctx.status.consumed.fetch_add(1, Ordering::Relaxed);
                    window.delivered(delivery.delivery_tag);
                    let slot = permit.take().expect("guarded");
                    let h = handle(
                        ctx.clone(),
                        def.clone(),
                        tag.clone(),
                        delivery,
                        counted.clone(),
                        stops.clone(),
                    );
                    inflight.spawn(async move {
                        let done = h.await;
                        drop(slot);
                        done
                    });
                }
                Some(Err(e)) => break Err(format!("AMQP channel {:?}: consumer {tag}: {e}", def.name)),
                None => break Err(format!(
                    "AMQP channel {:?}: the broker cancelled consumer {tag} (queue {:?} deleted?)",
                    def.name, def.queue
                )),
            },
        }
    };
    drop(permit);
    if outcome.is_ok() {
        // No new deliveries from here; those already sent to us stay unacked.
        let _ = tokio::time::timeout(
            BROKER_CALL,
            ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
    }
    // What finishes during the drain is acked as it finishes (a stop killed mid-drain must
    // not take the acks of finished work with it).
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(r) = inflight.join_next().await {
            if let Ok(done) = r {
                record(&mut window, done);
                for op in window.take() {
                    let _ = acks.send(op);
                }
            }
        }
    })
    .await
    .is_ok();
    if !drained {
        // Those that finished at the bound still count.
        while let Some(r) = inflight.try_join_next() {
            if let Ok(done) = r {
                record(&mut window, done);
            }
        }
        warn!(channel = %def.name, in_flight = inflight.len(), "AMQP channel: messages still in flight at the drain bound go back to the queue unacked");
        inflight.abort_all();
    }
    // The acks due, before the channel closes (a closed channel gives back what it did not
    // ack: the work done would be done again). On a broken connection they fail and the
    // broker redelivers: at least once.
    for op in window.take() {
        let _ = acks.send(op);
    }
    drop(acks);
    let stop_acks = acker.abort_handle();
    if tokio::time::timeout(BROKER_CALL, acker).await.is_err() {
        stop_acks.abort();
        warn!(channel = %def.name, "AMQP channel: the last acks did not go out in time; their messages will be redelivered");
    }
    let _ = tokio::time::timeout(BROKER_CALL, ch.close(200, "OK".into())).await;
    drop(consumer);
    outcome
}

/// A finished delivery into the channel's ack window.
fn record(window: &mut AckWindow<Acker>, done: Done) {
    match done.outcome {
        Outcome::Succeeded(acker) => window.succeeded(done.tag, acker),
        Outcome::Settled => window.settled(done.tag),
        // Stays open: no ack may cover it.
        Outcome::Held => {}
    }
}

/// Sends a channel's acks in the order they were decided (a `multiple` ack must not
/// overtake a single ack of a tag it covers), counting them as they succeed.
async fn send_acks(
    ctx: Arc<Ctx>,
    def: Arc<AmqpChannel>,
    mut ops: tokio::sync::mpsc::UnboundedReceiver<AckOp<Acker>>,
) {
    while let Some(op) = ops.recv().await {
        let (acker, multiple, n) = match op {
            AckOp::Multiple(a, n) => (a, true, n),
            AckOp::One(a) => (a, false, 1),
        };
        match acker.ack(BasicAckOptions { multiple }).await {
            Ok(true) => {
                ctx.status.acked.fetch_add(n, Ordering::Relaxed);
                ctx.metrics.inbound.messages_n(KIND, &def.name, "acked", n);
            }
            Ok(false) => {
                // The channel is gone (its ackers poisoned): the broker redelivers them.
                let e = format!(
                    "AMQP channel {:?}: {n} ack(s) not sent, the channel is closed (the messages will be redelivered)",
                    def.name
                );
                warn!(channel = %def.name, error = %e, "AMQP ack failed");
                ctx.status.set_error(&e);
            }
            Err(e) => {
                let e = format!(
                    "AMQP channel {:?}: ack of {n} message(s) failed (they will be redelivered): {e}",
                    def.name
                );
                warn!(channel = %def.name, error = %e, "AMQP ack failed");
                ctx.status.set_error(&e);
            }
        }
    }
}

/// A delivery's handling, as its consumer records it.
struct Done {
    settled: Settled,
    tag: u64,
    outcome: Outcome,
}

/// What became of a delivery with the broker.
enum Outcome {
    /// The service returned: to be acked (batched).
    Succeeded(Acker),
    /// Rejected or given back: its frame is sent.
    Settled,
    /// Left unacked on purpose (a stop cut it short): the broker gets it back.
    Held,
}

/// How a delivery's handling went, for its consumer's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The service ran (or its worker died or timed out running it).
    Attempted,
    /// The pool could not take it: given back without counting; the consumer pauses.
    NotAttempted,
}

/// Why an invocation did not succeed.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The service raised, or the call cannot work (too large): the requeue/dead-letter
    /// decision applies.
    Service(String),
    /// The worker died or the call passed its deadline: a failure of the service's run,
    /// except while stopping (the stop killed it: the message goes back unacked).
    Lost(String),
    /// The service never ran: the pool was full, no worker was free before the deadline,
    /// there was no worker or pool, or the service is not deployed (yet). Not a failure of
    /// the message: requeued uncounted, and the consumer pauses.
    NotAttempted(String),
}

/// What a failed delivery becomes.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    /// Leave it unacked: the channel's close gives it back.
    Unacked,
    /// Requeued without counting a failure.
    GiveBack,
    /// The failure counts: requeued or dead-lettered per the decision.
    Failed(Rejection),
}

/// The settlement of a failed delivery (pure: tested).
fn settle(f: &Failure, stopping: bool, decision: Rejection) -> Settle {
    match f {
        // Never reject what the stop itself cut short or never ran.
        Failure::Lost(_) | Failure::NotAttempted(_) if stopping => Settle::Unacked,
        Failure::NotAttempted(_) => Settle::GiveBack,
        Failure::Lost(_) | Failure::Service(_) => Settle::Failed(decision),
    }
}

/// One delivery: the service, then ack (its consumer batches it), or reject (requeued or
/// not), or give it back.
async fn handle(
    ctx: Arc<Ctx>,
    def: Arc<AmqpChannel>,
    consumer_tag: String,
    delivery: Delivery,
    counted: Counted,
    stops: Stops,
) -> Done {
    let tag = delivery.delivery_tag;
    let done = |settled, outcome| Done {
        settled,
        tag,
        outcome,
    };
    let header_count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(as_i64);
    let key = message_key(&delivery);
    // Only a redelivered message reads its local count: a first delivery alike in its key
    // is a new message.
    let seen = if delivery.redelivered {
        counted.lock().expect("counted lock").get(key)
    } else {
        0
    };
    let redelivered = redeliveries(header_count, delivery.redelivered, seen);
    let meta = delivery_meta(&def.queue, &consumer_tag, &delivery, redelivered);
    let result = invoke(&ctx, &def, &meta, &delivery.data).await;
    let failure = match result {
        Ok(()) => {
            counted.lock().expect("counted lock").forget(key);
            return done(Settled::Attempted, Outcome::Succeeded(delivery.acker));
        }
        Err(f) => f,
    };
    let (Failure::Service(e) | Failure::Lost(e) | Failure::NotAttempted(e)) = &failure;
    ctx.status.set_error(e);
    let decision = rejection(def.on_error, def.max_redeliveries, redelivered);
    let requeue = match settle(&failure, stops.is_set(), decision) {
        Settle::Unacked => {
            info!(channel = %def.name, error = %e, "AMQP message left unacked while stopping (the broker gets it back)");
            return done(Settled::Attempted, Outcome::Held);
        }
        Settle::GiveBack => {
            warn!(channel = %def.name, service = %def.service, error = %e, "AMQP message not handed to the service; requeued, the consumer pauses");
            let sent = delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await;
            ctx.status.returned.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.inbound.message(KIND, &def.name, "returned");
            // A reject that did not go out leaves the delivery open: no ack may cover it.
            return done(Settled::NotAttempted, settled_by(&sent));
        }
        Settle::Failed(d) => d == Rejection::Requeue,
    };
    warn!(channel = %def.name, service = %def.service, redeliveries = redelivered, requeue, error = %e, "AMQP message failed");
    {
        let mut c = counted.lock().expect("counted lock");
        if requeue {
            c.bump(key);
        } else {
            c.forget(key);
        }
    }
    let sent = delivery.acker.reject(BasicRejectOptions { requeue }).await;
    match &sent {
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
    done(Settled::Attempted, settled_by(&sent))
}

/// A reject's result as the delivery's outcome: settled only when its frame went out.
fn settled_by(sent: &lapin::Result<bool>) -> Outcome {
    match sent {
        Ok(true) => Outcome::Settled,
        _ => Outcome::Held,
    }
}

/// Invokes the channel's service with one message: `Ok` only when it returned without an
/// exception.
async fn invoke(ctx: &Ctx, def: &AmqpChannel, meta: &Value, body: &[u8]) -> Result<(), Failure> {
    let Some(pool) = &ctx.pool else {
        return Err(Failure::NotAttempted(format!(
            "AMQP channel {:?}: this server has no worker pool to invoke services",
            def.name
        )));
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
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
        mqtt: None,
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(def.service_timeout_ms);
    let text = |what: String| {
        format!(
            "AMQP channel {:?}: service {} (cid {cid}): {what}",
            def.name, def.service
        )
    };
    match pool.invoke(&call, body, deadline).await {
        Ok(r) if r.exc.is_none() && r.error.is_none() => Ok(()),
        Ok(r) if r.error.as_deref() == Some("no_service") => Err(Failure::NotAttempted(text(
            "not deployed on this server (yet)".into(),
        ))),
        Ok(r) => Err(Failure::Service(text(format!(
            "failed: {}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        )))),
        Err(e) => Err(classify(&e, text(e.to_string()))),
    }
}

/// A dispatch error as a [`Failure`].
fn classify(e: &crate::lifecycle::pool::DispatchError, text: String) -> Failure {
    use crate::lifecycle::pool::DispatchError::*;
    match e {
        Busy | QueueTimeout => Failure::NotAttempted(text),
        WorkerDied | Deadline => Failure::Lost(text),
        TooLarge => Failure::Service(text),
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
    fn what_the_pool_could_not_take_or_the_stop_cut_short_is_never_rejected() {
        let f = |s: &str| s.to_owned();
        let dl = Rejection::DeadLetter;
        // Not attempted: given back uncounted (unacked while stopping).
        assert_eq!(
            settle(&Failure::NotAttempted(f("busy")), false, dl),
            Settle::GiveBack
        );
        assert_eq!(
            settle(&Failure::NotAttempted(f("busy")), true, dl),
            Settle::Unacked
        );
        // A worker that died: a failure, unless the stop killed it.
        assert_eq!(
            settle(&Failure::Lost(f("died")), false, dl),
            Settle::Failed(dl)
        );
        assert_eq!(settle(&Failure::Lost(f("died")), true, dl), Settle::Unacked);
        // The service raised: the decision, stopping or not.
        assert_eq!(
            settle(&Failure::Service(f("raised")), true, dl),
            Settle::Failed(dl)
        );
        use crate::lifecycle::pool::DispatchError::*;
        for e in [Busy, QueueTimeout] {
            assert!(matches!(classify(&e, f("x")), Failure::NotAttempted(_)));
        }
        for e in [WorkerDied, Deadline] {
            assert!(matches!(classify(&e, f("x")), Failure::Lost(_)));
        }
        assert!(matches!(classify(&TooLarge, f("x")), Failure::Service(_)));
    }

    #[test]
    fn counts_evict_the_least_recently_counted_not_all() {
        let mut c = Counts::default();
        c.bump(1);
        c.bump(1);
        for k in 2..(MAX_COUNTED as u64 + 1) {
            c.bump(k);
        }
        // Full: 1 was counted first but 2 is the least recent once 1 is counted again.
        c.bump(1);
        c.bump(u64::MAX);
        assert_eq!(c.by_key.len(), MAX_COUNTED);
        assert_eq!(c.get(1), 3);
        assert_eq!(c.get(2), 0);
        assert_eq!(c.get(3), 1);
        assert_eq!(c.get(u64::MAX), 1);
        c.forget(1);
        assert_eq!(c.get(1), 0);
        assert_eq!(c.by_key.len(), c.by_stamp.len());
    }

    #[test]
    fn a_consumer_tag_fits_a_short_string() {
        assert_eq!(
            consumer_tag("s1", "orders", 2, "ab12"),
            "oxbus.s1.orders.2.ab12"
        );
        let long = "x".repeat(200);
        let t = consumer_tag(&long, &long, 63, "ab12");
        assert!(t.len() <= MAX_TAG, "{}", t.len());
        assert!(t.ends_with(".63.ab12"), "{t}");
        assert_ne!(t, consumer_tag(&long, "other", 63, "ab12"));
    }

    #[test]
    fn only_a_session_that_worked_resets_the_backoff() {
        assert!(!healthy(Duration::from_millis(200), false));
        assert!(healthy(Duration::from_millis(200), true));
        assert!(healthy(HEALTHY_SESSION, false));
    }

    #[test]
    fn the_backoff_is_jittered_within_a_quarter() {
        for _ in 0..200 {
            let d = jittered(Duration::from_millis(1000));
            assert!((750..=1250).contains(&d.as_millis()), "{d:?}");
        }
    }
}
