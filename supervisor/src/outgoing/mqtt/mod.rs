//! Outgoing MQTT connections (docs/CONNECTORS.md): `self.out.mqtt[name].publish(topic,
//! payload, qos=1, retain=False)` through the worker op `out.mqtt` (ipc-protocol/SPEC.md).
//!
//! One rumqttc client per connection and server, connected on the first publish (or ping),
//! with a clean session and a client id of its own (`oxbus-out-<name>-<random>`), so two
//! servers' clients never take each other's session. A publish returns once the broker's
//! PUBACK came (QoS 1) or once it was handed to the socket (QoS 0); `timeout_ms` bounds it
//! (`timeout`, or `connect` when no connection was made meanwhile).
//!
//! rumqttc has no per-publish completion: its event loop reports `Outgoing::Publish(pkid)`
//! as it writes each request (in the order they were queued) and `Incoming::PubAck(pkid)`
//! as the broker acknowledges. So a publish queues its waiter and its request under one lock
//! (the loop cannot see the request before its waiter is there); the loop gives each
//! `Outgoing::Publish` to the oldest waiter, and a QoS 1 waiter then waits under its pkid
//! for the PUBACK. A pkid already waiting is a retransmission (not a new request).
//!
//! When the connection breaks (or cannot be made), the session is discarded whole: with a
//! clean session rumqttc would drop every unacknowledged and queued publish on reconnecting
//! anyway, and an event of the old connection could reach a waiter of the new one. Every
//! waiter fails at once (`io` once connected: the broker may or may not have the message,
//! QoS 1 is at least once; `connect` when no connection was made: it was not sent), and the
//! next publish starts a new session, not before a backoff (200 ms doubling to 10 s, reset by
//! a CONNACK) after the failure.
//!
//! [`options`] also builds the channels' connection options (`inbound::mqtt`): address,
//! credentials opened from their seal, TLS.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, Transport};
use tokio::sync::oneshot;

use crate::lifecycle::ops::OpReply;
use crate::metrics::histogram::DurationHistogram;
use crate::model::mqtt::{MqttConn, check_qos, check_topic, parse_address};
use crate::model::outgoing::TlsOptions;
use crate::outgoing::{ConnStats, PingOutcome};
use crate::secrets::Key;

/// The largest packet a client sends or takes (rumqttc's default is 10 KiB).
pub(crate) const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Publishes queued to a client's event loop before `pool_full`.
const QUEUE: usize = 1024;
/// The most QoS 1 publishes awaiting their PUBACK per connection (rumqttc's inflight).
const INFLIGHT: u16 = 100;
/// The waits between connection attempts: doubling from the first to the last.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(200);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that stayed up this long starts the backoff from the first wait again.
const STABLE: Duration = Duration::from_secs(10);

/// Where and as whom a client connects (a connection's or a channel's fields).
pub(crate) struct Target<'a> {
    /// "MQTT connection" or "MQTT channel" (messages, the TLS warning).
    pub what: &'static str,
    pub name: &'a str,
    pub address: &'a str,
    pub username: Option<&'a str>,
    pub sealed: Option<&'a str>,
    pub seal_name: String,
    pub tls: &'a TlsOptions,
    pub keepalive_s: u16,
}

/// The rumqttc options of `target` with `client_id`: the password opened with `key`, TLS
/// for `mqtts://` with the connection's own rustls configuration.
pub(crate) fn options(
    target: &Target<'_>,
    key: &Key,
    client_id: String,
    clean_session: bool,
) -> Result<MqttOptions, String> {
    let addr = parse_address(target.address)?;
    let mut o = MqttOptions::new(client_id, addr.host, addr.port);
    o.set_keep_alive(Duration::from_secs(target.keepalive_s.into()))
        .set_clean_session(clean_session)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(QUEUE)
        .set_inflight(INFLIGHT);
    if let Some(user) = target.username {
        let password = match target.sealed {
            Some(s) => key
                .open(&target.seal_name, s)
                .map_err(|e| format!("its password does not open: {e}"))?
                .expose()
                .to_owned(),
            None => String::new(),
        };
        o.set_credentials(user, password);
    }
    if addr.tls {
        let config = crate::outgoing::rest::tls::client_config_for(
            target.what,
            target.name,
            target.tls,
            &[b"mqtt"],
        )
        .map_err(|e| format!("TLS: {e}"))?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config),
        ));
    }
    Ok(o)
}

