//! Keeps a server in step with the config store, and its on-disk snapshot in step with what
//! it runs.
//!
//! Every second, and at once after a change made through this server, the server reads the
//! store's config version. When it differs from the version
//! the server last applied — a change made through another server of the cluster, or the
//! store coming back after an outage — it reads the store under the deploy lock, activates in
//! every worker the modules whose active version it does not run, removes the ones no longer
//! deployed, makes the live caches match the cache definitions, hands the scheduler the
//! current jobs, swaps in the routing table, and writes the snapshot. A change made through this
//! server was already applied by its own path, so the diff finds nothing left to do and only
//! the snapshot is rewritten. (The cluster bus, issue 4, will announce changes at once; this
//! check stays as the backstop.)
//!
//! While the store is unreachable the server keeps serving on what it has; `/healthz` says
//! `"store": "degraded"`, admin changes fail with 503 at once (`store_available`: one
//! connection attempt, not the pool's 5 s of retries), and the outage and the recovery are
//! logged once each. The store is then looked for every second whatever the interval, with
//! one connection attempt each time. The version this server applies is recorded in the
//! store's server list as soon as it is applied (`applied`), not only by the heartbeat.
//!
//! It works through the handles in its [`Ctx`] (built by boot); the snapshot's own state is
//! private to it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, info, warn};

use crate::cluster::bus::Bus;
use crate::cluster::snapshot::Snapshot;
use crate::config::Settings;
use crate::deploy::Locks;
use crate::edge::routes::RoutingTable;
use crate::lifecycle::pool::Pool;
use crate::node::Node;
use crate::scheduler::JobsTable;
use crate::store::Store;

/// What the sync loop (and the bus, which runs catch-ups for its peers) works with.
pub struct Ctx {
    /// Where this subsystem's figures are recorded (`metrics/`).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub node: Arc<Node>,
    pub store: Store,
    pub settings: Settings,
    pub pool: Arc<Pool>,
    pub locks: Arc<Locks>,
    pub routes: Arc<RoutingTable>,
    pub jobs: Arc<JobsTable>,
    /// The outgoing connections and the secrets services may read.
    pub outgoing: Arc<crate::outgoing::Outgoing>,
    /// The pub/sub broker (topics, subscriptions, endpoints).
    pub pubsub: crate::pubsub::Broker,
    /// The inbound channels (AMQP, MQTT).
    pub inbound: Arc<crate::inbound::Inbound>,
    /// The file-transfer channels.
    pub files: crate::files::FileChannels,
    /// The WebSocket clients: the peers' `wsx.*` calls reach them over the bus.
    pub wsx: crate::wsx::Wsx,
    /// The user config services read (`user_config.get`).
    pub user_config: Arc<crate::user_config::UserConfigs>,
    /// The cluster bus, when this server runs one.
    pub bus: Option<Arc<Bus>>,
    pub disk: OnDisk,
}

/// The snapshot on disk as this run knows it.
pub struct OnDisk {
    /// The config version of the on-disk snapshot (-1: not written by this run yet).
    version: Arc<AtomicI64>,
    /// The snapshot on disk as this run last wrote it (or booted from it): what a rewrite
    /// with a new peer list starts from (see [`peers_seen`]).
    snapshot: Arc<Mutex<Option<Snapshot>>>,
}

impl OnDisk {
    /// `booted` is the config the server started with; `online` whether it came from the
    /// store (then this run has written no snapshot yet) or from the snapshot on disk.
    pub fn new(booted: &Snapshot, online: bool) -> OnDisk {
        OnDisk {
            version: Arc::new(AtomicI64::new(if online {
                -1
            } else {
                booted.config_version
            })),
            snapshot: Arc::new(Mutex::new((!online).then(|| booted.clone()))),
        }
    }
}

