//! The admin API's channels: `GET|POST /v1/channels`, `GET|PUT|DELETE /v1/channels/{name}`
//! (a channel named after its URL path is addressed percent-encoded, `%2Fecho`). server.toml's
//! channels are listed and read here but never changed. Every change is checked against the
//! whole table first (routes unambiguous, checks compiling against the stored security
//! definitions) and is live at once: the routing table is rebuilt from the store
//! ([`rebuild_routes`], also used by security definitions and config import).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::info;

use super::objects::Refused;
use super::{Body, Ctx, error, read_body, reply};
use crate::model::security::SecurityDef;

/// Routes `/v1/channels/…`; `rest` is the path after `/v1/channels`, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, []) => list_channels(cx).await,
        (&Method::POST, []) => match read_body(req).await {
            Ok(body) => create_channel(cx, body).await,
            Err(r) => r,
        },
        (&Method::GET, [name]) => get_channel(cx, &crate::edge::router::percent_decode(name)).await,
        (&Method::PUT, [name]) => {
            let name = crate::edge::router::percent_decode(name);
            match read_body(req).await {
                Ok(body) => update_channel(cx, &name, body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => {
            delete_channel(cx, &crate::edge::router::percent_decode(name)).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// Rebuilds the routing table from server.toml's channels and the store's, and swaps it in.
pub(super) async fn reload_router(cx: &Ctx) -> Result<(), Response<Body>> {
    rebuild_routes(cx).await.map_err(Refused::answer)
}

/// [`reload_router`], refused with the status and message of its error answer.
pub(super) async fn rebuild_routes(cx: &Ctx) -> Result<(), Refused> {
    let stored = cx
        .store
        .channels()
        .await
        .map_err(|e| Refused::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let defs: Vec<SecurityDef> = cx
        .store
        .objects()
        .await
        .map_err(|e| Refused::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    cx.routes
        .rebuild(&stored, &defs)
        .map_err(|e| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// Checks that `stored` (the store's channels as a change would leave them) route
/// unambiguously beside server.toml's and that their checks compile against the stored
/// security definitions (400 naming the problem).
async fn check_table(
    cx: &Ctx,
    stored: &[crate::model::channel::Channel],
) -> Result<(), Response<Body>> {
    let defs: Vec<SecurityDef> = cx
        .store
        .objects()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    cx.routes
        .check(stored, &defs)
        .map(drop)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// A channel's name as the API addresses it (an unnamed one is named by its path).
fn name_of(c: &crate::model::channel::Channel) -> &str {
    c.name.as_deref().unwrap_or(&c.url_path)
}

/// 409 when `channel` would answer requests one of `others` (server.toml's channels, then
/// the stored ones, as the routing table holds them) answers, naming that channel and both
/// paths in the API's words.
fn path_conflict(
    cx: &Ctx,
    stored: &[crate::model::channel::Channel],
    channel: &crate::model::channel::Channel,
) -> Result<(), Refused> {
    let mut others = cx.settings.channels.clone();
    let from_file = others.len();
    others.extend(stored.iter().cloned());
    let Some(i) = crate::model::channel::conflicting(&others, channel) else {
        return Ok(());
    };
    let other = &others[i];
    // As the routing table has them (a JSON-RPC channel is POST only, a WebSocket one GET).
    let methods = |c: &crate::model::channel::Channel| {
        use crate::model::channel::{ChannelType, routed_channel, websocket_channel};
        let routed = match c.channel_type {
            ChannelType::JsonRpc => routed_channel(c).ok(),
            ChannelType::Websocket => websocket_channel(c).ok(),
            ChannelType::Rest | ChannelType::Pubsub => None,
        };
        let list = routed.map_or_else(|| c.methods.clone(), |r| r.methods);
        if list.is_empty() {
            "any method".to_owned()
        } else {
            list.join(", ")
        }
    };
    let what = if other.channel_type == crate::model::channel::ChannelType::Pubsub
        || channel.channel_type == crate::model::channel::ChannelType::Pubsub
    {
        "overlaps the pubsub channel's prefix of".to_owned()
    } else {
        format!("answers the same requests ({}) as", methods(other))
    };
    Err(Refused::new(
        StatusCode::CONFLICT,
        format!(
            "url_path {} ({}) {what} channel {} (url_path {}{}): change the path or the methods, \
             or change that channel",
            channel.url_path,
            methods(channel),
            name_of(other),
            other.url_path,
            if i < from_file {
                ", in server.toml"
            } else {
                ""
            },
        ),
    ))
}

/// A warning when the services a channel runs are not deployed (a channel may come before
/// its service: deploy order must not matter), as a job's answer has one.
fn service_warning(cx: &Ctx, c: &crate::model::channel::Channel) -> Option<String> {
    let mut names: Vec<&str> = c.services.iter().map(String::as_str).collect();
    if !c.service.is_empty() {
        names.insert(0, &c.service);
    }
    let missing: Vec<&str> = names
        .into_iter()
        .filter(|n| super::jobs::service_warning(cx, n).is_some())
        .collect();
    match missing.as_slice() {
        [] => None,
        [one] => Some(format!(
            "no service named {one} is deployed: the channel answers 404 until it is"
        )),
        many => Some(format!(
            "no services named {} are deployed: calls of them fail until they are",
            many.join(", ")
        )),
    }
}

/// Whether server.toml has a channel of that name (an unnamed one is named by its path).
fn file_channel_named(cx: &Ctx, name: &str) -> bool {
    cx.settings
        .channels
        .iter()
        .any(|c| c.name.as_deref().unwrap_or(&c.url_path) == name)
}

/// A channel as the API answers it (the list, one channel, a create or update): everything
/// it has, as an export writes it (security, allow list, rate limit, parameter priority…),
/// with `type`, `methods`, `service` and `data_format` always present and `source` (where
/// it is defined: `server.toml` or `store`).
fn channel_json(c: &crate::model::channel::Channel, source: &str) -> Value {
    let mut j = serde_json::to_value(c).unwrap_or_else(|_| json!({}));
    for (key, value) in [
        ("name", json!(c.name)),
        ("type", json!(c.channel_type.as_str())),
        ("methods", json!(c.methods)),
        ("service", json!(c.service)),
        ("data_format", json!(c.data_format.as_str())),
        ("source", json!(source)),
    ] {
        j[key] = value;
    }
    match c.channel_type {
        crate::model::channel::ChannelType::JsonRpc => j["services"] = json!(c.services),
        // Every setting, the defaults filled in.
        crate::model::channel::ChannelType::Websocket => {
            j["websocket"] = json!(c.websocket.clone().unwrap_or_default());
            if !c.services.is_empty() {
                j["services"] = json!(c.services);
            }
        }
        _ => {}
    }
    j
}

/// GET /v1/channels
async fn list_channels(cx: &Ctx) -> Response<Body> {
    let stored = match cx.store.channels().await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut list: Vec<Value> = cx
        .settings
        .channels
        .iter()
        .map(|c| channel_json(c, "server.toml"))
        .collect();
    list.extend(stored.iter().map(|c| channel_json(c, "store")));
    reply(StatusCode::OK, json!({ "channels": list }))
}

/// POST /v1/channels: validated against every existing channel before it is written; live
/// at once.
async fn create_channel(cx: &Ctx, body: Bytes) -> Response<Body> {
    let channel: crate::model::channel::Channel = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"url_path\", \"service\", \"methods\"?, \"name\"?, \"data_format\"?}} or {{\"type\": \"jsonrpc\", \"url_path\", \"services\"?, \"name\"?}} or {{\"type\": \"pubsub\", \"url_path\", \"security\"?, \"name\"?}} or {{\"type\": \"websocket\", \"url_path\", \"service\", \"websocket\"?: {{settings}}, \"name\"?}}: {e}"
                ),
            );
        }
    };
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let name = channel.name.as_deref().unwrap_or(&channel.url_path);
    if file_channel_named(cx, name) {
        return error(
            StatusCode::CONFLICT,
            format!("a channel named {name} exists already, in server.toml: choose another name"),
        );
    }
    // The stored channels (path_conflict adds server.toml's itself): the new one must route
    // unambiguously beside them all.
    let mut all = Vec::new();
    match cx.store.channels().await {
        Ok(c) => all.extend(c),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
    if all.iter().any(|c| name_of(c) == name) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "a channel named {name} exists already: choose another name, or change it with \
                 PUT /v1/channels/{name}"
            ),
        );
    }
    if let Err(r) = path_conflict(cx, &all, &channel) {
        return r.answer();
    }
    all.push(channel.clone());
    if let Err(r) = check_table(cx, &all).await {
        return r;
    }
    let change = match cx.store.create_channel(&channel).await {
        Ok(c) => c,
        Err(crate::store::StoreError::Invalid(m)) => return error(StatusCode::BAD_REQUEST, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if let Err(r) = reload_router(cx).await {
        return r;
    }
    info!(channel = ?change.value.name, url_path = %change.value.url_path, "channel created");
    let mut answer = json!({"config_version": change.config_version, "channel": channel_json(&change.value, "store")});
    if let Some(w) = service_warning(cx, &change.value) {
        answer["warning"] = json!(w);
    }
    let mut resp = reply(StatusCode::CREATED, answer);
    // The audit row is this channel's only (the store names it: its name or URL path).
    super::audit::AuditNote {
        name: change.value.name.clone(),
        ..Default::default()
    }
    .attach(&mut resp);
    resp
}

/// GET /v1/channels/{name}
async fn get_channel(cx: &Ctx, name: &str) -> Response<Body> {
    if let Some(c) = cx
        .settings
        .channels
        .iter()
        .find(|c| c.name.as_deref().unwrap_or(&c.url_path) == name)
    {
        return reply(StatusCode::OK, channel_json(c, "server.toml"));
    }
    match cx.store.channels().await {
        Ok(list) => match list.iter().find(|c| c.name.as_deref() == Some(name)) {
            Some(c) => reply(StatusCode::OK, channel_json(c, "store")),
            None => error(StatusCode::NOT_FOUND, format!("no channel named {name}")),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// PUT /v1/channels/{name}: replaces a stored channel's path, methods, service or format;
/// validated against every other channel first, live at once.
async fn update_channel(cx: &Ctx, name: &str, body: Bytes) -> Response<Body> {
    let mut channel: crate::model::channel::Channel = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"url_path\", \"service\", \"methods\"?, \"data_format\"?}} or {{\"type\": \"jsonrpc\", \"url_path\", \"services\"?}} or {{\"type\": \"pubsub\", \"url_path\"}} or {{\"type\": \"websocket\", \"url_path\", \"service\", \"websocket\"?}}: {e}"
                ),
            );
        }
    };
    match channel.name.as_deref() {
        Some(n) if n != name => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body names channel {n}, the URL {name}: a channel cannot be renamed"),
            );
        }
        _ => channel.name = Some(name.to_owned()),
    }
    if let Err(e) = crate::store::validate_channel_name(name) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let _one_at_a_time = cx.locks.deploy.lock().await;
    if file_channel_named(cx, name) {
        return error(
            StatusCode::CONFLICT,
            format!("channel {name} comes from server.toml; change it there"),
        );
    }
    let stored = match cx.store.channels().await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if !stored.iter().any(|c| c.name.as_deref() == Some(name)) {
        return error(StatusCode::NOT_FOUND, format!("no channel named {name}"));
    }
    let mut all: Vec<crate::model::channel::Channel> = stored
        .into_iter()
        .filter(|c| c.name.as_deref() != Some(name))
        .collect();
    if let Err(r) = path_conflict(cx, &all, &channel) {
        return r.answer();
    }
    all.push(channel.clone());
    if let Err(r) = check_table(cx, &all).await {
        return r;
    }
    let plan = crate::store::Plan {
        put_channels: vec![channel.clone()],
        ..Default::default()
    };
    let change = match cx.store.apply(&plan, "admin-api").await {
        Ok(c) => c,
        Err(crate::store::StoreError::Invalid(m)) => return error(StatusCode::BAD_REQUEST, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if let Err(r) = reload_router(cx).await {
        return r;
    }
    info!(channel = name, url_path = %channel.url_path, "channel updated");
    let mut answer = json!({"config_version": change.config_version, "channel": channel_json(&channel, "store")});
    if let Some(w) = service_warning(cx, &channel) {
        answer["warning"] = json!(w);
    }
    reply(StatusCode::OK, answer)
}

/// DELETE /v1/channels/{name}
async fn delete_channel(cx: &Ctx, name: &str) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    if file_channel_named(cx, name) {
        return error(
            StatusCode::CONFLICT,
            format!("channel {name} comes from server.toml; change it there"),
        );
    }
    let change = match cx.store.delete_channel(name).await {
        Ok(c) => c,
        Err(crate::store::StoreError::NotFound(m)) => return error(StatusCode::NOT_FOUND, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if let Err(r) = reload_router(cx).await {
        return r;
    }
    info!(channel = name, "channel deleted");
    reply(
        StatusCode::OK,
        json!({"config_version": change.config_version}),
    )
}
