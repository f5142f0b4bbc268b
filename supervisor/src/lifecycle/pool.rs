//! The worker pool: the set of live Python workers, their IPC connections, and dispatch.
//!
//! Dispatch picks the least-loaded ready worker that has a free in-flight slot; when every
//! worker is full the request waits in a bounded queue, and past that bound the caller gets
//! [`DispatchError::Busy`] at once (the HTTP layer answers 503 + `Retry-After`). Nothing is
//! ever buffered without a bound.
//!
//! Each worker connection (run by `lifecycle::connection`) has two tasks. The writer drains a shared outbox: callers encode
//! their `CALL` frames straight into it under a short `std::sync::Mutex` (no `.await` while it
//! is held) and poke a `Notify`, so whatever accumulated while the previous write was in
//! progress goes out in one `write` — batching comes for free under load. The reader decodes
//! frames and completes the oneshot of the matching stream. When the connection ends, every
//! pending stream is failed at once, so no client waits on a dead worker.

use bytes::{Bytes, BytesMut};
use oxbus_ipc::{Frame, InvokeMeta, Kind, ReplyMeta, ServiceInfo, WORKER_STREAM_BIT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::lifecycle::supervisor::Event;

/// A worker's answer to an invocation.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The REPLY's `error` kind (`input`, `no_service`), when the worker set one.
    pub error: Option<String>,
    /// The REPLY's `exc`: the family of the exception the service raised (or `input`), on
    /// an error reply only (ipc-protocol/SPEC.md).
    pub exc: Option<String>,
}

/// Why an invocation got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("all workers are busy and the queue is full")]
    Busy,
    #[error("no worker became free before the deadline")]
    QueueTimeout,
    #[error("the worker handling the request died")]
    WorkerDied,
    #[error("the request deadline passed")]
    Deadline,
    #[error("the request is too large for the IPC frame limit")]
    TooLarge,
}

/// Lifecycle of a worker as dispatch sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Spawned, not yet `READY`.
    Starting = 0,
    /// Takes new invocations.
    Ready = 1,
    /// Finishes what it has, takes nothing new.
    Draining = 2,
    /// Connection gone.
    Dead = 3,
}

impl WorkerState {
    fn from_u8(v: u8) -> WorkerState {
        match v {
            0 => WorkerState::Starting,
            1 => WorkerState::Ready,
            2 => WorkerState::Draining,
            _ => WorkerState::Dead,
        }
    }
}

/// One Python worker process as the pool knows it.
#[derive(Debug)]
pub struct Worker {
    pub id: u32,
    /// The lowest number no other live worker had when it was spawned (0..2n-1 for n
    /// workers): what the metrics label it by, a bounded set where ids and pids are not.
    pub slot: u32,
    pub generation: u64,
    pub token: String,
    pub pid: AtomicU32,
    state: AtomicU8,
    inflight: AtomicUsize,
    served: AtomicU64,
    /// Recycle after this many requests (0 = never).
    recycle_at: u64,
    recycle_requested: AtomicBool,
    pub(super) outbox: Mutex<BytesMut>,
    /// Frames encoded into the outbox that the writer has not counted yet (the metrics'
    /// IPC frames; the writer adds them up per write, not per frame).
    pub(super) queued_frames: AtomicU64,
    pub(super) wake_writer: Notify,
    pub(super) pending: Mutex<HashMap<u32, oneshot::Sender<Reply>>>,
    next_stream: AtomicU32,
    /// Milliseconds since the pool epoch of the last `PONG`.
    pub(super) last_pong_ms: AtomicU64,
    /// The worker said `BYE` (drained cleanly).
    pub said_bye: AtomicBool,
    pub services: Mutex<Vec<ServiceInfo>>,
    /// The deployed modules it runs: name -> version (what its last successful
    /// `modules.activate`/`modules.remove` left; a worker that failed to switch is behind).
    pub modules: Mutex<std::collections::BTreeMap<String, i64>>,
    /// An `ERROR` the worker sent before exiting (an import traceback, typically).
    pub boot_error: Mutex<Option<String>>,
    /// Set when the worker's `READY` arrived. Until then exit codes 2/3/4 mean "cannot
    /// import / refused / bad command line" (the server stops); from then on any exit is a
    /// crash of this worker, whatever code user code passed to `os._exit` (see `server`).
    pub handshaken: AtomicBool,
    /// How the process ended ("exited with code 3", "was killed by signal 9"), once the
    /// supervisor reaped it: a deploy whose checking worker died says why.
    pub exit: tokio::sync::watch::Sender<Option<String>>,
    /// Why [`Pool::replace_worker`] replaced it, if it did.
    pub replaced: Mutex<Option<&'static str>>,
}

