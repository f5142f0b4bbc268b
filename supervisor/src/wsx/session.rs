//! One client's session: the reader (this task) turns each message into a call of the
//! channel's service and queues the answer; a writer task sends what is queued. Pings go
//! out every `ping_interval_ms` and a client that leaves `max_missed_pongs` of them in a
//! row unanswered is dropped; a message over `max_message_bytes` closes with 1009, a queue
//! over `max_queued_bytes` with 1008, an idle client (no message for `idle_timeout_ms`)
//! with 1000 and a stopping server with 1001. The connect and disconnect hooks are calls
//! of the services the channel names, their answers dropped.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
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

use super::{Client, Open, Out, Wsx, message};
use crate::lifecycle::pool::{DispatchError, Reply};
use crate::model::websocket::WsSettings;

/// How long a closing session waits for the client's close frame (and its writer for the
/// socket) before it drops the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why a session ended when the server closed it (a close frame is due).
const CLOSED_BY_US: &str = "closed by the server";

/// The read buffer of one connection: small, so that an idle client costs little (a larger
/// message is read in several reads).
const READ_BUFFER: usize = 4096;

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
    let calls = Calls {
        wsx,
        open: &open,
        client: &client,
    };

    debug!(client = %client.id, channel = %client.channel, "websocket client connected");

    let mut stopping = wsx.inner.stopping.subscribe();
    let stopped_at_once = *stopping.borrow();
    if stopped_at_once {
        // The server began stopping while this upgrade completed: no hooks, just the close.
        client.close_with(1001, "server shutting down");
    } else if let Some(hook) = &settings.on_connect {
        calls.hook(hook, "connect").await;
    }
    // A close set before the loop (at once, or while the hook ran) ends it at once.
    close_rx.mark_changed();

    let mut inflight: JoinSet<(String, Result<Reply, DispatchError>)> = JoinSet::new();
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
    let mut last_message = Instant::now();
    let why: &str = loop {
        let idle_left = idle.map(|d| d.saturating_sub(last_message.elapsed()));
        tokio::select! {
            m = stream.next(), if inflight.len() < max_inflight => {
                missed = 0;
                match m {
                    Some(Ok(Message::Text(t))) => {
                        last_message = Instant::now();
                        calls.spawn(&mut inflight, Bytes::from(t), false);
                    }
                    Some(Ok(Message::Binary(b))) => {
                        last_message = Instant::now();
                        calls.spawn(&mut inflight, b, true);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) => break "client closed",
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        break "connection ended"
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        debug!(client = %client.id, error = %e, "websocket message too big");
                        client.close_with(1009, "message too big");
                        break CLOSED_BY_US;
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        client.close_with(1007, "invalid UTF-8 in a text message");
                        break CLOSED_BY_US;
                    }
                    Some(Err(WsError::Protocol(e))) => {
                        debug!(client = %client.id, error = %e, "websocket protocol error");
                        client.close_with(1002, "protocol error");
                        break CLOSED_BY_US;
                    }
                    Some(Err(e)) => {
                        debug!(client = %client.id, error = %e, "websocket read failed");
                        break "read failed";
                    }
                }
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                match done {
                    Ok((cid, result)) => calls.answer(&cid, result),
                    // The call's task panicked: the client is told, as for a failed call.
                    Err(e) => {
                        warn!(client = %client.id, error = %e, "websocket call task failed");
                        calls.answer("", Err(DispatchError::WorkerDied));
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
            _ = stopping.wait_for(|s| *s) => {
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
    if let Some(hook) = &settings.on_disconnect
        && !stopped_at_once
    {
        calls.hook(hook, "disconnect").await;
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
        (CLOSED_BY_US, Some((1008, _))) => "queue_full",
        (CLOSED_BY_US, Some((1000, _))) => "idle",
        (CLOSED_BY_US, Some((1001, _))) => "shutdown",
        (CLOSED_BY_US, Some((1002, _))) => "protocol",
        (CLOSED_BY_US, Some((1007, _))) => "utf8",
        (CLOSED_BY_US, Some((1012, _))) => "changed",
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
        let Some(Out::Msg(m)) = out else { break };
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
    while let Ok(Out::Msg(m)) = rx.try_recv() {
        client.written(super::cost(&m));
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
    open: &'a Arc<Open>,
    client: &'a Arc<Client>,
}

impl Calls<'_> {
    /// Starts a call of the channel's service with one client message.
    fn spawn(
        &self,
        set: &mut JoinSet<(String, Result<Reply, DispatchError>)>,
        data: Bytes,
        binary: bool,
    ) {
        self.wsx.inner.messages_in.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.client.metrics {
            m.received.inc();
        }
        let cid = crate::random::random_hex(12);
        let wsx = self.wsx.clone();
        let open = self.open.clone();
        let client_id = self.client.id.clone();
        set.spawn(async move {
            let r = call(
                &wsx,
                &open,
                &client_id,
                &open.channel.service,
                &cid,
                "message",
                data,
                binary,
            )
            .await;
            (cid, r)
        });
    }

    /// Sends a call's answer to the client: the body of a success (nothing when it is
    /// empty), the error document of a failure.
    fn answer(&self, cid: &str, result: Result<Reply, DispatchError>) {
        let m = match result {
            Ok(r) if r.body.is_empty() && r.status < 400 => return,
            Ok(r) => {
                let binary = r.content_type.as_deref() == Some("application/octet-stream");
                message(r.body, binary)
            }
            Err(e) => {
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
        let cid = crate::random::random_hex(12);
        match call(
            self.wsx,
            self.open,
            &self.client.id,
            service,
            &cid,
            event,
            Bytes::new(),
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
) -> Result<Reply, DispatchError> {
    let now = Instant::now();
    let deadline = now + wsx.inner.request_timeout;
    let trace = crate::trace::TraceParent::new_root();
    let data_format = if binary {
        "raw"
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
    };
    match wsx.inner.pool.get() {
        Some(pool) => pool.invoke_at(&meta, &data, deadline, now).await,
        None => Err(DispatchError::Busy),
    }
}
