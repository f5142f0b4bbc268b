//! A REST connection's client: the `out.rest` calls of the services (ipc-protocol/SPEC.md),
//! sent on the connection's own pool of HTTP/1.1 keep-alive connections (hyper; TLS with
//! rustls on ring). docs/OUTGOING.md describes what a call sends and how it fails.
//!
//! A client is built once per definition ([`RestClient::new`]): address, `url_path`
//! template, default headers, TLS configuration and credentials are worked out then. A
//! definition that cannot be built (an unreadable CA file, a credential that does not open)
//! gives a client whose every call fails naming the connection and the cause.

mod auth;
mod pool;
pub(crate) mod tls;
pub mod url;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use oxbus_ipc::ReplyMeta;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use self::auth::{Auth, OAuth2, TokenError};
use self::pool::{ConnectError, Pool, Target};
use self::url::{Piece, encode_into, parse_address, parse_template};
use super::{ConnStats, PingOutcome};
use crate::lifecycle::ops::OpReply;
use crate::metrics::histogram::DurationHistogram;
use crate::model::outgoing::{DataFormat, RestAuth, RestConn};
use crate::secrets::Key;
use crate::trace::{TraceParent, valid_tracestate};

/// Connections of an OAuth2 token endpoint's own pool.
const TOKEN_POOL_SIZE: u32 = 2;

/// One REST connection's client.
#[derive(Debug)]
pub struct RestClient {
    def: RestConn,
    built: Result<Built, Failure>,
    figures: Figures,
}

/// What a definition that could not be built answers every call.
#[derive(Debug)]
struct Failure {
    code: &'static str,
    status: u16,
    message: String,
}

#[derive(Debug)]
struct Built {
    /// `REST connection "crm" (https://crm.example.com:443)`: every message starts so.
    label: String,
    host: HeaderValue,
    template: Vec<Piece>,
    defaults: Vec<(HeaderName, HeaderValue)>,
    auth: Auth,
    pool: Pool,
}

#[derive(Debug, Default)]
struct Figures {
    calls: AtomicU64,
    errors: AtomicU64,
    latency: DurationHistogram,
}

/// Why a call failed (SPEC.md's error table).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Invalid(String),
    #[error("no free connection within pool_wait_ms {wait_ms} (pool_size {size}, all in use)")]
    PoolFull { size: u32, wait_ms: u64 },
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Connect(ConnectError),
    #[error("the connection broke: {0}")]
    Io(String),
    #[error("the answer exceeds max_response_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error(
        "no free connection within the call's deadline of {limit_ms} ms, shorter than pool_wait_ms {wait_ms} (pool_size {size}, all in use)"
    )]
    PoolFullCut {
        size: u32,
        wait_ms: u64,
        limit_ms: u64,
    },
    #[error("{0}")]
    Auth(Arc<TokenError>),
}

impl CallError {
    fn status_code(&self) -> (u16, &'static str) {
        match self {
            CallError::Invalid(_) => (400, "invalid"),
            CallError::PoolFull { .. } | CallError::PoolFullCut { .. } => (503, "pool_full"),
            CallError::Timeout(_) | CallError::Connect(ConnectError::Timeout(..)) => {
                (504, "timeout")
            }
            CallError::Connect(_) => (502, "connect"),
            CallError::Io(_) => (502, "io"),
            CallError::TooLarge(_) => (502, "too_large"),
            CallError::Auth(_) => (502, "auth"),
        }
    }
}

/// Why an answer's body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Io(hyper::Error),
}

