//! The HTTP edge: accepts connections, guards them (header and body limits, slowloris and
//! idle timeouts), routes requests to channels and turns worker replies into responses.
//!
//! Besides the channels it answers `/healthz`, `/readyz` and `GET /openapi.json` (the
//! document of [`crate::edge::openapi`]).
//!
//! Every response carries `X-Oxbus-CID`, and every error is a JSON body that names the
//! problem. Connection timeouts are enforced here rather than by hyper's timer: hyper's
//! header-read timeout either also cuts idle keep-alive connections or does not apply after
//! the first request, depending on the version, and an AWS ALB needs idle keep-alive
//! connections to outlive its own 60 s idle timeout while a slowloris client must not.
//!
//! Each request's client address, scheme and port (and, from a trusted proxy, its request
//! id and W3C `traceparent` / `tracestate`) are worked out by [`crate::edge::forwarded`]:
//! the TCP peer unless it is one of `http.trusted_proxies`. Whether the peer is trusted is
//! decided once per connection. A trusted `traceparent` is passed on unchanged (Oxbus
//! records no spans of its own); a request without one starts a new trace
//! ([`crate::trace`]); either way its services get the trace in the `CALL` meta.
//!
//! A JSON-RPC channel's request is read here like any other and then answered by
//! [`crate::edge::jsonrpc`], whose calls go to the workers through [`HttpCall::invoke`], the same
//! path as a REST request's. A pubsub channel's is answered by [`crate::edge::pubsub`], with
//! the broker, after the same checks.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oxbus_ipc::InvokeMeta;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, warn};

use crate::cid::CidGen;
use crate::edge::conn::{Activity, ConnCount, ConnGuard, InRequest, Tracked};
use crate::edge::forwarded;
use crate::edge::head_gate::{HeadGate, Refusal};
use crate::edge::router::Match;
use crate::edge::routes::RoutingTable;
use crate::lifecycle::pool::{DispatchError, Pool};
use crate::lifecycle::supervisor::Event;
use crate::metrics::http::{ChannelHandles, MethodClass, RefusalReason};
use crate::model::channel::{ChannelType, DataFormat, ParamsPriority};
use crate::model::net::TrustedProxies;
use crate::node::Node;
use crate::trace::TraceParent;

/// What the HTTP edge works with (built by boot): the pool it dispatches into, the routing
/// table, the settings, the node state (readiness, store health) and the cid generator.
pub struct Ctx {
    /// Where this subsystem's figures are recorded (`metrics/`).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub pool: Arc<Pool>,
    pub routes: Arc<RoutingTable>,
    pub settings: crate::config::Settings,
    pub node: Arc<Node>,
    pub cids: Arc<CidGen>,
    /// The pub/sub broker: the REST API of `pubsub` channels.
    pub pubsub: crate::pubsub::Broker,
    /// The WebSocket sessions: `websocket` channels' upgraded connections go there.
    pub wsx: crate::wsx::Wsx,
}

pub(crate) type Body = Full<Bytes>;

/// Accepts and serves connections until shutdown, then waits for open connections to finish
/// (up to the drain deadline) and reports [`Event::HttpDrained`].
pub async fn serve(
    listener: TcpListener,
    cx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<Event>,
) {
    let conns = Arc::new(ConnCount::default());
    // What a request from an untrusted peer reports as its port.
    let local_port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => {
            warn!(error = %e, "cannot read the listener's address; requests report port 0");
            0
        }
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    conns.n.fetch_add(1, Ordering::SeqCst);
                    let guard = ConnGuard(conns.clone());
                    let cx = cx.clone();
                    let shutdown = shutdown.clone();
                    let peer = Peer::new(peer, local_port, cx.settings.http.trusted());
                    let conns = conns.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, peer, cx, shutdown, conns).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    // WebSocket clients are told (1001) and closed; their sessions count as open
    // connections until they end.
    cx.wsx.stop();
    let deadline = Instant::now() + Duration::from_millis(cx.settings.http.drain_timeout_ms);
    loop {
        let zero = conns.zero.notified();
        tokio::pin!(zero);
        zero.as_mut().enable();
        let open = conns.n.load(Ordering::SeqCst);
        if open == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline.into(), zero)
            .await
            .is_err()
        {
            warn!(
                open,
                "drain deadline passed with connections still open; closing them"
            );
            break;
        }
    }
    let _ = events.send(Event::HttpDrained);
}

