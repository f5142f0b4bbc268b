//! The admin API's pub/sub (docs/PUBSUB.md): topics, subscriptions and endpoints (config
//! objects, changed through `admin::objects` with this kind's hooks here), the figures the
//! broker keeps, a subscription's queue and dead letters, and a test publish.
//!
//! - `GET /v1/pubsub/topics`: every topic with its `stats` (`pubsub::TopicStats`)
//! - `GET|PUT|DELETE /v1/pubsub/topics/{name...}`: one topic; the topic's name is the rest
//!   of the path, its leading `/` the separator (`/v1/pubsub/topics/orders/new` is
//!   `/orders/new`). A topic that a subscription names (or uses as its dead-letter topic)
//!   is not deleted (409 naming them); a pattern subscription does not hold its topics.
//! - `GET /v1/pubsub/subs`, `GET|PUT|DELETE /v1/pubsub/subs/{sub_key}`: subscriptions with
//!   their `stats` (`pubsub::SubStats`, asked of the server delivering each). A PUT is a
//!   subscription the operator defines (`created_by` `admin:<identity>` when new,
//!   `created_at_ms` now when left out); a DELETE goes through `Broker::unsubscribe`, so that
//!   its cursors and dead letters go with it.
//! - `GET /v1/pubsub/subs/{sub_key}/queue?limit=N` and `/dead?limit=N`: the messages waiting,
//!   in delivery order, and the dead letters, oldest first (data cut)
//! - `POST /v1/pubsub/subs/{sub_key}/requeue` (`{"msg_ids": [...]}`, or `{}` for every dead
//!   letter) and `POST /v1/pubsub/subs/{sub_key}/purge`
//! - `GET|PUT|DELETE /v1/pubsub/endpoints[/{name}]`: who may publish and subscribe where
//! - `POST /v1/pubsub/publish/{topic...}`: a test message, published as `admin:<identity>`
//!   (a body of the REST API's shape: `{"data": …, "priority": …}`, a list of them, or
//!   `{"messages": [...]}`)
//!
//! Errors of the broker are answered with its status and `{"error": …, "code": …}`.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::auth::Identity;
use super::objects::{self, AdminObject, Refused};
use super::{Body, Ctx, error, json_body, read_body, reply};
use crate::model::object::{ConfigObject, ObjectSet};
use crate::model::outgoing::RestConn;
use crate::model::pubsub::{DeliveryKind, Endpoint, Subscription, Topic};
use crate::model::security::SecurityDef;
use crate::pubsub::{Caller, NewMsg, PubsubError};
use crate::store::StoreError;

/// The most messages a queue or dead-letter listing answers (`limit`; default 100).
const MAX_LIST: usize = 1000;
const DEFAULT_LIST: usize = 100;
/// The most messages one test publish carries.
const MAX_PUBLISH: usize = 1000;

