//! The workers' `pubsub.*` calls (ipc-protocol/SPEC.md, "Pub/sub"), answered by the
//! [`Broker`] as a [`ServerOps`]: `pubsub.publish`, `pubsub.subscribe`,
//! `pubsub.unsubscribe`, `pubsub.get` and `pubsub.ack`. The caller is always
//! [`Caller::Service`] of the service name the worker sends in the meta (services are
//! trusted: permissions apply to REST endpoints only). The name is not proved: any code
//! running in a worker may name any service, as with `secret.get`; it is checked for shape
//! only ([`MAX_SERVICE_NAME`] characters, no control character).
//!
//! Decoding a call ([`decode`]) and resolving a service's own pull subscription
//! ([`own_pull_sub`]) are pure functions, so that the wire shapes are tested without a
//! store. Message data crosses the socket as raw bytes, never base64 or JSON-escaped: a
//! publish's body is the messages' data concatenated (the meta gives each one's size), and
//! so is the tail of a `pubsub.get` answer, after one line of JSON metadata.
//!
//! This file also builds the message metadata every delivery path shares
//! ([`msg_meta`], [`service_delivery`], [`pulled_json`]), so that a service delivery, a
//! pull over the worker socket and a pull or push over REST describe a message with the
//! same keys.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use std::time::Duration;

use super::{Broker, Caller, Defs, Delivered, NewMsg, PubsubError, SubscribeReq};
use crate::lifecycle::ops::{OpReply, ServerOps};
use crate::model::pubsub::{DeliveryKind, MAX_BATCH, Retry, Subscription};

/// The most messages one publish call may carry (`data_list`).
pub const MAX_PUBLISH_MSGS: usize = 10_000;
/// `pubsub.get`'s `max_messages` when the call gives none (Zato's `get_messages` default
/// is "all", which has no bound; this one is the Python API's default too).
pub const DEFAULT_GET_MAX: usize = 100;
/// The longest long poll a `pubsub.get` may ask for, ms.
pub const MAX_WAIT_MS: u64 = 300_000;
/// The content type of a `pubsub.get` answer: a line of JSON, `\n`, then the data.
pub const GET_CONTENT_TYPE: &str = "application/x-oxbus-pubsub";
/// A `pubsub.get` answer stops adding messages before its body passes this (the IPC frame
/// limit is 64 MiB; the meta and the frame header need some room). A message left out was
/// handed out all the same: it is delivered again after the subscription's
/// `ack_timeout_ms`, so nothing is lost. The delivery queue already stops a batch at
/// [`MAX_BATCH_BYTES`] of data, so this only bites when the metadata is unusually large.
const MAX_GET_BODY: usize = 60 * 1024 * 1024;
/// The most data one batch hands out (a service delivery's body, a pull's answer): the
/// queue stops adding messages to a batch past it, a batch always has at least one message.
/// A batch of `batch_size` large messages would otherwise not fit in one 64 MiB IPC frame
/// and fail on every attempt.
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// The longest service name a call may give as its caller, in characters.
pub const MAX_SERVICE_NAME: usize = 200;
/// The most msg_ids one `pubsub.ack` may carry.
pub const MAX_ACK_IDS: usize = 10_000;
/// The largest raw meta of a `pubsub.publish`, refused before it is parsed (up to
/// [`MAX_PUBLISH_MSGS`] messages' metadata, each with strings of up to 1 KiB).
const MAX_PUBLISH_META: usize = 16 * 1024 * 1024;
/// The largest raw meta of the other `pubsub.*` calls, refused before it is parsed.
const MAX_OTHER_META: usize = 4 * 1024 * 1024;
/// The worker calls this module answers; any other `pubsub.*` op is an unknown op.
pub const OPS: [&str; 5] = [
    "pubsub.publish",
    "pubsub.subscribe",
    "pubsub.unsubscribe",
    "pubsub.get",
    "pubsub.ack",
];

/// A decoded `pubsub.*` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Publish {
        caller: Caller,
        topic: String,
        msgs: Vec<NewMsg>,
    },
    Subscribe {
        caller: Caller,
        req: SubscribeReq,
    },
    Unsubscribe {
        caller: Caller,
        sub_key: String,
    },
    Get {
        caller: Caller,
        target: Target,
        max: usize,
        wait: Duration,
    },
    Ack {
        caller: Caller,
        target: Target,
        msg_ids: Vec<String>,
    },
}

/// Which pull subscription a `pubsub.get` or `pubsub.ack` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The subscription of this sub_key.
    SubKey(String),
    /// The calling service's own pull subscription to this topic (by its exact name).
    OwnPull(String),
}

/// The meta fields every `pubsub.*` call has.
#[derive(Deserialize)]
struct Common {
    /// The calling service's name: the caller.
    service: String,
}

#[derive(Deserialize)]
struct PublishMeta {
    topic: String,
    msgs: Vec<PublishMsg>,
}

/// One message of a publish, its data being the next `size` bytes of the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishMsg {
    size: usize,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    expiration_ms: Option<u64>,
    #[serde(default)]
    has_gd: Option<bool>,
    #[serde(default)]
    correl_id: Option<String>,
    #[serde(default)]
    in_reply_to: Option<String>,
    #[serde(default)]
    ext_client_id: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeMeta {
    topic: String,
    /// As the subscription object has it; none: `{"type": "pull"}`.
    #[serde(default)]
    delivery: Option<DeliveryKind>,
    #[serde(default)]
    sub_key: Option<String>,
    #[serde(default)]
    batch_size: Option<u32>,
    #[serde(default)]
    retry: Option<Retry>,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    ack_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct UnsubscribeMeta {
    sub_key: String,
}

#[derive(Deserialize)]
struct GetMeta {
    #[serde(default)]
    sub_key: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    max_messages: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Deserialize)]
