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
//! pingora runs the process around it (listeners, TLS, the graceful upgrade's socket
//! hand-over, signals, runtimes, health checks and discovery); this module is the
//! [`ServerApp`] its listeners hand each accepted connection to. Earlier versions ran on
//! pingora's HTTP proxy pipeline, then on hyper's server and client connections (two tasks
//! and a channel per request); both cost more CPU per request than HAProxy, this path about
//! a quarter less (docs/PERFORMANCE.md).

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::h1::{self, BodyKind, ConnectionHeader, Framing};
use crate::pool::UpConn;
use crate::upstream::{Registry, Upstream};

/// Process-wide counters (per-server ones live in the [`Registry`]).
#[derive(Debug, Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub no_upstream: AtomicU64,
    pub header_too_large: AtomicU64,
    pub bad_requests: AtomicU64,
    pub retries: AtomicU64,
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
    pub max_header_bytes: usize,
    pub retries: usize,
    /// How long a request waits for servers' first active check.
    pub first_check_wait: Duration,
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
use crate::{LINGER, LINGER_BYTES};

fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A request id, kept inline.
#[derive(Clone, Copy)]
struct ReqId {
    b: [u8; 64],
    len: u8,
}

impl ReqId {
    fn from(v: &[u8]) -> Self {
        let mut b = [0u8; 64];
        b[..v.len()].copy_from_slice(v);
        ReqId {
            b,
            len: v.len() as u8,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.b[..self.len as usize]
    }
}

/// What the rest of an exchange needs to know of its request.
struct ReqInfo {
    body: BodyKind,
    /// HEAD: the answer has no body whatever it announces.
    head_only: bool,
    idempotent: bool,
    /// The client keeps the connection after this exchange (HTTP/1.1, no `close`).
    keep_alive: bool,
    http10: bool,
    expect_continue: bool,
    id: ReqId,
}

/// The 431 message of a head with too many headers (the server's edge says the same).
fn too_many_headers() -> String {
    format!(
        "more than {} request headers (besides X-Forwarded-For/-Proto/-Port and X-Request-Id)",
        h1::MAX_HEADERS
    )
}

/// Why a request head is not forwarded.
enum Stop {
    /// Close without an answer: the client left, idled out, or trickled its head past the
    /// deadline (slowloris); or the process is stopping and the connection is idle.
    Quiet,
    /// Answer with this status and message, then close.
    Answer(u16, String),
}

/// A client connection and its per-connection state.
struct Client {
    io: Stream,
    buf: BytesMut,
    /// Deadlines of reads and writes on the client side.
    timer: Pin<Box<Sleep>>,
    /// Deadlines of reads and writes on the server side.
    up_timer: Pin<Box<Sleep>>,
    /// Resolves when the process starts stopping.
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    closing: bool,
    /// The client's address as `X-Forwarded-For` gets it.
    ip: Option<String>,
    proto: &'static str,
    port: Option<String>,
}

enum Wait {
    Read,
    Eof,
    Timeout,
    Shutdown,
    Failed,
}

impl Client {
    /// Reads more of the client's bytes, until the timer; while `idle` (no byte of the next
    /// request yet), a stopping process ends the wait.
    async fn read_more(&mut self, idle: bool) -> Wait {
        if idle && self.closing {
            return Wait::Shutdown;
        }
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8192);
        }
        let Client {
            io,
            buf,
            timer,
            shutdown,
            closing,
            ..
        } = self;
        let mut read = pin!(io.read_buf(buf));
        poll_fn(|cx| {
            if let Poll::Ready(r) = read.as_mut().poll(cx) {
                return Poll::Ready(match r {
                    Ok(0) => Wait::Eof,
                    Ok(_) => Wait::Read,
                    Err(_) => Wait::Failed,
                });
            }
            if idle && !*closing && shutdown.as_mut().poll(cx).is_ready() {
                *closing = true;
                return Poll::Ready(Wait::Shutdown);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wait::Timeout);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends FIN (TLS: close_notify), then drains what the client still sends for a moment
    /// so that an answer it has not read yet is not lost to a reset.
    async fn linger(&mut self) {
        let end = Instant::now() + LINGER;
        let _ = tokio::time::timeout_at(end, self.io.shutdown()).await;
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tokio::time::timeout_at(end, self.io.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left -= n.min(left),
                _ => break,
            }
        }
    }
}

/// Polls `op` until it is ready; once it has had to wait, it must be ready within `limit`
/// (the timer is armed only then: an operation ready at once costs no timer work).
async fn within<T>(
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
    what: &str,
    mut op: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> io::Result<T> {
    let mut armed = false;
    poll_fn(|cx| {
        if let Poll::Ready(r) = op(cx) {
            return Poll::Ready(r);
        }
        if !armed {
            timer.as_mut().reset(Instant::now() + limit);
            armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what}: no progress within {} ms", limit.as_millis()),
            )));
        }
        Poll::Pending
    })
    .await
}

