//! The pub/sub REST API's requests and answers as plain data: which operation a path and
//! method name, the request bodies (and query strings) parsed into the broker's types, and
//! delivered messages shaped as the native API and as Zato 3.2's. No I/O, no broker.

use base64::Engine as _;
use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use crate::model::pubsub::{
    DeliveryKind, MAX_BATCH, PRIORITY_MAX, PRIORITY_MIN, Retry, check_sub_key,
};
use crate::pubsub::{Delivered, NewMsg, PubsubError, SubscribeReq};

/// The most messages one pull may ask for.
pub const MAX_PULL: u64 = 1000;
/// Messages a pull answers unless it asks for another number.
pub const DEFAULT_PULL: u64 = 100;
/// The longest a pull may wait for its first message, ms.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Which of the two APIs' answer shapes a channel gives (docs/pubsub-parts/D-rest.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Native,
    /// A channel whose url_path is `/zato/pubsub`: Zato 3.2's answers.
    Zato,
}

impl Flavour {
    /// The flavour of a pubsub channel at `url_path`.
    pub fn of(url_path: &str) -> Flavour {
        if url_path == "/zato/pubsub" {
            Flavour::Zato
        } else {
            Flavour::Native
        }
    }
}

/// What a request asks for, from its path below the channel's prefix and its method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `POST {P}/topic/{topic}`.
    Publish(String),
    /// `PATCH {P}/topic/{topic}` (Zato's): the messages of the caller's subscription to it.
    TopicGet(String),
    /// `POST {P}/messages/get`.
    Get,
    /// `POST {P}/messages/ack`.
    Ack,
    /// `POST {P}/subscribe/topic/{topic}`.
    Subscribe(String),
    /// `DELETE {P}/subscribe/topic/{topic}`.
    Unsubscribe(String),
}

/// A request the API cannot take: its status, code and message (as the answer's
/// `{"error": {"code", "message"}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code: "invalid",
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<PubsubError> for ApiError {
    fn from(e: PubsubError) -> ApiError {
        ApiError {
            status: e.status(),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The operation `method` on `rest` (the path below the channel's prefix, still
/// percent-encoded) names: 404 for a path the API does not have, 405 (with the methods it
/// takes) for a method it does not take there.
pub fn route(method: &str, rest: &str) -> Result<Op, ApiError> {
    let not_found = || ApiError {
        status: 404,
        code: "not_found",
        message: format!(
            "the pub/sub API has no {rest:?}: it answers /topic/{{topic}}, /messages/get, \
             /messages/ack and /subscribe/topic/{{topic}}"
        ),
    };
    let wrong = |allowed: &str| ApiError {
        status: 405,
        code: "method_not_allowed",
        message: format!("method {method} not allowed for {rest}; allowed: {allowed}"),
    };
    if let Some(t) = rest.strip_prefix("/topic/") {
        let topic = topic_of(t).ok_or_else(not_found)?;
        return match method {
            "POST" => Ok(Op::Publish(topic)),
            "PATCH" => Ok(Op::TopicGet(topic)),
            _ => Err(wrong("PATCH, POST")),
        };
    }
    if let Some(t) = rest.strip_prefix("/subscribe/topic/") {
        let topic = topic_of(t).ok_or_else(not_found)?;
        return match method {
            "POST" => Ok(Op::Subscribe(topic)),
            "DELETE" => Ok(Op::Unsubscribe(topic)),
            _ => Err(wrong("DELETE, POST")),
        };
    }
    let op = match rest {
        "/messages/get" => Op::Get,
        "/messages/ack" => Op::Ack,
        _ => return Err(not_found()),
    };
    if method == "POST" {
        Ok(op)
    } else {
        Err(wrong("POST"))
    }
}

/// A topic name from the path after `topic/`: its segments percent-decoded and joined with
/// a leading `/` (Zato's URLs, too, carry `/zato/demo/sample` as `topic/zato/demo/sample`).
fn topic_of(encoded: &str) -> Option<String> {
    if encoded.is_empty() {
        return None;
    }
    let mut topic = String::with_capacity(encoded.len() + 1);
    for seg in encoded.split('/') {
        topic.push('/');
        topic.push_str(&crate::edge::router::percent_decode(seg));
    }
    Some(topic)
}

/// A query string's pairs, `+` and `%XX` decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| crate::edge::router::percent_decode(&s.replace('+', " "));
            (dec(k), dec(v))
        })
        .collect()
}

/// Whether a content type is JSON (`application/json`, `…+json`, with any parameters).
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        // No content type: the body is read as JSON (what the API's own examples send).
        return true;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// The JSON body of a request: an object (or, where `array_ok`, an array); an empty body is
/// `{}`.
fn json_body(body: &[u8], what: &str) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    if crate::edge::json_depth::too_deep(body) {
        return Err(ApiError::invalid(crate::edge::json_depth::message()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("{what}: the body is not JSON: {e}")))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::invalid(format!("{what} must be a JSON object")))
}