struct AckMeta {
    #[serde(default)]
    sub_key: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    msg_ids: Vec<String>,
}

fn meta_of<'a, T: Deserialize<'a>>(op: &str, raw: &'a [u8]) -> Result<T, PubsubError> {
    serde_json::from_slice(raw).map_err(|e| PubsubError::Invalid(format!("{op}: bad meta: {e}")))
}

fn target(op: &str, sub_key: Option<String>, topic: Option<String>) -> Result<Target, PubsubError> {
    match (sub_key, topic) {
        (Some(k), _) if !k.is_empty() => Ok(Target::SubKey(k)),
        (_, Some(t)) if !t.is_empty() => Ok(Target::OwnPull(t)),
        _ => Err(PubsubError::Invalid(format!(
            "{op}: give sub_key or topic (the calling service's own pull subscription to it)"
        ))),
    }
}

/// Decodes one `pubsub.*` call: its op, raw meta and body. Checks the wire shape only; the
/// broker checks the rest (the topic exists, priorities, sizes against the topic…).
pub fn decode(op: &str, raw_meta: &[u8], body: &Bytes) -> Result<Request, PubsubError> {
    // The size first: a meta is parsed twice (the common fields, then the op's), and a huge
    // one (millions of msgs or msg_ids) must not cost that.
    let max_meta = if op == "pubsub.publish" {
        MAX_PUBLISH_META
    } else {
        MAX_OTHER_META
    };
    if raw_meta.len() > max_meta {
        return Err(PubsubError::Invalid(format!(
            "{op}: the meta has {} bytes, at most {max_meta}",
            raw_meta.len()
        )));
    }
    let common: Common = meta_of(op, raw_meta)?;
    check_service_name(op, &common.service)?;
    let caller = Caller::Service(common.service);
    match op {
        "pubsub.publish" => {
            let m: PublishMeta = meta_of(op, raw_meta)?;
            if m.msgs.is_empty() {
                return Err(PubsubError::Invalid(format!(
                    "pubsub.publish to {}: no message (msgs is empty)",
                    m.topic
                )));
            }
            if m.msgs.len() > MAX_PUBLISH_MSGS {
                return Err(PubsubError::Invalid(format!(
                    "pubsub.publish to {}: {} messages, at most {MAX_PUBLISH_MSGS} per call",
                    m.topic,
                    m.msgs.len()
                )));
            }
            let total = m
                .msgs
                .iter()
                .try_fold(0usize, |acc, x| acc.checked_add(x.size));
            if total != Some(body.len()) {
                return Err(PubsubError::Invalid(format!(
                    "pubsub.publish to {}: the msgs' sizes add up to {} but the body has {} bytes",
                    m.topic,
                    total.map_or_else(|| "more than usize".to_owned(), |t| t.to_string()),
                    body.len()
                )));
            }
            let mut at = 0;
            let msgs = m
                .msgs
                .into_iter()
                .map(|x| {
                    let data = body.slice(at..at + x.size);
                    at += x.size;
                    NewMsg {
                        data,
                        mime_type: x.mime_type,
                        priority: x.priority,
                        expiration_ms: x.expiration_ms,
                        has_gd: x.has_gd,
                        correl_id: x.correl_id,
                        in_reply_to: x.in_reply_to,
                        ext_client_id: x.ext_client_id,
                    }
                })
                .collect();
            Ok(Request::Publish {
                caller,
                topic: m.topic,
                msgs,
            })
        }
        "pubsub.subscribe" => {
            let m: SubscribeMeta = meta_of(op, raw_meta)?;
            if m.topic.is_empty() {
                return Err(PubsubError::Invalid(
                    "pubsub.subscribe: topic is empty".into(),
                ));
            }
            Ok(Request::Subscribe {
                caller,
                req: SubscribeReq {
                    topic: m.topic,
                    delivery: m.delivery.unwrap_or(DeliveryKind::Pull),
                    sub_key: m.sub_key,
                    batch_size: m.batch_size,
                    retry: m.retry,
                    dead_letter_topic: m.dead_letter_topic,
                    ack_timeout_ms: m.ack_timeout_ms,
                },
            })
        }
        "pubsub.unsubscribe" => {
            let m: UnsubscribeMeta = meta_of(op, raw_meta)?;
            if m.sub_key.is_empty() {
                return Err(PubsubError::Invalid(
                    "pubsub.unsubscribe: sub_key is empty".into(),
                ));
            }
            Ok(Request::Unsubscribe {
                caller,
                sub_key: m.sub_key,
            })
        }
        "pubsub.get" => {
            let m: GetMeta = meta_of(op, raw_meta)?;
            let max = m.max_messages.unwrap_or(DEFAULT_GET_MAX);
            if max == 0 || max > MAX_BATCH as usize {
                return Err(PubsubError::Invalid(format!(
                    "pubsub.get: max_messages must be from 1 to {MAX_BATCH}, not {max}"
                )));
            }
            let wait_ms = m.wait_ms.unwrap_or(0);
            if wait_ms > MAX_WAIT_MS {
                return Err(PubsubError::Invalid(format!(
                    "pubsub.get: wait_ms must be at most {MAX_WAIT_MS}, not {wait_ms}"
                )));
            }
            Ok(Request::Get {
                caller,
                target: target(op, m.sub_key, m.topic)?,
                max,
                wait: Duration::from_millis(wait_ms),
            })
        }
        "pubsub.ack" => {
            let m: AckMeta = meta_of(op, raw_meta)?;
            if m.msg_ids.len() > MAX_ACK_IDS {
                return Err(PubsubError::Invalid(format!(
                    "pubsub.ack: {} msg_ids, at most {MAX_ACK_IDS} per call",
                    m.msg_ids.len()
                )));
            }
            Ok(Request::Ack {
                caller,
                target: target(op, m.sub_key, m.topic)?,
                msg_ids: m.msg_ids,
            })
        }
        _ => Err(PubsubError::Invalid(format!("no op {op:?}"))),
    }
}