/// Runs until the process ends. `booted` is the config the server started with when it came
/// from the store (written to disk at once, without reading the store again); `None` when it
/// booted from the on-disk snapshot (the store's migrations then still have to run once it
/// is back).
pub async fn run(cx: Arc<Ctx>, booted: Option<Snapshot>) {
    let mut migrated = booted.is_some();
    if let Some(snap) = booted {
        write_snapshot(&cx, snap).await;
    }
    let interval = Duration::from_millis(cx.settings.cluster.sync_interval_ms);
    // While the store is unreachable it is looked for every second, however long the
    // interval: a cluster whose bus carries the changes may run with a long one, and its
    // recovery must not wait for it.
    let retry = interval.min(Duration::from_secs(1));
    loop {
        let wait = if cx.node.store_ok.load(Ordering::SeqCst) {
            interval
        } else {
            retry
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cx.node.changed.notified() => {}
        }
        // A store known to be down is looked for with one connection attempt, not with a
        // pool call that retries a refused connection for 5 s: the loop notices its return
        // within a second. Only a refusal skips the round: a store that answers slowly is
        // given the usual calls (and their waits), or a slow store would never count as back.
        if !cx.node.store_ok.load(Ordering::SeqCst)
            && matches!(
                cx.store.probe(PROBE_LIMIT).await,
                crate::store::Reach::Down(_)
            )
        {
            continue;
        }
        if !migrated {
            match bounded("migrating", cx.store.migrate()).await {
                Ok(()) => migrated = true,
                Err(e) => {
                    degraded(&cx.node, &e);
                    continue;
                }
            }
        }
        let version = match bounded("reading the config version", cx.store.version()).await {
            Ok(v) => v,
            Err(e) => {
                degraded(&cx.node, &e);
                continue;
            }
        };
        if !cx.node.store_ok.swap(true, Ordering::SeqCst) {
            info!(
                config_version = version,
                "the config store is reachable again"
            );
        }
        let before = cx.node.applied_version.load(Ordering::SeqCst);
        if version == before && version == cx.disk.version.load(Ordering::SeqCst) {
            continue;
        }
        // Bounded as a whole too: a round waits for the deploy lock, the store, the workers'
        // acks; none of that may stall the loop (and with it the outage detection and the
        // recovery) for good.
        let limit = round_limit(&cx.settings);
        let round = tokio::time::timeout(limit, catch_up(&cx)).await;
        let Ok(round) = round else {
            warn!(
                limit_s = limit.as_secs(),
                "a catch-up round did not finish in time (deploy lock, store or workers): starting over"
            );
            continue;
        };
        match round {
            Ok((v, _)) if v != before => {
                info!(from = before, to = v, "caught up with the config store");
                if let Some(bus) = &cx.bus {
                    bus.announce(v);
                }
            }
            Ok(_) => {}
            Err(e) => degraded(&cx.node, &e),
        }
    }
}

/// How long one call to the store may take before the sync loop gives up on it. The pool
/// bounds the wait for a connection (5 s), not a query on a connection it handed out: a
/// connection whose peer vanished without a reset (a partition, a frozen host) would block
/// the loop — and with it the recovery — until TCP gives up, which takes minutes.
const STORE_CALL_LIMIT: Duration = Duration::from_secs(10);

/// How long one catch-up round of the sync loop may take: its store calls, plus the deploy
/// lock (held by a deploy for at most its activation) and its own activation in every worker
/// — each bounded by the deploy check's deadline and `workers.startup_timeout_ms`. Shorter,
/// and a round abandoned mid-activation would drop the one future that replaces a worker
/// that overran, with the pool already claiming the new versions.
fn round_limit(settings: &crate::config::Settings) -> Duration {
    let activation = Duration::from_millis(
        settings.deploy.check_timeout_ms + settings.workers.startup_timeout_ms,
    );
    2 * activation + 3 * STORE_CALL_LIMIT
}

