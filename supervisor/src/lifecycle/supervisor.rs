//! The supervisor: one event loop that owns the workers' lifecycle.
//!
//! Modelled on gunicorn's arbiter: signal handlers, child exits, worker readiness, recycle
//! requests and timer ticks are all variants of one [`Event`] enum, handled one at a time in
//! one loop, so there is no lock around lifecycle state and no race between, say, a SIGHUP
//! and a worker dying. SIGTERM drains gracefully within a deadline, SIGINT stops fast,
//! SIGHUP rolls every worker (generation N+1 is ready before generation N drains).

use bytes::BytesMut;
use nix::sys::signal::Signal;
use oxbus_ipc::{ErrorMsg, Frame, FrameDecoder, Hello, Kind, PROTOCOL_VERSION, Ready, Welcome};
use std::collections::{HashMap, VecDeque};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info, warn};

use crate::config::Settings;
use crate::edge::router::Router;
use crate::lifecycle::pool::{Pool, Worker, WorkerState};
use crate::lifecycle::process::{self, Launch, StderrTail, exit_code};
use crate::lifecycle::python::RuntimeDir;

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

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// State shared with the HTTP layer.
#[derive(Debug)]
pub struct Shared {
    pub pool: Arc<Pool>,
    /// The routing table: server.toml's channels plus the store's. Swapped whole when a
    /// channel is created or deleted; a request holds the `Arc` it started with.
    pub router: std::sync::RwLock<Arc<Router>>,
    pub settings: Settings,
    /// True once the first generation is up, false again once shutdown starts.
    pub ready: AtomicBool,
    pub cids: crate::edge::cid::CidGen,
    pub store: crate::store::Store,
    /// Seals and opens the store's secrets.
    pub key: crate::secrets::Key,
    /// This server's name in the store's server list.
    pub server_name: String,
    /// This run of the server (random, new at every start): the scheduler's lease belongs to
    /// a boot, not only to a name, so a server killed and restarted under the same name is
    /// a new candidate, not the old leader.
    pub boot_id: String,
    /// False while the config store is unreachable (the server serves on what it has).
    pub store_ok: AtomicBool,
    /// The config version this server has applied (see `sync`).
    pub applied_version: std::sync::atomic::AtomicI64,
    /// The config version of the on-disk snapshot (-1: not written by this run yet).
    pub snapshot_version: Arc<std::sync::atomic::AtomicI64>,
    /// The snapshot on disk as this run last wrote it (or booted from it): what a rewrite
    /// with a new peer list starts from (see `sync::peers_seen`).
    pub snapshot_on_disk: Arc<std::sync::Mutex<Option<crate::cluster::snapshot::Snapshot>>>,
    /// Notified after a change made through this server, or when a peer announces a
    /// version this server has not applied: `sync` runs at once.
    pub changed: tokio::sync::Notify,
    /// The cluster bus, when this server runs one.
    pub bus: Option<Arc<crate::cluster::bus::Bus>>,
    pub started: Instant,
    /// One deploy at a time, so every worker sees module changes in the same order. Never
    /// held while a worker runs a deploy's check (see `deploy`): channel and other changes
    /// take it too, and must not wait on user code.
    pub deploy_lock: tokio::sync::Mutex<()>,
    /// One deploy check at a time on this server (each under `deploy.check_timeout_ms`).
    pub check_lock: tokio::sync::Mutex<()>,
    /// The scheduler's job definitions as this server has them (by name): from the config it
    /// booted from, then as `sync` and this server's own changes leave them. Swapped whole
    /// through [`crate::scheduler::jobs::set_live`], which notifies `jobs_changed`.
    pub jobs: std::sync::RwLock<Arc<Vec<crate::model::job::JobDef>>>,
    /// Notified (`notify_one`: a permit is kept until the scheduler waits again) whenever
    /// `jobs` changes.
    pub jobs_changed: tokio::sync::Notify,
    /// Whether this server leads the cluster's scheduler (`crate::scheduler`).
    pub scheduler: Arc<crate::scheduler::Status>,
    /// systemd's notify socket and watchdog (no-ops without them).
    pub notifier: Arc<crate::lifecycle::sdnotify::Notifier>,
}

