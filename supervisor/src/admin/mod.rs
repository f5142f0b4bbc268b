//! The admin API: HTTP + JSON on its own listener (127.0.0.1:17011 by default), behind a
//! bearer token. The CLI and the dashboard make every change through it, so there is one
//! path for every change.
//!
//! Endpoints: server info, the service list, modules (list, source, deploy, undeploy,
//! rollback), REST and JSON-RPC channels (list, get, create, update, delete; the ones in
//! server.toml are read-only here), security definitions (their secrets go in, never out),
//! secrets (list names, set, delete: a value goes in, never out), caches (`caches`: list
//! with figures, get, create or replace a definition, delete), scheduler jobs (`jobs`: list,
//! get, create or replace, delete, enable, disable), config export and import, invoke, and
//! the OpenAPI document. Request bodies are never logged. The create/replace and delete of
//! security definitions, caches and jobs are one generic path (`objects`), each kind's hooks
//! in its own file (`security`, `caches`, `jobs`; docs/CONFIG_OBJECTS.md).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oxbus_ipc::InvokeMeta;
use serde_json::{Value, json};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// What the admin API works with (built by boot). It changes every kind of config, so it
/// holds most handles; each one is still the owning subsystem's.
pub struct Ctx {
    pub pool: Arc<crate::lifecycle::pool::Pool>,
    pub routes: Arc<crate::edge::routes::RoutingTable>,
    pub settings: crate::config::Settings,
    pub node: Arc<crate::node::Node>,
    pub cids: Arc<crate::edge::cid::CidGen>,
    pub store: crate::store::Store,
    /// Seals and opens the store's secrets.
    pub key: crate::secrets::Key,
    pub locks: Arc<crate::deploy::Locks>,
    pub deploy: Arc<crate::deploy::Ctx>,
    pub scheduler: Arc<crate::scheduler::Ctx>,
    /// The cluster bus, when this server runs one.
    pub bus: Option<Arc<crate::cluster::bus::Bus>>,
}

pub mod cache_entries;
mod caches;
pub mod config_io;
mod jobs;
mod objects;
mod security;

use crate::model::security::SecurityDef;

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

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the admin API until the process ends.
pub async fn serve(listener: TcpListener, cx: Arc<Ctx>, token: String) {
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
                async move { Ok::<_, std::convert::Infallible>(handle(req, &cx, &token).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
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

async fn handle(req: Request<Incoming>, cx: &Ctx, token: &str) -> Response<Body> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
    if !authorized {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token from the admin token file>)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let method = req.method().clone();
    // Writing cache entries changes no configuration: nothing for the sync task to do.
    let config_change = !is_not_config(req.uri().path());
    // A change (or a read of the store) while the store is known to be down gets its 503
    // now, after one connection attempt (`sync::store_available`), not after the pool's 5 s
    // of connection retries.
    let change = method != Method::GET && config_change && !is_invoke(req.uri().path());
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
    let resp = route(req, cx).await;
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
        ["v1", "modules" | "channels" | "secrets" | "security", ..]
            | ["v1", "config" | "scheduler" | "info"]
            | ["v1", "jobs", _, "runs"]
    )
}

/// `/v1/invoke/{service}`: a call of a service, which does not touch the store.
fn is_invoke(path: &str) -> bool {
    path.trim_matches('/').starts_with("v1/invoke/")
}

/// `/v1/caches/{name}/keys…`, `/v1/caches/{name}/clear` (the contents, not the config) and
/// `/v1/jobs/{name}/execute` (a run, not a change).
fn is_not_config(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["v1", "caches", _, "keys", ..]
            | ["v1", "caches", _, "clear"]
            | ["v1", "jobs", _, "execute"]
    )
}