/// Why the sync loop (or an admin change's store check) could not use the config store.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// A store call did not answer within [`STORE_CALL_LIMIT`].
    #[error("{what}: no answer within {limit_s} s")]
    Timeout { what: &'static str, limit_s: u64 },
    /// Nothing answered one connection attempt (the probe's reason).
    #[error("{0}")]
    Unreachable(String),
}

async fn bounded<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, SyncError> {
    match tokio::time::timeout(STORE_CALL_LIMIT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            warn!(
                limit_s = STORE_CALL_LIMIT.as_secs(),
                "{what}: the config store did not answer in time"
            );
            Err(SyncError::Timeout {
                what,
                limit_s: STORE_CALL_LIMIT.as_secs(),
            })
        }
    }
}

fn degraded(node: &Node, why: &SyncError) {
    if node.store_ok.swap(false, Ordering::SeqCst) {
        warn!(error = %why, "the config store is unreachable: serving on the config this server has");
    }
}

/// Applies the store's current config to this server and writes the snapshot; returns the
/// version applied and the workers' acks of what it (re)activated or removed.
pub async fn catch_up(cx: &Ctx) -> Result<(i64, Vec<crate::deploy::WorkerAck>), SyncError> {
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let snap = bounded("reading the config", Snapshot::take(&cx.store)).await?;
    let (changed, gone) = {
        let deployed = cx.pool.deployed.lock().expect("deployed lock");
        let changed: Vec<crate::store::Module> = snap
            .modules
            .iter()
            .filter(|m| deployed.get(&m.name).map(|d| d.version) != Some(m.version))
            .cloned()
            .collect();
        let gone: Vec<String> = deployed
            .keys()
            .filter(|n| !snap.modules.iter().any(|m| &m.name == *n))
            .cloned()
            .collect();
        (changed, gone)
    };
    let mut all_acks = Vec::new();
    if !changed.is_empty() {
        let acks = crate::deploy::activate_everywhere(&cx.pool, &changed).await;
        let failed = acks.iter().filter(|a| !a.ok).count();
        let names: Vec<&str> = changed.iter().map(|m| m.name.as_str()).collect();
        if failed > 0 {
            error!(modules = ?names, failed, "catching up: some workers did not take the modules");
        } else {
            info!(modules = ?names, workers = acks.len(), "catching up: activated");
        }
        all_acks.extend(acks);
    }
    if !gone.is_empty() {
        let names: Vec<&str> = gone.iter().map(String::as_str).collect();
        all_acks.extend(crate::deploy::remove_everywhere(&cx.pool, &names).await);
        info!(modules = ?names, "catching up: removed");
    }
    // Cache definitions: unchanged caches keep their entries; applied whatever becomes of the
    // routing table below (they do not depend on it).
    cx.pool.caches.apply_defs(&snap.objects.caches);
    // Scheduler jobs: the same (notified only when they differ).
    crate::scheduler::jobs::set_live(&cx.jobs, snap.objects.jobs.clone());
    // Outgoing connections: an unchanged one keeps its client (and pool), a changed one gets
    // a new client for new calls.
    cx.outgoing.apply_rest(&snap.objects.outgoing_rest);
    cx.outgoing.apply_sql(&snap.objects.outgoing_sql);
    cx.outgoing.apply_mqtt(&snap.objects.outgoing_mqtt);
    cx.outgoing.apply_redis(&snap.objects.outgoing_redis);
    cx.outgoing.apply_amqp(&snap.objects.outgoing_amqp);
    cx.pubsub.apply(&snap.objects);
    cx.inbound.apply_amqp(&snap.objects.inbound_amqp);
    cx.inbound.apply_mqtt(&snap.objects.inbound_mqtt);
    cx.files.apply(&snap.objects.inbound_file);
    // User config: the next read of a service sees the new values.
    cx.user_config.apply(&snap.objects.user_config);
    // The secrets services may read: a change of value or readers applies to the next read.
    cx.outgoing
        .apply_secrets(snap.secrets.iter().map(readable_secret));
    let version = snap.config_version;
    let table_ok = match cx.routes.rebuild(&snap.channels, &snap.objects.security) {
        Ok(()) => true,
        Err(e) => {
            // Not applied: the version stays behind, so the next sync tries again (e.g.
            // once a JWKS file this server lacks is in place) instead of serving the old
            // checks for good. Logged once per version.
            static LOGGED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);
            if LOGGED.swap(version, Ordering::SeqCst) != version {
                error!(error = %e, config_version = version, "the store's channels do not route or their checks do not compile here: the routing table is unchanged until they do");
            }
            false
        }
    };
    if !table_ok {
        write_snapshot(cx, snap).await;
        return Ok((cx.node.applied_version.load(Ordering::SeqCst), all_acks));
    }
    applied(cx, version).await;
    write_snapshot(cx, snap).await;
    Ok((version, all_acks))
}

