//! The admin API's secrets: `GET /v1/secrets` (names, readers and who/when, never values),
//! `PUT /v1/secrets/{name}` (`{"value", "services"}`: the value sealed with this server's
//! key before it is stored; either may be left out to keep what is stored) and
//! `DELETE /v1/secrets/{name}`. A value goes in, never out: no answer, log line or parse
//! error quotes it. `services` lists the service-name patterns that may read the secret
//! from Python (`self.secrets[name]`, `crate::model::secret_access`).

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
                "name": s.name, "services": s.services,
                "updated_by": s.updated_by, "updated_at_ms": s.updated_at,
            })).collect::<Vec<_>>()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// PUT /v1/secrets/{name} `{"value": "…", "services": ["crm.*", …]}`: the value sealed
/// before it is stored. Either member may be left out: without `value` only who may read it
/// changes (the secret must exist), without `services` the stored readers stay (none for a
/// new secret). Parse errors never quote the body (it holds the secret). Recorded as
/// updated by `who` (a named token) or by whom the root's request says (`updated_by`).
async fn put_secret(cx: &Ctx, name: &str, body: Bytes, who: &Identity) -> Response<Body> {
    const EXPECTED: &str = "expected a JSON object {\"value\": \"<string>\", \"services\": \
                            [\"<service name or pattern>\", ...]} with either or both (and \
                            optionally \"updated_by\")";
    let doc: Option<Value> = serde_json::from_slice(&body).ok();
    let Some(o) = doc.as_ref().and_then(Value::as_object) else {
        return error(StatusCode::BAD_REQUEST, EXPECTED);
    };
    if !o
        .keys()
        .all(|k| k == "value" || k == "services" || k == "updated_by")
    {
        return error(StatusCode::BAD_REQUEST, EXPECTED);
    }
    let value = match o.get("value") {
        None => None,
        Some(Value::String(v)) => Some(v.as_str()),
        Some(_) => return error(StatusCode::BAD_REQUEST, EXPECTED),
    };
    let services: Option<Vec<String>> = match o.get("services") {
        None => None,
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(list) => Some(list),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "services: expected a list of service names or patterns (strings)",
                );
            }
        },
    };
    let by = match o.get("updated_by") {
        None => who.recorded_as(None, "admin-api"),
        Some(Value::String(by)) => who.recorded_as(Some(by), "admin-api"),
        Some(_) => return error(StatusCode::BAD_REQUEST, EXPECTED),
    };
    if value.is_none() && services.is_none() {
        return error(StatusCode::BAD_REQUEST, EXPECTED);
    }
    if let Err(e) = crate::store::validate_secret_name(name) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if let Some(s) = &services
        && let Err(e) = crate::store::validate_services(name, s)
    {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let sealed = value.map(|v| cx.key.seal(name, v));
    let _one_at_a_time = cx.locks.deploy.lock().await;
    match cx
        .store
        .put_secret_with(name, sealed.as_deref(), services.as_deref(), by)
        .await
    {
        Ok(c) => {
            info!(
                secret = name,
                created = c.value,
                value = value.is_some(),
                services = ?services,
                "secret set"
            );
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
        Err(crate::store::StoreError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
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
