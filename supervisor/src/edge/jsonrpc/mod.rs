//! JSON-RPC 2.0 channels (<https://www.jsonrpc.org/specification>): one URL, POST only, where
//! a request's `method` names the service to run, its `params` (an object or an array) are
//! the service's request payload and the service's response payload is the `result`.
//!
//! A channel of `type = "jsonrpc"` may call every deployed service, or only those in its
//! `services` list; any other method is -32601, exactly as if no such service existed. Single
//! requests, batches and notifications work as the specification says: a batch's calls run
//! at once over the worker pool and are answered in request order, notifications are run but
//! not answered, and a request that leaves nothing to answer gets HTTP 204 with no body.
//!
//! Everything around the calls is the HTTP edge's (`crate::edge::http`): routing, body limit,
//! deadline, cid, client origin and trusted proxies; each call goes to the worker through
//! [`HttpCall::invoke`], the same path a REST request takes. A single call runs under the
//! request's cid, the calls of a batch under `<cid>.<index>`.
//!
//! What the worker answers becomes a result or an error object:
//!
//! | worker reply | JSON-RPC |
//! |---|---|
//! | status below 400 | `result`: the JSON body, a text body as a string, no body as `null` |
//! | REPLY `error: no_service` (or not in `services`, or `rpc.*`) | -32601 Method not found |
//! | REPLY `error: input` (SimpleIO input missing or ill-typed) | -32602 Invalid params |
//! | status 500 (the service raised; never a traceback) | -32603 Internal error |
//! | another status of 400 and above (a `Reportable` the service raised) | that status as the code, the service's message |
//! | no reply (workers busy, deadline passed, worker died) | -32000 Server error |
//!
//! Every error object of a call carries `data.cid`. Invalid JSON is -32700 and a request that
//! is not a valid Request object is -32600, as the specification says; their `data.error`
//! names the problem.
//!
//! The answer is HTTP 200 (or 204) however its calls ended, so the edge's refusals are
//! counted per call (`oxbus_http_refused_total`): a call no worker answered by why
//! ([`HttpCall::invoke`] counts it, as for REST), a body that is not JSON, a bad batch and
//! each invalid Request object as `bad_body`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::{Instrument, debug, warn};

use crate::edge::http::{Body, HttpCall};
use crate::lifecycle::pool::{DispatchError, Reply};
use crate::metrics::http::RefusalReason;
use crate::model::channel::{Channel, ChannelType, DataFormat};

/// The most calls one batch may hold; a bigger batch is one -32600. The pool's queue bounds
/// the work anyway, but a batch this big would hold the queue against every other client.
pub const MAX_BATCH: usize = 1000;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined (-32000..-32099): the call got no answer from a worker.
pub const SERVER_ERROR: i64 = -32000;

/// An HTTP request body, read as JSON-RPC.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// Not JSON at all: one -32700 answer.
    NotJson(String),
    /// One Request object (or something that should have been one).
    Single(Entry<'a>),
    /// A non-empty array of them.
    Batch(Vec<Entry<'a>>),
    /// `[]`, or an array of more than [`MAX_BATCH`]: one -32600 answer.
    BadBatch(String),
}

/// One element of a request.
#[derive(Debug)]
pub enum Entry<'a> {
    Call(Call<'a>),
    /// Not a valid Request object: answered with -32600 and `id` (null when the id itself
    /// could not be read), even without an id.
    Invalid {
        id: &'a RawValue,
        reason: String,
    },
}

/// A valid Request object. Its `id` and `params` are the request's own bytes: the id is
/// echoed exactly as sent (a number keeps its spelling), the params go to the worker as they
/// came.
#[derive(Debug)]
pub struct Call<'a> {
    /// None: a notification, which is run but never answered.
    pub id: Option<&'a RawValue>,
    pub method: String,
    pub params: Option<&'a RawValue>,
}