/// The far end of one connection, worked out once per connection.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// The TCP peer's address, canonical (an IPv4 peer of a dual-stack listener is IPv4).
    ip: IpAddr,
    /// Whether it is one of `http.trusted_proxies`.
    trusted: bool,
    /// The listener's port.
    local_port: u16,
}

impl Peer {
    fn new(addr: SocketAddr, local_port: u16, trusted: &TrustedProxies) -> Peer {
        let ip = addr.ip().to_canonical();
        Peer {
            ip,
            trusted: trusted.contains(ip),
            local_port,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: Peer,
    cx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    conns: Arc<ConnCount>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        active: AtomicU32::new(0),
        // A new connection must send its first request head within the header timeout.
        head_started: AtomicU64::new(1),
        idle_since: AtomicU64::new(1),
        dispatched: AtomicU64::new(0),
        refused_at: AtomicU64::new(u64::MAX),
        refused: std::sync::Mutex::new(None),
    });
    let http = &cx.settings.http;
    let max_head = http.max_header_bytes.max(8192) + 1024;
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
        gate: HeadGate::new(max_head),
        out: BytesMut::new(),
        drained: 0,
        write_shut: false,
        linger: None,
    });
    let header_timeout = http.header_read_timeout_ms;
    let idle_timeout = http.keepalive_timeout_ms;
    let check = Duration::from_millis((header_timeout.min(idle_timeout) / 4).clamp(20, 1000));
    let svc = {
        let cx = cx.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let cx = cx.clone();
            let conns = conns.clone();
            let in_request = InRequest::start(&activity);
            // After a head that asks for an upgrade the head gate checks nothing more:
            // any answer but the switch closes the connection.
            let upgrade =
                crate::edge::head_gate::wants_upgrade(req.method(), req.version(), req.headers());
            // Requests are dispatched in the order of their heads: the stand-in of a
            // refused head is the one whose index the gate noted.
            let index = activity.dispatched.fetch_add(1, Ordering::Relaxed);
            let refused = if activity.refused_at.load(Ordering::Acquire) == index {
                activity.refused.lock().expect("refusal lock").take()
            } else {
                None
            };
            async move {
                // `metrics.enabled = false`: nothing is recorded (not even the clock read).
                let metrics = cx.metrics.enabled().then(|| {
                    // A refused head's own method, not the stand-in's `GET`.
                    let method = match &refused {
                        None => MethodClass::of(req.method()),
                        Some(r) => r
                            .method
                            .as_ref()
                            .map_or(MethodClass::Other, MethodClass::of),
                    };
                    (Instant::now(), method, cx.metrics.http.in_flight())
                });
                let mut channel = None;
                let mut resp = match refused {
                    Some(r) => {
                        refused_for(&cx, RefusalReason::of_head(r.status));
                        refusal(r, &cx.cids.next())
                    }
                    None => handle(req, &cx, peer, &mut channel, &conns).await,
                };
                if upgrade && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                if let Some((start, method, in_flight)) = metrics {
                    // One clock read for the figure and the connection's idle stamp.
                    let end = Instant::now();
                    cx.metrics.http.record(
                        channel.as_deref(),
                        method,
                        resp.status().as_u16(),
                        end.saturating_duration_since(start),
                    );
                    drop(in_flight);
                    in_request.end_at(end);
                } else {
                    drop(in_request);
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(max_head)
        // The gate's limit on header fields is the one that applies; hyper's must not be
        // lower (its default is 100).
        .max_headers(oxbus_proxy::h1::MAX_HEADER_FIELDS)
        .keep_alive(true)
        .serve_connection(io, svc)
        // A `websocket` channel's 101 hands the connection to its session.
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(check) => {
                let a = &activity;
                if a.active.load(Ordering::Relaxed) > 0 {
                    continue;
                }
                let now = a.now();
                let head = a.head_started.load(Ordering::Relaxed);
                if head != 0 && now.saturating_sub(head) > header_timeout {
                    debug!("request head not complete within the header timeout; closing");
                    return;
                }
                if head == 0 && now.saturating_sub(a.idle_since.load(Ordering::Relaxed)) > idle_timeout {
                    debug!("keep-alive connection idle; closing");
                    return;
                }
            }
        }
    }
}