/// Refuses a key of `o` that is not in `known`, naming it.
fn only(o: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), ApiError> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(format!(
            "{what}: unknown field {k:?} (known: {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn opt_str(o: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("{what}: {key} must be a string"))),
    }
}

fn opt_u64(
    o: &Map<String, Value>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
) -> Result<Option<u64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(format!(
                "{what}: {key} must be an integer from {} to {}",
                range.start(),
                range.end()
            ))),
        },
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str, what: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!(
            "{what}: {key} must be true or false"
        ))),
    }
}

const MSG_FIELDS: [&str; 8] = [
    "data",
    "priority",
    "expiration",
    "has_gd",
    "mime_type",
    "correl_id",
    "in_reply_to",
    "ext_client_id",
];

/// One message of a JSON publish: `data` a string (the text, `text/plain`) or any other
/// JSON value (encoded, `application/json`), unless `mime_type` says otherwise.
fn json_msg(v: &Value, what: &str) -> Result<NewMsg, ApiError> {
    let o = object(v, what)?;
    only(o, &MSG_FIELDS, what)?;
    let (data, mime) = match o.get("data") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(format!("{what}: data is required")));
        }
        Some(Value::String(s)) => (Bytes::from(s.clone()), "text/plain"),
        Some(other) => (Bytes::from(other.to_string()), "application/json"),
    };
    let priority = opt_u64(
        o,
        "priority",
        PRIORITY_MIN as u64..=PRIORITY_MAX as u64,
        what,
    )?;
    Ok(NewMsg {
        data,
        mime_type: Some(opt_str(o, "mime_type", what)?.unwrap_or_else(|| mime.into())),
        priority: priority.map(|p| p as u8),
        expiration_ms: opt_u64(o, "expiration", 1..=u64::MAX, what)?,
        has_gd: opt_bool(o, "has_gd", what)?,
        correl_id: opt_str(o, "correl_id", what)?,
        in_reply_to: opt_str(o, "in_reply_to", what)?,
        ext_client_id: opt_str(o, "ext_client_id", what)?,
    })
}

