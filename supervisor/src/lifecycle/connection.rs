//! A worker's attached IPC connection: the writer task draining the worker's outbox, and
//! the reader loop that decodes frames — replies complete their streams, `PING`/`PONG`,
//! `LOG` records, `BYE`, and the `CALL`s a worker opens (`invoke` of another service,
//! `cache.*`). When the connection ends every pending stream is failed at once. It owns no
//! pool state of its own: it works through [`Pool`] and [`Worker`], and knows nothing above
//! the lifecycle layer.

use bytes::{Bytes, BytesMut};
use oxbus_ipc::{
    CallMetaIn, ErrorMsg, FLAG_ASYNC, Frame, FrameDecoder, InvokeMeta, Kind, LogRecord, ReplyMeta,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::{Instrument, debug, error, info, warn};

use crate::lifecycle::pool::{Pool, Reply, Worker, WorkerState};
use crate::trace::TraceParent;

/// Why a worker connection ended (logged at debug level).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionEnd {
    /// The worker closed the socket.
    #[error("connection closed")]
    Closed,
    /// Reading the socket failed.
    #[error("read error: {0}")]
    Read(#[source] std::io::Error),
    /// The bytes are not frames of the protocol.
    #[error("protocol error from worker: {0}")]
    Protocol(#[source] oxbus_ipc::Error),
    /// A frame's payload has no readable meta part.
    #[error("{0}")]
    Frame(#[from] oxbus_ipc::Error),
    /// A `REPLY`'s meta is not what the protocol says.
    #[error("bad REPLY meta: {0}")]
    ReplyMeta(#[source] serde_json::Error),
    /// A `CALL`'s meta is not what the protocol says.
    #[error("bad CALL meta: {0}")]
    CallMeta(#[source] serde_json::Error),
    /// The worker sent `ERROR` (`code: message`).
    #[error("worker sent ERROR: {0}")]
    WorkerError(String),
    /// A frame kind a ready worker may not send.
    #[error("unexpected {0} frame after READY")]
    Unexpected(&'static str),
}

/// Runs an attached worker connection until it ends: a writer task and this reader loop.
pub async fn run_connection(
    pool: Arc<Pool>,
    worker: Arc<Worker>,
    stream: UnixStream,
    mut buf: BytesMut,
) {
    let (mut rd, mut wr) = stream.into_split();
    let metrics = pool.metrics.enabled().then(|| pool.metrics.clone());
    let writer = {
        let worker = worker.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut spare = BytesMut::with_capacity(64 * 1024);
            loop {
                worker.wake_writer.notified().await;
                std::mem::swap(&mut *worker.outbox.lock().expect("outbox lock"), &mut spare);
                if !spare.is_empty() {
                    if let Err(e) = wr.write_all(&spare).await {
                        debug!(error = %e, "worker socket write failed");
                        break;
                    }
                    if let Some(m) = &metrics {
                        let out = &m.workers.to_worker;
                        out.bytes.inc_by(spare.len() as u64);
                        out.frames
                            .inc_by(worker.queued_frames.swap(0, Ordering::Relaxed));
                    }
                    spare.clear();
                }
                if worker.state() == WorkerState::Dead {
                    break;
                }
            }
        })
    };
    let decoder = FrameDecoder::default();
    let mut frames_in = 0u64;
    let reason = 'outer: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    frames_in += 1;
                    if let Err(reason) = handle_frame(&pool, &worker, frame) {
                        break 'outer reason;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    worker.send_frame(&Frame::json(
                        Kind::Error,
                        &ErrorMsg {
                            code: "protocol_error".into(),
                            message: e.to_string(),
                        },
                    ));
                    break 'outer ConnectionEnd::Protocol(e);
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(256 * 1024);
        }
        if let Some(m) = &metrics
            && frames_in > 0
        {
            m.workers.from_worker.frames.inc_by(frames_in);
            frames_in = 0;
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break ConnectionEnd::Closed,
            Ok(n) => {
                if let Some(m) = &metrics {
                    m.workers.from_worker.bytes.inc_by(n as u64);
                }
            }
            Err(e) => break ConnectionEnd::Read(e),
        }
    };
    // The frames decoded since the last read: those before a break too.
    if let Some(m) = &metrics
        && frames_in > 0
    {
        m.workers.from_worker.frames.inc_by(frames_in);
    }
    debug!(%reason, "worker connection ended");
    worker.set_state(WorkerState::Dead);
    worker.fail_pending();
    if let Some(ops) = &pool.server_ops {
        ops.worker_gone(worker.id);
    }
    worker.wake_writer.notify_one();
    let _ = writer.await;
    pool.capacity_changed();
}

fn handle_frame(pool: &Arc<Pool>, worker: &Arc<Worker>, frame: Frame) -> Result<(), ConnectionEnd> {
    match frame.kind {
        Kind::Reply => {
            let (meta, body) = frame.split_meta()?;
            let meta: ReplyMeta =
                serde_json::from_slice(&meta).map_err(ConnectionEnd::ReplyMeta)?;
            let tx = worker
                .pending
                .lock()
                .expect("pending lock")
                .remove(&frame.stream);
            if let Some(tx) = tx {
                let _ = tx.send(Reply {
                    status: meta.status,
                    content_type: meta.content_type,
                    headers: meta.headers,
                    body,
                    error: meta.error,
                    exc: meta.exc,
                });
            }
        }
        Kind::Pong => worker.last_pong_ms.store(pool.now_ms(), Ordering::Relaxed),
        Kind::Ping => worker.send_frame(&Frame::new(Kind::Pong, 0, frame.payload)),
        Kind::Log => match frame.parse_json::<LogRecord>() {
            Ok(rec) => emit_log(&rec),
            Err(e) => warn!(error = %e, "unreadable LOG frame from worker"),
        },
        Kind::Call => handle_worker_call(pool, worker, frame)?,
        Kind::Bye => worker.said_bye.store(true, Ordering::SeqCst),
        Kind::Cancel => {}
        Kind::Error => {
            let msg = frame
                .parse_json::<ErrorMsg>()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|e| e.to_string());
            return Err(ConnectionEnd::WorkerError(msg));
        }
        other => return Err(ConnectionEnd::Unexpected(other.name())),
    }
    Ok(())
}