/// What a broker's refusal or a broken connection says, for messages.
pub(crate) fn connection_error_text(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::ConnectionError as C;
    match e {
        C::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        C::NetworkTimeout => "no connection within the connect timeout".into(),
        C::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => format!(
            "the broker sent a packet of {n} bytes, above this client's limit: the connection \
             is closed (a channel's broker sends that message again on every connection: \
             remove it from the broker, or make it smaller)"
        ),
        other => other.to_string(),
    }
}

/// The waits between attempts: doubling, capped.
pub(crate) fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_MAX)
}

/// A publish waiting for its write (and then its PUBACK).
struct Waiter {
    qos: QoS,
    done: oneshot::Sender<Result<(), Failure>>,
}

#[derive(Debug)]
struct Failure {
    status: u16,
    code: &'static str,
    message: String,
}

#[derive(Default)]
struct Waiters {
    /// Queued to the event loop, oldest first, not yet written.
    queued: VecDeque<Waiter>,
    /// Written QoS 1 publishes by pkid, awaiting their PUBACK.
    unacked: HashMap<u16, oneshot::Sender<Result<(), Failure>>>,
    /// The session's connection broke or could not be made: it takes no more publishes.
    dead: bool,
}

/// What a session and its event-loop task share.
#[derive(Default)]
struct Shared {
    waiters: Mutex<Waiters>,
    connected: AtomicBool,
    /// Set when the session is dropped: the task ends.
    closing: AtomicBool,
}

/// When the next session may connect, and why the last one failed (kept across sessions).
#[derive(Debug)]
struct Retry {
    not_before: Option<tokio::time::Instant>,
    backoff: Duration,
    last_error: Option<String>,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            not_before: None,
            backoff: BACKOFF_FIRST,
            last_error: None,
        }
    }
}

/// A connected (or connecting) client: its event loop runs in a task until the session is
/// dropped (an edit, a delete, the server's end), which disconnects it.
struct Session {
    client: AsyncClient,
    shared: Arc<Shared>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

#[derive(Debug, Default)]
struct Figures {
    calls: AtomicU64,
    errors: AtomicU64,
    latency: DurationHistogram,
}

/// One outgoing MQTT connection on this server.
pub struct MqttClient {
    def: MqttConn,
    label: String,
    /// The options, or why they cannot be built (a password that does not open, a TLS file).
    built: Result<MqttOptions, String>,
    session: Mutex<Option<Arc<Session>>>,
    retry: Arc<Mutex<Retry>>,
    figures: Figures,
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient")
            .field("name", &self.def.name)
            .finish()
    }
}

/// The meta of `out.mqtt`.
#[derive(serde::Deserialize)]
struct PublishMeta {
    topic: String,
    #[serde(default = "one")]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

fn one() -> u8 {
    1
}

impl MqttClient {
    pub fn new(def: MqttConn, key: &Key) -> MqttClient {
        let label = format!("MQTT connection {} ({})", def.name, def.address);
        let client_id = format!("oxbus-out-{}-{}", def.name, crate::random::random_hex(8));
        let target = Target {
            what: "MQTT connection",
            name: &def.name,
            address: &def.address,
            username: def.username.as_deref(),
            sealed: def.sealed.as_deref(),
            seal_name: MqttConn::seal_name(&def.name),
            tls: &def.tls,
            keepalive_s: def.keepalive_s,
        };
        let built = options(&target, key, client_id, true).map_err(|e| format!("{label}: {e}"));
        MqttClient {
            def,
            label,
            built,
            session: Mutex::new(None),
            retry: Arc::new(Mutex::new(Retry::default())),
            figures: Figures::default(),
        }
    }

    pub fn def(&self) -> &MqttConn {
        &self.def
    }

    /// The session, started on first use and again after one failed.
    fn session(&self, opts: &MqttOptions) -> Arc<Session> {
        let mut slot = self.session.lock().expect("session lock");
        if let Some(s) = &*slot
            && !s.shared.waiters.lock().expect("waiters lock").dead
        {
            return s.clone();
        }
        let (client, eventloop) = AsyncClient::new(opts.clone(), QUEUE);
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(
            eventloop,
            shared.clone(),
            self.retry.clone(),
            self.label.clone(),
        ));
        let s = Arc::new(Session { client, shared });
        *slot = Some(s.clone());
        s
    }

    /// One `out.mqtt` call: `raw_meta` as SPEC.md gives it, `body` the payload.
    pub async fn call(&self, raw_meta: &[u8], body: Bytes) -> OpReply {
        let start = Instant::now();
        let result = self.publish(raw_meta, body).await;
        self.figures.latency.observe(start.elapsed());
        match result {
            Ok(()) => {
                self.figures.calls.fetch_add(1, Ordering::Relaxed);
                OpReply::json(200, &serde_json::json!({}))
            }
            Err(f) => {
                self.figures.errors.fetch_add(1, Ordering::Relaxed);
                OpReply::error(f.status, f.code, &f.message)
            }
        }
    }