/// The secrets key: the systemd credential or the key file (created when missing and the
/// store holds no secret); refused when the store's secrets were sealed with another key.
/// `sealed` is one sealed value the store (or the snapshot) holds, if any.
fn load_secret_key(
    settings: &Settings,
    sealed: Option<&str>,
) -> Result<crate::secrets::Key, ServerError> {
    let stored_id = sealed.and_then(crate::secrets::sealed_key_id);
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    let key = crate::secrets::Key::load(creds.as_deref(), &settings.secret_key_file(), stored_id)
        .map_err(|e| ServerError::Fatal(e.to_string()))?;
    if let Some(id) = stored_id.filter(|id| *id != key.id()) {
        return Err(ServerError::Fatal(format!(
            "the config store's secrets were sealed with key {id}, but {} holds key {}: \
             point store.key_file (or the systemd credential {}) at the right key",
            key.source.display(),
            key.id(),
            crate::secrets::CREDENTIAL
        )));
    }
    info!(key = key.id(), file = %key.source.display(), "secrets key loaded");
    Ok(key)
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

struct Supervisor {
    settings: Settings,
    shared: Arc<Shared>,
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
    shutdown_tx: watch::Sender<bool>,
    last_heartbeat: Instant,
    last_rss_check: Instant,
}

/// Runs a server until it is told to stop. Returns the process exit code.
pub async fn run(settings: Settings) -> Result<Outcome, ServerError> {
    let started_at = Instant::now();
    // Before anything is created: the store, its -wal/-shm, the snapshot, the key and token
    // files, the runtime and pickup directories all come out private (see `process`).
    process::private_umask();
    let services_dir = settings.services_dir();
    ensure_services_dir(&services_dir)?;
    // The pickup directory is watched from now on, so nothing saved while the workers
    // start is missed; what it holds is deployed once the server is ready.
    let pickup = match settings.pickup_dir() {
        Some(dir) => Some(crate::deploy::watch::start_pickup(&dir).map_err(ServerError::Fatal)?),
        None => None,
    };
    let runtime = RuntimeDir::create(settings.server.runtime_dir.as_deref())
        .map_err(io_err("cannot create the runtime directory"))?;
    let python_path = runtime
        .unpack_python()
        .map_err(io_err("cannot unpack the oxbus Python package"))?;
    crate::lifecycle::python::precompile(&settings.server.python, &python_path).await;
    let socket = runtime.socket_path();
    let _ = std::fs::remove_file(&socket);
    let ipc = UnixListener::bind(&socket)
        .map_err(io_err(format!("cannot listen on {}", socket.display())))?;
    // A listener systemd holds (socket activation) queues connections while the server
    // restarts instead of refusing them; without one, bind as configured.
    let listener = match crate::edge::http::activated()
        .map_err(io_err("cannot use the socket systemd passed (LISTEN_FDS)"))?
    {
        Some(l) => {
            info!(
                address = %l.local_addr().map_err(io_err("local_addr"))?,
                "HTTP listener from systemd (socket activation); server.listen is not used"
            );
            l
        }
        None => crate::edge::http::bind(settings.server.listen).map_err(io_err(format!(
            "cannot listen on {}",
            settings.server.listen
        )))?,
    };
    let store_url = settings.store_url();
    let boot = open_store(&settings, &store_url).await?;
    let store = boot.store;
    let mut channels = settings.channels.clone();
    channels.extend(boot.snapshot.channels.iter().cloned());
    let key = load_secret_key(
        &settings,
        boot.snapshot
            .secrets
            .first()
            .map(|s| s.sealed.as_str())
            .or_else(|| {
                boot.snapshot
                    .security
                    .iter()
                    .find_map(|d| d.sealed.as_deref())
            }),
    )?;
    let router =
        Router::with_gate(&channels, &boot.snapshot.security, &key, None).map_err(|e| {
            ServerError::Fatal(format!(
                "the channels of server.toml and of the config store do not fit together: {e}"
            ))
        })?;
    let admin_token = crate::admin::load_or_create_token(&settings.admin_token_file()).map_err(
        io_err(format!(
            "cannot read or create the admin token file {}",
            settings.admin_token_file().display()
        )),
    )?;
    let admin_listener = crate::edge::http::bind(settings.admin.listen).map_err(io_err(
        format!("cannot listen on {} (admin API)", settings.admin.listen),
    ))?;
    let admin_local = admin_listener.local_addr().map_err(io_err("local_addr"))?;
    let local = listener.local_addr().map_err(io_err("local_addr"))?;
    let mut me = server_record(&settings, local);
    let bus = start_bus(&settings, &store, &mut me).await?;
    if let Some((bus, _)) = &bus {
        // Where the peers were as the store last listed them: dialed while the store is down.
        bus.know(
            boot.snapshot
                .peers
                .iter()
                .map(|p| (p.name.clone(), p.bus_address.clone()))
                .collect(),
        );
    }
    if boot.online {
        register_server(&store, &me).await?;
    } else {
        warn!(server = %me.name, "not registered in the config store yet (it is down): the heartbeat registers once it is back");
    }

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let pool = Arc::new(
        Pool::new(
            settings.workers.max_inflight as usize,
            settings.workers.max_queue as usize,
            settings.request_timeout(),
            ev_tx.clone(),
        )
        .with_import_timeout(Duration::from_millis(settings.deploy.check_timeout_ms))
        .with_activate_timeout(Duration::from_millis(settings.workers.startup_timeout_ms)),
    );
    *pool.deployed.lock().expect("deployed lock") = boot
        .snapshot
        .modules
        .iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    pool.caches.set_server(&me.name);
    // The stored cache definitions, before any worker is started (and so before any request).
    pool.caches.apply_defs(&boot.snapshot.caches);
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        router: std::sync::RwLock::new(Arc::new(router)),
        settings: settings.clone(),
        ready: AtomicBool::new(false),
        cids: crate::edge::cid::CidGen::new(),
        store,
        key,
        server_name: me.name.clone(),
        boot_id: crate::secrets::random_hex(6),
        store_ok: AtomicBool::new(boot.online),
        applied_version: std::sync::atomic::AtomicI64::new(boot.snapshot.config_version),
        snapshot_version: Arc::new(std::sync::atomic::AtomicI64::new(if boot.online {
            -1
        } else {
            boot.snapshot.config_version
        })),
        snapshot_on_disk: Arc::new(std::sync::Mutex::new(
            (!boot.online).then(|| boot.snapshot.clone()),
        )),
        changed: tokio::sync::Notify::new(),
        bus: bus.as_ref().map(|(b, _)| b.clone()),
        started: started_at,
        deploy_lock: tokio::sync::Mutex::new(()),
        check_lock: tokio::sync::Mutex::new(()),
        jobs: std::sync::RwLock::new(Arc::new(boot.snapshot.jobs.clone())),
        jobs_changed: tokio::sync::Notify::new(),
        scheduler: Default::default(),
        notifier: Arc::new(crate::lifecycle::sdnotify::Notifier::from_env()),
    });

    let welcome = WelcomeTemplate {
        threads: settings.server.threads,
        services_dir: services_dir.display().to_string(),
        heartbeat_ms: settings.workers.heartbeat_ms,
        log_level: python_log_level(&settings.server.log_level),
        startup_timeout: Duration::from_millis(settings.workers.startup_timeout_ms),
        modules_loaded: Arc::new(tokio::sync::Mutex::new(false)),
    };
    tokio::spawn(accept_workers(ipc, pool.clone(), ev_tx.clone(), welcome));
    spawn_signal_listener(ev_tx.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let pickup_dir = match pickup {
        Some(w) => {
            let dir = w.dir().display().to_string();
            tokio::spawn(crate::deploy::watch::pickup(
                shared.clone(),
                w,
                shutdown_rx.clone(),
            ));
            dir
        }
        None => "none".to_owned(),
    };
    tokio::spawn(crate::edge::http::serve(
        listener,
        shared.clone(),
        shutdown_rx,
        ev_tx.clone(),
    ));
    tokio::spawn(crate::admin::serve(
        admin_listener,
        shared.clone(),
        admin_token,
    ));
    tokio::spawn(server_heartbeat(shared.clone(), me.clone()));
    if let Some((bus, listener)) = bus {
        let (cache_tx, cache_rx) = mpsc::unbounded_channel();
        pool.caches.replicate_to(cache_tx);
        tokio::spawn(crate::cluster::bus::replicate_caches(bus.clone(), cache_rx));
        tokio::spawn(crate::cluster::bus::listen(
            bus.clone(),
            shared.clone(),
            listener,
        ));
        tokio::spawn(crate::cluster::bus::dial_peers(bus, shared.clone()));
    }
    tokio::spawn(crate::cluster::sync::run(
        shared.clone(),
        boot.online.then_some(boot.snapshot),
    ));
    tokio::spawn(shared.notifier.clone().watch());
    // `oxbus reload --pid` (systemd's ExecReload=) reads the reloads' outcome here.
    let reloads = crate::lifecycle::reload::Reloads::new(1);
    match crate::lifecycle::reload::bind() {
        Ok(l) => {
            tokio::spawn(crate::lifecycle::reload::serve(l, reloads.clone()));
        }
        Err(e) => {
            warn!(error = %e, "no reload status socket: `oxbus reload` cannot follow this server's reloads")
        }
    }
    tokio::spawn(crate::scheduler::run(shared.clone()));

    let desired = settings.worker_count();
    info!(listen = %local, workers = desired, python = %settings.server.python,
          services = %services_dir.display(), admin = %admin_local, store = %crate::store::redact_url(&store_url),
          pickup = %pickup_dir, "oxbus server starting");
    let mut sup = Supervisor {
        launch: Launch {
            python: settings.server.python.clone(),
            cwd: settings.base_dir.clone(),
            python_path,
            socket,
        },
        settings,
        shared,
        events: ev_tx,
        children: HashMap::new(),
        next_id: 1,
        generation: 1,
        reload: None,
        reloads,
        desired,
        boot_failures_in_a_row: 0,
        recent_crashes: VecDeque::new(),
        started_at,
        shutting_down: None,
        http_drained: false,
        shutdown_tx,
        last_heartbeat: Instant::now(),
        last_rss_check: Instant::now(),
    };
    for _ in 0..desired {
        sup.spawn_worker(1, None)?;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let event = tokio::select! {
            ev = ev_rx.recv() => ev.expect("the supervisor holds a sender"),
            _ = tick.tick() => { sup.on_tick(); continue; }
        };
        match sup.handle(event) {
            Ok(Some(outcome)) => break Ok(outcome),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    sup.kill_all();
    // Peers see a clean stop, not a lost link (best effort: sent while deregistering).
    if let Some(bus) = &sup.shared.bus {
        bus.say_bye().await;
    }
    sup.shared.scheduler.stop();
    leave_store(&sup.shared, &me).await;
    drop(runtime);
    result
}

/// The services directory, created (private, like every directory the server makes) when
/// it is missing and its parent exists — as the pickup directory is: a server whose services
/// all come from deploys needs no file there, and a cluster's servers should not have to be
/// prepared by hand. A missing parent is a typo more likely than a wish, so it stays an error.
fn ensure_services_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(ServerError::Fatal(format!(
            "the services directory {} is not a directory",
            dir.display()
        )));
    }
    let parent = dir.parent().unwrap_or(std::path::Path::new("/"));
    if !parent.is_dir() {
        return Err(ServerError::Fatal(format!(
            "the services directory {} does not exist, nor does its parent {}: create it or fix [server] services_dir",
            dir.display(),
            parent.display()
        )));
    }
    std::fs::create_dir(dir).map_err(io_err(format!(
        "cannot create the services directory {}",
        dir.display()
    )))?;
    info!(dir = %dir.display(), "created the services directory");
    Ok(())
}