/// Refuses a caller's service name that no service can have: empty, longer than
/// [`MAX_SERVICE_NAME`] characters, or holding a control character (it goes into logs,
/// `created_by` and error messages).
fn check_service_name(op: &str, service: &str) -> Result<(), PubsubError> {
    if service.is_empty() {
        return Err(PubsubError::Invalid(format!(
            "{op}: the meta's service (the calling service's name) is empty"
        )));
    }
    let chars = service.chars().count();
    if chars > MAX_SERVICE_NAME {
        return Err(PubsubError::Invalid(format!(
            "{op}: the meta's service has {chars} characters, at most {MAX_SERVICE_NAME}"
        )));
    }
    if service.chars().any(char::is_control) {
        return Err(PubsubError::Invalid(format!(
            "{op}: the meta's service {service:?} holds a control character"
        )));
    }
    Ok(())
}

/// The sub_key a service's subscribe without one gets: "sk." and 24 hex digits of the
/// SHA-256 of the service, the topic and the delivery. The same request always gets the
/// same key, so two concurrent subscribes of the same service cannot make two
/// subscriptions: the second one's put finds the first's and answers its key.
pub fn derived_sub_key(service: &str, topic: &str, delivery: &DeliveryKind) -> String {
    use sha2::Digest as _;
    let delivery = serde_json::to_string(delivery).unwrap_or_default();
    let digest = sha2::Sha256::digest(format!("service:{service}\n{topic}\n{delivery}"));
    let mut key = String::with_capacity(27);
    key.push_str("sk.");
    for b in &digest[..12] {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// What `Subscription::created_by` holds for a subscription service `service` made.
fn made_by(service: &str) -> String {
    format!("service:{service}")
}

/// The sub_key of service `service`'s own pull subscription to `topic` (exactly that name,
/// not a pattern matching it): what `get_messages(topic_name=…)` and `ack` with a topic
/// use. Several (made by hand through the admin API with the same `created_by`): the first
/// by sub_key, so that the answer is stable.
pub fn own_pull_sub(defs: &Defs, service: &str, topic: &str) -> Result<String, PubsubError> {
    let by = made_by(service);
    defs.subs
        .values()
        .filter(|s| {
            s.topic == topic
                && s.delivery == DeliveryKind::Pull
                && s.created_by.as_deref() == Some(by.as_str())
        })
        .map(|s| s.sub_key.as_str())
        .min()
        .map(str::to_owned)
        .ok_or_else(|| {
            PubsubError::NoSub(format!(
                "of service {service} to topic {topic} (delivery pull): subscribe to it first \
                 (self.pubsub.subscribe({topic:?}))"
            ))
        })
}

/// The subscription service `service` already has that `req` asks for again: the same
/// topic (name or pattern, exactly) and the same delivery, made by that service. Such a
/// subscribe answers the existing sub_key rather than making a second queue of the same
/// messages (a service that subscribes each time it runs gets one subscription). A
/// subscribe naming its own sub_key is never taken for another.
pub fn existing_sub<'a>(
    defs: &'a Defs,
    service: &str,
    req: &SubscribeReq,
) -> Option<&'a Subscription> {
    if req.sub_key.is_some() {
        return None;
    }
    let by = made_by(service);
    defs.subs
        .values()
        .filter(|s| {
            s.topic == req.topic
                && s.delivery == req.delivery
                && s.created_by.as_deref() == Some(by.as_str())
        })
        .min_by(|a, b| a.sub_key.cmp(&b.sub_key))
        .map(|s| s.as_ref())
}

/// A message's metadata as every delivery path describes it (the data not included): the
/// keys of ipc-protocol/SPEC.md's `pubsub` field and of the REST pull and push shapes.
pub fn msg_meta(d: &Delivered) -> serde_json::Map<String, serde_json::Value> {
    let m = &d.msg;
    let mut o = serde_json::Map::with_capacity(14);
    o.insert("msg_id".into(), m.msg_id.clone().into());
    o.insert("topic".into(), m.topic.clone().into());
    o.insert("size".into(), m.data.len().into());
    o.insert("priority".into(), m.priority.into());
    o.insert("pub_time_ms".into(), m.pub_time_ms.into());
    o.insert("expires_at_ms".into(), m.expires_at_ms.into());
    o.insert("mime_type".into(), m.mime_type.clone().into());
    o.insert("correl_id".into(), m.correl_id.clone().into());
    o.insert("in_reply_to".into(), m.in_reply_to.clone().into());
    o.insert("ext_client_id".into(), m.ext_client_id.clone().into());
    o.insert("published_by".into(), m.published_by.clone().into());
    o.insert("delivery_count".into(), d.delivery_count.into());
    o.insert("has_gd".into(), m.has_gd.into());
    o
}

/// A message as a pull answer (REST) or a push body gives it: [`msg_meta`] plus `sub_key`
/// and `data`, the data as text when it is valid UTF-8, else base64 with
/// `"data_encoding": "base64"`.
pub fn pulled_json(d: &Delivered) -> serde_json::Value {
    let mut o = msg_meta(d);
    o.insert("sub_key".into(), d.sub_key.clone().into());
    match std::str::from_utf8(&d.msg.data) {
        Ok(text) => {
            o.insert("data".into(), text.into());
        }
        Err(_) => {
            o.insert(
                "data".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&d.msg.data)
                    .into(),
            );
            o.insert("data_encoding".into(), "base64".into());
        }
    }
    serde_json::Value::Object(o)
}