/// Routes `/v1/pubsub/…`; `rest` is the path after `/v1/pubsub`, split at `/`.
pub(super) async fn route(
    req: Request<Incoming>,
    cx: &Ctx,
    rest: &[&str],
    who: &Identity,
) -> Response<Body> {
    let method = req.method().clone();
    let decode = crate::edge::router::percent_decode;
    let query = req.uri().query().unwrap_or("").to_owned();
    match (&method, rest) {
        (&Method::GET, ["topics"]) => list_topics(cx).await,
        (&Method::GET, ["topics", name @ ..]) if !name.is_empty() => {
            get_topic(cx, &topic_from_segments(name)).await
        }
        (&Method::PUT, ["topics", name @ ..]) if !name.is_empty() => {
            let name = topic_from_segments(name);
            match read_body(req).await {
                Ok(body) => objects::put::<Topic>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["topics", name @ ..]) if !name.is_empty() => {
            delete_topic(cx, &topic_from_segments(name)).await
        }
        (&Method::GET, ["subs"]) => list_subs(cx).await,
        (&Method::GET, ["subs", key]) => get_sub(cx, &decode(key)).await,
        (&Method::PUT, ["subs", key]) => {
            let key = decode(key);
            match read_body(req).await {
                Ok(body) => {
                    let body = with_creator(cx, &key, body, who).await;
                    objects::put::<Subscription>(cx, Some(&key), body).await
                }
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["subs", key]) => unsubscribe(cx, &decode(key), who).await,
        (&Method::GET, ["subs", key, "queue"]) => match limit(&query) {
            Ok(n) => {
                let key = decode(key);
                messages(&key, cx.pubsub.browse(&key, n).await)
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::GET, ["subs", key, "dead"]) => match limit(&query) {
            Ok(n) => {
                let key = decode(key);
                messages(&key, cx.pubsub.dead_letters(&key, n).await)
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::POST, ["subs", key, "requeue"]) => {
            let key = decode(key);
            match read_body(req).await {
                Ok(body) => requeue(cx, &key, &body).await,
                Err(r) => r,
            }
        }
        (&Method::POST, ["subs", key, "purge"]) => {
            let key = decode(key);
            match cx.pubsub.purge(&key).await {
                Ok(n) => reply(StatusCode::OK, json!({"sub_key": key, "purged": n})),
                Err(e) => broker_error(&e),
            }
        }
        (&Method::GET, ["endpoints"]) => list_endpoints(cx).await,
        (&Method::GET, ["endpoints", name]) => get_endpoint(cx, &decode(name)).await,
        (&Method::PUT, ["endpoints", name]) => {
            let name = decode(name);
            match read_body(req).await {
                Ok(body) => objects::put::<Endpoint>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["endpoints", name]) => delete_endpoint(cx, &decode(name)).await,
        (&Method::POST, ["publish", topic @ ..]) if !topic.is_empty() => {
            let topic = topic_from_segments(topic);
            match read_body(req).await {
                Ok(body) => publish(cx, &topic, &body, who).await,
                Err(r) => r,
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no admin endpoint {method} {}: pub/sub is under /v1/pubsub/topics, \
                 /v1/pubsub/subs, /v1/pubsub/endpoints and /v1/pubsub/publish",
                req.uri().path()
            ),
        ),
    }
}

/// A topic's name from the path segments after `topics/` (or `publish/`): each decoded,
/// joined with `/` after a leading `/`. A single segment that decodes to a name with its
/// leading `/` (a client that encoded the whole name) is taken as it is.
pub(super) fn topic_from_segments(segments: &[&str]) -> String {
    let decode = crate::edge::router::percent_decode;
    if let [one] = segments {
        let d = decode(one);
        if d.starts_with('/') {
            return d;
        }
    }
    let mut name = String::new();
    for s in segments {
        name.push('/');
        name.push_str(&decode(s));
    }
    name
}

/// A broker's error as the admin API answers it: its status, message and code.
fn broker_error(e: &PubsubError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(status, json!({"error": e.to_string(), "code": e.code()}))
}

/// `limit=N` of a query string: 1..=[`MAX_LIST`], default [`DEFAULT_LIST`].
fn limit(query: &str) -> Result<usize, String> {
    let Some(v) = query.split('&').find_map(|kv| kv.strip_prefix("limit=")) else {
        return Ok(DEFAULT_LIST);
    };
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_LIST).contains(&n) => Ok(n),
        _ => Err(format!(
            "limit must be a number from 1 to {MAX_LIST}, not {v:?}"
        )),
    }
}

fn messages(
    sub_key: &str,
    listed: Result<Vec<crate::pubsub::QueuedMsg>, PubsubError>,
) -> Response<Body> {
    match listed {
        Ok(list) => reply(
            StatusCode::OK,
            json!({"sub_key": sub_key, "messages": list}),
        ),
        Err(e) => broker_error(&e),
    }
}

/// A definition as listed: its fields and `stats` (null, with `stats_error`, when the broker
/// could not give them: the definitions are still worth showing).
fn with_stats<T: serde::Serialize>(def: &impl serde::Serialize, stats: Result<T, String>) -> Value {
    let mut v = serde_json::to_value(def).expect("a definition serialises");
    match stats {
        Ok(s) => v["stats"] = serde_json::to_value(s).expect("figures serialise"),
        Err(e) => {
            v["stats"] = Value::Null;
            v["stats_error"] = Value::String(e);
        }
    }
    v
}

async fn stored<K: ConfigObject>(cx: &Ctx) -> Result<Vec<K>, Response<Body>> {
    cx.store
        .objects::<K>()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))
}

/// `GET /v1/pubsub/topics`: every stored topic, by name, with this cluster's figures.
async fn list_topics(cx: &Ctx) -> Response<Body> {
    let mut topics: Vec<Topic> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let stats = cx.pubsub.topic_stats().await.map_err(|e| e.to_string());
    let list: Vec<Value> = topics
        .iter()
        .map(|t| {
            let s = stats.as_ref().map_err(Clone::clone).map(|all| {
                all.iter()
                    .find(|s| s.name == t.name)
                    .cloned()
                    .unwrap_or_else(|| crate::pubsub::TopicStats {
                        name: t.name.clone(),
                        ..Default::default()
                    })
            });
            with_stats(t, s)
        })
        .collect();
    reply(StatusCode::OK, json!({ "topics": list }))
}

async fn get_topic(cx: &Ctx, name: &str) -> Response<Body> {
    let topics: Vec<Topic> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Some(t) = topics.iter().find(|t| t.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no topic named {name}"));
    };
    let stats = cx.pubsub.topic_stats().await.map_err(|e| e.to_string());
    let s = stats.map(|all| {
        all.into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| crate::pubsub::TopicStats {
                name: name.to_owned(),
                ..Default::default()
            })
    });
    reply(StatusCode::OK, with_stats(t, s))
}

