//! Hot deployment: the `modules.check` / `modules.activate` / `modules.remove` calls of the
//! IPC spec, and the all-or-nothing sequence around them.
//!
//! A deploy is: check the new sources in one worker (a syntax or import error comes back as
//! a traceback and nothing changes anywhere) → store the new versions (one short
//! transaction, one config version, the services' module claims in it) → activate them in
//! every worker at once. A worker started later gets every active module from the store
//! before it takes traffic.
//!
//! The check runs user code (the modules' imports), which may never return or may end the
//! process. So it runs under a deadline (`deploy.check_timeout_ms`), holding neither a store
//! transaction nor `deploy_lock` (which channel and other admin changes take): a hung import
//! costs its own deploy a 422 at the deadline, and the checking worker is replaced the way a
//! stuck one is (its replacement starts first, it takes no new work, and it is killed once
//! the requests it was serving are done, or at `workers.drain_timeout_ms`). A worker that
//! dies while checking (`os._exit(3)` at import, a segfault) refuses the deploy with its exit
//! in the message. Checks on one server run one at a time (`check_lock`): a deploy that
//! arrives during another's check waits for it — bounded, since that check ends at its
//! deadline — and then runs its own check under a deadline of its own (409 if the slot
//! never came free).
//!
//! Since the check holds no lock, the deployed modules may change while it runs (an
//! undeploy or rollback of a module the checked ones import, another deploy). Under
//! `deploy_lock`, before anything is stored, the active modules are compared with those
//! seen when the check started: a module that is now active with exactly the source being
//! deployed is left alone (the same deploy arrived twice, e.g. a pickup and `oxbus deploy`);
//! any other change to a module that was there during the check (a new version, an
//! undeploy) refuses the deploy with 409, as the check may not hold any more. A module added
//! meanwhile (another server's deploy of another module) was not there to import and does
//! not. The comparison is this server's: a change another server commits between it and
//! this deploy's transaction is not seen (docs/CLUSTER.md).
//!
//! Activation imports the checked modules again in every worker, under `deploy_lock` so
//! that every worker sees module changes in the same order. It runs code that has already
//! imported cleanly, but every worker imports at once, so it gets the bound a starting
//! worker has for the same imports (`workers.startup_timeout_ms`), counted for the checking
//! worker from its check's deadline (it runs one op at a time). A worker still importing at
//! that bound is replaced the way a stuck one is, and its replacement loads the stored
//! versions before it serves.

pub mod watch;

use oxbus_ipc::ServiceInfo;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lifecycle::pool::{Pool, Worker, WorkerState};
use crate::node::Node;
use crate::store::{Module, StoreError};

/// Deploy's locks: the order of module changes on this server.
#[derive(Debug, Default)]
pub struct Locks {
    /// One deploy at a time, so every worker sees module changes in the same order. Never
    /// held while a worker runs a deploy's check: channel and other changes (the admin API,
    /// the sync loop) take it too, and must not wait on user code.
    pub deploy: tokio::sync::Mutex<()>,
    /// One deploy check at a time on this server (each under `deploy.check_timeout_ms`).
    check: tokio::sync::Mutex<()>,
}

/// The other servers of the cluster, as a deploy reaches them (the cluster bus implements
/// it; a deploy knows no cluster): each one activates the deployed versions and answers.
pub trait Peers: Send + Sync {
    /// Sends the call `meta` to every peer; one reply each, within `timeout`.
    fn call_all<'a>(
        &'a self,
        meta: &'a Value,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<PeerReply>> + Send + 'a>>;
}

/// A peer's answer to a call to every peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerReply {
    pub server: String,
    pub status: u16,
    /// The reply body (JSON), or `{"error": …}` when the call got no answer.
    pub body: serde_json::Value,
}

/// What a deploy works with: this server's workers, the store, the node state, the locks
/// and the peers (when this server runs a cluster bus). Built by boot.
pub struct Ctx {
    /// Where this subsystem's figures are recorded (`metrics/`).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub pool: Arc<Pool>,
    pub store: crate::store::Store,
    pub node: Arc<Node>,
    pub locks: Arc<Locks>,
    pub peers: Option<Arc<dyn Peers>>,
}