impl Worker {
    pub fn new(id: u32, slot: u32, generation: u64, token: String, recycle_at: u64) -> Worker {
        Worker {
            id,
            slot,
            generation,
            token,
            pid: AtomicU32::new(0),
            state: AtomicU8::new(WorkerState::Starting as u8),
            inflight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            recycle_at,
            recycle_requested: AtomicBool::new(false),
            outbox: Mutex::new(BytesMut::with_capacity(64 * 1024)),
            queued_frames: AtomicU64::new(0),
            wake_writer: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
            last_pong_ms: AtomicU64::new(0),
            said_bye: AtomicBool::new(false),
            services: Mutex::new(Vec::new()),
            modules: Mutex::new(std::collections::BTreeMap::new()),
            boot_error: Mutex::new(None),
            handshaken: AtomicBool::new(false),
            exit: tokio::sync::watch::Sender::new(None),
            replaced: Mutex::new(None),
        }
    }

    /// Waits until the supervisor has reaped this worker; its exit, or None at `deadline`.
    pub async fn exited(&self, deadline: Instant) -> Option<String> {
        let mut rx = self.exit.subscribe();
        tokio::time::timeout_at(deadline.into(), rx.wait_for(Option::is_some))
            .await
            .ok()?
            .ok()
            .and_then(|v| v.clone())
    }

    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub fn set_state(&self, s: WorkerState) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn last_pong_ms(&self) -> u64 {
        self.last_pong_ms.load(Ordering::Relaxed)
    }

    pub fn set_last_pong(&self, now_ms: u64) {
        self.last_pong_ms.store(now_ms, Ordering::Relaxed);
    }

    fn alloc_stream(&self) -> u32 {
        loop {
            let s = self.next_stream.fetch_add(1, Ordering::Relaxed) & !WORKER_STREAM_BIT;
            if s != 0 {
                return s;
            }
        }
    }

    /// Queues a frame for the writer task.
    pub fn send_frame(&self, frame: &Frame) {
        frame.encode(&mut self.outbox.lock().expect("outbox lock"));
        self.queued_frames.fetch_add(1, Ordering::Relaxed);
        self.wake_writer.notify_one();
    }

    pub(super) fn send_reply<M: serde::Serialize>(&self, stream: u32, reply: &M, body: &[u8]) {
        let r = oxbus_ipc::encode_reply(
            &mut self.outbox.lock().expect("outbox lock"),
            stream,
            reply,
            body,
        );
        if r.is_err() {
            let _ = oxbus_ipc::encode_reply(
                &mut self.outbox.lock().expect("outbox lock"),
                stream,
                // An error of the server's (not a status of whatever answered): `too_large`.
                &ReplyMeta {
                    status: 502,
                    content_type: Some("application/json".into()),
                    headers: vec![],
                    error: Some("too_large".into()),
                    exc: None,
                },
                br#"{"error":"the reply is too large for the IPC frame limit (64 MiB)"}"#,
            );
        }
        self.queued_frames.fetch_add(1, Ordering::Relaxed);
        self.wake_writer.notify_one();
    }