/// `GET /v1/pubsub/subs`: every stored subscription, by sub_key, each with its figures.
async fn list_subs(cx: &Ctx) -> Response<Body> {
    let mut subs: Vec<Subscription> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    subs.sort_by(|a, b| a.sub_key.cmp(&b.sub_key));
    // Each is asked of the server delivering it: several at once, not one after another,
    // and not thousands at once either.
    use futures_util::StreamExt as _;
    let asks: Vec<_> = subs
        .iter()
        .map(|s| {
            let (broker, key) = (cx.pubsub.clone(), s.sub_key.clone());
            async move { broker.sub_stats(&key).await }
        })
        .collect();
    let stats: Vec<_> = futures_util::stream::iter(asks)
        .buffered(16)
        .collect()
        .await;
    let list: Vec<Value> = subs
        .iter()
        .zip(stats)
        .map(|(s, st)| with_stats(s, st.map_err(|e| e.to_string())))
        .collect();
    reply(StatusCode::OK, json!({ "subscriptions": list }))
}

async fn get_sub(cx: &Ctx, key: &str) -> Response<Body> {
    let subs: Vec<Subscription> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Some(s) = subs.iter().find(|s| s.sub_key == key) else {
        return error(StatusCode::NOT_FOUND, format!("no subscription {key}"));
    };
    let stats = cx.pubsub.sub_stats(key).await.map_err(|e| e.to_string());
    reply(StatusCode::OK, with_stats(s, stats))
}

/// A PUT's body with `created_by` = `admin:<identity>` when it leaves it out and no
/// subscription of that sub_key exists (an edit keeps who made it: the model's
/// `into_stored`). A body that is not a JSON object goes on as it is, for the put to refuse.
async fn with_creator(cx: &Ctx, key: &str, body: Bytes, who: &Identity) -> Bytes {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    if obj.contains_key("created_by") {
        return body;
    }
    let exists = cx
        .store
        .objects::<Subscription>()
        .await
        .map(|l| l.iter().any(|s| s.sub_key == key))
        // The put reads the store again and answers 503 itself.
        .unwrap_or(true);
    if exists {
        return body;
    }
    obj.insert(
        "created_by".into(),
        Value::String(format!("admin:{}", who.name)),
    );
    Bytes::from(Value::Object(obj).to_string())
}

/// `DELETE /v1/pubsub/subs/{sub_key}`: through the broker, which deletes the definition with
/// its cursors and dead letters.
async fn unsubscribe(cx: &Ctx, key: &str, who: &Identity) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    match cx
        .pubsub
        .unsubscribe(&Caller::Admin(who.name.clone()), key)
        .await
    {
        Ok(()) => {
            let version = cx.store.version().await.ok();
            tracing::info!(
                kind = Subscription::KIND,
                name = key,
                "subscription deleted"
            );
            reply(
                StatusCode::OK,
                json!({"config_version": version, "deleted": key}),
            )
        }
        Err(e) => broker_error(&e),
    }
}