/// How long another server may take to answer a deploy over the bus (it catches up from the
/// store; a frozen peer whose link has not timed out yet must not hold the deploy long).
const PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a worker that died while checking may take to be reaped (its exit code goes
/// into the deploy's refusal).
const REAP_WAIT: Duration = Duration::from_secs(2);

/// A module's source for a `modules.*` call.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub name: &'a str,
    pub version: i64,
    pub source: &'a str,
    /// The file the source came from, when known: the worker compiles it under that name.
    pub origin: Option<&'a str>,
}

/// Why a worker refused or failed a `modules.*` call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The worker answered 4xx/5xx: the JSON body it sent (for an import error: `error`,
    /// `module`, `traceback`).
    #[error("worker refused: {0}")]
    Refused(Value),
    /// No answer before the deadline: the worker still runs the import.
    #[error("the worker did not answer within {0} ms")]
    Timeout(u128),
    /// The worker's process ended while it had the call (the connection closed).
    #[error("the worker died during the call")]
    Died,
    #[error("worker unreachable: {0}")]
    Unreachable(String),
}

#[derive(Deserialize)]
struct Table {
    services: Vec<ServiceInfo>,
    /// A check's findings that refuse nothing (`modules.check` only).
    #[serde(default)]
    warnings: Vec<Warning>,
}

/// Something a deploy's check found that refuses nothing but the deployer should hear: a
/// class deriving from `Service` with no handler (so not a service), a method that looks
/// like a handler and is not, a module that defines no service (`_loader.deploy_warnings`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Warning {
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub message: String,
}

/// What a check found: the services of the checked modules, and its warnings.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub services: Vec<ServiceInfo>,
    pub warnings: Vec<Warning>,
}

fn modules_call(op: &str, modules: &[Source<'_>]) -> (Value, Vec<u8>) {
    let mut body = Vec::new();
    let list: Vec<Value> = modules
        .iter()
        .map(|m| {
            body.extend_from_slice(m.source.as_bytes());
            let mut entry = json!({"name": m.name, "version": m.version, "size": m.source.len()});
            if let Some(origin) = m.origin {
                entry["origin"] = json!(origin);
            }
            entry
        })
        .collect();
    (json!({"op": op, "modules": list}), body)
}

async fn call(
    pool: &Pool,
    w: &Arc<Worker>,
    meta: &Value,
    body: &[u8],
    deadline: Instant,
) -> Result<Table, CallError> {
    let waited = deadline.saturating_duration_since(Instant::now());
    let reply = pool
        .call_worker(w, meta, body, deadline)
        .await
        .map_err(|e| match e {
            crate::lifecycle::pool::DispatchError::Deadline => {
                CallError::Timeout(waited.as_millis())
            }
            crate::lifecycle::pool::DispatchError::WorkerDied => CallError::Died,
            e => CallError::Unreachable(e.to_string()),
        })?;
    let doc: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| CallError::Unreachable(format!("unreadable reply: {e}")))?;
    if reply.status != 200 {
        return Err(CallError::Refused(doc));
    }
    serde_json::from_value::<Table>(doc)
        .map_err(|e| CallError::Unreachable(format!("unreadable service table: {e}")))
}

/// Imports `modules` in `w` without keeping anything; returns their services and warnings.
pub async fn check(
    pool: &Pool,
    w: &Arc<Worker>,
    modules: &[Source<'_>],
    deadline: Instant,
) -> Result<Checked, CallError> {
    let (meta, body) = modules_call("modules.check", modules);
    let table = call(pool, w, &meta, &body, deadline).await?;
    Ok(Checked {
        services: table.services,
        warnings: table.warnings,
    })
}

/// Marks a worker as running a deploy's check until dropped ([`Pool::checking`]).
struct Checking<'a>(&'a Pool);

impl<'a> Checking<'a> {
    fn new(pool: &'a Pool, id: u32, deadline: Instant) -> Checking<'a> {
        *pool.checking.lock().expect("checking lock") = Some((id, deadline));
        Checking(pool)
    }
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        *self.0.checking.lock().expect("checking lock") = None;
    }
}