    /// Fails every pending stream (their callers see [`DispatchError::WorkerDied`]).
    pub(super) fn fail_pending(&self) {
        let drained: Vec<_> = self.pending.lock().expect("pending lock").drain().collect();
        drop(drained);
    }
}

/// The set of workers and the dispatch logic.
#[derive(Debug)]
pub struct Pool {
    /// Where dispatch and the workers' figures are recorded (`metrics/`); off until boot
    /// hands the server's own (`with_metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    workers: RwLock<Vec<Arc<Worker>>>,
    freed: Notify,
    queued: AtomicUsize,
    max_inflight: usize,
    max_queue: usize,
    rr: AtomicUsize,
    epoch: Instant,
    events: mpsc::UnboundedSender<Event>,
    /// Default deadline of calls the workers make (invoke_async).
    pub(super) call_timeout: Duration,
    /// The deployed modules this server runs, by name: what every worker has activated and
    /// what a new worker loads before it takes traffic (kept by `deploy`).
    pub deployed: Mutex<std::collections::BTreeMap<String, crate::store::Module>>,
    /// This server's named caches (the workers' `cache.*` calls; `oxbus_cache`).
    pub caches: Arc<oxbus_cache::Caches>,
    /// Who answers the workers' `out.*` and `secret.*` calls (the `outgoing` subsystem);
    /// none: such calls get 501 unknown op.
    pub server_ops: Option<Arc<dyn crate::lifecycle::ops::ServerOps>>,
    /// How long a deploy's check may take (`deploy.check_timeout_ms`).
    pub import_timeout: Duration,
    /// How long a worker may take to activate or remove modules that passed their check
    /// (`workers.startup_timeout_ms`: the same imports a starting worker does).
    pub activate_timeout: Duration,
    /// The worker running a deploy's check, and that check's deadline: a module change
    /// sent to it meanwhile waits for the check (the worker runs one at a time), so its own
    /// clock starts at that deadline.
    pub checking: Mutex<Option<(u32, Instant)>>,
    /// Debug mode (`[debug] port`): the one worker runs under a debugger and may be stopped
    /// at a breakpoint for minutes; it is never replaced for a passed deadline.
    debugging: bool,
}

impl Pool {
    pub fn new(
        max_inflight: usize,
        max_queue: usize,
        call_timeout: Duration,
        events: mpsc::UnboundedSender<Event>,
    ) -> Pool {
        Pool {
            metrics: Arc::new(crate::metrics::Metrics::new(false)),
            workers: RwLock::new(Vec::new()),
            deployed: Mutex::new(std::collections::BTreeMap::new()),
            caches: Arc::new(oxbus_cache::Caches::new()),
            server_ops: None,
            freed: Notify::new(),
            queued: AtomicUsize::new(0),
            max_inflight,
            max_queue,
            rr: AtomicUsize::new(0),
            epoch: Instant::now(),
            events,
            call_timeout,
            import_timeout: Duration::from_secs(10),
            activate_timeout: Duration::from_secs(30),
            checking: Mutex::new(None),
            debugging: false,
        }
    }

    /// Debug mode: [`Pool::replace_worker`] keeps the worker (see [`Pool::debugging`]).
    pub fn with_debugging(mut self, on: bool) -> Pool {
        self.debugging = on;
        self
    }

    /// Sets [`Pool::import_timeout`].
    pub fn with_import_timeout(mut self, timeout: Duration) -> Pool {
        self.import_timeout = timeout;
        self
    }

    /// Sets [`Pool::metrics`].
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Pool {
        self.metrics = metrics;
        self
    }

    /// Sets [`Pool::server_ops`].
    pub fn with_server_ops(mut self, ops: Arc<dyn crate::lifecycle::ops::ServerOps>) -> Pool {
        self.server_ops = Some(ops);
        self
    }

