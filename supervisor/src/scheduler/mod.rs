//! The scheduler's runtime (docs/SCHEDULER.md): one server of the cluster leads and fires the
//! jobs (`crate::model::job`; fire times in `crate::scheduler::jobs`), each due time once.
//!
//! **Leadership** is a lease in the config store (`scheduler_lease`): the leader renews it
//! every second for [`LEASE_TTL`]; any server takes it over once it has expired. A leader
//! that cannot renew (it lost the store) stops firing when its lease runs out, by its own
//! clock, a second before the others may take over. A leader killed -9 is replaced within
//! `LEASE_TTL` plus one renewal tick; a clean stop hands the lease back at once. On SQLite the
//! only server leads.
//!
//! **Each due time fires once.** Per job the store keeps the next due time (`job_state`);
//! the leader claims a due run with a compare-and-set that moves it to the following one,
//! and runs the service only when the claim succeeded. Two servers that both believed they
//! led (a lease lost and taken over in the same moment) cannot both claim the same due time.
//! Runs due while nobody led are not repeated one by one: the first leader to look runs the
//! job once and moves on to the next due time after now. A claimed run whose leader dies
//! before the service starts (a window of microseconds) is lost; that is the price of never
//! running one twice.
//!
//! A job's schedule fields (type, start, interval, repeats, cron, time zone, active) have a
//! fingerprint; when it changes (an edit, a disable/enable) the next due time is computed
//! afresh from now, so an edit takes effect at once and a re-enabled job does not make up for
//! the time it was off. A deleted (or renamed) job is no longer in the definitions the leader
//! fires from.

pub mod jobs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use tracing::{info, warn};

use crate::cid::CidGen;
use crate::lifecycle::pool::Pool;
use crate::model::job::{JobDef, JobType, Overlap};
use crate::node::Node;
use crate::store::{Claim, JobState, Run, Store, StoreError};

/// The job definitions this server has (by name): from the config it booted from, then as
/// the sync loop and this server's own changes leave them. Swapped whole through
/// [`jobs::set_live`], which notifies the scheduler.
#[derive(Debug, Default)]
pub struct JobsTable {
    jobs: std::sync::RwLock<Arc<Vec<JobDef>>>,
    /// Notified (`notify_one`: a permit is kept until the scheduler waits again) whenever
    /// `jobs` changes.
    changed: tokio::sync::Notify,
}

impl JobsTable {
    pub fn new(defs: Vec<JobDef>) -> JobsTable {
        JobsTable {
            jobs: std::sync::RwLock::new(Arc::new(defs)),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The definitions as they are now.
    pub fn current(&self) -> Arc<Vec<JobDef>> {
        self.jobs.read().expect("jobs lock").clone()
    }
}

/// What the scheduler works with (built by boot): the store, the node state, the workers it
/// invokes, the jobs table and its own status.
pub struct Ctx {
    /// Where this subsystem's figures are recorded (`metrics/`).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: Store,
    pub node: Arc<Node>,
    pub pool: Arc<Pool>,
    pub cids: Arc<CidGen>,
    /// A run's deadline (`http.request_timeout_ms`).
    pub request_timeout: Duration,
    pub jobs: Arc<JobsTable>,
    /// Whether this server leads the cluster's scheduler.
    pub status: Arc<Status>,
}

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the leader renews it (and the others try to take it).
const LEASE_TICK: Duration = Duration::from_secs(1);
/// A leader stops firing this long before its lease runs out.
const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// One store call of the scheduler may take this long.
const STORE_LIMIT: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms_to_utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Why a store call of the scheduler gave no answer (logged; the scheduler goes on).
#[derive(Debug, thiserror::Error)]
pub enum StoreCallError {
    /// The store answered with an error.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The store did not answer within the limit.
    #[error("the config store did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// `call`, given at most [`STORE_LIMIT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreCallError> {
    match tokio::time::timeout(STORE_LIMIT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreCallError::Timeout(STORE_LIMIT)),
    }
}

// -- lease holders and history ---------------------------------------------------------------

/// The lease's holder for one boot of a server: `<name>/<boot id>`. A lease belongs to a
/// boot, not to a name: a server killed -9 and started again under the same name is a new
/// candidate, which waits for its earlier run's lease to run out like any other server,
/// instead of taking the lead straight back while the cluster still counts on the old lease
/// (the runs that boot claimed, the due times it planned).
pub fn holder(name: &str, boot: &str) -> String {
    format!("{name}/{boot}")
}

/// A holder's server name and boot id (a holder written by an older version is a name with
/// no boot).
pub fn split_holder(holder: &str) -> (&str, Option<&str>) {
    match holder.rsplit_once('/') {
        Some((name, boot)) => (name, Some(boot)),
        None => (holder, None),
    }
}

/// Writes the scheduled runs' history in batches: whatever finished while the previous batch
/// was being written goes in the next one (one transaction), so a busy scheduler's history
/// costs a few fsyncs a second, not one per run. A batch the store refuses is tried again
/// (three times, a second apart) before it is dropped with a warning. Manual runs are written
/// at once instead (their caller reads the history right after).
async fn write_runs(
    status: Arc<Status>,
    store: Store,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Run>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut attempt = 0;
        loop {
            match bounded(store.record_runs(&batch)).await {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    warn!(runs = batch.len(), error = %e, attempt, "scheduler: cannot record runs yet, trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    warn!(runs = batch.len(), error = %e, "scheduler: runs not recorded in the history");
                    break;
                }
            }
        }
        status.unwritten.fetch_sub(batch.len(), Ordering::SeqCst);
    }
}

