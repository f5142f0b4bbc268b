//! WebSocket clients (docs/WEBSOCKET.md): the sessions of this server's `websocket`
//! channels, their registry, and the pushes services make to them.
//!
//! The edge checks an upgrade request (route, allow list, rate limit, credentials) and
//! answers `101`; from then on the connection is this module's: [`Wsx::accept`] registers
//! the client under an id (`ws.<server>.<hex>`) and runs its session ([`session`]): every
//! message the client sends is a call of the channel's service through the pool, whose
//! answer goes back to that client; pings, the message size limit, the idle timeout and the
//! bound on what is queued to a slow client are enforced there. The socket is the server's,
//! so a client stays connected while workers are replaced (deploys, crashes, rolling
//! restarts): only a call in flight on a worker that died fails, and the client is told.
//!
//! Services push through the `wsx.send` and `wsx.broadcast` ops ([`ops`]): a send goes to
//! one client, on whichever server its id names (through [`Peers`], the cluster bus); a
//! broadcast to every client of a channel on every server.
//!
//! Knows `model`, `lifecycle` (the pool) and `metrics` (`metrics/websocket.rs`); never `edge`, `store`, `admin` or
//! `cluster`.

pub mod auth;
pub mod ops;
pub mod session;
pub mod zato;

use bytes::Bytes;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::lifecycle::pool::Pool;
use crate::model::channel::Channel;

/// The other servers of the cluster, as the WebSocket registry reaches them (the cluster
/// bus implements it; `wsx` never names `cluster`).
#[async_trait::async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Sends a broadcast (`meta`: `{"op":"wsx.broadcast","channel":…,"binary":…}`, the body
    /// the data) to every linked peer; fire and forget.
    fn broadcast(&self, meta: &serde_json::Value, body: Bytes);

    /// Calls `op` on server `peer` with a JSON meta and a body; its (status, body).
    async fn call(
        &self,
        peer: &str,
        meta: serde_json::Value,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String>;
}

/// Who the channel's security definition let in at the upgrade (names only, never a
/// credential): handed to every call of the session.
#[derive(Debug, Clone)]
pub struct Who {
    pub name: Arc<str>,
    pub kind: &'static str,
    pub username: Option<String>,
    pub subject: Option<String>,
}

/// What the edge hands over with an upgraded connection.
#[derive(Debug, Clone)]
pub struct Open {
    /// The channel as routed (its `websocket` settings filled in).
    pub channel: Arc<Channel>,
    /// The upgrade request's path, its parameters and query.
    pub path: String,
    pub params: Vec<(String, String)>,
    pub query: String,
    /// The client's address, scheme and port (as the edge worked them out).
    pub remote_addr: IpAddr,
    pub scheme: &'static str,
    pub port: u16,
    pub who: Option<Who>,
    /// Set when the client authenticates after the upgrade (`first_message_auth` without
    /// a credential at the upgrade, or every client of a `zato` channel with a security
    /// definition): the definition's check of the credential it sends.
    pub admit: Option<auth::AdmitRef>,
    /// The security definition the channel's check used at the upgrade (as the table holds
    /// it, its secret sealed): a session whose channel or definition changes is closed (see
    /// [`Wsx::revalidate`]).
    pub security_def: Option<crate::model::security::SecurityDef>,
    /// [`Wsx::generation`] as the edge read it before it read the routing table.
    pub generation: u64,
}

/// What goes to a client's writer.
#[derive(Debug)]
pub(crate) enum Out {
    Msg(Message),
    /// Close with this code and reason once what was queued before it is written.
    CloseAfter(u16, &'static str),
}

/// What a queued message counts against `max_queued_bytes`: its bytes and a nominal cost
/// of the queue entry (so that control frames are not free).
pub(crate) fn cost(m: &Message) -> usize {
    m.len() + 64
}

/// Why a push to a client did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Its queue would pass `max_queued_bytes`: the client is being disconnected.
    Full,
    /// The client is gone (or going).
    Gone,
}

/// Why a pub/sub batch did not reach a client ([`Wsx::deliver_pubsub`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// No server holds the client (its connection ended).
    Gone,
    /// It may still be there: its server did not answer, or its queue is full.
    Failed(String),
}

