//! The admin API: HTTP + JSON on its own listener (127.0.0.1:17011 by default), behind a
//! bearer token. The CLI and the dashboard make every change through it, so there is one
//! path for every change. Request bodies are never logged.
//!
//! This file is the server: the token, the connection loop, the bearer check, the store
//! check before a change, the table of endpoints (each resource's paths are its file's
//! `route`) and the reply helpers every file shares. One file per resource: `cluster` (info,
//! cluster), `modules` (services, modules, deploy, undeploy, rollback), `invoke`, `channels`
//! (and the routing table's rebuild), `secrets`, `security`, `caches` (definitions and
//! entries), `jobs` (and the scheduler's status), `outgoing` (REST and SQL connections), `config` (export/import endpoints, over
//! `config_io`), `tokens` (named API tokens; who may call what is `auth`'s endpoint table,
//! checked right after the bearer token), `user_config` (the user config services read).
//! The create/replace and delete of security definitions, caches, jobs, user config… are
//! one generic path (`objects`), each kind's hooks in its own file (docs/CONFIG_OBJECTS.md);
//! `input` holds what a body may be refused for; `audit` records every change `handle` passes
//! to `route` and answers `GET /v1/audit`. This file holds no resource's logic.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// What the admin API works with (built by boot). It changes every kind of config, so it
/// holds most handles; each one is still the owning subsystem's.
pub struct Ctx {
    /// Where this subsystem's figures are recorded (`metrics/`).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub pool: Arc<crate::lifecycle::pool::Pool>,
    pub routes: Arc<crate::edge::routes::RoutingTable>,
    pub settings: crate::config::Settings,
    pub node: Arc<crate::node::Node>,
    pub cids: Arc<crate::cid::CidGen>,
    pub store: crate::store::Store,
    /// Seals and opens the store's secrets.
    pub key: crate::secrets::Key,
    pub locks: Arc<crate::deploy::Locks>,
    pub deploy: Arc<crate::deploy::Ctx>,
    pub scheduler: Arc<crate::scheduler::Ctx>,
    /// The cluster bus, when this server runs one.
    pub bus: Option<Arc<crate::cluster::bus::Bus>>,
    /// The API tokens this server has seen in the store (`auth::KnownTokens`: used only
    /// while the store is unreachable).
    pub tokens: auth::KnownTokens,
    /// This server's outgoing connections (ping, figures, apply after a change).
    pub outgoing: Arc<crate::outgoing::Outgoing>,
    /// The pub/sub broker.
    pub pubsub: crate::pubsub::Broker,
    /// The inbound channels (AMQP, MQTT): apply after a change, figures.
    pub inbound: Arc<crate::inbound::Inbound>,
    /// The file-transfer channels: apply after a change, status.
    pub files: crate::files::FileChannels,
    /// The WebSocket clients (their list, a disconnect).
    pub wsx: crate::wsx::Wsx,
    /// The user config services read: apply after a change.
    pub user_config: Arc<crate::user_config::UserConfigs>,
    /// The rolling restarts' outcome (`POST /v1/workers/restart` starts one).
    pub reloads: std::sync::Arc<crate::lifecycle::reload::Reloads>,
}

mod audit;
mod auth;
mod caches;
mod channels;
mod cluster;
mod config;
pub mod config_io;
mod inbound;
mod inbound_file;
mod inbound_mqtt;
mod input;
mod invoke;
mod jobs;
mod metrics;
mod modules;
mod objects;
pub(crate) mod outgoing;
pub(crate) mod pubsub;
mod secrets;
mod security;
mod stats;
mod tokens;
mod user_config;
mod websocket;
mod workers;

pub use audit::prune as prune_audit_log;
use input::json_body;

type Body = Full<Bytes>;

