//! The admin API's caches (docs/CACHE.md): their definitions and their contents.
//!
//! Definitions: `GET /v1/caches` (every live cache of this server with its figures),
//! `GET|PUT|DELETE /v1/caches/{name}` (one cache; create or replace its definition; delete
//! it). A definition's changes are `admin::objects`' (this file has the kind's hooks: applied
//! with `apply_defs`, answered with the live cache's figures, `default` never deleted).
//!
//! Entries (not config: no config version, nothing for the sync loop): browse keys by
//! prefix, page by page; read, write and delete one entry; clear a cache. Writes made here
//! replicate like a service's. Reads here count neither as hits nor as misses.
//!
//! - `GET  /v1/caches/{name}/keys?prefix=P&after=K&limit=N` → `{"cache", "keys", "next"}`
//!   (sorted; `next` is the `after` of the following page, `null` on the last one)
//! - `GET  /v1/caches/{name}/keys/{key}` → `{"key", "type": "json"|"bytes", "value",
//!   "expires_in_s"}` (bytes as base64; `expires_in_s` null = never), 404 when absent
//! - `PUT  /v1/caches/{name}/keys/{key}` with `{"value": JSON}` or `{"bytes": base64}`, and
//!   optionally `"expiry": seconds` (0 = never; absent = the cache's default)
//! - `DELETE /v1/caches/{name}/keys/{key}` → `{"deleted": bool}`
//! - `POST /v1/caches/{name}/clear` → `{"cleared": n}`
//!
//! Keys are one path segment, percent-encoded (`user%3A1`, `a%2Fb`).

use base64::Engine as _;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::objects::Refused;
use super::{Body, error, read_body, reply};
use crate::admin::Ctx;
use oxbus_cache::{CacheDef, CacheError, Caches, ValueKind};

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
        // A cache's entries.
        (_, [name, "keys", ..] | [name, "clear"]) => {
            let caches = &cx.pool.caches;
            let name = crate::edge::router::percent_decode(name);
            let key = rest.get(2).map(|k| crate::edge::router::percent_decode(k));
            let (status, doc) = match (&method, &rest[1..], key) {
                (&Method::GET, ["keys"], _) => {
                    list_keys(caches, &name, req.uri().query().unwrap_or(""))
                }
                (&Method::GET, ["keys", _], Some(key)) => get_entry(caches, &name, &key),
                (&Method::PUT, ["keys", _], Some(key)) => match read_body(req).await {
                    Ok(body) => put_entry(caches, &name, &key, &body),
                    Err(r) => return r,
                },
                (&Method::DELETE, ["keys", _], Some(key)) => delete_entry(caches, &name, &key),
                (&Method::POST, ["clear"], _) => clear(caches, &name),
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("no admin endpoint {method} {}", req.uri().path()),
                    );
                }
            };
            // A clear is audited (`super::audit`) with the number of entries it removed.
            let cleared =
                (rest[1..] == ["clear"] && status.is_success()).then(|| doc["cleared"].clone());
            let mut resp = reply(status, doc);
            if let Some(n) = cleared {
                super::audit::AuditNote::detail(json!({ "cleared": n })).attach(&mut resp);
            }
            resp
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
        use crate::model::object::ConfigObject;
        let def = crate::model::cache::parse_cache_def(&input, name)
            .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
        ConfigObject::validate(&def).map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
        Ok(def)
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        apply_cache_defs(cx, expected).await;
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

/// Makes this server's live caches match the store's definitions after a change made
/// through this server (the other servers follow through `sync`). `expected`: the
/// definitions as the change left them, applied should the store not answer now (the sync
/// loop then reads them again on its next round).
pub(super) async fn apply_cache_defs(cx: &Ctx, expected: Vec<CacheDef>) {
    let defs = super::objects::read_back(cx, expected, "cache definitions").await;
    cx.pool.caches.apply_defs(&defs);
}

/// Most keys one page lists.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

