//! The admin API's `POST /v1/invoke/{service}`: one call of a service with a JSON payload,
//! dispatched into the pool like an HTTP channel's call (channel `admin`). It touches neither
//! the store nor any config: `admin::handle` does not wait for the store for it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use oxbus_ipc::InvokeMeta;
use serde_json::json;
use std::time::Instant;

use super::{Body, Ctx, error, reply};

/// `POST /v1/invoke/{service}`: the service's answer as it gave it, with its cid.
pub(super) async fn invoke(cx: &Ctx, service: &str, body: Bytes) -> Response<Body> {
    // Checked first: the check below would accept any depth (serde's IgnoredAny does not
    // recurse), and the worker's decoder does recurse.
    if crate::edge::json_depth::too_deep(&body) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({
                "error": crate::edge::json_depth::message(),
                "limit": crate::edge::json_depth::MAX_JSON_DEPTH,
            }),
        );
    }
    if !body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return error(StatusCode::BAD_REQUEST, "the payload must be JSON");
    }
    let cid = cx.cids.next();
    // An admin call starts a trace of its own.
    let trace = crate::trace::TraceParent::new_root();
    let timeout = cx.settings.request_timeout();
    let meta: InvokeMeta<'_> = InvokeMeta {
        op: "invoke",
        service,
        cid: &cid,
        channel: Some("admin"),
        data_format: Some("json"),
        method: None,
        path: None,
        params: None,
        query: None,
        headers: None,
        deadline_ms: Some(timeout.as_millis() as u64),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: None,
        security: None,
        traceparent: Some(trace.as_str()),
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: None,
    };
    let started = Instant::now();
    match cx.pool.invoke(&meta, &body, started + timeout).await {
        Ok(r) => {
            let mut resp = Response::new(Full::new(r.body));
            *resp.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if let Some(ct) = r.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            if let Ok(v) = HeaderValue::from_str(&cid) {
                resp.headers_mut().insert("x-oxbus-cid", v);
            }
            resp
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
