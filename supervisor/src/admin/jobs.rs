//! The admin API's scheduler jobs (docs/SCHEDULER.md, "Jobs"): `GET /v1/jobs` (every job this
//! server has), `GET|PUT|DELETE /v1/jobs/{name}` (one job; create or replace it; delete it) and
//! `POST /v1/jobs/{name}/enable|disable`. A job's create/replace and delete are
//! `admin::objects`' (this file has the kind's hooks: handed to this server's scheduler,
//! `scheduler::JobsTable`, before the answer); enable/disable is a change like a put, made
//! here; execute and runs are not config changes.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::info;

use super::objects::{BY, Refused};
use super::{Body, error, read_body, reply};
use crate::admin::Ctx;
use crate::model::job::JobDef;
use crate::store::StoreError;

/// Routes `/v1/jobs/…`; `rest` is the path after `/v1/jobs`, split at `/`.
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, []) => list(cx),
        (&Method::GET, [name]) => get(cx, &crate::edge::router::percent_decode(name)),
        (&Method::PUT, [name]) => {
            let name = crate::edge::router::percent_decode(name);
            match read_body(req).await {
                Ok(body) => super::objects::put::<JobDef>(cx, Some(&name), body).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, [name]) => {
            super::objects::delete::<JobDef>(cx, &crate::edge::router::percent_decode(name)).await
        }
        (&Method::POST, [name, "enable"]) => {
            set_active(cx, &crate::edge::router::percent_decode(name), true).await
        }
        (&Method::POST, [name, "disable"]) => {
            set_active(cx, &crate::edge::router::percent_decode(name), false).await
        }
        // Neither is a config change (`super::is_not_config` keeps them from the sync loop).
        (&Method::POST, [name, "execute"]) => {
            execute(cx, &crate::edge::router::percent_decode(name)).await
        }
        (&Method::GET, [name, "runs"]) => {
            let query = req.uri().query().unwrap_or("").to_owned();
            runs(cx, &crate::edge::router::percent_decode(name), &query).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

fn job_json(def: &JobDef) -> Value {
    serde_json::to_value(def).expect("a definition serialises")
}

/// The jobs this server has (`scheduler::JobsTable`): what its scheduler runs by. Like the live
/// caches, served while the store is down too.
fn live(cx: &Ctx) -> std::sync::Arc<Vec<JobDef>> {
    cx.scheduler.jobs.current()
}

/// GET /v1/jobs: every job, by name.
fn list(cx: &Ctx) -> Response<Body> {
    let jobs = live(cx);
    reply(
        StatusCode::OK,
        json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() }),
    )
}

/// GET /v1/jobs/{name}
fn get(cx: &Ctx, name: &str) -> Response<Body> {
    match live(cx).iter().find(|d| d.name == name) {
        Some(d) => reply(StatusCode::OK, job_json(d)),
        None => error(StatusCode::NOT_FOUND, format!("no job named {name}")),
    }
}

impl super::objects::AdminObject for JobDef {
    /// The body holds the job's fields; those left out take their defaults (a replace does
    /// not merge), except `start_date`, which a replace that leaves it out keeps (the store's
    /// `as_stored`).
    async fn build(
        _cx: &Ctx,
        input: Value,
        name: Option<&str>,
        _stored: Option<&Self>,
    ) -> Result<Self, Refused> {
        crate::model::job::parse_job_def(&input, name)
            .and_then(|d| d.validate().map(|()| d))
            .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))
    }

    /// Hands this server's scheduler the jobs.
    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused> {
        apply_jobs(cx, expected).await;
        Ok(())
    }

    /// The job as stored, and a warning when no worker runs its service.
    fn put_answer(
        cx: &Ctx,
        def: &Self,
        config_version: i64,
        created: bool,
    ) -> Result<Value, Refused> {
        let mut answer = json!({
            "config_version": config_version,
            "created": created,
            "job": job_json(def),
        });
        if let Some(w) = service_warning(cx, &def.service) {
            answer["warning"] = json!(w);
        }
        Ok(answer)
    }
}

/// A job may name a service no worker runs yet (deploy order must not matter); the answer
/// says so. `None` when a ready worker runs it, or when no worker is ready to tell.
pub(super) fn service_warning(cx: &Ctx, service: &str) -> Option<String> {
    let workers = cx.pool.all();
    let ready: Vec<_> = workers
        .iter()
        .filter(|w| w.state() == crate::lifecycle::pool::WorkerState::Ready)
        .collect();
    let known = ready.iter().any(|w| {
        w.services
            .lock()
            .expect("services lock")
            .iter()
            .any(|s| s.name == service)
    });
    (!ready.is_empty() && !known).then(|| format!("no service named {service} is deployed"))
}

