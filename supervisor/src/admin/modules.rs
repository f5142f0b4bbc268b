//! The admin API's modules and services: `GET /v1/services` (what the workers run, with each
//! service's deployed version), `GET /v1/modules` and `GET /v1/modules/{name}` (the active
//! versions, one with its source), `GET /v1/modules/{name}/versions[/{v}]` (its history,
//! one version with its source), `POST /v1/modules` (deploy), `DELETE /v1/modules/{name}`
//! (undeploy) and `POST /v1/modules/{name}/rollback`. A deploy is `deploy`'s (check in one
//! worker, store, activate everywhere); this file parses the request and answers. It touches
//! no channel, secret or JSON-defined object.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::auth::Identity;
use super::{Body, Ctx, error, read_body, reply};

/// Routes `/v1/modules/…`; `rest` is the path after `/v1/modules`, split at `/`.
pub(super) async fn route(
    req: Request<Incoming>,
    cx: &Ctx,
    rest: &[&str],
    who: &Identity,
) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, []) => modules(cx).await,
        (&Method::GET, [name]) => module_source(cx, name).await,
        (&Method::GET, [name, "versions"]) => versions(cx, name, None).await,
        (&Method::GET, [name, "versions", v]) => match v.parse::<i64>() {
            Ok(v) => versions(cx, name, Some(v)).await,
            Err(_) => error(
                StatusCode::BAD_REQUEST,
                format!("{v:.40?} is not a version number"),
            ),
        },
        (&Method::POST, []) => match read_body(req).await {
            Ok(body) => deploy(cx, body, who).await,
            Err(r) => r,
        },
        (&Method::DELETE, [name]) => counted(cx, "undeploy", undeploy(cx, name)).await,
        (&Method::POST, [name, "rollback"]) => counted(cx, "rollback", rollback(cx, name)).await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// Runs an undeploy or a rollback and counts it in the deploy metrics by the status it
/// answers with (each outcome has its own: see `undeploy` and `rollback`).
async fn counted(
    cx: &Ctx,
    action: &'static str,
    change: impl std::future::Future<Output = Response<Body>>,
) -> Response<Body> {
    use crate::metrics::deploys::Outcome;
    let t0 = std::time::Instant::now();
    let resp = change.await;
    if cx.metrics.enabled() {
        let outcome = match resp.status() {
            StatusCode::OK => Outcome::Ok,
            StatusCode::INTERNAL_SERVER_ERROR => Outcome::Partial,
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => Outcome::Invalid,
            _ => Outcome::Error,
        };
        cx.metrics.deploys.record(action, outcome, t0.elapsed());
    }
    resp
}

/// The services the workers run (the first ready worker's table; all workers load the same),
/// each with its module's deployed version, hash and time when it came from the store.
pub(super) async fn services(cx: &Ctx) -> Response<Body> {
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
                "origin": m.origin,
            })).collect::<Vec<_>>()}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /v1/modules/{name}/versions`: every stored version, newest first, without sources;
/// `GET /v1/modules/{name}/versions/{v}`: one version with its source.
async fn versions(cx: &Ctx, name: &str, one: Option<i64>) -> Response<Body> {
    let history = match cx.store.module_history(name).await {
        Ok(h) => h,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if history.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("module {name} was never deployed"),
        );
    }
    let doc = |m: &crate::store::Module| {
        json!({
            "version": m.version, "active": m.active, "source_hash": m.source_hash,
            "deployed_by": m.deployed_by, "deployed_at_ms": m.deployed_at, "origin": m.origin,
        })
    };
    match one {
        None => reply(
            StatusCode::OK,
            json!({"name": name, "versions": history.iter().map(doc).collect::<Vec<_>>()}),
        ),
        Some(v) => match history.iter().find(|m| m.version == v) {
            Some(m) => {
                let mut d = doc(m);
                d["name"] = json!(name);
                d["source"] = json!(m.source);
                reply(StatusCode::OK, d)
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!("module {name} has no version {v}"),
            ),
        },
    }
}

async fn module_source(cx: &Ctx, name: &str) -> Response<Body> {
    match cx.store.active_modules().await {
        Ok(mods) => match mods.into_iter().find(|m| m.name == name) {
            Some(m) => reply(
                StatusCode::OK,
                json!({"name": m.name, "version": m.version, "source_hash": m.source_hash, "origin": m.origin, "source": m.source}),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                format!("module {name} is not deployed"),
            ),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(serde::Deserialize)]
struct DeployRequest {
    modules: Vec<DeployModule>,
    /// Believed from the root identity only (`Identity::recorded_as`).
    #[serde(default)]
    deployed_by: Option<String>,
    /// Leave modules whose source equals the active version alone (no new version), so
    /// that a rollback after redeploying the same file still means the previous different
    /// version. The default; `false` stores a new version anyway.
    #[serde(default = "yes")]
    skip_unchanged: bool,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize)]
struct DeployModule {
    name: String,
    source: String,
    /// The absolute path of the file the source came from (on the deployer's machine):
    /// the workers compile the module under that name and set its `__file__`.
    #[serde(default)]
    origin: Option<String>,
}

/// The longest origin path taken (Linux's PATH_MAX).
const MAX_ORIGIN: usize = 4096;

/// An origin must be a POSIX absolute path (the workers run on Linux: `__file__` is a path
/// there), normalised (no `.` or `..` segment, no `//`), on one line (no control character,
/// no Unicode line or paragraph separator), of sane length.
fn check_origin(module: &str, origin: &str) -> Result<(), String> {
    let bad_char = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    let normalised = origin
        .split('/')
        .skip(1)
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !origin.starts_with('/')
        || !normalised
        || origin.len() > MAX_ORIGIN
        || origin.chars().any(bad_char)
    {
        return Err(format!(
            "module {module}: origin must be the absolute POSIX path of the module's file \
             (starting with /, without . or .. segments, at most {MAX_ORIGIN} bytes, on one \
             line), got {origin:.100?}"
        ));
    }
    Ok(())
}

