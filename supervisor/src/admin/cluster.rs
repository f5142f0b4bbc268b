//! The admin API's view of this server and its cluster: `GET /v1/info` (version, listener,
//! store, config version, workers) and `GET /v1/cluster` (the servers sharing the store, the
//! config version each has applied, the store's health, the bus's links). Read-only: it
//! changes nothing.

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, Ctx, error, reply};

/// `GET /v1/info`
pub(super) async fn info(cx: &Ctx) -> Response<Body> {
    let config_version = match cx.store.version().await {
        Ok(v) => json!(v),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let workers: Vec<Value> = cx
        .pool
        .all()
        .iter()
        .map(|w| {
            json!({
                "id": w.id,
                "pid": w.pid.load(std::sync::atomic::Ordering::Relaxed),
                "generation": w.generation,
                "state": format!("{:?}", w.state()).to_lowercase(),
                "inflight": w.inflight(),
                "served": w.served(),
            })
        })
        .collect();
    let servers = match cx.store.servers().await {
        Ok(list) => list,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    reply(
        StatusCode::OK,
        json!({
            "oxbus": env!("CARGO_PKG_VERSION"),
            "server": cx.node.name,
            "servers": servers,
            "ipc_protocol": oxbus_ipc::PROTOCOL_VERSION,
            "listen": cx.settings.server.listen.to_string(),
            "store": store_kind(&cx.store),
            "config_version": config_version,
            "uptime_s": cx.node.started.elapsed().as_secs(),
            "workers": workers,
        }),
    )
}

fn store_kind(s: &crate::store::Store) -> &'static str {
    match s {
        crate::store::Store::Sqlite(_) => "sqlite",
        crate::store::Store::Postgres(_) => "postgres",
    }
}

/// GET /v1/cluster: the servers sharing this store, the config version each has applied, and
/// the store's health as this server sees it.
pub(super) async fn cluster(cx: &Ctx) -> Response<Body> {
    use std::sync::atomic::Ordering;
    let applied = cx.node.applied_version.load(Ordering::Relaxed);
    // A store known to be down is not waited for (one connection attempt decides).
    let (store, servers) = if let Err(e) =
        crate::cluster::sync::store_available(&cx.node, &cx.store).await
    {
        (
            json!({"kind": store_kind(&cx.store), "reachable": false, "error": e.to_string()}),
            Vec::new(),
        )
    } else {
        match (cx.store.version().await, cx.store.servers().await) {
            (Ok(v), Ok(list)) => (
                json!({"kind": store_kind(&cx.store), "reachable": true, "config_version": v}),
                list,
            ),
            (Err(e), _) | (_, Err(e)) => (
                json!({"kind": store_kind(&cx.store), "reachable": false, "error": e.to_string()}),
                Vec::new(),
            ),
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut list: Vec<Value> = servers
        .iter()
        .map(|s| {
            let version = if s.name == cx.node.name {
                applied
            } else {
                s.config_version
            };
            json!({
                "name": s.name, "http_address": s.http_address, "oxbus": s.oxbus_version,
                "pid": s.pid, "started_at_ms": s.started_at,
                "seen_ms_ago": now - s.last_seen, "config_version": version,
                "this_server": s.name == cx.node.name,
            })
        })
        .collect();
    if !list.iter().any(|s| s["this_server"] == true) {
        list.push(json!({
            "name": cx.node.name, "config_version": applied, "this_server": true,
            "registered": false,
        }));
    }
    reply(
        StatusCode::OK,
        json!({
            "store": store,
            "servers": list,
            "bus": match &cx.bus {
                Some(bus) => json!({"running": true, "links": bus.links()}),
                None => json!({
                    "running": false,
                    "why": "no cluster.secret_file, or a SQLite store: servers follow the store by checking its version",
                }),
            },
        }),
    )
}
