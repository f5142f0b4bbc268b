//! The worker handshake: a started worker connects to the IPC socket, says HELLO with its id
//! and token, gets WELCOME, loads its services and answers READY; then it loads every
//! deployed module this server runs (through [`Modules`], which the deploy side provides)
//! before it turns ready and takes traffic. Owns nothing but the connection until it hands it
//! to the pool; it names no subsystem above the workers' lifecycle.

use bytes::BytesMut;
use nix::sys::signal::Signal;
use oxbus_ipc::{ErrorMsg, Frame, FrameDecoder, Hello, Kind, PROTOCOL_VERSION, Ready, Welcome};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info, warn};

use crate::lifecycle::pool::{Pool, Worker, WorkerState};
use crate::lifecycle::supervisor::Event;
use crate::store::Module;

/// Why a [`Modules`] call failed: the deploy side's own error, whose text goes into the
/// worker's boot error.
pub type ModulesError = Box<dyn std::error::Error + Send + Sync>;

/// A future a [`Modules`] call returns.
pub type ModulesCall<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ModulesError>> + Send + 'a>>;

/// How a worker that just said READY gets the deployed modules (the `modules.*` calls of the
/// IPC spec, which the deploy side owns).
pub trait Modules: Send + Sync {
    /// Activates `modules` in `worker` before `deadline`.
    fn activate<'a>(
        &'a self,
        pool: &'a Pool,
        worker: &'a Arc<Worker>,
        modules: &'a [Module],
        deadline: Instant,
    ) -> ModulesCall<'a>;
    /// Removes the modules `names` from `worker` before `deadline`.
    fn remove<'a>(
        &'a self,
        pool: &'a Pool,
        worker: &'a Arc<Worker>,
        names: &'a [&'a str],
        deadline: Instant,
    ) -> ModulesCall<'a>;
}

/// Why a worker's handshake failed (logged; the worker is then replaced as a crashed one is).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The worker broke the protocol, refused to start, or ran out of time.
    #[error("{0}")]
    Worker(String),
}

/// What every worker is welcomed with, and how it loads the deployed modules.
#[derive(Clone)]
pub struct WelcomeTemplate {
    pub threads: u32,
    pub services_dir: String,
    pub heartbeat_ms: u64,
    pub log_level: String,
    pub startup_timeout: Duration,
    /// Set once a worker has loaded the stored modules; until then the workers take turns
    /// (see `handshake`).
    pub modules_loaded: Arc<tokio::sync::Mutex<bool>>,
    pub modules: Arc<dyn Modules>,
}

/// Accepts workers on the IPC socket, one handshake task each, until the server ends.
pub async fn accept_workers(
    listener: UnixListener,
    pool: Arc<Pool>,
    events: mpsc::UnboundedSender<Event>,
    welcome: WelcomeTemplate,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let pool = pool.clone();
                let events = events.clone();
                let welcome = welcome.clone();
                tokio::spawn(async move {
                    if let Err(e) = handshake(stream, pool, events, welcome).await {
                        warn!(error = %e, "worker handshake failed");
                    }
                });
            }
            Err(e) => {
                error!(error = %e, "accept on the worker socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_frame(stream: &mut UnixStream, buf: &mut BytesMut) -> Result<Frame, HandshakeError> {
    let dec = FrameDecoder::with_max_payload(16 * 1024 * 1024);
    loop {
        if let Some(f) = dec.decode(buf).map_err(|e| failed(e.to_string()))? {
            return Ok(f);
        }
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            return Err(failed("worker closed the connection during the handshake"));
        }
    }
}

fn failed(why: impl Into<String>) -> HandshakeError {
    HandshakeError::Worker(why.into())
}

async fn send_error(stream: &mut UnixStream, code: &str, message: String) {
    let f = Frame::json(
        Kind::Error,
        &ErrorMsg {
            code: code.into(),
            message,
        },
    );
    let _ = stream.write_all(&f.to_bytes()).await;
}