    /// Sets [`Pool::activate_timeout`].
    pub fn with_activate_timeout(mut self, timeout: Duration) -> Pool {
        self.activate_timeout = timeout;
        self
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn add(&self, w: Arc<Worker>) {
        self.workers.write().expect("workers lock").push(w);
    }

    pub fn remove(&self, id: u32) -> Option<Arc<Worker>> {
        let mut ws = self.workers.write().expect("workers lock");
        let i = ws.iter().position(|w| w.id == id)?;
        Some(ws.remove(i))
    }

    pub fn get(&self, id: u32) -> Option<Arc<Worker>> {
        self.workers
            .read()
            .expect("workers lock")
            .iter()
            .find(|w| w.id == id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Worker>> {
        self.workers.read().expect("workers lock").clone()
    }

    /// How many invocations may wait for a free worker (`workers.max_queue`).
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// Number of workers taking new work.
    pub fn ready_count(&self) -> usize {
        self.workers
            .read()
            .expect("workers lock")
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .count()
    }

    /// Stops dispatch to a worker; returns its in-flight count.
    pub fn mark_draining(&self, w: &Worker) -> usize {
        if w.state() != WorkerState::Dead {
            w.set_state(WorkerState::Draining);
        }
        w.inflight()
    }

    /// Asks the supervisor to replace `w` as a stuck worker is (a deploy's check or module
    /// change passed its deadline: the import may spin forever): a replacement first, `w`
    /// killed once its in-flight requests are done. It takes no new work from now on,
    /// before the supervisor gets to it: the next check must not pick it.
    pub fn replace_worker(&self, w: &Worker, reason: &'static str) {
        if self.debugging {
            // Most likely stopped at a breakpoint: the deploy failed at its deadline, and
            // the worker goes on (and takes work) once resumed. Draining it would leave the
            // server with no worker at all, since none replaces it in debug mode.
            tracing::warn!(
                id = w.id,
                reason,
                "the worker under the debugger is past a deploy deadline (stopped at a \
                 breakpoint?); debug mode keeps it"
            );
            return;
        }
        self.mark_draining(w);
        w.replaced
            .lock()
            .expect("replaced lock")
            .get_or_insert(reason);
        let _ = self.events.send(Event::Replace { id: w.id, reason });
    }

    /// The first worker that takes traffic, waiting for one (a replacement starting) until
    /// `deadline`.
    pub async fn wait_live(&self, deadline: Instant) -> Option<Arc<Worker>> {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(w) = self
                .all()
                .into_iter()
                .find(|w| w.state() == WorkerState::Ready)
            {
                return Some(w);
            }
            tokio::time::timeout_at(deadline.into(), notified)
                .await
                .ok()?;
        }
    }

    /// Wakes waiters so they re-check (a worker became ready).
    pub fn capacity_changed(&self) {
        self.freed.notify_waiters();
    }

    fn try_pick(&self) -> Option<Arc<Worker>> {
        let ws = self.workers.read().expect("workers lock");
        let n = ws.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        for _ in 0..4 {
            let mut best: Option<&Arc<Worker>> = None;
            let mut best_load = usize::MAX;
            for k in 0..n {
                let w = &ws[(start + k) % n];
                if w.state() != WorkerState::Ready {
                    continue;
                }
                let load = w.inflight.load(Ordering::Relaxed);
                if load < self.max_inflight && load < best_load {
                    best = Some(w);
                    best_load = load;
                }
            }
            let w = best?;
            if w.inflight
                .compare_exchange(
                    best_load,
                    best_load + 1,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                // Re-check after the increment: whoever marks a worker draining reads the
                // in-flight count after the state change, so one of us sees the other.
                if w.state() == WorkerState::Ready {
                    return Some(w.clone());
                }
                self.release(w);
            }
        }
        None
    }

    fn release(&self, w: &Worker) {
        w.inflight.fetch_sub(1, Ordering::SeqCst);
        self.freed.notify_one();
    }

    async fn acquire(&self, deadline: Instant) -> Result<Arc<Worker>, DispatchError> {
        if let Some(w) = self.try_pick() {
            return Ok(w);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(DispatchError::Busy);
        }
        struct Queued<'a>(&'a AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _queued = Queued(&self.queued);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(w) = self.try_pick() {
                return Ok(w);
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return Err(DispatchError::QueueTimeout);
            }
        }
    }

    /// Runs one invocation on some worker and waits for its reply until `deadline`.
    pub async fn invoke<H: serde::Serialize>(
        &self,
        meta: &InvokeMeta<'_, H>,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Reply, DispatchError> {
        self.invoke_since(meta, body, deadline, None).await
    }

    /// [`Pool::invoke`] for a caller that read the clock just now (`now`): the call's
    /// duration is counted from it, with no second read.
    pub async fn invoke_at<H: serde::Serialize>(
        &self,
        meta: &InvokeMeta<'_, H>,
        body: &[u8],
        deadline: Instant,
        now: Instant,
    ) -> Result<Reply, DispatchError> {
        self.invoke_since(meta, body, deadline, Some(now)).await
    }

    async fn invoke_since<H: serde::Serialize>(
        &self,
        meta: &InvokeMeta<'_, H>,
        body: &[u8],
        deadline: Instant,
        now: Option<Instant>,
    ) -> Result<Reply, DispatchError> {
        // Per-service figures (`metrics::services`): every invocation passes here.
        if !self.metrics.enabled() {
            return self.dispatch(meta, body, deadline).await;
        }
        let mut call = Recording {
            pool: self,
            service: meta.service,
            cid: meta.cid,
            started: now.unwrap_or_else(Instant::now),
            done: false,
        };
        let result = self.dispatch(meta, body, deadline).await;
        call.done = true;
        self.record_call(meta.service, meta.cid, call.started, &result);
        result
    }

    async fn dispatch<H: serde::Serialize>(
        &self,
        meta: &InvokeMeta<'_, H>,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Reply, DispatchError> {
        let w = self.acquire(deadline).await?;
        let slot = Slot {
            pool: self,
            worker: &w,
        };
        // The compact form of the meta (SPEC.md): the same fields, cheaper for the worker
        // to decode on every request.
        let result = round_trip(&w, &oxbus_ipc::CompactInvoke(meta), body, deadline).await;
        if matches!(result, Err(DispatchError::Deadline)) {
            let _ = self.events.send(Event::Stuck { id: w.id });
        }
        drop(slot);
        result
    }

    /// Records one invocation's outcome: an error when the service raised or its input was
    /// refused (the REPLY's `exc`), or when no reply came (the family says why). A call of a
    /// service no worker has is not recorded: its name is whatever the caller sent (a name
    /// seen for the first time is checked against the workers' services, whatever the
    /// outcome).
    fn record_call(
        &self,
        service: &str,
        cid: &str,
        started: Instant,
        result: &Result<Reply, DispatchError>,
    ) {
        use crate::metrics::services::Outcome;
        let outcome = match result {
            Ok(r) if r.error.as_deref() == Some(oxbus_ipc::REPLY_ERROR_NO_SERVICE) => return,
            Ok(r) => match (&r.exc, r.error.as_deref()) {
                (Some(family), _) => Outcome::Error {
                    family,
                    status: r.status,
                },
                // A refused input from a worker that does not send `exc`.
                (None, Some(oxbus_ipc::REPLY_ERROR_INPUT)) => Outcome::Error {
                    family: oxbus_ipc::REPLY_ERROR_INPUT,
                    status: r.status,
                },
                (None, _) => Outcome::Ok,
            },
            Err(e) => Outcome::Error {
                family: e.family(),
                status: e.status(),
            },
        };
        self.metrics
            .services
            .record_if(service, cid, started, outcome, || self.has_service(service));
    }

    /// The names of the services the workers run.
    pub fn service_names(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for w in self.all() {
            for s in w.services.lock().expect("services lock").iter() {
                names.insert(s.name.clone());
            }
        }
        names
    }

    /// Whether some worker runs `service` (what READY and the last module change said).
    pub fn has_service(&self, service: &str) -> bool {
        self.all().iter().any(|w| {
            w.services
                .lock()
                .expect("services lock")
                .iter()
                .any(|s| s.name == service)
        })
    }
}

impl DispatchError {
    /// The error family the per-service metrics count this failure under.
    pub fn family(&self) -> &'static str {
        match self {
            DispatchError::Busy | DispatchError::QueueTimeout => "busy",
            DispatchError::WorkerDied => "worker_died",
            DispatchError::Deadline => "timeout",
            DispatchError::TooLarge => "too_large",
        }
    }