// -- schedules -------------------------------------------------------------------------------

/// The fingerprint of what decides when a job runs: a change computes its next run afresh.
fn fingerprint(def: &JobDef) -> String {
    use sha2::Digest;
    let parts = serde_json::json!([
        def.active,
        def.kind.as_str(),
        // The instant, not the text: the same time written another way is no change.
        def.start().map(|t| t.timestamp_millis()).ok(),
        [def.weeks, def.days, def.hours, def.minutes, def.seconds],
        def.repeats,
        def.cron,
        def.timezone(),
    ]);
    let d = sha2::Sha256::digest(parts.to_string().as_bytes());
    d[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The next time `def` fires after now, by its definition (Unix ms; before jitter; a
/// `repeats` count already used up is not known here): `None` for an inactive job or one with
/// no run left.
pub fn next_run(def: &JobDef) -> Option<i64> {
    if !def.active {
        return None;
    }
    let now = chrono::Utc::now().timestamp_millis();
    Some(next_after(def, now)).filter(|t| *t >= 0)
}

/// The first run of `def` strictly after `after` (Unix ms), -1 when there is none.
fn next_after(def: &JobDef, after: i64) -> i64 {
    let after_t = ms_to_utc(after);
    let next = match def.kind {
        JobType::OneTime => def.start().ok().filter(|s| *s > after_t),
        JobType::IntervalBased => crate::scheduler::jobs::next_interval_fire(def, after_t),
        JobType::CronStyle => {
            // Not before the start date.
            let from = match def.start() {
                Ok(s) if s > after_t => s - chrono::TimeDelta::milliseconds(1),
                _ => after_t,
            };
            crate::scheduler::jobs::next_cron_fire(def, from)
        }
    };
    next.map_or(-1, |t| t.timestamp_millis())
}

/// A new schedule's first due time, seen at `now`. A one_time job whose start has passed
/// runs once at once (it was created, or re-enabled, to run).
fn first_due(def: &JobDef, now: i64) -> i64 {
    if def.kind == JobType::OneTime {
        return def.start().map_or(-1, |s| s.timestamp_millis());
    }
    next_after(def, now - 1)
}

// -- the leader loop -------------------------------------------------------------------------

/// A job's jitter for one due time: the same on every server (a hash of the job and the due
/// time), so the claim itself can wait for it.
fn jitter(def: &JobDef, due: i64) -> i64 {
    if def.jitter_ms == 0 {
        return 0;
    }
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{}\0{due}", def.name).as_bytes());
    let n = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    (n % (def.jitter_ms + 1)) as i64
}

/// The scheduler of one server: whether it leads, and what its runs still have to record.
#[derive(Debug, Default)]
pub struct Status {
    /// Until when this server's lease lasts by its own clock (less a margin).
    leading_until: Mutex<Option<Instant>>,
    /// Bumped whenever this server starts leading: the state is read from the store again.
    epoch: AtomicU64,
    /// Set when the server stops: it takes no lease and fires nothing more.
    stopping: AtomicBool,
    /// Scheduled runs sent to the history writer and not written yet.
    unwritten: AtomicUsize,
    /// Whether the store may hold the lease for this boot: set when a take or renewal
    /// succeeded, cleared when one was refused or the lease was handed back. Only a holder
    /// hands the lease back at stop.
    holds: AtomicBool,
    /// The task that takes and renews the lease (`hold_lease`): awaited at stop, so that no
    /// renewal still in flight can put the lease back after it was handed back.
    lease_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Wakes `hold_lease` from its wait between renewals when the server stops.
    stop_wake: tokio::sync::Notify,
}

impl Status {
    /// Whether this server may fire now.
    pub fn leading(&self) -> bool {
        !self.stopping()
            && self
                .leading_until
                .lock()
                .expect("status lock")
                .is_some_and(|t| Instant::now() < t)
    }

    /// The server is stopping: lead no more.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        *self.leading_until.lock().expect("status lock") = None;
        // One waiter (`hold_lease`); a permit is kept if it is not waiting right now.
        self.stop_wake.notify_one();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether this boot may hold the lease in the store (so has one to hand back).
    pub fn holds(&self) -> bool {
        self.holds.load(Ordering::SeqCst)
    }
}

/// Hands this boot's lease back at stop, when it holds one; `Ok(false)` when it held none
/// (nothing to do: a server that does not lead has no lease to hand back).
pub async fn hand_back(cx: &Ctx) -> Result<bool, StoreError> {
    let status = &cx.status;
    if !status.holds() {
        return Ok(false);
    }
    cx.store
        .release_lease(&holder(&cx.node.name, &cx.node.boot_id))
        .await?;
    status.holds.store(false, Ordering::SeqCst);
    Ok(true)
}

/// Waits until the lease task has ended (call after [`Status::stop`]): a renewal it had in
/// flight has landed, and it has handed back a lease that renewal took. After this, no
/// write of this boot can put the lease back. The caller bounds the wait.
pub async fn lease_task_ended(status: &Status) {
    let task = status.lease_task.lock().expect("status lock").take();
    if let Some(task) = task {
        let _ = task.await;
    }
}

/// Waits (at most `limit`) until the history of every finished scheduled run is written.
pub async fn flush_history(status: &Status, limit: Duration) {
    let until = Instant::now() + limit;
    while status.unwritten.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the scheduler until the server stops: the lease in one task, firing in this one.
pub async fn run(cx: Arc<Ctx>) {
    let status = cx.status.clone();
    *status.lease_task.lock().expect("status lock") = Some(tokio::spawn(hold_lease(cx.clone())));
    let (history, written) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(write_runs(status.clone(), cx.store.clone(), written));
    let ctx = Arc::new(RunCtx {
        inflight: Mutex::default(),
        history,
    });
    let mut states: HashMap<String, JobState> = HashMap::new();
    let mut epoch = 0;
    // The definitions and their fingerprints, worked out again only when they change.
    let mut known: Option<(Arc<Vec<JobDef>>, Vec<String>)> = None;
    // When the store's config version was last seen to be the one this server runs (checked
    // at most once a second, not on every wake of a busy scheduler).
    let mut checked: Option<Instant> = None;
    loop {
        if status.stopping() {
            return;
        }
        let mut wake = Instant::now() + LEASE_TICK;
        let leading = status.leading();
        if leading && checked.is_none_or(|t| t.elapsed() >= LEASE_TICK) {
            checked = in_step(&cx).await.then(Instant::now);
        }
        if leading && checked.is_some() {
            let defs = cx.jobs.current();
            let changed = !known.as_ref().is_some_and(|(d, _)| Arc::ptr_eq(d, &defs));
            if changed {
                let prints = defs.iter().map(fingerprint).collect();
                known = Some((defs.clone(), prints));
            }
            let now_epoch = status.epoch.load(Ordering::SeqCst);
            let mut ready = true;
            if now_epoch != epoch || changed {
                // Newly leading (read what others did meanwhile), or the jobs changed: forget
                // the state of jobs that no longer exist, so that a job created again under
                // the same name starts afresh.
                match bounded(reload(&cx.store, &defs, now_epoch != epoch)).await {
                    Ok(Some(s)) => {
                        states = s;
                        epoch = now_epoch;
                    }
                    Ok(None) => states.retain(|name, _| defs.iter().any(|d| d.name == *name)),
                    Err(e) => {
                        warn!(error = %e, "scheduler: cannot read the jobs' state");
                        ready = false;
                    }
                }
            }
            if ready {
                let prints = &known.as_ref().expect("just set").1;
                if let Some(t) = fire_due(&cx, &defs, prints, &mut states, &ctx).await {
                    wake = wake.min(t);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = cx.jobs.changed.notified() => {}
        }
    }
}

/// Whether this server runs the store's current config: a leader behind it (booted from its
/// snapshot, just back from an outage, a change not arrived yet) must not fire from old
/// definitions. Asks the sync loop to catch up when it is behind.
async fn in_step(cx: &Ctx) -> bool {
    match bounded(cx.store.version()).await {
        Ok(v) if v == cx.node.applied_version.load(Ordering::SeqCst) => true,
        Ok(_) => {
            cx.node.changed.notify_one();
            false
        }
        Err(_) => false,
    }
}

/// Deletes the state of jobs `defs` does not have; with `read`, returns every state left.
async fn reload(
    store: &Store,
    defs: &[JobDef],
    read: bool,
) -> Result<Option<HashMap<String, JobState>>, StoreError> {
    let states = store.job_states().await?;
    for gone in states
        .keys()
        .filter(|n| !defs.iter().any(|d| d.name == **n))
    {
        store.delete_job_state(gone).await?;
    }
    Ok(read.then(|| {
        states
            .into_iter()
            .filter(|(n, _)| defs.iter().any(|d| d.name == *n))
            .collect()
    }))
}

/// Takes and renews the lease every second, in its own task so that slow firing cannot let
/// it lapse; hands it back when the server stops.
async fn hold_lease(cx: Arc<Ctx>) {
    let me = cx.node.name.clone();
    let my_lease = holder(&me, &cx.node.boot_id);
    let status = &cx.status;
    let mut leading = false;
    // The holder last seen while this server did not lead (logged once per change).
    let mut seen_holder: Option<String> = None;
    loop {
        if status.stopping() {
            break;
        }
        let asked = Instant::now();
        let taken = bounded(cx.store.take_lease(&my_lease, now_ms(), LEASE_TTL)).await;
        if let Ok(t) = taken {
            status.holds.store(t, Ordering::SeqCst);
        }
        match taken {
            Ok(true) if status.stopping() => break,
            Ok(true) => {
                seen_holder = None;
                *status.leading_until.lock().expect("status lock") =
                    Some(asked + LEASE_TTL - LEASE_MARGIN);
                if !leading {
                    leading = true;
                    status.epoch.fetch_add(1, Ordering::SeqCst);
                    info!(server = %me, "scheduler: this server leads");
                    cx.jobs.changed.notify_one();
                }
            }
            Ok(false) => {
                if leading {
                    info!(server = %me, "scheduler: another server leads now");
                }
                leading = false;
                *status.leading_until.lock().expect("status lock") = None;
                if let Ok(Some((h, until))) = bounded(cx.store.lease()).await
                    && seen_holder.as_deref() != Some(h.as_str())
                {
                    let (name, boot) = split_holder(&h);
                    if name == me {
                        info!(server = %me, boot = boot.unwrap_or("-"), expires_at_ms = until,
                              "scheduler: the lease is still held by an earlier run of this server; it is taken over once it runs out, like any leader's that stopped renewing");
                    } else {
                        info!(server = %me, leader = name, "scheduler: another server leads");
                    }
                    seen_holder = Some(h);
                }
            }
            Err(e) => {
                // The lease this server has still stands until its deadline; the next
                // renewal that works counts as a new lead (the state is read again).
                if leading {
                    warn!(error = %e, "scheduler: cannot renew the lead; firing stops when the lease runs out");
                }
                leading = false;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until((asked + LEASE_TICK).into()) => {}
            _ = status.stop_wake.notified() => {}
        }
    }
    // The server's stop hands the lease back too (after waiting for this task to end); this covers a renewal that was in flight
    // when the stop began. A server that never held it has nothing to hand back.
    if let Err(e) = bounded(hand_back(&cx)).await {
        warn!(error = %e, "scheduler: could not hand the lease back");
    }
}

/// Fires every job due now (with its jitter); returns when the next one is due.
async fn fire_due(
    cx: &Arc<Ctx>,
    defs: &[JobDef],
    prints: &[String],
    states: &mut HashMap<String, JobState>,
    ctx: &Arc<RunCtx>,
) -> Option<Instant> {
    let mut earliest: Option<i64> = None;
    let now = now_ms();
    let mut due_now: Vec<(&JobDef, Claim)> = Vec::new();
    for (def, schedule) in defs.iter().zip(prints) {
        if states
            .get(&def.name)
            .is_none_or(|s| s.schedule != *schedule)
        {
            // A disabled job is planned too (with no run), so that enabling it again is a
            // schedule change: it starts afresh from then, it does not make up for the time
            // it was off.
            let first = if def.active { first_due(def, now) } else { -1 };
            match bounded(cx.store.plan_job(&def.name, schedule, first)).await {
                Ok(s) => {
                    states.insert(def.name.clone(), s);
                }
                Err(e) => {
                    warn!(job = %def.name, error = %e, "scheduler: cannot plan the job");
                    continue;
                }
            }
        }
        let due = states.get(&def.name).expect("planned").next_due;
        if due < 0 || !def.active {
            continue;
        }
        let fire_at = due + jitter(def, due);
        if fire_at > now {
            earliest = Some(earliest.map_or(fire_at, |e| e.min(fire_at)));
            continue;
        }
        // Due (or overdue: runs missed while nobody led collapse into this one).
        due_now.push((
            def,
            Claim {
                name: def.name.clone(),
                schedule: schedule.clone(),
                due,
                next: next_after(def, now),
            },
        ));
    }
    // The lease may have run out while the store was slow: claim only while still leading.
    if !due_now.is_empty() && cx.status.leading() {
        let claims: Vec<Claim> = due_now
            .iter()
            .map(|(_, c)| Claim {
                name: c.name.clone(),
                schedule: c.schedule.clone(),
                due: c.due,
                next: c.next,
            })
            .collect();
        match bounded(cx.store.claim_runs(&claims)).await {
            Ok(won) => {
                for ((def, c), won) in due_now.into_iter().zip(won) {
                    if !won {
                        // Claimed elsewhere (or the schedule changed under us): read it again.
                        states.remove(&def.name);
                        continue;
                    }
                    start_run(cx, def.clone(), Some(c.due), ctx);
                    if c.next >= 0 {
                        let at = c.next + jitter(def, c.next);
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                    states.insert(
                        c.name,
                        JobState {
                            schedule: c.schedule,
                            next_due: c.next,
                        },
                    );
                }
            }
            Err(e) => {
                // Whether the commit landed is unknown: read the states again; a run whose
                // claim did land is lost (logged here).
                warn!(runs = claims.len(), error = %e, "scheduler: claiming due runs failed; any that were claimed do not run");
                states.clear();
            }
        }
    }
    earliest.map(|due| {
        let wait = (due - now_ms()).max(0) as u64;
        Instant::now() + Duration::from_millis(wait)
    })
}

/// What a run needs besides its job: who else of the job is running, where history goes.
struct RunCtx {
    inflight: Mutex<HashMap<String, usize>>,
    history: tokio::sync::mpsc::UnboundedSender<Run>,
}

impl RunCtx {
    fn record(&self, cx: &Ctx, run: Run) {
        cx.status.unwritten.fetch_add(1, Ordering::SeqCst);
        if self.history.send(run).is_err() {
            cx.status.unwritten.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Starts one scheduled run in its own task (overlap policy, the call, history).
fn start_run(cx: &Arc<Ctx>, def: JobDef, due: Option<i64>, ctx: &Arc<RunCtx>) {
    let (cx, ctx) = (cx.clone(), ctx.clone());
    tokio::spawn(async move {
        let busy = {
            let mut f = ctx.inflight.lock().expect("inflight lock");
            let n = f.entry(def.name.clone()).or_insert(0);
            let busy = *n > 0;
            if !busy || def.overlap == Overlap::Allow {
                *n += 1;
            }
            busy
        };
        if busy && def.overlap == Overlap::Skip {
            if cx.metrics.enabled() {
                cx.metrics.scheduler.run(&def.name, "skipped");
            }
            ctx.record(
                &cx,
                Run {
                    job: def.name.clone(),
                    trigger: "schedule".into(),
                    due,
                    started: now_ms(),
                    server: cx.node.name.clone(),
                    duration_ms: None,
                    outcome: "skipped".into(),
                    error: Some("the previous run was still going (overlap: skip)".into()),
                    cid: None,
                },
            );
            return;
        }
        let run = invoke(&cx, &def, "schedule", due).await;
        {
            let mut f = ctx.inflight.lock().expect("inflight lock");
            if let Some(n) = f.get_mut(&def.name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    f.remove(&def.name);
                }
            }
        }
        ctx.record(&cx, run);
    });
}

/// Runs `def`'s service now, on this server; the run as history records it.
pub async fn invoke(cx: &Ctx, def: &JobDef, trigger: &str, due: Option<i64>) -> Run {
    let cid = cx.cids.next();
    let cid = cid.as_str();
    // Every run is a trace of its own.
    let trace = crate::trace::TraceParent::new_root();
    let timeout = cx.request_timeout;
    let meta: oxbus_ipc::InvokeMeta<'_> = oxbus_ipc::InvokeMeta {
        op: "invoke",
        service: &def.service,
        cid,
        channel: Some("scheduler"),
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
        channel_name: Some(&def.name),
        security: None,
        traceparent: Some(trace.as_str()),
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: None,
        params_priority: None,
        job_type: Some(def.kind.as_str()),
    };
    let body = def
        .extra
        .as_ref()
        .map(|v| serde_json::to_vec(v).expect("JSON serialises"))
        .unwrap_or_default();
    let started = now_ms();
    if let (Some(due), true) = (due, cx.metrics.enabled()) {
        // Planned for its due time plus the job's jitter (fire_due waits for both).
        let late = started - (due + jitter(def, due));
        cx.metrics
            .scheduler
            .started_late(Duration::from_millis(late.max(0) as u64));
    }
    let clock = Instant::now();
    let result = cx.pool.invoke(&meta, &body, clock + timeout).await;
    let duration_ms = Some(clock.elapsed().as_millis() as i64);
    let (outcome, error) = match result {
        Ok(r) if r.status < 400 => ("ok", None),
        Ok(r) => (
            "error",
            Some(format!(
                "status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
            )),
        ),
        Err(e) => ("error", Some(e.to_string())),
    };
    if let Some(e) = &error {
        warn!(job = %def.name, service = %def.service, cid, trace_id = trace.trace_id(), error = %e, "scheduler: the job's run failed");
    }
    if cx.metrics.enabled() {
        cx.metrics.scheduler.run(&def.name, outcome);
    }
    Run {
        job: def.name.clone(),
        trigger: trigger.into(),
        due,
        started,
        server: cx.node.name.clone(),
        duration_ms,
        outcome: outcome.into(),
        error,
        cid: Some(cid.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: JobType) -> JobDef {
        let mut d = JobDef::new("j", kind, "svc");
        d.start_date = Some("2026-03-01T00:00:00Z".into());
        d
    }

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn first_and_following_due_times() {
        let mut one = job(JobType::OneTime);
        // A one_time job runs once, at its start (at once when that has passed).
        assert_eq!(
            first_due(&one, ms("2026-02-01T00:00:00Z")),
            ms("2026-03-01T00:00:00Z")
        );
        assert_eq!(
            first_due(&one, ms("2026-04-01T00:00:00Z")),
            ms("2026-03-01T00:00:00Z")
        );
        assert_eq!(next_after(&one, ms("2026-04-01T00:00:00Z")), -1);
        one.kind = JobType::IntervalBased;
        one.minutes = 10;
        // Overdue runs collapse: the next one after now, on the start's grid.
        assert_eq!(
            next_after(&one, ms("2026-03-01T01:03:00Z")),
            ms("2026-03-01T01:10:00Z")
        );
        let mut cron = job(JobType::CronStyle);
        cron.cron = Some("0 0 12 * * *".into());
        cron.timezone = Some("Europe/Warsaw".into());
        assert_eq!(
            first_due(&cron, ms("2026-02-01T00:00:00Z")),
            ms("2026-03-01T11:00:00Z"),
            "not before the start date; noon in Warsaw is 11:00 UTC in winter"
        );
    }

    #[test]
    fn a_lease_holder_is_a_boot_of_a_server() {
        let h = holder("node1", "3f9c0a17b2e4");
        assert_eq!(split_holder(&h), ("node1", Some("3f9c0a17b2e4")));
        assert_ne!(h, holder("node1", "81d2e6c04a9f"));
        // A holder written by an older version: the name alone.
        assert_eq!(split_holder("node1"), ("node1", None));
    }

    #[test]
    fn the_fingerprint_follows_the_schedule_only() {
        let a = job(JobType::IntervalBased);
        let mut b = a.clone();
        b.service = "other".into();
        b.extra = Some(serde_json::json!({"x": 1}));
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.seconds = 5;
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let mut c = a.clone();
        c.active = false;
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