/// What a stop owes the store: the history of the scheduled runs that finished, the
/// scheduler's lease handed back (only by the server that holds it: the lead goes to another
/// server now, not when the lease runs out), this server's row removed. All of it within
/// `STOP_STORE_LIMIT`; none of it when one connection attempt finds nothing answering at
/// the store's address (asked even when the sync loop has not noticed an outage yet: it may
/// have begun a moment ago) — then the row goes stale (30 s) and a lease runs out (5 s) on
/// their own, and waiting would only delay the stop.
async fn leave_store(shared: &Shared, me: &crate::store::ServerRecord) {
    if let crate::store::Reach::Down(e) = shared.store.probe(Duration::from_secs(1)).await {
        info!(error = %e, "the config store is down: stopping without it (this server's row goes stale on its own, a scheduler lease it held runs out)");
        return;
    }
    let work = async {
        crate::scheduler::flush_history(&shared.scheduler, STOP_STORE_LIMIT).await;
        // A renewal the lease task had in flight lands (and is handed back by it) before
        // the hand-back below: none can put the lease back after it. Bounded apart, so that
        // a slow renewal does not use up the stop's budget and leave this server listed: at
        // worst a renewal landing late holds the lease for one more TTL.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            crate::scheduler::lease_task_ended(&shared.scheduler),
        )
        .await;
        if let Err(e) = crate::scheduler::hand_back(shared).await {
            warn!(error = %e, "could not hand the scheduler's lease back: another server leads once it runs out");
        }
        if let Err(e) = shared.store.deregister_server(&me.name, me.pid).await {
            warn!(error = %e, "could not remove this server from the store's server list");
        }
    };
    if tokio::time::timeout(STOP_STORE_LIMIT, work).await.is_err() {
        warn!(
            limit_s = STOP_STORE_LIMIT.as_secs(),
            "the config store did not answer at stop: this server's row goes stale and a scheduler lease it held runs out on their own"
        );
    }
}