    /// The HTTP status a caller gets for it (as the HTTP edge answers it).
    pub fn status(&self) -> u16 {
        match self {
            DispatchError::Busy | DispatchError::QueueTimeout | DispatchError::WorkerDied => 503,
            DispatchError::Deadline => 504,
            DispatchError::TooLarge => 413,
        }
    }
}

/// Sends one `CALL` to `w` and waits for its `REPLY` until `deadline`. If the caller stops
/// waiting (deadline, or its future is dropped) the stream is cancelled on the worker.
async fn round_trip<M: serde::Serialize>(
    w: &Arc<Worker>,
    meta: &M,
    body: &[u8],
    deadline: Instant,
) -> Result<Reply, DispatchError> {
    let stream = w.alloc_stream();
    let (tx, rx) = oneshot::channel();
    w.pending.lock().expect("pending lock").insert(stream, tx);
    if w.state() == WorkerState::Dead {
        w.pending.lock().expect("pending lock").remove(&stream);
        return Err(DispatchError::WorkerDied);
    }
    let encoded = oxbus_ipc::encode_call(
        &mut w.outbox.lock().expect("outbox lock"),
        0,
        stream,
        meta,
        body,
    );
    if encoded.is_err() {
        w.pending.lock().expect("pending lock").remove(&stream);
        return Err(DispatchError::TooLarge);
    }
    w.queued_frames.fetch_add(1, Ordering::Relaxed);
    w.wake_writer.notify_one();
    let mut guard = StreamGuard {
        worker: w,
        stream,
        done: false,
    };
    let result = match tokio::time::timeout_at(deadline.into(), rx).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(_)) => Err(DispatchError::WorkerDied),
        Err(_) => return Err(DispatchError::Deadline),
    };
    guard.done = true;
    result
}

