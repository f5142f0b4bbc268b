//! The proxy's HTTP/1 data path: one task per client connection reads a request head,
//! chooses a server, writes the rewritten head (with `X-Forwarded-*` and a request id) and
//! the body bytes already read to a pooled server connection in one send, reads the answer
//! and writes it back in one send — HAProxy's shape, with no second task, channel or header
//! map between the two sides. Bodies go through as they came (chunked ones are followed, not
//! decoded: [`crate::h1`]).
//!
//! Around each exchange: the slowloris guard (a request head must be complete within
//! `header_read_timeout_ms` of its first byte, or of accept for a connection's first
//! request), the keep-alive idle timeout, retries of what never reached a server on another
//! one, `Connection: close` while the process hands over to its successor, and the
//! per-server counters.
//!
//! Upgrades (WebSocket): a request asking for one (HTTP/1.1, `Upgrade` listing
//! `websocket`, `Connection: upgrade`, no body: [`h1::ConnectionHeader::carries_upgrade`])
//! goes to its server like any GET but with `Upgrade: websocket` and `Connection: upgrade`
//! ([`rewrite`]). Answered a `101` that is the switch asked for (HTTP/1.1, `Connection:
//! upgrade`, `Upgrade: websocket`), the answer head goes to the client and the connection
//! becomes a tunnel ([`tunnel`]): bytes copied both ways in this same task, the client's
//! bytes read behind its head first, ends passed on as half-closes, with
//! `tunnel_idle_timeout_ms` as its only timeout; it counts as in flight on its server, is
//! never retried or pooled, and runs through a stop or a hand-over like any request in
//! flight (until it ends or the grace period does). Answered another `101`, the client gets
//! a 502; answered anything else, the answer is relayed; either way both connections close:
//! what the client sent behind an upgrade's head is never read as a request. Any other
//! request's `Upgrade` (another protocol, HTTP/1.0, a body) is hop-by-hop, dropped.
//!
//! pingora runs the process around it (listeners, TLS, the graceful upgrade's socket
//! hand-over, signals, runtimes, health checks and discovery); this module is the
//! [`ServerApp`] its listeners hand each accepted connection to. Earlier versions ran on
//! pingora's HTTP proxy pipeline, then on hyper's server and client connections (two tasks
//! and a channel per request); both cost more CPU per request than HAProxy, this path about
//! a quarter less (docs/PERFORMANCE.md).
//!
//! This file owns the exchange (choosing a server, retries, the answer's relay, the switch
//! to a tunnel) and the counters; the client side's state and head reading are in
//! [`client`], the head rewrites in [`rewrite`], the deadlined I/O and body relay in
//! [`relay`], an upgraded connection's byte copy in [`tunnel`].

mod client;
mod relay;
mod rewrite;
mod tunnel;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::LINGER;
use crate::h1::{self, BodyKind, Framing};
use crate::pool::UpConn;
use crate::upstream::{Registry, Upstream};
use client::{Client, Peer, Stop};
use relay::{PumpErr, flush, pump, read_within, write_all, write_all_counted};
use rewrite::ReqId;

/// Process-wide counters (per-server ones live in the [`Registry`]).
#[derive(Debug, Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub no_upstream: AtomicU64,
    pub header_too_large: AtomicU64,
    pub bad_requests: AtomicU64,
    pub retries: AtomicU64,
    /// Tunnels of upgraded connections open now (per server, those opened: in the
    /// [`Registry`]).
    pub tunnels_open: AtomicU64,
}

/// The settings the request path reads.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// How long a server may take to start answering, and how long either side may make no
    /// progress while a body moves.
    pub read_timeout: Duration,
    pub header_timeout: Duration,
    /// How long a request with `Expect: 100-continue` waits for the server's "100
    /// Continue" before its body is sent anyway.
    pub expect_continue_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// How long the tunnel of an upgraded connection may move no byte either way (it has
    /// no other timeout).
    pub tunnel_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub retries: usize,
    /// How long a request waits for servers' first active check.
    pub first_check_wait: Duration,
    /// Pass a client's `traceparent` / `tracestate` on (`proxy.pass_trace_context`).
    pub pass_trace_context: bool,
}