/// `DELETE /v1/pubsub/topics/{name...}`: refused (409) while a stored subscription names
/// the topic (as its topic or dead-letter topic; patterns hold none), checked under the
/// deploy lock so that no subscription to it is stored meanwhile through this server's API;
/// then the object, then its log (messages, seq), which no one reads any more.
async fn delete_topic(cx: &Ctx, name: &str) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let subs: Vec<Subscription> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let mut holding: Vec<&str> = subs
        .iter()
        .filter(|s| s.topic == name || s.dead_letter_topic.as_deref() == Some(name))
        .map(|s| s.sub_key.as_str())
        .collect();
    if !holding.is_empty() {
        holding.sort_unstable();
        return error(
            StatusCode::CONFLICT,
            format!(
                "topic {name} is used by subscription(s) {} (as their topic or dead-letter \
                 topic): delete or change them first",
                holding.join(", ")
            ),
        );
    }
    let topics: Vec<Topic> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let change = match cx.store.delete_object::<Topic>(name).await {
        Ok(c) => c,
        Err(StoreError::NotFound(_)) => {
            return error(StatusCode::NOT_FOUND, Topic::not_found(name));
        }
        Err(StoreError::Invalid(m)) => return error(StatusCode::CONFLICT, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if let Err(e) = cx.store.drop_topic_log(name).await {
        // The topic is gone; its rows stay until a topic of the name is deleted again.
        tracing::warn!(topic = name, error = %e, "pubsub: cannot drop a deleted topic's log");
    }
    apply_pubsub(cx, topics.into_iter().filter(|t| t.name != name).collect()).await;
    tracing::info!(kind = Topic::KIND, name, "topic deleted");
    reply(
        StatusCode::OK,
        json!({"config_version": change.config_version, "deleted": name}),
    )
}

/// `DELETE /v1/pubsub/endpoints/{name}`: refused (409) while a stored subscription is the
/// endpoint's (checked under the deploy lock).
async fn delete_endpoint(cx: &Ctx, name: &str) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let subs: Vec<Subscription> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let mut holding: Vec<&str> = subs
        .iter()
        .filter(|s| s.endpoint.as_deref() == Some(name))
        .map(|s| s.sub_key.as_str())
        .collect();
    if !holding.is_empty() {
        holding.sort_unstable();
        return error(
            StatusCode::CONFLICT,
            format!(
                "pub/sub endpoint {name} has subscription(s) {}: delete them first",
                holding.join(", ")
            ),
        );
    }
    let endpoints: Vec<Endpoint> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let change = match cx.store.delete_object::<Endpoint>(name).await {
        Ok(c) => c,
        Err(StoreError::NotFound(_)) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no pub/sub endpoint named {name}"),
            );
        }
        Err(StoreError::Invalid(m)) => return error(StatusCode::CONFLICT, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    apply_pubsub(
        cx,
        endpoints.into_iter().filter(|e| e.name != name).collect(),
    )
    .await;
    tracing::info!(kind = Endpoint::KIND, name, "pub/sub endpoint deleted");
    reply(
        StatusCode::OK,
        json!({"config_version": change.config_version, "deleted": name}),
    )
}

/// The stored pub/sub endpoints and push subscriptions that name `security` (a security
/// definition) or `conn` (a REST outgoing connection), for refusing their deletion: the
/// message of the 409, if any.
pub(crate) async fn in_use_by(
    cx: &Ctx,
    security: Option<&str>,
    conn: Option<&str>,
) -> Result<Option<String>, Response<Body>> {
    if let Some(sec) = security {
        let endpoints: Vec<Endpoint> = stored(cx).await?;
        let mut names: Vec<&str> = endpoints
            .iter()
            .filter(|e| e.security == sec)
            .map(|e| e.name.as_str())
            .collect();
        if !names.is_empty() {
            names.sort_unstable();
            return Ok(Some(format!(
                "security definition {sec} is used by pub/sub endpoint(s) {}: delete or \
                 change them first",
                names.join(", ")
            )));
        }
    }
    if let Some(conn) = conn {
        let subs: Vec<Subscription> = stored(cx).await?;
        let mut keys: Vec<&str> = subs
            .iter()
            .filter(|s| push_conn(s) == Some(conn))
            .map(|s| s.sub_key.as_str())
            .collect();
        if !keys.is_empty() {
            keys.sort_unstable();
            return Ok(Some(format!(
                "outgoing connection {conn} is used by push subscription(s) {}: delete or \
                 change them first",
                keys.join(", ")
            )));
        }
    }
    Ok(None)
}

/// The REST outgoing connection a push subscription delivers through, if any.
fn push_conn(s: &Subscription) -> Option<&str> {
    match &s.delivery {
        DeliveryKind::Push { conn, .. } => conn.as_deref(),
        _ => None,
    }
}

/// What a push subscription names must exist (its `conn`), and a plain `url` carries no
/// credentials (`user:pass@`): they would be stored, shown and logged as part of the URL;
/// credentials belong in an outgoing connection's secret.
fn push_references(s: &Subscription, conns: &[RestConn]) -> Result<(), String> {
    let DeliveryKind::Push { conn, url, .. } = &s.delivery else {
        return Ok(());
    };
    if let Some(c) = conn.as_deref()
        && !conns.iter().any(|r| r.name == c)
    {
        return Err(format!(
            "subscription {}: delivery.conn: no REST outgoing connection named {c}",
            s.sub_key
        ));
    }
    if let Some(u) = url.as_deref() {
        let after_scheme = u.split_once("://").map_or(u, |(_, rest)| rest);
        let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(format!(
                "subscription {}: delivery.url: credentials in the URL (user:pass@) are not \
                 accepted; use delivery.conn, a REST outgoing connection with its auth",
                s.sub_key
            ));
        }
    }
    Ok(())
}

