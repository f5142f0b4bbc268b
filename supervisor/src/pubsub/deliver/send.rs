//! Deliveries: a batch to a service (invoked through the pool with `channel: "pubsub"` and
//! the messages' metadata in the invocation's `pubsub` meta) or pushed to a REST endpoint
//! (a JSON document); and the JSON shape of a delivered message (push, pull, the bus).

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::queue::Entry;
use crate::model::pubsub::{DeliveryKind, Message, Subscription};
use crate::pubsub::{Delivered, Inner, PubsubError, WsDeliverError, ops};

/// The most data a service or push batch carries: messages past it wait for the next
/// batch (a batch always has at least one).
pub const MAX_BATCH_BYTES: usize = crate::pubsub::ops::MAX_BATCH_BYTES;
/// How long a service or push delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A pulled message as JSON (REST, Python, the bus): the shape of `ops::pulled_json`
/// (metadata, `data`, `sub_key`: one place builds it for every way out) and its `seq`
/// (for a forwarded pull to rebuild the message).
pub fn delivered_json(d: &Delivered) -> Value {
    let mut v = ops::pulled_json(d);
    v["seq"] = d.msg.seq.into();
    v
}

/// A batch's entries as delivered messages (the message itself shared, not copied).
fn delivered(sub: &Subscription, batch: &[Entry]) -> Vec<Delivered> {
    batch
        .iter()
        .map(|e| Delivered {
            msg: e.msg.clone(),
            sub_key: sub.sub_key.clone(),
            delivery_count: e.delivery_count,
        })
        .collect()
}

/// [`delivered_json`] read back.
pub fn delivered_from_json(v: &Value) -> Result<Delivered, PubsubError> {
    let bad =
        |what: &str| PubsubError::Internal(format!("a forwarded message has no valid {what}"));
    let s = |k: &str| -> Result<String, PubsubError> {
        v[k].as_str().map(str::to_owned).ok_or_else(|| bad(k))
    };
    let opt = |k: &str| v[k].as_str().map(str::to_owned);
    let text = s("data")?;
    let data = if v["data_encoding"].as_str() == Some("base64") {
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| bad("data"))?
    } else {
        text.into_bytes()
    };
    Ok(Delivered {
        msg: Arc::new(Message {
            topic: s("topic")?,
            seq: v["seq"].as_i64().unwrap_or(0),
            msg_id: s("msg_id")?,
            pub_time_ms: v["pub_time_ms"]
                .as_i64()
                .ok_or_else(|| bad("pub_time_ms"))?,
            expires_at_ms: v["expires_at_ms"].as_i64(),
            priority: v["priority"]
                .as_u64()
                .ok_or_else(|| bad("priority"))?
                .clamp(1, 9) as u8,
            has_gd: v["has_gd"].as_bool().unwrap_or(false),
            mime_type: s("mime_type")?,
            correl_id: opt("correl_id"),
            in_reply_to: opt("in_reply_to"),
            ext_client_id: opt("ext_client_id"),
            published_by: s("published_by")?,
            data: Bytes::from(data),
        }),
        sub_key: s("sub_key")?,
        delivery_count: v["delivery_count"].as_u64().unwrap_or(1) as u32,
    })
}

