//! The admin API's secrets: `GET /v1/secrets` (names and who/when, never values),
//! `PUT /v1/secrets/{name}` (sealed with this server's key before it is stored) and
//! `DELETE /v1/secrets/{name}`. A value goes in, never out: no answer, log line or parse
//! error quotes it.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::info;

use super::auth::Identity;
use super::{Body, Ctx, error, read_body, reply};

/// Routes `/v1/secrets/…`; `rest` is the path after `/v1/secrets`, split at `/`.
pub(super) async fn route(
    req: Request<Incoming>,
    cx: &Ctx,
    rest: &[&str],
    who: &Identity,
) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, []) => list_secrets(cx).await,
        (&Method::PUT, [name]) => {
            let name = crate::edge::router::percent_decode(name);
            match read_body(req).await {
                Ok(body) => put_secret(cx, &name, body, who).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => {
            delete_secret(cx, &crate::edge::router::percent_decode(name)).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// GET /v1/secrets: names and who/when, never values.
async fn list_secrets(cx: &Ctx) -> Response<Body> {
    match cx.store.secrets().await {
        Ok(list) => reply(
            StatusCode::OK,
            json!({"secrets": list.iter().map(|s| json!({
                "name": s.name, "updated_by": s.updated_by, "updated_at_ms": s.updated_at,
            })).collect::<Vec<_>>()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// PUT /v1/secrets/{name} `{"value": "…"}`: sealed before it is stored. Parse errors never
/// quote the body (it holds the secret). Recorded as updated by `who` (a named token) or by
/// whom the root's request says (`updated_by`).
async fn put_secret(cx: &Ctx, name: &str, body: Bytes, who: &Identity) -> Response<Body> {
    let doc: Option<Value> = serde_json::from_slice(&body).ok();
    let obj = doc.as_ref().and_then(Value::as_object);
    let (value, by) = match obj {
        Some(o) if o.keys().all(|k| k == "value" || k == "updated_by") => {
            match (o.get("value"), o.get("updated_by")) {
                (Some(Value::String(v)), None) => (v.as_str(), who.recorded_as(None, "admin-api")),
                (Some(Value::String(v)), Some(Value::String(by))) => {
                    (v.as_str(), who.recorded_as(Some(by), "admin-api"))
                }
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "expected {\"value\": \"<string>\"} (and optionally \"updated_by\")",
                    );
                }
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected a JSON object {\"value\": \"<string>\"}",
            );
        }
    };
    if let Err(e) = crate::store::validate_secret_name(name) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let sealed = cx.key.seal(name, value);
    let _one_at_a_time = cx.locks.deploy.lock().await;
    match cx.store.put_secret(name, &sealed, by).await {
        Ok(c) => {
            info!(secret = name, created = c.value, "secret set");
            reply(
                if c.value {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                json!({"config_version": c.config_version, "name": name, "created": c.value}),
            )
        }
        Err(crate::store::StoreError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// DELETE /v1/secrets/{name}
async fn delete_secret(cx: &Ctx, name: &str) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    match cx.store.delete_secret(name).await {
        Ok(c) => {
            info!(secret = name, "secret deleted");
            reply(StatusCode::OK, json!({"config_version": c.config_version}))
        }
        Err(crate::store::StoreError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