/// Reads a body to its end, refusing more than `max` bytes (one chunk is kept as it came).
pub(crate) async fn read_body(mut body: Incoming, max: u64) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > max {
        return Err(BodyError::TooLarge);
    }
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Io)?.into_data() else {
            continue; // trailers
        };
        len += data.len() as u64;
        if len > max {
            return Err(BodyError::TooLarge);
        }
        if single.is_none() && joined.is_empty() {
            single = Some(data);
        } else {
            if let Some(s) = single.take() {
                joined.extend_from_slice(&s);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(single.unwrap_or_else(|| joined.freeze()))
}

/// A JSON object's members in the order given.
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(entry) = m.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An `out.rest` meta (SPEC.md); `op` and `conn` are the caller's.
#[derive(Deserialize)]
struct RestMeta<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    params: Option<Ordered>,
    #[serde(default)]
    headers: Option<Ordered>,
    #[serde(borrow, default)]
    content_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body_kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tracestate: Option<Cow<'a, str>>,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

/// A request ready to be sent (again, for a retry).
struct Prepared {
    method: Method,
    idempotent: bool,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Prepared {
    fn request(&self, auth: Option<&HeaderValue>) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if let Some(a) = auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        req
    }
}

/// The headers of the server's own that a call may not set.
fn reserved(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
}

/// A param's value(s) as text: strings as they are, other scalars as their JSON text, a
/// list each of its elements.
fn param_values(name: &str, v: &serde_json::Value, out: &mut Vec<String>) -> Result<(), String> {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => out.push(v.to_string()),
        serde_json::Value::Array(items) => {
            for item in items {
                if item.is_array() {
                    return Err(format!("params[{name:?}]: a list inside a list"));
                }
                param_values(name, item, out)?;
            }
        }
        serde_json::Value::Null => return Err(format!("params[{name:?}]: null is no value")),
        serde_json::Value::Object(_) => {
            return Err(format!("params[{name:?}]: an object is no value"));
        }
    }
    Ok(())
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl RestClient {
    pub fn new(def: RestConn, key: &Arc<Key>, _metrics: &Arc<crate::metrics::Metrics>) -> Self {
        let built = build(&def, key);
        if let Err(f) = &built {
            tracing::error!(connection = %def.name, "{}", f.message);
        }
        RestClient {
            def,
            built,
            figures: Figures::default(),
        }
    }

    pub fn def(&self) -> &RestConn {
        &self.def
    }

    /// One `out.rest` call: `raw_meta` as SPEC.md gives it, `body` the request body.
    pub async fn call(&self, raw_meta: &[u8], body: Bytes) -> OpReply {
        let start = Instant::now();
        let reply = match &self.built {
            Err(f) => OpReply::error(f.status, f.code, &f.message),
            Ok(b) => match self.call_built(b, raw_meta, body).await {
                Ok(r) => r,
                Err(e) => {
                    let (status, code) = e.status_code();
                    OpReply::error(status, code, &format!("{}: {e}", b.label))
                }
            },
        };
        self.figures.latency.observe(start.elapsed());
        let counter = if reply.meta.error.is_some() {
            &self.figures.errors
        } else {
            &self.figures.calls
        };
        counter.fetch_add(1, Ordering::Relaxed);
        reply
    }

    async fn call_built(
        &self,
        b: &Built,
        raw_meta: &[u8],
        body: Bytes,
    ) -> Result<OpReply, CallError> {
        let meta: RestMeta = serde_json::from_slice(raw_meta)
            .map_err(|e| CallError::Invalid(format!("bad out.rest meta: {e}")))?;
        let limit = match meta.deadline_ms {
            Some(d) => d.min(self.def.timeout_ms),
            None => self.def.timeout_ms,
        };
        let p = self.prepare(b, &meta, body)?;
        self.run(b, &p, limit).await
    }

    fn prepare(&self, b: &Built, meta: &RestMeta, body: Bytes) -> Result<Prepared, CallError> {
        let inv = CallError::Invalid;
        let method = match meta.method.as_deref().unwrap_or("GET") {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            "OPTIONS" => Method::OPTIONS,
            "HEAD" => Method::HEAD,
            other => {
                return Err(inv(format!(
                    "method {other:?} is not one of GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD"
                )));
            }
        };
        let idempotent = !matches!(method, Method::POST | Method::PATCH);

        // Path (placeholders filled) and query (the other params, in order).
        let params: &[(String, serde_json::Value)] = meta.params.as_ref().map_or(&[], |p| &p.0);
        let mut used = vec![false; params.len()];
        let mut path = String::with_capacity(64);
        let mut values = Vec::new();
        for piece in &b.template {
            match piece {
                Piece::Literal(s) => path.push_str(s),
                Piece::Placeholder(name) => {
                    let i = params.iter().position(|(k, _)| k == name).ok_or_else(|| {
                        inv(format!(
                            "url_path {:?}: no value for {{{name}}} in params",
                            self.def.url_path
                        ))
                    })?;
                    used[i] = true;
                    values.clear();
                    param_values(name, &params[i].1, &mut values).map_err(inv)?;
                    let [v] = values.as_slice() else {
                        return Err(inv(format!(
                            "params[{name:?}]: a {{placeholder}} takes one value"
                        )));
                    };
                    if matches!(v.as_str(), "" | "." | "..") {
                        return Err(inv(format!(
                            "params[{name:?}]: {v:?} is not a value for the {{{name}}} of a path"
                        )));
                    }
                    encode_into(&mut path, v, false);
                }
            }
        }
        let mut sep = if path.contains('?') { '&' } else { '?' };
        for (i, (name, v)) in params.iter().enumerate() {
            if used[i] {
                continue;
            }
            values.clear();
            param_values(name, v, &mut values).map_err(inv)?;
            for v in &values {
                path.push(sep);
                sep = '&';
                encode_into(&mut path, name, false);
                path.push('=');
                encode_into(&mut path, v, false);
            }
        }
        let uri: Uri = path
            .parse()
            .map_err(|e| inv(format!("the request path {path:?} is not valid: {e}")))?;

        // Headers: the connection's, the call's, then the server's own.
        let call_headers: &[(String, serde_json::Value)] =
            meta.headers.as_ref().map_or(&[], |h| &h.0);
        let mut headers = HeaderMap::with_capacity(b.defaults.len() + call_headers.len() + 6);
        for (k, v) in &b.defaults {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in call_headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| inv(format!("headers: {k:?} is not a header name")))?;
            if reserved(&name) {
                return Err(inv(format!(
                    "headers: {k} is set by the server, not by a call"
                )));
            }
            let serde_json::Value::String(v) = v else {
                return Err(inv(format!("headers[{k:?}]: the value must be a string")));
            };
            let value = HeaderValue::from_str(v)
                .map_err(|_| inv(format!("headers[{k:?}]: not a valid header value")))?;
            headers.insert(name, value);
        }
        headers.insert(header::HOST, b.host.clone());
        if let Auth::Static(name, value) = &b.auth {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(cid) = meta.cid.as_deref()
            && let Ok(v) = HeaderValue::from_str(cid)
        {
            headers.insert(HeaderName::from_static("x-oxbus-cid"), v);
        }
        // Oxbus records no spans: the caller's traceparent goes on as is (a span of ours
        // that no tracer receives would break the trace tree); without a valid one, a new
        // root, and then no tracestate (it belongs to another trace).
        let (trace, caller_trace) = match meta
            .traceparent
            .as_deref()
            .and_then(|t| TraceParent::parse(t.as_bytes()))
        {
            Some(t) => (t, true),
            None => (TraceParent::new_root(), false),
        };
        headers.insert(
            HeaderName::from_static("traceparent"),
            HeaderValue::from_str(trace.as_str()).expect("a traceparent is ASCII"),
        );
        if caller_trace
            && let Some(ts) = meta.tracestate.as_deref()
            && valid_tracestate(ts.as_bytes())
            && let Ok(v) = HeaderValue::from_str(ts)
        {
            headers.insert(HeaderName::from_static("tracestate"), v);
        }

        // Body.
        let body = match meta.body_kind.as_deref() {
            None | Some("bytes") => body,
            Some("json") => self.json_body(body).map_err(inv)?,
            Some(other) => return Err(inv(format!("body_kind {other:?} is not bytes or json"))),
        };
        if !body.is_empty() {
            if let Some(ct) = meta.content_type.as_deref() {
                let v = HeaderValue::from_str(ct)
                    .map_err(|_| inv(format!("content_type {ct:?} is not a valid header value")))?;
                headers.insert(header::CONTENT_TYPE, v);
            } else if !headers.contains_key(header::CONTENT_TYPE) {
                match self.def.data_format {
                    DataFormat::Json => {
                        headers.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                    }
                    DataFormat::Form => {
                        headers.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/x-www-form-urlencoded"),
                        );
                    }
                    DataFormat::Raw => {}
                }
            }
        }
        Ok(Prepared {
            method,
            idempotent,
            uri,
            headers,
            body,
        })
    }

    /// A `body_kind: json` body, sent per the connection's `data_format`.
    fn json_body(&self, body: Bytes) -> Result<Bytes, String> {
        if body.is_empty() {
            return Ok(body);
        }
        match self.def.data_format {
            DataFormat::Json => Ok(body),
            DataFormat::Raw => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(serde_json::Value::String(s)) => Ok(Bytes::from(s)),
                Ok(_) => Ok(body),
                Err(e) => Err(format!("the body is not JSON: {e}")),
            },
            DataFormat::Form => {
                let obj: Ordered = serde_json::from_slice(&body)
                    .map_err(|e| format!("a form body must be a JSON object: {e}"))?;
                let mut out = String::with_capacity(body.len());
                let one =
                    |out: &mut String, k: &str, v: &serde_json::Value| -> Result<(), String> {
                        let text: Cow<str> = match v {
                            serde_json::Value::String(s) => Cow::Borrowed(s),
                            serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                                return Err(format!(
                                    "form field {k:?}: only scalars or a list of scalars"
                                ));
                            }
                            other => Cow::Owned(other.to_string()),
                        };
                        if !out.is_empty() {
                            out.push('&');
                        }
                        encode_into(out, k, true);
                        out.push('=');
                        encode_into(out, &text, true);
                        Ok(())
                    };
                for (k, v) in &obj.0 {
                    match v {
                        serde_json::Value::Array(items) => {
                            for item in items {
                                one(&mut out, k, item)?;
                            }
                        }
                        _ => one(&mut out, k, v)?,
                    }
                }
                Ok(Bytes::from(out))
            }
        }
    }

    async fn backoff(&self, retried: u32) {
        let delay = self
            .def
            .retry_backoff_ms
            .saturating_mul(1u64 << retried.min(20));
        tokio::time::sleep(ms(delay)).await;
    }

    /// Sends `p` on a pooled connection within `limit_ms`: a pool slot (a deadline that
    /// ends while waiting for one is `pool_full`, not `timeout`), then the exchange.
    async fn run(&self, b: &Built, p: &Prepared, limit_ms: u64) -> Result<OpReply, CallError> {
        let deadline = tokio::time::Instant::now() + ms(limit_ms);
        let _slot = match tokio::time::timeout_at(deadline, b.pool.slot()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => {
                return Err(CallError::PoolFull {
                    size: self.def.pool_size,
                    wait_ms: self.def.pool_wait_ms,
                });
            }
            Err(_) => {
                return Err(CallError::PoolFullCut {
                    size: self.def.pool_size,
                    wait_ms: self.def.pool_wait_ms,
                    limit_ms,
                });
            }
        };
        match tokio::time::timeout_at(deadline, self.send(b, p)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(limit_ms)),
        }
    }

    /// The exchange of [`RestClient::run`], with the retries the connection allows.
    async fn send(&self, b: &Built, p: &Prepared) -> Result<OpReply, CallError> {
        let mut retried = 0u32;
        let mut auth_retried = false;
        loop {
            let token = match &b.auth {
                Auth::OAuth2(o) => Some(o.header().await.map_err(CallError::Auth)?),
                _ => None,
            };
            let (mut sender, reused) = match b.pool.idle().await {
                Some(s) => (s, true),
                None => match b.pool.connect().await {
                    Ok(s) => (s, false),
                    Err(e) if e.refused() && retried < self.def.retries => {
                        self.backoff(retried).await;
                        retried += 1;
                        continue;
                    }
                    Err(e) => return Err(CallError::Connect(e)),
                },
            };
            match sender.try_send_request(p.request(token.as_ref())).await {
                Ok(resp) => {
                    let (parts, incoming) = resp.into_parts();
                    if parts.status == hyper::StatusCode::UNAUTHORIZED
                        && !auth_retried
                        && let (Auth::OAuth2(o), Some(used)) = (&b.auth, &token)
                    {
                        // The token was refused: a new one, and this call once more.
                        o.rejected(used);
                        auth_retried = true;
                        if read_body(incoming, self.def.max_response_bytes)
                            .await
                            .is_ok()
                        {
                            b.pool.put_back(sender);
                        }
                        continue;
                    }
                    match read_body(incoming, self.def.max_response_bytes).await {
                        Ok(body) => {
                            b.pool.put_back(sender);
                            return Ok(answer(parts, body));
                        }
                        // The connection is dropped with the sender: the rest is never read.
                        Err(BodyError::TooLarge) => {
                            return Err(CallError::TooLarge(self.def.max_response_bytes));
                        }
                        Err(BodyError::Io(e)) => {
                            if p.idempotent && retried < self.def.retries {
                                self.backoff(retried).await;
                                retried += 1;
                                continue;
                            }
                            return Err(CallError::Io(e.to_string()));
                        }
                    }
                }
                Err(e) => {
                    let not_sent = e.message().is_some();
                    let e = e.into_error();
                    if not_sent && reused {
                        // A pooled connection closed before anything was written: try
                        // the next one (each is tried once: no loop).
                        continue;
                    }
                    if (not_sent || p.idempotent) && retried < self.def.retries {
                        self.backoff(retried).await;
                        retried += 1;
                        continue;
                    }
                    return Err(CallError::Io(io_text(&e)));
                }
            }
        }
    }

    /// `ping_method` on `ping_path`: ok for any answer below 500.
    pub async fn ping(&self) -> PingOutcome {
        let start = Instant::now();
        let took = || start.elapsed().as_secs_f64() * 1000.0;
        let b = match &self.built {
            Ok(b) => b,
            Err(f) => {
                return PingOutcome {
                    ok: false,
                    took_ms: 0.0,
                    detail: f.message.clone(),
                };
            }
        };
        let outcome = async {
            let method = Method::from_bytes(self.def.ping_method.to_ascii_uppercase().as_bytes())
                .map_err(|_| {
                CallError::Invalid(format!(
                    "ping_method {:?} is not a method",
                    self.def.ping_method
                ))
            })?;
            let uri: Uri = self.def.ping_path.parse().map_err(|e| {
                CallError::Invalid(format!("ping_path {:?}: {e}", self.def.ping_path))
            })?;
            let mut headers = HeaderMap::with_capacity(b.defaults.len() + 3);
            for (k, v) in &b.defaults {
                headers.insert(k.clone(), v.clone());
            }
            headers.insert(header::HOST, b.host.clone());
            if let Auth::Static(name, value) = &b.auth {
                headers.insert(name.clone(), value.clone());
            }
            let p = Prepared {
                idempotent: true,
                method,
                uri,
                headers,
                body: Bytes::new(),
            };
            self.run(b, &p, self.def.timeout_ms).await
        }
        .await;
        match outcome {
            Ok(r) => {
                let t = took();
                PingOutcome {
                    ok: r.meta.status < 500,
                    took_ms: t,
                    detail: format!("HTTP {} in {t:.1} ms", r.meta.status),
                }
            }
            Err(e) => PingOutcome {
                ok: false,
                took_ms: took(),
                detail: format!("{}: {e}", b.label),
            },
        }
    }

    pub fn stats(&self) -> ConnStats {
        let (buckets, sum) = self.figures.latency.snapshot();
        let (in_use, idle, waiting) = match &self.built {
            Ok(b) => (b.pool.in_use(), b.pool.idle_count(), b.pool.waiting()),
            Err(_) => (0, 0, 0),
        };
        ConnStats {
            name: self.def.name.clone(),
            calls: self.figures.calls.load(Ordering::Relaxed),
            errors: self.figures.errors.load(Ordering::Relaxed),
            latency_count: buckets.iter().sum(),
            latency_sum_s: sum,
            latency_buckets: buckets,
            pool_size: self.def.pool_size,
            in_use,
            idle,
            waiting,
        }
    }
}