/// How long a stop waits on the config store, all of it together.
const STOP_STORE_LIMIT: Duration = Duration::from_secs(3);

/// Binds the cluster bus when this server runs one (a PostgreSQL store and a cluster secret),
/// recording its address in `me`.
async fn start_bus(
    settings: &Settings,
    store: &crate::store::Store,
    me: &mut crate::store::ServerRecord,
) -> Result<Option<(Arc<crate::cluster::bus::Bus>, TcpListener)>, ServerError> {
    let Some(secret) = settings.cluster_secret_file() else {
        return Ok(None);
    };
    if matches!(store, crate::store::Store::Sqlite(_)) {
        warn!("cluster.secret_file is set but the store is SQLite (one server): no cluster bus");
        return Ok(None);
    }
    let bus = crate::cluster::bus::Bus::new(&settings.cluster.name, &me.name, &secret)
        .map_err(ServerError::Fatal)?;
    let listener = TcpListener::bind(settings.cluster.bus_listen)
        .await
        .map_err(io_err(format!(
            "cannot listen on {} (cluster bus)",
            settings.cluster.bus_listen
        )))?;
    let local = listener.local_addr().map_err(io_err("local_addr"))?;
    let advertised = settings.cluster.bus_address.unwrap_or(local);
    me.bus_address = Some(advertised.to_string());
    info!(bus = %local, advertised = %advertised, cluster = %settings.cluster.name, "cluster bus started");
    Ok(Some((Arc::new(bus), listener)))
}

