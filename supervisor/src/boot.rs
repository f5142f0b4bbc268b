//! Boot: the only module that knows every subsystem. It opens the store (or the snapshot),
//! loads the secrets key, binds the listeners and the cluster bus, registers this server,
//! builds each subsystem's handles — the node state, the routing table, the pool, deploy's
//! locks, the jobs table — hands each subsystem the context it needs, spawns them, and runs
//! the supervisor loop until the server stops; then it leaves the store cleanly. Nothing
//! else may name `boot`.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Settings;
use crate::lifecycle::handshake::WelcomeTemplate;
use crate::lifecycle::pool::Pool;
use crate::lifecycle::process::{self, Launch};
use crate::lifecycle::python::RuntimeDir;
use crate::lifecycle::supervisor::{Outcome, Parts, ServerError, Supervisor, io_err};
use crate::node::Node;

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
        Some(dir) => Some(
            crate::deploy::watch::start_pickup(&dir)
                .map_err(|e| ServerError::Fatal(e.to_string()))?,
        ),
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
    let listener = match crate::edge::conn::activated()
        .map_err(io_err("cannot use the socket systemd passed (LISTEN_FDS)"))?
    {
        Some(l) => {
            info!(
                address = %l.local_addr().map_err(io_err("local_addr"))?,
                "HTTP listener from systemd (socket activation); server.listen is not used"
            );
            l
        }
        None => crate::edge::conn::bind(settings.server.listen).map_err(io_err(format!(
            "cannot listen on {}",
            settings.server.listen
        )))?,
    };
    let store_url = settings.store_url();
    let boot = open_store(&settings, &store_url).await?;
    let store = boot.store;
    let key = load_secret_key(
        &settings,
        boot.snapshot
            .secrets
            .first()
            .map(|s| s.sealed.as_str())
            .or_else(|| {
                boot.snapshot
                    .objects
                    .security
                    .iter()
                    .find_map(|d| d.sealed.as_deref())
            })
            .or_else(|| {
                let o = &boot.snapshot.objects;
                o.outgoing_rest
                    .iter()
                    .find_map(|d| d.auth.sealed())
                    .or_else(|| o.outgoing_sql.iter().find_map(|d| d.sealed.as_deref()))
                    .or_else(|| o.outgoing_amqp.iter().find_map(|d| d.sealed.as_deref()))
                    .or_else(|| o.outgoing_mqtt.iter().find_map(|d| d.sealed.as_deref()))
                    .or_else(|| o.outgoing_redis.iter().find_map(|d| d.sealed.as_deref()))
                    .or_else(|| o.inbound_amqp.iter().find_map(|d| d.sealed.as_deref()))
                    .or_else(|| o.inbound_mqtt.iter().find_map(|d| d.sealed.as_deref()))
            }),
    )?;
    let routes = crate::edge::routes::RoutingTable::new(
        settings.channels.clone(),
        &boot.snapshot.channels,
        &boot.snapshot.objects.security,
        key.clone(),
    )
    .map_err(|e| {
        ServerError::Fatal(format!(
            "the channels of server.toml and of the config store do not fit together: {e}"
        ))
    })?;
    let routes = Arc::new(routes);
    let admin_token = crate::admin::load_or_create_token(&settings.admin_token_file()).map_err(
        io_err(format!(
            "cannot read or create the admin token file {}",
            settings.admin_token_file().display()
        )),
    )?;
    let admin_listener = crate::edge::conn::bind(settings.admin.listen).map_err(io_err(
        format!("cannot listen on {} (admin API)", settings.admin.listen),
    ))?;
    let admin_local = admin_listener.local_addr().map_err(io_err("local_addr"))?;
    let local = listener.local_addr().map_err(io_err("local_addr"))?;
    let mut me = crate::cluster::membership::server_record(&settings, local);
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
        crate::cluster::membership::register_server(&store, &me)
            .await
            .map_err(|e| ServerError::Fatal(e.to_string()))?;
    } else {
        warn!(server = %me.name, "not registered in the config store yet (it is down): the heartbeat registers once it is back");
    }

    let metrics = Arc::new(crate::metrics::Metrics::new(settings.metrics.enabled));
    let outgoing = Arc::new(crate::outgoing::Outgoing::new(
        Arc::new(key.clone()),
        metrics.clone(),
    ));
    // The stored connections, before any worker is started (and so before any call).
    outgoing.apply_rest(&boot.snapshot.objects.outgoing_rest);
    outgoing.apply_sql(&boot.snapshot.objects.outgoing_sql);
    outgoing.apply_redis(&boot.snapshot.objects.outgoing_redis);
    outgoing.apply_amqp(&boot.snapshot.objects.outgoing_amqp);
    outgoing.apply_mqtt(&boot.snapshot.objects.outgoing_mqtt);
    outgoing.apply_secrets(
        boot.snapshot
            .secrets
            .iter()
            .map(crate::cluster::sync::readable_secret),
    );
    // The inbound channels (AMQP, MQTT): their definitions now, the pool once it exists,
    // consuming once the workers are being started.
    let inbound = Arc::new(crate::inbound::Inbound::new(
        &me.name,
        Arc::new(key.clone()),
        metrics.clone(),
    ));
    inbound.apply_amqp(&boot.snapshot.objects.inbound_amqp);
    inbound.apply_mqtt(&boot.snapshot.objects.inbound_mqtt);
    // The file-transfer channels: the same, their leases and files in the store.
    let files = crate::files::FileChannels::new(&me.name, store.clone(), metrics.clone());
    files.apply(&boot.snapshot.objects.inbound_file);
    // The pub/sub broker: its definitions before any worker starts (a worker may publish
    // from its first call); the pool and the bus are handed to it once they exist.
    let pubsub =
        crate::pubsub::Broker::new(&me.name, store.clone(), metrics.clone(), outgoing.clone());
    pubsub.apply(&boot.snapshot.objects);
    // The user config services read: before any worker starts (a service may read it from
    // its first call).
    let user_config = Arc::new(crate::user_config::UserConfigs::new());
    user_config.apply(&boot.snapshot.objects.user_config);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    // The WebSocket sessions: their pushes are worker ops, their calls go through the pool.
    let wsx_ops = crate::wsx::Wsx::new(&me.name, settings.request_timeout(), metrics.clone());
    let pool = Arc::new(
        Pool::new(
            settings.workers.max_inflight as usize,
            settings.workers.max_queue as usize,
            settings.request_timeout(),
            ev_tx.clone(),
        )
        .with_import_timeout(Duration::from_millis(settings.deploy.check_timeout_ms))
        .with_activate_timeout(Duration::from_millis(settings.workers.startup_timeout_ms))
        .with_debugging(settings.debug_port().is_some())
        .with_metrics(metrics.clone())
        .with_server_ops(Arc::new(crate::lifecycle::ops::OpsSet(vec![
            outgoing.clone(),
            Arc::new(pubsub.clone()),
            Arc::new(wsx_ops.clone()),
            user_config.clone(),
        ]))),
    );
    pubsub.set_pool(pool.clone());
    inbound.set_pool(pool.clone());
    files.set_pool(pool.clone());
    wsx_ops.set_pool(pool.clone());
    if metrics.enabled() {
        // The workers' states, read at scrape time.
        metrics.register_collector(Box::new(crate::metrics::workers::WorkerCollector::new(
            Arc::downgrade(&pool),
        )));
    }
    *pool.deployed.lock().expect("deployed lock") = boot
        .snapshot
        .modules
        .iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    pool.caches.set_server(&me.name);
    // The stored cache definitions, before any worker is started (and so before any request).
    pool.caches.apply_defs(&boot.snapshot.objects.caches);

    // The handles, each owned by its subsystem, and the contexts that hand them out.
    let node = Arc::new(Node::new(
        me.name.clone(),
        started_at,
        boot.online,
        boot.snapshot.config_version,
    ));
    let bus_handle = bus.as_ref().map(|(b, _)| b.clone());
    if let Some(b) = &bus_handle {
        pubsub.set_peers(b.clone());
        wsx_ops.set_peers(b.clone());
    }
    // Pub/sub delivers to WebSocket clients through the registry, and drops a client's
    // subscriptions when its connection ends.
    pubsub.set_ws_clients(Arc::new(WsxClients(wsx_ops.clone())));
    {
        let broker = pubsub.clone();
        wsx_ops.set_on_gone(Arc::new(move |id: Arc<str>| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.forget_ws_client(&id).await });
        }));
    }
    let cids = Arc::new(crate::cid::CidGen::new());
    let locks = Arc::new(crate::deploy::Locks::default());
    let jobs = Arc::new(crate::scheduler::JobsTable::new(
        boot.snapshot.objects.jobs.clone(),
    ));
    let notifier = Arc::new(crate::lifecycle::sdnotify::Notifier::from_env());
    let deploy = Arc::new(crate::deploy::Ctx {
        metrics: metrics.clone(),
        pool: pool.clone(),
        store: store.clone(),
        node: node.clone(),
        locks: locks.clone(),
        peers: bus_handle
            .clone()
            .map(|b| b as Arc<dyn crate::deploy::Peers>),
    });
    let scheduler = Arc::new(crate::scheduler::Ctx {
        metrics: metrics.clone(),
        store: store.clone(),
        node: node.clone(),
        pool: pool.clone(),
        cids: cids.clone(),
        request_timeout: settings.request_timeout(),
        jobs: jobs.clone(),
        status: Default::default(),
    });
    let sync = Arc::new(crate::cluster::sync::Ctx {
        metrics: metrics.clone(),
        node: node.clone(),
        store: store.clone(),
        settings: settings.clone(),
        pool: pool.clone(),
        locks: locks.clone(),
        routes: routes.clone(),
        jobs,
        outgoing: outgoing.clone(),
        pubsub: pubsub.clone(),
        inbound: inbound.clone(),
        files: files.clone(),
        wsx: wsx_ops.clone(),
        user_config: user_config.clone(),
        bus: bus_handle.clone(),
        disk: crate::cluster::sync::OnDisk::new(&boot.snapshot, boot.online),
    });
    {
        // A WebSocket session whose channel (or its security definition) a config change
        // removed or changed is closed: its client reconnects and is checked again.
        let wsx = wsx_ops.clone();
        routes.on_swap(Box::new(move |router| {
            let router = router.clone();
            wsx.revalidate(Arc::new(move |name: &str| router.websocket_channel(name)));
        }));
    }
    let http = Arc::new(crate::edge::http::Ctx {
        metrics: metrics.clone(),
        pool: pool.clone(),
        routes: routes.clone(),
        settings: settings.clone(),
        node: node.clone(),
        cids: cids.clone(),
        pubsub: pubsub.clone(),
        wsx: wsx_ops.clone(),
    });
    // `oxbus reload --pid` (systemd's ExecReload=) and the admin API read the reloads'
    // outcome here.
    let reloads = crate::lifecycle::reload::Reloads::new(1);
    let admin = Arc::new(crate::admin::Ctx {
        reloads: reloads.clone(),
        metrics: metrics.clone(),
        pool: pool.clone(),
        routes,
        settings: settings.clone(),
        node: node.clone(),
        cids,
        store: store.clone(),
        key,
        locks,
        deploy: deploy.clone(),
        scheduler: scheduler.clone(),
        bus: bus_handle,
        tokens: Default::default(),
        outgoing: outgoing.clone(),
        pubsub: pubsub.clone(),
        inbound: inbound.clone(),
        files: files.clone(),
        wsx: wsx_ops.clone(),
        user_config,
    });

    register_metrics(&metrics, &node, &pool, &scheduler, sync.bus.clone());
    if metrics.enabled() {
        metrics.register_collector(Box::new(outgoing_state(&outgoing)));
    }

    let welcome = WelcomeTemplate {
        threads: settings.server.threads,
        services_dir: services_dir.display().to_string(),
        // A worker stopped at a breakpoint answers nothing: under the debugger it watches
        // for a lost supervisor by its socket closing only (and is not killed for silence).
        heartbeat_ms: if settings.debug_port().is_some() {
            0
        } else {
            settings.workers.heartbeat_ms
        },
        log_level: python_log_level(&settings.server.log_level),
        startup_timeout: Duration::from_millis(settings.workers.startup_timeout_ms),
        modules_loaded: Arc::new(tokio::sync::Mutex::new(false)),
        modules: Arc::new(crate::deploy::WorkerModules),
    };
    tokio::spawn(crate::lifecycle::handshake::accept_workers(
        ipc,
        pool.clone(),
        ev_tx.clone(),
        welcome,
    ));
    crate::lifecycle::supervisor::spawn_signal_listener(ev_tx.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    pubsub.start(shutdown_rx.clone());
    {
        // This server's WebSocket clients of an earlier run are gone (stopped or crashed):
        // so are their subscriptions.
        let broker = pubsub.clone();
        let server = me.name.clone();
        tokio::spawn(async move { broker.forget_ws_clients_of(&server).await });
    }
    // The inbound channels stop consuming when shutdown begins (the stop hook below, on
    // SIGTERM before the shutdown delay and on SIGINT before the workers are killed); once
    // their in-flight messages finished (bounded) the supervisor hears InboundDrained and,
    // with the HTTP layer drained too, retires the workers.
    let (inbound_stop, inbound_stop_rx) = watch::channel(false);
    let inbound_stop = Arc::new(inbound_stop);
    inbound.start(inbound_stop_rx.clone());
    files.start();
    let inbound_drained = {
        let inbound = inbound.clone();
        let files = files.clone();
        let events = ev_tx.clone();
        let mut stopping = inbound_stop_rx;
        tokio::spawn(async move {
            let _ = stopping.wait_for(|v| *v).await;
            tokio::join!(inbound.drain(), files.drain());
            let _ = events.send(crate::lifecycle::supervisor::Event::InboundDrained);
        })
    };
    if metrics.enabled() {
        metrics.register_collector(Box::new(pubsub_state(&pubsub, shutdown_rx.clone())));
    }
    let pickup_dir = match pickup {
        Some(w) => {
            let dir = w.dir().display().to_string();
            tokio::spawn(crate::deploy::watch::pickup(
                deploy.clone(),
                w,
                shutdown_rx.clone(),
            ));
            dir
        }
        None => "none".to_owned(),
    };
    tokio::spawn(crate::edge::http::serve(
        listener,
        http,
        shutdown_rx,
        ev_tx.clone(),
    ));
    tokio::spawn(crate::admin::serve(admin_listener, admin, admin_token));
    tokio::spawn(crate::cluster::membership::server_heartbeat(
        node.clone(),
        store.clone(),
        me.clone(),
    ));
    if let Some((bus, listener)) = bus {
        let (cache_tx, cache_rx) = mpsc::unbounded_channel();
        pool.caches.replicate_to(cache_tx);
        tokio::spawn(crate::cluster::bus::replicate_caches(bus.clone(), cache_rx));
        tokio::spawn(crate::cluster::bus::listen(
            bus.clone(),
            sync.clone(),
            listener,
        ));
        tokio::spawn(crate::cluster::bus::dial_peers(bus, sync.clone()));
    }
    tokio::spawn(crate::cluster::sync::run(
        sync.clone(),
        boot.online.then_some(boot.snapshot),
    ));
    tokio::spawn(notifier.clone().watch());
    match crate::lifecycle::reload::bind() {
        Ok(l) => {
            tokio::spawn(crate::lifecycle::reload::serve(l, reloads.clone()));
        }
        Err(e) => {
            warn!(error = %e, "no reload status socket: `oxbus reload` cannot follow this server's reloads")
        }
    }
    tokio::spawn(crate::scheduler::run(scheduler.clone()));
    tokio::spawn(crate::admin::prune_audit_log(
        store.clone(),
        settings.audit.retention_days,
    ));

    let desired = settings.worker_count();
    info!(listen = %local, workers = desired, python = %settings.server.python,
          services = %services_dir.display(), admin = %admin_local, store = %crate::store::redact_url(&store_url),
          pickup = %pickup_dir, "oxbus server starting");
    if let Some(port) = settings.debug_port() {
        warn!(
            debugger = %format!("127.0.0.1:{port}"),
            "debug mode: one worker, under debugpy; attach an IDE to 127.0.0.1:{port} \
             (docs/DEBUGGING.md). The worker is never killed for missed heartbeats, a request \
             past its deadline or its memory; requests still time out after \
             http.request_timeout_ms ({} ms). Not for production.",
            settings.http.request_timeout_ms
        );
    }
    let status = scheduler.status.clone();
    let mut sup = Supervisor::new(Parts {
        launch: Launch {
            python: settings.server.python.clone(),
            cwd: settings.base_dir.clone(),
            python_path,
            socket,
            debug_port: settings.debug_port(),
        },
        settings,
        pool,
        node,
        notifier,
        on_stop: Box::new({
            let inbound_stop = inbound_stop.clone();
            move || {
                status.stop();
                let _ = inbound_stop.send(true);
            }
        }),
        events: ev_tx,
        reloads,
        shutdown_tx,
        started_at,
    });
    sup.start()?;
    let result = sup.run(ev_rx).await;
    // After SIGTERM the inbound channels drained before the workers were retired; after
    // SIGINT they were told to stop before the workers were killed, and after a fatal error
    // they are told now: wait for them to close, so that the broker takes back what is
    // unacked from a clean close.
    let _ = inbound_stop.send(true);
    let _ = inbound_drained.await;
    // Peers see a clean stop, not a lost link (best effort: sent while deregistering).
    if let Some(bus) = &sync.bus {
        bus.say_bye().await;
    }
    scheduler.status.stop();
    leave_store(&scheduler, &me).await;
    drop(runtime);
    result
}

