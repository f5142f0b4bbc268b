//! The admin API's caches (docs/CACHE.md): `GET /v1/caches` (every live cache of this server
//! with its figures), `GET|PUT|DELETE /v1/caches/{name}` (one cache; create or replace its
//! definition; delete it). A definition's changes are `admin::objects`' (this file has the
//! kind's hooks: applied with `apply_defs`, answered with the live cache's figures, `default`
//! never deleted).

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::objects::Refused;
use super::{Body, error, read_body, reply};
use crate::admin::Ctx;
use oxbus_cache::CacheDef;

/// Routes `/v1/caches/…`; `rest` is the path after `/v1/caches`, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, []) => list(cx),
        (&Method::GET, [name]) => get(cx, &crate::edge::router::percent_decode(name)),
        (&Method::PUT, [name]) => {
            let name = crate::edge::router::percent_decode(name);
            match read_body(req).await {
                Ok(body) => super::objects::put::<CacheDef>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => {
            super::objects::delete::<CacheDef>(cx, &crate::edge::router::percent_decode(name)).await
        }
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

impl super::objects::AdminObject for CacheDef {
    /// The body holds the definition's fields; those left out take their defaults (a
    /// replace does not merge).
    async fn build(
        _cx: &Ctx,
        input: Value,
        name: Option<&str>,
        _stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        crate::admin::config_io::parse_cache_def(&input, name)
            .and_then(|d| {
                use crate::model::object::ConfigObject;
                ConfigObject::validate(&d).map_err(|e| e.to_string())?;
                Ok(d)
            })
            .map_err(|m| Refused::new(StatusCode::BAD_REQUEST, m))
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        crate::admin::config_io::apply_cache_defs(cx, expected).await;
        Ok(())
    }

    /// With the live cache's figures.
    fn put_answer(
        cx: &Ctx,
        def: &Self,
        config_version: i64,
        created: bool,
    ) -> Result<Value, Refused> {
        let cache = match cx.pool.caches.get(&def.name) {
            Ok(c) => stats_json(&c),
            Err(e) => return Err(Refused::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        };
        Ok(json!({"config_version": config_version, "created": created, "cache": cache}))
    }

    /// `default` always exists.
    fn refuse_delete(_cx: &Ctx, name: &str) -> Option<Refused> {
        use crate::model::object::ConfigObject;
        CacheDef::always_exists(name).then(|| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "the default cache always exists; PUT it to change its settings",
            )
        })
    }

    fn not_found(name: &str) -> String {
        format!("no cache named {name}")
    }
}
