//! The pub/sub REST API (docs/PUBSUB.md): what a channel of `"type": "pubsub"` answers
//! under its URL path, natively and as Zato 3.2's `/zato/pubsub` API.
//!
//! The request reaches here like any other (`edge::http`: routing by the channel's prefix,
//! the channel's gate, the body read within the limits). The caller is the security
//! definition that let it in: the channel's own, or, for a channel that names none, the one
//! of a pub/sub endpoint the credentials pass ([`auth`]); nobody unauthenticated gets
//! further. What it may do is its endpoint's permissions (`pubsub::Defs::permits`); the
//! rest is the broker's (`pubsub::Broker`), whose errors are answered with their status and
//! code. [`wire`] holds the request and answer shapes.

pub mod auth;
pub mod wire;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

use crate::edge::gate::Rejection;
use crate::edge::http::{Body, Ctx, refused_for};
use crate::edge::router::Router;
use crate::metrics::http::RefusalReason;
use crate::model::channel::Channel;
use crate::model::pubsub::{Access, DeliveryKind};
use crate::pubsub::{Caller, Defs};
use wire::{ApiError, Flavour, Op};

/// What the API needs of one request (the edge has read and checked it).
pub(crate) struct Request<'a> {
    pub parts: &'a hyper::http::request::Parts,
    pub body: &'a Bytes,
    pub cid: &'a str,
    /// Who the request is ([`caller_of`]).
    pub caller: Caller,
}

/// Who a request to a pubsub channel is: the security definition the channel's gate let in
/// (`gate_caller`), or, for a channel that names none, the one of a pub/sub endpoint the
/// credentials pass. The edge asks before it reads the body; the refusal is the answer.
pub(crate) async fn caller_of(
    cx: &Ctx,
    router: &Router,
    gate_caller: Option<&crate::edge::gate::Caller>,
    headers: &hyper::HeaderMap,
    cid: &str,
) -> Result<Caller, Response<Body>> {
    if let Some(c) = gate_caller {
        return Ok(Caller::Security(c.name.to_string()));
    }
    let defs = cx.pubsub.defs();
    match auth::endpoint_security(&router.gate, &defs, headers).await {
        Ok(name) => Ok(Caller::Security(name)),
        Err(r) => {
            // Counted as the gate's refusals are: these are the channel's checks.
            refused_for(
                cx,
                match &r {
                    Rejection::Unauthorized { .. } => RefusalReason::Unauthorized,
                    Rejection::Forbidden(_) => RefusalReason::Forbidden,
                    Rejection::TooMany { .. } => RefusalReason::RateLimited,
                },
            );
            Err(rejection(r, cid))
        }
    }
}