/// This server's entry for the store's server list.
fn server_record(settings: &Settings, local: std::net::SocketAddr) -> crate::store::ServerRecord {
    let name = match &settings.cluster.server {
        Some(n) => n.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            // A bus name: lower-case letters, digits, '.', '_', '-'.
            let host: String = host
                .to_ascii_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '-'
                    }
                })
                .take(50)
                .collect();
            format!("{host}-{}", local.port())
        }
    };
    crate::store::ServerRecord {
        name,
        http_address: local.to_string(),
        oxbus_version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: i64::from(std::process::id()),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        last_seen: 0,
        config_version: 0,
        bus_address: None,
    }
}

/// Registers this server in the store (refused beyond the cluster limits).
async fn register_server(
    store: &crate::store::Store,
    me: &crate::store::ServerRecord,
) -> Result<(), ServerError> {
    let others = store.register_server(me).await.map_err(|e| match e {
        crate::store::StoreError::Invalid(m) => ServerError::Fatal(m),
        e => ServerError::Fatal(format!("cannot register in the config store: {e}")),
    })?;
    info!(
        server = %me.name,
        others = ?others.iter().map(|o| &o.name).collect::<Vec<_>>(),
        "registered in the config store"
    );
    Ok(())
}

/// What a server boots with: the store, and the config to serve until the first sync.
struct Boot {
    store: crate::store::Store,
    snapshot: crate::cluster::snapshot::Snapshot,
    /// False when the store was down and the snapshot came from disk.
    online: bool,
}