/// POST /v1/jobs/{name}/enable|disable: sets `active`, a config change like a PUT.
async fn set_active(cx: &Ctx, name: &str, active: bool) -> Response<Body> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let stored: Vec<JobDef> = match cx.store.objects().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let change = match cx.store.set_job_active(name, active, BY).await {
        Ok(c) => c,
        Err(StoreError::NotFound(m)) => return error(StatusCode::NOT_FOUND, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let job = change.value;
    let mut expected: Vec<JobDef> = stored.into_iter().filter(|d| d.name != name).collect();
    expected.push(job.clone());
    apply_jobs(cx, expected).await;
    info!(
        job = name,
        "job {}",
        if active { "enabled" } else { "disabled" }
    );
    reply(
        StatusCode::OK,
        json!({"config_version": change.config_version, "job": job_json(&job)}),
    )
}

/// POST /v1/jobs/{name}/execute: runs the job's service now, on this server (whoever leads,
/// active or not), and answers with the run once it is over; the run goes to the history.
async fn execute(cx: &Ctx, name: &str) -> Response<Body> {
    let def = cx
        .scheduler
        .jobs
        .current()
        .iter()
        .find(|j| j.name == name)
        .cloned();
    let Some(def) = def else {
        return error(StatusCode::NOT_FOUND, format!("no job named {name}"));
    };
    let run = crate::scheduler::invoke(&cx.scheduler, &def, "manual", None).await;
    if let Err(e) = cx.store.record_run(&run).await {
        tracing::warn!(job = %name, error = %e, "cannot record a run");
    }
    info!(job = %name, outcome = %run.outcome, "job executed on request");
    let note = super::audit::AuditNote {
        cid: run.cid.clone(),
        ..super::audit::AuditNote::detail(json!({"outcome": run.outcome}))
    };
    let mut resp = reply(StatusCode::OK, json!({ "run": run }));
    note.attach(&mut resp);
    resp
}

/// GET /v1/jobs/{name}/runs?limit=N: the job's recent runs, newest first (at most 100 are
/// kept per job).
async fn runs(cx: &Ctx, name: &str, query: &str) -> Response<Body> {
    let mut limit = 20;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", v)) => match v.parse::<i64>() {
                Ok(n) if (1..=crate::store::RUNS_KEPT).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("limit must be 1..={}, got {v:?}", crate::store::RUNS_KEPT),
                    );
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {pair:?} (limit)"),
                );
            }
        }
    }
    match cx.store.runs(name, limit).await {
        Ok(r) => reply(StatusCode::OK, json!({ "job": name, "runs": r })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// GET /v1/scheduler: who leads the cluster's scheduler, whether this server does, and each
/// job's next run by its definition (`scheduler::next_run`).
pub(super) async fn status(cx: &Ctx) -> Response<Body> {
    let next_runs: serde_json::Map<String, Value> = cx
        .scheduler
        .jobs
        .current()
        .iter()
        .map(|d| (d.name.clone(), json!(crate::scheduler::next_run(d))))
        .collect();
    match cx.store.lease().await {
        Ok(lease) => {
            let now = chrono::Utc::now().timestamp_millis();
            let live = lease.filter(|(_, until)| *until > now);
            reply(
                StatusCode::OK,
                json!({
                    "server": cx.node.name,
                    "this_server_leads": cx.scheduler.status.leading(),
                    // The lease belongs to one boot of the leader (`scheduler::holder`).
                    "leader": live.as_ref().map(|(h, _)| crate::scheduler::split_holder(h).0),
                    "leader_boot": live.as_ref().and_then(|(h, _)| crate::scheduler::split_holder(h).1),
                    "boot": cx.node.boot_id,
                    "lease_expires_at": live.as_ref().map(|(_, u)| u),
                    "lease_ttl_ms": crate::scheduler::LEASE_TTL.as_millis() as u64,
                    "jobs": cx.scheduler.jobs.current().len(),
                    "next_runs": next_runs,
                }),
            )
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Hands this server's scheduler the store's jobs after a change made through this server
/// (the other servers follow through `sync`). `expected`: the jobs as the change left them,
/// used should the store not answer now (the sync loop then reads them again on its next
/// round).
pub(super) async fn apply_jobs(cx: &Ctx, expected: Vec<JobDef>) {
    let defs = super::objects::read_back(cx, expected, "jobs").await;
    crate::scheduler::jobs::set_live(&cx.scheduler.jobs, defs);
}
