//! MQTT channels (docs/CONNECTORS.md "MQTT"): topic filters into a service, with nothing
//! acknowledged that was not processed.
//!
//! Each active channel runs one task on every server: a client with a persistent session
//! (`clean_session = false`, client id `client_id` or `oxbus:<channel>:<server>`, so each
//! server has its own session and a QoS 1 message published while the server was away is
//! kept by the broker until it comes back), subscribed to the channel's filters with their
//! QoS. Each message invokes the service through the worker pool (`channel: "mqtt"`, the
//! payload raw as the body, `topic`, `qos`, `retain`, `dup`, `pkid` in the meta's `mqtt`:
//! ipc-protocol/SPEC.md), concurrently up to the broker's in-flight window.
//!
//! Acknowledgement (rumqttc's manual acks): a QoS 1 message is PUBACKed only after its
//! service returned without an exception. An MQTT 3.1.1 broker sends an unacknowledged
//! message again only when the session resumes on a new connection, never on the same one.
//! So after a failure the channel stops taking QoS 1 messages (those that arrive meanwhile
//! are left unacknowledged too), lets the calls in flight finish and acknowledge, disconnects
//! and reconnects after a backoff (1 s doubling to 30 s while failures go on): the broker
//! then delivers every unacknowledged message again, the failed one included (`dup` set).
//! A message that always fails comes back at the backoff's pace: MQTT has no dead letters.
//! A QoS 0 message is never sent again by the broker: it is processed whenever it arrives.
//! A message refused as bad input (`data_format: json` with a payload that is not JSON) is
//! acknowledged and counted `refused`: it could never succeed.
//!
//! Live edits: a changed definition's task stops (no new messages, those in flight finish
//! and are acknowledged, DISCONNECT) before the new one connects with the session; a
//! deleted channel (or one whose client id changed) also ends its broker session (a
//! clean-session connect), so the broker stops keeping messages for it; an inactive one
//! keeps its session (messages wait). At shutdown each task stops the same way and keeps
//! its session: what was not acknowledged comes again on the next start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::lifecycle::pool::Pool;
use crate::model::mqtt::MqttChannel;
use crate::outgoing::mqtt::{Target, connection_error_text, options};

/// The most a service may take for one message.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// The waits before a session is resumed after a failed message (so the broker sends the
/// unacknowledged messages again): doubling from the first to the last.
const FAILURE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a DISCONNECT may take to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);
/// The most QoS 0 messages of a channel whose calls run at once on this server; one more
/// arriving is dropped (counted `dropped`): the broker has no flow control for QoS 0, and
/// the pool's queue would otherwise fill for every other caller. QoS 1 is bounded by the
/// broker's in-flight window instead.
pub(crate) const QOS0_IN_FLIGHT: u64 = 32;
/// A connection that stayed up this long starts the reconnect backoff from the first wait
/// again; one that broke sooner (a message too large, another client taking the id) goes
/// on doubling it.
const STABLE: Duration = Duration::from_secs(10);
/// The largest message a channel takes (a larger one breaks the connection, reported as
/// such; the broker sends it again on every connection).
pub(crate) const MAX_INCOMING: usize = 256 * 1024 * 1024;
/// How often a channel logs that it drops QoS 0 messages.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// The longest the drain waits for the channels: the AMQP channels' bound (30 s for the
/// calls in flight, 5 s to close), so that a stop fits systemd's `TimeoutStopSec`; a call
/// still running then is left unacked (the broker sends it again on the next session).
const DRAIN_MAX: Duration = Duration::from_secs(35);

/// Why a channel's task stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// An edit that keeps the client id, shutdown, `is_active: false`: the broker keeps the
    /// session.
    KeepSession,
    /// A deleted channel or one whose client id changed: the session ends too.
    EndSession,
}

