//! The admin API's caches (docs/CACHE.md): `GET /v1/caches` (every live cache of this server
//! with its figures), `GET|PUT|DELETE /v1/caches/{name}` (one cache; create or replace its
//! definition; delete it). A definition is a store object like the others: a change is
//! stored with a config version bump, applied here before the answer, and reaches the other
//! servers through the bus and the sync loop.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::info;

use super::{Body, error, read_body, reply};
use crate::admin::Ctx;
use crate::store::StoreError;
use oxbus_cache::{CacheDef, DEFAULT_CACHE};

/// Routes `/v1/caches/…`; `rest` is the path after `/v1/caches`, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, []) => list(cx),
        (&Method::GET, [name]) => get(cx, &crate::edge::router::percent_decode(name)),
        (&Method::PUT, [name]) => {
            let name = crate::edge::router::percent_decode(name);
            match read_body(req).await {
                Ok(body) => put(cx, &name, body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => delete(cx, &crate::edge::router::percent_decode(name)).await,
        // A cache's entries (`crate::admin::cache_entries`).
        (_, [name, "keys", ..] | [name, "clear"]) => {
            let caches = &cx.pool.caches;
            let name = crate::edge::router::percent_decode(name);
            let key = rest.get(2).map(|k| crate::edge::router::percent_decode(k));
            let (status, doc) = match (&method, &rest[1..], key) {
                (&Method::GET, ["keys"], _) => crate::admin::cache_entries::list_keys(
                    caches,
                    &name,
                    req.uri().query().unwrap_or(""),
                ),
                (&Method::GET, ["keys", _], Some(key)) => {
                    crate::admin::cache_entries::get_entry(caches, &name, &key)
                }
                (&Method::PUT, ["keys", _], Some(key)) => match read_body(req).await {
                    Ok(body) => crate::admin::cache_entries::put_entry(caches, &name, &key, &body),
                    Err(r) => return r,
                },
                (&Method::DELETE, ["keys", _], Some(key)) => {
                    crate::admin::cache_entries::delete_entry(caches, &name, &key)
                }
                (&Method::POST, ["clear"], _) => crate::admin::cache_entries::clear(caches, &name),
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("no admin endpoint {method} {}", req.uri().path()),
                    );
                }
            };
            reply(status, doc)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

fn stats_json(cache: &oxbus_cache::Cache) -> Value {
    serde_json::to_value(cache.stats()).expect("stats serialise")
}

/// GET /v1/caches: every cache this server holds, by name.
fn list(cx: &Ctx) -> Response<Body> {
    let caches: Vec<Value> = cx.pool.caches.all().iter().map(|c| stats_json(c)).collect();
    reply(StatusCode::OK, json!({ "caches": caches }))
}

/// GET /v1/caches/{name}
fn get(cx: &Ctx, name: &str) -> Response<Body> {
    match cx.pool.caches.get(name) {
        Ok(c) => reply(StatusCode::OK, stats_json(&c)),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

/// PUT /v1/caches/{name}: creates or replaces the definition (201 / 200). The body holds the
/// definition's fields; those left out take their defaults (a replace does not merge).
async fn put(cx: &Ctx, name: &str, body: Bytes) -> Response<Body> {
    let def = match super::definition(
        &body,
        |v| crate::admin::config_io::parse_cache_def(v, Some(name)),
        |d: &CacheDef| d.validate().map_err(|e| e.to_string()),
    ) {
        Ok(d) => d,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let stored = match cx.store.cache_defs().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let create = !stored.iter().any(|d| d.name == name);
    let change = match cx.store.put_cache_def(&def, create, "admin-api").await {
        Ok(c) => c,
        // Created or deleted meanwhile through another server.
        Err(StoreError::Invalid(m) | StoreError::NotFound(m)) => {
            return error(StatusCode::CONFLICT, m);
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut expected: Vec<CacheDef> = stored.into_iter().filter(|d| d.name != name).collect();
    expected.push(def.clone());
    crate::admin::config_io::apply_cache_defs(cx, expected).await;
    info!(
        cache = name,
        created = create,
        "cache definition {}",
        if create { "created" } else { "updated" }
    );
    let cache = match cx.pool.caches.get(name) {
        Ok(c) => stats_json(&c),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    reply(
        if create {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        json!({"config_version": change.config_version, "created": create, "cache": cache}),
    )
}

/// DELETE /v1/caches/{name}: the cache and its entries go (on every server); `default`
/// always exists.
async fn delete(cx: &Ctx, name: &str) -> Response<Body> {
    if name == DEFAULT_CACHE {
        return error(
            StatusCode::BAD_REQUEST,
            "the default cache always exists; PUT it to change its settings",
        );
    }
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let stored = match cx.store.cache_defs().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let change = match cx.store.delete_cache_def(name).await {
        Ok(c) => c,
        Err(StoreError::NotFound(_)) => {
            return error(StatusCode::NOT_FOUND, format!("no cache named {name}"));
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let expected: Vec<CacheDef> = stored.into_iter().filter(|d| d.name != name).collect();
    crate::admin::config_io::apply_cache_defs(cx, expected).await;
    info!(cache = name, "cache definition deleted");
    reply(
        StatusCode::OK,
        json!({"config_version": change.config_version, "deleted": name}),
    )
}