/// The `pubsub` meta field and the body of a service delivery's `invoke` CALL (channel
/// `pubsub`, `data_format` `raw`): the batch's metadata in order, and their data
/// concatenated, which the worker splits by the `size`s.
pub fn service_delivery(sub: &Subscription, batch: &[Delivered]) -> (serde_json::Value, Bytes) {
    let mut body = BytesMut::with_capacity(batch.iter().map(|d| d.msg.data.len()).sum());
    let msgs: Vec<serde_json::Value> = batch
        .iter()
        .map(|d| {
            body.put_slice(&d.msg.data);
            serde_json::Value::Object(msg_meta(d))
        })
        .collect();
    (
        serde_json::json!({ "sub_key": sub.sub_key, "topic": sub.topic, "msgs": msgs }),
        body.freeze(),
    )
}

/// The body of a `pubsub.get` answer: `{"sub_key": …, "msgs": [<msg_meta>…]}`, a `\n`
/// (compact JSON holds no raw newline), then the messages' data concatenated. Messages
/// that would take the body past [`MAX_GET_BODY`] are left out (the first never is),
/// counting each one's metadata as serialized, escapes included.
pub fn encode_get(sub_key: &str, batch: &[Delivered]) -> Bytes {
    encode_get_within(sub_key, batch, MAX_GET_BODY)
}

fn encode_get_within(sub_key: &str, batch: &[Delivered], limit: usize) -> Bytes {
    // The head is written by hand around each message's own serialization, so that its
    // length is known exactly while messages are added: {"msgs":[m1,m2],"sub_key":"…"}.
    let tail = format!("],\"sub_key\":{}}}\n", serde_json::Value::from(sub_key));
    let mut head = String::from("{\"msgs\":[");
    let mut data = 0usize;
    let mut taken = 0;
    for d in batch {
        let meta = serde_json::Value::Object(msg_meta(d)).to_string();
        let add = meta.len() + usize::from(taken > 0) + d.msg.data.len();
        if taken > 0 && head.len() + tail.len() + data + add > limit {
            break;
        }
        if taken > 0 {
            head.push(',');
        }
        head.push_str(&meta);
        data += d.msg.data.len();
        taken += 1;
    }
    let mut body = BytesMut::with_capacity(head.len() + tail.len() + data);
    body.put_slice(head.as_bytes());
    body.put_slice(tail.as_bytes());
    for d in &batch[..taken] {
        body.put_slice(&d.msg.data);
    }
    body.freeze()
}

/// A broker refusal as the call's `REPLY`: its status, its code in the meta's `error`,
/// `{"error": message}`.
pub fn error_reply(e: &PubsubError) -> OpReply {
    OpReply::error(e.status(), e.code(), &e.to_string())
}

impl Broker {
    fn resolve(&self, caller: &Caller, target: Target) -> Result<String, PubsubError> {
        match (target, caller) {
            (Target::SubKey(k), _) => Ok(k),
            (Target::OwnPull(topic), Caller::Service(service)) => {
                own_pull_sub(&self.defs(), service, &topic)
            }
            (Target::OwnPull(topic), _) => Err(PubsubError::Invalid(format!(
                "topic {topic}: only a service has an own pull subscription; give a sub_key"
            ))),
        }
    }

    async fn run_op(&self, req: Request) -> Result<OpReply, PubsubError> {
        Ok(match req {
            Request::Publish {
                caller,
                topic,
                msgs,
            } => {
                let ids = self.publish(&caller, &topic, msgs).await?;
                OpReply::json(200, &serde_json::json!({ "msg_ids": ids }))
            }
            Request::Subscribe { caller, mut req } => {
                let existing = |sub_key: &str| {
                    OpReply::json(
                        200,
                        &serde_json::json!({ "sub_key": sub_key, "existing": true }),
                    )
                };
                let mut derived = None;
                if let Caller::Service(service) = &caller
                    && req.sub_key.is_none()
                {
                    if let Some(s) = existing_sub(&self.defs(), service, &req) {
                        return Ok(existing(&s.sub_key));
                    }
                    let key = derived_sub_key(service, &req.topic, &req.delivery);
                    req.sub_key = Some(key.clone());
                    derived = Some(key);
                }
                match self.subscribe(&caller, req).await {
                    Ok(sub_key) => OpReply::json(200, &serde_json::json!({ "sub_key": sub_key })),
                    // The same service subscribed to the same thing meanwhile (or on another
                    // server): its subscription is this one, whatever its other settings.
                    Err(PubsubError::Conflict(_)) if derived.is_some() => {
                        existing(derived.as_deref().unwrap_or_default())
                    }
                    Err(e) => return Err(e),
                }
            }
            Request::Unsubscribe { caller, sub_key } => {
                self.unsubscribe(&caller, &sub_key).await?;
                OpReply::json(200, &serde_json::json!({ "sub_key": sub_key }))
            }
            Request::Get {
                caller,
                target,
                max,
                wait,
            } => {
                let sub_key = self.resolve(&caller, target)?;
                let got = self.get_messages(&caller, &sub_key, max, wait).await?;
                let mut r = OpReply::json(200, &serde_json::Value::Null);
                r.meta.content_type = Some(GET_CONTENT_TYPE.into());
                r.body = encode_get(&sub_key, &got);
                r
            }
            Request::Ack {
                caller,
                target,
                msg_ids,
            } => {
                let sub_key = self.resolve(&caller, target)?;
                let n = self.ack(&caller, &sub_key, &msg_ids).await?;
                OpReply::json(200, &serde_json::json!({ "sub_key": sub_key, "acked": n }))
            }
        })
    }
}

#[async_trait::async_trait]
impl ServerOps for Broker {
    fn handles(&self, op: &str) -> bool {
        OPS.contains(&op)
    }

    async fn call(&self, _worker: u32, op: &str, raw_meta: Bytes, body: Bytes) -> OpReply {
        let r = match decode(op, &raw_meta, &body) {
            Ok(req) => self.run_op(req).await,
            Err(e) => Err(e),
        };
        r.unwrap_or_else(|e| error_reply(&e))
    }