/// Delivers one batch: Ok when the subscriber took it (a service's reply below 400, a push
/// answered 2xx), else why not.
pub(super) async fn deliver(
    inner: &Arc<Inner>,
    sub: &Subscription,
    batch: &[Entry],
) -> Result<(), String> {
    match &sub.delivery {
        DeliveryKind::Service { service } => to_service(inner, sub, service, batch).await,
        DeliveryKind::Push {
            conn,
            path,
            url,
            method,
        } => {
            let doc = json!({
                "sub_key": sub.sub_key,
                "messages": delivered(sub, batch)
                    .iter()
                    .map(ops::pulled_json)
                    .collect::<Vec<_>>(),
            });
            let body = Bytes::from(doc.to_string());
            match (conn, url) {
                (Some(conn), _) => push_conn(inner, conn, path.as_deref(), method, body).await,
                (None, Some(url)) => push_url(url, method, body).await,
                (None, None) => Err("the push delivery has neither conn nor url".into()),
            }
        }
        DeliveryKind::Pull => Err("a pull subscription is not delivered".into()),
        DeliveryKind::Websocket { client_id } => {
            let Some(clients) = inner.ws_clients.get() else {
                return Err("this server has no WebSocket clients to deliver to".into());
            };
            let messages = delivered(sub, batch)
                .iter()
                .map(ops::pulled_json)
                .collect::<Vec<_>>();
            match clients.deliver(client_id, &sub.sub_key, messages).await {
                Ok(()) => Ok(()),
                Err(WsDeliverError::Gone) => {
                    // Its connection ended (the disconnect deletes the subscription too;
                    // this covers a server that crashed): the subscription goes, in a task
                    // of its own, since deleting it stops this delivery's task.
                    let inner = inner.clone();
                    let id = client_id.clone();
                    tokio::spawn(async move {
                        super::forget_ws_clients(&inner, |c| c == id).await;
                    });
                    Err(format!("WebSocket client {client_id} is gone"))
                }
                Err(WsDeliverError::Failed(e)) => Err(e),
            }
        }
    }
}

async fn to_service(
    inner: &Arc<Inner>,
    sub: &Subscription,
    service: &str,
    batch: &[Entry],
) -> Result<(), String> {
    let Some(pool) = inner.pool.get() else {
        return Err("this server has no worker pool to invoke services".into());
    };
    // The worker's `pubsub` meta and body as `ops` builds them (the one place: the keys
    // cannot drift between the ways a message goes out).
    let (meta_json, body) = ops::service_delivery(sub, &delivered(sub, batch));
    let cid = crate::random::random_hex(12);
    let meta: oxbus_ipc::InvokeMeta<'_> = oxbus_ipc::InvokeMeta {
        op: "invoke",
        service,
        cid: &cid,
        channel: Some("pubsub"),
        data_format: Some("raw"),
        method: None,
        path: None,
        params: None,
        query: None,
        headers: None,
        deadline_ms: Some(DELIVERY_TIMEOUT.as_millis() as u64),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: Some(&sub.sub_key),
        security: None,
        traceparent: None,
        tracestate: None,
        pubsub: Some(&meta_json),
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
    };
    match pool
        .invoke(
            &meta,
            &body,
            tokio::time::Instant::now().into_std() + DELIVERY_TIMEOUT,
        )
        .await
    {
        Ok(r) if r.status < 400 => Ok(()),
        Ok(r) => Err(format!(
            "service {service} answered {}: {}",
            r.status,
            excerpt(&r.body)
        )),
        Err(e) => Err(format!("service {service}: {e}")),
    }
}

fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if body.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}

async fn push_conn(
    inner: &Arc<Inner>,
    conn: &str,
    path: Option<&str>,
    method: &str,
    body: Bytes,
) -> Result<(), String> {
    if path.is_some() {
        // `out.rest` calls go to the connection's url_path; a path of its own per
        // subscription is not supported by it.
        return Err(format!(
            "delivery.path is not supported with conn {conn}: set the connection's url_path"
        ));
    }
    let meta = json!({
        "conn": conn,
        "method": method,
        "content_type": "application/json",
    });
    let reply = crate::lifecycle::ops::ServerOps::call(
        &*inner.outgoing,
        0,
        "out.rest",
        Bytes::from(meta.to_string()),
        body,
    )
    .await;
    if reply.meta.error.is_none() && (200..300).contains(&reply.meta.status) {
        Ok(())
    } else {
        Err(format!(
            "push to connection {conn} answered {}: {}",
            reply.meta.status,
            excerpt(&reply.body)
        ))
    }
}

/// A push to a plain `http://` URL (no auth; an `https://` one needs a REST outgoing
/// connection, which has its TLS settings).
async fn push_url(url: &str, method: &str, body: Bytes) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "push to {url}: only http:// URLs are pushed to directly; use a REST outgoing \
             connection (conn) for https"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let call = async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("push to {url}: connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("push to {url}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))
            .map_err(|e| format!("push to {url}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("push to {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "push to {url} answered {status}: {}",
                excerpt(&text)
            ))
        }
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("push to {url}: no answer within 30 s")))
}