/// Opens the store and reads the config from it; when a PostgreSQL store is unreachable,
/// boots from the on-disk snapshot instead (a missing or corrupt one stops the server).
async fn open_store(settings: &Settings, url: &str) -> Result<Boot, ServerError> {
    let redacted = crate::store::redact_url(url);
    if url.starts_with("postgres") {
        // One connection attempt first: when nothing answers at the store's address it is
        // down, and a snapshot to serve makes waiting long pointless (the pool would retry a
        // refused connection for its whole 5 s). A store that answers, even slowly, or a
        // database still starting up, is opened the usual way below, with its waits: a slow
        // store is not a down one.
        if let crate::store::Reach::Down(why) =
            crate::store::Store::probe_url(url, BOOT_PROBE_LIMIT).await
        {
            let path = settings.snapshot_file();
            match crate::cluster::snapshot::Snapshot::read(&path) {
                // A refusal may only mean that PostgreSQL is not listening yet (the machine
                // booted and both start together): it is looked for again for a short while
                // before the snapshot, perhaps an old one, is served.
                Ok(_) if !still_down(url, &redacted).await => {}
                Ok(snapshot) => {
                    warn!(store = %redacted, error = %why, snapshot = %path.display(),
                          config_version = snapshot.config_version,
                          waited_ms = BOOT_STORE_GRACE.as_millis() as u64,
                          "nothing answers at the config store's address: serving the on-disk snapshot, until the store is back");
                    let store = crate::store::Store::lazy(url)
                        .map_err(|e| ServerError::Fatal(format!("config store {redacted}: {e}")))?;
                    return Ok(Boot {
                        store,
                        snapshot,
                        online: false,
                    });
                }
                // No snapshot to serve: the store is waited for the usual way (and its
                // absence then stops the server with both reasons).
                Err(s) => {
                    info!(store = %redacted, error = %why, snapshot = %s, "the config store does not answer yet and there is no snapshot to serve: waiting for it")
                }
            }
        }
    }
    let e = match crate::store::Store::open(url).await {
        Ok(store) => match crate::cluster::snapshot::Snapshot::take(&store).await {
            Ok(snapshot) => {
                return Ok(Boot {
                    store,
                    snapshot,
                    online: true,
                });
            }
            Err(e) => e,
        },
        Err(e) => e,
    };
    let unreachable = matches!(e, crate::store::StoreError::Db(_)) && url.starts_with("postgres");
    if !unreachable {
        return Err(ServerError::Fatal(format!(
            "cannot open the config store {redacted}: {e}"
        )));
    }
    let path = settings.snapshot_file();
    let snapshot = crate::cluster::snapshot::Snapshot::read(&path).map_err(|s| {
        ServerError::Fatal(format!(
            "the config store {redacted} is unreachable ({e}) and {s}: nothing safe to serve"
        ))
    })?;
    warn!(store = %redacted, error = %e, snapshot = %path.display(),
          config_version = snapshot.config_version,
          "the config store is unreachable: serving the on-disk snapshot until it is back");
    let store = crate::store::Store::lazy(url)
        .map_err(|e| ServerError::Fatal(format!("config store {redacted}: {e}")))?;
    Ok(Boot {
        store,
        snapshot,
        online: false,
    })
}

/// How long the boot's first connection attempt to a PostgreSQL store may take before the
/// store is opened the usual way (a refused connection answers in microseconds).
const BOOT_PROBE_LIMIT: Duration = Duration::from_secs(1);

/// How long a boot keeps looking for a PostgreSQL store whose address refused the first
/// attempt before it serves its snapshot (docs/CLUSTER.md): a database started with the
/// server after a reboot may not listen yet.
const BOOT_STORE_GRACE: Duration = Duration::from_secs(2);

/// How often the boot looks again during `BOOT_STORE_GRACE`.
const BOOT_STORE_RETRY: Duration = Duration::from_millis(200);

/// Whether the store at `url` still refuses connections after `BOOT_STORE_GRACE` (looked
/// for every `BOOT_STORE_RETRY`); false as soon as anything answers at its address (it is
/// then opened the usual way).
async fn still_down(url: &str, redacted: &str) -> bool {
    let until = tokio::time::Instant::now() + BOOT_STORE_GRACE;
    info!(store = %redacted, grace_ms = BOOT_STORE_GRACE.as_millis() as u64,
          "nothing answers at the config store's address yet: looking for it a little longer before serving the snapshot");
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(BOOT_STORE_RETRY).await;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let limit = left.clamp(Duration::from_millis(100), BOOT_PROBE_LIMIT);
        if !matches!(
            crate::store::Store::probe_url(url, limit).await,
            crate::store::Reach::Down(_)
        ) {
            info!(store = %redacted, "the config store's address answers now: opening it");
            return false;
        }
    }
    true
}

/// Keeps this server's row fresh (with the config version it has applied); registers again
/// if another server dropped it as stale or the store lost it during an outage.
async fn server_heartbeat(shared: Arc<Shared>, me: crate::store::ServerRecord) {
    let mut tick = tokio::time::interval(crate::store::SERVER_HEARTBEAT);
    tick.tick().await;
    loop {
        tick.tick().await;
        let applied = shared.applied_version.load(Ordering::Relaxed);
        match shared
            .store
            .heartbeat_server(&me.name, me.pid, applied)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                info!(server = %me.name, "registering this server in the config store (again)");
                let me = crate::store::ServerRecord {
                    config_version: applied,
                    ..me.clone()
                };
                if let Err(e) = shared.store.register_server(&me).await {
                    error!(error = %e, "cannot register this server in the config store");
                }
            }
            Err(e) => debug!(error = %e, "server heartbeat to the config store failed"),
        }
    }
}

fn python_log_level(level: &str) -> String {
    let first = level.split(',').next().unwrap_or("info").trim();
    match first {
        "trace" | "debug" => "debug",
        "warn" | "warning" => "warning",
        "error" => "error",
        _ => "info",
    }
    .to_owned()
}