    async fn publish(&self, raw_meta: &[u8], body: Bytes) -> Result<(), Failure> {
        let invalid = |m: String| Failure {
            status: 400,
            code: "invalid",
            message: format!("{}: {m}", self.label),
        };
        let meta: PublishMeta =
            serde_json::from_slice(raw_meta).map_err(|e| invalid(format!("bad meta: {e}")))?;
        check_topic(&meta.topic).map_err(|m| invalid(format!("topic: {m}")))?;
        check_qos(meta.qos).map_err(|m| invalid(format!("qos: {m}")))?;
        // The fixed header, the topic's length and itself, the pkid.
        if body.len() + meta.topic.len() + 9 > MAX_PACKET {
            return Err(Failure {
                status: 413,
                code: "too_large",
                message: format!(
                    "{}: a payload of {} bytes is over the {MAX_PACKET}-byte packet limit",
                    self.label,
                    body.len()
                ),
            });
        }
        let opts = self.built.as_ref().map_err(|m| Failure {
            status: 502,
            code: "connect",
            message: m.clone(),
        })?;
        let qos = if meta.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let wait = Duration::from_millis(
            meta.deadline_ms
                .map_or(self.def.timeout_ms, |d| d.min(self.def.timeout_ms)),
        );
        let (tx, rx) = oneshot::channel();
        let session = loop {
            let session = self.session(opts);
            // The waiter and its request under one lock: the event loop, which takes this
            // lock for each `Outgoing::Publish`, cannot see the request first.
            let mut w = session.shared.waiters.lock().expect("waiters lock");
            if w.dead {
                continue; // It failed meanwhile: `session` starts a new one.
            }
            session
                .client
                .try_publish(meta.topic.as_str(), qos, meta.retain, body.to_vec())
                .map_err(|e| Failure {
                    status: 503,
                    code: "pool_full",
                    message: format!(
                        "{}: {QUEUE} publishes already wait for the broker ({e})",
                        self.label
                    ),
                })?;
            w.queued.push_back(Waiter { qos, done: tx });
            drop(w);
            break session;
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Failure {
                status: 502,
                code: "io",
                message: format!(
                    "{}: the client stopped before the publish was done",
                    self.label
                ),
            }),
            Err(_) => {
                let connected = session.shared.connected.load(Ordering::SeqCst);
                let last = self.retry.lock().expect("retry lock").last_error.clone();
                match (connected, last) {
                    (false, Some(e)) => Err(Failure {
                        status: 502,
                        code: "connect",
                        message: format!(
                            "{}: not connected within {} ms (the last attempt: {e}); it \
                             may still go out once connected",
                            self.label,
                            wait.as_millis()
                        ),
                    }),
                    _ => Err(Failure {
                        status: 504,
                        code: "timeout",
                        message: format!(
                            "{}: {} within {} ms (it may still reach the broker)",
                            self.label,
                            if qos == QoS::AtLeastOnce {
                                "no PUBACK"
                            } else {
                                "not written"
                            },
                            wait.as_millis()
                        ),
                    }),
                }
            }
        }
    }

    /// Connects afresh (its own client id, clean session) and waits for the broker's
    /// CONNACK: the address, TLS and credentials all work.
    pub async fn ping(&self) -> PingOutcome {
        let start = Instant::now();
        let took = || start.elapsed().as_secs_f64() * 1000.0;
        let opts = match &self.built {
            Ok(o) => o,
            Err(m) => {
                return PingOutcome {
                    ok: false,
                    took_ms: 0.0,
                    detail: m.clone(),
                };
            }
        };
        let mut o = opts.clone();
        o.set_client_id(format!(
            "oxbus-ping-{}-{}",
            self.def.name,
            crate::random::random_hex(8)
        ));
        let wait = Duration::from_millis(self.def.timeout_ms);
        let (detail, ok) = match ping(o, wait).await {
            Ok(()) => ("CONNACK accepted".to_owned(), true),
            Err(e) => (e, false),
        };
        PingOutcome {
            ok,
            took_ms: took(),
            detail: format!("{}: {detail}", self.label),
        }
    }

    pub fn stats(&self) -> ConnStats {
        let (buckets, sum) = self.figures.latency.snapshot();
        let session = self.session.lock().expect("session lock").clone();
        let (in_use, waiting) = match &session {
            Some(s) => {
                let w = s.shared.waiters.lock().expect("waiters lock");
                (w.unacked.len() as u32, w.queued.len() as u32)
            }
            None => (0, 0),
        };
        let connected = session.is_some_and(|s| s.shared.connected.load(Ordering::SeqCst));
        ConnStats {
            name: self.def.name.clone(),
            calls: self.figures.calls.load(Ordering::Relaxed),
            errors: self.figures.errors.load(Ordering::Relaxed),
            latency_count: buckets.iter().sum(),
            latency_sum_s: sum,
            latency_buckets: buckets,
            // One client; `idle` is 1 while it is connected.
            pool_size: 1,
            in_use,
            idle: u32::from(connected),
            waiting,
        }
    }
}