/// Two modules of one deploy from one file: refused (their tracebacks and `__file__` could
/// not tell them apart).
fn shared_origin(origins: &[(String, String)]) -> Option<String> {
    origins.iter().enumerate().find_map(|(i, (name, origin))| {
        origins[..i]
            .iter()
            .find(|(_, o)| o == origin)
            .map(|(first, _)| {
                format!(
                    "modules {first} and {name} have the same origin {origin}: each module of a \
                     deploy needs a file of its own"
                )
            })
    })
}

/// POST /v1/modules: check in one worker, store, activate everywhere; a report back. Recorded
/// as deployed by `who` (a named token) or by whom the root's request says.
async fn deploy(cx: &Ctx, body: Bytes, who: &Identity) -> Response<Body> {
    let req: DeployRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"modules\": [{{\"name\": …, \"source\": …}}]}}: {e}"),
            );
        }
    };
    let mut origins = Vec::new();
    for m in &req.modules {
        if let Some(origin) = &m.origin {
            if let Err(e) = check_origin(&m.name, origin) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            origins.push((m.name.clone(), origin.clone()));
        }
    }
    if let Some(e) = shared_origin(&origins) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let pairs: Vec<(String, String)> = req
        .modules
        .into_iter()
        .map(|m| (m.name, m.source))
        .collect();
    let by = who.recorded_as(req.deployed_by.as_deref(), "admin-api");
    match crate::deploy::deploy(&cx.deploy, &pairs, &origins, by, req.skip_unchanged).await {
        Ok(report) => {
            let status = if report.all_ok() {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            let mut resp = reply(status, report.to_json());
            super::audit::AuditNote {
                objects: Some(
                    report
                        .deployed
                        .iter()
                        .map(|m| ("module".to_owned(), m.name.clone()))
                        .collect(),
                ),
                ..super::audit::AuditNote::detail(json!({
                    "config_version": report.config_version,
                    "unchanged": report.unchanged_names(),
                }))
            }
            .attach(&mut resp);
            resp
        }
        Err(e) => deploy_error(e),
    }
}

/// The HTTP face of a refused deploy.
pub(super) fn deploy_error(e: crate::deploy::DeployError) -> Response<Body> {
    use crate::deploy::DeployError;
    match e {
        DeployError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        DeployError::Refused(doc) => reply(StatusCode::UNPROCESSABLE_ENTITY, doc),
        DeployError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        DeployError::Busy(m) => error(StatusCode::CONFLICT, m),
    }
}

/// 200 when every worker acknowledged a module change, else 500 (the report says which).
pub(super) fn acks_status(acks: &[crate::deploy::WorkerAck]) -> StatusCode {
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

#[cfg(test)]
mod tests {
    #[test]
    fn an_origin_is_an_absolute_path() {
        assert!(super::check_origin("crm", "/srv/app/crm.py").is_ok());
        for bad in [
            "crm.py",
            "./crm.py",
            "",
            "/a\nb.py",
            "C:crm.py",
            "C:\\src\\crm.py",
            "\\\\host\\share\\crm.py",
            "/srv/../etc/crm.py",
            "/srv/./crm.py",
            "/srv//crm.py",
            "/srv/app/",
            "/srv/a\u{2028}b.py",
            "/srv/a\u{2029}b.py",
            "/srv/a\u{85}b.py",
            "/srv/a\0b.py",
        ] {
            let e = super::check_origin("crm", bad).unwrap_err();
            assert!(
                e.starts_with("module crm: origin must be the absolute POSIX path"),
                "{e}"
            );
        }
        assert!(super::check_origin("crm", &format!("/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn two_modules_cannot_share_an_origin() {
        let o = |n: &str, p: &str| (n.to_owned(), p.to_owned());
        assert_eq!(
            super::shared_origin(&[o("a", "/x/a.py"), o("b", "/x/b.py")]),
            None
        );
        assert_eq!(
            super::shared_origin(&[o("a", "/x/a.py"), o("b", "/x/b.py"), o("c", "/x/a.py")])
                .as_deref(),
            Some(
                "modules a and c have the same origin /x/a.py: each module of a deploy needs \
                 a file of its own"
            )
        );
    }
}