impl Supervisor {
    fn spawn_worker(&mut self, generation: u64, replaces: Option<u32>) -> Result<(), ServerError> {
        let id = self.next_id;
        self.next_id += 1;
        let token = crate::secrets::random_hex(16);
        let s = &self.settings.workers;
        let recycle_at = if s.max_requests == 0 {
            0
        } else {
            s.max_requests + crate::secrets::random_below(s.max_requests_jitter + 1)
        };
        let worker = Arc::new(Worker::new(id, generation, token.clone(), recycle_at));
        self.shared.pool.add(worker.clone());
        let (pid, tail, waiter) = match process::spawn(&self.launch, id, generation, &token) {
            Ok(x) => x,
            Err(e) => {
                self.shared.pool.remove(id);
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
                let ids: Vec<u32> = self.children.keys().copied().collect();
                for id in ids {
                    self.retire(id, false);
                }
                if self.children.is_empty() {
                    return Ok(Some(Outcome { exit_code: 0 }));
                }
            }
        }
        Ok(None)
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
                self.shared.notifier.reloading(&format!(
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
                self.shared.ready.store(false, Ordering::SeqCst);
                // The scheduler's lead passes on now, before the workers are retired: runs
                // claimed from here on would find no worker.
                self.shared.scheduler.stop();
                self.shared
                    .notifier
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
                self.shared.ready.store(false, Ordering::SeqCst);
                self.shared.scheduler.stop();
                self.shared.notifier.stopping("stopping now (SIGINT)");
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
                self.shared.notifier.ready(&self.status_line());
            }
        }
        if !self.shared.ready.load(Ordering::SeqCst) && self.shutting_down.is_none() {
            let ready = self.children.values().filter(|c| c.ready).count();
            if ready as u32 >= self.desired {
                self.shared.ready.store(true, Ordering::SeqCst);
                info!(
                    workers = ready,
                    startup_ms = self.started_at.elapsed().as_millis() as u64,
                    "server ready"
                );
                self.shared.notifier.ready(&self.status_line());
            }
        }
        self.shared.pool.capacity_changed();
    }