fn json_response(status: StatusCode, cid: &str, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(cid) {
        h.insert("x-oxbus-cid", v);
    }
    r
}

/// A request the channel's gate turned away: 401 (with the scheme's challenge), 403, or 429
/// (with `Retry-After`).
fn rejection(r: crate::edge::gate::Rejection, cid: &str) -> Response<Body> {
    use crate::edge::gate::Rejection;
    match r {
        Rejection::Unauthorized { reason, challenge } => {
            let mut resp = error_response(StatusCode::UNAUTHORIZED, cid, &reason);
            if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            resp
        }
        Rejection::Forbidden(reason) => error_response(StatusCode::FORBIDDEN, cid, &reason),
        Rejection::TooMany {
            reason,
            retry_after_s,
        } => {
            let mut resp = error_response(StatusCode::TOO_MANY_REQUESTS, cid, &reason);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            resp
        }
    }
}

/// The answer to a head the gate refused: its status and reason, and a close (nothing of
/// the connection after that head is read).
fn refusal(r: Refusal, cid: &str) -> Response<Body> {
    debug!(status = r.status, reason = %r.reason, "request head refused");
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = error_response(status, cid, &r.reason);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// 405 for a method the channels of `path` do not take: `Allow` and the body
/// `{"error", "allowed", "cid"}`, the shape a service's own 405 has (`MethodNotAllowed`,
/// python-worker/oxbus/_dispatch.py), so a client reads both alike.
fn method_not_allowed(cid: &str, method: &str, path: &str, allowed: &[String]) -> Response<Body> {
    let list = allowed.join(", ");
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        cid,
        serde_json::json!({
            "error": format!("method {method} not allowed for {path}; allowed: {list}"),
            "allowed": allowed,
            "cid": cid,
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&list) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

fn error_response(status: StatusCode, cid: &str, msg: &str) -> Response<Body> {
    json_response(status, cid, serde_json::json!({ "error": msg, "cid": cid }))
}

/// Counts a request the edge answered itself (when metrics are on).
pub(crate) fn refused_for(cx: &Ctx, reason: RefusalReason) {
    if cx.metrics.enabled() {
        cx.metrics.http.refused(reason);
    }
}

/// Handles one request; `metrics` gets the metric handles of the channel that took it.
async fn handle(
    req: Request<Incoming>,
    cx: &Ctx,
    peer: Peer,
    metrics: &mut Option<Arc<ChannelHandles>>,
    conns: &Arc<ConnCount>,
) -> Response<Body> {
    // A request id from a trusted proxy is the cid; anything else gets one of ours.
    let cid = match peer.trusted.then(|| forwarded::request_id(req.headers())) {
        Some(Some(id)) => id.to_owned(),
        _ => cx.cids.next(),
    };
    let path = req.uri().path();
    match path {
        "/healthz" => {
            // The process is alive and serving; a store outage is reported, not fatal.
            let store = if cx.node.store_ok.load(Ordering::Relaxed) {
                "ok"
            } else {
                "degraded"
            };
            return json_response(
                StatusCode::OK,
                &cid,
                serde_json::json!({"status": "ok", "store": store}),
            );
        }
        "/readyz" => {
            let ready_workers = cx.pool.ready_count();
            let ok = cx.node.ready.load(Ordering::SeqCst) && ready_workers > 0;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return json_response(
                status,
                &cid,
                serde_json::json!({
                    "status": if ok { "ready" } else { "not ready" },
                    "workers_ready": ready_workers,
                    "workers_wanted": cx.settings.worker_count(),
                }),
            );
        }
        // GET only: a channel of another method may use the path (the table decides).
        "/openapi.json" if req.method() == hyper::Method::GET => {
            return match crate::edge::openapi::render(&cx.pool, &cx.routes, &cx.settings, &cx.node)
            {
                Ok(doc) => {
                    let mut r = Response::new(Full::new(Bytes::from(doc)));
                    let h = r.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    if let Ok(v) = HeaderValue::from_str(&cid) {
                        h.insert("x-oxbus-cid", v);
                    }
                    r
                }
                Err(e) => {
                    let mut r =
                        error_response(StatusCode::SERVICE_UNAVAILABLE, &cid, &e.to_string());
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                }
            };
        }
        _ => {}
    }
    let method = req.method().as_str();
    // Read before the table: a WebSocket session let in by this table is checked again if
    // a newer one was installed before it registered (`wsx::Wsx::accept`).
    let wsx_generation = cx.wsx.generation();
    let router = cx.routes.current();
    let (channel, params) = match router.lookup(method, path) {
        Match::Found {
            channel,
            params,
            metrics: handles,
        } => {
            *metrics = Some(handles);
            // A path parameter is percent-decoded: `%00` would hand a service a NUL, which
            // no name or path takes (and C code underneath ends a string at).
            if let Some((name, _)) = params.iter().find(|(_, v)| v.contains('\0')) {
                refused_for(cx, RefusalReason::BadHead);
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &cid,
                    &format!("path parameter {name} contains NUL (%00)"),
                );
            }
            (channel, params)
        }
        Match::NotFound => {
            refused_for(cx, RefusalReason::NotFound);
            return error_response(
                StatusCode::NOT_FOUND,
                &cid,
                &format!("no channel for {method} {path}"),
            );
        }
        Match::WrongMethod(allowed) => {
            refused_for(cx, RefusalReason::MethodNotAllowed);
            return method_not_allowed(&cid, method, path, &allowed);
        }
    };
    let limits = &cx.settings.http;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        refused_for(cx, RefusalReason::HeadersTooLarge);
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &cid,
            &format!(
                "request headers of {header_bytes} bytes exceed the limit of {} bytes",
                limits.max_header_bytes
            ),
        );
    }
    let origin = forwarded::origin(
        peer.ip,
        peer.trusted,
        peer.local_port,
        req.headers(),
        limits.trusted(),
    );
    // The channel's checks, before the body is read or a worker asked for anything. A
    // WebSocket client may authenticate after the upgrade instead (Zato's protocol; or
    // `first_message_auth` and no credential at the upgrade): then only the allow list and
    // rate limit are checked here, and the session gets the definition's check.
    let mut admit_later = false;
    let caller = match router.gate.for_channel(&channel) {
        Some(g) if g.is_open() => None,
        Some(g) => {
            let name = channel.name.as_deref().unwrap_or(&channel.url_path);
            let later = channel.websocket.as_ref().is_some_and(|w| {
                w.protocol == crate::model::websocket::WsProtocol::Zato
                    || (w.first_message_auth
                        && g.verifier()
                            .is_some_and(|v| !v.carries_credential(req.headers())))
            });
            let checked = if later {
                g.admit_later(origin.addr, name).map(|v| {
                    admit_later = v.is_some();
                    None
                })
            } else {
                g.admit(origin.addr, req.headers(), name).await
            };
            match checked {
                Ok(c) => c,
                Err(r) => {
                    use crate::edge::gate::Rejection;
                    refused_for(
                        cx,
                        match &r {
                            Rejection::Unauthorized { .. } => RefusalReason::Unauthorized,
                            Rejection::Forbidden(_) => RefusalReason::Forbidden,
                            Rejection::TooMany { .. } => RefusalReason::RateLimited,
                        },
                    );
                    return rejection(r, &cid);
                }
            }
        }
        // Every installed routing table is compiled with its gate; a channel without one
        // is refused rather than served unchecked.
        None => {
            refused_for(cx, RefusalReason::Unchecked);
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &cid,
                "the channel's checks are not compiled",
            );
        }
    };
    // A pubsub channel that names no security definition lets in the callers of its
    // endpoints' definitions: they are checked here too, before the body is read.
    let pubsub_caller = if channel.channel_type == ChannelType::Pubsub {
        match crate::edge::pubsub::caller_of(cx, &router, caller.as_ref(), req.headers(), &cid)
            .await
        {
            Ok(c) => Some(c),
            Err(r) => return r,
        }
    } else {
        None
    };
    // A WebSocket channel's request is its handshake: answered 101 (the session takes the
    // connection) or why not, with no body read.
    if channel.channel_type == ChannelType::Websocket {
        conns.n.fetch_add(1, Ordering::SeqCst);
        let hold = Box::new(ConnGuard(conns.clone()));
        let security_def = channel
            .security
            .as_deref()
            .and_then(|name| router.gate.verifier(name))
            .map(|(d, _)| d.clone());
        let u = crate::edge::websocket::Upgrade {
            channel,
            security_def,
            generation: wsx_generation,
            params,
            origin,
            caller,
            admit_later,
            cid: &cid,
            hold,
        };
        return crate::edge::websocket::upgrade(cx, req, u);
    }
    let too_large = || {
        refused_for(cx, RefusalReason::BodyTooLarge);
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &cid,
            &format!(
                "request body exceeds the limit of {} bytes",
                limits.max_body_bytes
            ),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_body_bytes as u64
    {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_large();
        }
        Err(e) => {
            refused_for(cx, RefusalReason::BadBody);
            return error_response(
                StatusCode::BAD_REQUEST,
                &cid,
                &format!("cannot read the request body: {e}"),
            );
        }
    };
    // A pubsub channel is answered here, by the server: its API reads the body by its
    // content type (and checks a JSON body's depth itself).
    if let Some(caller) = pubsub_caller {
        let req = crate::edge::pubsub::Request {
            parts: &parts,
            body: &body,
            cid: &cid,
            caller,
        };
        return crate::edge::pubsub::handle(cx, &channel, req).await;
    }
    // A body the worker will decode as JSON may nest only so deep (its decoder recurses).
    let json_body =
        channel.channel_type == ChannelType::JsonRpc || channel.data_format == DataFormat::Json;
    if json_body && crate::edge::json_depth::too_deep(&body) {
        refused_for(cx, RefusalReason::BadBody);
        let detail = serde_json::json!({
            "error": crate::edge::json_depth::message(),
            "limit": crate::edge::json_depth::MAX_JSON_DEPTH,
            "cid": cid,
        });
        // A JSON-RPC client gets it as a parse error object (id null: none was read).
        let body = if channel.channel_type == ChannelType::JsonRpc {
            serde_json::json!({
                "jsonrpc": "2.0",
                "error": {
                    "code": crate::edge::jsonrpc::PARSE_ERROR,
                    "message": "Parse error",
                    "data": detail,
                },
                "id": null,
            })
        } else {
            detail
        };
        return json_response(StatusCode::BAD_REQUEST, &cid, body);
    }
    // A trusted proxy's trace context is passed on as it came (with its tracestate);
    // anything else starts a trace.
    let (trace, tracestate) = match peer
        .trusted
        .then(|| forwarded::traceparent(&parts.headers))
        .flatten()
    {
        Some(incoming) => (incoming, forwarded::tracestate(&parts.headers)),
        None => (TraceParent::new_root(), None),
    };
    let call = HttpCall {
        cx,
        origin,
        trace: &trace,
        tracestate: tracestate.as_deref(),
        parts: &parts,
        strip_forwarding: !peer.trusted,
        deadline: Instant::now() + cx.settings.request_timeout(),
        channel_name: channel.name.as_deref(),
        params_priority: channel.params_priority.map(ParamsPriority::as_str),
        caller: caller.as_ref(),
    };
    if channel.channel_type == ChannelType::JsonRpc {
        return crate::edge::jsonrpc::handle(&call, &channel, &cid, &body).await;
    }
    // A debug-level span: with the default `info` level it costs nothing per request (an
    // info span would format its fields on every request), and the events that matter at
    // `info` and above carry the cid themselves.
    let span = tracing::debug_span!("request", cid = %cid, service = %channel.service,
        trace_id = %trace.trace_id());
    let result = call
        .invoke(
            ChannelType::Rest,
            &channel.service,
            &cid,
            channel.data_format,
            &params,
            &body,
        )
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    match result {
        Ok(mut reply) => {
            debug!(status = reply.status, bytes = reply.body.len(), "answered");
            if reply.status == StatusCode::METHOD_NOT_ALLOWED.as_u16() {
                allow_from_channel(&mut reply, &channel.methods, parts.method.as_str());
            }
            build_reply(reply, &cid)
        }
        // Counted as refused by `invoke`.
        Err(e) => dispatch_error(e, &cid, &channel.service, trace.trace_id()),
    }
}