/// A connected client as the registry holds it: where its messages go and how much is
/// queued for it.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: Arc<str>,
    /// The channel's name.
    pub(crate) channel: Arc<str>,
    tx: mpsc::UnboundedSender<Out>,
    /// Bytes queued and not yet written to the socket.
    queued: AtomicUsize,
    max_queued: usize,
    /// Set (once) to end the session: the close code and reason to send.
    close: watch::Sender<Option<(u16, &'static str)>>,
    /// Its channel's figures (none when metrics are off).
    metrics: Option<crate::metrics::websocket::SessionMetrics>,
    /// The channel and security definition it was let in by.
    channel_def: Arc<Channel>,
    security_def: Option<crate::model::security::SecurityDef>,
    /// Why the session ended (the metrics' reason), once it knows.
    pub(crate) reason: OnceLock<&'static str>,
    /// Whether it has authenticated (always, where nothing is checked after the upgrade):
    /// until then it gets no pushes.
    pub(crate) admitted: AtomicBool,
    /// Whether it speaks Zato's protocol: its pushes go out in `zwsx.rqc` envelopes.
    pub(crate) zato: bool,
    /// Where it connected from, and when (Unix ms): for the admin API's list.
    remote: Option<IpAddr>,
    connected_at_ms: i64,
    /// Who it authenticated as (set at the upgrade, or when it is let in afterwards).
    who: std::sync::Mutex<Option<Who>>,
    /// Its messages: received (calls) and sent (answers and pushes).
    pub(crate) received: AtomicU64,
    sent: AtomicU64,
}

impl Client {
    /// A push of `data` from a service, as this client's protocol sends it; `None` while
    /// it has not authenticated.
    fn push_message(&self, data: &Bytes, binary: bool) -> Option<Message> {
        if !self.admitted.load(Ordering::Acquire) {
            return None;
        }
        Some(if self.zato {
            message(zato::request_to_client(data), false)
        } else {
            message(data.clone(), binary)
        })
    }

    /// Queues `m` for the client, unless that would put more than `max_queued_bytes` in its
    /// queue: then the client is closed (1008) and nothing more is queued. A message is
    /// taken while the queue holds less than the bound, however large it is (an answer may
    /// be larger than the bound): the queue holds at most the bound plus one message.
    pub(crate) fn push(&self, m: Message) -> Result<(), PushError> {
        let n = cost(&m);
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before >= self.max_queued {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.close_with(
                1008,
                "send queue full: the client does not read fast enough",
            );
            return Err(PushError::Full);
        }
        let data = matches!(m, Message::Text(_) | Message::Binary(_));
        self.tx.send(Out::Msg(m)).map_err(|_| {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            PushError::Gone
        })?;
        if data {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        if data && let Some(f) = &self.metrics {
            f.sent.inc();
        }
        Ok(())
    }

    /// A message of cost `n` ([`cost`]) left the queue.
    pub(crate) fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Ends the session with a close frame once what is queued now has been written (a
    /// refusal's explanation goes out before the close).
    pub(crate) fn close_after_queued(&self, code: u16, reason: &'static str) {
        if self.tx.send(Out::CloseAfter(code, reason)).is_err() {
            self.close_with(code, reason);
        }
    }

    /// Ends the session with a close frame (the first reason given wins: whether this
    /// one did); what is still queued is dropped.
    pub(crate) fn close_with(&self, code: u16, reason: &'static str) -> bool {
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some((code, reason));
                true
            } else {
                false
            }
        })
    }
}

/// The WebSocket side of one server (cheap to clone).
#[derive(Clone)]
pub struct Wsx {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Wsx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wsx")
            .field("server", &self.inner.server)
            .field("clients", &self.client_count())
            .finish()
    }
}

/// A channel as a routing table has it now, and the security definition it names.
pub type Current = (Arc<Channel>, Option<crate::model::security::SecurityDef>);

/// A routing table's answer to "what is channel `name` now".
pub type Lookup = Arc<dyn Fn(&str) -> Option<Current> + Send + Sync>;

struct Inner {
    server: String,
    /// The routing table generation [`Wsx::revalidate`] last saw, and its lookup: a client
    /// that registers after a swap it was not checked against is checked at once.
    table: std::sync::Mutex<(u64, Option<Lookup>)>,
    /// The generation as a plain read (the edge notes it before it reads the table).
    generation: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
    pool: OnceLock<Arc<Pool>>,
    request_timeout: Duration,
    clients: RwLock<HashMap<Arc<str>, Arc<Client>>>,
    peers: OnceLock<Arc<dyn Peers>>,
    /// Told the id of each admitted client whose connection ended (pub/sub drops the
    /// subscriptions delivered to it).
    on_gone: OnceLock<Gone>,
    /// Set when the server stops: every session closes with 1001.
    stopping: watch::Sender<bool>,
    /// Figures: clients ever accepted, messages in and out, disconnects.
    accepted: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
}