/// `POST …/requeue`: `{"msg_ids": [...]}` or an empty body / `{}` for every dead letter.
async fn requeue(cx: &Ctx, key: &str, body: &[u8]) -> Response<Body> {
    let ids: Option<Vec<String>> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v = match json_body(body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let Some(obj) = v.as_object() else {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be {\"msg_ids\": [...]} or {} (every dead letter)",
            );
        };
        if let Some(k) = obj.keys().find(|k| *k != "msg_ids") {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown field {k:?}: the body takes msg_ids only"),
            );
        }
        match obj.get("msg_ids") {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<Vec<String>>(v.clone()) {
                Ok(l) => Some(l),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "msg_ids must be a list of message ids (strings)",
                    );
                }
            },
        }
    };
    match cx.pubsub.requeue(key, ids.as_deref()).await {
        Ok(n) => reply(StatusCode::OK, json!({"sub_key": key, "requeued": n})),
        Err(e) => broker_error(&e),
    }
}

async fn list_endpoints(cx: &Ctx) -> Response<Body> {
    let mut list: Vec<Endpoint> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    list.sort_by(|a, b| a.name.cmp(&b.name));
    reply(StatusCode::OK, json!({ "endpoints": list }))
}

async fn get_endpoint(cx: &Ctx, name: &str) -> Response<Body> {
    let list: Vec<Endpoint> = match stored(cx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    match list.into_iter().find(|e| e.name == name) {
        Some(e) => reply(StatusCode::OK, json!(e)),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no pub/sub endpoint named {name}"),
        ),
    }
}

/// The fields of one message of a publish body (the REST API's).
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

/// One message of a publish body: `data` a string (the text, `text/plain`) or any other JSON
/// value (encoded, `application/json`); every error names the message and the field.
pub(crate) fn new_msg(i: usize, v: &Value) -> Result<NewMsg, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("message {i}: must be a JSON object with data"));
    };
    if let Some(k) = obj.keys().find(|k| !MSG_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "message {i}: unknown field {k:?} (a message has {})",
            MSG_FIELDS.join(", ")
        ));
    }
    let (data, mime) = match obj.get("data") {
        None => return Err(format!("message {i}: data: missing")),
        Some(Value::String(s)) => (Bytes::from(s.clone().into_bytes()), "text/plain"),
        Some(other) => (Bytes::from(other.to_string()), "application/json"),
    };
    let text = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("message {i}: {k}: must be a string")),
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(p @ 1..=9) => Some(p as u8),
            _ => return Err(format!("message {i}: priority: must be from 1 to 9")),
        },
    };
    let expiration_ms = match obj.get("expiration") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(ms) if ms > 0 => Some(ms),
            _ => {
                return Err(format!(
                    "message {i}: expiration: must be a number of milliseconds, at least 1"
                ));
            }
        },
    };
    let has_gd = match obj.get("has_gd") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(format!("message {i}: has_gd: must be true or false")),
    };
    Ok(NewMsg {
        data,
        mime_type: Some(text("mime_type")?.unwrap_or_else(|| mime.to_owned())),
        priority,
        expiration_ms,
        has_gd,
        correl_id: text("correl_id")?,
        in_reply_to: text("in_reply_to")?,
        ext_client_id: text("ext_client_id")?,
    })
}

/// The messages of a publish body: one message, a list of them, or `{"messages": [...]}`.
pub(crate) fn publish_body(v: &Value) -> Result<Vec<NewMsg>, String> {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) if o.contains_key("messages") => {
            if o.len() != 1 {
                return Err("a body with messages has no other field".into());
            }
            match &o["messages"] {
                Value::Array(a) => a.iter().collect(),
                _ => return Err("messages: must be a list of messages".into()),
            }
        }
        other => vec![other],
    };
    if list.is_empty() {
        return Err("no message to publish".into());
    }
    if list.len() > MAX_PUBLISH {
        return Err(format!(
            "{} messages: at most {MAX_PUBLISH} in one publish",
            list.len()
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, v)| new_msg(i, v))
        .collect()
}