fn err(e: &CacheError) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "error": e.to_string() }),
    )
}

fn bad(msg: impl std::fmt::Display) -> (StatusCode, Value) {
    (StatusCode::BAD_REQUEST, json!({ "error": msg.to_string() }))
}

/// `GET /v1/caches/{name}/keys`.
fn list_keys(caches: &Caches, name: &str, query: &str) -> (StatusCode, Value) {
    let cache = match caches.get(name) {
        Ok(c) => c,
        Err(e) => return err(&e),
    };
    let (mut prefix, mut after, mut limit) = (String::new(), None, DEFAULT_PAGE);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::edge::router::percent_decode(v);
        match k {
            "prefix" => prefix = v,
            "after" => after = Some(v),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => return bad(format!("limit must be 1..={MAX_PAGE}, got {v:?}")),
            },
            _ => {
                return bad(format!(
                    "unknown query parameter {k:?} (prefix, after, limit)"
                ));
            }
        }
    }
    let keys = cache.keys(&prefix);
    let start = match &after {
        Some(a) => keys.partition_point(|k| k.as_str() <= a.as_str()),
        None => 0,
    };
    let page: Vec<&String> = keys[start..].iter().take(limit).collect();
    let next = (start + page.len() < keys.len())
        .then(|| page.last().map(|k| k.to_string()))
        .flatten();
    (
        StatusCode::OK,
        json!({"cache": name, "prefix": prefix, "keys": page, "next": next}),
    )
}

/// `GET /v1/caches/{name}/keys/{key}`.
fn get_entry(caches: &Caches, name: &str, key: &str) -> (StatusCode, Value) {
    let cache = match caches.get(name) {
        Ok(c) => c,
        Err(e) => return err(&e),
    };
    let Some(e) = cache.peek(key) else {
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no key {key:?} in cache {name}") }),
        );
    };
    let value = match e.kind {
        ValueKind::Json => serde_json::from_slice(&e.value)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&e.value).into_owned())),
        ValueKind::Bytes => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value))
        }
    };
    let expires_in_s = (e.expires_at != 0)
        .then(|| e.expires_at.saturating_sub(oxbus_cache::now_ms()) as f64 / 1000.0);
    let kind = match e.kind {
        ValueKind::Json => "json",
        ValueKind::Bytes => "bytes",
    };
    (
        StatusCode::OK,
        json!({"cache": name, "key": key, "type": kind, "value": value, "expires_in_s": expires_in_s}),
    )
}

/// `PUT /v1/caches/{name}/keys/{key}`.
fn put_entry(caches: &Caches, name: &str, key: &str, body: &[u8]) -> (StatusCode, Value) {
    let cache = match caches.get(name) {
        Ok(c) => c,
        Err(e) => return err(&e),
    };
    let doc: serde_json::Map<String, Value> = match serde_json::from_slice(body) {
        Ok(d) => d,
        Err(e) => {
            return bad(format!(
                "expected a JSON object with \"value\" (JSON) or \"bytes\" (base64): {e}"
            ));
        }
    };
    if let Some(k) = doc
        .keys()
        .find(|k| !matches!(k.as_str(), "value" | "bytes" | "expiry"))
    {
        return bad(format!("unknown field {k:?} (value, bytes, expiry)"));
    }
    let (value, kind) = match (doc.get("value"), doc.get("bytes")) {
        (Some(v), None) => (
            Bytes::from(serde_json::to_vec(v).expect("a JSON value serialises")),
            ValueKind::Json,
        ),
        (None, Some(Value::String(b))) => {
            match base64::engine::general_purpose::STANDARD.decode(b) {
                Ok(raw) => (Bytes::from(raw), ValueKind::Bytes),
                Err(e) => return bad(format!("bytes: not base64: {e}")),
            }
        }
        (None, Some(_)) => return bad("bytes must be a base64 string"),
        _ => return bad("give exactly one of \"value\" (JSON) and \"bytes\" (base64)"),
    };
    let expiry = match doc.get("expiry") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => return bad(format!("expiry must be a number of seconds, got {other}")),
    };
    match caches.set(&cache, key, value, kind, expiry) {
        Ok(()) => (
            StatusCode::OK,
            json!({"cache": name, "key": key, "stored": true}),
        ),
        Err(e) => err(&e),
    }
}