/// Largest admin request body (a deploy of several modules fits easily).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Reads the token from `path`, creating the file (mode 0600) with a random token when it
/// does not exist.
pub fn load_or_create_token(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {
            return Err(io::Error::other(format!(
                "admin token file {} is empty",
                path.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = crate::random::random_hex(32);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{token}")?;
    info!(file = %path.display(), "created an admin API token");
    Ok(token)
}

/// Serves the admin API until the process ends.
pub async fn serve(listener: TcpListener, cx: Arc<Ctx>, token: String) {
    tokio::spawn(tokens::keep_copy_fresh(cx.clone()));
    let token = Arc::new(token);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let cx = cx.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let cx = cx.clone();
                let token = token.clone();
                async move { Ok::<_, std::convert::Infallible>(handle_in_task(req, cx, token).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                // A client that sent its whole request and closed its side (or went away)
                // still has its request read to the end and carried out: an EOF does not cut
                // the body it already sent (`handle_in_task` keeps the change itself whole).
                .half_close(true)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response<Body> {
    reply(status, json!({ "error": msg.to_string() }))
}

/// [`handle`] in a task of its own: a client that hangs up mid-request drops the
/// connection's future, which must not cut a change short nor leave it out of the audit log.
/// A panic in it is logged and answered 500.
async fn handle_in_task(
    req: Request<Incoming>,
    cx: Arc<Ctx>,
    token: Arc<String>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match tokio::spawn(async move { handle(req, &cx, &token).await }).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(
                error = %e, method = %method, path = %path,
                "admin request failed: its handling panicked or was cancelled"
            );
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: the request's handling failed (see the server's log)",
            )
        }
    }
}

async fn handle(req: Request<Incoming>, cx: &Ctx, token: &str) -> Response<Body> {
    // Prometheus scrapes it without the admin token (`admin.metrics_token` is its own).
    if req.uri().path() == metrics::PATH {
        return metrics::serve(&req, cx).await;
    }
    let who = match auth::authenticate(&req, cx, token).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    if let Err(refused) = auth::authorize(&who, req.method(), req.uri().path()) {
        // A change the caller's role does not allow is recorded as refused, like any other
        // (without reading the store's objects; logged instead while the store is down).
        let resp = refused.answer();
        return audit::refusal(cx, &who, req.method(), req.uri().path(), resp).await;
    }
    let method = req.method().clone();
    // Writing cache entries or tokens changes no configuration: nothing for the sync task to
    // do.
    let config_change = !is_not_config(req.uri().path());
    // A change (or a read of the store) while the store is known to be down gets its 503
    // now, after one connection attempt (`sync::store_available`), not after the pool's 5 s
    // of connection retries.
    let change = writes_store(&method, req.uri().path());
    if (change || (method == Method::GET && reads_store(req.uri().path())))
        && let Err(e) = crate::cluster::sync::store_available(&cx.node, &cx.store).await
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            if change {
                format!(
                    "the config store is unreachable ({e}): changes are refused until it is \
                     back; this server keeps serving the config it has"
                )
            } else {
                format!(
                    "the config store is unreachable ({e}): what it holds cannot be read until \
                     it is back"
                )
            },
        );
    }
    // Every change is recorded in the audit log (`audit`): the digests before it, now.
    let audit = audit::begin(cx, &method, req.uri().path()).await;
    let mut resp = route(req, cx, &who).await;
    if let Some(pending) = audit {
        resp = audit::finish(cx, &who, pending, resp).await;
    }
    if method != Method::GET && config_change && resp.status().is_success() {
        // A change: the sync task writes the snapshot (and, later, tells the peers) now.
        cx.node.changed.notify_one();
    }
    resp
}

/// The GETs answered from the store (the others from this server's memory).
fn reads_store(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["v1", "modules" | "channels" | "secrets" | "security" | "user-config", ..]
            | ["v1", "config" | "scheduler" | "info" | "audit"]
            | ["v1", "jobs", _, "runs"]
            | ["v1", "tokens"]
            // Connection definitions (not their `stats`: this server's figures).
            | ["v1", "outgoing", _] | ["v1", "outgoing", _, _]
            | ["v1", "inbound", _] | ["v1", "inbound", _, _]
            // Pub/sub definitions, queues and dead letters.
            | ["v1", "pubsub", ..]
    )
}