/// The members of a Request object; each kept raw and checked by [`entry`].
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// Some(raw) for a member that is there, `null` included: `Option`'s own deserialisation
/// would read `"id": null` (a request, to be answered with id null) as a missing id (a
/// notification).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn first_byte(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// Reads a request body. Pure, so that every rule of the specification is unit-tested.
pub fn parse(body: &[u8]) -> Parsed<'_> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => return Parsed::NotJson(format!("the body is not UTF-8: {e}")),
    };
    let top: &RawValue = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Parsed::NotJson(e.to_string()),
    };
    if first_byte(top) != b'[' {
        return Parsed::Single(entry(top));
    }
    let items: Vec<&RawValue> = match serde_json::from_str(top.get()) {
        Ok(v) => v,
        Err(e) => return Parsed::NotJson(e.to_string()),
    };
    if items.is_empty() {
        return Parsed::BadBatch("an empty batch".into());
    }
    if items.len() > MAX_BATCH {
        return Parsed::BadBatch(format!(
            "a batch of {} calls; at most {MAX_BATCH} are taken",
            items.len()
        ));
    }
    Parsed::Batch(items.into_iter().map(entry).collect())
}

/// Checks one Request object.
fn entry(raw: &RawValue) -> Entry<'_> {
    fn invalid<'a>(id: Option<&'a RawValue>, reason: &str) -> Entry<'a> {
        Entry::Invalid {
            id: id.unwrap_or(RawValue::NULL),
            reason: reason.into(),
        }
    }
    if first_byte(raw) != b'{' {
        return invalid(None, "a Request must be a JSON object");
    }
    let m: Members = match serde_json::from_str(raw.get()) {
        Ok(m) => m,
        Err(e) => {
            return Entry::Invalid {
                id: RawValue::NULL,
                reason: e.to_string(),
            };
        }
    };
    // An id of the wrong type cannot be echoed: the answer's id is null.
    let id = match m.id {
        Some(id) if matches!(first_byte(id), b'"' | b'-' | b'0'..=b'9' | b'n') => Some(id),
        Some(_) => return invalid(None, "\"id\" must be a string, a number or null"),
        None => None,
    };
    if m.jsonrpc
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        != Some("2.0".into())
    {
        return invalid(id, "\"jsonrpc\" must be \"2.0\"");
    }
    let Some(method) = m
        .method
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    else {
        return invalid(id, "\"method\" must be a string");
    };
    if let Some(p) = m.params
        && !matches!(first_byte(p), b'{' | b'[')
    {
        return invalid(id, "\"params\" must be an object or an array");
    }
    Entry::Call(Call {
        id,
        method,
        params: m.params,
    })
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    fn new(code: i64, message: &str, data: Value) -> ErrorObject {
        ErrorObject {
            code,
            message: message.into(),
            data: Some(data),
        }
    }
}

/// How a call ended.
#[derive(Debug)]
pub enum Outcome {
    Result(Box<RawValue>),
    Error(ErrorObject),
}

/// One Response object.
#[derive(Debug, Serialize)]
pub struct Answer<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorObject>,
    id: &'a RawValue,
}