pub struct Balancer {
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub registry: Arc<Registry>,
    pub limits: Limits,
    pub totals: Arc<Totals>,
    /// Set when this process starts handing over (upgrade) or stopping: answers carry
    /// `Connection: close` so clients reconnect, reaching the successor.
    pub draining: Arc<AtomicBool>,
    /// Request ids made here: `<process start, hex>-<counter, hex>`.
    pub id_prefix: String,
    pub id_counter: AtomicU64,
}

/// A server's answer head may be this large.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why no connection to a server was had (logged, and in the 502's message).
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("connect timed out after {} ms", .0.as_millis())]
    TimedOut(Duration),
}

/// Counts an attempt on a server as in flight until dropped.
struct InFlight(Arc<Upstream>);

impl InFlight {
    fn new(u: Arc<Upstream>) -> Self {
        u.requests.fetch_add(1, Ordering::Relaxed);
        u.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(u)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a tunnel as open until dropped (however its task ends: at the runtime's shutdown
/// after a grace period too).
struct OpenTunnel<'a>(&'a AtomicU64);

impl<'a> OpenTunnel<'a> {
    fn new(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(open)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What to do with the client connection after an exchange.
enum Next {
    Again,
    Close,
    /// Close after draining what the client may still send (an error answer went out
    /// before its request was read to the end).
    Linger,
}

/// What an answer's head said, for the rest of the exchange.
struct RespInfo {
    status: u16,
    /// A `101` that switches a carried upgrade as asked
    /// ([`h1::ConnectionHeader::switches_to_websocket`]): the connection becomes a tunnel.
    switching: bool,
    body: BodyKind,
    /// The server connection may serve another request after this answer.
    up_keep: bool,
    /// The client connection stays open after this answer.
    client_keep: bool,
}

/// Per-connection buffers for the heads written.
struct Scratch {
    /// The request head for the server, then the body bytes sent with it.
    req: Vec<u8>,
    resp: Vec<u8>,
}

impl Balancer {
    /// The next server, waiting for first checks when every offered server is unchecked.
    async fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        if let Some(u) = self.registry.pick(&self.lb, tried) {
            return Some(u);
        }
        let wait_until = Instant::now() + self.limits.first_check_wait;
        loop {
            let checked = self.registry.checked.notified();
            tokio::pin!(checked);
            checked.as_mut().enable();
            if let Some(u) = self.registry.pick(&self.lb, tried) {
                return Some(u);
            }
            // Servers not checked yet (this process just started, e.g. after an upgrade,
            // or a server just joined): wait for their first check rather than fail.
            if !self.registry.pending(&self.lb)
                || tokio::time::timeout_at(wait_until, checked).await.is_err()
            {
                return None;
            }
        }
    }

    /// An idle pooled connection to `u` (true: reused) unless `fresh`, or a new one.
    async fn checkout(
        &self,
        u: &Upstream,
        now: std::time::Instant,
        fresh: bool,
    ) -> Result<(UpConn, bool), ConnectError> {
        if !fresh && let Some(c) = u.pool.take(now) {
            return Ok((c, true));
        }
        let connect = async {
            let s = TcpStream::connect(u.addr).await?;
            s.set_nodelay(true)?;
            Ok::<_, io::Error>(s)
        };
        match tokio::time::timeout(self.limits.connect_timeout, connect).await {
            Ok(Ok(io)) => Ok((UpConn::new(io, now), false)),
            Ok(Err(e)) => Err(ConnectError::Io(e)),
            Err(_) => Err(ConnectError::TimedOut(self.limits.connect_timeout)),
        }
    }

    /// Writes an answer made here (a JSON error).
    async fn answer(
        &self,
        c: &mut Client,
        status: u16,
        msg: &str,
        id: Option<&ReqId>,
        close: bool,
    ) {
        let body = serde_json::json!({ "error": msg }).to_string();
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        h1::put_status(&mut out, status);
        out.extend_from_slice(h1::reason(status).as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(id) = id {
            h1::put_header(&mut out, b"x-request-id", id.bytes());
        }
        if close || c.closing || self.draining.load(Ordering::Relaxed) {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        let limit = self.limits.read_timeout;
        if write_all(&mut c.io, &out, &mut c.timer, limit)
            .await
            .is_ok()
        {
            let _ = flush(&mut c.io, &mut c.timer, limit).await;
        }
    }

    /// The connection after an error answer: lingering if the request was not read to its
    /// end, closed while stopping or handing over, otherwise kept.
    fn after_error(&self, c: &Client, request_read: bool) -> Next {
        if !request_read {
            Next::Linger
        } else if c.closing || self.draining.load(Ordering::Relaxed) {
            Next::Close
        } else {
            Next::Again
        }
    }

    /// Sends the rest of a request body from the client to the server. `Ok(true)`: all of
    /// it; `Ok(false)`: the server stopped reading (it may have answered early: read on);
    /// `Err`: the exchange ends so (the client left or stalled mid-body, or its chunked
    /// framing is malformed: answered 400).
    async fn send_body(
        &self,
        c: &mut Client,
        id: &ReqId,
        body: &mut Framing,
        up: &mut UpConn,
        u: &Upstream,
    ) -> Result<bool, Next> {
        let limit = self.limits.read_timeout;
        let sent = pump(
            &mut c.io,
            &mut c.buf,
            body,
            &mut up.io,
            &mut c.timer,
            &mut c.up_timer,
            limit,
        )
        .await;
        match sent {
            Ok(()) => Ok(true),
            Err(PumpErr::Src(e)) => {
                debug!(error = %e, "client failed while sending a request body");
                Err(Next::Close)
            }
            Err(PumpErr::Bad(b)) => {
                self.totals.bad_requests.fetch_add(1, Ordering::Relaxed);
                self.answer(c, 400, b, Some(id), true).await;
                Err(Next::Linger)
            }
            Err(PumpErr::Dst(e)) => {
                debug!(upstream = %u.addr, error = %e, "server stopped reading a request body");
                Ok(false)
            }
        }
    }

    /// The server switched protocols (`101`) for a carried upgrade: its answer head goes to
    /// the client with whatever the server sent behind it, in one send, and the connection
    /// becomes a tunnel ([`tunnel`]) until it ends; the client's bytes read behind its head
    /// go to the server first. The tunnel has only its own idle timeout: no read timeout,
    /// no keep-alive timeout. A stopping or handing-over process does not end it: like a
    /// request in flight, it runs until it ends or the grace period does (pingora then
    /// drops the runtime's tasks, which closes both sides). Then the client connection is
    /// closed; the server connection never goes back to the pool. While the tunnel is open
    /// it counts as in flight on its server, so least-connections spreads tunnels too.
    ///
    /// Many WebSockets sit idle behind a proxy for hours, so an open tunnel keeps as little
    /// memory as it can: the connection's read buffers (16 KiB and more each) and head
    /// buffers are released before it starts, the client's early bytes kept in an
    /// allocation of their own size, and the tunnel holds a copy buffer only while a
    /// destination does not take what was read ([`tunnel`]).
    async fn tunnel(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        up: UpConn,
        u: &Upstream,
        started: std::time::Instant,
    ) -> Next {
        let lim = &self.limits;
        let UpConn {
            io: mut up_io,
            buf: up_buf,
            ..
        } = up;
        s.resp.extend_from_slice(&up_buf);
        drop(up_buf);
        if write_all(&mut c.io, &s.resp, &mut c.timer, lim.read_timeout)
            .await
            .is_err()
            || flush(&mut c.io, &mut c.timer, lim.read_timeout)
                .await
                .is_err()
        {
            return Next::Close;
        }
        // No further request is read on this connection: its buffers go now, not when the
        // tunnel ends.
        let early = c.buf.to_vec();
        c.buf = BytesMut::new();
        s.req = Vec::new();
        s.resp = Vec::new();
        u.latency.record(started.elapsed());
        u.tunnels.fetch_add(1, Ordering::Relaxed);
        let _open = OpenTunnel::new(&self.totals.tunnels_open);
        debug!(upstream = %u.addr, early_bytes = early.len(), "tunnel open");
        let o = tunnel::run(&mut c.io, early, &mut up_io, lim.tunnel_idle_timeout).await;
        debug!(
            upstream = %u.addr,
            end = %o.end,
            up_bytes = o.up,
            down_bytes = o.down,
            "tunnel closed"
        );
        Next::Close
    }

    /// One request and its answer.
    async fn exchange(&self, c: &mut Client, s: &mut Scratch, first: bool) -> Next {
        let req = match self.read_request(c, &mut s.req, first).await {
            Ok(r) => r,
            Err(Stop::Quiet) => return Next::Close,
            Err(Stop::Answer(status, msg)) => {
                self.answer(c, status, &msg, None, true).await;
                return Next::Linger;
            }
        };
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        // The body bytes already read go out with the head; when that is the whole body,
        // the request can be sent again if a server never took it.
        let mut body = Framing::new(req.body);
        let take = match body.advance(&c.buf) {
            Ok(n) => n,
            Err(b) => {
                self.totals.bad_requests.fetch_add(1, Ordering::Relaxed);
                self.answer(c, 400, b.0, Some(&req.id), true).await;
                return Next::Linger;
            }
        };
        s.req.extend_from_slice(&c.buf[..take]);
        c.buf.advance(take);
        let whole = body.done();
        // The connection of an upgrade request carries no other request, whatever the answer:
        // an error answer closes it too, lingering (what the client sent behind its head is
        // never read as a request).
        let more = !req.upgrade;
        // A client waiting for "100 Continue" sends its body only once the server asks.
        let mut wait_continue = req.expect_continue && !whole;

        let lim = &self.limits;
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); crate::MAX_UPSTREAMS + 1];
        let mut n_tried = 0usize;
        // After a pooled connection failed under a request, the next attempt connects anew.
        let mut fresh = false;
        // Attempts: one per server tried, plus re-sends of requests a stale pooled
        // connection never took (bounded).
        for _ in 0..(lim.retries + 4) {
            let Some(u) = self.pick(&tried[..n_tried]).await else {
                self.totals.no_upstream.fetch_add(1, Ordering::Relaxed);
                let msg = if n_tried == 0 {
                    "no server is up"
                } else {
                    "no other server is up to retry on"
                };
                self.answer(c, 503, msg, Some(&req.id), !(whole && more))
                    .await;
                return self.after_error(c, whole && more);
            };
            if n_tried < tried.len() {
                tried[n_tried] = u.addr;
                n_tried += 1;
            }
            let flight = InFlight::new(u);
            let u = &flight.0;
            let started = std::time::Instant::now();
            let (mut up, reused) = match self.checkout(u, started, fresh).await {
                Ok(x) => x,
                Err(e) => {
                    u.connect_failures.fetch_add(1, Ordering::Relaxed);
                    u.errors.fetch_add(1, Ordering::Relaxed);
                    self.registry.mark_passive_down(u);
                    warn!(upstream = %u.addr, error = %e, "cannot connect to server; marked down");
                    // Nothing reached the server: any method may go to another one.
                    if n_tried <= lim.retries {
                        self.totals.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.answer(
                        c,
                        502,
                        &format!("cannot connect to a server: {e}"),
                        Some(&req.id),
                        !(whole && more),
                    )
                    .await;
                    return self.after_error(c, whole && more);
                }
            };
            let mut written = 0;
            let sent = write_all_counted(
                &mut up.io,
                &s.req,
                &mut c.up_timer,
                lim.read_timeout,
                &mut written,
            )
            .await;
            if let Err(e) = sent {
                // The connection failed under the first write. What was read of the body is
                // all in this write (the rest is still with the client), so the request may
                // go anywhere again if none of it went out, or if sending it twice is safe.
                // A pooled connection the server had closed is no fault of the server.
                debug!(upstream = %u.addr, error = %e, reused, written, "sending a request failed");
                if written == 0 || req.idempotent {
                    if reused {
                        n_tried -= 1;
                        fresh = true;
                    } else {
                        u.errors.fetch_add(1, Ordering::Relaxed);
                        self.totals.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                u.errors.fetch_add(1, Ordering::Relaxed);
                let msg = format!("the server failed: {e}");
                self.answer(c, 502, &msg, Some(&req.id), true).await;
                return Next::Linger;
            }
            // The rest of the body, unless the client waits for the server's go-ahead.
            // Once any of it went out, the request is never sent again.
            let mut body_sent = whole;
            let mut up_broken = false;
            // The proxy sent the client its own "100 Continue" (the server's comes late).
            let mut own_continue = false;
            if !whole && !wait_continue {
                match self.send_body(c, &req.id, &mut body, &mut up, u).await {
                    Ok(true) => body_sent = true,
                    Ok(false) => up_broken = true,
                    Err(next) => return next,
                }
            }

            // The answer's head (and any 1xx before it).
            let resp = loop {
                let mut scanned = 0;
                let got = loop {
                    if up.buf.len() > MAX_RESPONSE_HEAD {
                        break Err(io::Error::other("the server's answer head is too large"));
                    }
                    if !up.buf.is_empty() && h1::may_end_head(&up.buf, &mut scanned) {
                        let mut hs =
                            [const { MaybeUninit::<httparse::Header>::uninit() }; h1::MAX_HEADERS];
                        let mut r = httparse::Response::new(&mut []);
                        let parsed = httparse::ParserConfig::default()
                            .parse_response_with_uninit_headers(&mut r, &up.buf, &mut hs);
                        match parsed {
                            Ok(httparse::Status::Complete(n)) => {
                                let info = self.rewrite_response(&r, &req, c.closing, &mut s.resp);
                                break Ok((n, info));
                            }
                            Ok(httparse::Status::Partial) => {}
                            Err(e) => {
                                break Err(io::Error::other(format!("malformed answer head: {e}")));
                            }
                        }
                    }
                    // A client waiting for "100 Continue" waits for it only so long
                    // (`expect_continue_timeout_ms`): a server need not send it.
                    let limit = if wait_continue {
                        lim.expect_continue_timeout
                    } else {
                        lim.read_timeout
                    };
                    match read_within(&mut up.io, &mut up.buf, &mut c.up_timer, limit).await {
                        Err(e) if wait_continue && e.kind() == io::ErrorKind::TimedOut => {
                            // RFC 9110 §10.1.1: a server may read a body without ever
                            // sending 100, so past the wait the body goes anyway. The
                            // client is told to send it (a client that sends it on its own
                            // after a wait of its own ignores the 100).
                            wait_continue = false;
                            if !req.http10 {
                                own_continue = true;
                                let go = write_all(
                                    &mut c.io,
                                    b"HTTP/1.1 100 Continue\r\n\r\n",
                                    &mut c.timer,
                                    lim.read_timeout,
                                )
                                .await
                                .and(flush(&mut c.io, &mut c.timer, lim.read_timeout).await);
                                if go.is_err() {
                                    return Next::Close;
                                }
                            }
                            match self.send_body(c, &req.id, &mut body, &mut up, u).await {
                                Ok(true) => body_sent = true,
                                Ok(false) => up_broken = true,
                                Err(next) => return next,
                            }
                        }
                        Ok(0) => {
                            break Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the server closed the connection without an answer",
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => break Err(e),
                    }
                };
                let (n, info) = match got {
                    Ok((n, Ok(info))) => (n, info),
                    Ok((_, Err(bad))) => {
                        u.errors.fetch_add(1, Ordering::Relaxed);
                        let msg = format!("the server's answer is malformed: {}", bad.0);
                        self.answer(c, 502, &msg, Some(&req.id), !(body_sent && more))
                            .await;
                        return self.after_error(c, body_sent && more);
                    }
                    Err(e) => {
                        let eof = e.kind() == io::ErrorKind::UnexpectedEof && up.buf.is_empty();
                        // Nothing of the body went out but what is in `s.req`: the request
                        // can be sent again as it was.
                        let replayable = whole || (wait_continue && !body_sent);
                        if eof && reused && replayable && req.idempotent {
                            // A pooled connection closed under the request: safe to send
                            // again, and no fault of the server.
                            n_tried -= 1;
                            fresh = true;
                            break None;
                        }
                        u.errors.fetch_add(1, Ordering::Relaxed);
                        if reused {
                            // A pooled connection broke under the request (the server died
                            // or closed it): its other idle connections are suspect too.
                            // Dropping them makes the next request connect afresh, which a
                            // dead server refuses, so it is marked down and skipped at once.
                            u.pool.clear();
                        }
                        let (status, msg) = if e.kind() == io::ErrorKind::TimedOut {
                            (
                                504,
                                format!(
                                    "the server did not answer within {} ms",
                                    lim.read_timeout.as_millis()
                                ),
                            )
                        } else {
                            (502, format!("the server failed: {e}"))
                        };
                        debug!(upstream = %u.addr, error = %e, "server failed the request");
                        self.answer(c, status, &msg, Some(&req.id), !(body_sent && more))
                            .await;
                        return self.after_error(c, body_sent && more);
                    }
                };
                up.buf.advance(n);
                if (100..200).contains(&info.status) {
                    if info.switching {
                        // The server switched as asked: from here on the connection is a
                        // tunnel, never retried (the server took the request) nor pooled.
                        return self.tunnel(c, s, up, u, started).await;
                    }
                    if info.status == 101 {
                        // Switched unasked (the proxy dropped any `Upgrade`), or not as
                        // asked (not HTTP/1.1, no `Connection: upgrade`, or to another
                        // protocol than websocket): what follows is no HTTP answer, nor a
                        // tunnel the client asked for. The server's fault, and the end of
                        // both connections.
                        u.errors.fetch_add(1, Ordering::Relaxed);
                        let msg = if req.upgrade {
                            "the server's 101 is not the switch asked for (HTTP/1.1, \
                             Connection: upgrade, Upgrade: websocket)"
                        } else {
                            "the server switched protocols, which this proxy does not carry"
                        };
                        debug!(upstream = %u.addr, upgrade = req.upgrade, "{msg}");
                        self.answer(c, 502, msg, Some(&req.id), true).await;
                        return Next::Linger;
                    }
                    // Interim answers reach HTTP/1.1 clients as they came (but a late
                    // "100 Continue" after the proxy's own).
                    if info.status == 100 && own_continue {
                        continue;
                    }
                    if !req.http10
                        && write_all(&mut c.io, &s.resp, &mut c.timer, lim.read_timeout)
                            .await
                            .is_err()
                    {
                        return Next::Close;
                    }
                    if info.status == 100 && wait_continue {
                        wait_continue = false;
                        let _ = flush(&mut c.io, &mut c.timer, lim.read_timeout).await;
                        match self.send_body(c, &req.id, &mut body, &mut up, u).await {
                            Ok(true) => body_sent = true,
                            Ok(false) => up_broken = true,
                            Err(next) => return next,
                        }
                    }
                    continue;
                }
                break Some(info);
            };
            let Some(mut resp) = resp else {
                continue;
            };
            if resp.status >= 500 {
                u.responses_5xx.fetch_add(1, Ordering::Relaxed);
            }
            // A final answer before the body was sent (to an expecting client, or a server
            // that stopped reading): the rest of the request is not read, so the client
            // connection ends with this answer.
            let mut next = Next::Again;
            if !body_sent || up_broken {
                resp.up_keep = false;
                if resp.client_keep {
                    resp.client_keep = false;
                    // The head is rewritten with `Connection: close`.
                    s.resp.truncate(s.resp.len() - 2);
                    s.resp.extend_from_slice(b"connection: close\r\n\r\n");
                }
                next = Next::Linger;
            } else if req.upgrade {
                // Refused (any answer but 101): the answer goes out with `Connection:
                // close`, then the connection closes; what the client sent behind its head
                // is drained, never read as a request.
                next = Next::Linger;
            } else if !resp.client_keep {
                next = Next::Close;
            }
            // The head and the body bytes already here, in one send.
            let mut rbody = Framing::new(resp.body);
            let take = match rbody.advance(&up.buf) {
                Ok(n) => n,
                Err(bad) => {
                    u.errors.fetch_add(1, Ordering::Relaxed);
                    let msg = format!("the server's answer is malformed: {}", bad.0);
                    self.answer(c, 502, &msg, Some(&req.id), true).await;
                    return Next::Linger;
                }
            };
            s.resp.extend_from_slice(&up.buf[..take]);
            up.buf.advance(take);
            if write_all(&mut c.io, &s.resp, &mut c.timer, lim.read_timeout)
                .await
                .is_err()
            {
                if rbody.done() && resp.up_keep && up.buf.is_empty() {
                    u.pool.put(up, std::time::Instant::now());
                }
                return Next::Close;
            }
            if !rbody.done() {
                match pump(
                    &mut up.io,
                    &mut up.buf,
                    &mut rbody,
                    &mut c.io,
                    &mut c.up_timer,
                    &mut c.timer,
                    lim.read_timeout,
                )
                .await
                {
                    Ok(()) => {}
                    Err(PumpErr::Dst(e)) => {
                        debug!(error = %e, "client failed while receiving an answer");
                        return Next::Close;
                    }
                    Err(PumpErr::Src(e)) => {
                        u.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(upstream = %u.addr, error = %e, "the server failed mid-answer; closing the client connection");
                        return Next::Close;
                    }
                    Err(PumpErr::Bad(b)) => {
                        u.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(upstream = %u.addr, error = b, "malformed chunked answer; closing the client connection");
                        return Next::Close;
                    }
                }
            }
            if flush(&mut c.io, &mut c.timer, lim.read_timeout)
                .await
                .is_err()
            {
                next = Next::Close;
            }
            let now = std::time::Instant::now();
            u.latency.record(now - started);
            // Bytes past the answer's end mean the server is out of step: not reused.
            if resp.up_keep && up.buf.is_empty() {
                u.pool.put(up, now);
            }
            return next;
        }
        self.answer(
            c,
            502,
            "too many failed attempts",
            Some(&req.id),
            !(whole && more),
        )
        .await;
        self.after_error(c, whole && more)
    }
}

/// The [`ServerApp`] pingora's listeners hand connections to.
pub struct HttpApp {
    pub balancer: Arc<Balancer>,
}

#[async_trait]
impl ServerApp for HttpApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let tls = stream.get_ssl_digest().is_some();
        let digest = stream.get_socket_digest();
        let ip = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        let port = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.port().to_string());
        let b = &self.balancer;
        let now = Instant::now();
        let mut watch = shutdown.clone();
        let closing = *watch.borrow();
        let mut c = Client {
            io: stream,
            buf: BytesMut::with_capacity(16 * 1024),
            // The first request's head is due within the header timeout of accept.
            timer: Box::pin(tokio::time::sleep_until(now + b.limits.header_timeout)),
            up_timer: Box::pin(tokio::time::sleep_until(now + b.limits.read_timeout)),
            shutdown: Box::pin(async move {
                let _ = watch.changed().await;
            }),
            closing,
            peer: Peer {
                ip,
                proto: if tls { "https" } else { "http" },
                port,
            },
        };
        let mut s = Scratch {
            req: Vec::with_capacity(2048),
            resp: Vec::with_capacity(1024),
        };
        let mut first = true;
        loop {
            match b.exchange(&mut c, &mut s, first).await {
                Next::Again => first = false,
                // Unread pipelined requests: a plain close would reset the connection and
                // could destroy the last answer before the client read it.
                Next::Close if !c.buf.is_empty() => {
                    c.linger().await;
                    return None;
                }
                Next::Close => {
                    let _ = tokio::time::timeout(LINGER, c.io.shutdown()).await;
                    return None;
                }
                Next::Linger => {
                    c.linger().await;
                    return None;
                }
            }
        }
    }
}