/// One channel's figures on this server (kept across edits, dropped with the channel).
#[derive(Debug, Default)]
pub struct Figures {
    /// Messages whose service returned (acknowledged).
    pub ok: AtomicU64,
    /// Messages whose service failed (not acknowledged: they come again).
    pub failed: AtomicU64,
    /// Messages refused as bad input (acknowledged).
    pub refused: AtomicU64,
    /// QoS 1 messages left unacknowledged without a call (after a failure, or while
    /// stopping): the broker sends them again.
    pub deferred: AtomicU64,
    /// QoS 0 messages not processed (past [`QOS0_IN_FLIGHT`], or while stopping): lost.
    pub dropped: AtomicU64,
    pub in_flight: AtomicU64,
    pub connected: AtomicBool,
    /// The broker acknowledged the subscriptions of this definition (SUBACK).
    pub subscribed: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

impl Figures {
    fn error(&self, e: String) {
        *self.last_error.lock().expect("error lock") = Some(e);
    }
}

/// A channel's state on this server, as the admin API and the metrics show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChannelStatus {
    pub name: String,
    pub client_id: String,
    pub running: bool,
    pub connected: bool,
    pub subscribed: bool,
    /// Processed and acknowledged (outcome `acked` of the metrics).
    pub acked: u64,
    pub failed: u64,
    pub refused: u64,
    pub deferred: u64,
    pub dropped: u64,
    pub in_flight: u64,
    pub last_error: Option<String>,
}

struct Running {
    def: MqttChannel,
    stop: watch::Sender<Stop>,
    /// Turns true (or closes) when the task has ended.
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct State {
    defs: Vec<MqttChannel>,
    running: HashMap<String, Running>,
    figures: HashMap<String, Arc<Figures>>,
    /// Tasks told to stop (edited, deleted, inactive) that may not have ended yet, by client
    /// id: a new task with that id waits for them (two clients with one id would take the
    /// session from each other, and an ending one's clean-session connect would wipe the new
    /// one's), and the drain waits for them too.
    stopping: Vec<(String, watch::Receiver<bool>)>,
    /// Set by `start`: tasks run from then on.
    shutdown: Option<watch::Receiver<bool>>,
}

/// This server's MQTT channels.
pub struct MqttChannels {
    server: String,
    key: Arc<crate::secrets::Key>,
    metrics: Arc<crate::metrics::Metrics>,
    pool: Arc<OnceLock<Arc<Pool>>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for MqttChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttChannels")
            .field("server", &self.server)
            .finish()
    }
}