/// Writes all of `data`; each write that has to wait must progress within `limit`.
async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> io::Result<()> {
    write_all_counted(w, data, timer, limit, &mut 0).await
}

/// [`write_all`], counting in `written` the bytes that went out.
async fn write_all_counted<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
    written: &mut usize,
) -> io::Result<()> {
    while !data.is_empty() {
        let n = within(timer, limit, "write", |cx| {
            Pin::new(&mut *w).poll_write(cx, data)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *written += n;
        data = &data[n..];
    }
    Ok(())
}

async fn flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> io::Result<()> {
    within(timer, limit, "flush", |cx| Pin::new(&mut *w).poll_flush(cx)).await
}

/// Reads more into `buf`; a read that has to wait must complete within `limit`. 0: EOF.
async fn read_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(16 * 1024);
    }
    let mut read = pin!(r.read_buf(buf));
    within(timer, limit, "read", |cx| read.as_mut().poll(cx)).await
}

/// Where a body copy failed.
enum PumpErr {
    /// Reading its source (or the source ended early).
    Src(io::Error),
    /// Writing its destination.
    Dst(io::Error),
    /// Its chunked framing is malformed.
    Bad(&'static str),
}

/// Copies a body from `src` to `dst` as `f` frames it, starting with what `sbuf` holds;
/// bytes past its end stay in `sbuf`.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    src: &mut R,
    sbuf: &mut BytesMut,
    f: &mut Framing,
    dst: &mut W,
    src_timer: &mut Pin<Box<Sleep>>,
    dst_timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> Result<(), PumpErr> {
    loop {
        if !sbuf.is_empty() {
            let take = f.advance(sbuf).map_err(|b| PumpErr::Bad(b.0))?;
            write_all(dst, &sbuf[..take], dst_timer, limit)
                .await
                .map_err(PumpErr::Dst)?;
            sbuf.advance(take);
        }
        if f.done() {
            return Ok(());
        }
        match read_within(src, sbuf, src_timer, limit).await {
            Ok(0) if matches!(f, Framing::UntilClose) => {
                *f = Framing::Done;
                return Ok(());
            }
            Ok(0) => {
                return Err(PumpErr::Src(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the body ended early",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(PumpErr::Src(e)),
        }
    }
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
    ) -> Result<(UpConn, bool), String> {
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
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "connect timed out after {} ms",
                self.limits.connect_timeout.as_millis()
            )),
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

    /// Reads the next request head and writes its rewritten form into `out`; the head's
    /// bytes leave the client buffer.
    async fn read_request(
        &self,
        c: &mut Client,
        out: &mut Vec<u8>,
        first: bool,
    ) -> Result<ReqInfo, Stop> {
        let lim = &self.limits;
        let mut idle = c.buf.is_empty();
        if !first {
            let wait = if idle {
                lim.keepalive_timeout
            } else {
                lim.header_timeout
            };
            c.timer.as_mut().reset(Instant::now() + wait);
        }
        // Bytes of the buffer known not to end the head: a head trickled in is parsed once
        // its end may be there, not once per read.
        let mut scanned = 0;
        loop {
            if !c.buf.is_empty() {
                if h1::may_end_head(&c.buf, &mut scanned) {
                    let mut hs = [const { MaybeUninit::<httparse::Header>::uninit() };
                        h1::MAX_HEADER_FIELDS];
                    let mut r = httparse::Request::new(&mut []);
                    match r.parse_with_uninit_headers(&c.buf, &mut hs) {
                        Ok(httparse::Status::Complete(n)) => {
                            if n > lim.max_header_bytes {
                                return Err(self.too_large(n));
                            }
                            if h1::too_many_headers(r.headers) {
                                self.totals.header_too_large.fetch_add(1, Ordering::Relaxed);
                                return Err(Stop::Answer(431, too_many_headers()));
                            }
                            let info = self.rewrite_request(&r, c, out)?;
                            c.buf.advance(n);
                            return Ok(info);
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(httparse::Error::TooManyHeaders) => {
                            self.totals.header_too_large.fetch_add(1, Ordering::Relaxed);
                            return Err(Stop::Answer(431, too_many_headers()));
                        }
                        Err(e) => {
                            self.totals.bad_requests.fetch_add(1, Ordering::Relaxed);
                            return Err(Stop::Answer(400, format!("malformed request head: {e}")));
                        }
                    }
                }
                if c.buf.len() > lim.max_header_bytes {
                    return Err(self.too_large(c.buf.len()));
                }
                if idle {
                    // The head has started: it must be complete within the header timeout
                    // (the first request's deadline already runs from accept).
                    idle = false;
                    if !first {
                        c.timer.as_mut().reset(Instant::now() + lim.header_timeout);
                    }
                }
            }
            // A new connection's first request is served even if the process started
            // stopping since accept: closing it quietly would fail a client that did
            // nothing wrong.
            match c.read_more(idle && !first).await {
                Wait::Read => {}
                Wait::Eof | Wait::Timeout | Wait::Shutdown | Wait::Failed => {
                    return Err(Stop::Quiet);
                }
            }
        }
    }

    fn too_large(&self, size: usize) -> Stop {
        self.totals.header_too_large.fetch_add(1, Ordering::Relaxed);
        Stop::Answer(
            431,
            format!(
                "request head of {size}+ bytes exceeds the limit of {} bytes",
                self.limits.max_header_bytes
            ),
        )
    }

    /// The request head as the server gets it: hop-by-hop headers dropped,
    /// `X-Forwarded-For` appended to, `-Proto`/`-Port` and the request id set.
    fn rewrite_request(
        &self,
        r: &httparse::Request,
        c: &Client,
        out: &mut Vec<u8>,
    ) -> Result<ReqInfo, Stop> {
        let method = r.method.unwrap_or("GET");
        let path = r.path.unwrap_or("/");
        let http10 = r.version == Some(0);
        if method == "CONNECT" {
            return Err(Stop::Answer(405, "CONNECT is not supported".into()));
        }
        let headers: &[httparse::Header] = r.headers;
        let conn = ConnectionHeader::of(headers);
        let framed = h1::framing(headers, true, http10).map_err(|b| {
            self.totals.bad_requests.fetch_add(1, Ordering::Relaxed);
            Stop::Answer(400, b.0.to_string())
        })?;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(if http10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        let mut id = None;
        let mut xff = false;
        let mut expect_continue = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("te") {
                // Hop-by-hop, but "trailers" holds on the next hop too: trailers are
                // forwarded as they come.
                if h1::has_token(h.value, b"trailers") {
                    out.extend_from_slice(b"te: trailers\r\n");
                }
                continue;
            }
            if conn.drops(name) {
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                xff = true;
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-proto")
                || name.eq_ignore_ascii_case("x-forwarded-port")
            {
                continue;
            }
            if name.eq_ignore_ascii_case("x-request-id") {
                if id.is_none() && valid_request_id(h.value) {
                    id = Some(ReqId::from(h.value));
                }
                continue;
            }
            // An HTTP/1.0 client's Expect is ignored (RFC 9110, 10.1.1): it does not wait for
            // "100 Continue", and must not be sent one.
            if !http10
                && name.eq_ignore_ascii_case("expect")
                && h.value.eq_ignore_ascii_case(b"100-continue")
            {
                expect_continue = true;
            }
            h1::put_header(out, name.as_bytes(), h.value);
        }
        // Appended, as a proxy does: servers that trust this proxy read the rightmost
        // address they do not trust, so what a client wrote itself is never believed.
        if xff || c.ip.is_some() {
            out.extend_from_slice(b"x-forwarded-for: ");
            let mut sep = false;
            for h in headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            {
                if sep {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(h.value);
                sep = true;
            }
            if let Some(ip) = &c.ip {
                if sep {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(ip.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        h1::put_header(out, b"x-forwarded-proto", c.proto.as_bytes());
        if let Some(port) = &c.port {
            h1::put_header(out, b"x-forwarded-port", port.as_bytes());
        }
        let id = id.unwrap_or_else(|| {
            use std::io::Write as _;
            let mut buf = [0u8; 64];
            let mut w = &mut buf[..];
            let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
            let _ = write!(w, "{}-{n:x}", self.id_prefix);
            let len = 64 - w.len();
            ReqId::from(&buf[..len])
        });
        h1::put_header(out, b"x-request-id", id.bytes());
        out.extend_from_slice(b"\r\n");
        Ok(ReqInfo {
            body: framed.kind,
            head_only: method == "HEAD",
            idempotent: h1::idempotent(method),
            keep_alive: !http10 && !conn.close,
            http10,
            expect_continue,
            id,
        })
    }

    /// The answer head as the client gets it.
    fn rewrite_response(
        &self,
        r: &httparse::Response,
        req: &ReqInfo,
        closing: bool,
        out: &mut Vec<u8>,
    ) -> Result<RespInfo, h1::Bad> {
        let status = r.code.unwrap_or(0);
        if !(100..=599).contains(&status) {
            return Err(h1::Bad("a status outside 100-599"));
        }
        let headers: &[httparse::Header] = r.headers;
        let conn = ConnectionHeader::of(headers);
        let framed = h1::framing(headers, false, r.version == Some(0))?;
        let informational = (100..200).contains(&status);
        let body = if req.head_only || informational || status == 204 || status == 304 {
            BodyKind::None
        } else {
            framed.kind
        };
        let up_keep = r.version == Some(1) && !conn.close && body != BodyKind::UntilClose;
        let client_keep = req.keep_alive
            && !closing
            && body != BodyKind::UntilClose
            && !self.draining.load(Ordering::Relaxed);
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        h1::put_status(out, status);
        match r.reason {
            Some(reason) if !reason.is_empty() => out.extend_from_slice(reason.as_bytes()),
            _ => out.extend_from_slice(h1::reason(status).as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        let mut has_id = false;
        for h in headers {
            if conn.drops(h.name)
                || (framed.drop_length && h.name.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            if h.name.eq_ignore_ascii_case("x-request-id") {
                has_id = true;
            }
            h1::put_header(out, h.name.as_bytes(), h.value);
        }
        if !informational {
            if !has_id {
                h1::put_header(out, b"x-request-id", req.id.bytes());
            }
            if !client_keep {
                out.extend_from_slice(b"connection: close\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        Ok(RespInfo {
            status,
            body,
            up_keep,
            client_keep,
        })
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
                self.answer(c, 503, msg, Some(&req.id), !whole).await;
                return self.after_error(c, whole);
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
                        !whole,
                    )
                    .await;
                    return self.after_error(c, whole);
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
                        self.answer(c, 502, &msg, Some(&req.id), !body_sent).await;
                        return self.after_error(c, body_sent);
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
                        self.answer(c, status, &msg, Some(&req.id), !body_sent)
                            .await;
                        return self.after_error(c, body_sent);
                    }
                };
                up.buf.advance(n);
                if (100..200).contains(&info.status) {
                    if info.status == 101 {
                        u.errors.fetch_add(1, Ordering::Relaxed);
                        self.answer(
                            c,
                            502,
                            "the server switched protocols, which this proxy does not carry",
                            Some(&req.id),
                            true,
                        )
                        .await;
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
        self.answer(c, 502, "too many failed attempts", Some(&req.id), !whole)
            .await;
        self.after_error(c, whole)
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
            ip,
            proto: if tls { "https" } else { "http" },
            port,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(&[b'a'; 65]));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a\"b"));
    }
}