/// `POST /v1/pubsub/publish/{topic...}`: a test publish as `admin:<identity>`.
async fn publish(cx: &Ctx, topic: &str, body: &[u8], who: &Identity) -> Response<Body> {
    let v = match json_body(body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let msgs = match publish_body(&v) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match cx
        .pubsub
        .publish(&Caller::Admin(who.name.clone()), topic, msgs)
        .await
    {
        Ok(ids) => reply(StatusCode::OK, json!({"topic": topic, "msg_ids": ids})),
        Err(e) => broker_error(&e),
    }
}

/// Whether what the definitions name exists among them (the config as a change or an import
/// leaves it): a subscription's topic (unless a pattern) and dead-letter topic, an endpoint's
/// security definition. The error names the object and the field.
pub(crate) fn check_references(
    topics: &[Topic],
    subs: &[Subscription],
    endpoints: &[Endpoint],
    security: &[SecurityDef],
    rest_conns: &[RestConn],
) -> Result<(), String> {
    for s in subs {
        sub_references(s, topics)?;
        push_references(s, rest_conns)?;
    }
    for e in endpoints {
        endpoint_references(e, security)?;
        shared_security(e, endpoints)?;
    }
    Ok(())
}

fn sub_references(s: &Subscription, topics: &[Topic]) -> Result<(), String> {
    let exists = |name: &str| topics.iter().any(|t| t.name == name);
    if !s.topic.contains('*') && !exists(&s.topic) {
        return Err(format!(
            "subscription {}: topic: no topic named {} (create it first, or subscribe to a \
             pattern with *)",
            s.sub_key, s.topic
        ));
    }
    if let Some(dl) = s.dead_letter_topic.as_deref().filter(|dl| !exists(dl)) {
        return Err(format!(
            "subscription {}: dead_letter_topic: no topic named {dl}",
            s.sub_key
        ));
    }
    Ok(())
}

/// Unless `e` is the only endpoint (of `endpoints`, the others) of its security definition.
fn shared_security(e: &Endpoint, endpoints: &[Endpoint]) -> Result<(), String> {
    match endpoints
        .iter()
        .find(|o| o.name != e.name && o.security == e.security)
    {
        Some(o) => Err(format!(
            "pub/sub endpoints {} and {} would both have security definition {}: a \
             definition is one endpoint's",
            o.name, e.name, e.security
        )),
        None => Ok(()),
    }
}

fn endpoint_references(e: &Endpoint, security: &[SecurityDef]) -> Result<(), String> {
    if !security.iter().any(|d| d.name == e.security) {
        return Err(format!(
            "pub/sub endpoint {}: security: no security definition named {}",
            e.name, e.security
        ));
    }
    Ok(())
}

/// Makes this server's broker run by the definitions after a change of kind `K` made through
/// it: the store's (all three kinds, for [`crate::pubsub::Broker::apply`] takes them whole),
/// or, should the store not answer now, the broker's current ones with `expected` for `K`.
async fn apply_pubsub<K: PubsubKind>(cx: &Ctx, expected: Vec<K>) {
    let set = match cx.store.object_set().await {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot read the pub/sub definitions back: applying the change as made"
            );
            let defs = cx.pubsub.defs();
            let mut set = ObjectSet {
                pubsub_topics: defs.topics.values().map(|t| (**t).clone()).collect(),
                pubsub_subs: defs.subs.values().map(|s| (**s).clone()).collect(),
                pubsub_endpoints: defs.endpoints.values().map(|e| (**e).clone()).collect(),
                ..Default::default()
            };
            K::replace(&mut set, expected);
            set
        }
    };
    cx.pubsub.apply(&set);
}

/// The three kinds' lists in an [`ObjectSet`].
trait PubsubKind: ConfigObject {
    fn replace(set: &mut ObjectSet, defs: Vec<Self>);
}
impl PubsubKind for Topic {
    fn replace(set: &mut ObjectSet, defs: Vec<Self>) {
        set.pubsub_topics = defs;
    }
}
impl PubsubKind for Subscription {
    fn replace(set: &mut ObjectSet, defs: Vec<Self>) {
        set.pubsub_subs = defs;
    }
}
impl PubsubKind for Endpoint {
    fn replace(set: &mut ObjectSet, defs: Vec<Self>) {
        set.pubsub_endpoints = defs;
    }
}

fn bad(e: impl std::fmt::Display) -> Refused {
    Refused::new(StatusCode::BAD_REQUEST, e)
}

impl AdminObject for Topic {
    async fn build(
        _cx: &Ctx,
        input: Value,
        name: Option<&str>,
        _stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        let t = crate::model::document::parse_topic(&input, name).map_err(bad)?;
        t.validate().map_err(bad)?;
        Ok(t)
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        apply_pubsub(cx, expected).await;
        Ok(())
    }