/// A publish request: its messages, and whether it was a list (answered with `msg_ids`)
/// rather than one message (answered with `msg_id`).
///
/// A JSON body (`json` true: a JSON content type, or any on a Zato channel, whose clients
/// send JSON as form data) is one message object, `{"messages": [...]}`, or an array of
/// message objects. Any other body is the data of one message, its content type the mime
/// type, its metadata from the query string.
pub fn parse_publish(
    json: bool,
    content_type: Option<&str>,
    query: &str,
    body: &[u8],
) -> Result<(Vec<NewMsg>, bool), ApiError> {
    if json {
        if !query.is_empty() {
            return Err(ApiError::invalid(
                "a JSON publish carries its metadata in the body, not the query string",
            ));
        }
        let v = json_body(body, "publish")?;
        let list = match &v {
            Value::Array(a) => Some(a),
            Value::Object(o) if o.contains_key("messages") => {
                only(o, &["messages"], "publish")?;
                Some(o["messages"].as_array().ok_or_else(|| {
                    ApiError::invalid("publish: messages must be a list of message objects")
                })?)
            }
            _ => None,
        };
        return match list {
            None => Ok((vec![json_msg(&v, "the message")?], false)),
            Some(a) if a.is_empty() => Err(ApiError::invalid("publish: the list is empty")),
            Some(a) => a
                .iter()
                .enumerate()
                .map(|(i, m)| json_msg(m, &format!("message {i}")))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| (v, true)),
        };
    }
    let mut m = NewMsg {
        data: Bytes::copy_from_slice(body),
        mime_type: content_type.map(str::to_owned),
        ..NewMsg::default()
    };
    for (k, v) in query_pairs(query) {
        let what = "the query string";
        let int = |range: std::ops::RangeInclusive<u64>| {
            v.parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{what}: {k} must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ))
                })
        };
        match k.as_str() {
            "priority" => m.priority = Some(int(PRIORITY_MIN as u64..=PRIORITY_MAX as u64)? as u8),
            "expiration" => m.expiration_ms = Some(int(1..=u64::MAX)?),
            "has_gd" => {
                m.has_gd = Some(match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "{what}: has_gd must be true or false"
                        )));
                    }
                })
            }
            "correl_id" => m.correl_id = Some(v),
            "in_reply_to" => m.in_reply_to = Some(v),
            "ext_client_id" => m.ext_client_id = Some(v),
            _ => {
                return Err(ApiError::invalid(format!(
                    "{what}: unknown parameter {k:?} (known: priority, expiration, has_gd, \
                     correl_id, in_reply_to, ext_client_id)"
                )));
            }
        }
    }
    Ok((vec![m], false))
}

/// A pull: `{"sub_key", "max_messages", "wait_ms"}` (the sub_key may also be in the query
/// string; `sub_key_required` false lets it be left out, for Zato's `PATCH`, which finds the
/// caller's own subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReq {
    pub sub_key: Option<String>,
    pub max: usize,
    pub wait_ms: u64,
}

/// The sub_key of the body or the query string (not both, unless equal).
fn sub_key_of(
    o: &Map<String, Value>,
    query: &[(String, String)],
    what: &str,
) -> Result<Option<String>, ApiError> {
    let body = opt_str(o, "sub_key", what)?;
    let q = query
        .iter()
        .find(|(k, _)| k == "sub_key")
        .map(|(_, v)| v.clone());
    let key = match (body, q) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(format!(
                "{what}: sub_key differs between the body and the query string"
            )));
        }
        (a, b) => a.or(b),
    };
    if let Some(k) = &key {
        check_sub_key(k).map_err(|e| ApiError::invalid(format!("{what}: {e}")))?;
    }
    Ok(key)
}

fn no_other_query(query: &[(String, String)], known: &[&str], what: &str) -> Result<(), ApiError> {
    match query.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(ApiError::invalid(format!(
            "{what}: unknown query parameter {k:?}"
        ))),
        None => Ok(()),
    }
}

pub fn parse_get(body: &[u8], query: &str, sub_key_required: bool) -> Result<GetReq, ApiError> {
    let what = "get messages";
    let q = query_pairs(query);
    no_other_query(&q, &["sub_key"], what)?;
    let v = json_body(body, what)?;
    let o = object(&v, what)?;
    only(o, &["sub_key", "max_messages", "wait_ms"], what)?;
    let sub_key = sub_key_of(o, &q, what)?;
    if sub_key_required && sub_key.is_none() {
        return Err(ApiError::invalid(format!("{what}: sub_key is required")));
    }
    Ok(GetReq {
        sub_key,
        max: opt_u64(o, "max_messages", 1..=MAX_PULL, what)?.unwrap_or(DEFAULT_PULL) as usize,
        wait_ms: opt_u64(o, "wait_ms", 0..=MAX_WAIT_MS, what)?.unwrap_or(0),
    })
}