async fn handshake(
    mut stream: UnixStream,
    pool: Arc<Pool>,
    events: mpsc::UnboundedSender<Event>,
    welcome: WelcomeTemplate,
) -> Result<(), HandshakeError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let hello = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream, &mut buf))
        .await
        .map_err(|_| failed("no HELLO within 10 s"))??;
    if hello.kind != Kind::Hello {
        send_error(&mut stream, "protocol_error", "expected HELLO".into()).await;
        return Err(failed(format!("expected HELLO, got {}", hello.kind.name())));
    }
    let h: Hello = match hello.parse_json() {
        Ok(h) => h,
        Err(e) => {
            send_error(&mut stream, "protocol_error", e.to_string()).await;
            return Err(failed(e.to_string()));
        }
    };
    if h.protocol != PROTOCOL_VERSION {
        let msg = format!(
            "oxbus supervisor speaks IPC protocol {PROTOCOL_VERSION}, this worker speaks {}: run the oxbus Python package that ships with this server",
            h.protocol
        );
        send_error(&mut stream, "protocol_mismatch", msg.clone()).await;
        return Err(failed(msg));
    }
    let Some(worker) = pool
        .get(h.worker_id)
        .filter(|w| w.token == h.token && w.state() == WorkerState::Starting)
    else {
        send_error(
            &mut stream,
            "bad_token",
            "unknown worker id or token".into(),
        )
        .await;
        return Err(failed(format!(
            "worker {} presented a bad token",
            h.worker_id
        )));
    };
    let span = tracing::info_span!(
        "worker",
        id = worker.id,
        pid = h.pid,
        generation = worker.generation
    );
    async move {
        let w = Welcome {
            protocol: PROTOCOL_VERSION,
            worker_id: worker.id,
            generation: worker.generation,
            threads: welcome.threads,
            services_dir: welcome.services_dir.clone(),
            heartbeat_ms: welcome.heartbeat_ms,
            log_level: welcome.log_level.clone(),
        };
        stream
            .write_all(&Frame::json(Kind::Welcome, &w).to_bytes())
            .await?;
        let deadline = tokio::time::Instant::now() + welcome.startup_timeout;
        loop {
            let f = tokio::time::timeout_at(deadline, read_frame(&mut stream, &mut buf))
                .await
                .map_err(|_| failed("worker did not become ready within the startup timeout"))??;
            match f.kind {
                Kind::Ready => {
                    worker.handshaken.store(true, Ordering::SeqCst);
                    let ready: Ready = f.parse_json().map_err(|e| failed(e.to_string()))?;
                    debug!(
                        services = ready.services.len(),
                        startup_ms = ready.startup_ms,
                        "worker loaded its services"
                    );
                    *worker.services.lock().expect("services lock") = ready.services;
                    break;
                }
                Kind::Error => {
                    let e: ErrorMsg = f.parse_json().map_err(|e| failed(e.to_string()))?;
                    *worker.boot_error.lock().expect("boot_error lock") = Some(e.message.clone());
                    return Err(failed(format!("worker failed to start: {}", e.code)));
                }
                Kind::Log => {
                    if let Ok(rec) = f.parse_json::<oxbus_ipc::LogRecord>() {
                        info!(target: "oxbus::python", logger = %rec.logger, "{}", rec.msg);
                    }
                }
                other => {
                    return Err(failed(format!("unexpected {} before READY", other.name())));
                }
            }
        }
        // Its own task (so that the deployed modules can be sent over it below), in this
        // worker's span so that the worker's log lines keep their context.
        let conn = tokio::spawn(
            crate::lifecycle::connection::run_connection(pool.clone(), worker.clone(), stream, buf)
                .instrument(tracing::Span::current()),
        );
        // Every deployed module this server runs, before any traffic. A deploy may land
        // while they load (it updates `pool.deployed` first, then activates in the workers
        // that are ready, which this one is not yet): load until nothing differs, and turn
        // ready while holding the lock, so a deploy either is seen here or sees this worker.
        let mut loaded: std::collections::BTreeMap<String, i64> = Default::default();
        let mut first_batch = true;
        loop {
            let (todo, gone): (Vec<Module>, Vec<String>) = {
                let deployed = pool.deployed.lock().expect("deployed lock");
                let todo: Vec<_> = deployed
                    .values()
                    .filter(|m| loaded.get(&m.name) != Some(&m.version))
                    .cloned()
                    .collect();
                let gone: Vec<_> = loaded
                    .keys()
                    .filter(|n| !deployed.contains_key(*n))
                    .cloned()
                    .collect();
                if todo.is_empty() && gone.is_empty() {
                    worker_ready(&worker, pool.now_ms());
                    break;
                }
                (todo, gone)
            };
            if !gone.is_empty() {
                let names: Vec<&str> = gone.iter().map(String::as_str).collect();
                let within = std::time::Instant::now() + welcome.startup_timeout;
                welcome
                    .modules
                    .remove(&pool, &worker, &names, within)
                    .await
                    .map_err(|e| {
                        failed(format!("the worker could not drop undeployed modules: {e}"))
                    })?;
                for n in &gone {
                    loaded.remove(n);
                }
            }
            if todo.is_empty() {
                continue;
            }
            // Until one worker has loaded them, one at a time: the first compiles them into
            // the workers' code cache, and the others, started with it, load bytecode
            // instead of all compiling every stored module at once on a few cores.
            let mut first = None;
            if first_batch {
                first = Some(welcome.modules_loaded.lock().await);
                if first.as_deref() == Some(&true) {
                    first = None;
                }
            }
            first_batch = false;
            let within = std::time::Instant::now() + welcome.startup_timeout;
            let result = welcome
                .modules
                .activate(&pool, &worker, &todo, within)
                .await;
            if let (Some(mut done), Ok(_)) = (first, &result) {
                *done = true;
            }
            if let Err(e) = result {
                let msg = format!("the worker could not load the deployed modules: {e}");
                *worker.boot_error.lock().expect("boot_error lock") = Some(msg.clone());
                crate::lifecycle::process::signal(
                    worker.pid.load(std::sync::atomic::Ordering::Relaxed),
                    Signal::SIGKILL,
                );
                return Err(HandshakeError::Worker(msg));
            }
            for m in &todo {
                loaded.insert(m.name.clone(), m.version);
            }
            debug!(modules = todo.len(), "deployed modules loaded");
        }
        let _ = events.send(Event::WorkerReady { id: worker.id });
        pool.capacity_changed();
        let _ = conn.await;
        Ok(())
    }
    .instrument(span)
    .await
}

fn worker_ready(worker: &Worker, now_ms: u64) {
    worker.set_last_pong(now_ms);
    if worker.state() == WorkerState::Starting {
        worker.set_state(WorkerState::Ready);
    }
}
