//! The admin API's per-service statistics: `GET /v1/services/stats` (every service) and
//! `GET /v1/services/{name}/stats` — calls, errors, mean, p50 and p99 over the last 1, 5 and
//! 15 minutes and the last error (`metrics::stats`), for this server and, over the cluster
//! bus (op `services.stats`), for every other server of the cluster, each under its name. A
//! server that does not answer is listed with why. Read-only: it touches no config.

use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Body, Ctx, error, reply};

/// How long a peer may take to answer (it reads its memory only).
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /v1/services/stats`
pub(super) async fn all(cx: &Ctx) -> Response<Body> {
    reply(StatusCode::OK, gather(cx, None).await)
}

/// `GET /v1/services/{name}/stats`: a 404 only when every server answered and none runs the
/// service or has figures for it (this server's workers may all be restarting while its
/// peers run it); a 503 when none that answered has it but some did not answer.
pub(super) async fn one(cx: &Ctx, service: &str) -> Response<Body> {
    let mut doc = gather(cx, Some(service)).await;
    let reported = doc["servers"]
        .as_object()
        .into_iter()
        .flat_map(|servers| servers.values())
        .any(|s| s["answered"] == true && s["services"].get(service).is_some());
    if !reported {
        let silent: Vec<&str> = doc["servers"]
            .as_object()
            .into_iter()
            .flat_map(|servers| servers.iter())
            .filter(|(_, s)| s["answered"] != true)
            .map(|(name, _)| name.as_str())
            .collect();
        if !silent.is_empty() {
            // One of them may run it: not knowing is not "no such service".
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no server that answered runs or has figures for service {service}, and \
                     {} did not answer",
                    silent.join(", ")
                ),
            );
        }
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no server runs or has figures for service {service} (oxbus services lists them)"
            ),
        );
    }
    doc["service"] = json!(service);
    reply(StatusCode::OK, doc)
}

/// Lists the servers of the store's list that no link answered for (not left out) as not
/// answering, saying why; `what` names what their own admin API has. A store known to be
/// down is not waited for (the linked peers answered already).
pub(super) async fn silent_servers(cx: &Ctx, servers: &mut Map<String, Value>, what: &str) {
    if cx.node.store_ok.load(Ordering::SeqCst)
        && let Ok(list) = cx.store.servers().await
    {
        for s in list {
            servers.entry(s.name).or_insert_with(|| {
                json!({
                    "answered": false,
                    "error": if cx.bus.is_none() || s.bus_address.is_none() {
                        format!("no cluster bus to this server: its {what} are in its own admin API")
                    } else {
                        "no bus link to this server right now".to_owned()
                    },
                })
            });
        }
    }
}

/// This server's figures and every peer's, by server name.
async fn gather(cx: &Ctx, only: Option<&str>) -> Value {
    let me = cx.node.name.clone();
    let local = cx
        .metrics
        .services
        .report(cx.metrics.enabled(), &cx.pool.service_names(), only);
    let mut servers = Map::new();
    let mut mine = serde_json::to_value(local).unwrap_or_else(|e| json!({"error": e.to_string()}));
    mine["answered"] = json!(true);
    servers.insert(me.clone(), mine);
    if let Some(bus) = &cx.bus {
        let op = oxbus_ipc::bus::Op::ServicesStats(oxbus_ipc::bus::ServicesStats {
            service: only.map(str::to_owned),
        });
        let meta = serde_json::to_value(&op).unwrap_or_default();
        for r in bus.call_all(&meta, PEER_TIMEOUT).await {
            let entry = if r.status == 200 && r.body.get("services").is_some() {
                let mut b = r.body;
                b["answered"] = json!(true);
                b
            } else {
                let why = r
                    .body
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("answered with status {}", r.status));
                json!({"answered": false, "error": why})
            };
            servers.insert(r.server, entry);
        }
    }
    silent_servers(cx, &mut servers, "figures").await;
    json!({
        "server": me,
        "windows": ["1m", "5m", "15m"],
        "servers": servers,
    })
}