/// Checks `modules` in one ready worker under `deploy.check_timeout_ms`, holding no store
/// transaction and no `deploy_lock` (see the module docs); returns their services. A worker
/// that does not answer in time is replaced as a stuck one is; one that dies meanwhile is
/// replaced by the supervisor as any crashed worker is; both refuse the deploy.
pub async fn checked(cx: &Ctx, modules: &[Source<'_>]) -> Result<Checked, DeployError> {
    let pool = &cx.pool;
    let timeout = pool.import_timeout;
    let ms = timeout.as_millis();
    // The check in progress (if any) ends by its deadline, so this wait is bounded by it.
    // The check in progress (if any) holds the slot until its deadline, plus the wait for a
    // worker to check with and, if its worker died, the wait for that worker's exit status:
    // waiting that long means a 409 only if something is wrong.
    let wait = timeout * 2 + REAP_WAIT + Duration::from_secs(1);
    let _one_check = match cx.locks.check.try_lock() {
        Ok(slot) => slot,
        Err(_) => {
            tracing::info!("a deploy waits for another deploy's check to end");
            let Ok(slot) = tokio::time::timeout(wait, cx.locks.check.lock()).await else {
                return Err(DeployError::Busy(format!(
                    "another deploy's check held this server's check slot for {} ms: retry",
                    wait.as_millis()
                )));
            };
            slot
        }
    };
    let deadline = Instant::now() + timeout;
    // A worker replaced after the previous check may still be starting: wait for one.
    let Some(w) = pool.wait_live(deadline).await else {
        return Err(DeployError::Unavailable(
            "no worker is ready to check the deploy".into(),
        ));
    };
    // A module change sent to this worker meanwhile starts its clock at our deadline.
    let checking = Checking::new(pool, w.id, deadline);
    let result = check(pool, &w, modules, deadline).await;
    drop(checking);
    match result {
        Ok(checked) => Ok(checked),
        Err(CallError::Refused(doc)) => Err(DeployError::Refused(doc)),
        Err(CallError::Timeout(_)) => {
            pool.replace_worker(&w, "a deploy's check passed deploy.check_timeout_ms");
            Err(DeployError::Refused(json!({
                "error": format!(
                    "the modules' import did not finish within deploy.check_timeout_ms ({ms} ms): \
                     nothing was deployed; the checking worker (pid {}) takes no new work and is \
                     replaced (killed once its other requests are done)",
                    w.pid.load(std::sync::atomic::Ordering::Relaxed)
                ),
                "timeout_ms": ms,
            })))
        }
        Err(CallError::Died) => {
            let how = w
                .exited(Instant::now() + REAP_WAIT)
                .await
                .unwrap_or_else(|| "died".to_owned());
            Err(DeployError::Refused(json!({
                "error": format!(
                    "the checking worker (pid {}) {how} while importing the modules: nothing \
                     was deployed; the worker is replaced",
                    w.pid.load(std::sync::atomic::Ordering::Relaxed)
                ),
            })))
        }
        Err(e @ CallError::Unreachable(_)) => Err(DeployError::Unavailable(e.to_string())),
    }
}

/// Activates `modules` in `w`; on success the worker's service table is updated.
pub async fn activate(
    pool: &Pool,
    w: &Arc<Worker>,
    modules: &[Source<'_>],
    deadline: Instant,
) -> Result<Vec<ServiceInfo>, CallError> {
    let (meta, body) = modules_call("modules.activate", modules);
    let table = call(pool, w, &meta, &body, deadline).await?.services;
    *w.services.lock().expect("services lock") = table.clone();
    let mut running = w.modules.lock().expect("modules lock");
    for m in modules {
        running.insert(m.name.to_owned(), m.version);
    }
    Ok(table)
}

/// Removes modules from `w`.
pub async fn remove(
    pool: &Pool,
    w: &Arc<Worker>,
    names: &[&str],
    deadline: Instant,
) -> Result<(), CallError> {
    let meta = json!({"op": "modules.remove", "modules": names});
    let table = call(pool, w, &meta, b"", deadline).await?.services;
    *w.services.lock().expect("services lock") = table;
    let mut running = w.modules.lock().expect("modules lock");
    for n in names {
        running.remove(*n);
    }
    Ok(())
}

/// The `modules.*` calls a starting worker's handshake makes to load the deployed modules
/// (`lifecycle::handshake` knows no deploy: boot hands it this).
pub struct WorkerModules;

impl crate::lifecycle::handshake::Modules for WorkerModules {
    fn activate<'a>(
        &'a self,
        pool: &'a Pool,
        worker: &'a Arc<Worker>,
        modules: &'a [Module],
        deadline: Instant,
    ) -> crate::lifecycle::handshake::ModulesCall<'a> {
        Box::pin(async move {
            let srcs = sources(modules);
            activate(pool, worker, &srcs, deadline)
                .await
                .map(drop)
                .map_err(Into::into)
        })
    }

    fn remove<'a>(
        &'a self,
        pool: &'a Pool,
        worker: &'a Arc<Worker>,
        names: &'a [&'a str],
        deadline: Instant,
    ) -> crate::lifecycle::handshake::ModulesCall<'a> {
        Box::pin(async move {
            remove(pool, worker, names, deadline)
                .await
                .map_err(Into::into)
        })
    }
}