/// Whether `method` `path` is a change written to the store: a config change or a token's
/// (not a call of a service, a cache's contents or a job's run).
fn writes_store(method: &Method, path: &str) -> bool {
    *method != Method::GET
        && !is_invoke(path)
        && !is_pubsub_publish(path)
        && (!is_not_config(path) || is_tokens(path) || is_pubsub_queue_op(path))
}

/// `/v1/pubsub/publish/{topic...}`: a test publish, as a service's call: the broker answers
/// `unavailable` itself for a GD message while the store is down (a non-GD one needs no
/// store).
fn is_pubsub_publish(path: &str) -> bool {
    path.trim_matches('/').starts_with("v1/pubsub/publish/")
}

/// `/v1/pubsub/subs/{sub_key}/purge|requeue`: a change of a subscription's queue, written to
/// the store but no config.
fn is_pubsub_queue_op(path: &str) -> bool {
    matches!(
        path.trim_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .as_slice(),
        ["v1", "pubsub", "subs", _, "purge" | "requeue"]
    )
}

/// `/v1/tokens…`: the API tokens, stored but not config.
fn is_tokens(path: &str) -> bool {
    matches!(
        path.trim_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .as_slice(),
        ["v1", "tokens", ..]
    )
}

/// `/v1/invoke/{service}`: a call of a service, which does not touch the store.
fn is_invoke(path: &str) -> bool {
    path.trim_matches('/').starts_with("v1/invoke/")
}

/// `/v1/caches/{name}/keys…`, `/v1/caches/{name}/clear` (the contents, not the config),
/// `/v1/jobs/{name}/execute` (a run, not a change), `/v1/outgoing/{type}/{name}/ping` (a
/// probe of the remote) and `/v1/tokens…` (stored, but no config
/// version, snapshot or export has them).
fn is_not_config(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["v1", "caches", _, "keys", ..]
            | ["v1", "caches", _, "clear"]
            | ["v1", "jobs", _, "execute"]
            | ["v1", "outgoing", _, _, "ping"]
            | ["v1", "tokens", ..]
            | ["v1", "pubsub", "publish", ..]
            | ["v1", "pubsub", "subs", _, "purge" | "requeue"]
            | ["v1", "websocket", "clients", ..]
            | ["v1", "workers", ..]
    )
}