/// The figures of the store, the cluster, the caches and the scheduler that are a state read
/// at scrape time (`metrics/`), and the store's own timing of its operations.
/// The outgoing connections' figures as `metrics::outgoing` reads them at scrape time.
fn outgoing_state(
    outgoing: &Arc<crate::outgoing::Outgoing>,
) -> crate::metrics::outgoing::OutgoingState {
    use crate::metrics::outgoing::{ConnFigures, OutgoingState};
    use crate::outgoing::ConnType;
    let outgoing = Arc::downgrade(outgoing);
    OutgoingState(Box::new(move || {
        let Some(o) = outgoing.upgrade() else {
            return Vec::new();
        };
        [
            ConnType::Rest,
            ConnType::Sql,
            ConnType::Amqp,
            ConnType::Redis,
            ConnType::Mqtt,
        ]
        .into_iter()
        .flat_map(|kind| {
            o.stats(kind).into_iter().map(move |s| ConnFigures {
                kind: kind.as_str(),
                name: s.name,
                calls: s.calls,
                errors: s.errors,
                latency_buckets: s.latency_buckets,
                latency_sum_s: s.latency_sum_s,
                pool_size: s.pool_size,
                in_use: s.in_use,
                idle: s.idle,
                waiting: s.waiting,
            })
        })
        .collect()
    }))
}