/// `DELETE /v1/caches/{name}/keys/{key}`.
fn delete_entry(caches: &Caches, name: &str, key: &str) -> (StatusCode, Value) {
    match caches.get(name).and_then(|c| caches.delete(&c, key)) {
        Ok(deleted) => (
            StatusCode::OK,
            json!({"cache": name, "key": key, "deleted": deleted}),
        ),
        Err(e) => err(&e),
    }
}

/// `POST /v1/caches/{name}/clear`.
fn clear(caches: &Caches, name: &str) -> (StatusCode, Value) {
    match caches.get(name) {
        Ok(c) => (
            StatusCode::OK,
            json!({"cache": name, "cleared": caches.clear(&c)}),
        ),
        Err(e) => err(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_page_through_in_order() {
        let caches = Caches::new();
        let d = caches.get("default").unwrap();
        for i in 0..25 {
            caches
                .set(
                    &d,
                    &format!("k{i:02}"),
                    Bytes::from("1"),
                    ValueKind::Json,
                    None,
                )
                .unwrap();
        }
        caches
            .set(&d, "other", Bytes::from("1"), ValueKind::Json, None)
            .unwrap();
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let q = if after.is_empty() {
                "prefix=k&limit=10".to_owned()
            } else {
                format!("prefix=k&limit=10&after={after}")
            };
            let (status, page) = list_keys(&caches, "default", &q);
            assert_eq!(status, StatusCode::OK);
            seen.extend(page["keys"].as_array().unwrap().iter().cloned());
            match page["next"].as_str() {
                Some(n) => after = n.to_owned(),
                None => break,
            }
        }
        let want: Vec<Value> = (0..25).map(|i| json!(format!("k{i:02}"))).collect();
        assert_eq!(seen, want);
        assert_eq!(
            list_keys(&caches, "default", "limit=0").0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(list_keys(&caches, "nope", "").0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn entries_are_read_written_and_refused_with_reasons() {
        let caches = Caches::new();
        let (s, _) = put_entry(
            &caches,
            "default",
            "j",
            br#"{"value": {"a": [1]}, "expiry": 60}"#,
        );
        assert_eq!(s, StatusCode::OK);
        let (_, e) = get_entry(&caches, "default", "j");
        assert_eq!(e["value"], json!({"a": [1]}));
        assert!(e["expires_in_s"].as_f64().unwrap() > 50.0);
        put_entry(&caches, "default", "b", br#"{"bytes": "AP8="}"#);
        let (_, e) = get_entry(&caches, "default", "b");
        assert_eq!(
            (e["type"].as_str(), e["value"].as_str()),
            (Some("bytes"), Some("AP8="))
        );
        assert_eq!(e["expires_in_s"], Value::Null);
        for bad_body in [
            &br#"{"value": 1, "bytes": "AA=="}"#[..],
            br#"{"bytes": "***"}"#,
            br#"{"value": 1, "ttl": 5}"#,
            br#"[1]"#,
            br#"{"value": 1, "expiry": -1}"#,
        ] {
            let (s, e) = put_entry(&caches, "default", "x", bad_body);
            assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        }
        assert_eq!(get_entry(&caches, "default", "x").0, StatusCode::NOT_FOUND);
        assert_eq!(delete_entry(&caches, "default", "j").1["deleted"], true);
        assert_eq!(clear(&caches, "default").1["cleared"], 1);
        // Admin reads are not service traffic: no hits, no misses.
        let stats = caches.get("default").unwrap().stats();
        assert_eq!((stats.hits, stats.misses), (0, 0));
    }
}
