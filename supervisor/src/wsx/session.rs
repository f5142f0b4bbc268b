//! One client's session: the reader (this task) turns each message into a call of the
//! channel's service and queues the answer; a writer task sends what is queued. Pings go
//! out every `ping_interval_ms` and a client that leaves `max_missed_pongs` of them in a
//! row unanswered is dropped; a message over `max_message_bytes` closes with 1009, a queue
//! over `max_queued_bytes` with 1008, an idle client (no message for `idle_timeout_ms`)
//! with 1000 and a stopping server with 1001. The connect and disconnect hooks are calls
//! of the services the channel names, their answers dropped.
//!
//! A client that authenticates after the upgrade (`first_message_auth`, Zato's protocol)
//! is let in by its first message or `create-session` within `auth_timeout_ms`, checked by
//! the edge's [`auth::Admit`]; until then it reads under a budget, gets no pushes and runs
//! nothing. A Zato client's messages are envelopes (`zato`), its answers too.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, warn};

use super::{Client, Open, Out, Who, Wsx, auth, message, zato};
use crate::lifecycle::pool::{DispatchError, Reply};
use crate::model::websocket::{WsProtocol, WsSettings};

/// How long a closing session waits for the client's close frame (and its writer for the
/// socket) before it drops the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why a session ended when the server closed it (a close frame is due).
const CLOSED_BY_US: &str = "closed by the server";

/// The read buffer of one connection: small, so that an idle client costs little (a larger
/// message is read in several reads).
const READ_BUFFER: usize = 4096;

/// Whether a client of `open` authenticates after the upgrade (with its first message or
/// Zato's `create-session`): it is not admitted until it has.
pub(super) fn authenticates(open: &Open, settings: &WsSettings) -> bool {
    open.admit.is_some() || settings.protocol == WsProtocol::Zato
}

/// Close reasons of a client that did not authenticate (close 1008, metrics reason `auth`).
const AUTH_FAILED: &str = "authentication failed";
const AUTH_TIMEOUT: &str = "authentication timeout";
const NO_SESSION: &str = "not authenticated: create-session first";
const BAD_TOKEN: &str = "invalid or missing session token";

/// A finished call: its cid, the Zato request it answers, its outcome.
struct Done {
    cid: String,
    reply_to: Option<String>,
    result: Result<Reply, DispatchError>,
}