/// One worker's answer to an activation, for the deploy report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerAck {
    pub worker_id: u32,
    pub pid: u32,
    pub ok: bool,
    pub ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the worker is being replaced, if it is: its deploy check passed its deadline
    /// while the change waited for it (then the change is `ok`: the replacement loads the
    /// stored modules before it serves), or this change passed its own deadline there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// The workers that take traffic now.
pub fn live_workers(pool: &Pool) -> Vec<Arc<Worker>> {
    pool.all()
        .into_iter()
        .filter(|w| w.state() == WorkerState::Ready)
        .collect()
}

/// Sources of stored modules.
pub fn sources(modules: &[Module]) -> Vec<Source<'_>> {
    modules
        .iter()
        .map(|m| Source {
            name: &m.name,
            version: m.version,
            source: &m.source,
            origin: m.origin.as_deref(),
        })
        .collect()
}

/// When a module change sent to `w` now may start running there: at once, or when the
/// deploy check it is running ends (a worker runs one module op at a time).
fn starts_at(pool: &Pool, w: &Worker) -> Instant {
    let now = Instant::now();
    match *pool.checking.lock().expect("checking lock") {
        Some((id, check_deadline)) if id == w.id => check_deadline.max(now),
        _ => now,
    }
}

/// Runs `op` on every live worker concurrently, each under its own deadline
/// (`workers.startup_timeout_ms` from when the worker can start on it); one ack per worker.
async fn everywhere<'a, F, Fut>(pool: &'a Pool, op: F) -> Vec<WorkerAck>
where
    F: Fn(&'a Pool, Arc<Worker>, Instant) -> Fut,
    Fut: std::future::Future<Output = Result<(), CallError>>,
{
    let calls = live_workers(pool).into_iter().map(|w| {
        let (id, pid) = (w.id, w.pid.load(std::sync::atomic::Ordering::Relaxed));
        let deadline = starts_at(pool, &w) + pool.activate_timeout;
        let fut = op(pool, w.clone(), deadline);
        async move {
            let t0 = Instant::now();
            let r = fut.await;
            // Replaced meanwhile for another reason (its deploy check passed its deadline):
            // the change did not fail there, the replacement loads the stored modules.
            let earlier = match &r {
                Err(CallError::Timeout(_) | CallError::Died) => {
                    *w.replaced.lock().expect("replaced lock")
                }
                _ => None,
            };
            // Still importing at its own deadline: it is replaced as a stuck worker is (no
            // new work, killed once idle); its replacement loads the deployed versions
            // before it takes traffic. The change failed on this worker.
            let mut replaced = earlier;
            if earlier.is_none() && matches!(r, Err(CallError::Timeout(_))) {
                let why = "a module change passed workers.startup_timeout_ms on this worker";
                pool.replace_worker(&w, why);
                replaced = Some(why);
            }
            WorkerAck {
                worker_id: id,
                pid,
                ok: r.is_ok() || earlier.is_some(),
                ms: t0.elapsed().as_secs_f64() * 1000.0,
                error: r.err().map(|e| e.to_string()),
                replaced: replaced.map(str::to_owned),
            }
        }
    });
    futures_join_all(calls).await
}

/// Activates `modules` in every live worker concurrently; one ack per worker.
pub async fn activate_everywhere(pool: &Pool, modules: &[Module]) -> Vec<WorkerAck> {
    {
        // First: a worker that starts meanwhile loads these versions too.
        let mut deployed = pool.deployed.lock().expect("deployed lock");
        for m in modules {
            deployed.insert(m.name.clone(), m.clone());
        }
    }
    let srcs = sources(modules);
    let srcs = &srcs;
    everywhere(pool, |pool, w, deadline| async move {
        activate(pool, &w, srcs, deadline).await.map(drop)
    })
    .await
}

/// Removes modules from every live worker; one ack per worker.
pub async fn remove_everywhere(pool: &Pool, names: &[&str]) -> Vec<WorkerAck> {
    {
        let mut deployed = pool.deployed.lock().expect("deployed lock");
        for n in names {
            deployed.remove(*n);
        }
    }
    everywhere(pool, |pool, w, deadline| async move {
        remove(pool, &w, names, deadline).await
    })
    .await
}

/// Why a deploy changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeployError {
    /// Bad input (no modules, a name listed twice, an invalid module name).
    #[error("{0}")]
    Invalid(String),
    /// The checking worker refused the code: the JSON it sent (error, module, traceback).
    #[error("deploy refused: {0}")]
    Refused(Value),
    /// No worker to check with, or the store is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// Another deploy's check kept this server's check slot for the whole deadline.
    #[error("{0}")]
    Busy(String),
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The config version after the deploy (unchanged when every module was unchanged).
    pub config_version: i64,
    /// The new versions stored and activated.
    pub deployed: Vec<Module>,
    /// Modules left alone because their source equals the active version.
    pub unchanged: Vec<Unchanged>,
    /// Services the deployed modules define: (service, module).
    pub services: Vec<(String, String)>,
    /// The check's warnings about the deployed modules (nothing was refused for them).
    pub warnings: Vec<Warning>,
    pub workers: Vec<WorkerAck>,
    /// The server the deploy went through (its workers are `workers`).
    pub server: String,
    /// The other servers of the cluster (over the bus): each one's answer.
    pub servers: Vec<PeerReply>,
    /// From the start until the check came back.
    pub check_ms: f64,
    /// From the check's answer until the store committed.
    pub store_ms: f64,
    pub total_ms: f64,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        self.workers.iter().all(|a| a.ok) && self.servers.iter().all(|s| self.peer_ok(s))
    }

    /// A peer is fine when it answered, every worker it changed acknowledged, and it runs
    /// every deployed version.
    fn peer_ok(&self, s: &PeerReply) -> bool {
        s.status == 200
            && s.body["workers"]
                .as_array()
                .is_some_and(|w| w.iter().all(|a| a["ok"] == true))
            && self
                .deployed
                .iter()
                .all(|m| s.body["running"][&m.name].as_i64() == Some(m.version))
    }

    /// The names of the services `module` defines (as the check found them).
    fn services_of(&self, module: &str) -> Vec<&str> {
        self.services
            .iter()
            .filter(|(_, m)| m == module)
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// The names of the modules left alone.
    pub fn unchanged_names(&self) -> Vec<&str> {
        self.unchanged.iter().map(|u| u.name.as_str()).collect()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "config_version": self.config_version,
            "server": self.server,
            "modules": self.deployed.iter().map(|m| json!({
                "name": m.name, "version": m.version, "source_hash": m.source_hash,
                "services": self.services_of(&m.name),
            })).collect::<Vec<_>>(),
            "unchanged": self.unchanged_names(),
            "unchanged_modules": self.unchanged,
            "services": self.services.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            "warnings": self.warnings,
            "workers": self.workers,
            "servers": self.servers.iter().map(|s| json!({
                "server": s.server, "ok": self.peer_ok(s), "status": s.status, "answer": s.body,
            })).collect::<Vec<_>>(),
            "check_ms": self.check_ms,
            "store_ms": self.store_ms,
            "total_ms": self.total_ms,
        })
    }
}

