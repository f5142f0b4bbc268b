//! The supervisor: one event loop that owns the workers' lifecycle.
//!
//! Modelled on gunicorn's arbiter: signal handlers, child exits, worker readiness, recycle
//! requests and timer ticks are all variants of one [`Event`] enum, handled one at a time in
//! one loop, so there is no lock around lifecycle state and no race between, say, a SIGHUP
//! and a worker dying. SIGTERM drains gracefully within a deadline, SIGINT stops fast,
//! SIGHUP rolls every worker (generation N+1 is ready before generation N drains).
//!
//! It owns the worker processes and reaches the rest of the server only through the handles
//! boot gives it (the pool, the node state, systemd's notifier, a stop hook); it names no
//! subsystem above the workers' lifecycle.

use nix::sys::signal::Signal;
use oxbus_ipc::{Frame, Kind};
use std::collections::{HashMap, VecDeque};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::lifecycle::pool::{Pool, Worker, WorkerState};
use crate::lifecycle::process::{self, Launch, StderrTail, exit_code};
use crate::lifecycle::sdnotify::Notifier;
use crate::metrics::workers::Restart;
use crate::node::Node;

/// Everything the supervisor loop reacts to.
#[derive(Debug)]
pub enum Event {
    Signal(Sig),
    WorkerReady {
        id: u32,
    },
    WorkerExited {
        id: u32,
        status: Option<ExitStatus>,
    },
    Recycle {
        id: u32,
        reason: &'static str,
    },
    /// A request on this worker passed its deadline: replace the worker.
    Stuck {
        id: u32,
    },
    /// Replace this worker as a stuck one is (a deploy's check or module change passed its
    /// deadline): a replacement first, no new work for it, killed once idle or at the
    /// drain deadline.
    Replace {
        id: u32,
        reason: &'static str,
    },
    Respawn {
        generation: u64,
        replaces: Option<u32>,
    },
    /// SIGTERM's shutdown delay is over: stop accepting and drain.
    StopAccepting,
    /// The HTTP layer closed its last connection after SIGTERM.
    HttpDrained,
    /// The inbound channels (boot's, through the stop hook) stopped consuming and their
    /// in-flight messages finished or were given back: the workers may go once the HTTP
    /// layer drained too.
    InboundDrained,
}

/// The signals the supervisor acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Int,
    Hup,
    /// Fault injection for the watchdog's test: blocks the supervisor loop (see
    /// `spawn_signal_listener`).
    Stall,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Fatal(String),
}

/// Maps an I/O error to a [`ServerError`] that says what was being done.
pub fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

#[derive(Debug)]
struct Child {
    generation: u64,
    pid: u32,
    tail: StderrTail,
    ready: bool,
    replaces: Option<u32>,
    retire: Option<Retire>,
    worker: Arc<Worker>,
    /// Why the supervisor killed it, when it did so without retiring it (heartbeats): its
    /// exit is then counted as that restart, not as a crash.
    killed_for: Option<Restart>,
}

#[derive(Debug)]
struct Retire {
    kill_when_idle: bool,
    drain_sent: bool,
    deadline: Instant,
}

/// What happens once the supervisor loop ends.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: i32,
}

/// The event loop's state: every child process, the generations, a reload or a shutdown in
/// progress. Changed only by the loop.
pub struct Supervisor {
    settings: Settings,
    pool: Arc<Pool>,
    node: Arc<Node>,
    notifier: Arc<Notifier>,
    /// Called once shutdown starts (SIGTERM or SIGINT), before the workers are retired.
    /// After SIGTERM the workers are retired only once the HTTP layer reported
    /// [`Event::HttpDrained`] and the hook's owner [`Event::InboundDrained`].
    on_stop: Box<dyn Fn() + Send>,
    events: mpsc::UnboundedSender<Event>,
    launch: Launch,
    children: HashMap<u32, Child>,
    next_id: u32,
    generation: u64,
    reload: Option<u64>,
    /// The reloads' outcome, for `oxbus reload` (`crate::lifecycle::reload`).
    reloads: Arc<crate::lifecycle::reload::Reloads>,
    desired: u32,
    boot_failures_in_a_row: u32,
    recent_crashes: VecDeque<Instant>,
    started_at: Instant,
    shutting_down: Option<Sig>,
    http_drained: bool,
    inbound_drained: bool,
    shutdown_tx: watch::Sender<bool>,
    last_heartbeat: Instant,
    last_rss_check: Instant,
}