    fn on_exit(
        &mut self,
        id: u32,
        status: Option<ExitStatus>,
    ) -> Result<Option<Outcome>, ServerError> {
        self.shared.pool.remove(id);
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
            if self.children.is_empty() && self.http_drained {
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
        self.shared
            .notifier
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
        if self.shutting_down.is_some() {
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
        self.spawn_worker(generation, Some(id))
    }

    /// Replaces a worker that is stuck (`reason`): its replacement starts first, it takes no
    /// new work, and it is killed once its in-flight requests are done (or at the drain
    /// deadline); a deploy's import spinning in it only costs CPU meanwhile.
    fn on_stuck(&mut self, id: u32, reason: &'static str) -> Result<(), ServerError> {
        let Some(child) = self.children.get_mut(&id) else {
            return Ok(());
        };
        if let Some(r) = &mut child.retire {
            r.kill_when_idle = true;
            return Ok(());
        }
        warn!(id, pid = child.pid, reason, "replacing the worker");
        let generation = child.generation;
        // No new work for it from now on, before the replacement is even spawned.
        self.shared.pool.mark_draining(&child.worker);
        let spawned = if self.shutting_down.is_none() {
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
        self.shared.pool.mark_draining(&child.worker);
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
            self.shared.applied_version.load(Ordering::SeqCst),
            if self.shared.store_ok.load(Ordering::SeqCst) {
                "ok"
            } else {
                "degraded"
            }
        )
    }

    fn on_tick(&mut self) {
        self.shared.notifier.progress();
        if self.shutting_down.is_none()
            && self.reload.is_none()
            && self.shared.ready.load(Ordering::SeqCst)
        {
            self.shared.notifier.status(&self.status_line());
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
            let now_ms = self.shared.pool.now_ms();
            let limit = 3 * self.settings.workers.heartbeat_ms;
            let nonce = now_ms.to_be_bytes().to_vec();
            for (id, c) in &self.children {
                if !c.ready || c.retire.is_some() {
                    continue;
                }
                if now_ms.saturating_sub(c.worker.last_pong_ms()) > limit {
                    error!(
                        id,
                        pid = c.pid,
                        "worker stopped answering heartbeats; killing it"
                    );
                    process::signal(c.pid, Signal::SIGKILL);
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
                if let Err(e) = self.on_recycle(id, "max_rss") {
                    error!(error = %e, "cannot recycle a worker");
                }
            }
        }
    }

    fn kill_all(&mut self) {
        for c in self.children.values() {
            process::signal(c.pid, Signal::SIGKILL);
        }
    }
}

#[derive(Debug, Clone)]
struct WelcomeTemplate {
    threads: u32,
    services_dir: String,
    heartbeat_ms: u64,
    log_level: String,
    startup_timeout: Duration,
    /// Set once a worker has loaded the stored modules; until then the workers take turns
    /// (see `handshake`).
    modules_loaded: Arc<tokio::sync::Mutex<bool>>,
}

async fn accept_workers(
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

async fn read_frame(stream: &mut UnixStream, buf: &mut BytesMut) -> Result<Frame, String> {
    let dec = FrameDecoder::with_max_payload(16 * 1024 * 1024);
    loop {
        if let Some(f) = dec.decode(buf).map_err(|e| e.to_string())? {
            return Ok(f);
        }
        let n = stream.read_buf(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("worker closed the connection during the handshake".into());
        }
    }
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
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let hello = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream, &mut buf))
        .await
        .map_err(|_| "no HELLO within 10 s".to_owned())??;
    if hello.kind != Kind::Hello {
        send_error(&mut stream, "protocol_error", "expected HELLO".into()).await;
        return Err(format!("expected HELLO, got {}", hello.kind.name()));
    }
    let h: Hello = match hello.parse_json() {
        Ok(h) => h,
        Err(e) => {
            send_error(&mut stream, "protocol_error", e.to_string()).await;
            return Err(e.to_string());
        }
    };
    if h.protocol != PROTOCOL_VERSION {
        let msg = format!(
            "oxbus supervisor speaks IPC protocol {PROTOCOL_VERSION}, this worker speaks {}: run the oxbus Python package that ships with this server",
            h.protocol
        );
        send_error(&mut stream, "protocol_mismatch", msg.clone()).await;
        return Err(msg);
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
        return Err(format!("worker {} presented a bad token", h.worker_id));
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
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + welcome.startup_timeout;
        loop {
            let f = tokio::time::timeout_at(deadline, read_frame(&mut stream, &mut buf))
                .await
                .map_err(|_| {
                    "worker did not become ready within the startup timeout".to_owned()
                })??;
            match f.kind {
                Kind::Ready => {
                    worker.handshaken.store(true, Ordering::SeqCst);
                    let ready: Ready = f.parse_json().map_err(|e| e.to_string())?;
                    debug!(
                        services = ready.services.len(),
                        startup_ms = ready.startup_ms,
                        "worker loaded its services"
                    );
                    *worker.services.lock().expect("services lock") = ready.services;
                    break;
                }
                Kind::Error => {
                    let e: ErrorMsg = f.parse_json().map_err(|e| e.to_string())?;
                    *worker.boot_error.lock().expect("boot_error lock") = Some(e.message.clone());
                    return Err(format!("worker failed to start: {}", e.code));
                }
                Kind::Log => {
                    if let Ok(rec) = f.parse_json::<oxbus_ipc::LogRecord>() {
                        info!(target: "oxbus::python", logger = %rec.logger, "{}", rec.msg);
                    }
                }
                other => return Err(format!("unexpected {} before READY", other.name())),
            }
        }
        // Its own task (so that the deployed modules can be sent over it below), in this
        // worker's span so that the worker's log lines keep their context.
        let conn = tokio::spawn(
            crate::lifecycle::pool::run_connection(pool.clone(), worker.clone(), stream, buf)
                .instrument(tracing::Span::current()),
        );
        // Every deployed module this server runs, before any traffic. A deploy may land
        // while they load (it updates `pool.deployed` first, then activates in the workers
        // that are ready, which this one is not yet): load until nothing differs, and turn
        // ready while holding the lock, so a deploy either is seen here or sees this worker.
        let mut loaded: std::collections::BTreeMap<String, i64> = Default::default();
        let mut first_batch = true;
        loop {
            let (todo, gone): (Vec<crate::store::Module>, Vec<String>) = {
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
                crate::deploy::remove(&pool, &worker, &names, within)
                    .await
                    .map_err(|e| format!("the worker could not drop undeployed modules: {e}"))?;
                for n in &gone {
                    loaded.remove(n);
                }
            }
            if todo.is_empty() {
                continue;
            }
            let srcs = crate::deploy::sources(&todo);
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
            let result = crate::deploy::activate(&pool, &worker, &srcs, within).await;
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
                return Err(msg);
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

fn spawn_signal_listener(events: mpsc::UnboundedSender<Event>) {
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