async fn route(req: Request<Incoming>, cx: &Ctx) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "info"]) => info(cx).await,
        (&Method::GET, ["v1", "cluster"]) => cluster(cx).await,
        (&Method::GET, ["v1", "services"]) => services(cx).await,
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
        (&Method::GET, ["v1", "modules"]) => modules(cx).await,
        (&Method::GET, ["v1", "modules", name]) => module_source(cx, name).await,
        (&Method::POST, ["v1", "modules"]) => match read_body(req).await {
            Ok(body) => deploy(cx, body).await,
            Err(r) => r,
        },
        (&Method::DELETE, ["v1", "modules", name]) => undeploy(cx, name).await,
        (&Method::GET, ["v1", "channels"]) => list_channels(cx).await,
        (&Method::POST, ["v1", "channels"]) => match read_body(req).await {
            Ok(body) => create_channel(cx, body).await,
            Err(r) => r,
        },
        // A channel named after its URL path is addressed percent-encoded (%2Fecho).
        (&Method::GET, ["v1", "channels", name]) => {
            get_channel(cx, &crate::edge::router::percent_decode(name)).await
        }
        (&Method::PUT, ["v1", "channels", name]) => {
            let name = crate::edge::router::percent_decode(name);
            match read_body(req).await {
                Ok(body) => update_channel(cx, &name, body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["v1", "channels", name]) => {
            delete_channel(cx, &crate::edge::router::percent_decode(name)).await
        }
        (&Method::POST, ["v1", "modules", name, "rollback"]) => rollback(cx, name).await,
        (&Method::GET, ["v1", "secrets"]) => list_secrets(cx).await,
        (&Method::PUT, ["v1", "secrets", name]) => {
            let name = crate::edge::router::percent_decode(name);
            match read_body(req).await {
                Ok(body) => put_secret(cx, &name, body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["v1", "secrets", name]) => {
            delete_secret(cx, &crate::edge::router::percent_decode(name)).await
        }
        (&Method::GET, ["v1", "security"]) => security::list(cx).await,
        (&Method::GET, ["v1", "security", name]) => security::get(cx, name).await,
        (&Method::POST, ["v1", "security"]) => match read_body(req).await {
            Ok(body) => objects::put::<SecurityDef>(cx, None, body).await,
            Err(r) => r,
        },
        (&Method::PUT, ["v1", "security", name]) => {
            let name = name.to_string();
            match read_body(req).await {
                Ok(body) => objects::put::<SecurityDef>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["v1", "security", name]) => {
            objects::delete::<SecurityDef>(cx, name).await
        }
        // Every /v1/caches path, the entries of a cache included: see `caches::route`.
        (_, ["v1", "caches", rest @ ..]) => caches::route(req, cx, rest).await,
        // Every /v1/jobs path: see `jobs::route`.
        (_, ["v1", "jobs", rest @ ..]) => jobs::route(req, cx, rest).await,
        (&Method::GET, ["v1", "scheduler"]) => jobs::status(cx).await,
        (&Method::GET, ["v1", "config"]) => export_config(cx).await,
        (&Method::POST, ["v1", "config"]) => {
            let query = req.uri().query().unwrap_or("").to_owned();
            match read_body(req).await {
                Ok(body) => import_config(cx, &query, body).await,
                Err(r) => r,
            }
        }
        (&Method::POST, ["v1", "invoke", service]) => {
            let service = service.to_string();
            match read_body(req).await {
                Ok(body) => invoke(cx, &service, body).await,
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

/// A request body that must be JSON; else the 400's message (serde_json's quotes no input
/// beyond a position).
fn json_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
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

async fn info(cx: &Ctx) -> Response<Body> {
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

/// The services the workers run (the first ready worker's table; all workers load the same),
/// each with its module's deployed version, hash and time when it came from the store.
async fn services(cx: &Ctx) -> Response<Body> {
    let table = {
        let workers = cx.pool.all();
        let Some(w) = workers
            .iter()
            .find(|w| w.state() == crate::lifecycle::pool::WorkerState::Ready)
        else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "no worker is ready");
        };
        w.services.lock().expect("services lock").clone()
    };
    let modules = match cx.store.active_modules().await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let list: Vec<Value> = table
        .iter()
        .map(|s| {
            let mut doc =
                json!({"name": s.name, "module": s.module, "class": s.class, "async": s.is_async});
            match modules.iter().find(|m| m.name == s.module) {
                Some(m) => {
                    doc["origin"] = json!("deployed");
                    doc["version"] = json!(m.version);
                    doc["source_hash"] = json!(m.source_hash);
                    doc["deployed_at_ms"] = json!(m.deployed_at);
                    doc["deployed_by"] = json!(m.deployed_by);
                }
                None => doc["origin"] = json!("services_dir"),
            }
            doc
        })
        .collect();
    reply(StatusCode::OK, json!({ "services": list }))
}

async fn modules(cx: &Ctx) -> Response<Body> {
    match cx.store.active_modules().await {
        Ok(mods) => reply(
            StatusCode::OK,
            json!({"modules": mods.iter().map(|m| json!({
                "name": m.name, "version": m.version, "source_hash": m.source_hash,
                "deployed_by": m.deployed_by, "deployed_at_ms": m.deployed_at,
            })).collect::<Vec<_>>()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn module_source(cx: &Ctx, name: &str) -> Response<Body> {
    match cx.store.active_modules().await {
        Ok(mods) => match mods.into_iter().find(|m| m.name == name) {
            Some(m) => reply(
                StatusCode::OK,
                json!({"name": m.name, "version": m.version, "source_hash": m.source_hash, "source": m.source}),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                format!("module {name} is not deployed"),
            ),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn invoke(cx: &Ctx, service: &str, body: Bytes) -> Response<Body> {
    // Checked first: the check below would accept any depth (serde's IgnoredAny does not
    // recurse), and the worker's decoder does recurse.
    if crate::edge::json_depth::too_deep(&body) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({
                "error": crate::edge::json_depth::message(),
                "limit": crate::edge::json_depth::MAX_JSON_DEPTH,
            }),
        );
    }
    if !body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return error(StatusCode::BAD_REQUEST, "the payload must be JSON");
    }
    let cid = cx.cids.next();
    let timeout = cx.settings.request_timeout();
    let meta: InvokeMeta<'_> = InvokeMeta {
        op: "invoke",
        service,
        cid: &cid,
        channel: Some("admin"),
        data_format: Some("json"),
        method: None,
        path: None,
        params: None,
        query: None,
        headers: None,
        deadline_ms: Some(timeout.as_millis() as u64),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: None,
        security: None,
    };
    let started = Instant::now();
    match cx.pool.invoke(&meta, &body, started + timeout).await {
        Ok(r) => {
            let mut resp = Response::new(Full::new(r.body));
            *resp.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if let Some(ct) = r.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            if let Ok(v) = HeaderValue::from_str(&cid) {
                resp.headers_mut().insert("x-oxbus-cid", v);
            }
            resp
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(serde::Deserialize)]
struct DeployRequest {
    modules: Vec<DeployModule>,
    #[serde(default)]
    deployed_by: Option<String>,
    /// Leave modules whose source equals the active version alone (no new version).
    #[serde(default)]
    skip_unchanged: bool,
}

#[derive(serde::Deserialize)]
struct DeployModule {
    name: String,
    source: String,
}

/// POST /v1/modules: check in one worker, store, activate everywhere; a report back.
async fn deploy(cx: &Ctx, body: Bytes) -> Response<Body> {
    let req: DeployRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"modules\": [{{\"name\": …, \"source\": …}}]}}: {e}"),
            );
        }
    };
    let pairs: Vec<(String, String)> = req
        .modules
        .into_iter()
        .map(|m| (m.name, m.source))
        .collect();
    let by = req.deployed_by.as_deref().unwrap_or("admin-api");
    match crate::deploy::deploy(&cx.deploy, &pairs, by, req.skip_unchanged).await {
        Ok(report) => {
            let status = if report.all_ok() {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            reply(status, report.to_json())
        }
        Err(e) => deploy_error(e),
    }
}

/// The HTTP face of a refused deploy.
fn deploy_error(e: crate::deploy::DeployError) -> Response<Body> {
    use crate::deploy::DeployError;
    match e {
        DeployError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        DeployError::Refused(doc) => reply(StatusCode::UNPROCESSABLE_ENTITY, doc),
        DeployError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        DeployError::Busy(m) => error(StatusCode::CONFLICT, m),
    }
}

/// 200 when every worker acknowledged a module change, else 500 (the report says which).
fn acks_status(acks: &[crate::deploy::WorkerAck]) -> StatusCode {
    if acks.iter().all(|a| a.ok) {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// DELETE /v1/modules/{name}
async fn undeploy(cx: &Ctx, name: &str) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let change = match cx.store.undeploy_module(name).await {
        Ok(c) => c,
        Err(crate::store::StoreError::NotFound(m)) => return error(StatusCode::NOT_FOUND, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let acks = crate::deploy::remove_everywhere(&cx.pool, &[name]).await;
    reply(
        acks_status(&acks),
        json!({"config_version": change.config_version, "workers": acks}),
    )
}

/// POST /v1/modules/{name}/rollback
async fn rollback(cx: &Ctx, name: &str) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let change = match cx.store.rollback_module(name).await {
        Ok(c) => c,
        Err(crate::store::StoreError::NotFound(m)) => return error(StatusCode::NOT_FOUND, m),
        Err(crate::store::StoreError::Invalid(m)) => return error(StatusCode::CONFLICT, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let module = change.value;
    let acks = crate::deploy::activate_everywhere(&cx.pool, std::slice::from_ref(&module)).await;
    reply(
        acks_status(&acks),
        json!({
            "config_version": change.config_version,
            "module": {"name": module.name, "version": module.version, "source_hash": module.source_hash},
            "workers": acks,
        }),
    )
}

/// Rebuilds the routing table from server.toml's channels and the store's, and swaps it in.
async fn reload_router(cx: &Ctx) -> Result<(), Response<Body>> {
    rebuild_routes(cx).await.map_err(objects::Refused::answer)
}

/// [`reload_router`], refused with the status and message of its error answer.
async fn rebuild_routes(cx: &Ctx) -> Result<(), objects::Refused> {
    let stored = cx
        .store
        .channels()
        .await
        .map_err(|e| objects::Refused::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let defs: Vec<SecurityDef> = cx
        .store
        .objects()
        .await
        .map_err(|e| objects::Refused::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    cx.routes
        .rebuild(&stored, &defs)
        .map_err(|e| objects::Refused::new(StatusCode::INTERNAL_SERVER_ERROR, e))
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

/// Whether server.toml has a channel of that name (an unnamed one is named by its path).
fn file_channel_named(cx: &Ctx, name: &str) -> bool {
    cx.settings
        .channels
        .iter()
        .any(|c| c.name.as_deref().unwrap_or(&c.url_path) == name)
}

fn channel_json(c: &crate::model::channel::Channel, source: &str) -> Value {
    let mut j = json!({
        "name": c.name, "type": c.channel_type.as_str(), "url_path": c.url_path,
        "methods": c.methods, "service": c.service,
        "data_format": c.data_format.as_str(), "source": source,
    });
    if c.channel_type == crate::model::channel::ChannelType::JsonRpc {
        j["services"] = json!(c.services);
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
                    "expected {{\"url_path\", \"service\", \"methods\"?, \"name\"?, \"data_format\"?}} or {{\"type\": \"jsonrpc\", \"url_path\", \"services\"?, \"name\"?}}: {e}"
                ),
            );
        }
    };
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let name = channel.name.as_deref().unwrap_or(&channel.url_path);
    if file_channel_named(cx, name) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a channel named {name} is defined in server.toml"),
        );
    }
    // The file's channels count too (the routing table adds them): the new one must route
    // unambiguously beside them.
    let mut all = Vec::new();
    match cx.store.channels().await {
        Ok(c) => all.extend(c),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
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
    reply(
        StatusCode::CREATED,
        json!({"config_version": change.config_version, "channel": channel_json(&change.value, "store")}),
    )
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
                    "expected {{\"url_path\", \"service\", \"methods\"?, \"data_format\"?}} or {{\"type\": \"jsonrpc\", \"url_path\", \"services\"?}}: {e}"
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
    reply(
        StatusCode::OK,
        json!({"config_version": change.config_version, "channel": channel_json(&channel, "store")}),
    )
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

/// GET /v1/secrets: names and who/when, never values.
async fn list_secrets(cx: &Ctx) -> Response<Body> {
    match cx.store.secrets().await {
        Ok(list) => reply(
            StatusCode::OK,
            json!({"secrets": list.iter().map(|s| json!({
                "name": s.name, "updated_by": s.updated_by, "updated_at_ms": s.updated_at,
            })).collect::<Vec<_>>()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// PUT /v1/secrets/{name} `{"value": "…"}`: sealed before it is stored. Parse errors never
/// quote the body (it holds the secret).
async fn put_secret(cx: &Ctx, name: &str, body: Bytes) -> Response<Body> {
    let doc: Option<Value> = serde_json::from_slice(&body).ok();
    let obj = doc.as_ref().and_then(Value::as_object);
    let (value, by) = match obj {
        Some(o) if o.keys().all(|k| k == "value" || k == "updated_by") => {
            match (o.get("value"), o.get("updated_by")) {
                (Some(Value::String(v)), None) => (v.as_str(), "admin-api"),
                (Some(Value::String(v)), Some(Value::String(by))) => (v.as_str(), by.as_str()),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "expected {\"value\": \"<string>\"} (and optionally \"updated_by\")",
                    );
                }
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected a JSON object {\"value\": \"<string>\"}",
            );
        }
    };
    if let Err(e) = crate::store::validate_secret_name(name) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let sealed = cx.key.seal(name, value);
    let _one_at_a_time = cx.locks.deploy.lock().await;
    match cx.store.put_secret(name, &sealed, by).await {
        Ok(c) => {
            info!(secret = name, created = c.value, "secret set");
            reply(
                if c.value {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                json!({"config_version": c.config_version, "name": name, "created": c.value}),
            )
        }
        Err(crate::store::StoreError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// DELETE /v1/secrets/{name}
async fn delete_secret(cx: &Ctx, name: &str) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    match cx.store.delete_secret(name).await {
        Ok(c) => {
            info!(secret = name, "secret deleted");
            reply(StatusCode::OK, json!({"config_version": c.config_version}))
        }
        Err(crate::store::StoreError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// GET /v1/config: every stored object, one list per kind.
async fn export_config(cx: &Ctx) -> Response<Body> {
    let _consistent = cx.locks.deploy.lock().await;
    match crate::admin::config_io::export(cx).await {
        Ok(doc) => reply(
            StatusCode::OK,
            serde_json::to_value(doc).expect("a document serializes"),
        ),
        Err(e) => deploy_error(e),
    }
}

/// POST /v1/config[?dry_run=1][&replace=1]: validated in full, then applied in one
/// transaction.
async fn import_config(cx: &Ctx, query: &str, body: Bytes) -> Response<Body> {
    let mut dry_run = false;
    let mut replace = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "1"));
        let on = matches!(v, "1" | "true" | "yes");
        match k {
            "dry_run" => dry_run = on,
            "replace" => replace = on,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k:?} (dry_run, replace)"),
                );
            }
        }
    }
    let doc: crate::admin::config_io::Document = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "not a config document: {}",
                    crate::admin::config_io::without_values(&e.to_string())
                ),
            );
        }
    };
    let by = "config-import";
    // The changed modules are imported first, under the deploy deadline and before the
    // lock: a hung import must not hold channel and other changes.
    let checked = match crate::admin::config_io::check_modules(cx, &doc).await {
        Ok(c) => c,
        Err(e) => return deploy_error(e),
    };
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let report =
        match crate::admin::config_io::import(cx, doc, dry_run, replace, by, &checked).await {
            Ok(r) => r,
            Err(e) => return deploy_error(e),
        };
    // channel_rest and channel_jsonrpc alike.
    let touches_channels = report
        .changes
        .iter()
        .any(|c| c.kind.starts_with("channel_"));
    if !dry_run
        && touches_channels
        && let Err(r) = reload_router(cx).await
    {
        return r;
    }
    let status = acks_status(&report.workers);
    reply(
        status,
        serde_json::to_value(report).expect("a report serializes"),
    )
}

/// GET /v1/cluster: the servers sharing this store, the config version each has applied, and
/// the store's health as this server sees it.
async fn cluster(cx: &Ctx) -> Response<Body> {
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