impl Pool {
    /// Sends a control `CALL` (not an invocation: no in-flight slot, no queue) to one
    /// worker and waits for its `REPLY` until `deadline`. Used for hot deployment.
    pub async fn call_worker<M: serde::Serialize>(
        &self,
        w: &Arc<Worker>,
        meta: &M,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Reply, DispatchError> {
        round_trip(w, meta, body, deadline).await
    }
}

/// Records an invocation whose future was dropped before its result came (the HTTP client
/// went away and hyper dropped the request's future): family `cancelled`, status 499, the
/// time it ran until then.
struct Recording<'a> {
    pool: &'a Pool,
    service: &'a str,
    cid: &'a str,
    started: Instant,
    done: bool,
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        use crate::metrics::services::{CANCELLED_FAMILY, CANCELLED_STATUS, Outcome};
        let outcome = Outcome::Error {
            family: CANCELLED_FAMILY,
            status: CANCELLED_STATUS,
        };
        let pool = self.pool;
        pool.metrics
            .services
            .record_if(self.service, self.cid, self.started, outcome, || {
                pool.has_service(self.service)
            });
    }
}

/// Gives the in-flight slot back when an invocation ends, however it ends.
struct Slot<'a> {
    pool: &'a Pool,
    worker: &'a Arc<Worker>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let w = self.worker;
        self.pool.release(w);
        let served = w.served.fetch_add(1, Ordering::Relaxed) + 1;
        if w.recycle_at > 0
            && served >= w.recycle_at
            && !w.recycle_requested.swap(true, Ordering::Relaxed)
        {
            let _ = self.pool.events.send(Event::Recycle {
                id: w.id,
                reason: "max_requests",
            });
        }
    }
}