/// An ack: `{"sub_key", "msg_ids": [...]}`.
pub fn parse_ack(body: &[u8]) -> Result<(String, Vec<String>), ApiError> {
    let what = "ack";
    let v = json_body(body, what)?;
    let o = object(&v, what)?;
    only(o, &["sub_key", "msg_ids"], what)?;
    let sub_key = sub_key_of(o, &[], what)?
        .ok_or_else(|| ApiError::invalid(format!("{what}: sub_key is required")))?;
    let ids = o
        .get("msg_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::invalid(format!("{what}: msg_ids (a list of strings) is required"))
        })?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid(format!("{what}: msg_ids must hold strings")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((sub_key, ids))
}

/// A subscribe to `topic`: the optional body's delivery settings. A Zato channel also takes
/// Zato's `delivery_method` (`pull` only: Zato's `notify` needs a REST connection the
/// endpoint does not have here; `delivery: {"type": "push", ...}` is its equivalent).
pub fn parse_subscribe(
    topic: &str,
    body: &[u8],
    flavour: Flavour,
) -> Result<SubscribeReq, ApiError> {
    let what = "subscribe";
    let v = json_body(body, what)?;
    let o = object(&v, what)?;
    let mut known = vec![
        "delivery",
        "batch_size",
        "retry",
        "dead_letter_topic",
        "ack_timeout_ms",
    ];
    if flavour == Flavour::Zato {
        known.push("delivery_method");
    }
    only(o, &known, what)?;
    let mut delivery = match o.get("delivery") {
        None | Some(Value::Null) => DeliveryKind::Pull,
        Some(d) => serde_json::from_value(d.clone())
            .map_err(|e| ApiError::invalid(format!("{what}: delivery: {e}")))?,
    };
    match opt_str(o, "delivery_method", what)?.as_deref() {
        None => {}
        Some("pull") if o.get("delivery").is_none_or(Value::is_null) => {
            delivery = DeliveryKind::Pull
        }
        Some(m) => {
            return Err(ApiError::invalid(format!(
                "{what}: delivery_method {m:?} is not supported: use \"pull\", or \
                 \"delivery\": {{\"type\": \"push\", \"url\": ...}} for deliveries to a URL"
            )));
        }
    }
    let retry = match o.get("retry") {
        None | Some(Value::Null) => None,
        Some(r) => Some(
            serde_json::from_value::<Retry>(r.clone())
                .map_err(|e| ApiError::invalid(format!("{what}: retry: {e}")))?,
        ),
    };
    Ok(SubscribeReq {
        topic: topic.to_owned(),
        delivery,
        sub_key: None,
        batch_size: opt_u64(o, "batch_size", 1..=MAX_BATCH as u64, what)?.map(|n| n as u32),
        retry,
        dead_letter_topic: opt_str(o, "dead_letter_topic", what)?,
        ack_timeout_ms: opt_u64(o, "ack_timeout_ms", 1..=u64::MAX, what)?,
    })
}

/// An unsubscribe: the sub_key of the body or the query string, if any.
pub fn parse_unsubscribe(body: &[u8], query: &str) -> Result<Option<String>, ApiError> {
    let what = "unsubscribe";
    let q = query_pairs(query);
    no_other_query(&q, &["sub_key"], what)?;
    let v = json_body(body, what)?;
    let o = object(&v, what)?;
    only(o, &["sub_key"], what)?;
    sub_key_of(o, &q, what)
}

/// A message's data as JSON: the text when it is UTF-8 (borrowed, not copied), else base64
/// (with `"data_encoding": "base64"` beside it).
fn data_entries<M: SerializeMap>(o: &mut M, data: &[u8]) -> Result<(), M::Error> {
    match std::str::from_utf8(data) {
        Ok(text) => o.serialize_entry("data", text),
        Err(_) => {
            o.serialize_entry(
                "data",
                &base64::engine::general_purpose::STANDARD.encode(data),
            )?;
            o.serialize_entry("data_encoding", "base64")
        }
    }
}