/// What the invocations of one HTTP request share: a REST request makes one, a JSON-RPC batch
/// one per call. The IPC meta of an HTTP invocation is built here only, so every channel type
/// hands the worker the same request facts (method, path, headers, client origin) under the
/// same deadline.
pub(crate) struct HttpCall<'a> {
    cx: &'a Ctx,
    parts: &'a hyper::http::request::Parts,
    /// Leave out the forwarding and trace context headers (the peer is not a trusted proxy).
    strip_forwarding: bool,
    origin: forwarded::Origin,
    /// When the request's time (`http.request_timeout_ms`) is up, for every call it makes.
    deadline: Instant,
    /// The channel's name and who its security definition let in.
    channel_name: Option<&'a str>,
    /// The channel's `params_priority`, when it sets one.
    params_priority: Option<&'static str>,
    caller: Option<&'a crate::edge::gate::Caller>,
    /// The request's trace context, the same for every call it makes.
    trace: &'a TraceParent,
    /// The trusted proxy's `tracestate` that goes with it, if any.
    tracestate: Option<&'a str>,
}

impl HttpCall<'_> {
    /// The request's trace id (32 hex digits), for the log lines that name its cid.
    pub(crate) fn trace_id(&self) -> &str {
        self.trace.trace_id()
    }

    /// Counts a call of this request that the edge answered itself (`reason`): a REST
    /// request makes one call, a JSON-RPC batch one per entry.
    pub(crate) fn refused(&self, reason: RefusalReason) {
        refused_for(self.cx, reason);
    }

    /// Runs `service` on a worker with `body` as the request body. A call no worker
    /// answered counts as refused, by why ([`refusal_of`]), whatever the channel's type.
    pub(crate) async fn invoke(
        &self,
        channel: ChannelType,
        service: &str,
        cid: &str,
        data_format: DataFormat,
        params: &[(String, String)],
        body: &[u8],
    ) -> Result<crate::lifecycle::pool::Reply, DispatchError> {
        let parts = self.parts;
        let now = Instant::now();
        let left = self.deadline.saturating_duration_since(now);
        let meta = InvokeMeta {
            op: "invoke",
            service,
            cid,
            channel: Some(channel.as_str()),
            data_format: Some(data_format.as_str()),
            method: Some(parts.method.as_str()),
            path: Some(parts.uri.path()),
            params: Some(params),
            query: Some(parts.uri.query().unwrap_or("")),
            headers: Some(Headers {
                map: &parts.headers,
                strip_forwarding: self.strip_forwarding,
            }),
            deadline_ms: Some(left.as_millis() as u64),
            remote_addr: Some(self.origin.addr),
            scheme: Some(self.origin.scheme),
            port: Some(self.origin.port),
            channel_name: self.channel_name,
            security: self.caller.map(|c| oxbus_ipc::SecurityMeta {
                name: &c.name,
                kind: c.kind,
                username: c.username.as_deref(),
                subject: c.subject.as_deref(),
            }),
            traceparent: Some(self.trace.as_str()),
            tracestate: self.tracestate,
            pubsub: None,
            mqtt: None,
            amqp: None,
            wsx: None,
            file: None,
            params_priority: self.params_priority,
            job_type: None,
        };
        let result = self
            .cx
            .pool
            .invoke_at(&meta, body, self.deadline, now)
            .await;
        if let Err(e) = &result {
            self.refused(refusal_of(e));
        }
        result
    }
}