impl<'a> Answer<'a> {
    pub fn new(id: &'a RawValue, outcome: Outcome) -> Answer<'a> {
        let (result, error) = match outcome {
            Outcome::Result(r) => (Some(r), None),
            Outcome::Error(e) => (None, Some(e)),
        };
        Answer {
            jsonrpc: "2.0",
            result,
            error,
            id,
        }
    }
}

/// The error of a call the channel refuses before any worker sees it: one indistinguishable
/// from a service that does not exist, so that the allow list does not tell which do.
pub fn method_not_found(method: &str, cid: &str) -> ErrorObject {
    ErrorObject::new(
        METHOD_NOT_FOUND,
        "Method not found",
        json!({"error": format!("no such service: {method}"), "cid": cid}),
    )
}

/// Whether `channel` lets a request call `method`.
pub fn allowed(channel: &Channel, method: &str) -> bool {
    // `rpc.` names are reserved by the specification for the protocol's own extensions.
    !method.is_empty()
        && !method.starts_with("rpc.")
        && (channel.services.is_empty() || channel.services.iter().any(|s| s == method))
}

/// What a worker's reply means to the caller (see the module docs for the table).
pub fn outcome(reply: &Reply, cid: &str) -> Outcome {
    let body_json = || serde_json::from_slice::<Value>(&reply.body).ok();
    match reply.error.as_deref() {
        Some(oxbus_ipc::REPLY_ERROR_NO_SERVICE) => {
            return Outcome::Error(ErrorObject::new(
                METHOD_NOT_FOUND,
                "Method not found",
                body_json().unwrap_or_else(|| json!({"cid": cid})),
            ));
        }
        Some(oxbus_ipc::REPLY_ERROR_INPUT) => {
            return Outcome::Error(ErrorObject::new(
                INVALID_PARAMS,
                "Invalid params",
                body_json().unwrap_or_else(|| json!({"cid": cid})),
            ));
        }
        _ => {}
    }
    if reply.status >= 400 {
        let mut data = match body_json() {
            Some(Value::Object(m)) => Value::Object(m),
            Some(other) => json!({"body": other}),
            None => json!({"body": String::from_utf8_lossy(&reply.body)}),
        };
        data["cid"] = json!(cid);
        data["status"] = json!(reply.status);
        if reply.status == 500 {
            return Outcome::Error(ErrorObject::new(INTERNAL_ERROR, "Internal error", data));
        }
        let message = match data.get("error") {
            Some(Value::String(m)) => m.clone(),
            _ => StatusCode::from_u16(reply.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error")
                .to_owned(),
        };
        return Outcome::Error(ErrorObject {
            code: i64::from(reply.status),
            message,
            data: Some(data),
        });
    }
    match result_of(reply) {
        Ok(r) => Outcome::Result(r),
        Err(e) => {
            let problem = e.to_string();
            warn!(
                cid,
                problem, "a service's answer cannot be a JSON-RPC result"
            );
            Outcome::Error(ErrorObject::new(
                INTERNAL_ERROR,
                "Internal error",
                json!({"error": problem, "cid": cid}),
            ))
        }
    }
}

/// Why a successful reply cannot be a JSON-RPC `result`.
#[derive(Debug, thiserror::Error)]
enum ResultError {
    #[error("the service answered JSON that is not UTF-8")]
    NotUtf8,
    #[error("the service answered malformed JSON: {0}")]
    Malformed(serde_json::Error),
    #[error("{0}")]
    Text(serde_json::Error),
    #[error("the service answered {0}, which a JSON-RPC result cannot carry")]
    ContentType(String),
}

/// The `result` of a successful reply: JSON as it is, text as a string, nothing as null.
fn result_of(reply: &Reply) -> Result<Box<RawValue>, ResultError> {
    if reply.body.is_empty() {
        return Ok(RawValue::NULL.to_owned());
    }
    let ct = reply.content_type.as_deref().unwrap_or("application/json");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        let text = String::from_utf8(reply.body.to_vec()).map_err(|_| ResultError::NotUtf8)?;
        return RawValue::from_string(text).map_err(ResultError::Malformed);
    }
    if essence.starts_with("text/") {
        return serde_json::value::to_raw_value(&String::from_utf8_lossy(&reply.body))
            .map_err(ResultError::Text);
    }
    Err(ResultError::ContentType(ct.to_owned()))
}

/// The error of a call no worker answered.
pub fn dispatch_error(e: &DispatchError, cid: &str) -> ErrorObject {
    let retry = matches!(
        e,
        DispatchError::Busy | DispatchError::QueueTimeout | DispatchError::WorkerDied
    );
    ErrorObject::new(
        SERVER_ERROR,
        "Server error",
        json!({"error": e.to_string(), "cid": cid, "retryable": retry}),
    )
}

/// The HTTP body for a request's answers: one object for a single request, an array for a
/// batch; None when there is nothing to answer (only notifications).
pub fn assemble(answers: Vec<Answer<'_>>, batch: bool) -> Option<Vec<u8>> {
    let json = match (batch, answers.as_slice()) {
        (_, []) => return None,
        (false, [one]) => serde_json::to_vec(one),
        _ => serde_json::to_vec(&answers),
    };
    Some(json.expect("answers serialise"))
}

/// Serves one HTTP request of a JSON-RPC channel.
pub(crate) async fn handle(
    call: &HttpCall<'_>,
    channel: &Channel,
    cid: &str,
    body: &[u8],
) -> Response<Body> {
    let (answers, batch) = match parse(body) {
        Parsed::NotJson(reason) => {
            call.refused(RefusalReason::BadBody);
            let e = ErrorObject::new(
                PARSE_ERROR,
                "Parse error",
                json!({"error": reason, "cid": cid}),
            );
            (vec![Answer::new(RawValue::NULL, Outcome::Error(e))], false)
        }
        Parsed::BadBatch(reason) => {
            call.refused(RefusalReason::BadBody);
            let e = ErrorObject::new(
                INVALID_REQUEST,
                "Invalid Request",
                json!({"error": reason, "cid": cid}),
            );
            (vec![Answer::new(RawValue::NULL, Outcome::Error(e))], false)
        }
        Parsed::Single(e) => (
            run(call, channel, e, cid).await.into_iter().collect(),
            false,
        ),
        Parsed::Batch(entries) => {
            let n = entries.len();
            let runs = entries.into_iter().enumerate().map(|(i, e)| async move {
                let cid = format!("{cid}.{i}");
                run(call, channel, e, &cid).await
            });
            let answers: Vec<Answer> = futures_util::future::join_all(runs)
                .await
                .into_iter()
                .flatten()
                .collect();
            debug!(calls = n, answers = answers.len(), "batch answered");
            (answers, true)
        }
    };
    let mut r = match assemble(answers, batch) {
        Some(json) => {
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(cid) {
        r.headers_mut().insert("x-oxbus-cid", v);
    }
    r
}

/// Runs one entry; its answer, or None for a notification.
async fn run<'a>(
    call: &HttpCall<'_>,
    channel: &Channel,
    entry: Entry<'a>,
    cid: &str,
) -> Option<Answer<'a>> {
    let c = match entry {
        Entry::Invalid { id, reason } => {
            call.refused(RefusalReason::BadBody);
            let e = ErrorObject::new(
                INVALID_REQUEST,
                "Invalid Request",
                json!({"error": reason, "cid": cid}),
            );
            return Some(Answer::new(id, Outcome::Error(e)));
        }
        Entry::Call(c) => c,
    };
    let outcome = if !allowed(channel, &c.method) {
        Outcome::Error(method_not_found(&c.method, cid))
    } else {
        let span = tracing::debug_span!("request", cid = %cid, service = %c.method,
            trace_id = %call.trace_id());
        let params = c.params.map(|p| p.get().as_bytes()).unwrap_or(b"");
        let result = call
            .invoke(
                ChannelType::JsonRpc,
                &c.method,
                cid,
                DataFormat::Json,
                &[],
                params,
            )
            .instrument(span)
            .await;
        match result {
            Ok(reply) => outcome(&reply, cid),
            Err(e) => {
                if c.id.is_none() {
                    // Nobody hears of a notification's failure but the log.
                    warn!(cid, service = %c.method, trace_id = call.trace_id(), error = %e,
                        "JSON-RPC notification not run");
                }
                Outcome::Error(dispatch_error(&e, cid))
            }
        }
    };
    c.id.map(|id| Answer::new(id, outcome))
}

#[cfg(test)]
mod tests;