/// A pulled message as the native API answers it, serialised straight from the message:
/// no JSON tree is built and the data is not copied (a pull of 1,000 messages of 1 KiB
/// built and freed some 30,000 small allocations this way).
pub struct NativeMsg<'a>(pub &'a Delivered);

impl Serialize for NativeMsg<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (d, m) = (self.0, &self.0.msg);
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("msg_id", &m.msg_id)?;
        o.serialize_entry("topic", &m.topic)?;
        o.serialize_entry("sub_key", &d.sub_key)?;
        data_entries(&mut o, &m.data)?;
        o.serialize_entry("size", &m.data.len())?;
        o.serialize_entry("priority", &m.priority)?;
        o.serialize_entry("pub_time_ms", &m.pub_time_ms)?;
        o.serialize_entry("expires_at_ms", &m.expires_at_ms)?;
        o.serialize_entry("mime_type", &m.mime_type)?;
        o.serialize_entry("correl_id", &m.correl_id)?;
        o.serialize_entry("in_reply_to", &m.in_reply_to)?;
        o.serialize_entry("ext_client_id", &m.ext_client_id)?;
        o.serialize_entry("published_by", &m.published_by)?;
        o.serialize_entry("delivery_count", &d.delivery_count)?;
        o.serialize_entry("has_gd", &m.has_gd)?;
        o.end()
    }
}

/// The native pull's answer: `{"messages": [...]}`.
pub fn native_msgs(got: &[Delivered]) -> Bytes {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        messages: Vec<NativeMsg<'a>>,
    }
    let answer = Answer {
        messages: got.iter().map(NativeMsg).collect(),
    };
    Bytes::from(serde_json::to_vec(&answer).expect("messages serialise"))
}

/// Unix ms as Zato writes times: ISO 8601 in UTC, microseconds, no zone
/// (`2026-12-06T22:03:03.148000`).
pub fn zato_iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
        .unwrap_or_default()
}

/// A pulled message as Zato 3.2's REST API answers it (serialised as [`NativeMsg`] is).
pub struct ZatoMsg<'a>(pub &'a Delivered);

impl Serialize for ZatoMsg<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (d, m) = (self.0, &self.0.msg);
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("msg_id", &m.msg_id)?;
        o.serialize_entry("topic_name", &m.topic)?;
        o.serialize_entry("sub_key", &d.sub_key)?;
        data_entries(&mut o, &m.data)?;
        o.serialize_entry("size", &m.data.len())?;
        o.serialize_entry("priority", &m.priority)?;
        o.serialize_entry("mime_type", &m.mime_type)?;
        o.serialize_entry("pub_time_iso", &zato_iso(m.pub_time_ms))?;
        if let Some(exp) = m.expires_at_ms {
            o.serialize_entry("expiration", &(exp - m.pub_time_ms))?;
            o.serialize_entry("expiration_time_iso", &zato_iso(exp))?;
        }
        o.serialize_entry("delivery_count", &d.delivery_count)?;
        o.serialize_entry("has_gd", &m.has_gd)?;
        for (k, v) in [
            ("correl_id", &m.correl_id),
            ("in_reply_to", &m.in_reply_to),
            ("ext_client_id", &m.ext_client_id),
        ] {
            if let Some(v) = v {
                o.serialize_entry(k, v)?;
            }
        }
        o.end()
    }
}