/// Answers one request to pubsub channel `channel`.
pub(crate) async fn handle(cx: &Ctx, channel: &Channel, req: Request<'_>) -> Response<Body> {
    let cid = req.cid;
    let caller = req.caller.clone();
    let path = req.parts.uri.path();
    let rest = path.strip_prefix(channel.url_path.as_str()).unwrap_or("");
    let flavour = Flavour::of(&channel.url_path);
    // The request's own time bounds the whole call (a long poll waits less: `wait`).
    let limit = cx.settings.request_timeout();
    let result = match wire::route(req.parts.method.as_str(), rest) {
        Ok(op) => match tokio::time::timeout(limit, run(cx, &caller, flavour, op, &req)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError {
                status: 504,
                code: "timeout",
                message: format!(
                    "no answer within the request timeout of {limit:?} (a publish's outcome \
                     is then unknown: its messages may have been stored and may be delivered)"
                ),
            }),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(Answer::Json(v)) => json_response(StatusCode::OK, cid, Bytes::from(v.to_string())),
        Ok(Answer::Raw(b)) => json_response(StatusCode::OK, cid, b),
        Err(mut e) => {
            // What failed inside is logged, not told (it can name stores and peers); a
            // publish's own texts, which say whether its messages were stored, are told.
            let told = [
                crate::pubsub::publish::NOT_STORED,
                crate::pubsub::publish::OUTCOME_UNKNOWN,
            ];
            if e.status >= 500
                && e.status != 504
                && e.code != "busy"
                && !told.contains(&e.message.as_str())
            {
                tracing::warn!(%cid, status = e.status, code = e.code, error = %e.message, "pubsub API");
                e.message = format!("the request could not be served now (cid {cid})");
            }
            let status =
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = json_response(status, cid, Bytes::from(e.body().to_string()));
            if e.status == 405 {
                let allowed = e.message.rsplit("allowed: ").next().unwrap_or("");
                if let Ok(v) = HeaderValue::from_str(allowed) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
            }
            if e.status == 503 || e.status == 429 {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            r
        }
    }
}

/// Runs one operation as `caller`: the answer's JSON body.
async fn run(
    cx: &Ctx,
    caller: &Caller,
    flavour: Flavour,
    op: Op,
    req: &Request<'_>,
) -> Result<Answer, ApiError> {
    let broker = &cx.pubsub;
    let headers = &req.parts.headers;
    let query = req.parts.uri.query().unwrap_or("");
    let body = &req.body[..];
    let v = match op {
        Op::Publish(topic) => {
            allowed(&broker.defs(), caller, Access::Publish, &topic)?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            // Zato's clients send their JSON with whatever content type their tool sets
            // (curl's is form data): a Zato channel reads every body as JSON.
            let json = flavour == Flavour::Zato || wire::is_json(content_type);
            let (msgs, many) = wire::parse_publish(json, content_type, query, body)?;
            if msgs.len() > MAX_PUBLISH {
                return Err(ApiError::invalid(format!(
                    "publish: {} messages in one request; at most {MAX_PUBLISH}",
                    msgs.len()
                )));
            }
            let ids = broker.publish(caller, &topic, msgs).await?;
            Ok(if many {
                json!({ "msg_ids": ids })
            } else {
                json!({ "msg_id": ids.into_iter().next() })
            })
        }
        Op::TopicGet(topic) => {
            // Zato's pull: the caller's own pull subscription to the topic (or the one its
            // sub_key names); what it answers counts as delivered, as in Zato, so it is
            // acked at once.
            let defs = broker.defs();
            allowed(&defs, caller, Access::Subscribe, &topic)?;
            let get = wire::parse_get(body, query, false)?;
            let sub_key = match get.sub_key {
                Some(k) => k,
                None => own_sub(&defs, caller, &topic, true)?,
            };
            owned(&defs, caller, &sub_key, Some(&topic))?;
            let _poll = LongPoll::enter(get.wait_ms)?;
            let got = broker
                .get_messages(caller, &sub_key, get.max, wait(cx, get.wait_ms))
                .await?;
            if !got.is_empty() {
                let ids: Vec<String> = got.iter().map(|d| d.msg.msg_id.clone()).collect();
                broker.ack(caller, &sub_key, &ids).await?;
            }
            return Ok(Answer::Raw(wire::zato_msgs(&got)));
        }
        Op::Get => {
            let get = wire::parse_get(body, query, true)?;
            let sub_key = get.sub_key.unwrap_or_default();
            owned(&broker.defs(), caller, &sub_key, None)?;
            let _poll = LongPoll::enter(get.wait_ms)?;
            let got = broker
                .get_messages(caller, &sub_key, get.max, wait(cx, get.wait_ms))
                .await?;
            return Ok(Answer::Raw(wire::native_msgs(&got)));
        }
        Op::Ack => {
            let (sub_key, ids) = wire::parse_ack(body)?;
            owned(&broker.defs(), caller, &sub_key, None)?;
            let n = broker.ack(caller, &sub_key, &ids).await?;
            Ok(json!({ "acked": n }))
        }
        Op::Subscribe(topic) => {
            allowed(&broker.defs(), caller, Access::Subscribe, &topic)?;
            let sub = wire::parse_subscribe(&topic, body, flavour)?;
            pull_only(&sub.delivery)?;
            let sub_key = broker.subscribe(caller, sub).await?;
            Ok(match flavour {
                Flavour::Native => json!({ "sub_key": sub_key }),
                // Zato answers how many messages the new queue holds (those kept for the
                // topic's first subscription); figures that cannot be had now are 0.
                Flavour::Zato => {
                    let depth = broker.sub_stats(&sub_key).await.map_or(0, |s| s.depth);
                    json!({ "sub_key": sub_key, "queue_depth": depth })
                }
            })
        }
        Op::Unsubscribe(topic) => {
            let defs = broker.defs();
            allowed(&defs, caller, Access::Subscribe, &topic)?;
            let sub_key = match wire::parse_unsubscribe(body, query)? {
                Some(k) => k,
                None => own_sub(&defs, caller, &topic, false)?,
            };
            owned(&defs, caller, &sub_key, Some(&topic))?;
            broker.unsubscribe(caller, &sub_key).await?;
            Ok(json!({}))
        }
    };
    v.map(Answer::Json)
}

/// The most messages one REST publish carries.
const MAX_PUBLISH: usize = 1000;
/// The most long polls (pulls that may wait) this server holds at once: each holds a
/// connection and a task; beyond it a pull is answered 503 with `Retry-After`.
const MAX_LONG_POLLS: usize = 1024;
static LONG_POLLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One long poll counted against [`MAX_LONG_POLLS`] while it lives.
struct LongPoll(bool);

impl LongPoll {
    /// Counts a pull that may wait (`wait_ms` > 0); 503 when the server holds its most.
    fn enter(wait_ms: u64) -> Result<LongPoll, ApiError> {
        use std::sync::atomic::Ordering;
        if wait_ms == 0 {
            return Ok(LongPoll(false));
        }
        if LONG_POLLS.fetch_add(1, Ordering::SeqCst) >= MAX_LONG_POLLS {
            LONG_POLLS.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError {
                status: 503,
                code: "busy",
                message: format!(
                    "this server holds {MAX_LONG_POLLS} waiting pulls already: retry, or \
                     pull without wait_ms"
                ),
            });
        }
        Ok(LongPoll(true))
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        if self.0 {
            LONG_POLLS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// How long a pull may wait: what it asks, within nine tenths of the request's own time
/// (the rest is for answering before the call's timeout).
fn wait(cx: &Ctx, wait_ms: u64) -> Duration {
    let limit = cx.settings.request_timeout();
    Duration::from_millis(wait_ms).min(limit - limit / 10)
}

/// Who `caller` is in messages: its endpoint, or its security definition when no endpoint
/// has it.
fn who(defs: &Defs, caller: &Caller) -> String {
    match caller {
        Caller::Security(s) => match defs.endpoint_of(s) {
            Some(e) => format!("endpoint {}", e.name),
            None => format!("security definition {s} (no pub/sub endpoint has it)"),
        },
        other => other.label(defs),
    }
}

/// 403 unless `caller` may do `access` on `topic`.
fn allowed(defs: &Defs, caller: &Caller, access: Access, topic: &str) -> Result<(), ApiError> {
    if defs.permits(caller, access, topic) {
        return Ok(());
    }
    let verb = match access {
        Access::Publish => "publish to",
        Access::Subscribe => "subscribe to",
    };
    Err(ApiError {
        status: 403,
        code: "forbidden",
        message: format!("{} may not {verb} topic {topic}", who(defs, caller)),
    })
}

/// Unless `sub_key` is a subscription of the caller's endpoint (and, `topic` given, one to
/// that topic): 403 for a caller without an endpoint or someone else's subscription (the
/// broker checks it too; this answer says why), 404 for none, 400 for another topic's.
fn owned(defs: &Defs, caller: &Caller, sub_key: &str, topic: Option<&str>) -> Result<(), ApiError> {
    let forbidden = |message: String| ApiError {
        status: 403,
        code: "forbidden",
        message,
    };
    let endpoint = match caller {
        Caller::Security(s) => match defs.endpoint_of(s) {
            Some(e) => Some(e.name.as_str()),
            None => {
                return Err(forbidden(format!(
                    "{} has no subscriptions",
                    who(defs, caller)
                )));
            }
        },
        // Services and the admin API are trusted with every subscription.
        _ => None,
    };
    let Some(sub) = defs.subs.get(sub_key) else {
        return Err(ApiError {
            status: 404,
            code: "no_sub",
            message: format!("no subscription {sub_key}"),
        });
    };
    if endpoint.is_some() && sub.endpoint.as_deref() != endpoint {
        return Err(forbidden(format!(
            "subscription {sub_key} is not one of {}",
            who(defs, caller)
        )));
    }
    if let Some(t) = topic
        && sub.topic != t
    {
        return Err(ApiError::invalid(format!(
            "subscription {sub_key} is to {}, not to {t}",
            sub.topic
        )));
    }
    Ok(())
}

/// 403 unless `delivery` is pull: push and service deliveries go to URLs and services the
/// REST caller should not choose (the admin API makes them).
fn pull_only(delivery: &DeliveryKind) -> Result<(), ApiError> {
    if matches!(delivery, DeliveryKind::Pull) {
        return Ok(());
    }
    Err(ApiError {
        status: 403,
        code: "forbidden",
        message: "subscribe: only pull subscriptions are made through this API; push and \
                  service deliveries are made through the admin API"
            .into(),
    })
}

/// The sub_key of the caller's endpoint's one subscription to `topic` (made for exactly that
/// topic name; `pull_only`: a pull one), for requests that name none.
fn own_sub(defs: &Defs, caller: &Caller, topic: &str, pull_only: bool) -> Result<String, ApiError> {
    let endpoint = match caller {
        Caller::Security(s) => defs.endpoint_of(s).map(|e| e.name.clone()),
        _ => None,
    };
    let mut keys: Vec<&str> = defs
        .subs
        .values()
        .filter(|s| {
            endpoint.is_some()
                && s.endpoint == endpoint
                && s.topic == topic
                && (!pull_only || s.delivery == DeliveryKind::Pull)
        })
        .map(|s| s.sub_key.as_str())
        .collect();
    keys.sort_unstable();
    match keys.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(ApiError {
            status: 404,
            code: "no_sub",
            message: format!(
                "{} has no {}subscription to {topic}",
                who(defs, caller),
                if pull_only { "pull " } else { "" }
            ),
        }),
        many => Err(ApiError {
            status: 409,
            code: "conflict",
            message: format!(
                "{} has {} subscriptions to {topic}: give the sub_key",
                who(defs, caller),
                many.len()
            ),
        }),
    }
}

/// What an operation answers: JSON built as a tree, or serialised already (the pulls').
enum Answer {
    Json(Value),
    Raw(Bytes),
}

fn json_response(status: StatusCode, cid: &str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
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

/// A request no endpoint's credentials let in (401, with the Basic challenge when an
/// endpoint uses Basic), or over its definition's rate limit (429).
fn rejection(r: Rejection, cid: &str) -> Response<Body> {
    let (status, code, message, challenge, retry) = match r {
        Rejection::Unauthorized { reason, challenge } => (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            reason,
            challenge,
            None,
        ),
        Rejection::Forbidden(reason) => (StatusCode::FORBIDDEN, "forbidden", reason, None, None),
        Rejection::TooMany {
            reason,
            retry_after_s,
        } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            reason,
            None,
            Some(retry_after_s),
        ),
    };
    let mut resp = json_response(
        status,
        cid,
        Bytes::from(json!({"error": {"code": code, "message": message}}).to_string()),
    );
    if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(s) = retry {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pubsub::{Endpoint, Subscription};

    fn sub(key: &str, topic: &str, endpoint: &str, delivery: DeliveryKind) -> Subscription {
        serde_json::from_value(json!({
            "sub_key": key, "topic": topic, "endpoint": endpoint,
            "delivery": serde_json::to_value(delivery).unwrap(),
        }))
        .unwrap()
    }

    #[test]
    fn long_polls_are_counted_and_capped() {
        let quick = LongPoll::enter(0).unwrap();
        assert!(!quick.0);
        let mut held: Vec<LongPoll> = (0..MAX_LONG_POLLS)
            .map(|_| LongPoll::enter(30_000).unwrap())
            .collect();
        let e = LongPoll::enter(30_000).err().expect("over the cap");
        assert_eq!((e.status, e.code), (503, "busy"));
        // A pull that does not wait is never turned away.
        assert!(LongPoll::enter(0).is_ok());
        held.pop();
        assert!(LongPoll::enter(30_000).is_ok());
    }

    #[test]
    fn rest_subscriptions_are_pull_only() {
        assert!(pull_only(&DeliveryKind::Pull).is_ok());
        let e = pull_only(&DeliveryKind::Service {
            service: "billing.charge".into(),
        })
        .unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden"));
        assert!(e.message.contains("admin API"), "{}", e.message);
    }

    #[test]
    fn permissions_and_own_subscriptions() {
        let defs = Defs::new(
            &[],
            &[
                sub("sk.a", "/orders/new", "crm", DeliveryKind::Pull),
                sub("sk.b", "/orders/old", "crm", DeliveryKind::Pull),
                sub("sk.c", "/orders/old", "crm", DeliveryKind::Pull),
                sub("sk.d", "/orders/new", "erp", DeliveryKind::Pull),
            ],
            &[
                Endpoint {
                    name: "crm".into(),
                    security: "crm-basic".into(),
                    topic_patterns: vec!["pub=/orders/*".into(), "sub=/orders/*".into()],
                },
                Endpoint {
                    name: "erp".into(),
                    security: "erp-key".into(),
                    topic_patterns: vec!["sub=/orders/*".into()],
                },
            ],
        );
        let crm = Caller::Security("crm-basic".into());
        let erp = Caller::Security("erp-key".into());
        let stranger = Caller::Security("other".into());
        assert!(allowed(&defs, &crm, Access::Publish, "/orders/new").is_ok());
        let e = allowed(&defs, &erp, Access::Publish, "/orders/new").unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden"));
        assert!(e.message.contains("endpoint erp"), "{}", e.message);
        let e = allowed(&defs, &stranger, Access::Subscribe, "/orders/new").unwrap_err();
        assert!(e.message.contains("no pub/sub endpoint"), "{}", e.message);

        assert_eq!(own_sub(&defs, &crm, "/orders/new", true).unwrap(), "sk.a");
        assert_eq!(own_sub(&defs, &erp, "/orders/new", false).unwrap(), "sk.d");
        assert_eq!(
            own_sub(&defs, &crm, "/orders/old", true)
                .unwrap_err()
                .status,
            409
        );
        assert_eq!(
            own_sub(&defs, &erp, "/orders/old", true)
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            own_sub(&defs, &stranger, "/orders/new", true)
                .unwrap_err()
                .status,
            404
        );

        // Someone else's sub_key, a caller without an endpoint, another topic's sub_key.
        assert!(owned(&defs, &crm, "sk.a", Some("/orders/new")).is_ok());
        assert!(owned(&defs, &crm, "sk.b", None).is_ok());
        let e = owned(&defs, &erp, "sk.a", None).unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden"));
        assert!(e.message.contains("sk.a"), "{}", e.message);
        let e = owned(&defs, &stranger, "sk.a", None).unwrap_err();
        assert_eq!(e.status, 403);
        let e = owned(&defs, &crm, "sk.b", Some("/orders/new")).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("/orders/old"), "{}", e.message);
        assert_eq!(owned(&defs, &crm, "sk.none", None).unwrap_err().status, 404);
        // The admin API and services are trusted with any.
        assert!(owned(&defs, &Caller::Admin("ops".into()), "sk.d", None).is_ok());
    }
}