async fn route(req: Request<Incoming>, cx: &Ctx, who: &auth::Identity) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "info"]) => cluster::info(cx).await,
        (&Method::GET, ["v1", "cluster"]) => cluster::cluster(cx).await,
        (&Method::GET, ["v1", "services"]) => modules::services(cx).await,
        (&Method::GET, ["v1", "services", "stats"]) => stats::all(cx).await,
        (&Method::GET, ["v1", "workers", "restart"]) => workers::status(cx),
        (&Method::POST, ["v1", "workers", "restart"]) => workers::restart(cx).await,
        (&Method::GET, ["v1", "websocket", "clients"]) => {
            websocket::clients(cx, req.uri().query()).await
        }
        (&Method::DELETE, ["v1", "websocket", "clients", id]) => {
            websocket::disconnect(cx, &crate::edge::router::percent_decode(id)).await
        }
        (&Method::GET, ["v1", "services", name, "stats"]) => stats::one(cx, name).await,
        // The same bytes as the HTTP listener's /openapi.json (`oxbus openapi`).
        (&Method::GET, ["v1", "openapi"]) => {
            match crate::edge::openapi::render(&cx.pool, &cx.routes, &cx.settings, &cx.node) {
                Ok(doc) => {
                    let mut r = Response::new(Full::new(Bytes::from(doc)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        // Each resource's paths: see its file's `route`.
        (_, ["v1", "modules", rest @ ..]) => modules::route(req, cx, rest, who).await,
        (_, ["v1", "channels", rest @ ..]) => channels::route(req, cx, rest).await,
        (_, ["v1", "secrets", rest @ ..]) => secrets::route(req, cx, rest, who).await,
        (_, ["v1", "security", rest @ ..]) => security::route(req, cx, rest).await,
        // Every /v1/caches path, the entries of a cache included.
        (_, ["v1", "caches", rest @ ..]) => caches::route(req, cx, rest).await,
        (_, ["v1", "jobs", rest @ ..]) => jobs::route(req, cx, rest).await,
        (_, ["v1", "outgoing", rest @ ..]) => outgoing::route(req, cx, rest).await,
        (_, ["v1", "inbound", rest @ ..]) => inbound::route(req, cx, rest).await,
        (_, ["v1", "pubsub", rest @ ..]) => pubsub::route(req, cx, rest, who).await,
        (_, ["v1", "user-config", rest @ ..]) => user_config::route(req, cx, rest).await,
        (&Method::GET, ["v1", "scheduler"]) => jobs::status(cx).await,
        (&Method::GET, ["v1", "audit"]) => audit::list(cx, req.uri().query().unwrap_or("")).await,
        (_, ["v1", "config"]) => config::route(req, cx).await,
        (_, ["v1", "tokens", rest @ ..]) => tokens::route(req, cx, rest, who).await,
        (&Method::POST, ["v1", "invoke", service]) => {
            let service = service.to_string();
            match read_body(req).await {
                Ok(body) => invoke::invoke(cx, &service, body).await,
                Err(r) => r,
            }
        }
        (_, ["v1", ..]) => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {path}: the API is under /v1/"),
        ),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_changes_are_not_config_but_still_wait_for_the_store() {
        for p in ["/v1/tokens", "/v1/tokens/ci"] {
            assert!(is_not_config(p), "{p}");
        }
        // The quick 503 while the store is down: token changes and list, as config changes.
        assert!(writes_store(&Method::POST, "/v1/tokens"));
        assert!(writes_store(&Method::DELETE, "/v1/tokens/ci"));
        assert!(reads_store("/v1/tokens"));
        assert!(!writes_store(&Method::GET, "/v1/tokens"));
        // As before: config changes do, a call, a cache's contents and a job's run do not.
        assert!(writes_store(&Method::PUT, "/v1/secrets/s"));
        assert!(writes_store(&Method::POST, "/v1/modules"));
        assert!(!writes_store(&Method::POST, "/v1/invoke/demo.echo"));
        assert!(!writes_store(&Method::PUT, "/v1/caches/c/keys/k"));
        assert!(writes_store(&Method::PUT, "/v1/outgoing/rest/crm"));
        assert!(!writes_store(&Method::POST, "/v1/outgoing/rest/crm/ping"));
        assert!(reads_store("/v1/outgoing/sql/db"));
        assert!(!reads_store("/v1/outgoing/sql/db/stats"));
        assert!(!writes_store(&Method::POST, "/v1/jobs/j/execute"));
        // Pub/sub: definitions are config; a queue's purge or requeue writes the store but no
        // config; a test publish is a call.
        assert!(writes_store(&Method::PUT, "/v1/pubsub/topics/orders/new"));
        assert!(!is_not_config("/v1/pubsub/subs/sk.1"));
        assert!(writes_store(&Method::POST, "/v1/pubsub/subs/sk.1/purge"));
        assert!(is_not_config("/v1/pubsub/subs/sk.1/purge"));
        assert!(is_not_config("/v1/pubsub/subs/sk.1/requeue"));
        assert!(!writes_store(
            &Method::POST,
            "/v1/pubsub/publish/orders/new"
        ));
        assert!(is_not_config("/v1/pubsub/publish/orders/new"));
        assert!(reads_store("/v1/pubsub/subs/sk.1/queue"));
    }
}