/// What is told of a client whose connection ended.
pub type Gone = Arc<dyn Fn(Arc<str>) + Send + Sync>;

/// The registry's figures.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Figures {
    pub connected: usize,
    pub accepted: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

impl Wsx {
    pub fn new(
        server: &str,
        request_timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Wsx {
        Wsx {
            inner: Arc::new(Inner {
                server: server.to_owned(),
                table: std::sync::Mutex::new((0, None)),
                generation: AtomicU64::new(0),
                metrics,
                pool: OnceLock::new(),
                request_timeout,
                clients: RwLock::new(HashMap::new()),
                peers: OnceLock::new(),
                on_gone: OnceLock::new(),
                stopping: watch::channel(false).0,
                accepted: AtomicU64::new(0),
                messages_in: AtomicU64::new(0),
                messages_out: AtomicU64::new(0),
            }),
        }
    }

    /// The worker pool the sessions call services through (set once, at boot, before the
    /// HTTP listener serves).
    pub fn set_pool(&self, pool: Arc<Pool>) {
        let _ = self.inner.pool.set(pool);
    }

    /// The other servers (set once, when the bus exists).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.inner.peers.set(peers);
    }

    /// What to tell of each admitted client whose connection ended (set once, at boot).
    pub fn set_on_gone(&self, gone: Gone) {
        let _ = self.inner.on_gone.set(gone);
    }

    /// Closes every session (1001) and refuses new ones: the server is stopping.
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    pub fn client_count(&self) -> usize {
        self.inner.clients.read().expect("clients lock").len()
    }

    pub fn figures(&self) -> Figures {
        let i = &self.inner;
        Figures {
            connected: self.client_count(),
            accepted: i.accepted.load(Ordering::Relaxed),
            messages_in: i.messages_in.load(Ordering::Relaxed),
            messages_out: i.messages_out.load(Ordering::Relaxed),
        }
    }

    /// A new client id: `ws.<server>.<16 hex digits>` (the server part routes a send to
    /// the server holding the connection).
    fn new_id(&self) -> Arc<str> {
        format!("ws.{}.{}", self.inner.server, crate::random::random_hex(8)).into()
    }

    /// The server a client id names, if it is one of ours in form.
    pub fn server_of(id: &str) -> Option<&str> {
        crate::model::websocket::client_server(id)
    }