/// A stored secret as the outgoing subsystem's `secret.get` needs it.
pub fn readable_secret(
    s: &crate::store::SealedSecret,
) -> crate::outgoing::service_secrets::ReadableSecret {
    crate::outgoing::service_secrets::ReadableSecret {
        name: s.name.clone(),
        sealed: s.sealed.clone(),
        services: s.services.clone(),
    }
}

/// Sets the config version this server runs and records it in the store's server list at
/// once (see [`Node::set_applied`]).
async fn applied(cx: &Ctx, version: i64) {
    let pid = i64::from(std::process::id());
    let record = cx.store.record_applied(&cx.node.name, pid, version);
    cx.node.set_applied(version, record).await;
}

/// How long an admin change waits for a store this server knows to be down to answer one
/// connection attempt (a refused connection answers in microseconds; this bounds a silent
/// host).
const PROBE_LIMIT: Duration = Duration::from_secs(1);

/// Whether the config store can take a change now. While the store is known up this is
/// free; while the sync loop knows it down, one connection attempt (bounded by
/// `PROBE_LIMIT`) decides, instead of the pool's 5 s of retries: a store still down answers
/// the change 503 at once, a store that is back lets it through (and the sync loop is woken
/// to notice).
pub async fn store_available(node: &Node, store: &Store) -> Result<(), SyncError> {
    if node.store_ok.load(Ordering::SeqCst) {
        return Ok(());
    }
    match store.probe(PROBE_LIMIT).await {
        crate::store::Reach::Up => {
            node.changed.notify_one();
            Ok(())
        }
        crate::store::Reach::Down(e) | crate::store::Reach::Unsure(e) => {
            Err(SyncError::Unreachable(e))
        }
    }
}

/// Writes `snap` to the snapshot file off the runtime, without making the caller wait:
/// an fsync can take seconds on a busy disk, and the caller holds the deploy lock. Writes
/// happen one at a time, newest version wins (an older snapshot is never written over a
/// newer one); `snapshot_version` records what is on disk.
async fn write_snapshot(cx: &Ctx, snap: Snapshot) {
    let path = cx.settings.snapshot_file();
    let version = snap.config_version;
    let written = cx.disk.version.clone();
    let on_disk = cx.disk.snapshot.clone();
    tokio::spawn(async move {
        let _one_at_a_time = WRITING.lock().await;
        // The same version holds the same config: written once is enough (a new peer list
        // at the same version is `peers_seen`'s).
        if written.load(Ordering::SeqCst) >= version {
            return;
        }
        if write_file(&path, &snap).await {
            written.store(version, Ordering::SeqCst);
            *on_disk.lock().expect("snapshot lock") = Some(snap);
        }
    });
}

/// The peer list's snapshot writes: whether one is in flight, and the list whose write last
/// failed, with when.
struct PeerWrite {
    pending: bool,
    failed: Option<(Vec<crate::cluster::snapshot::BusPeer>, std::time::Instant)>,
}

static PEER_WRITE: std::sync::Mutex<PeerWrite> = std::sync::Mutex::new(PeerWrite {
    pending: false,
    failed: None,
});

