//! The admin API's file-transfer channels (docs/FILES.md), under `/v1/inbound/file`:
//!
//! - `GET /v1/inbound/file`: every definition with this server's `status` of each (holding
//!   the lease or standing by, files pending, done, failed, redelivered, last error)
//! - `GET|PUT|DELETE /v1/inbound/file/{name}`: one definition; create or replace it; delete
//!   it (`admin::objects`)
//! - `GET /v1/inbound/file/{name}/stats`: this server's status of it
//!
//! No credentials: the definition is stored as given, once checked.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::objects::{self, AdminObject, Refused};
use super::{Body, Ctx, error, read_body, reply};
use crate::model::files::FileChannel;
use crate::model::object::ConfigObject;

/// Routes `/v1/inbound/file/…`; `rest` is the path after it, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    let decode = crate::edge::router::percent_decode;
    match (&method, rest) {
        (&Method::GET, []) => list(cx).await,
        (&Method::GET, [name]) => {
            let name = decode(name);
            match cx.store.objects::<FileChannel>().await {
                Ok(l) => match l.into_iter().find(|d| d.name == name) {
                    Some(d) => reply(StatusCode::OK, json!(d)),
                    None => error(
                        StatusCode::NOT_FOUND,
                        format!("no file channel named {name}"),
                    ),
                },
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        (&Method::PUT, [name]) => {
            let name = decode(name);
            match read_body(req).await {
                Ok(body) => objects::put::<FileChannel>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => objects::delete::<FileChannel>(cx, &decode(name)).await,
        (&Method::GET, [name, "stats"]) => {
            let name = decode(name);
            match cx.files.status().into_iter().find(|s| s.name == name) {
                Some(s) => reply(StatusCode::OK, json!(s)),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no file channel named {name} on this server"),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// `GET /v1/inbound/file`.
async fn list(cx: &Ctx) -> Response<Body> {
    let defs: Vec<FileChannel> = match cx.store.objects().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let status = cx.files.status();
    let list: Vec<Value> = defs
        .iter()
        .map(|d| {
            let mut v = json!(d);
            v["status"] = status
                .iter()
                .find(|s| s.name == d.name)
                .map_or(Value::Null, |s| json!(s));
            v
        })
        .collect();
    reply(StatusCode::OK, json!({ "file": list }))
}

impl AdminObject for FileChannel {
    async fn build(
        _cx: &Ctx,
        input: Value,
        name: Option<&str>,
        _stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        let bad = |m: String| Refused::new(StatusCode::BAD_REQUEST, m);
        let mut input = input;
        if let (Some(n), Some(o)) = (name, input.as_object_mut()) {
            match o.get("name") {
                None => {
                    o.insert("name".into(), n.into());
                }
                Some(Value::String(given)) if given == n => {}
                Some(given) => {
                    return Err(bad(format!(
                        "the body's name {given} is not the URL's {n:?}"
                    )));
                }
            }
        }
        let def: FileChannel =
            serde_json::from_value(input).map_err(|e| bad(format!("file channel: {e}")))?;
        def.validate().map_err(|e| bad(e.0))?;
        Ok(def)
    }

    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        let defs = objects::read_back(cx, expected, FileChannel::WHAT).await;
        cx.files.apply(&defs);
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
            "channel": def,
        }))
    }
}