/// The refusal reason of a call no worker answered.
fn refusal_of(e: &DispatchError) -> RefusalReason {
    match e {
        DispatchError::Busy | DispatchError::QueueTimeout => RefusalReason::Busy,
        DispatchError::WorkerDied => RefusalReason::WorkerDied,
        DispatchError::Deadline => RefusalReason::Deadline,
        DispatchError::TooLarge => RefusalReason::BodyTooLarge,
    }
}

/// Serialises a header map as the `[[name, value], …]` list of the IPC spec, in arrival
/// order, without copying it into an intermediate vector. From an untrusted peer the
/// forwarding headers (`X-Forwarded-*`, `Forwarded`) and the trace context headers
/// (`traceparent`, `tracestate`) are left out: nobody vouches for what they claim, and a
/// service that reads them itself must not be fooled by them.
struct Headers<'a> {
    map: &'a hyper::HeaderMap,
    strip_forwarding: bool,
}

impl serde::Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let strip = self.strip_forwarding;
        // The length is only known up front when nothing is left out.
        let mut seq = s.serialize_seq((!strip).then_some(self.map.len()))?;
        for (k, v) in self.map {
            if strip && (forwarded::is_forwarding_header(k) || forwarded::is_trace_header(k)) {
                continue;
            }
            let v: Cow<str> = String::from_utf8_lossy(v.as_bytes());
            seq.serialize_element(&(k.as_str(), v))?;
        }
        seq.end()
    }
}