/// A fresh connection up to its CONNACK, then a disconnect.
async fn ping(opts: MqttOptions, wait: Duration) -> Result<(), String> {
    let (client, mut eventloop) = AsyncClient::new(opts, 1);
    let r = tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(connection_error_text(&e)),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no CONNACK within {} ms", wait.as_millis())));
    if r.is_ok() {
        let _ = client.try_disconnect();
        // Lets the DISCONNECT go out; a broker that is slow to take it costs nothing.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    r
}

/// The event loop of a session: connects (not before the backoff of the last failure),
/// hands each write and PUBACK to its waiter, until the session is dropped or its
/// connection fails (then every waiter fails and the session is discarded).
async fn run(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    retry: Arc<Mutex<Retry>>,
    label: String,
) {
    let not_before = retry.lock().expect("retry lock").not_before;
    if let Some(t) = not_before {
        tokio::time::sleep_until(t).await;
    }
    let mut connected_at: Option<Instant> = None;
    loop {
        let polled = eventloop.poll().await;
        if shared.closing.load(Ordering::SeqCst)
            && matches!(polled, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)))
        {
            return;
        }
        match polled {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                shared.connected.store(true, Ordering::SeqCst);
                connected_at = Some(Instant::now());
                // The backoff is kept: only a connection that stays up starts it again
                // (a client-id fight or a broker closing each session at once would
                // otherwise reconnect as fast as it can).
                let mut r = retry.lock().expect("retry lock");
                r.not_before = None;
                r.last_error = None;
                tracing::info!(connection = %label, "{label}: connected");
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut w = shared.waiters.lock().expect("waiters lock");
                if pkid != 0 && w.unacked.contains_key(&pkid) {
                    continue; // A retransmission of a publish already written.
                }
                if let Some(waiter) = w.queued.pop_front() {
                    match waiter.qos {
                        QoS::AtMostOnce => {
                            let _ = waiter.done.send(Ok(()));
                        }
                        _ => {
                            w.unacked.insert(pkid, waiter.done);
                        }
                    }
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                let mut w = shared.waiters.lock().expect("waiters lock");
                if let Some(done) = w.unacked.remove(&ack.pkid) {
                    let _ = done.send(Ok(()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                let text = connection_error_text(&e);
                let was = shared.connected.swap(false, Ordering::SeqCst);
                let failure = |what: &str| {
                    if was {
                        Failure {
                            status: 502,
                            code: "io",
                            message: format!(
                                "{label}: the connection broke before {what} ({text}); the \
                                 broker may or may not have the message"
                            ),
                        }
                    } else {
                        Failure {
                            status: 502,
                            code: "connect",
                            message: format!("{label}: cannot connect: {text}"),
                        }
                    }
                };
                let (queued, unacked) = {
                    let mut w = shared.waiters.lock().expect("waiters lock");
                    w.dead = true;
                    (
                        std::mem::take(&mut w.queued),
                        std::mem::take(&mut w.unacked),
                    )
                };
                for waiter in queued {
                    let _ = waiter.done.send(Err(failure("the publish was confirmed")));
                }
                for (_, done) in unacked {
                    let _ = done.send(Err(failure("the PUBACK")));
                }
                if was {
                    tracing::warn!(connection = %label, error = %text, "{label}: connection lost: {text}");
                } else {
                    tracing::warn!(connection = %label, error = %text, "{label}: cannot connect: {text}");
                }
                let mut r = retry.lock().expect("retry lock");
                if connected_at.is_some_and(|t| t.elapsed() >= STABLE) {
                    r.backoff = BACKOFF_FIRST;
                }
                r.not_before = Some(tokio::time::Instant::now() + r.backoff);
                r.backoff = next_backoff(r.backoff);
                r.last_error = Some(text);
                return;
            }
        }
    }
}