/// How long a peer list whose snapshot write failed waits before it is tried again.
const PEER_RETRY: Duration = Duration::from_secs(30);

/// One snapshot write at a time (a new version, or the same one with a new peer list).
static WRITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes `snap` (atomically, see `Snapshot::write`) off the runtime; false when it failed
/// (logged).
async fn write_file(path: &std::path::Path, snap: &Snapshot) -> bool {
    let (file, snap) = (path.to_owned(), snap.clone());
    match tokio::task::spawn_blocking(move || snap.write(&file)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            error!(
                file = %path.display(),
                error = %e,
                "cannot write the config snapshot: a restart while the store is down would not find this version"
            );
            false
        }
        Err(e) => {
            error!(error = %e, "the snapshot writer failed");
            false
        }
    }
}

/// The server list as the store gives it now (`peers`: every server with a bus, this one
/// among them). When it differs from the one in the snapshot on disk, the snapshot is
/// written again at the same version with these peers: a server restarted while the store
/// is down dials the peers its snapshot lists, and a snapshot taken at boot (before this
/// server and the later ones registered) or at the last config change would miss the
/// servers that joined since — with no config change afterwards, for good. Called by the
/// bus's dial loop with each list it reads; cheap when nothing changed (one comparison).
pub fn peers_seen(cx: &Ctx, peers: Vec<crate::cluster::snapshot::BusPeer>) {
    let peers = sorted(peers);
    if !differs(&cx.disk.snapshot.lock().expect("snapshot lock"), &peers) {
        return;
    }
    {
        // One peer write in flight at most (the dial loop calls every 200 ms, and a write
        // may wait on a slow disk), and a list whose write failed is not tried again for
        // a while (a full or read-only disk would otherwise mean an fsync and an error line
        // five times a second).
        let mut w = PEER_WRITE.lock().expect("peer write lock");
        if w.pending
            || w.failed
                .as_ref()
                .is_some_and(|(list, at)| *list == peers && at.elapsed() < PEER_RETRY)
        {
            return;
        }
        w.pending = true;
    }
    let path = cx.settings.snapshot_file();
    let on_disk = cx.disk.snapshot.clone();
    tokio::spawn(async move {
        struct Pending(Option<Vec<crate::cluster::snapshot::BusPeer>>);
        impl Drop for Pending {
            fn drop(&mut self) {
                let mut w = PEER_WRITE.lock().expect("peer write lock");
                w.pending = false;
                w.failed = self.0.take().map(|l| (l, std::time::Instant::now()));
            }
        }
        let mut pending = Pending(None);
        let _one_at_a_time = WRITING.lock().await;
        // Looked at again under the writer's lock: a write of a new version, or another
        // call with the same list, may have landed meanwhile.
        let mut snap = {
            let current = on_disk.lock().expect("snapshot lock");
            if !differs(&current, &peers) {
                return;
            }
            current.clone().expect("differs implies a snapshot")
        };
        snap.peers = peers.clone();
        snap.written_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if write_file(&path, &snap).await {
            info!(
                peers = ?snap.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                "the snapshot lists the servers now in the cluster"
            );
            *on_disk.lock().expect("snapshot lock") = Some(snap);
        } else {
            pending.0 = Some(peers);
        }
    });
}

/// Whether the snapshot on disk (if this run has one) lists other peers than `peers`
/// (sorted).
fn differs(on_disk: &Option<Snapshot>, peers: &[crate::cluster::snapshot::BusPeer]) -> bool {
    on_disk
        .as_ref()
        .is_some_and(|s| sorted(s.peers.clone()) != peers)
}

fn sorted(
    mut peers: Vec<crate::cluster::snapshot::BusPeer>,
) -> Vec<crate::cluster::snapshot::BusPeer> {
    peers.sort_by(|a, b| (&a.name, &a.bus_address).cmp(&(&b.name, &b.bus_address)));
    peers
}