/// Runs `client`'s session on `io` until it ends; the caller unregisters it.
pub(super) async fn run<S>(
    wsx: &Wsx,
    io: S,
    open: Arc<Open>,
    settings: WsSettings,
    client: Arc<Client>,
    rx: mpsc::UnboundedReceiver<Out>,
    closes: (CloseRx, CloseRx),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let pending = !client.admitted.load(Ordering::Acquire);
    // A client that has not authenticated may make the server read only a little.
    let (io, lift) = auth::Budget::new(io, pending.then_some(auth::UNADMITTED_BYTES));
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Frames are written once this much is buffered, and at each flush (the writer
        // flushes whenever its queue is empty).
        .write_buffer_size(READ_BUFFER)
        .max_message_size(Some(settings.max_message_bytes))
        .max_frame_size(Some(settings.max_message_bytes));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (sink, mut stream) = ws.split();
    // Both receivers were made before the client was registered: a close set since then
    // (a push over the bound, a config change) is seen by both.
    let (mut close_rx, writer_close) = closes;
    // The writer ends with the session however it ends (a panic too).
    let mut writer = AbortOnDrop(tokio::spawn(write_loop(
        sink,
        rx,
        client.clone(),
        writer_close,
    )));
    let mut st = State {
        calls: Calls {
            wsx,
            open,
            client: &client,
            zato: settings.protocol == WsProtocol::Zato,
            replies: HashMap::new(),
        },
        settings: &settings,
        lift,
        admitted: !pending,
        token: None,
    };

    debug!(client = %client.id, channel = %client.channel, "websocket client connected");

    let mut stopping = wsx.inner.stopping.subscribe();
    let stopped_at_once = *stopping.borrow();
    if stopped_at_once {
        // The server began stopping while this upgrade completed: no hooks, just the close.
        client.close_with(1001, "server shutting down");
    } else if st.admitted {
        st.connected().await;
    }
    // A close set before the loop (at once, or while the hook ran) ends it at once.
    close_rx.mark_changed();

    let mut inflight: JoinSet<Done> = JoinSet::new();
    let max_inflight = settings.max_inflight as usize;
    let ping_every = Duration::from_millis(settings.ping_interval_ms);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + ping_every.max(Duration::from_millis(1)),
        ping_every.max(Duration::from_millis(1)),
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missed = 0u32;
    let idle =
        (settings.idle_timeout_ms > 0).then(|| Duration::from_millis(settings.idle_timeout_ms));
    let auth_deadline =
        tokio::time::Instant::now() + Duration::from_millis(settings.auth_timeout_ms);
    let mut last_message = Instant::now();
    let why: &str = loop {
        let idle_left = idle.map(|d| d.saturating_sub(last_message.elapsed()));
        tokio::select! {
            m = stream.next(), if inflight.len() < max_inflight => {
                missed = 0;
                let flow = match m {
                    Some(Ok(Message::Text(t))) => {
                        last_message = Instant::now();
                        st.message(&mut inflight, Bytes::from(t), false).await
                    }
                    Some(Ok(Message::Binary(b))) => {
                        last_message = Instant::now();
                        st.message(&mut inflight, b, true).await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
                    Some(Ok(Message::Close(_))) => Some("client closed"),
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        Some("connection ended")
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        debug!(client = %client.id, error = %e, "websocket message too big");
                        client.close_with(1009, "message too big");
                        Some(CLOSED_BY_US)
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        client.close_with(1007, "invalid UTF-8 in a text message");
                        Some(CLOSED_BY_US)
                    }
                    Some(Err(WsError::Protocol(e))) => {
                        debug!(client = %client.id, error = %e, "websocket protocol error");
                        client.close_with(1002, "protocol error");
                        Some(CLOSED_BY_US)
                    }
                    // Past the read budget of a client not let in yet (or another failure
                    // before it was): refused as not authenticated.
                    Some(Err(e)) if !st.admitted => {
                        debug!(client = %client.id, error = %e, "websocket client not authenticated");
                        Some(st.refuse(AUTH_FAILED))
                    }
                    Some(Err(e)) => {
                        debug!(client = %client.id, error = %e, "websocket read failed");
                        Some("read failed")
                    }
                };
                if let Some(why) = flow {
                    break why;
                }
            }
            Some(done) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                match done {
                    Ok((id, done)) => {
                        st.calls.replies.remove(&id);
                        st.calls.answer(done);
                    }
                    // The call's task panicked: the client is told, as for a failed call
                    // (a Zato client in answer to its request).
                    Err(e) => {
                        warn!(client = %client.id, error = %e, "websocket call task failed");
                        let reply_to = st.calls.replies.remove(&e.id()).flatten();
                        st.calls.answer(Done {
                            cid: String::new(),
                            reply_to,
                            result: Err(DispatchError::WorkerDied),
                        });
                    }
                }
                // The client was not read while its calls ran: its time counts from now.
                last_message = Instant::now();
            }
            _ = ping.tick(), if !ping_every.is_zero() => {
                if inflight.len() >= max_inflight {
                    // Not reading (the client's calls are running): its pongs wait unread,
                    // so they cannot be counted missing. Its calls have their deadline.
                    missed = 0;
                    continue;
                }
                if missed >= settings.max_missed_pongs {
                    break "no pong";
                }
                missed += 1;
                if client.push(Message::Ping(Bytes::new())).is_err() {
                    break "queue full";
                }
            }
            _ = async { tokio::time::sleep(idle_left.unwrap_or_default()).await }, if idle_left.is_some() && inflight.is_empty() => {
                client.close_with(1000, "idle timeout");
                break CLOSED_BY_US;
            }
            _ = tokio::time::sleep_until(auth_deadline), if !st.admitted => {
                break st.refuse(AUTH_TIMEOUT);
            }
            // (The watch's Ref is dropped in the branch: a handler above awaits.)
            _ = async { drop(stopping.wait_for(|s| *s).await) } => {
                client.close_with(1001, "server shutting down");
                break CLOSED_BY_US;
            }
            _ = close_rx.changed() => {
                if close_rx.borrow().is_some() {
                    break CLOSED_BY_US;
                }
            }
        }
    };
    // Closing: the writer sends the close frame (if one is due); the client's own close
    // frame is read (tungstenite answers it) for a short while, then the socket goes.
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    if why == CLOSED_BY_US {
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    } else {
        // The client went (or must go) first: let the writer end at once.
        client.close_with(1000, "");
    }
    if tokio::time::timeout_at(deadline, &mut writer.0)
        .await
        .is_err()
    {
        // The client does not read even the close frame: the connection is cut (the
        // writer holds the socket's write half and what was queued).
        writer.0.abort();
        debug!(client = %client.id, "websocket writer did not finish; connection cut");
    }
    inflight.abort_all();
    debug!(client = %client.id, reason = why, "websocket client disconnected");
    // The gauge counts it gone when the registry entry goes (`Registered`), with this.
    let code = *client.close.borrow();
    let _ = client.reason.set(reason_label(why, code));
    // The disconnect hook follows a connect: a client never admitted had none.
    if let Some(hook) = &settings.on_disconnect
        && !stopped_at_once
        && st.admitted
    {
        st.calls.hook(hook, "disconnect").await;
    }
}