/// Zato's pull answer: a list of messages.
pub fn zato_msgs(got: &[Delivered]) -> Bytes {
    let list: Vec<ZatoMsg<'_>> = got.iter().map(ZatoMsg).collect();
    Bytes::from(serde_json::to_vec(&list).expect("messages serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pubsub::Message;
    use std::sync::Arc;

    #[test]
    fn paths_and_methods_route() {
        assert_eq!(
            route("POST", "/topic/orders/new"),
            Ok(Op::Publish("/orders/new".into()))
        );
        assert_eq!(
            route("PATCH", "/topic/zato/demo/sample"),
            Ok(Op::TopicGet("/zato/demo/sample".into()))
        );
        assert_eq!(
            route("POST", "/subscribe/topic/a%2Db"),
            Ok(Op::Subscribe("/a-b".into()))
        );
        assert_eq!(
            route("DELETE", "/subscribe/topic/a"),
            Ok(Op::Unsubscribe("/a".into()))
        );
        assert_eq!(route("POST", "/messages/get"), Ok(Op::Get));
        assert_eq!(route("POST", "/messages/ack"), Ok(Op::Ack));
        assert_eq!(route("DELETE", "/messages/ack").unwrap_err().status, 405);
        assert_eq!(route("DELETE", "/topic/a").unwrap_err().status, 405);
        for p in [
            "",
            "/",
            "/topic/",
            "/topic",
            "/messages",
            "/subscribe/topic/",
            "/x",
        ] {
            assert_eq!(route("POST", p).unwrap_err().status, 404, "{p:?}");
        }
    }

    #[test]
    fn json_publish_shapes() {
        let (m, many) = parse_publish(
            true,
            Some("application/json"),
            "",
            br#"{"data": "hi", "priority": 7, "expiration": 60000, "has_gd": false,
                 "correl_id": "c1", "in_reply_to": "r", "ext_client_id": "x"}"#,
        )
        .unwrap();
        assert!(!many);
        assert_eq!(
            m,
            vec![NewMsg {
                data: Bytes::from_static(b"hi"),
                mime_type: Some("text/plain".into()),
                priority: Some(7),
                expiration_ms: Some(60000),
                has_gd: Some(false),
                correl_id: Some("c1".into()),
                in_reply_to: Some("r".into()),
                ext_client_id: Some("x".into()),
            }]
        );
        let (m, _) = parse_publish(true, None, "", br#"{"data": {"a": [1, 2]}}"#).unwrap();
        assert_eq!(m[0].data, Bytes::from_static(br#"{"a":[1,2]}"#));
        assert_eq!(m[0].mime_type.as_deref(), Some("application/json"));
        let (m, _) = parse_publish(
            true,
            None,
            "",
            br#"{"data": "<a/>", "mime_type": "text/xml"}"#,
        )
        .unwrap();
        assert_eq!(m[0].mime_type.as_deref(), Some("text/xml"));
        for body in [
            &br#"{"messages": [{"data": 1}, {"data": "b"}]}"#[..],
            br#"[{"data": 1}, {"data": "b"}]"#,
        ] {
            let (m, many) = parse_publish(true, None, "", body).unwrap();
            assert!(many);
            assert_eq!(m.len(), 2);
            assert_eq!(m[1].data, Bytes::from_static(b"b"));
        }
    }

    #[test]
    fn bad_publishes_name_the_field() {
        let err = |body: &[u8]| parse_publish(true, None, "", body).unwrap_err().message;
        assert!(err(br#"{"priority": 5}"#).contains("data is required"));
        assert!(err(br#"{"data": "x", "priority": 10}"#).contains("priority"));
        assert!(err(br#"{"data": "x", "priority": "5"}"#).contains("priority"));
        assert!(err(br#"{"data": "x", "expiration": 0}"#).contains("expiration"));
        assert!(err(br#"{"data": "x", "has_gd": "yes"}"#).contains("has_gd"));
        assert!(err(br#"{"data": "x", "msg_id": "m"}"#).contains("\"msg_id\""));
        assert!(err(br#"[{"data": "x"}, {"data": "y", "priority": 0}]"#).contains("message 1"));
        assert!(err(br#"[]"#).contains("empty"));
        assert!(err(br#"{"messages": 3}"#).contains("messages"));
        assert!(err(b"{nope").contains("not JSON"));
        assert!(err(b"\"text\"").contains("JSON object"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse_publish(true, None, "", deep.as_bytes())
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn raw_publish_takes_metadata_from_the_query() {
        let (m, many) = parse_publish(
            false,
            Some("text/csv"),
            "priority=7&expiration=60000&has_gd=false&correl_id=a+b%21",
            b"a,b\n1,2\n",
        )
        .unwrap();
        assert!(!many);
        assert_eq!(m[0].data, Bytes::from_static(b"a,b\n1,2\n"));
        assert_eq!(m[0].mime_type.as_deref(), Some("text/csv"));
        assert_eq!(m[0].priority, Some(7));
        assert_eq!(m[0].expiration_ms, Some(60000));
        assert_eq!(m[0].has_gd, Some(false));
        assert_eq!(m[0].correl_id.as_deref(), Some("a b!"));
        for q in [
            "priority=0",
            "priority=x",
            "has_gd=maybe",
            "foo=1",
            "expiration=0",
        ] {
            assert_eq!(
                parse_publish(false, Some("text/plain"), q, b"x")
                    .unwrap_err()
                    .status,
                400,
                "{q}"
            );
        }
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("application/cloudevents+json")));
        assert!(!is_json(Some("text/plain")));
        assert!(is_json(None));
    }

    #[test]
    fn pulls_acks_and_subscribes_parse() {
        assert_eq!(
            parse_get(
                br#"{"sub_key": "sk.1", "max_messages": 5, "wait_ms": 1000}"#,
                "",
                true
            ),
            Ok(GetReq {
                sub_key: Some("sk.1".into()),
                max: 5,
                wait_ms: 1000
            })
        );
        assert_eq!(
            parse_get(b"", "sub_key=sk.2", true),
            Ok(GetReq {
                sub_key: Some("sk.2".into()),
                max: 100,
                wait_ms: 0
            })
        );
        assert_eq!(parse_get(b"", "", false).unwrap().sub_key, None);
        assert!(
            parse_get(b"", "", true)
                .unwrap_err()
                .message
                .contains("sub_key is required")
        );
        assert!(parse_get(br#"{"sub_key": "a", "max_messages": 0}"#, "", true).is_err());
        assert!(parse_get(br#"{"sub_key": "a", "wait_ms": 60001}"#, "", true).is_err());
        assert!(parse_get(br#"{"sub_key": "a b"}"#, "", true).is_err());
        assert!(parse_get(br#"{"sub_key": "a"}"#, "sub_key=b", true).is_err());
        assert_eq!(
            parse_ack(br#"{"sub_key": "sk.1", "msg_ids": ["m1", "m2"]}"#),
            Ok(("sk.1".into(), vec!["m1".into(), "m2".into()]))
        );
        assert!(parse_ack(br#"{"sub_key": "sk.1"}"#).is_err());
        assert!(parse_ack(br#"{"msg_ids": []}"#).is_err());
        assert!(parse_ack(br#"{"sub_key": "s", "msg_ids": [1]}"#).is_err());

        let s = parse_subscribe("/a", b"", Flavour::Native).unwrap();
        assert_eq!(s.topic, "/a");
        assert_eq!(s.delivery, DeliveryKind::Pull);
        let s = parse_subscribe(
            "/a",
            br#"{"delivery": {"type": "push", "url": "http://h/x"}, "batch_size": 10,
                 "retry": {"max_attempts": 3}, "dead_letter_topic": "/dl", "ack_timeout_ms": 5000}"#,
            Flavour::Native,
        )
        .unwrap();
        assert!(matches!(
            s.delivery,
            DeliveryKind::Push { url: Some(_), .. }
        ));
        assert_eq!(s.batch_size, Some(10));
        assert_eq!(s.retry.unwrap().max_attempts, 3);
        assert_eq!(s.dead_letter_topic.as_deref(), Some("/dl"));
        assert_eq!(s.ack_timeout_ms, Some(5000));
        assert!(
            parse_subscribe("/a", br#"{"delivery": {"type": "fax"}}"#, Flavour::Native).is_err()
        );
        assert!(parse_subscribe("/a", br#"{"batch_size": 0}"#, Flavour::Native).is_err());
        assert!(parse_subscribe("/a", br#"{"delivery_method": "pull"}"#, Flavour::Native).is_err());
        assert_eq!(
            parse_subscribe("/a", br#"{"delivery_method": "pull"}"#, Flavour::Zato)
                .unwrap()
                .delivery,
            DeliveryKind::Pull
        );
        assert!(parse_subscribe("/a", br#"{"delivery_method": "notify"}"#, Flavour::Zato).is_err());
        assert_eq!(
            parse_unsubscribe(b"", "sub_key=sk.1"),
            Ok(Some("sk.1".into()))
        );
        assert_eq!(
            parse_unsubscribe(br#"{"sub_key": "sk.1"}"#, ""),
            Ok(Some("sk.1".into()))
        );
        assert_eq!(parse_unsubscribe(b"", ""), Ok(None));
        assert!(parse_unsubscribe(b"", "other=1").is_err());
    }

    fn delivered(data: &'static [u8], expires: Option<i64>) -> Delivered {
        Delivered {
            msg: Arc::new(Message {
                topic: "/orders/new".into(),
                seq: 3,
                msg_id: "zpsm000000000000000000000001".into(),
                pub_time_ms: 1_700_000_000_123,
                expires_at_ms: expires,
                priority: 7,
                has_gd: true,
                mime_type: "text/plain".into(),
                correl_id: Some("c1".into()),
                in_reply_to: None,
                ext_client_id: None,
                published_by: "endpoint:crm".into(),
                data: Bytes::from_static(data),
            }),
            sub_key: "sk.1".into(),
            delivery_count: 2,
        }
    }

    #[test]
    fn native_message_shape() {
        let v = serde_json::to_value(NativeMsg(&delivered(b"hello", None))).unwrap();
        assert_eq!(
            v,
            json!({"msg_id": "zpsm000000000000000000000001", "topic": "/orders/new",
                   "sub_key": "sk.1", "data": "hello", "size": 5, "priority": 7,
                   "pub_time_ms": 1_700_000_000_123i64, "expires_at_ms": null,
                   "mime_type": "text/plain", "correl_id": "c1", "in_reply_to": null,
                   "ext_client_id": null, "published_by": "endpoint:crm",
                   "delivery_count": 2, "has_gd": true})
        );
        let v = serde_json::to_value(NativeMsg(&delivered(b"\xff\x00", None))).unwrap();
        assert_eq!(v["data"], "/wA=");
        assert_eq!(v["data_encoding"], "base64");
        assert_eq!(v["size"], 2);
    }

    #[test]
    fn zato_message_shape() {
        let v =
            serde_json::to_value(ZatoMsg(&delivered(b"hello", Some(1_700_000_060_123)))).unwrap();
        assert_eq!(
            v,
            json!({"msg_id": "zpsm000000000000000000000001", "topic_name": "/orders/new",
                   "sub_key": "sk.1", "data": "hello", "size": 5, "priority": 7,
                   "mime_type": "text/plain", "pub_time_iso": "2023-11-14T22:13:20.123000",
                   "expiration": 60000, "expiration_time_iso": "2023-11-14T22:14:20.123000",
                   "delivery_count": 2, "has_gd": true, "correl_id": "c1"})
        );
        assert!(
            serde_json::to_value(ZatoMsg(&delivered(b"x", None)))
                .unwrap()
                .get("expiration")
                .is_none()
        );
        // The answers around them.
        let both = [delivered(b"a", None), delivered(b"\xff", None)];
        let native: Value = serde_json::from_slice(&native_msgs(&both)).unwrap();
        assert_eq!(native["messages"][1]["data_encoding"], "base64");
        assert_eq!(native["messages"].as_array().unwrap().len(), 2);
        let zato: Value = serde_json::from_slice(&zato_msgs(&both)).unwrap();
        assert_eq!(zato[0]["data"], "a");
    }
}
