//! The admin API's view of WebSocket clients: `GET /v1/websocket/clients[?channel=NAME]`
//! lists the connected clients of this server and, over the cluster bus (op
//! `wsx.clients`), of every other server, each under its name (a server that does not
//! answer is listed with why); `DELETE /v1/websocket/clients/{client_id}` closes one client
//! (close 4005, as Zato's disconnect), on whichever server holds it. Neither touches the
//! config.

use hyper::{Response, StatusCode};
use serde_json::{Map, json};
use std::time::Duration;

use super::{Body, Ctx, error, reply};

/// How long a peer may take to answer (it reads its memory only).
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /v1/websocket/clients[?channel=NAME]`
pub(super) async fn clients(cx: &Ctx, query: Option<&str>) -> Response<Body> {
    let channel = query.and_then(|q| {
        q.split('&').find_map(|kv| {
            kv.strip_prefix("channel=")
                .map(crate::edge::router::percent_decode)
        })
    });
    let mut servers = Map::new();
    let mine = cx.wsx.describe(channel.as_deref());
    let mut count = mine.len();
    servers.insert(
        cx.node.name.clone(),
        json!({"answered": true, "clients": mine}),
    );
    if let Some(bus) = &cx.bus {
        let meta = json!({"op": "wsx.clients", "channel": channel});
        for r in bus.call_all(&meta, PEER_TIMEOUT).await {
            let entry = match r.body.get("clients").and_then(|c| c.as_array()) {
                Some(list) if r.status == 200 => {
                    count += list.len();
                    json!({"answered": true, "clients": list})
                }
                _ => json!({"answered": false, "error": r.body.get("error").cloned()
                    .unwrap_or_else(|| json!(format!("answered {}", r.status)))}),
            };
            servers.insert(r.server, entry);
        }
    }
    reply(
        StatusCode::OK,
        json!({"count": count, "channel": channel, "servers": servers}),
    )
}

/// `DELETE /v1/websocket/clients/{client_id}`
pub(super) async fn disconnect(cx: &Ctx, id: &str) -> Response<Body> {
    if crate::wsx::Wsx::server_of(id).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a WebSocket client id (ws.<server>.<16 hex digits>)"),
        );
    }
    match cx.wsx.disconnect(id).await {
        Ok(true) => {
            tracing::info!(client = id, "websocket client disconnected by an operator");
            reply(StatusCode::OK, json!({"disconnected": id}))
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no WebSocket client {id} is connected"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
