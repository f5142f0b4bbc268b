//! The proxy logic: choose a server, forward the request with `X-Forwarded-*` and a request
//! id, retry refused connections elsewhere, close keep-alive connections while the process
//! hands over to its successor, and count everything per server.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

use crate::upstream::{Registry, Upstream};

/// Process-wide counters (per-server ones live in the [`Registry`]).
#[derive(Debug, Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub no_upstream: AtomicU64,
    pub header_too_large: AtomicU64,
    pub retries: AtomicU64,
}

/// The settings the request path reads.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub keepalive_s: u64,
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

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    tried: Vec<SocketAddr>,
    current: Option<Arc<Upstream>>,
    started: Option<Instant>,
    request_id: Option<String>,
}

const REQUEST_ID: &str = "x-request-id";

fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Size of a request head as the limit counts it: request line plus header lines.
fn head_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.uri.to_string().len() + 12;
    line + req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

impl Balancer {
    /// Ends the attempt in flight on `ctx.current` (if any).
    fn finish_attempt(ctx: &mut Ctx, failed: bool) {
        if let Some(u) = ctx.current.take() {
            u.in_flight.fetch_sub(1, Ordering::Relaxed);
            if failed {
                u.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn local_error(session: &mut Session, status: u16, msg: &str) -> Result<()> {
        let body = Bytes::from(serde_json::json!({ "error": msg }).to_string());
        let mut resp = ResponseHeader::build(status, Some(3))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        session
            .as_downstream_mut()
            .write_error_response(resp, body)
            .await
    }
}

#[async_trait]
impl ProxyHttp for Balancer {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// No downstream modules: pingora's default adds a (disabled) response-compression
    /// module whose per-request hooks cost ~2 µs of CPU per request (measured).
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        let size = head_bytes(session.req_header());
        if size > self.limits.max_header_bytes {
            self.totals.header_too_large.fetch_add(1, Ordering::Relaxed);
            let msg = format!(
                "request head of {size} bytes exceeds the limit of {} bytes",
                self.limits.max_header_bytes
            );
            Self::local_error(session, 431, &msg).await?;
            return Ok(true);
        }
        // Keep-alive clients get the configured idle timeout (pingora's default is none).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.limits.keepalive_s));
        }
        let id = match session.get_header(REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => format!(
                "{}-{:x}",
                self.id_prefix,
                self.id_counter.fetch_add(1, Ordering::Relaxed)
            ),
        };
        ctx.request_id = Some(id);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // A retry: the previous attempt failed (its error is already counted).
        if ctx.current.is_some() {
            self.totals.retries.fetch_add(1, Ordering::Relaxed);
            Self::finish_attempt(ctx, false);
        }
        let wait_until = Instant::now() + self.limits.first_check_wait;
        let picked = loop {
            let checked = self.registry.checked.notified();
            tokio::pin!(checked);
            checked.as_mut().enable();
            if let Some(u) = self.registry.pick(&self.lb, &ctx.tried) {
                break Some(u);
            }
            // Servers not checked yet (this process just started, e.g. after an upgrade,
            // or a server just joined): wait for their first check rather than fail.
            if !self.registry.pending(&self.lb)
                || tokio::time::timeout_at(wait_until.into(), checked)
                    .await
                    .is_err()
            {
                break None;
            }
        };
        let Some(u) = picked else {
            self.totals.no_upstream.fetch_add(1, Ordering::Relaxed);
            let msg = if ctx.tried.is_empty() {
                "no server is up"
            } else {
                "no other server is up to retry on"
            };
            return Err(Error::explain(ErrorType::HTTPStatus(503), msg));
        };
        ctx.tried.push(u.addr);
        u.requests.fetch_add(1, Ordering::Relaxed);
        u.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut peer = HttpPeer::new(u.addr, false, String::new());
        peer.options.connection_timeout = Some(self.limits.connect_timeout);
        peer.options.read_timeout = Some(self.limits.read_timeout);
        peer.options.write_timeout = Some(self.limits.read_timeout);
        // Below the servers' 75 s keep-alive, so the proxy drops a pooled connection before
        // the server would close it under a request.
        peer.options.idle_timeout = Some(Duration::from_secs(50));
        ctx.current = Some(u);
        ctx.started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let downstream = session.as_downstream();
        if let Some(client) = downstream.client_addr().and_then(|a| a.as_inet()) {
            let ip = client.ip().to_string();
            // Appended, as a proxy does: servers that trust this proxy read the rightmost
            // address they do not trust, so what a client wrote itself is never believed.
            let xff = match req.headers.get("x-forwarded-for") {
                Some(prev) => format!("{}, {ip}", String::from_utf8_lossy(prev.as_bytes())),
                None => ip,
            };
            req.insert_header("x-forwarded-for", xff)?;
        }
        let tls = downstream
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        req.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        if let Some(local) = downstream.server_addr().and_then(|a| a.as_inet()) {
            req.insert_header("x-forwarded-port", local.port().to_string())?;
        }
        if let Some(id) = &ctx.request_id {
            req.insert_header(REQUEST_ID, id.as_str())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_server_error()
            && let Some(u) = &ctx.current
        {
            u.responses_5xx.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(id) = &ctx.request_id
            && resp.headers.get(REQUEST_ID).is_none()
        {
            resp.insert_header(REQUEST_ID, id.as_str())?;
        }
        if self.draining.load(Ordering::Relaxed) {
            // Handing over: the client's next request opens a new connection, which the
            // successor process accepts.
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(u) = &ctx.current {
            u.connect_failures.fetch_add(1, Ordering::Relaxed);
            u.errors.fetch_add(1, Ordering::Relaxed);
            self.registry.mark_passive_down(u);
            warn!(upstream = %u.addr, error = %e, "cannot connect to server; marked down");
        }
        // Nothing reached the server: any method may go to another one.
        if ctx.tried.len() <= self.limits.retries {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("server {peer}"));
        // The request may have reached the server: retry only what is idempotent with a
        // body still held in full, and only on a reused connection (a pooled connection the
        // server had closed), as pingora's own policy does.
        if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
            || ctx.tried.len() > self.limits.retries
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if let Some(u) = &ctx.current {
            u.errors.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let (Some(u), Some(t)) = (&ctx.current, ctx.started) {
            u.latency.record(t.elapsed());
        }
        // Transport errors were counted where they happened; close the attempt.
        Self::finish_attempt(ctx, false);
        if let Some(e) = e {
            debug!(
                error = %e,
                status = session.response_written().map_or(0, |r| r.status.as_u16()),
                "request failed"
            );
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // A 503 for "no server is up" is an answer, not a fault of this process, and a
        // client that hangs up mid-request is the client's business (logged at debug).
        matches!(e.etype(), ErrorType::HTTPStatus(503))
            || matches!(e.esource(), pingora_core::ErrorSource::Downstream)
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

    #[test]
    fn head_size_counts_line_and_headers() {
        let mut r = RequestHeader::build("GET", b"/abc", None).unwrap();
        let bare = head_bytes(&r);
        r.insert_header("x-big", "v".repeat(1000)).unwrap();
        assert_eq!(head_bytes(&r), bare + 5 + 1000 + 4);
    }
}