    /// Takes over an upgraded connection: registers its client and runs the session in a
    /// task of its own; `hold` is kept until the session ends (the edge's count of open
    /// connections, which shutdown waits on).
    pub fn accept<S>(&self, io: S, open: Open, hold: Box<dyn Send + Sync>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let settings = open.channel.websocket.clone().unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.new_id();
        let channel_name = open
            .channel
            .name
            .as_deref()
            .unwrap_or(&open.channel.url_path);
        let channel: Arc<str> = channel_name.into();
        let client = Arc::new(Client {
            id: id.clone(),
            channel,
            tx,
            queued: AtomicUsize::new(0),
            max_queued: settings.max_queued_bytes,
            close: watch::channel(None).0,
            metrics: self
                .inner
                .metrics
                .enabled()
                .then(|| self.inner.metrics.websocket.connected(channel_name)),
            channel_def: open.channel.clone(),
            security_def: open.security_def.clone(),
            reason: OnceLock::new(),
            admitted: AtomicBool::new(!session::authenticates(&open, &settings)),
            zato: settings.protocol == crate::model::websocket::WsProtocol::Zato,
            remote: Some(open.remote_addr),
            connected_at_ms: chrono::Utc::now().timestamp_millis(),
            who: std::sync::Mutex::new(open.who.clone()),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        // The session's receivers of the close, made before anything can set it.
        let closes = (client.close.subscribe(), client.close.subscribe());
        self.inner
            .clients
            .write()
            .expect("clients lock")
            .insert(id, client.clone());
        // Unregistered however the session ends (a panic, a task never run), before `hold`
        // goes; its gauge too.
        let registered = Registered {
            wsx: self.clone(),
            client: client.clone(),
            _hold: hold,
        };
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        // A table installed since the edge read its own: this client is checked against it
        // now (revalidate took its client list before or after this insert; after: it saw
        // the client; before: its generation is new here).
        {
            let table = self.inner.table.lock().expect("table lock");
            if table.0 != open.generation
                && let Some(lookup) = &table.1
                && !still_valid(lookup, &client)
            {
                client.close_with(1012, "the channel was changed or removed: reconnect");
            }
        }
        let wsx = self.clone();
        let open = Arc::new(open);
        tokio::spawn(async move {
            let _registered = registered;
            session::run(&wsx, io, open, settings, client, rx, closes).await;
        });
    }

    /// The routing table generation last seen by [`Wsx::revalidate`]: the edge reads it
    /// before it reads the table a handshake is checked with.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Closes (1012) every session whose channel is gone or changed, or whose security
    /// definition changed, in the routing table just installed: `current` gives a
    /// channel's definition and security definition there, by name. Its clients reconnect
    /// and are checked again. Each channel is looked up once.
    pub fn revalidate(&self, current: Lookup) {
        let clients: Vec<Arc<Client>> = {
            let mut table = self.inner.table.lock().expect("table lock");
            table.0 += 1;
            table.1 = Some(current.clone());
            self.inner.generation.store(table.0, Ordering::Release);
            self.inner
                .clients
                .read()
                .expect("clients lock")
                .values()
                .cloned()
                .collect()
        };
        let mut seen: HashMap<Arc<str>, Option<Current>> = HashMap::new();
        for c in clients {
            let now = seen
                .entry(c.channel.clone())
                .or_insert_with(|| current(&c.channel));
            if !same_as(now.as_ref(), &c) {
                c.close_with(1012, "the channel was changed or removed: reconnect");
            }
        }
    }

    fn client(&self, id: &str) -> Option<Arc<Client>> {
        self.inner
            .clients
            .read()
            .expect("clients lock")
            .get(id)
            .cloned()
    }

    /// Sends `data` to this server's client `id`.
    pub fn send_local(&self, id: &str, data: Bytes, binary: bool) -> Result<(), PushError> {
        let c = self.client(id).ok_or(PushError::Gone)?;
        let m = c.push_message(&data, binary).ok_or(PushError::Gone)?;
        c.push(m)?;
        self.inner.messages_out.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `data` to every client of `channel` on this server; how many it was queued
    /// for (a client whose queue is full is being closed and not counted).
    pub fn broadcast_local(&self, channel: &str, data: &Bytes, binary: bool) -> usize {
        let clients: Vec<Arc<Client>> = self
            .inner
            .clients
            .read()
            .expect("clients lock")
            .values()
            .filter(|c| &*c.channel == channel)
            .cloned()
            .collect();
        let mut n = 0;
        // One envelope for every Zato client of the broadcast.
        let mut zato_msg: Option<Message> = None;
        for c in clients {
            let m = if c.zato && c.admitted.load(Ordering::Acquire) {
                zato_msg
                    .get_or_insert_with(|| message(zato::request_to_client(data), false))
                    .clone()
            } else {
                match c.push_message(data, binary) {
                    Some(m) => m,
                    None => continue,
                }
            };
            if c.push(m).is_ok() {
                n += 1;
            }
        }
        self.inner
            .messages_out
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Whether client `id` is connected here, let in and not closing: then the name of the
    /// security definition its channel let it in by (none: an open channel).
    pub fn local_subscriber(&self, id: &str) -> Option<Option<String>> {
        let c = self.client(id)?;
        (c.admitted.load(Ordering::Acquire) && c.close.borrow().is_none())
            .then(|| c.security_def.as_ref().map(|d| d.name.clone()))
    }

    /// This server's clients (of `channel`, or of every channel) as the admin API lists
    /// them, by id: how many there are, and the first `limit`.
    pub fn describe(&self, channel: Option<&str>, limit: usize) -> (usize, Vec<serde_json::Value>) {
        let mut clients: Vec<Arc<Client>> = self
            .inner
            .clients
            .read()
            .expect("clients lock")
            .values()
            .filter(|c| channel.is_none_or(|ch| *c.channel == *ch))
            .cloned()
            .collect();
        let total = clients.len();
        clients.sort_by(|a, b| a.id.cmp(&b.id));
        clients.truncate(limit);
        let v: Vec<serde_json::Value> = clients
            .iter()
            .map(|c| {
                let who = c
                    .who
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                serde_json::json!({
                    "client_id": &*c.id,
                    "channel": &*c.channel,
                    "protocol": if c.zato { "zato" } else { "raw" },
                    "remote_addr": c.remote.map(|a| a.to_string()),
                    "connected_at_ms": c.connected_at_ms,
                    "authenticated": c.admitted.load(Ordering::Acquire),
                    "security": who.map(|w| serde_json::json!({
                        "name": &*w.name, "type": w.kind,
                        "username": w.username, "subject": w.subject,
                    })),
                    "messages_in": c.received.load(Ordering::Relaxed),
                    "messages_out": c.sent.load(Ordering::Relaxed),
                    "queued_bytes": c.queued.load(Ordering::Relaxed),
                    "closing": c.close.borrow().is_some(),
                })
            })
            .collect();
        (total, v)
    }

    /// Closes this server's client `id` (4005, as Zato's disconnect); false when it has no
    /// such client, or it is closing already.
    pub fn disconnect_local(&self, id: &str) -> bool {
        self.client(id)
            .is_some_and(|c| c.close_with(4005, "disconnected by an operator"))
    }
}

/// Whether `client` was let in by what `lookup` says its channel is now.
fn still_valid(lookup: &Lookup, client: &Client) -> bool {
    same_as(lookup(&client.channel).as_ref(), client)
}

fn same_as(now: Option<&Current>, c: &Client) -> bool {
    now.is_some_and(|(ch, def)| **ch == *c.channel_def && *def == c.security_def)
}

/// Removes a session's client from the registry when dropped, then releases what the edge
/// handed over with the connection; the gauge counts it gone (reason `error` unless the
/// session recorded why).
struct Registered {
    wsx: Wsx,
    client: Arc<Client>,
    /// Dropped after the registry entry is gone.
    _hold: Box<dyn Send + Sync>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut clients = match self.wsx.inner.clients.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients.remove(&self.client.id);
        drop(clients);
        if self.client.admitted.load(Ordering::Acquire)
            && let Some(gone) = self.wsx.inner.on_gone.get()
        {
            gone(self.client.id.clone());
        }
        if self.client.metrics.is_some() {
            let reason = self.client.reason.get().copied().unwrap_or("error");
            self.wsx
                .inner
                .metrics
                .websocket
                .disconnected(&self.client.channel, reason);
        }
    }
}

/// A text message when `data` is UTF-8 and `binary` was not asked for, else a binary one.
pub(crate) fn message(data: Bytes, binary: bool) -> Message {
    if !binary && std::str::from_utf8(&data).is_ok() {
        match tokio_tungstenite::tungstenite::Utf8Bytes::try_from(data) {
            Ok(t) => Message::Text(t),
            Err(_) => unreachable!("checked as UTF-8"),
        }
    } else {
        Message::Binary(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_name_their_server() {
        assert_eq!(Wsx::server_of("ws.s1.0123456789abcdef"), Some("s1"));
        assert_eq!(Wsx::server_of("ws.a.b.0123456789abcdef"), Some("a.b"));
        assert_eq!(Wsx::server_of("ws..0123456789abcdef"), None);
        assert_eq!(Wsx::server_of("ws.s1.0123"), None);
        assert_eq!(Wsx::server_of("s1.0123456789abcdef"), None);
        assert_eq!(Wsx::server_of("ws.s1.0123456789abcdeg"), None);
    }

    #[test]
    fn a_push_past_the_bound_closes_the_client() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Client {
            id: "ws.s.0000000000000000".into(),
            channel: "ch".into(),
            tx,
            queued: AtomicUsize::new(0),
            max_queued: 100,
            close: watch::channel(None).0,
            metrics: None,
            channel_def: Arc::new(crate::model::channel::tests::rpc(&[])),
            security_def: None,
            reason: OnceLock::new(),
            admitted: AtomicBool::new(true),
            zato: false,
            remote: None,
            connected_at_ms: 0,
            who: std::sync::Mutex::new(None),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        };
        let mut closed = c.close.subscribe();
        let small = || message(Bytes::from_static(b"12345678"), false);
        // Into an empty queue a message goes whatever its size.
        let big = message(Bytes::from(vec![b'x'; 500]), false);
        let big_cost = cost(&big);
        assert!(c.push(big).is_ok());
        assert_eq!(closed.borrow_and_update().map(|c| c.0), None);
        assert!(rx.try_recv().is_ok());
        c.written(big_cost);
        // 72 queued (under 100): the second taken; 144: the third refused.
        assert!(c.push(small()).is_ok());
        assert!(c.push(small()).is_ok());
        assert_eq!(closed.borrow_and_update().map(|c| c.0), None);
        assert_eq!(c.push(small()), Err(PushError::Full));
        assert_eq!(closed.borrow_and_update().map(|c| c.0), Some(1008));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        c.written(2 * cost(&small()));
        assert_eq!(c.queued.load(Ordering::Relaxed), 0);
        assert!(c.push(message(Bytes::from_static(b"123"), true)).is_ok());
        assert!(matches!(rx.try_recv(), Ok(Out::Msg(Message::Binary(_)))));
    }
}