/// How often the pub/sub gauges are refreshed.
const PUBSUB_GAUGES_EVERY: Duration = Duration::from_secs(10);

/// The pub/sub gauges' collector: it reads a snapshot that a task refreshes every
/// [`PUBSUB_GAUGES_EVERY`] (until `shutdown`) from the broker's figures, so a scrape never
/// waits on the store or a peer. Topics: every defined one's depth. Subscriptions: those this
/// server delivers (`owner`), so that a sum over servers counts each once.
fn pubsub_state(
    broker: &crate::pubsub::Broker,
    mut shutdown: watch::Receiver<bool>,
) -> crate::metrics::pubsub::PubsubState {
    use crate::metrics::pubsub::{PubsubGauges, PubsubState, SubGauge, TopicGauge};
    let cache = Arc::new(std::sync::RwLock::new(PubsubGauges::default()));
    let (broker, writer) = (broker.clone(), cache.clone());
    tokio::spawn(async move {
        loop {
            let topics = match broker.topic_stats().await {
                Ok(list) => list
                    .into_iter()
                    .map(|t| TopicGauge {
                        topic: t.name,
                        depth: t.depth_gd,
                    })
                    .collect(),
                // The last figures stay until the store answers again.
                Err(_) => writer.read().expect("gauges lock").topics.clone(),
            };
            // Only the subscriptions this server delivers: no peer asked, no lease read.
            let stats = broker.local_sub_stats().await;
            let mut subs: Vec<SubGauge> = stats
                .into_iter()
                .map(|s| SubGauge {
                    sub: s.sub_key,
                    depth: s.depth,
                    in_flight: s.in_flight,
                })
                .collect();
            subs.sort_by(|a, b| a.sub.cmp(&b.sub));
            *writer.write().expect("gauges lock") = PubsubGauges { topics, subs };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(PUBSUB_GAUGES_EVERY) => {}
            }
        }
    });
    PubsubState(Box::new(move || cache.read().expect("gauges lock").clone()))
}