/// Cancels a stream whose caller stopped waiting (deadline, or the client went away).
struct StreamGuard<'a> {
    worker: &'a Worker,
    stream: u32,
    done: bool,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_pending = self
            .worker
            .pending
            .lock()
            .expect("pending lock")
            .remove(&self.stream)
            .is_some();
        if was_pending && self.worker.state() != WorkerState::Dead {
            self.worker
                .send_frame(&Frame::new(Kind::Cancel, self.stream, Bytes::new()));
        }
    }
}

/// The workers' states as the metrics read them at scrape time (`metrics::workers`).
impl crate::metrics::workers::WorkerSource for Pool {
    fn workers(&self) -> Vec<crate::metrics::workers::WorkerSample> {
        use crate::metrics::workers::{State, WorkerSample};
        self.all()
            .iter()
            .map(|w| {
                let inflight = w.inflight() as u64;
                let pid = w.pid.load(Ordering::Relaxed);
                WorkerSample {
                    slot: w.slot,
                    state: match w.state() {
                        WorkerState::Starting => State::Starting,
                        WorkerState::Ready if inflight > 0 => State::Busy,
                        WorkerState::Ready => State::Ready,
                        WorkerState::Draining => State::Draining,
                        WorkerState::Dead => State::Dead,
                    },
                    inflight,
                    rss_bytes: (pid != 0)
                        .then(|| crate::lifecycle::process::rss_bytes(pid))
                        .flatten(),
                }
            })
            .collect()
    }