fn build_reply(reply: crate::lifecycle::pool::Reply, cid: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(reply.body));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or_else(|_| {
        warn!(
            status = reply.status,
            "service returned an invalid status code; sending 500"
        );
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let h = r.headers_mut();
    for (k, v) in &reply.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => {
                h.append(k, v);
            }
            _ => warn!(header = %k, "service set an invalid response header; dropped"),
        }
    }
    if let Some(ct) = reply
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(cid) {
        h.insert("x-oxbus-cid", v);
    }
    r
}

/// A service's 405 that names no methods (`raise MethodNotAllowed()` in a plain `handle`,
/// which takes every verb the channel does): `Allow` lists the channel's methods but the
/// refused one, and the JSON body gets them as `allowed` (and its default message the
/// list), the shape of the server's own 405. Nothing is added when no method is left, or
/// for a channel that takes any method: it has no list to send, and the service's
/// `allowed=` is the only source then (docs/WORKER.md).
fn allow_from_channel(reply: &mut crate::lifecycle::pool::Reply, methods: &[String], method: &str) {
    if reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("allow"))
    {
        return;
    }
    let mut allowed: Vec<&String> = methods
        .iter()
        .filter(|m| !m.eq_ignore_ascii_case(method))
        .collect();
    if allowed.is_empty() {
        return;
    }
    allowed.sort();
    allowed.dedup();
    let list = allowed
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(serde_json::Value::Object(mut doc)) =
        serde_json::from_slice::<serde_json::Value>(&reply.body)
        && !doc.contains_key("allowed")
    {
        let prefix = format!("method {method} not allowed for ");
        if let Some(serde_json::Value::String(e)) = doc.get_mut("error")
            && e.starts_with(&prefix)
            && !e.contains("; allowed: ")
        {
            e.push_str("; allowed: ");
            e.push_str(&list);
        }
        doc.insert("allowed".into(), serde_json::json!(allowed));
        if let Ok(body) = serde_json::to_vec(&doc) {
            reply.body = body.into();
        }
    }
    reply.headers.push(("allow".into(), list));
}

fn dispatch_error(e: DispatchError, cid: &str, service: &str, trace_id: &str) -> Response<Body> {
    let (status, retry) = match e {
        DispatchError::Busy | DispatchError::QueueTimeout => {
            (StatusCode::SERVICE_UNAVAILABLE, true)
        }
        DispatchError::WorkerDied => {
            warn!(
                cid,
                service, trace_id, "worker died with the request in flight"
            );
            (StatusCode::SERVICE_UNAVAILABLE, true)
        }
        DispatchError::Deadline => {
            warn!(cid, service, trace_id, "request deadline passed");
            (StatusCode::GATEWAY_TIMEOUT, false)
        }
        DispatchError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, false),
    };
    let mut r = error_response(status, cid, &e.to_string());
    if retry {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}