/// A session's state: its calls, and where the client is in authenticating.
struct State<'a> {
    calls: Calls<'a>,
    settings: &'a WsSettings,
    lift: auth::Lift,
    admitted: bool,
    /// A Zato session's token (set by `create-session`).
    token: Option<String>,
}

impl State<'_> {
    /// Handles one client message; `Some(why)` ends the session.
    async fn message(
        &mut self,
        set: &mut JoinSet<Done>,
        data: Bytes,
        binary: bool,
    ) -> Option<&'static str> {
        if self.calls.zato {
            return self.zato_message(set, data, binary).await;
        }
        if self.admitted {
            let service = self.calls.open.channel.service.clone();
            self.calls.spawn(set, service, data, binary, None);
            return None;
        }
        // The first message of a client that opened the channel without a credential.
        let credential = if binary {
            Err("the credential is a text message")
        } else {
            auth::parse_credential(&data)
        };
        let admitted = match credential {
            Ok(c) => self.check(c).await,
            Err(e) => Err(e.to_owned()),
        };
        match admitted {
            Ok(_) if self.closing() => Some(CLOSED_BY_US),
            Ok(who) => {
                // The answer first: no push may reach the client before it.
                let hello = serde_json::json!({
                    "authenticated": true,
                    "client_id": &*self.calls.client.id,
                });
                let _ = self
                    .calls
                    .client
                    .push(message(Bytes::from(hello.to_string()), false));
                self.admit(who);
                self.connected().await;
                None
            }
            Err(reason) => {
                debug!(client = %self.calls.client.id, reason, "websocket client not authenticated");
                Some(self.refuse(AUTH_FAILED))
            }
        }
    }

    /// Handles one message of a Zato client.
    async fn zato_message(
        &mut self,
        set: &mut JoinSet<Done>,
        data: Bytes,
        binary: bool,
    ) -> Option<&'static str> {
        let client = self.calls.client;
        let m = match binary {
            true => Err("binary messages are not part of the Zato protocol: send JSON text"),
            false => zato::parse(&data),
        };
        let m = match m {
            Ok(m) => m,
            // Before its session a client gets no more than the refusal.
            Err(_) if !self.admitted => return Some(self.refuse(NO_SESSION)),
            Err(e) => {
                // Zato ignores such a message; the client is told why here.
                let _ = client.push(message(zato::merr(400, e), false));
                return None;
            }
        };
        match m.action {
            zato::Action::ClientResponse => {
                // An answer to a push (which expects none): dropped, whatever its token
                // (Zato's client answers with the token it has, '' until it has read
                // the create-session answer).
                debug!(client = %client.id, in_reply_to = m.id, "zato client response ignored");
                None
            }
            zato::Action::CreateSession => {
                let credential = match (m.username, m.secret) {
                    (Some(username), Some(password)) => {
                        Some(auth::Credential::Basic { username, password })
                    }
                    (None, Some(secret)) => Some(auth::Credential::Secret(secret)),
                    (_, None) => None,
                };
                let who = match (&self.calls.open.admit, credential) {
                    // No security definition: a session for anyone.
                    (None, _) => Ok(None),
                    (Some(_), None) => Err("create-session without meta.secret".to_owned()),
                    (Some(_), Some(c)) => self.check(c).await,
                };
                match who {
                    Ok(_) if self.closing() => Some(CLOSED_BY_US),
                    Ok(who) => {
                        let first = !self.admitted;
                        let token = zato::new_token();
                        // The answer first: no push may reach the client before it.
                        let _ = client.push(message(zato::auth_ok(&m.id, &token), false));
                        self.token = Some(token);
                        self.admit(who);
                        debug!(client = %client.id, ext_client_id = ?m.client_id,
                            ext_client_name = ?m.client_name, "zato websocket session created");
                        if first {
                            self.connected().await;
                        }
                        None
                    }
                    Err(reason) => {
                        debug!(client = %client.id, reason, "zato websocket client not authenticated");
                        Some(self.refuse(AUTH_FAILED))
                    }
                }
            }
            _ if !self.admitted => Some(self.refuse(NO_SESSION)),
            _ if m.token.is_none() || m.token != self.token => Some(self.refuse(BAD_TOKEN)),
            zato::Action::Invoke => {
                let channel = &self.calls.open.channel;
                match zato::target(&channel.service, &channel.services, m.data) {
                    Ok((service, payload)) => {
                        let service = service.to_owned();
                        self.calls.spawn(set, service, payload, false, Some(m.id));
                    }
                    Err(name) => {
                        debug!(client = %client.id, service = name, "zato client named a service the channel does not list");
                        let cid = crate::cid::next();
                        let e = zato::err(&cid, &m.id, 403, zato::NOT_ALLOWED);
                        let _ = client.push(message(e, false));
                    }
                }
                None
            }
        }
    }

    /// Checks a credential with the channel's security definition.
    async fn check(&self, c: auth::Credential) -> Result<Option<Who>, String> {
        match &self.calls.open.admit {
            Some(a) => a.admit(c).await.map(Some),
            None => Err("the channel checks no credential after the upgrade".into()),
        }
    }

    /// The client authenticated (as `who`): it may read freely and gets pushes; its calls
    /// run as `who`.
    fn admit(&mut self, who: Option<Who>) {
        // Who first: a list taken at any moment shows an admitted client with its identity.
        if let Some(who) = who {
            *self
                .calls
                .client
                .who
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(who.clone());
            let mut open = (*self.calls.open).clone();
            open.who = Some(who);
            self.calls.open = Arc::new(open);
        }
        self.admitted = true;
        self.lift.lift();
        self.calls.client.admitted.store(true, Ordering::Release);
    }

    /// Whether the session is ending (a close was set: its channel changed, the server
    /// stops): a client whose check finished meanwhile is not let in.
    fn closing(&self) -> bool {
        if *self.calls.wsx.inner.stopping.borrow() {
            self.calls.client.close_with(1001, "server shutting down");
        }
        self.calls.client.close.borrow().is_some()
    }

    /// Runs the connect hook (once the client is admitted).
    async fn connected(&self) {
        if let Some(hook) = &self.settings.on_connect {
            self.calls.hook(hook, "connect").await;
        }
    }

    /// Refuses a client that did not authenticate: a Zato client is told (`zwsx.merr`
    /// 403), then it is closed with 1008.
    fn refuse(&self, why: &'static str) -> &'static str {
        if self.calls.zato {
            let _ = self
                .calls
                .client
                .push(message(zato::merr(403, zato::NOT_AUTHORIZED), false));
        }
        self.calls.client.close_after_queued(1008, why);
        CLOSED_BY_US
    }
}