    fn queue_depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, error: Option<&str>, exc: Option<&str>) -> Result<Reply, DispatchError> {
        Ok(Reply {
            status,
            content_type: None,
            headers: vec![],
            body: Bytes::new(),
            error: error.map(str::to_owned),
            exc: exc.map(str::to_owned),
        })
    }

    /// A pool with metrics on and one ready worker that runs `services` (and never answers).
    fn pool_running(services: &[&str]) -> Pool {
        let (tx, _rx) = mpsc::unbounded_channel();
        let pool = Pool::new(1, 1, Duration::from_secs(1), tx)
            .with_metrics(Arc::new(crate::metrics::Metrics::new(true)));
        let w = Arc::new(Worker::new(1, 0, 1, "t".into(), 0));
        w.services
            .lock()
            .unwrap()
            .extend(services.iter().map(|name| ServiceInfo {
                name: (*name).to_owned(),
                module: "m".into(),
                class: "C".into(),
                is_async: false,
                verbs: vec![],
                input: vec![],
                output: vec![],
            }));
        w.set_state(WorkerState::Ready);
        pool.add(w);
        pool
    }

    #[test]
    fn a_reply_over_the_frame_limit_is_sent_as_a_too_large_error() {
        let w = Worker::new(1, 0, 1, "t".into(), 0);
        let meta = ReplyMeta {
            status: 200,
            content_type: None,
            headers: vec![],
            error: None,
            exc: None,
        };
        w.send_reply(7, &meta, &vec![b'x'; oxbus_ipc::MAX_PAYLOAD + 1]);
        let mut out = w.outbox.lock().unwrap().split();
        let frame = oxbus_ipc::FrameDecoder::default()
            .decode(&mut out)
            .unwrap()
            .expect("one whole frame");
        assert_eq!(frame.stream, 7);
        let text = String::from_utf8_lossy(&frame.payload);
        assert!(
            text.contains(r#""status":502"#) && text.contains(r#""error":"too_large""#),
            "{text}"
        );
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_reply_is_recorded_as_cancelled() {
        let pool = pool_running(&["svc"]);
        let meta: InvokeMeta<'_> = InvokeMeta {
            op: "invoke",
            service: "svc",
            cid: "c1",
            channel: None,
            data_format: None,
            method: None,
            path: None,
            params: None,
            query: None,
            headers: None,
            deadline_ms: None,
            remote_addr: None,
            scheme: None,
            port: None,
            channel_name: None,
            security: None,
            traceparent: None,
            tracestate: None,
            pubsub: None,
            mqtt: None,
            amqp: None,
            wsx: None,
            file: None,
            params_priority: None,
            job_type: None,
        };
        let mut call = Box::pin(pool.invoke(&meta, b"", Instant::now() + Duration::from_secs(60)));
        // Sent to the worker, waiting for its reply: then the caller goes away.
        tokio::select! {
            biased;
            _ = &mut call => panic!("no worker answers"),
            () = std::future::ready(()) => {}
        }
        assert!(!pool.metrics.services.knows("svc"));
        drop(call);
        let snap = pool.metrics.services.snapshot("svc").unwrap();
        assert_eq!(
            (snap.windows["15m"].calls, snap.windows["15m"].errors),
            (1, 1)
        );
        let last = snap.last_error.unwrap();
        assert_eq!(
            (last.family.as_str(), last.status, last.cid.as_str()),
            ("cancelled", 499, "c1")
        );
        // A call that got its result is not recorded again when its future is dropped.
        assert!(pool.invoke(&meta, b"", Instant::now()).await.is_err());
        assert_eq!(
            pool.metrics.services.snapshot("svc").unwrap().windows["15m"].calls,
            2
        );
    }

    #[test]
    fn outcomes_are_recorded_by_family_and_unknown_names_are_not() {
        let pool = pool_running(&["svc"]);
        let t = Instant::now();
        let s = &pool.metrics.services;
        // A service no worker has: a no_service reply, a dispatch error or even an answer
        // (the worker's list changed since) does not count.
        pool.record_call("ghost", "c0", t, &reply(404, Some("no_service"), None));
        pool.record_call("ghost", "c0", t, &Err(DispatchError::Busy));
        pool.record_call("ghost", "c0", t, &reply(200, None, None));
        pool.record_call("ghost", "c0", t, &reply(500, None, Some("ValueError")));
        assert!(!s.knows("ghost"));
        pool.record_call("svc", "c1", t, &reply(200, None, None));
        pool.record_call("svc", "c2", t, &reply(404, None, None)); // the service's own answer
        pool.record_call("svc", "c3", t, &reply(500, None, Some("ValueError")));
        pool.record_call("svc", "c4", t, &reply(400, Some("input"), None));
        let w = &s.snapshot("svc").unwrap().windows["15m"];
        assert_eq!((w.calls, w.errors), (4, 2));
        // Known now: a call that got no reply counts, with the status its caller got.
        for (e, family, status) in [
            (DispatchError::Deadline, "timeout", 504),
            (DispatchError::WorkerDied, "worker_died", 503),
            (DispatchError::Busy, "busy", 503),
            (DispatchError::QueueTimeout, "busy", 503),
            (DispatchError::TooLarge, "too_large", 413),
        ] {
            pool.record_call("svc", "c5", t, &Err(e));
            let last = s.snapshot("svc").unwrap().last_error.unwrap();
            assert_eq!((last.family.as_str(), last.status), (family, status));
        }
        let text = pool.metrics.render().unwrap();
        for line in [
            r#"oxbus_service_calls_total{service="svc"} 9"#,
            r#"oxbus_service_errors_total{service="svc",family="ValueError"} 1"#,
            r#"oxbus_service_errors_total{service="svc",family="input"} 1"#,
            r#"oxbus_service_errors_total{service="svc",family="busy"} 2"#,
            r#"oxbus_service_errors_total{service="svc",family="timeout"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("ghost"));
    }
}
