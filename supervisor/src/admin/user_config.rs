//! The admin API's user config (docs/USER_CONFIG.md), under `/v1/user-config`:
//!
//! - `GET /v1/user-config`: every user config's name, description and size (the bytes of
//!   its value as JSON), by name; not the values, which may be large: a list stays light
//! - `GET /v1/user-config/{name}`: one, with its value
//! - `PUT /v1/user-config/{name}`: create or replace it (`{"value": {...}, "description"}`)
//! - `DELETE /v1/user-config/{name}`
//!
//! Changes are `admin::objects`' with this kind's hooks; a change is live on this server
//! before the answer (`crate::user_config`) and on the others after their sync. Nothing in
//! it is secret: read from the store as stored.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::objects::{self, AdminObject, Refused};
use super::{Body, Ctx, error, read_body, reply};
use crate::model::object::ConfigObject;
use crate::model::user_config::{UserConfig, parse_user_config};

/// Routes `/v1/user-config/…`; `rest` is the path after it, split at `/` (a name is one
/// segment, percent-decoded).
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    let decode = crate::edge::router::percent_decode;
    match (&method, rest) {
        (&Method::GET, []) => list(cx).await,
        (&Method::GET, [name]) => get(cx, &decode(name)).await,
        (&Method::PUT, [name]) => {
            let name = decode(name);
            match read_body(req).await {
                Ok(body) => objects::put::<UserConfig>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => objects::delete::<UserConfig>(cx, &decode(name)).await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// A user config without its value: what a list and a change's answer show.
fn summary(d: &UserConfig) -> Value {
    json!({"name": d.name, "description": d.description, "size": d.size()})
}

/// `GET /v1/user-config`.
async fn list(cx: &Ctx) -> Response<Body> {
    match cx.store.objects::<UserConfig>().await {
        Ok(l) => reply(
            StatusCode::OK,
            json!({"user_config": l.iter().map(summary).collect::<Vec<_>>()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /v1/user-config/{name}`.
async fn get(cx: &Ctx, name: &str) -> Response<Body> {
    match cx.store.objects::<UserConfig>().await {
        Ok(l) => match l.into_iter().find(|d| d.name == name) {
            Some(d) => {
                let mut v = summary(&d);
                v["value"] = d.value;
                reply(StatusCode::OK, v)
            }
            None => error(StatusCode::NOT_FOUND, UserConfig::not_found(name)),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

impl AdminObject for UserConfig {
    async fn build(
        _cx: &Ctx,
        input: Value,
        name: Option<&str>,
        _stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        parse_user_config(&input, name).map_err(|m| Refused::new(StatusCode::BAD_REQUEST, m))
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        let defs = objects::read_back(cx, expected, UserConfig::WHAT).await;
        cx.user_config.apply(&defs);
        Ok(())
    }

    fn put_answer(
        _cx: &Ctx,
        def: &Self,
        config_version: i64,
        created: bool,
    ) -> Result<Value, Refused> {
        Ok(json!({
            "config_version": config_version,
            "created": created,
            "user_config": summary(def),
        }))
    }
}