/// A session's receiver of its close (see `Client::close_with`).
pub(super) type CloseRx = tokio::sync::watch::Receiver<Option<(u16, &'static str)>>;

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `reason` label of a session that ended for `why`, with the close code the server
/// sent (if it closed it).
fn reason_label(why: &str, code: Option<(u16, &'static str)>) -> &'static str {
    match (why, code) {
        (CLOSED_BY_US, Some((1009, _))) => "too_big",
        (CLOSED_BY_US, Some((1008, r)))
            if [AUTH_FAILED, AUTH_TIMEOUT, NO_SESSION, BAD_TOKEN].contains(&r) =>
        {
            "auth"
        }
        (CLOSED_BY_US, Some((1008, _))) => "queue_full",
        (CLOSED_BY_US, Some((1000, _))) => "idle",
        (CLOSED_BY_US, Some((1001, _))) => "shutdown",
        (CLOSED_BY_US, Some((1002, _))) => "protocol",
        (CLOSED_BY_US, Some((1007, _))) => "utf8",
        (CLOSED_BY_US, Some((1012, _))) => "changed",
        (CLOSED_BY_US, Some((4005, _))) => "disconnected",
        ("client closed", _) => "client_closed",
        ("connection ended", _) => "connection_ended",
        ("no pong", _) => "no_pong",
        ("queue full", _) => "queue_full",
        _ => "error",
    }
}

/// Writes what is queued for the client, flushing when the queue is empty; when the session
/// closes, drops what is still queued and sends the close frame (bounded by the caller).
async fn write_loop<W>(
    mut sink: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    client: Arc<Client>,
    mut close: CloseRx,
) where
    W: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    loop {
        if close.borrow_and_update().is_some() {
            break;
        }
        let out = tokio::select! {
            biased;
            _ = close.changed() => break,
            out = rx.recv() => out,
        };
        let m = match out {
            Some(Out::Msg(m)) => m,
            Some(Out::CloseAfter(code, reason)) => {
                client.close_with(code, reason);
                break;
            }
            None => break,
        };
        let n = super::cost(&m);
        let sent = tokio::select! {
            biased;
            _ = close.changed() => break,
            r = sink.feed(m) => r,
        };
        client.written(n);
        if sent.is_err() {
            return;
        }
        if rx.is_empty() {
            let flushed = tokio::select! {
                biased;
                _ = close.changed() => break,
                r = sink.flush() => r,
            };
            if flushed.is_err() {
                return;
            }
        }
    }
    let Some((code, reason)) = *close.borrow() else {
        return;
    };
    // What is still queued is not sent: released now.
    rx.close();
    while let Ok(out) = rx.try_recv() {
        if let Out::Msg(m) = out {
            client.written(super::cost(&m));
        }
    }
    if code == 1000 && reason.is_empty() {
        // The client closed or the connection ended: tungstenite already answered.
        let _ = sink.flush().await;
        return;
    }
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// The calls one session makes.
struct Calls<'a> {
    wsx: &'a Wsx,
    /// The session as handed over, `who` updated when the client authenticates.
    open: Arc<Open>,
    client: &'a Arc<Client>,
    /// Whether the client speaks Zato's protocol (answers in its envelopes).
    zato: bool,
    /// The Zato request each running call answers, by task (for a task that panics).
    replies: HashMap<tokio::task::Id, Option<String>>,
}

impl Calls<'_> {
    /// Starts a call of `service` with one client message (`reply_to`: the Zato request
    /// it answers).
    fn spawn(
        &mut self,
        set: &mut JoinSet<Done>,
        service: String,
        data: Bytes,
        binary: bool,
        reply_to: Option<String>,
    ) {
        self.wsx.inner.messages_in.fetch_add(1, Ordering::Relaxed);
        self.client.received.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.client.metrics {
            m.received.inc();
        }
        let cid = crate::cid::next();
        let wsx = self.wsx.clone();
        let open = self.open.clone();
        let client_id = self.client.id.clone();
        let zato = self.zato;
        let task_reply_to = reply_to.clone();
        let task = set.spawn(async move {
            let result = call(
                &wsx, &open, &client_id, &service, &cid, "message", data, binary, zato,
            )
            .await;
            Done {
                cid,
                reply_to,
                result,
            }
        });
        self.replies.insert(task.id(), task_reply_to);
    }

    /// Sends a call's answer to the client: the body of a success (nothing when it is
    /// empty), the error document of a failure; for a Zato request, `zwsx.rspok` or
    /// `zwsx.rsperr` answering it.
    fn answer(&self, done: Done) {
        let Done {
            cid,
            reply_to,
            result,
        } = done;
        let m = match (reply_to, result) {
            (Some(id), Ok(r)) if r.status < 400 => message(zato::ok(&cid, &id, &r.body), false),
            (Some(id), Ok(r)) => message(
                zato::err(&cid, &id, r.status, &zato::error_message(r.status, &r.body)),
                false,
            ),
            (Some(id), Err(e)) => message(zato::err(&cid, &id, e.status(), &e.to_string()), false),
            (None, Ok(r)) if r.body.is_empty() && r.status < 400 => return,
            (None, Ok(r)) => {
                let binary = r.content_type.as_deref() == Some("application/octet-stream");
                message(r.body, binary)
            }
            (None, Err(e)) => {
                let doc = serde_json::json!({"error": e.to_string(), "cid": cid});
                message(Bytes::from(doc.to_string()), false)
            }
        };
        if self.client.push(m).is_ok() {
            self.wsx.inner.messages_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs a connect or disconnect hook; a failure is logged.
    async fn hook(&self, service: &str, event: &'static str) {
        let cid = crate::cid::next();
        match call(
            self.wsx,
            &self.open,
            &self.client.id,
            service,
            &cid,
            event,
            Bytes::new(),
            false,
            false,
        )
        .await
        {
            Ok(r) if r.status < 400 => {}
            Ok(r) => warn!(client = %self.client.id, service, event, status = r.status, cid,
                "websocket {event} hook failed"),
            Err(e) => warn!(client = %self.client.id, service, event, error = %e, cid,
                "websocket {event} hook not run"),
        }
    }
}

/// One call of `service` for client `client_id` of the session `open`.
#[allow(clippy::too_many_arguments)]
async fn call(
    wsx: &Wsx,
    open: &Open,
    client_id: &str,
    service: &str,
    cid: &str,
    event: &'static str,
    data: Bytes,
    binary: bool,
    zato: bool,
) -> Result<Reply, DispatchError> {
    let now = Instant::now();
    let deadline = now + wsx.inner.request_timeout;
    let trace = crate::trace::TraceParent::new_root();
    let data_format = if binary {
        "raw"
    } else if zato {
        // A Zato request's data, as JSON.
        "json"
    } else {
        open.channel.data_format.as_str()
    };
    let meta: oxbus_ipc::InvokeMeta<'_> = oxbus_ipc::InvokeMeta {
        op: "invoke",
        service,
        cid,
        channel: Some("websocket"),
        data_format: Some(data_format),
        method: None,
        path: Some(&open.path),
        params: Some(&open.params),
        query: Some(&open.query),
        headers: None,
        deadline_ms: Some(wsx.inner.request_timeout.as_millis() as u64),
        remote_addr: Some(open.remote_addr),
        scheme: Some(open.scheme),
        port: Some(open.port),
        // The name pushes use (`self.wsx.channel[name]`): the URL path of an unnamed one.
        channel_name: Some(
            open.channel
                .name
                .as_deref()
                .unwrap_or(&open.channel.url_path),
        ),
        security: open.who.as_ref().map(|w| oxbus_ipc::SecurityMeta {
            name: &w.name,
            kind: w.kind,
            username: w.username.as_deref(),
            subject: w.subject.as_deref(),
        }),
        traceparent: Some(trace.as_str()),
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: Some(oxbus_ipc::WsxMeta {
            client_id,
            event,
            binary,
        }),
        file: None,
        params_priority: None,
        job_type: None,
    };
    match wsx.inner.pool.get() {
        Some(pool) => pool.invoke_at(&meta, &data, deadline, now).await,
        None => Err(DispatchError::Busy),
    }
}