/// A module a deploy left alone: its active version has the source deployed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unchanged {
    pub name: String,
    /// The active version, which stays active.
    pub version: i64,
    /// The services this server's workers run from it; None (absent) when no worker is
    /// ready to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
}

impl Unchanged {
    /// `name` left alone at its active version in `active`, with the services a ready
    /// worker of `pool` runs from it (None without a ready worker).
    fn new(pool: &Pool, active: &[Module], name: &str) -> Unchanged {
        let version = active
            .iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.version);
        let services = live_workers(pool).first().map(|w| {
            w.services
                .lock()
                .expect("services lock")
                .iter()
                .filter(|s| s.module == name)
                .map(|s| s.name.clone())
                .collect()
        });
        Unchanged {
            name: name.to_owned(),
            version,
            services,
        }
    }
}

/// The report of a deploy whose modules all equal their active versions. A live worker
/// that does not run the active version of one of them (its activation failed) is given it
/// again: the report's `workers` are those, empty when every worker runs them.
async fn nothing_to_do(
    cx: &Ctx,
    unchanged: Vec<Unchanged>,
    t0: Instant,
) -> Result<Report, DeployError> {
    let workers = {
        let _one_at_a_time = cx.locks.deploy.lock().await;
        let active = cx
            .store
            .active_modules()
            .await
            .map_err(|e| DeployError::Unavailable(e.to_string()))?;
        let ours: Vec<Module> = active
            .into_iter()
            .filter(|m| unchanged.iter().any(|u| u.name == m.name))
            .collect();
        repair(&cx.pool, &ours).await
    };
    let config_version = cx
        .store
        .version()
        .await
        .map_err(|e| DeployError::Unavailable(e.to_string()))?;
    Ok(Report {
        config_version,
        deployed: Vec::new(),
        unchanged,
        services: Vec::new(),
        warnings: Vec::new(),
        workers,
        server: cx.node.name.clone(),
        servers: Vec::new(),
        check_ms: 0.0,
        store_ms: 0.0,
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Activates `modules` (active versions) in each live worker that runs another version of
/// one of them (or none): one ack per such worker.
async fn repair(pool: &Pool, modules: &[Module]) -> Vec<WorkerAck> {
    let behind = |w: &Worker| -> Vec<Module> {
        let running = w.modules.lock().expect("modules lock");
        modules
            .iter()
            .filter(|m| running.get(&m.name) != Some(&m.version))
            .cloned()
            .collect()
    };
    let calls = live_workers(pool).into_iter().filter_map(|w| {
        let todo = behind(&w);
        if todo.is_empty() {
            return None;
        }
        tracing::warn!(
            worker = w.id,
            modules = ?todo.iter().map(|m| &m.name).collect::<Vec<_>>(),
            "deploy: a worker does not run the active version of an unchanged module; \
             activating it there again"
        );
        let (id, pid) = (w.id, w.pid.load(std::sync::atomic::Ordering::Relaxed));
        let deadline = starts_at(pool, &w) + pool.activate_timeout;
        Some(async move {
            let t0 = Instant::now();
            let srcs = sources(&todo);
            let r = activate(pool, &w, &srcs, deadline).await;
            WorkerAck {
                worker_id: id,
                pid,
                ok: r.is_ok(),
                ms: t0.elapsed().as_secs_f64() * 1000.0,
                error: r.err().map(|e| e.to_string()),
                replaced: None,
            }
        })
    });
    futures_join_all(calls).await
}

/// The whole deploy sequence: check `modules` (name, source) in one worker under the
/// deadline, holding nothing ([`checked`]); then, one deploy at a time (`deploy_lock`),
/// store them in one short transaction and activate them in every live worker. With
/// `skip_unchanged`, a module whose source equals its active version is left alone.
/// `origins` (name, absolute path) says where modules' sources came from: each one's
/// version records it and the workers compile it under that file name (docs/DEPLOY.md).
/// Every deploy (the admin API, the pickup directory) is counted here by its outcome.
pub async fn deploy(
    cx: &Ctx,
    modules: &[(String, String)],
    origins: &[(String, String)],
    by: &str,
    skip_unchanged: bool,
) -> Result<Report, DeployError> {
    let t0 = Instant::now();
    let result = deploy_sequence(cx, modules, origins, by, skip_unchanged, t0).await;
    if cx.metrics.enabled() {
        cx.metrics
            .deploys
            .record("deploy", outcome(&result), t0.elapsed());
    }
    result
}

/// How a deploy ended, for the metrics.
fn outcome(result: &Result<Report, DeployError>) -> crate::metrics::deploys::Outcome {
    use crate::metrics::deploys::Outcome;
    match result {
        Ok(r) if r.deployed.is_empty() => Outcome::Unchanged,
        Ok(r) if r.all_ok() => Outcome::Ok,
        Ok(_) => Outcome::Partial,
        Err(DeployError::Invalid(_)) => Outcome::Invalid,
        Err(DeployError::Refused(_)) => Outcome::Refused,
        Err(DeployError::Busy(_)) => Outcome::Conflict,
        Err(DeployError::Unavailable(_)) => Outcome::Error,
    }
}

async fn deploy_sequence(
    cx: &Ctx,
    modules: &[(String, String)],
    origins: &[(String, String)],
    by: &str,
    skip_unchanged: bool,
    t0: Instant,
) -> Result<Report, DeployError> {
    if modules.is_empty() {
        return Err(DeployError::Invalid("no modules to deploy".into()));
    }
    let mut names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(DeployError::Invalid(format!(
            "module {} is listed twice",
            w[0]
        )));
    }
    // Bad names are refused before any worker imports anything.
    for (name, _) in modules {
        crate::store::validate_module_name(name).map_err(|e| match e {
            StoreError::Invalid(m) => DeployError::Invalid(m),
            e => DeployError::Invalid(e.to_string()),
        })?;
    }
    let mut unchanged = Vec::new();
    let mut todo: Vec<&(String, String)> = modules.iter().collect();
    // The active modules the check is made against: compared again before the commit.
    let active_before = cx
        .store
        .active_modules()
        .await
        .map_err(|e| DeployError::Unavailable(e.to_string()))?;
    let origin_of = |name: &str| {
        origins
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.as_str())
    };
    // Unchanged: the active version has this source, and this origin when one is sent (a
    // module deployed without one, before schema 22 say, gets it with a new version).
    let same_source = |active: &[Module], name: &str, source: &str| {
        active.iter().any(|m| {
            m.name == name
                && m.source_hash == crate::store::source_hash(source)
                && origin_of(name).is_none_or(|o| m.origin.as_deref() == Some(o))
        })
    };
    if skip_unchanged {
        todo.retain(|(name, source)| {
            let same = same_source(&active_before, name, source);
            if same {
                unchanged.push(Unchanged::new(&cx.pool, &active_before, name));
            }
            !same
        });
        if todo.is_empty() {
            return nothing_to_do(cx, unchanged, t0).await;
        }
    }
    let srcs: Vec<Source<'_>> = todo
        .iter()
        .map(|(name, source)| Source {
            name,
            version: 0,
            source,
            origin: origin_of(name),
        })
        .collect();
    let mut pairs: Vec<(String, String)> = todo.iter().map(|m| (*m).clone()).collect();
    // The check first, holding nothing: a refused deploy never touched the store.
    let Checked { services, warnings } = checked(cx, &srcs).await?;
    let check_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let one_at_a_time = cx.locks.deploy.lock().await;
    // What changed in the deployed modules while the check ran (this server or another
    // changed them: `deploy_lock` is this server's only)?
    let active_now = cx
        .store
        .active_modules()
        .await
        .map_err(|e| DeployError::Unavailable(e.to_string()))?;
    let versions = |active: &[Module]| -> std::collections::BTreeMap<String, i64> {
        active.iter().map(|m| (m.name.clone(), m.version)).collect()
    };
    let (before, now) = (versions(&active_before), versions(&active_now));
    // Only a module that was there during the check and has since changed or gone can make
    // the check's verdict wrong (the checked modules may import it); one added meanwhile —
    // another server's deploy of another module, say — was not there to import, so the
    // verdict stands. One of ours now active with exactly our source is the same deploy
    // arriving twice (a pickup rescan and `oxbus deploy` of one file): not stored again.
    let moved = |n: &String| now.get(n) != before.get(n);
    if before != now {
        if skip_unchanged {
            pairs.retain(|(name, source)| {
                let same = same_source(&active_now, name, source);
                if same {
                    unchanged.push(Unchanged::new(&cx.pool, &active_now, name));
                }
                !same
            });
        }
        let ours_as_sent = |n: &String| {
            modules
                .iter()
                .any(|(name, source)| name == n && same_source(&active_now, name, source))
        };
        let changed: Vec<&str> = before
            .keys()
            .filter(|n| moved(n) && !ours_as_sent(n))
            .map(String::as_str)
            .collect();
        if !changed.is_empty() {
            return Err(DeployError::Busy(format!(
                "the deployed modules changed during the check ({}): nothing was deployed; \
                 deploy again",
                changed.join(", ")
            )));
        }
        if pairs.is_empty() {
            drop(one_at_a_time);
            return nothing_to_do(cx, unchanged, t0).await;
        }
    }
    // The services of the modules still to store (a dropped one keeps its claims).
    let claims: Vec<(String, String)> = services
        .iter()
        .filter(|s| pairs.len() == todo.len() || pairs.iter().any(|(n, _)| *n == s.module))
        .map(|s| (s.name.clone(), s.module.clone()))
        .collect();
    // Then one short transaction: new versions, one config version, the services' claims
    // (a service another module defines refuses the whole deploy).
    let change = match cx.store.begin_deploy_from(&pairs, origins, by).await {
        Ok(mut pending) => match pending.claim_services(&claims).await {
            Ok(()) => pending.commit().await,
            Err(e) => {
                let _ = pending.rollback().await;
                Err(e)
            }
        },
        Err(e) => Err(e),
    };
    let change = match change {
        Ok(c) => c,
        Err(StoreError::Invalid(m)) => return Err(DeployError::Invalid(m)),
        Err(e) => return Err(DeployError::Unavailable(e.to_string())),
    };
    let store_ms = t0.elapsed().as_secs_f64() * 1000.0 - check_ms;
    let acks = activate_everywhere(&cx.pool, &change.value).await;
    // This server now runs the new version when it ran the one before (the deploy changed
    // nothing but these modules): recorded now, so `cluster status` is right as soon as
    // the report is. Otherwise the sync loop applies what else changed and records it.
    if cx.node.applied() == change.config_version - 1 {
        let v = change.config_version;
        let pid = i64::from(std::process::id());
        cx.node
            .set_applied(v, cx.store.record_applied(&cx.node.name, pid, v))
            .await;
    }
    // Released before waiting on the peers: a peer's answer takes its own deploy lock, and a
    // deploy through that peer at the same time would otherwise wait on ours (a deadlock
    // until the timeout).
    drop(one_at_a_time);
    // Every other server of the cluster, now, with its workers' acks in the report.
    let servers = match &cx.peers {
        Some(peers) => {
            let meta = json!({
                "op": "deploy.activate",
                "config_version": change.config_version,
                "modules": change.value.iter().map(|m| json!({"name": m.name, "version": m.version})).collect::<Vec<_>>(),
            });
            peers.call_all(&meta, PEER_TIMEOUT).await
        }
        None => Vec::new(),
    };
    // Only the stored modules' (one found unchanged after the check is not in the report's
    // `modules`).
    let stored = |module: &str| change.value.iter().any(|m| m.name == module);
    let services: Vec<(String, String)> = services
        .into_iter()
        .filter(|s| stored(&s.module))
        .map(|s| (s.name, s.module))
        .collect();
    let warnings: Vec<Warning> = warnings.into_iter().filter(|w| stored(&w.module)).collect();
    let report = Report {
        config_version: change.config_version,
        deployed: change.value,
        unchanged,
        services,
        warnings,
        workers: acks,
        server: cx.node.name.clone(),
        servers,
        check_ms,
        store_ms,
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
    };
    tracing::info!(
        modules = ?report.deployed.iter().map(|m| &m.name).collect::<Vec<_>>(),
        by,
        config_version = report.config_version,
        workers = report.workers.len(),
        ok = report.all_ok(),
        ms = report.total_ms,
        "deployed"
    );
    cx.node.changed.notify_one();
    Ok(report)
}

/// Runs futures concurrently on this task (no extra dependency for a join_all).
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    futures_join_all(futs.into_iter()).await
}

/// Runs futures concurrently on this task (no extra dependency for a join_all).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_module_with_no_ready_worker_has_no_services_list() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = Pool::new(1, 1, std::time::Duration::from_secs(1), tx);
        let active = [Module {
            name: "hot".into(),
            version: 3,
            source: "X = 1\n".into(),
            source_hash: crate::store::source_hash("X = 1\n"),
            deployed_by: "t".into(),
            deployed_at: 0,
            active: true,
            origin: None,
        }];
        let u = Unchanged::new(&pool, &active, "hot");
        assert_eq!(u.services, None);
        // Not an empty list, which would read "no services".
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"name": "hot", "version": 3})
        );
    }
}