fn register_metrics(
    metrics: &Arc<crate::metrics::Metrics>,
    node: &Arc<Node>,
    pool: &Arc<Pool>,
    scheduler: &Arc<crate::scheduler::Ctx>,
    bus: Option<Arc<crate::cluster::bus::Bus>>,
) {
    use crate::metrics::{caches, cluster, scheduler as sched, store};
    use std::sync::atomic::Ordering;
    crate::store::record_into(metrics.clone());
    let n = node.clone();
    metrics.register_collector(Box::new(store::Degraded(Box::new(move || {
        !n.store_ok.load(Ordering::Relaxed)
    }))));
    let n = node.clone();
    metrics.register_collector(Box::new(cluster::ClusterState {
        applied: Box::new(move || n.applied()),
        peers: bus.map(|bus| {
            Box::new(move || {
                bus.peer_versions()
                    .into_iter()
                    .map(|(name, version)| cluster::Peer { name, version })
                    .collect()
            }) as Box<dyn Fn() -> Vec<cluster::Peer> + Send + Sync>
        }),
    }));
    let registry = pool.caches.clone();
    metrics.register_collector(Box::new(caches::CacheState(Box::new(move || {
        registry
            .all()
            .iter()
            .map(|c| {
                // First: it runs the cache's pending evictions, which the counters then show.
                let entries = c.entry_count();
                let k = c.counters();
                caches::CacheFigures {
                    name: c.def.name.clone(),
                    entries,
                    hits: k.hits.load(Ordering::Relaxed),
                    misses: k.misses.load(Ordering::Relaxed),
                    sets: k.sets.load(Ordering::Relaxed),
                    deletes: k.deletes.load(Ordering::Relaxed),
                    evictions: k.evictions.load(Ordering::Relaxed),
                }
            })
            .collect()
    }))));
    let status = scheduler.status.clone();
    metrics.register_collector(Box::new(sched::Leader(Box::new(move || status.leading()))));
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
async fn leave_store(scheduler: &crate::scheduler::Ctx, me: &crate::store::ServerRecord) {
    let store = &scheduler.store;
    if let crate::store::Reach::Down(e) = store.probe(Duration::from_secs(1)).await {
        info!(error = %e, "the config store is down: stopping without it (this server's row goes stale on its own, a scheduler lease it held runs out)");
        return;
    }
    let work = async {
        crate::scheduler::flush_history(&scheduler.status, STOP_STORE_LIMIT).await;
        // A renewal the lease task had in flight lands (and is handed back by it) before
        // the hand-back below: none can put the lease back after it. Bounded apart, so that
        // a slow renewal does not use up the stop's budget and leave this server listed: at
        // worst a renewal landing late holds the lease for one more TTL.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            crate::scheduler::lease_task_ended(&scheduler.status),
        )
        .await;
        if let Err(e) = crate::scheduler::hand_back(scheduler).await {
            warn!(error = %e, "could not hand the scheduler's lease back: another server leads once it runs out");
        }
        if let Err(e) = store.deregister_server(&me.name, me.pid).await {
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
        .map_err(|e| ServerError::Fatal(e.to_string()))?;
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

/// The WebSocket registry as pub/sub delivers to it.
struct WsxClients(crate::wsx::Wsx);

#[async_trait::async_trait]
impl crate::pubsub::WsClients for WsxClients {
    async fn deliver(
        &self,
        client_id: &str,
        sub_key: &str,
        messages: Vec<serde_json::Value>,
    ) -> Result<(), crate::pubsub::WsDeliverError> {
        use crate::pubsub::WsDeliverError;
        use crate::wsx::DeliverError;
        self.0
            .deliver_pubsub(client_id, sub_key, messages)
            .await
            .map_err(|e| match e {
                DeliverError::Gone => WsDeliverError::Gone,
                DeliverError::Failed(m) => WsDeliverError::Failed(m),
            })
    }

    fn subscriber(&self, client_id: &str) -> Option<Option<String>> {
        self.0.local_subscriber(client_id)
    }
}
