//! The admin API's security definitions (docs/SECURITY.md): `GET /v1/security` and
//! `GET /v1/security/{name}` (without secret material) here; `POST /v1/security` (create),
//! `PUT|DELETE /v1/security/{name}` (replace, keeping the stored secret when the body carries
//! none; delete, refused while a channel names it) are `admin::objects`' with this kind's
//! hooks: plaintext `password` / `key` / `secret` are hashed or sealed before anything is
//! stored (`edge::gate::from_input`), never logged or echoed; a change is live at once on
//! every channel that names the definition (the routing table is rebuilt).

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::channels::rebuild_routes;
use super::objects::{self, Refused};
use super::{Body, Ctx, error, read_body, reply};
use crate::model::security::{SecurityDef, public_json};

/// Routes `/v1/security/…`; `rest` is the path after `/v1/security`, split at `/` (a name
/// is taken as it is, not percent-decoded).
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    // A name is one path segment, percent-decoded (as the other kinds' are).
    let decoded: Vec<String> = rest
        .iter()
        .map(|s| crate::edge::router::percent_decode(s))
        .collect();
    let rest: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (&method, rest.as_slice()) {
        (&Method::GET, []) => list(cx).await,
        (&Method::GET, [name]) => get(cx, name).await,
        (&Method::POST, []) => match read_body(req).await {
            Ok(body) => objects::put::<SecurityDef>(cx, None, body).await,
            Err(r) => r,
        },
        (&Method::PUT, [name]) => {
            let name = name.to_string();
            match read_body(req).await {
                Ok(body) => objects::put::<SecurityDef>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => {
            // A definition a pub/sub endpoint is would leave the endpoint nobody's (409).
            match super::pubsub::in_use_by(cx, Some(name), None).await {
                Ok(None) => objects::delete::<SecurityDef>(cx, name).await,
                Ok(Some(m)) => error(StatusCode::CONFLICT, m),
                Err(r) => r,
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// GET /v1/security: every definition, without its secret material.
async fn list(cx: &Ctx) -> Response<Body> {
    match cx.store.objects::<SecurityDef>().await {
        Ok(list) => reply(
            StatusCode::OK,
            json!({"security": list.iter().map(public_json).collect::<Vec<_>>()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// GET /v1/security/{name}
async fn get(cx: &Ctx, name: &str) -> Response<Body> {
    match cx.store.objects::<SecurityDef>().await {
        Ok(list) => match list.iter().find(|d| d.name == name) {
            Some(d) => reply(StatusCode::OK, public_json(d)),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no security definition named {name}"),
            ),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

impl super::objects::AdminObject for SecurityDef {
    const PUT_CREATES: bool = false;
    const BUILT_FROM_STORED: bool = true;
    const GONE: StatusCode = StatusCode::NOT_FOUND;
    /// The routing table is rebuilt from the store (`rebuild_routes`).
    const APPLIES_EXPECTED: bool = false;

    async fn build(
        cx: &Ctx,
        input: Value,
        name: Option<&str>,
        stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        // Argon2 hashing takes tens of milliseconds: off the runtime's threads.
        let key = cx.key.clone();
        let (n, prev) = (name.map(str::to_owned), stored.cloned());
        let built = tokio::task::spawn_blocking(move || {
            crate::edge::gate::from_input(input, n.as_deref(), prev.as_ref(), &key)
        })
        .await;
        match built {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(m)) => Err(Refused::new(StatusCode::BAD_REQUEST, m)),
            Err(e) => Err(Refused::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        }
    }

    /// The routing table, rebuilt from the store.
    async fn apply_local(cx: &Ctx, _expected: Vec<Self>) -> Result<(), Refused> {
        rebuild_routes(cx).await
    }

    fn put_answer(
        _cx: &Ctx,
        def: &Self,
        config_version: i64,
        _created: bool,
    ) -> Result<Value, Refused> {
        Ok(json!({"config_version": config_version, "security": public_json(def)}))
    }

    /// A definition server.toml's channels name (409).
    fn refuse_delete(cx: &Ctx, name: &str) -> Option<Refused> {
        let c = cx
            .settings
            .channels
            .iter()
            .find(|c| c.security.as_deref() == Some(name))?;
        Some(Refused::new(
            StatusCode::CONFLICT,
            format!(
                "security definition {name} is used by server.toml's channel {}",
                c.name.as_deref().unwrap_or(&c.url_path)
            ),
        ))
    }
}