impl MqttChannels {
    pub fn new(
        server: &str,
        key: Arc<crate::secrets::Key>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> MqttChannels {
        MqttChannels {
            server: server.to_owned(),
            key,
            metrics,
            pool: Arc::new(OnceLock::new()),
            state: Mutex::new(State::default()),
        }
    }

    pub fn set_pool(&self, pool: Arc<Pool>) {
        let _ = self.pool.set(pool);
    }

    /// Makes `defs` the channels: new ones start, changed ones restart (the old task ends
    /// first), deleted and inactive ones stop.
    pub fn apply(&self, defs: &[MqttChannel]) {
        let mut st = self.state.lock().expect("mqtt channels lock");
        st.defs = defs.to_vec();
        if st.shutdown.is_some() {
            self.reconcile(&mut st);
        }
    }

    /// Runs the channels until `shutdown` turns true.
    pub fn start(&self, shutdown: watch::Receiver<bool>) {
        let mut st = self.state.lock().expect("mqtt channels lock");
        st.shutdown = Some(shutdown);
        self.reconcile(&mut st);
    }

    /// Waits (at most [`DRAIN_MAX`]) for every task to end, those still stopping after an
    /// edit or a delete included: each stops by itself once `shutdown` turned true (no new
    /// messages, those in flight finish and are acknowledged, DISCONNECT).
    pub async fn drain(&self) {
        let dones: Vec<watch::Receiver<bool>> = {
            let st = self.state.lock().expect("mqtt channels lock");
            st.running
                .values()
                .map(|r| r.done.clone())
                .chain(st.stopping.iter().map(|(_, d)| d.clone()))
                .collect()
        };
        let all = async {
            for mut d in dones {
                let _ = d.wait_for(|d| *d).await;
            }
        };
        if tokio::time::timeout(DRAIN_MAX, all).await.is_err() {
            tracing::warn!(
                "MQTT channels: not every channel stopped within {} s; what it did not \
                 acknowledge comes again on the next start",
                DRAIN_MAX.as_secs()
            );
        }
    }

    /// Every channel's state on this server, sorted by name.
    pub fn status(&self) -> Vec<ChannelStatus> {
        let st = self.state.lock().expect("mqtt channels lock");
        let mut out: Vec<ChannelStatus> = st
            .defs
            .iter()
            .map(|d| {
                let f = st.figures.get(&d.name);
                let load =
                    |g: fn(&Figures) -> &AtomicU64| f.map_or(0, |f| g(f).load(Ordering::Relaxed));
                ChannelStatus {
                    name: d.name.clone(),
                    client_id: d.client_id_on(&self.server),
                    running: st.running.get(&d.name).is_some_and(|r| !*r.done.borrow()),
                    connected: f.is_some_and(|f| f.connected.load(Ordering::Relaxed)),
                    subscribed: f.is_some_and(|f| f.subscribed.load(Ordering::Relaxed)),
                    acked: load(|f| &f.ok),
                    failed: load(|f| &f.failed),
                    refused: load(|f| &f.refused),
                    deferred: load(|f| &f.deferred),
                    dropped: load(|f| &f.dropped),
                    in_flight: load(|f| &f.in_flight),
                    last_error: f.and_then(|f| f.last_error.lock().expect("error lock").clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn reconcile(&self, st: &mut State) {
        let Some(shutdown) = st.shutdown.clone() else {
            return;
        };
        let wanted: HashMap<String, MqttChannel> = st
            .defs
            .iter()
            .filter(|d| d.is_active)
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        // Stop what is gone or changed; remember its end for its successor.
        let mut previous: HashMap<String, (MqttChannel, watch::Receiver<bool>)> = HashMap::new();
        let names: Vec<String> = st.running.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(&name)
                .is_some_and(|d| *d == st.running[&name].def);
            if keep {
                continue;
            }
            let r = st.running.remove(&name).expect("a running channel");
            let deleted = !st.defs.iter().any(|d| d.name == name);
            // Another client id, broker or user: the old session would stay on its broker
            // for ever, so it ends (what it kept unprocessed is discarded: said in the log).
            let moved = wanted.get(&name).is_some_and(|d| {
                d.client_id_on(&self.server) != r.def.client_id_on(&self.server)
                    || d.address != r.def.address
                    || d.username != r.def.username
            });
            let how = if deleted || moved {
                Stop::EndSession
            } else {
                Stop::KeepSession
            };
            if moved {
                tracing::warn!(channel = %name,
                    "MQTT channel {name}: its client id, address or username changed: the old \
                     session ({} on {}) ends, and the QoS 1 messages its broker still kept for it \
                     (not processed) are discarded",
                    r.def.client_id_on(&self.server), r.def.address);
            }
            let _ = r.stop.send(how);
            st.stopping
                .push((r.def.client_id_on(&self.server), r.done.clone()));
            previous.insert(name, (r.def, r.done));
        }
        st.stopping.retain(|(_, d)| !*d.borrow());
        let metrics = &self.metrics;
        st.figures.retain(|name, _| {
            let keep = st.defs.iter().any(|d| &d.name == name);
            if !keep {
                metrics.inbound.removed("mqtt", name);
            }
            keep
        });
        for (name, def) in wanted {
            if st.running.contains_key(&name) {
                continue;
            }
            let figures = st.figures.entry(name.clone()).or_default().clone();
            let (stop_tx, stop_rx) = watch::channel(Stop::Run);
            let (done_tx, done_rx) = watch::channel(false);
            let prev = previous.remove(&name);
            // Filters of the previous definition no longer wanted (same session only).
            let unsubscribe = match &prev {
                Some((old, _))
                    if old.client_id_on(&self.server) == def.client_id_on(&self.server) =>
                {
                    old.topics
                        .iter()
                        .filter(|t| !def.topics.iter().any(|n| n.filter == t.filter))
                        .map(|t| t.filter.clone())
                        .collect()
                }
                _ => Vec::new(),
            };
            // Every task still stopping with this client id ends first.
            let client_id = def.client_id_on(&self.server);
            let waits: Vec<watch::Receiver<bool>> = st
                .stopping
                .iter()
                .filter(|(id, _)| *id == client_id)
                .map(|(_, d)| d.clone())
                .collect();
            let task = Channel {
                label: format!("MQTT channel {} ({})", def.name, def.address),
                client_id,
                metrics: self.metrics.clone(),
                opts: self.options(&def),
                def: def.clone(),
                pool: self.pool.clone(),
                figures,
            };
            drop(prev);
            tokio::spawn(task.run(waits, unsubscribe, stop_rx, shutdown.clone(), done_tx));
            st.running.insert(
                name,
                Running {
                    def,
                    stop: stop_tx,
                    done: done_rx,
                },
            );
        }
    }

    fn options(&self, def: &MqttChannel) -> Result<MqttOptions, String> {
        let target = Target {
            what: "MQTT channel",
            name: &def.name,
            address: &def.address,
            username: def.username.as_deref(),
            sealed: def.sealed.as_deref(),
            seal_name: MqttChannel::seal_name(&def.name),
            tls: &def.tls,
            keepalive_s: def.keepalive_s,
        };
        let mut o = options(&target, &self.key, def.client_id_on(&self.server), false)?;
        o.set_manual_acks(true)
            .set_max_packet_size(MAX_INCOMING, crate::outgoing::mqtt::MAX_PACKET);
        Ok(o)
    }
}

/// What a message's call came to.
enum Outcome {
    Ok,
    Failed(String),
    Refused(String),
}

/// One channel's task.
struct Channel {
    def: MqttChannel,
    label: String,
    client_id: String,
    metrics: Arc<crate::metrics::Metrics>,
    opts: Result<MqttOptions, String>,
    pool: Arc<OnceLock<Arc<Pool>>>,
    figures: Arc<Figures>,
}

/// Whether the task was asked to stop, and how.
/// A closed channel (its sender gone: the server is ending) counts as a stop that keeps the
/// session.
fn stopping(stop: &watch::Receiver<Stop>, shutdown: &watch::Receiver<bool>) -> Option<Stop> {
    let asked = *stop.borrow();
    match asked {
        Stop::Run
            if *shutdown.borrow()
                || stop.has_changed().is_err()
                || shutdown.has_changed().is_err() =>
        {
            Some(Stop::KeepSession)
        }
        Stop::Run => None,
        s => Some(s),
    }
}

impl Channel {
    /// Counts a message's `outcome` in the channel's figures and the metrics.
    fn count(&self, outcome: &'static str) {
        let f = &self.figures;
        match outcome {
            "acked" => &f.ok,
            "failed" => &f.failed,
            "refused" => &f.refused,
            "deferred" => &f.deferred,
            _ => &f.dropped,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .inbound
            .message("mqtt", &self.def.name, outcome);
    }

    fn set_connected(&self, up: bool) {
        self.figures.connected.store(up, Ordering::Relaxed);
        self.metrics.inbound.connected("mqtt", &self.def.name, up);
    }

    async fn run(
        self,
        waits: Vec<watch::Receiver<bool>>,
        unsubscribe: Vec<String>,
        mut stop: watch::Receiver<Stop>,
        mut shutdown: watch::Receiver<bool>,
        done: watch::Sender<bool>,
    ) {
        // Every earlier task with this client id lets go of the session first (its calls in
        // flight acknowledged, its session ended if it had to): two clients with one id
        // would take it from each other.
        for mut p in waits {
            let _ = p.wait_for(|d| *d).await;
        }
        let how = match &self.opts {
            Err(e) => {
                let e = format!("{}: {e}", self.label);
                tracing::error!(channel = %self.def.name, "{e}");
                self.figures.error(e);
                loop {
                    if let Some(s) = stopping(&stop, &shutdown) {
                        break s;
                    }
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            Ok(opts) => {
                self.sessions(opts.clone(), unsubscribe, &mut stop, &mut shutdown)
                    .await
            }
        };
        self.figures.subscribed.store(false, Ordering::Relaxed);
        if how == Stop::EndSession
            && let Ok(opts) = &self.opts
        {
            self.end_session(opts.clone()).await;
        }
        self.set_connected(false);
        let _ = done.send(true);
    }

    /// Sessions one after the other (a new one after a failed message) until told to stop;
    /// returns how.
    async fn sessions(
        &self,
        opts: MqttOptions,
        mut unsubscribe: Vec<String>,
        stop: &mut watch::Receiver<Stop>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Stop {
        // Until the broker acknowledged this definition's SUBSCRIBE, every CONNACK sends it.
        let mut need_subscribe = true;
        let mut failure_backoff = FAILURE_BACKOFF_FIRST;
        loop {
            let (end, failed, succeeded) = self
                .session(
                    opts.clone(),
                    &mut need_subscribe,
                    &mut unsubscribe,
                    stop,
                    shutdown,
                )
                .await;
            if let Some(how) = end {
                return how;
            }
            if failed {
                tracing::info!(
                    channel = %self.def.name,
                    "{}: a message failed: the session resumes in {} ms so that the broker \
                     sends the unacknowledged messages again",
                    self.label,
                    failure_backoff.as_millis()
                );
                let wait = tokio::time::sleep(failure_backoff);
                tokio::pin!(wait);
                loop {
                    if let Some(how) = stopping(stop, shutdown) {
                        return how;
                    }
                    tokio::select! {
                        _ = &mut wait => break,
                        _ = stop.changed() => {}
                        _ = shutdown.changed() => {}
                    }
                }
                // A session where a message succeeded starts the pace again; one where
                // only the failing message came back slows it down.
                failure_backoff = if succeeded {
                    FAILURE_BACKOFF_FIRST
                } else {
                    (failure_backoff * 2).min(FAILURE_BACKOFF_MAX)
                };
            }
        }
    }

    /// One session: connects (again after a broken connection, with backoff), subscribes,
    /// hands each message to the service. Ends when told to stop (`Some(how)`) or after a
    /// failed message once the calls in flight are done (`(None, true, _)`); the last item
    /// says whether a message succeeded in it.
    ///
    /// This task alone polls the event loop, so it never waits on the client's request
    /// queue: PUBACKs go in with `try_ack`, those that do not fit wait in `acks` and go in
    /// as the event loop takes requests. The broker's session is counted: a CONNACK
    /// without the session (the broker lost it) starts a new `generation`, and a call of
    /// an earlier one is not acknowledged (its packet id means another message now).
    async fn session(
        &self,
        opts: MqttOptions,
        need_subscribe: &mut bool,
        unsubscribe: &mut Vec<String>,
        stop: &mut watch::Receiver<Stop>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> (Option<Stop>, bool, bool) {
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let mut calls: JoinSet<(u64, Publish, Outcome)> = JoinSet::new();
        // A message failed in this session: QoS 1 messages are no longer taken.
        let mut failed = false;
        let mut succeeded = false;
        // The wait before the event loop reconnects after a broken connection.
        let mut reconnect_backoff = crate::outgoing::mqtt::BACKOFF_FIRST;
        let mut connected_at: Option<Instant> = None;
        let mut ending: Option<Stop> = None;
        let mut generation: u64 = 0;
        // Packet ids of the QoS 1 messages whose call runs (of `generation`): the broker's
        // resend of one (`dup`, after a reconnect) is not started again; the running call's
        // PUBACK answers both.
        let mut running: HashSet<u16> = HashSet::new();
        let mut qos0_running: u64 = 0;
        let mut acks: VecDeque<Publish> = VecDeque::new();
        let mut last_drop_log: Option<Instant> = None;
        let mut drops_unlogged: u64 = 0;
        loop {
            while let Some(p) = acks.front() {
                if client.try_ack(p).is_err() {
                    break;
                }
                acks.pop_front();
            }
            if ending.is_none() {
                ending = stopping(stop, shutdown);
            }
            if ending.is_some() && !self.figures.connected.load(Ordering::Relaxed) {
                // Stopping with no connection: these PUBACKs cannot go out; the broker
                // sends their messages again on the next start.
                acks.clear();
            }
            if (ending.is_some() || failed) && calls.is_empty() && acks.is_empty() {
                self.disconnect(&client, &mut eventloop).await;
                return (ending, failed, succeeded);
            }
            tokio::select! {
                _ = stop.changed(), if ending.is_none() => {}
                _ = shutdown.changed(), if ending.is_none() => {}
                Some(joined) = calls.join_next(), if !calls.is_empty() => {
                    self.figures.in_flight.fetch_sub(1, Ordering::Relaxed);
                    match joined {
                        Ok((generation_of, publish, outcome)) => {
                            if publish.qos == QoS::AtMostOnce {
                                qos0_running -= 1;
                            } else if generation_of == generation {
                                running.remove(&publish.pkid);
                            }
                            let (ack, fail) = self.settle(&publish, outcome);
                            if fail {
                                failed = true;
                            } else {
                                succeeded = true;
                            }
                            if ack && publish.qos != QoS::AtMostOnce {
                                if generation_of == generation {
                                    acks.push_back(publish);
                                } else {
                                    tracing::warn!(channel = %self.def.name, topic = %publish.topic,
                                        "{}: the broker lost the session while a message on {:?} \
                                         was processed: it is not acknowledged (its packet id is \
                                         another message's now)", self.label, publish.topic);
                                }
                            }
                        }
                        Err(e) => {
                            // A panicked call: its packet id is not known here.
                            failed = true;
                            self.count("failed");
                            self.figures.error(format!("{}: a call's task failed: {e}", self.label));
                        }
                    }
                }
                polled = eventloop.poll() => match polled {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        self.set_connected(true);
                        connected_at = Some(Instant::now());
                        tracing::info!(channel = %self.def.name, client_id = %self.client_id,
                            session_present = ack.session_present, "{}: connected", self.label);
                        if !ack.session_present {
                            // A new session: the packet ids of the old one mean nothing now.
                            generation += 1;
                            running.clear();
                            acks.clear();
                            *need_subscribe = true;
                        }
                        // Until this definition's SUBACK came (the filters may have changed
                        // while the session waited; a connection may break before the
                        // SUBACK), each connection subscribes.
                        if *need_subscribe {
                            self.figures.subscribed.store(false, Ordering::Relaxed);
                            let filters = self.def.topics.iter().map(|t| {
                                rumqttc::SubscribeFilter::new(
                                    t.filter.clone(),
                                    if t.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
                                )
                            });
                            if let Err(e) = client.try_subscribe_many(filters) {
                                self.figures.error(format!("{}: subscribe: {e}", self.label));
                            }
                            for f in unsubscribe.iter() {
                                let _ = client.try_unsubscribe(f.clone());
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                        *need_subscribe = false;
                        unsubscribe.clear();
                        if ack.return_codes.iter().all(|c| *c != SubscribeReasonCode::Failure) {
                            self.figures.subscribed.store(true, Ordering::Relaxed);
                        }
                        for (code, t) in ack.return_codes.iter().zip(&self.def.topics) {
                            if *code == SubscribeReasonCode::Failure {
                                let e = format!("{}: the broker refused the subscription to {:?}",
                                                self.label, t.filter);
                                tracing::error!(channel = %self.def.name, "{e}");
                                self.figures.error(e);
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        // The stop may have come while this poll was under way: a call
                        // started now could find the workers retiring.
                        if ending.is_none() {
                            ending = stopping(stop, shutdown);
                        }
                        let qos0 = p.qos == QoS::AtMostOnce;
                        if qos0 && (ending.is_some() || qos0_running >= QOS0_IN_FLIGHT) {
                            // Nothing sends a QoS 0 message again.
                            self.count("dropped");
                            drops_unlogged += 1;
                            if last_drop_log.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
                                last_drop_log = Some(Instant::now());
                                tracing::warn!(channel = %self.def.name,
                                    "{}: {drops_unlogged} QoS 0 message(s) dropped ({})",
                                    self.label,
                                    if ending.is_some() { "the channel is stopping" } else {
                                        "its calls in flight are at the limit" });
                                drops_unlogged = 0;
                            }
                            continue;
                        }
                        if !qos0 && running.contains(&p.pkid) {
                            // The broker's resend of a message whose call still runs.
                            tracing::debug!(channel = %self.def.name, pkid = p.pkid,
                                "{}: a resend of a message in process: not started again", self.label);
                            continue;
                        }
                        if !qos0 && (ending.is_some() || failed) {
                            // Not processed, not acknowledged: the broker sends it again
                            // when the session resumes.
                            self.count("deferred");
                            continue;
                        }
                        if qos0 {
                            qos0_running += 1;
                        } else {
                            running.insert(p.pkid);
                        }
                        self.figures.in_flight.fetch_add(1, Ordering::Relaxed);
                        let call = Call {
                            pool: self.pool.clone(),
                            service: self.def.service.clone(),
                            channel: self.def.name.clone(),
                            data_format: self.def.data_format.as_str(),
                        };
                        let generation_of = generation;
                        calls.spawn(async move {
                            let outcome = call.invoke(&p).await;
                            (generation_of, p, outcome)
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let text = format!("{}: {}", self.label, connection_error_text(&e));
                        if self.figures.connected.load(Ordering::Relaxed) {
                            self.set_connected(false);
                            tracing::warn!(channel = %self.def.name, "{text}; reconnecting");
                        } else {
                            tracing::debug!(channel = %self.def.name, "{text}");
                        }
                        self.figures.error(text);
                        // Only a connection that stayed up starts the backoff again.
                        if connected_at.take().is_some_and(|t| t.elapsed() >= STABLE) {
                            reconnect_backoff = crate::outgoing::mqtt::BACKOFF_FIRST;
                        }
                        // The same event loop reconnects on the next poll and resumes the
                        // session (calls in flight acknowledge on it; the broker sends
                        // what it has not had acknowledged again).
                        let wait = tokio::time::sleep(reconnect_backoff);
                        tokio::pin!(wait);
                        tokio::select! {
                            _ = &mut wait => {}
                            _ = stop.changed(), if ending.is_none() => {}
                            _ = shutdown.changed(), if ending.is_none() => {}
                        }
                        reconnect_backoff = crate::outgoing::mqtt::next_backoff(reconnect_backoff);
                    }
                }
            }
        }
    }

    /// Counts a message whose call ended; returns whether to acknowledge it and whether
    /// it failed (a QoS 1 failure: the session resumes for its resend).
    fn settle(&self, publish: &Publish, outcome: Outcome) -> (bool, bool) {
        match outcome {
            Outcome::Ok => {
                self.count("acked");
                (true, false)
            }
            Outcome::Refused(why) => {
                self.count("refused");
                tracing::warn!(channel = %self.def.name, topic = %publish.topic,
                    "{}: a message on {:?} was refused as bad input and is acknowledged: {why}",
                    self.label, publish.topic);
                (true, false)
            }
            Outcome::Failed(why) => {
                self.count("failed");
                let e = format!(
                    "{}: a message on {:?} failed{}: {why}",
                    self.label,
                    publish.topic,
                    if publish.qos == QoS::AtMostOnce {
                        " (QoS 0: it is not sent again)"
                    } else {
                        " (not acknowledged: it comes again)"
                    }
                );
                tracing::warn!(channel = %self.def.name, topic = %publish.topic, "{e}");
                self.figures.error(e);
                (false, publish.qos != QoS::AtMostOnce)
            }
        }
    }

    /// Sends DISCONNECT after everything queued (the acknowledgements), and waits for it to
    /// be written (bounded).
    async fn disconnect(&self, client: &AsyncClient, eventloop: &mut EventLoop) {
        self.set_connected(false);
        if client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Ends the broker's session of this client id: a clean-session connect, then DISCONNECT.
    async fn end_session(&self, mut opts: MqttOptions) {
        opts.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 4);
        let connected = tokio::time::timeout(DISCONNECT_WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if connected {
            self.disconnect(&client, &mut eventloop).await;
            tracing::info!(channel = %self.def.name, client_id = %self.client_id,
                "{}: the broker's session ended", self.label);
        } else {
            tracing::warn!(channel = %self.def.name, client_id = %self.client_id,
                "{}: the broker's session could not be ended (it keeps it until it expires)",
                self.label);
        }
    }
}

/// What a message's call needs.
struct Call {
    pool: Arc<OnceLock<Arc<Pool>>>,
    service: String,
    channel: String,
    data_format: &'static str,
}

impl Call {
    async fn invoke(&self, p: &Publish) -> Outcome {
        let Some(pool) = self.pool.get() else {
            return Outcome::Failed("this server has no worker pool to invoke services".into());
        };
        let meta_json = serde_json::json!({
            "topic": p.topic,
            "qos": p.qos as u8,
            "retain": p.retain,
            "dup": p.dup,
            "pkid": p.pkid,
        });
        let cid = crate::random::random_hex(12);
        let meta: oxbus_ipc::InvokeMeta<'_> = oxbus_ipc::InvokeMeta {
            op: "invoke",
            service: &self.service,
            cid: &cid,
            channel: Some("mqtt"),
            data_format: Some(self.data_format),
            method: None,
            path: None,
            params: None,
            query: None,
            headers: None,
            deadline_ms: Some(INVOKE_TIMEOUT.as_millis() as u64),
            remote_addr: None,
            scheme: None,
            port: None,
            channel_name: Some(&self.channel),
            security: None,
            traceparent: None,
            tracestate: None,
            pubsub: None,
            mqtt: Some(&meta_json),
            amqp: None,
            wsx: None,
            file: None,
            params_priority: None,
            job_type: None,
        };
        let deadline = std::time::Instant::now() + INVOKE_TIMEOUT;
        match pool.invoke(&meta, &p.payload, deadline).await {
            Ok(r) if r.status < 400 => Outcome::Ok,
            Ok(r) if r.error.as_deref() == Some(oxbus_ipc::REPLY_ERROR_INPUT) => {
                Outcome::Refused(excerpt(&r.body))
            }
            Ok(r) => Outcome::Failed(format!(
                "service {} answered {}: {}",
                self.service,
                r.status,
                excerpt(&r.body)
            )),
            Err(e) => Outcome::Failed(format!("service {}: {e}", self.service)),
        }
    }
}

fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if body.len() > 300 {
        format!("{s}…")
    } else {
        s
    }
}
