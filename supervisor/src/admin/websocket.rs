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

/// Clients listed per server unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

/// A query parameter's decoded value (`+` is a space); an empty one counts as absent.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name && !v.is_empty())
            .then(|| crate::edge::router::percent_decode(&v.replace('+', " ")))
    })
}

/// `GET /v1/websocket/clients[?channel=NAME][&limit=N]`: at most `limit` clients per server
/// (1000 by default, at most 10,000), with each server's `total`.
pub(super) async fn clients(cx: &Ctx, query: Option<&str>) -> Response<Body> {
    let channel = param(query, "channel");
    let limit = match param(query, "limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit must be a number from 1 to {MAX_LIMIT}"),
            );
        }
    };
    let mut servers = Map::new();
    let (total, mine) = cx.wsx.describe(channel.as_deref(), limit);
    let mut count = total;
    servers.insert(
        cx.node.name.clone(),
        json!({"answered": true, "total": total, "clients": mine}),
    );
    if let Some(bus) = &cx.bus {
        let meta = json!({"op": "wsx.clients", "channel": channel, "limit": limit});
        for r in bus.call_all(&meta, PEER_TIMEOUT).await {
            let entry = match (r.status, r.body.get("clients"), r.body.get("total")) {
                (200, Some(list), Some(total)) if list.is_array() => {
                    count += total.as_u64().unwrap_or(0) as usize;
                    json!({"answered": true, "total": total, "clients": list})
                }
                _ => json!({"answered": false, "error": r.body.get("error").cloned()
                    .unwrap_or_else(|| json!(format!("answered {}", r.status)))}),
            };
            servers.insert(r.server, entry);
        }
    }
    super::stats::silent_servers(cx, &mut servers, "clients").await;
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