/// A hyper error's text with its cause ("connection closed before message completed").
fn io_text(e: &hyper::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The REPLY of an answer of the remote server, whatever its status.
fn answer(parts: hyper::http::response::Parts, body: Bytes) -> OpReply {
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    OpReply {
        meta: ReplyMeta {
            status: parts.status.as_u16(),
            content_type: None,
            headers,
            error: None,
            exc: None,
        },
        body,
    }
}

/// Works out everything a definition's calls need.
fn build(def: &RestConn, key: &Key) -> Result<Built, Failure> {
    let fail = |code, status, label: &str, cause: String| Failure {
        code,
        status,
        message: format!("{label}: {cause}"),
    };
    let raw_label = format!("REST connection {:?} ({})", def.name, def.address);
    let addr = parse_address(&def.address)
        .map_err(|e| fail("invalid", 400, &raw_label, format!("address: {e}")))?;
    let label = format!("REST connection {:?} ({})", def.name, addr.origin());
    let template = parse_template(&def.url_path).map_err(|e| fail("invalid", 400, &label, e))?;
    let host = HeaderValue::from_str(&addr.authority(false))
        .map_err(|_| fail("invalid", 400, &label, "address: bad host".into()))?;
    let mut defaults = Vec::with_capacity(def.headers.len());
    for (k, v) in &def.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            fail(
                "invalid",
                400,
                &label,
                format!("headers: {k:?} is not a header name"),
            )
        })?;
        if reserved(&name) {
            return Err(fail(
                "invalid",
                400,
                &label,
                format!("headers: {k} is set by the server"),
            ));
        }
        let value = HeaderValue::from_str(v).map_err(|_| {
            fail(
                "invalid",
                400,
                &label,
                format!("headers[{k:?}]: not a valid value"),
            )
        })?;
        defaults.push((name, value));
    }

    let token_addr = match &def.auth {
        RestAuth::Oauth2 { token_url, .. } => Some(
            parse_address(token_url)
                .map_err(|e| fail("invalid", 400, &label, format!("auth.token_url: {e}")))?,
        ),
        _ => None,
    };
    let tls_config = if addr.https {
        Some(
            tls::client_config(&def.name, &def.tls)
                .map_err(|e| fail("connect", 502, &label, format!("TLS configuration: {e}")))?,
        )
    } else {
        None
    };
    // The token endpoint's own: always verified, the system's roots plus tls.ca_file's,
    // no client certificate (docs/OUTGOING.md).
    let token_tls_config = if token_addr.as_ref().is_some_and(|a| a.https) {
        Some(tls::token_config(&def.tls).map_err(|e| {
            fail(
                "connect",
                502,
                &label,
                format!("TLS configuration of auth.token_url: {e}"),
            )
        })?)
    } else {
        None
    };
    let target =
        |a: &url::Address, cfg: &Option<Arc<rustls::ClientConfig>>| -> Result<Target, Failure> {
            let tls = match (cfg, a.https) {
                (Some(cfg), true) => {
                    let sni =
                        rustls::pki_types::ServerName::try_from(a.host.clone()).map_err(|_| {
                            fail(
                                "invalid",
                                400,
                                &label,
                                format!("{:?} is not a TLS server name", a.host),
                            )
                        })?;
                    Some((tokio_rustls::TlsConnector::from(cfg.clone()), sni))
                }
                _ => None,
            };
            Ok(Target {
                host: a.host.clone(),
                port: a.port,
                tls,
            })
        };

    let secret = || -> Result<String, Failure> {
        let sealed = def.auth.sealed().ok_or_else(|| {
            fail(
                "auth",
                502,
                &label,
                format!(
                    "auth: no {} stored",
                    def.auth.plain_field().unwrap_or("secret")
                ),
            )
        })?;
        key.open(&RestConn::seal_name(&def.name), sealed)
            .map(|p| p.expose().to_owned())
            .map_err(|e| {
                fail(
                    "auth",
                    502,
                    &label,
                    format!("the stored credential does not open: {e}"),
                )
            })
    };
    let sensitive = |v: String| -> Result<HeaderValue, Failure> {
        let mut v = HeaderValue::from_str(&v).map_err(|_| {
            fail(
                "auth",
                502,
                &label,
                "the credential is not a valid header value".into(),
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    };
    let auth = match &def.auth {
        RestAuth::None => Auth::None,
        RestAuth::Basic { username, .. } => {
            use base64::Engine;
            let pair = format!("{username}:{}", secret()?);
            let v = base64::engine::general_purpose::STANDARD.encode(pair);
            Auth::Static(header::AUTHORIZATION, sensitive(format!("Basic {v}"))?)
        }
        RestAuth::Apikey { header: h, .. } => {
            let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                fail(
                    "invalid",
                    400,
                    &label,
                    format!("auth.header {h:?} is not a header name"),
                )
            })?;
            Auth::Static(name, sensitive(secret()?)?)
        }
        RestAuth::Bearer { .. } => Auth::Static(
            header::AUTHORIZATION,
            sensitive(format!("Bearer {}", secret()?))?,
        ),
        RestAuth::Oauth2 {
            token_url,
            client_id,
            scope,
            refresh_before_s,
            ..
        } => {
            let a = token_addr.expect("parsed above");
            let pool = Pool::new(
                target(&a, &token_tls_config)?,
                TOKEN_POOL_SIZE,
                ms(def.timeout_ms),
                ms(def.connect_timeout_ms),
            );
            let o = OAuth2::new(
                token_url,
                a,
                pool,
                client_id,
                &secret()?,
                scope.as_deref(),
                *refresh_before_s,
                ms(def.timeout_ms),
            )
            .map_err(|e| fail("invalid", 400, &label, e))?;
            Auth::OAuth2(Box::new(o))
        }
    };
    let pool = Pool::new(
        target(&addr, &tls_config)?,
        def.pool_size.max(1),
        ms(def.pool_wait_ms),
        ms(def.connect_timeout_ms),
    );
    Ok(Built {
        label,
        host,
        template,
        defaults,
        auth,
        pool,
    })
}