    fn put_answer(
        _cx: &Ctx,
        def: &Self,
        config_version: i64,
        created: bool,
    ) -> Result<Value, Refused> {
        Ok(json!({"config_version": config_version, "created": created, "topic": def}))
    }

    fn not_found(name: &str) -> String {
        format!("no topic named {name}")
    }
}

impl AdminObject for Subscription {
    /// Built under the deploy lock: what it names is checked against the store as it is
    /// when the subscription is stored (no topic deleted meanwhile through this server).
    const BUILT_FROM_STORED: bool = true;

    /// The body's fields (`sub_key` may be left out); `created_at_ms` left out is the stored
    /// one's, else now (the model's `into_stored`); `endpoint` left out is the stored one's
    /// (a replacement does not take a subscription from its endpoint). Its topic (unless a
    /// pattern) and dead-letter topic must exist, and a push one's `conn`.
    async fn build(
        cx: &Ctx,
        input: Value,
        name: Option<&str>,
        stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        let keeps_endpoint = input.get("endpoint").is_none();
        let mut s = crate::model::document::parse_subscription(&input, name).map_err(bad)?;
        if keeps_endpoint && let Some(old) = stored {
            s.endpoint = old.endpoint.clone();
        }
        // A subscription's cursors are per topic of its name or pattern: another topic is
        // another queue (the old one's cursors would hold that topic's log forever).
        if let Some(old) = stored
            && old.topic != s.topic
        {
            return Err(Refused::new(
                StatusCode::CONFLICT,
                format!(
                    "subscription {} is on {}: its topic cannot change to {} (delete it and \
                     subscribe again)",
                    s.sub_key, old.topic, s.topic
                ),
            ));
        }
        s.validate().map_err(bad)?;
        let unavailable = |e| Refused::new(StatusCode::SERVICE_UNAVAILABLE, e);
        let topics: Vec<Topic> = cx.store.objects().await.map_err(unavailable)?;
        sub_references(&s, &topics).map_err(bad)?;
        if matches!(s.delivery, DeliveryKind::Push { .. }) {
            let conns: Vec<RestConn> = cx.store.objects().await.map_err(unavailable)?;
            push_references(&s, &conns).map_err(bad)?;
        }
        Ok(s)
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        apply_pubsub(cx, expected).await;
        Ok(())
    }

    fn put_answer(
        _cx: &Ctx,
        def: &Self,
        config_version: i64,
        created: bool,
    ) -> Result<Value, Refused> {
        Ok(json!({"config_version": config_version, "created": created, "subscription": def}))
    }

    fn not_found(name: &str) -> String {
        format!("no subscription {name}")
    }
}

impl AdminObject for Endpoint {
    /// Built under the deploy lock: the checks below see the store as it is stored.
    const BUILT_FROM_STORED: bool = true;

    /// Its security definition must exist, and be no other endpoint's (a caller is one
    /// endpoint: 409 naming both).
    async fn build(
        cx: &Ctx,
        input: Value,
        name: Option<&str>,
        _stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        let e = crate::model::document::parse_endpoint(&input, name).map_err(bad)?;
        e.validate().map_err(bad)?;
        let unavailable = |e| Refused::new(StatusCode::SERVICE_UNAVAILABLE, e);
        let security: Vec<SecurityDef> = cx.store.objects().await.map_err(unavailable)?;
        endpoint_references(&e, &security).map_err(bad)?;
        let endpoints: Vec<Endpoint> = cx.store.objects().await.map_err(unavailable)?;
        if let Err(m) = shared_security(&e, &endpoints) {
            return Err(Refused::new(StatusCode::CONFLICT, m));
        }
        Ok(e)
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        apply_pubsub(cx, expected).await;
        Ok(())
    }