fn serve_cache(pool: &Pool, worker: &Worker, frame: &Frame, meta: &[u8], body: Bytes) {
    let r = pool.caches.serve_ipc(meta, body);
    if frame.flags & FLAG_ASYNC == 0 {
        worker.send_reply(
            frame.stream,
            &CacheReplyMeta {
                status: r.status,
                content_type: r.content_type,
                error: r.error,
            },
            &r.body,
        );
    }
}

/// Answers a worker's `out.*` / `secret.*` call that ended without an answer of its op (the
/// op panicked, or its task was dropped at shutdown): 500, `error` `internal`.
struct OpGuard {
    /// The worker waiting for the answer; none once answered (or for an `ASYNC` call).
    worker: Option<Arc<Worker>>,
    stream: u32,
    op: String,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            error!(op = %self.op, "a worker's call ended without an answer (the server's handler failed)");
            let r = crate::lifecycle::ops::OpReply::error(
                500,
                "internal",
                &format!(
                    "{}: the server failed while handling the call (see its log)",
                    self.op
                ),
            );
            worker.send_reply(self.stream, &r.meta, &r.body);
        }
    }
}

/// The REPLY meta of a cache call (no allocation: every field is static).
#[derive(serde::Serialize)]
struct CacheReplyMeta {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// A `CALL` the worker opened: `invoke` of another service (from `self.invoke_async`), or a
/// `cache.*` operation.
fn handle_worker_call(
    pool: &Arc<Pool>,
    worker: &Arc<Worker>,
    frame: Frame,
) -> Result<(), ConnectionEnd> {
    let (raw_meta, body) = frame.split_meta()?;
    // Cache calls are answered here, in the connection's reader: a moka operation takes
    // well under a microsecond, less than handing it to another task would.
    if raw_meta.starts_with(br#"{"op":"cache."#) {
        serve_cache(pool, worker, &frame, &raw_meta, body);
        return Ok(());
    }
    // A worker's meta is always the object form (SPEC.md: only the supervisor sends the
    // compact array), though serde would read an array in the struct's field order.
    if raw_meta.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ConnectionEnd::CallMeta(serde::de::Error::custom(
            "a worker's CALL meta must be a JSON object",
        )));
    }
    let mut meta: CallMetaIn =
        serde_json::from_slice(&raw_meta).map_err(ConnectionEnd::CallMeta)?;
    if meta.op.starts_with("cache.") {
        // The same, with its meta in another layout than the fast check above expects.
        serve_cache(pool, worker, &frame, &raw_meta, body);
        return Ok(());
    }
    let fire_and_forget = frame.flags & FLAG_ASYNC != 0;
    if let Some(ops) = pool.server_ops.as_ref().filter(|o| o.handles(&meta.op)) {
        let ops = ops.clone();
        let worker = worker.clone();
        let stream = frame.stream;
        tokio::spawn(async move {
            // Whatever becomes of the call (a panic in the op unwinds this task), the worker
            // gets an answer: it waits for one with no timeout of its own.
            let worker_id = worker.id;
            let mut guard = OpGuard {
                worker: (!fire_and_forget).then_some(worker),
                stream,
                op: std::mem::take(&mut meta.op),
            };
            let r = ops.call(worker_id, &guard.op, raw_meta, body).await;
            if let Some(worker) = guard.worker.take() {
                worker.send_reply(stream, &r.meta, &r.body);
            }
        });
        return Ok(());
    }
    let stream = frame.stream;
    let json_reply = |status: u16, msg: &str| {
        (
            ReplyMeta {
                status,
                content_type: Some("application/json".into()),
                headers: vec![],
                error: None,
                exc: None,
            },
            serde_json::json!({ "error": msg }).to_string().into_bytes(),
        )
    };
    let Some(service) = meta.service.clone().filter(|_| meta.op == "invoke") else {
        if !fire_and_forget {
            let (m, b) = json_reply(501, &format!("unknown op: {}", meta.op));
            worker.send_reply(stream, &m, &b);
        }
        return Ok(());
    };
    let pool = pool.clone();
    let worker = worker.clone();
    let cid = meta.cid.clone().unwrap_or_default();
    // The callee keeps its caller's trace and tracestate; a call made outside any
    // invocation (or with a malformed context) starts one, without a tracestate.
    let (trace, tracestate) = match meta
        .traceparent
        .as_deref()
        .and_then(|t| TraceParent::parse(t.as_bytes()))
    {
        Some(t) => (
            t,
            meta.tracestate
                .take()
                .filter(|s| crate::trace::valid_tracestate(s.as_bytes())),
        ),
        None => (TraceParent::new_root(), None),
    };
    let span = tracing::debug_span!("request", cid = %cid, service = %service,
        trace_id = %trace.trace_id());
    tokio::spawn(
        async move {
            let deadline = Instant::now()
                + meta
                    .deadline_ms
                    .map(Duration::from_millis)
                    .unwrap_or(pool.call_timeout);
            let m: InvokeMeta<'_> = InvokeMeta {
                op: "invoke",
                service: &service,
                cid: &cid,
                channel: Some("invoke"),
                data_format: Some(meta.data_format.as_deref().unwrap_or("json")),
                method: None,
                path: None,
                params: None,
                query: None,
                headers: None,
                deadline_ms: meta.deadline_ms,
                remote_addr: None,
                scheme: None,
                port: None,
                channel_name: None,
                security: None,
                traceparent: Some(trace.as_str()),
                tracestate: tracestate.as_deref(),
                pubsub: None,
                mqtt: None,
                amqp: None,
                wsx: None,
                file: None,
                params_priority: None,
                job_type: None,
            };
            let result = pool.invoke(&m, &body, deadline).await;
            let caller = meta.caller.as_deref().unwrap_or("-");
            match &result {
                Err(e) => {
                    warn!(error = %e, cid = %cid, service = %service, caller = %caller,
                        trace_id = %trace.trace_id(), "invocation requested by a worker failed")
                }
                // Nobody waits for an ASYNC call's answer: without this line an
                // invoke_async of a service that does not exist (a typo, an undeployed
                // module) would vanish without a trace.
                Ok(r)
                    if fire_and_forget
                        && r.error.as_deref() == Some(oxbus_ipc::REPLY_ERROR_NO_SERVICE) =>
                {
                    warn!(cid = %cid, service = %service, caller = %caller, trace_id = %trace.trace_id(),
                        "invoke_async of a service that does not exist: dropped")
                }
                Ok(_) => {}
            }
            if fire_and_forget {
                return;
            }
            match result {
                Ok(r) => worker.send_reply(
                    stream,
                    &ReplyMeta {
                        status: r.status,
                        content_type: r.content_type,
                        headers: r.headers,
                        error: r.error,
                        exc: r.exc,
                    },
                    &r.body,
                ),
                Err(e) => {
                    let (m, b) = json_reply(503, &e.to_string());
                    worker.send_reply(stream, &m, &b);
                }
            }
        }
        .instrument(span),
    );
    Ok(())
}

fn emit_log(rec: &LogRecord) {
    let cid = rec.cid.as_deref().unwrap_or("");
    let service = rec.service.as_deref().unwrap_or("");
    // Absent (not empty) when the record has none: a record outside an invocation.
    let trace_id = rec.trace_id.as_deref();
    let logger = rec.logger.as_str();
    let msg = rec.msg.as_str();
    // The record's `extra=` fields as one JSON object text: `extra={"order":7}` in a text
    // line, an object under `fields.extra` in a JSON line (cli/logging.rs parses it back).
    let extra = rec
        .extra
        .as_ref()
        .filter(|m| !m.is_empty())
        .map(|m| serde_json::Value::Object(m.clone()).to_string());
    let extra = extra.as_deref().map(tracing::field::display);
    match rec.level.as_str() {
        "critical" | "error" => {
            error!(target: "oxbus::python", cid, service, trace_id, logger, extra, "{msg}")
        }
        "warning" => {
            warn!(target: "oxbus::python", cid, service, trace_id, logger, extra, "{msg}")
        }
        "info" => info!(target: "oxbus::python", cid, service, trace_id, logger, extra, "{msg}"),
        _ => debug!(target: "oxbus::python", cid, service, trace_id, logger, extra, "{msg}"),
    }
}