/// What boot hands the supervisor loop.
pub struct Parts {
    pub settings: Settings,
    pub pool: Arc<Pool>,
    pub node: Arc<Node>,
    pub notifier: Arc<Notifier>,
    /// Called once shutdown starts: the scheduler's lead passes on before the workers are
    /// retired (runs claimed from then on would find no worker), and the inbound channels
    /// stop consuming and drain; their owner sends [`Event::InboundDrained`] when they did
    /// (after SIGTERM the workers wait for it). On SIGINT it runs before every worker is
    /// killed.
    pub on_stop: Box<dyn Fn() + Send>,
    pub events: mpsc::UnboundedSender<Event>,
    pub launch: Launch,
    pub reloads: Arc<crate::lifecycle::reload::Reloads>,
    pub shutdown_tx: watch::Sender<bool>,
    pub started_at: Instant,
}

impl Supervisor {
    pub fn new(p: Parts) -> Supervisor {
        Supervisor {
            desired: p.settings.worker_count(),
            settings: p.settings,
            pool: p.pool,
            node: p.node,
            notifier: p.notifier,
            on_stop: p.on_stop,
            events: p.events,
            launch: p.launch,
            children: HashMap::new(),
            next_id: 1,
            generation: 1,
            reload: None,
            reloads: p.reloads,
            boot_failures_in_a_row: 0,
            recent_crashes: VecDeque::new(),
            started_at: p.started_at,
            shutting_down: None,
            http_drained: false,
            inbound_drained: false,
            shutdown_tx: p.shutdown_tx,
            last_heartbeat: Instant::now(),
            last_rss_check: Instant::now(),
        }
    }

    /// Starts the first generation.
    pub fn start(&mut self) -> Result<(), ServerError> {
        for _ in 0..self.desired {
            self.spawn_worker(1, None)?;
        }
        Ok(())
    }