    /// Nothing is held per worker: pulled messages not acked come again after their
    /// subscription's `ack_timeout_ms`, whoever fetched them. A long poll (`wait_ms`) of a
    /// worker that is gone is not cancelled: it runs to its end, and what it takes then is
    /// handed out to no one and comes back after `ack_timeout_ms` the same way.
    fn worker_gone(&self, _worker: u32) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pubsub::{Message, Topic};
    use std::sync::Arc;

    fn dec(op: &str, meta: serde_json::Value, body: &[u8]) -> Result<Request, PubsubError> {
        decode(
            op,
            meta.to_string().as_bytes(),
            &Bytes::copy_from_slice(body),
        )
    }

    fn svc(name: &str) -> Caller {
        Caller::Service(name.into())
    }

    #[test]
    fn publish_splits_the_body_by_the_sizes() {
        let r = dec(
            "pubsub.publish",
            serde_json::json!({"op": "pubsub.publish", "service": "crm.new", "cid": "c1",
                "topic": "/orders/new",
                "msgs": [{"size": 5, "mime_type": "text/plain", "priority": 7},
                         {"size": 0},
                         {"size": 7, "has_gd": false, "expiration_ms": 1000,
                          "correl_id": "k", "in_reply_to": "zpsm1", "ext_client_id": "e"}]}),
            b"hello{\"a\":1}",
        )
        .unwrap();
        let Request::Publish {
            caller,
            topic,
            msgs,
        } = r
        else {
            panic!("not a publish")
        };
        assert_eq!(caller, svc("crm.new"));
        assert_eq!(topic, "/orders/new");
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].data, Bytes::from_static(b"hello"));
        assert_eq!(msgs[0].mime_type.as_deref(), Some("text/plain"));
        assert_eq!(msgs[0].priority, Some(7));
        assert_eq!(msgs[0].has_gd, None);
        assert!(msgs[1].data.is_empty());
        assert_eq!(msgs[2].data, Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(msgs[2].has_gd, Some(false));
        assert_eq!(msgs[2].expiration_ms, Some(1000));
        assert_eq!(msgs[2].correl_id.as_deref(), Some("k"));
        assert_eq!(msgs[2].in_reply_to.as_deref(), Some("zpsm1"));
        assert_eq!(msgs[2].ext_client_id.as_deref(), Some("e"));
    }

    #[test]
    fn publish_refuses_sizes_that_do_not_match_the_body() {
        for (msgs, body) in [
            (serde_json::json!([{"size": 3}]), &b"abcd"[..]),
            (serde_json::json!([{"size": 5}]), &b"abcd"[..]),
            (serde_json::json!([]), &b""[..]),
            (
                serde_json::json!([{"size": usize::MAX}, {"size": 2}]),
                &b"ab"[..],
            ),
        ] {
            let e = dec(
                "pubsub.publish",
                serde_json::json!({"service": "s", "topic": "/t", "msgs": msgs}),
                body,
            )
            .unwrap_err();
            assert_eq!(e.code(), "invalid", "{e}");
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("/t"), "names the topic: {e}");
        }
    }

    #[test]
    fn bad_metas_are_invalid_and_say_what() {
        let cases = [
            (
                "pubsub.publish",
                serde_json::json!({"topic": "/t", "msgs": []}),
                "service",
            ),
            (
                "pubsub.publish",
                serde_json::json!({"service": "", "topic": "/t", "msgs": [{"size": 0}]}),
                "service",
            ),
            (
                "pubsub.publish",
                serde_json::json!({"service": "s", "topic": "/t", "msgs": [{"size": 0, "priority": 300}]}),
                "300",
            ),
            (
                "pubsub.publish",
                serde_json::json!({"service": "s", "topic": "/t", "msgs": [{"size": 0, "colour": 1}]}),
                "colour",
            ),
            (
                "pubsub.subscribe",
                serde_json::json!({"service": "s", "topic": ""}),
                "topic",
            ),
            (
                "pubsub.subscribe",
                serde_json::json!({"service": "s", "topic": "/t", "delivery": {"type": "carrier"}}),
                "carrier",
            ),
            (
                "pubsub.unsubscribe",
                serde_json::json!({"service": "s"}),
                "sub_key",
            ),
            (
                "pubsub.get",
                serde_json::json!({"service": "s"}),
                "sub_key or topic",
            ),
            (
                "pubsub.get",
                serde_json::json!({"service": "s", "sub_key": "k", "max_messages": 0}),
                "max_messages",
            ),
            (
                "pubsub.get",
                serde_json::json!({"service": "s", "sub_key": "k", "max_messages": 1001}),
                "max_messages",
            ),
            (
                "pubsub.get",
                serde_json::json!({"service": "s", "sub_key": "k", "wait_ms": 300001}),
                "wait_ms",
            ),
            (
                "pubsub.ack",
                serde_json::json!({"service": "s", "sub_key": "k"}),
                "msg_ids",
            ),
            (
                "pubsub.ack",
                serde_json::json!({"service": "s", "msg_ids": []}),
                "sub_key or topic",
            ),
            (
                "pubsub.nonsense",
                serde_json::json!({"service": "s"}),
                "pubsub.nonsense",
            ),
        ];
        for (op, meta, says) in cases {
            let e = dec(op, meta.clone(), b"").unwrap_err();
            assert_eq!(e.code(), "invalid", "{op} {meta}: {e}");
            assert!(
                e.to_string().contains(says),
                "{op} {meta}: {e:?} should say {says}"
            );
        }
        let e = decode("pubsub.get", b"{not json", &Bytes::new()).unwrap_err();
        assert!(e.to_string().starts_with("pubsub.get: bad meta"), "{e}");
    }

    #[test]
    fn service_names_meta_sizes_and_ack_counts_are_bounded() {
        for (service, says) in [
            ("x".repeat(201), "201 characters"),
            ("a\nb".to_owned(), "control character"),
            ("a\u{7f}".to_owned(), "control character"),
        ] {
            let e = dec(
                "pubsub.unsubscribe",
                serde_json::json!({"service": service, "sub_key": "k"}),
                b"",
            )
            .unwrap_err();
            assert_eq!(e.code(), "invalid");
            assert!(e.to_string().contains(says), "{e}");
        }
        // 200 characters (not bytes) are fine.
        dec(
            "pubsub.unsubscribe",
            serde_json::json!({"service": "\u{e9}".repeat(200), "sub_key": "k"}),
            b"",
        )
        .unwrap();
        // A huge meta is refused by its size, before it is parsed (this one is not JSON).
        let big = vec![b'['; MAX_OTHER_META + 1];
        let e = decode("pubsub.ack", &big, &Bytes::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{} bytes, at most {MAX_OTHER_META}", big.len())),
            "{e}"
        );
        // A publish may have a larger meta than the other calls.
        let e = decode("pubsub.publish", &big, &Bytes::new()).unwrap_err();
        assert!(e.to_string().contains("bad meta"), "{e}");
        let ids: Vec<String> = (0..=MAX_ACK_IDS).map(|i| format!("m{i}")).collect();
        let e = dec(
            "pubsub.ack",
            serde_json::json!({"service": "s", "sub_key": "k", "msg_ids": ids}),
            b"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("10001 msg_ids"), "{e}");
    }

    #[test]
    fn derived_sub_keys_are_stable_per_service_topic_and_delivery() {
        let pull = derived_sub_key("a", "/t", &DeliveryKind::Pull);
        assert_eq!(pull, derived_sub_key("a", "/t", &DeliveryKind::Pull));
        assert!(
            pull.len() == 27
                && pull.starts_with("sk.")
                && pull[3..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{pull}"
        );
        let svc = DeliveryKind::Service {
            service: "a.handle".into(),
        };
        let others = [
            derived_sub_key("b", "/t", &DeliveryKind::Pull),
            derived_sub_key("a", "/u", &DeliveryKind::Pull),
            derived_sub_key("a", "/t", &svc),
        ];
        for k in &others {
            assert_ne!(k, &pull);
        }
    }

    #[test]
    fn subscribe_get_ack_unsubscribe_decode() {
        let r = dec(
            "pubsub.subscribe",
            serde_json::json!({"service": "s", "topic": "/orders/*",
                "delivery": {"type": "service", "service": "orders.handle"},
                "batch_size": 10, "retry": {"max_attempts": 3}, "dead_letter_topic": "/dead",
                "ack_timeout_ms": 5000}),
            b"",
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Subscribe {
                caller: svc("s"),
                req: SubscribeReq {
                    topic: "/orders/*".into(),
                    delivery: DeliveryKind::Service {
                        service: "orders.handle".into()
                    },
                    sub_key: None,
                    batch_size: Some(10),
                    retry: Some(Retry {
                        max_attempts: 3,
                        ..Retry::default()
                    }),
                    dead_letter_topic: Some("/dead".into()),
                    ack_timeout_ms: Some(5000),
                }
            }
        );
        // No delivery: a pull subscription.
        let Request::Subscribe { req, .. } = dec(
            "pubsub.subscribe",
            serde_json::json!({"service": "s", "topic": "/t"}),
            b"",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(req.delivery, DeliveryKind::Pull);

        assert_eq!(
            dec(
                "pubsub.get",
                serde_json::json!({"service": "s", "topic": "/t"}),
                b""
            )
            .unwrap(),
            Request::Get {
                caller: svc("s"),
                target: Target::OwnPull("/t".into()),
                max: DEFAULT_GET_MAX,
                wait: Duration::ZERO,
            }
        );
        // A sub_key wins over a topic.
        assert_eq!(
            dec(
                "pubsub.get",
                serde_json::json!({"service": "s", "topic": "/t", "sub_key": "sk.1",
                    "max_messages": 1000, "wait_ms": 2500}),
                b""
            )
            .unwrap(),
            Request::Get {
                caller: svc("s"),
                target: Target::SubKey("sk.1".into()),
                max: 1000,
                wait: Duration::from_millis(2500),
            }
        );
        assert_eq!(
            dec(
                "pubsub.ack",
                serde_json::json!({"service": "s", "topic": "/t", "msg_ids": ["a", "b"]}),
                b""
            )
            .unwrap(),
            Request::Ack {
                caller: svc("s"),
                target: Target::OwnPull("/t".into()),
                msg_ids: vec!["a".into(), "b".into()],
            }
        );
        assert_eq!(
            dec(
                "pubsub.unsubscribe",
                serde_json::json!({"service": "s", "sub_key": "sk.2"}),
                b""
            )
            .unwrap(),
            Request::Unsubscribe {
                caller: svc("s"),
                sub_key: "sk.2".into()
            }
        );
    }

    fn sub(key: &str, topic: &str, delivery: DeliveryKind, by: Option<&str>) -> Subscription {
        Subscription {
            sub_key: key.into(),
            topic: topic.into(),
            endpoint: None,
            delivery,
            batch_size: 1,
            retry: Retry::default(),
            dead_letter_topic: None,
            ack_timeout_ms: 30_000,
            created_at_ms: 0,
            created_by: by.map(str::to_owned),
        }
    }

    fn topic(name: &str) -> Topic {
        serde_json::from_value(serde_json::json!({ "name": name })).unwrap()
    }

    fn defs() -> Defs {
        let svc_a = DeliveryKind::Service {
            service: "a.handle".into(),
        };
        Defs::new(
            &[topic("/t"), topic("/u")],
            &[
                sub("sk.3", "/t", DeliveryKind::Pull, Some("service:a")),
                sub("sk.2", "/t", DeliveryKind::Pull, Some("service:a")),
                sub("sk.4", "/t", DeliveryKind::Pull, Some("service:b")),
                sub("sk.5", "/*", DeliveryKind::Pull, Some("service:c")),
                sub("sk.6", "/u", svc_a.clone(), Some("service:a")),
                sub("sk.7", "/u", DeliveryKind::Pull, Some("admin:ann")),
            ],
            &[],
        )
    }

    #[test]
    fn own_pull_sub_is_the_services_own_to_that_exact_topic() {
        let d = defs();
        assert_eq!(own_pull_sub(&d, "a", "/t").unwrap(), "sk.2");
        assert_eq!(own_pull_sub(&d, "b", "/t").unwrap(), "sk.4");
        // Service a's subscription to /u delivers to a service: not a pull one.
        let e = own_pull_sub(&d, "a", "/u").unwrap_err();
        assert_eq!((e.code(), e.status()), ("no_sub", 404));
        assert!(
            e.to_string().contains("/u") && e.to_string().contains("service a"),
            "{e}"
        );
        // A pattern matching the topic is not a subscription to it by name.
        assert!(own_pull_sub(&d, "c", "/t").is_err());
        // The admin's subscription is not the service's.
        assert!(own_pull_sub(&d, "ann", "/u").is_err());
    }

    #[test]
    fn existing_sub_finds_the_same_request_of_the_same_service() {
        let d = defs();
        let req = |topic: &str, delivery: DeliveryKind, sub_key: Option<&str>| SubscribeReq {
            topic: topic.into(),
            delivery,
            sub_key: sub_key.map(str::to_owned),
            batch_size: None,
            retry: None,
            dead_letter_topic: None,
            ack_timeout_ms: None,
        };
        let pull_t = req("/t", DeliveryKind::Pull, None);
        assert_eq!(existing_sub(&d, "a", &pull_t).unwrap().sub_key, "sk.2");
        assert!(existing_sub(&d, "z", &pull_t).is_none());
        let svc_u = req(
            "/u",
            DeliveryKind::Service {
                service: "a.handle".into(),
            },
            None,
        );
        assert_eq!(existing_sub(&d, "a", &svc_u).unwrap().sub_key, "sk.6");
        let other = req(
            "/u",
            DeliveryKind::Service {
                service: "a.other".into(),
            },
            None,
        );
        assert!(existing_sub(&d, "a", &other).is_none());
        assert!(existing_sub(&d, "a", &req("/u", DeliveryKind::Pull, None)).is_none());
        assert!(existing_sub(&d, "a", &req("/t", DeliveryKind::Pull, Some("mine"))).is_none());
    }

    fn delivered(data: &'static [u8], count: u32) -> Delivered {
        Delivered {
            msg: Arc::new(Message {
                topic: "/t".into(),
                seq: 4,
                msg_id: "zpsm000000000000000000000001".into(),
                pub_time_ms: 1_700_000_000_000,
                expires_at_ms: Some(1_700_000_060_000),
                priority: 6,
                has_gd: true,
                mime_type: "text/plain".into(),
                correl_id: Some("c".into()),
                in_reply_to: None,
                ext_client_id: None,
                published_by: "service:p".into(),
                data: Bytes::from_static(data),
            }),
            sub_key: "sk.1".into(),
            delivery_count: count,
        }
    }

    #[test]
    fn get_answer_is_a_json_line_then_the_data() {
        let batch = [delivered(b"one\ntwo", 1), delivered(b"\xff\x00", 2)];
        let body = encode_get("sk.1", &batch);
        let nl = body.iter().position(|&b| b == b'\n').unwrap();
        let head: serde_json::Value = serde_json::from_slice(&body[..nl]).unwrap();
        assert_eq!(&body[nl + 1..], b"one\ntwo\xff\x00");
        assert_eq!(head["sub_key"], "sk.1");
        let msgs = head["msgs"].as_array().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0]["size"], 7);
        assert_eq!(msgs[1]["size"], 2);
        assert_eq!(msgs[1]["delivery_count"], 2);
        let keys: Vec<&str> = msgs[0]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut want = vec![
            "msg_id",
            "topic",
            "size",
            "priority",
            "pub_time_ms",
            "expires_at_ms",
            "mime_type",
            "correl_id",
            "in_reply_to",
            "ext_client_id",
            "published_by",
            "delivery_count",
            "has_gd",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        // No message: the JSON line alone.
        assert_eq!(
            &encode_get("sk.1", &[])[..],
            b"{\"msgs\":[],\"sub_key\":\"sk.1\"}\n"
        );
    }

    #[test]
    fn get_answer_counts_the_real_metadata_against_its_limit() {
        // Control characters are escaped as \u00XX: 6 bytes of JSON per byte of correl_id,
        // far over the 400 bytes a message's metadata was once reckoned at.
        let correl: String = "\u{1}".repeat(1024);
        let msg = |i: usize| {
            let mut d = delivered(b"", 1);
            let m = Arc::get_mut(&mut d.msg).unwrap();
            m.correl_id = Some(correl.clone());
            m.msg_id = format!("zpsm{i:024x}");
            m.data = Bytes::from(vec![b'd'; 1000]);
            d
        };
        let batch: Vec<Delivered> = (0..100).map(msg).collect();
        let one_meta = serde_json::Value::Object(msg_meta(&batch[0]))
            .to_string()
            .len();
        assert!(one_meta > 6 * 1024, "{one_meta}");
        // Room for about half of them, by their real size.
        let limit = 50 * (one_meta + 1 + 1000) + 64;
        let body = encode_get_within("sk.1", &batch, limit);
        assert!(body.len() <= limit, "{} > {limit}", body.len());
        let nl = body.iter().position(|&b| b == b'\n').unwrap();
        let head: serde_json::Value = serde_json::from_slice(&body[..nl]).unwrap();
        let n = head["msgs"].as_array().unwrap().len();
        assert!((45..=50).contains(&n), "{n} messages");
        assert_eq!(body.len() - nl - 1, n * 1000);
        assert_eq!(head["msgs"][n - 1]["msg_id"], format!("zpsm{:024x}", n - 1));
        // The first message goes whatever the limit.
        let body = encode_get_within("sk.1", &batch, 10);
        let nl = body.iter().position(|&b| b == b'\n').unwrap();
        let head: serde_json::Value = serde_json::from_slice(&body[..nl]).unwrap();
        assert_eq!(head["msgs"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn service_delivery_and_pulled_json() {
        let s = sub("sk.1", "/*", DeliveryKind::Pull, None);
        let (meta, body) = service_delivery(&s, &[delivered(b"ab", 1), delivered(b"cde", 1)]);
        assert_eq!(&body[..], b"abcde");
        assert_eq!(meta["sub_key"], "sk.1");
        assert_eq!(meta["topic"], "/*");
        assert_eq!(meta["msgs"][0]["size"], 2);
        assert_eq!(meta["msgs"][1]["size"], 3);
        assert_eq!(meta["msgs"][1]["msg_id"], "zpsm000000000000000000000001");

        let text = pulled_json(&delivered(b"h\xc3\xa9", 1));
        assert_eq!(text["data"], "h\u{e9}");
        assert_eq!(text["sub_key"], "sk.1");
        assert!(text.get("data_encoding").is_none());
        let bin = pulled_json(&delivered(b"\xff\xfe", 1));
        assert_eq!(bin["data"], "//4=");
        assert_eq!(bin["data_encoding"], "base64");
    }

    /// A broker over a fresh SQLite store whose definitions are [`defs`] (set directly:
    /// no delivery task is involved in what these calls reach).
    async fn broker(dir: &std::path::Path) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let url = format!("sqlite:{}", dir.join("oxbus.db").display());
        let store = crate::store::Store::open(&url).await.unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new(false));
        let key = crate::secrets::Key::create(&dir.join("key")).unwrap();
        let outgoing = Arc::new(crate::outgoing::Outgoing::new(
            Arc::new(key),
            metrics.clone(),
        ));
        let b = Broker::new("s1", store, metrics, outgoing);
        *b.inner.defs.write().unwrap() = Arc::new(defs());
        b
    }

    #[tokio::test]
    async fn calls_answer_from_the_definitions_and_refuse_with_codes() {
        let dir = std::env::temp_dir().join(format!("oxbus-psops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let b = broker(&dir).await;
        for op in OPS {
            assert!(b.handles(op), "{op}");
        }
        // Another pubsub.* op is no op of this module: the generic unknown op answers it.
        assert!(!b.handles("pubsub.nonsense") && !b.handles("pubsub.stats"));
        assert!(!b.handles("out.rest") && !b.handles("cache.get"));
        let call = |op: &'static str, meta: serde_json::Value| {
            let b = b.clone();
            async move {
                b.call(7, op, Bytes::from(meta.to_string()), Bytes::new())
                    .await
            }
        };
        // Service a subscribes again to what it has: the existing sub_key, nothing made.
        let r = call(
            "pubsub.subscribe",
            serde_json::json!({"op": "pubsub.subscribe", "service": "a", "topic": "/t"}),
        )
        .await;
        assert_eq!(r.meta.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"sub_key": "sk.2", "existing": true})
        );
        // Two concurrent subscribes of the same service to the same thing make one
        // subscription: both answer its key, derived from the request, and its cursor is
        // in place (the second one's failed put does not remove it).
        let (r1, r2) = tokio::join!(
            call(
                "pubsub.subscribe",
                serde_json::json!({"op": "pubsub.subscribe", "service": "d", "topic": "/t"}),
            ),
            call(
                "pubsub.subscribe",
                serde_json::json!({"op": "pubsub.subscribe", "service": "d", "topic": "/t"}),
            )
        );
        let key = derived_sub_key("d", "/t", &DeliveryKind::Pull);
        let mut existing = 0;
        for r in [&r1, &r2] {
            assert_eq!(r.meta.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["sub_key"], key.as_str(), "{body}");
            existing += usize::from(body["existing"] == true);
        }
        assert_eq!(existing, 1, "one made it, the other found it");
        let cursors = b.inner.store.sub_cursors(&key).await.unwrap();
        assert_eq!(cursors.len(), 1, "the subscription's cursor to /t");
        // Service a has no pull subscription to /u (its one delivers to a service).
        let r = call(
            "pubsub.get",
            serde_json::json!({"op": "pubsub.get", "service": "a", "topic": "/u"}),
        )
        .await;
        assert_eq!(
            (r.meta.status, r.meta.error.as_deref()),
            (404, Some("no_sub"))
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("topic /u"),
            "{body}"
        );
        let r = call(
            "pubsub.ack",
            serde_json::json!({"op": "pubsub.ack", "service": "z", "topic": "/t", "msg_ids": ["m"]}),
        )
        .await;
        assert_eq!(
            (r.meta.status, r.meta.error.as_deref()),
            (404, Some("no_sub"))
        );
        // A malformed call never reaches the broker.
        let r = call(
            "pubsub.publish",
            serde_json::json!({"op": "pubsub.publish", "service": "a", "topic": "/t",
                "msgs": [{"size": 4}]}),
        )
        .await;
        assert_eq!(
            (r.meta.status, r.meta.error.as_deref()),
            (400, Some("invalid"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_keep_their_status_and_code() {
        for e in [
            PubsubError::NoTopic("/x".into()),
            PubsubError::Full("/x".into()),
            PubsubError::Unavailable("down".into()),
            PubsubError::TooLarge {
                topic: "/x".into(),
                size: 9,
                max: 1,
            },
        ] {
            let r = error_reply(&e);
            assert_eq!(r.meta.status, e.status());
            assert_eq!(r.meta.error.as_deref(), Some(e.code()));
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["error"], e.to_string());
        }
    }
}