    fn put_answer(
        _cx: &Ctx,
        def: &Self,
        config_version: i64,
        created: bool,
    ) -> Result<Value, Refused> {
        Ok(json!({"config_version": config_version, "created": created, "endpoint": def}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_s_name_is_the_rest_of_the_path() {
        assert_eq!(topic_from_segments(&["orders", "new"]), "/orders/new");
        assert_eq!(topic_from_segments(&["%2Forders%2Fnew"]), "/orders/new");
        assert_eq!(topic_from_segments(&["a%20b"]), "/a b");
    }

    #[test]
    fn a_publish_body_names_the_message_and_the_field() {
        let m = publish_body(&json!({"data": "hi", "priority": 7})).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].data, Bytes::from_static(b"hi"));
        assert_eq!(m[0].mime_type.as_deref(), Some("text/plain"));
        assert_eq!(m[0].priority, Some(7));
        let m = publish_body(&json!([{"data": {"a": 1}}, {"data": "x", "has_gd": false}])).unwrap();
        assert_eq!(m[0].data, Bytes::from_static(br#"{"a":1}"#));
        assert_eq!(m[0].mime_type.as_deref(), Some("application/json"));
        assert_eq!(m[1].has_gd, Some(false));
        assert_eq!(
            publish_body(&json!({"messages": [{"data": 1}, {"data": 2}]}))
                .unwrap()
                .len(),
            2
        );
        for (body, want) in [
            (json!({"priority": 5}), "message 0: data: missing"),
            (
                json!({"data": "x", "priority": 10}),
                "message 0: priority: must be from 1 to 9",
            ),
            (
                json!([{"data": 1}, {"data": 1, "prio": 1}]),
                "message 1: unknown field \"prio\"",
            ),
            (
                json!({"data": "x", "expiration": 0}),
                "message 0: expiration:",
            ),
            (
                json!({"data": "x", "correl_id": 5}),
                "message 0: correl_id: must be a string",
            ),
            (json!([]), "no message to publish"),
            (json!({"messages": "x"}), "messages: must be a list"),
        ] {
            let e = publish_body(&body).err().unwrap_or_default();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn references_must_exist() {
        let topic: Topic = serde_json::from_value(json!({"name": "/a"})).unwrap();
        let sub = |t: &str, dl: Option<&str>| -> Subscription {
            serde_json::from_value(json!({"sub_key": "k", "topic": t,
                "delivery": {"type": "pull"}, "dead_letter_topic": dl}))
            .unwrap()
        };
        let topics = [topic];
        assert!(check_references(&topics, &[sub("/a", None)], &[], &[], &[]).is_ok());
        assert!(check_references(&topics, &[sub("/b/*", None)], &[], &[], &[]).is_ok());
        let e = check_references(&topics, &[sub("/b", None)], &[], &[], &[]).unwrap_err();
        assert!(
            e.contains("subscription k: topic: no topic named /b"),
            "{e}"
        );
        let e = check_references(&topics, &[sub("/a", Some("/dl"))], &[], &[], &[]).unwrap_err();
        assert!(e.contains("dead_letter_topic: no topic named /dl"), "{e}");
        let ep: Endpoint =
            serde_json::from_value(json!({"name": "crm", "security": "crm-basic"})).unwrap();
        let e = check_references(&topics, &[], &[ep], &[], &[]).unwrap_err();
        assert!(
            e.contains("pub/sub endpoint crm: security: no security definition named crm-basic"),
            "{e}"
        );
    }

    #[test]
    fn push_conns_exist_urls_carry_no_credentials_and_endpoints_own_their_security() {
        let push = |delivery: Value| -> Subscription {
            serde_json::from_value(json!({"sub_key": "k", "topic": "/a", "delivery": delivery}))
                .unwrap()
        };
        let conn: RestConn =
            serde_json::from_value(json!({"name": "crm-api", "address": "http://127.0.0.1:9"}))
                .unwrap();
        let conns = [conn];
        assert!(push_references(&push(json!({"type": "push", "conn": "crm-api"})), &conns).is_ok());
        let e =
            push_references(&push(json!({"type": "push", "conn": "nope"})), &conns).unwrap_err();
        assert!(
            e.contains("delivery.conn: no REST outgoing connection named nope"),
            "{e}"
        );
        assert!(
            push_references(
                &push(json!({"type": "push", "url": "http://h:1/p?a=b@c"})),
                &[]
            )
            .is_ok()
        );
        let e = push_references(
            &push(json!({"type": "push", "url": "https://u:pw@h/p"})),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("delivery.url: credentials"), "{e}");
        assert!(!e.contains("pw"), "{e}");

        let ep = |name: &str, sec: &str| -> Endpoint {
            serde_json::from_value(json!({"name": name, "security": sec})).unwrap()
        };
        let both = [ep("crm", "crm-basic"), ep("erp", "crm-basic")];
        let e = shared_security(&both[1], &both).unwrap_err();
        assert!(e.contains("crm and erp") && e.contains("crm-basic"), "{e}");
        assert!(shared_security(&both[0], &both[..1]).is_ok());
    }

    #[test]
    fn limit_is_bounded() {
        assert_eq!(limit("").ok(), Some(DEFAULT_LIST));
        assert_eq!(limit("x=1&limit=5").ok(), Some(5));
        assert!(limit("limit=0").is_err());
        assert!(limit("limit=1001").is_err());
        assert!(limit("limit=many").is_err());
    }
}