    /// Handles events until the server is told to stop, then kills every child left.
    pub async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) -> Result<Outcome, ServerError> {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let event = tokio::select! {
                ev = events.recv() => ev.expect("the supervisor holds a sender"),
                _ = tick.tick() => { self.on_tick(); continue; }
            };
            match self.handle(event) {
                Ok(Some(outcome)) => break Ok(outcome),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        self.kill_all();
        result
    }

    fn spawn_worker(&mut self, generation: u64, replaces: Option<u32>) -> Result<(), ServerError> {
        let id = self.next_id;
        self.next_id += 1;
        let token = crate::random::random_hex(16);
        let s = &self.settings.workers;
        let recycle_at = if s.max_requests == 0 {
            0
        } else {
            s.max_requests + crate::random::random_below(s.max_requests_jitter + 1)
        };
        // The lowest slot no live worker holds: bounded by twice the workers (a replacement
        // runs beside the worker it replaces), whatever the number of restarts.
        let slot = (0..)
            .find(|n| !self.children.values().any(|c| c.worker.slot == *n))
            .expect("a free slot");
        let worker = Arc::new(Worker::new(id, slot, generation, token.clone(), recycle_at));
        self.pool.add(worker.clone());
        let (pid, tail, waiter) = match process::spawn(&self.launch, id, generation, &token) {
            Ok(x) => x,
            Err(e) => {
                self.pool.remove(id);
                return Err(ServerError::Fatal(e.to_string()));
            }
        };
        worker.pid.store(pid, Ordering::Relaxed);
        debug!(id, pid, generation, "worker spawned");
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = waiter.await.ok().and_then(|r| r.ok());
            let _ = events.send(Event::WorkerExited { id, status });
        });
        self.children.insert(
            id,
            Child {
                generation,
                pid,
                tail,
                ready: false,
                replaces,
                retire: None,
                worker,
                killed_for: None,
            },
        );
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<Option<Outcome>, ServerError> {
        match event {
            Event::Signal(sig) => return Ok(self.on_signal(sig)),
            Event::WorkerReady { id } => self.on_ready(id),
            Event::WorkerExited { id, status } => return self.on_exit(id, status),
            Event::Recycle { id, reason } => self.on_recycle(id, reason)?,
            Event::Stuck { id } => {
                self.on_stuck(id, "a request passed its deadline on this worker")?
            }
            Event::Replace { id, reason } => self.on_stuck(id, reason)?,
            Event::Respawn {
                generation,
                replaces,
            } => {
                let wanted = generation == self.generation || Some(generation) == self.reload;
                if self.shutting_down.is_none() && wanted {
                    self.spawn_worker(generation, replaces)?;
                }
            }
            Event::StopAccepting => {
                info!("closing the listener; draining in-flight requests");
                let _ = self.shutdown_tx.send(true);
            }
            Event::HttpDrained => {
                self.http_drained = true;
                return Ok(self.retire_all_if_drained());
            }
            Event::InboundDrained => {
                self.inbound_drained = true;
                return Ok(self.retire_all_if_drained());
            }
        }
        Ok(None)
    }

    /// Once both the HTTP layer and the inbound channels drained (each bounded by its drain
    /// timeout), every worker is retired: the services in flight for either have finished.
    fn retire_all_if_drained(&mut self) -> Option<Outcome> {
        if !(self.http_drained && self.inbound_drained) {
            return None;
        }
        let ids: Vec<u32> = self.children.keys().copied().collect();
        for id in ids {
            self.retire(id, false);
        }
        self.children.is_empty().then_some(Outcome { exit_code: 0 })
    }

    fn on_signal(&mut self, sig: Sig) -> Option<Outcome> {
        match sig {
            Sig::Stall => {
                let ms = std::env::var("OXBUS_FAULT_STALL_MS")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                warn!(
                    ms,
                    "fault injection: the supervisor loop stalls (OXBUS_FAULT_STALL_MS)"
                );
                std::thread::sleep(Duration::from_millis(ms));
                None
            }
            Sig::Hup => {
                if self.shutting_down.is_some() {
                    return None;
                }
                if let Some(g) = self.reload {
                    warn!(
                        generation = g,
                        "SIGHUP ignored: a rolling restart is already in progress"
                    );
                    return None;
                }
                let g = self.generation + 1;
                info!(generation = g, "SIGHUP: rolling restart of all workers");
                self.reload = Some(g);
                self.reloads.started();
                self.notifier.reloading(&format!(
                    "reloading: rolling restart of {} workers",
                    self.desired
                ));
                for _ in 0..self.desired {
                    if let Err(e) = self.spawn_worker(g, None) {
                        error!(error = %e, "rolling restart failed to spawn a worker; keeping the current generation");
                        self.abort_reload(g, &format!("cannot spawn a worker: {e}"));
                        break;
                    }
                }
                None
            }
            Sig::Term => {
                if self.shutting_down.is_some() {
                    return None;
                }
                info!(
                    drain_ms = self.settings.http.drain_timeout_ms,
                    "SIGTERM: draining (readiness now 503, in-flight requests finish)"
                );
                self.shutting_down = Some(Sig::Term);
                self.reloads.stopping();
                self.node.ready.store(false, Ordering::SeqCst);
                // The stop hook (the scheduler's lead passes on) runs now, before the workers are
                // retired: runs claimed from here on would find no worker.
                (self.on_stop)();
                self.notifier
                    .stopping("stopping: draining in-flight requests");
                let delay = Duration::from_millis(self.settings.http.shutdown_delay_ms);
                if delay.is_zero() {
                    let _ = self.shutdown_tx.send(true);
                } else {
                    info!(
                        delay_ms = delay.as_millis() as u64,
                        "still serving while load balancers see /readyz 503"
                    );
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = events.send(Event::StopAccepting);
                    });
                }
                None
            }
            Sig::Int => {
                info!("SIGINT: stopping now");
                self.shutting_down = Some(Sig::Int);
                self.reloads.stopping();
                self.node.ready.store(false, Ordering::SeqCst);
                (self.on_stop)();
                self.notifier.stopping("stopping now (SIGINT)");
                Some(Outcome { exit_code: 0 })
            }
        }
    }

    fn on_ready(&mut self, id: u32) {
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        child.ready = true;
        let generation = child.generation;
        let replaces = child.replaces;
        let services = child.worker.services.lock().expect("services lock").len();
        info!(id, pid = child.pid, generation, services, "worker ready");
        self.boot_failures_in_a_row = 0;
        if let Some(old) = replaces {
            self.retire(old, false);
        }
        if let Some(g) = self.reload.filter(|g| *g == generation) {
            let ready_new = self
                .children
                .values()
                .filter(|c| c.generation == g && c.ready && c.retire.is_none())
                .count();
            if ready_new as u32 >= self.desired {
                let old: Vec<u32> = self
                    .children
                    .iter()
                    .filter(|(_, c)| c.generation < g)
                    .map(|(id, _)| *id)
                    .collect();
                for id in old {
                    self.retire(id, false);
                }
                self.generation = g;
                self.reload = None;
                self.reloads.done(g);
                info!(
                    generation = g,
                    "rolling restart complete: new generation serving, old one draining"
                );
                self.notifier.ready(&self.status_line());
            }
        }
        if !self.node.ready.load(Ordering::SeqCst) && self.shutting_down.is_none() {
            let ready = self.children.values().filter(|c| c.ready).count();
            if ready as u32 >= self.desired {
                self.node.ready.store(true, Ordering::SeqCst);
                info!(
                    workers = ready,
                    startup_ms = self.started_at.elapsed().as_millis() as u64,
                    "server ready"
                );
                self.notifier.ready(&self.status_line());
            }
        }
        self.pool.capacity_changed();
    }

    fn on_exit(
        &mut self,
        id: u32,
        status: Option<ExitStatus>,
    ) -> Result<Option<Outcome>, ServerError> {
        self.pool.remove(id);
        let Some(child) = self.children.remove(&id) else {
            return Ok(None);
        };
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
        child.worker.exit.send_replace(Some(match (code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            (None, None) => "ended (status unknown)".to_owned(),
        }));
        if self.shutting_down.is_some() {
            debug!(id, ?code, "worker exited during shutdown");
            if self.children.is_empty() && self.http_drained && self.inbound_drained {
                return Ok(Some(Outcome { exit_code: 0 }));
            }
            return Ok(None);
        }
        if child.retire.is_some() {
            info!(id, pid = child.pid, ?code, ?signal, "retired worker exited");
            return Ok(None);
        }
        let reason = child
            .worker
            .boot_error
            .lock()
            .expect("boot_error lock")
            .clone()
            .unwrap_or_else(|| child.tail.text());
        // These codes are the worker's own verdict on its boot, so they mean something only
        // before its READY: a worker that was serving exits with 2, 3 or 4 only because user
        // code called `os._exit` with it (a handler, a deployed module's import), which is a
        // crash of that worker, not a reason to stop every other service.
        let handshaken = child.worker.handshaken.load(Ordering::SeqCst);
        if !handshaken
            && matches!(
                code,
                Some(exit_code::IMPORT_FAILED)
                    | Some(exit_code::HANDSHAKE_REFUSED)
                    | Some(exit_code::BAD_ARGS)
            )
        {
            let what = match code {
                Some(exit_code::IMPORT_FAILED) => "the services could not be imported",
                Some(exit_code::HANDSHAKE_REFUSED) => "the worker refused the handshake",
                _ => "the worker rejected its command line",
            };
            if Some(child.generation) == self.reload {
                error!(
                    id,
                    "rolling restart aborted, {what}; the current generation keeps serving:\n{reason}"
                );
                self.abort_reload(child.generation, &format!("{what}:\n{reason}"));
                return Ok(None);
            }
            return Err(ServerError::Fatal(format!(
                "worker {id} (pid {}) exited with code {}: {what}; restarting will not help:\n{reason}",
                child.pid,
                code.unwrap_or(-1)
            )));
        }
        error!(
            id,
            pid = child.pid,
            ?code,
            ?signal,
            ready = child.ready,
            "worker died; its in-flight requests got 503; respawning"
        );
        if !child.ready {
            self.boot_failures_in_a_row += 1;
            if self.boot_failures_in_a_row >= 5 {
                return Err(ServerError::Fatal(format!(
                    "crash loop: workers died {} times in a row before becoming ready; last stderr:\n{reason}",
                    self.boot_failures_in_a_row
                )));
            }
        }
        self.restarted(child.killed_for.unwrap_or(Restart::Crash));
        let now = Instant::now();
        self.recent_crashes.push_back(now);
        while self
            .recent_crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.recent_crashes.pop_front();
        }
        let n = self.recent_crashes.len() as u32;
        let delay = Duration::from_millis((50u64 << n.min(7)).min(5000));
        let events = self.events.clone();
        let generation = if Some(child.generation) == self.reload {
            child.generation
        } else {
            self.generation
        };
        let replaces = child.replaces;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Respawn {
                generation,
                replaces,
            });
        });
        Ok(None)
    }

    fn abort_reload(&mut self, g: u64, why: &str) {
        self.reload = None;
        self.reloads.failed(why);
        // The reload is over (it failed; the old generation serves on).
        self.notifier
            .ready(&format!("{} (the last reload failed)", self.status_line()));
        let ids: Vec<u32> = self
            .children
            .iter()
            .filter(|(_, c)| c.generation == g)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.retire(id, true);
        }
    }

    fn on_recycle(&mut self, id: u32, reason: &'static str) -> Result<(), ServerError> {
        // Under the debugger the one worker stays whatever it served or holds: its
        // replacement would have to start debugpy while this one still holds the port.
        if self.shutting_down.is_some() || self.debugging() {
            return Ok(());
        }
        let Some(child) = self.children.get(&id) else {
            return Ok(());
        };
        if child.retire.is_some() || self.children.values().any(|c| c.replaces == Some(id)) {
            return Ok(());
        }
        let generation = child.generation;
        info!(
            id,
            pid = child.pid,
            reason,
            served = child.worker.served(),
            "recycling worker: replacement first, then drain"
        );
        self.restarted(if reason == RECYCLE_RSS {
            Restart::RecycleRss
        } else {
            Restart::RecycleRequests
        });
        self.spawn_worker(generation, Some(id))
    }

    /// Replaces a worker that is stuck (`reason`): its replacement starts first, it takes no
    /// new work, and it is killed once its in-flight requests are done (or at the drain
    /// deadline); a deploy's import spinning in it only costs CPU meanwhile.
    fn on_stuck(&mut self, id: u32, reason: &'static str) -> Result<(), ServerError> {
        let debugging = self.debugging();
        let Some(child) = self.children.get_mut(&id) else {
            return Ok(());
        };
        if let Some(r) = &mut child.retire {
            r.kill_when_idle = true;
            return Ok(());
        }
        if debugging {
            // Most likely stopped at a breakpoint: the call past its deadline got its
            // answer (504, or the deploy's error); the worker carries on once resumed.
            warn!(
                id,
                pid = child.pid,
                reason,
                "the worker under the debugger is past a deadline (stopped at a breakpoint?); \
                 debug mode keeps it"
            );
            return Ok(());
        }
        warn!(id, pid = child.pid, reason, "replacing the worker");
        let generation = child.generation;
        // No new work for it from now on, before the replacement is even spawned.
        self.pool.mark_draining(&child.worker);
        let spawned = if self.shutting_down.is_none() {
            self.restarted(Restart::Deadline);
            self.spawn_worker(generation, None)
        } else {
            Ok(())
        };
        self.retire(id, true);
        spawned
    }

    /// Stops dispatch to a worker; it gets `DRAIN` (or SIGKILL if `kill`) once idle.
    fn retire(&mut self, id: u32, kill: bool) {
        let deadline =
            Instant::now() + Duration::from_millis(self.settings.workers.drain_timeout_ms);
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        if child.retire.is_some() {
            return;
        }
        self.pool.mark_draining(&child.worker);
        child.retire = Some(Retire {
            kill_when_idle: kill,
            drain_sent: false,
            deadline,
        });
        self.advance_retirement(id);
    }

    fn advance_retirement(&mut self, id: u32) {
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        let Some(r) = &mut child.retire else {
            return;
        };
        let w = &child.worker;
        if Instant::now() >= r.deadline {
            warn!(
                id,
                pid = child.pid,
                inflight = w.inflight(),
                "worker did not drain in time; killing it"
            );
            process::signal(child.pid, Signal::SIGKILL);
            r.deadline = Instant::now() + Duration::from_secs(3600);
            return;
        }
        if r.drain_sent || w.inflight() > 0 {
            return;
        }
        r.drain_sent = true;
        if r.kill_when_idle || !child.ready || w.state() == WorkerState::Dead {
            process::signal(child.pid, Signal::SIGKILL);
        } else {
            w.send_frame(&Frame::new(Kind::Drain, 0, bytes::Bytes::new()));
        }
    }

    /// systemd's STATUS= line: workers, config version, store health.
    fn status_line(&self) -> String {
        let ready = self
            .children
            .values()
            .filter(|c| c.ready && c.retire.is_none())
            .count();
        format!(
            "workers {ready}/{} ready, config version {}, store {}",
            self.desired,
            self.node.applied_version.load(Ordering::SeqCst),
            if self.node.store_ok.load(Ordering::SeqCst) {
                "ok"
            } else {
                "degraded"
            }
        )
    }

    fn on_tick(&mut self) {
        self.notifier.progress();
        if self.shutting_down.is_none()
            && self.reload.is_none()
            && self.node.ready.load(Ordering::SeqCst)
        {
            self.notifier.status(&self.status_line());
        }
        let ids: Vec<u32> = self
            .children
            .iter()
            .filter(|(_, c)| c.retire.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.advance_retirement(id);
        }
        let hb = Duration::from_millis(self.settings.workers.heartbeat_ms);
        if self.last_heartbeat.elapsed() >= hb {
            self.last_heartbeat = Instant::now();
            let now_ms = self.pool.now_ms();
            let limit = 3 * self.settings.workers.heartbeat_ms;
            let debugging = self.debugging();
            let nonce = now_ms.to_be_bytes().to_vec();
            for (id, c) in &mut self.children {
                if !c.ready || c.retire.is_some() {
                    continue;
                }
                // A worker stopped at a breakpoint answers no ping, and is meant to live.
                if !debugging && now_ms.saturating_sub(c.worker.last_pong_ms()) > limit {
                    error!(
                        id,
                        pid = c.pid,
                        "worker stopped answering heartbeats; killing it"
                    );
                    process::signal(c.pid, Signal::SIGKILL);
                    c.killed_for = Some(Restart::Heartbeat);
                    continue;
                }
                c.worker
                    .send_frame(&Frame::new(Kind::Ping, 0, nonce.clone()));
            }
        }
        let max_rss = self.settings.workers.max_rss_mb * 1024 * 1024;
        if max_rss > 0 && self.last_rss_check.elapsed() >= Duration::from_millis(500) {
            self.last_rss_check = Instant::now();
            let over: Vec<u32> = self
                .children
                .iter()
                .filter(|(_, c)| c.ready && c.retire.is_none())
                .filter(|(_, c)| process::rss_bytes(c.pid).is_some_and(|r| r > max_rss))
                .map(|(id, _)| *id)
                .collect();
            for id in over {
                if let Err(e) = self.on_recycle(id, RECYCLE_RSS) {
                    error!(error = %e, "cannot recycle a worker");
                }
            }
        }
    }

    /// Debug mode: the one worker runs under debugpy (`[debug] port`).
    fn debugging(&self) -> bool {
        self.launch.debug_port.is_some()
    }

    /// Counts a worker replaced for `reason` (when metrics are on).
    fn restarted(&self, reason: Restart) {
        if self.pool.metrics.enabled() {
            self.pool.metrics.workers.restarted(reason);
        }
    }

    fn kill_all(&mut self) {
        for c in self.children.values() {
            process::signal(c.pid, Signal::SIGKILL);
        }
    }
}

/// The recycle reason of a worker over `workers.max_rss_mb` (the other one, `max_requests`,
/// comes from the pool).
const RECYCLE_RSS: &str = "max_rss";

/// Turns the signals the server acts on into [`Event`]s.
pub fn spawn_signal_listener(events: mpsc::UnboundedSender<Event>) {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::terminate(), Sig::Term),
        (SignalKind::interrupt(), Sig::Int),
        (SignalKind::hangup(), Sig::Hup),
    ];
    // Fault injection, only when OXBUS_FAULT_STALL_MS is set (tests of the watchdog): SIGUSR2
    // blocks the supervisor loop for that long, as a deadlock would.
    let stall = std::env::var("OXBUS_FAULT_STALL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|_| (SignalKind::user_defined2(), Sig::Stall));
    for (kind, sig) in kinds.into_iter().chain(stall) {
        let events = events.clone();
        match signal(kind) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        let _ = events.send(Event::Signal(sig));
                    }
                });
            }
            Err(e) => error!(error = %e, ?sig, "cannot install a signal handler"),
        }
    }
}
