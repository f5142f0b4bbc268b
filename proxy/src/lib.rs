//! `oxbus proxy`: the cluster's load balancer, on pingora.
//!
//! One process with three pingora services: the proxy (plain and optionally TLS
//! listeners; each connection is served by the HTTP/1 data path in [`app`], built on the
//! head parsing and body framing of [`h1`]), the stats endpoint, and a background service that
//! refreshes the server list (static, or the cluster's store through a caller-provided
//! [`ServerSource`]) and runs the active `/readyz` checks, as two loops that never wait on
//! each other. Before any of them runs, the first list is read and checked: a proxy takes
//! traffic only with servers it has checked (or, a fresh start with the store unreachable,
//! after saying loudly that it has none).
//!
//! Graceful upgrade is pingora's: the new process (`--upgrade`) sends SIGQUIT to the one in
//! the pid file and receives its listening sockets over the upgrade socket; the old one
//! keeps accepting for pingora's 5 s hand-over window, answers with `Connection: close` from
//! the moment the upgrade starts (so keep-alive clients reconnect to the successor), then
//! finishes its in-flight requests within `grace_period_s`; the tunnels of upgraded
//! connections (WebSocket) run the same course: until they end or the grace period does.

pub mod app;
pub mod config;
pub mod error;
pub mod h1;
pub mod pool;
pub mod stats;
pub mod upstream;

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ExecutionPhase, RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::{Backends, LoadBalancer, selection::RoundRobin};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{error, info, warn};

pub use config::ProxyConfig;
pub use error::{ListError, ProxyError, SourceError};
use pingora_load_balancing::Backend;
use pingora_load_balancing::discovery::ServiceDiscovery;

use crate::upstream::{CheckFailure, Registry, backend_addr};

/// A cluster has at most this many servers.
pub const MAX_UPSTREAMS: usize = 3;

/// After an error answer, how long unread request bytes are drained before the close (so
/// the client reads the answer instead of a reset): the proxy's rule, and the server's
/// after a refused head.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// ...and at most how many bytes are drained.
pub const LINGER_BYTES: usize = 1 << 20;

/// One server as a [`ServerSource`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedServer {
    pub addr: std::net::SocketAddr,
    /// What identifies this run of the server (e.g. its name, pid and start time): a server
    /// listed with another run than before was restarted, and the proxy forgets what it knew
    /// about the old run.
    pub run: String,
}

/// Where the servers come from, for a proxy whose list is not static (the cluster's store,
/// read by the `oxbus` binary). Called every `upstreams.refresh_interval_ms`, on a runtime
/// of its own (so a client it opens serves every call, the first one included, which runs
/// before the proxy serves); a call that errs or takes longer than
/// [`ProxyConfig::refresh_timeout`] keeps the last list.
#[async_trait]
pub trait ServerSource: Send + Sync {
    async fn servers(&self) -> Result<Vec<SourcedServer>, SourceError>;
}

/// The servers a proxy balances over: the file's static list, or a [`ServerSource`].
pub enum Upstreams {
    Static,
    Source(Box<dyn ServerSource>),
}

struct StaticServers(BTreeSet<Backend>);

#[async_trait]
impl ServiceDiscovery for StaticServers {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0.clone(), HashMap::new()))
    }
}

/// A runtime of the proxy's own for the server source and the first list and checks: it
/// exists before pingora's runtimes start, and it is never dropped (a runtime may not be
/// dropped from inside another one, which is where pingora ends).
fn side_runtime() -> Result<&'static tokio::runtime::Runtime, ProxyError> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("proxy-servers")
        .enable_all()
        .build()
        .map_err(ProxyError::SideRuntime)?;
    Ok(RT.get_or_init(|| rt))
}

/// Aborts a spawned task when dropped: an abandoned (timed-out) read of the server list
/// does not go on in the background.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Dynamic {
    source: Arc<dyn ServerSource>,
    rt: tokio::runtime::Handle,
    registry: Arc<Registry>,
    /// A read taking longer is abandoned (an error like any other: the last list is kept).
    timeout: Duration,
    /// The last error, logged once until the source recovers.
    failing: std::sync::Mutex<Option<Arc<ListError>>>,
    /// The last list: each server's address and run.
    known: std::sync::Mutex<std::collections::BTreeMap<std::net::SocketAddr, String>>,
}

impl Dynamic {
    async fn read(&self) -> Result<Vec<SourcedServer>, ListError> {
        let source = self.source.clone();
        let mut task = AbortOnDrop(self.rt.spawn(async move { source.servers().await }));
        match tokio::time::timeout(self.timeout, &mut task.0).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => Err(ListError::Task(e)),
            Err(_) => Err(ListError::Timeout(self.timeout)),
        }
    }

    /// The last error, if the last read failed.
    fn last_error(&self) -> Option<Arc<ListError>> {
        self.failing.lock().expect("lock").clone()
    }
}

#[async_trait]
impl ServiceDiscovery for Dynamic {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        match self.read().await {
            Ok(list) => {
                if self.failing.lock().expect("lock").take().is_some() {
                    info!("server list readable again");
                }
                if list.len() > MAX_UPSTREAMS {
                    warn!(
                        found = list.len(),
                        "more servers than a cluster may have ({MAX_UPSTREAMS}); using the first {MAX_UPSTREAMS}"
                    );
                }
                let mut now = std::collections::BTreeMap::new();
                for s in list {
                    if now.len() == MAX_UPSTREAMS {
                        break;
                    }
                    now.entry(s.addr).or_insert(s.run);
                }
                let mut known = self.known.lock().expect("lock");
                // A server new to the list, or listed as another run than before (restarted
                // between two reads), starts afresh: unchecked, no marks, no old connections.
                for (addr, run) in &now {
                    match known.get(addr) {
                        Some(was) if was == run => continue,
                        Some(was) => {
                            info!(upstream = %addr, run = %run, previous_run = %was, "server restarted")
                        }
                        None => info!(upstream = %addr, run = %run, "server joined"),
                    }
                    self.registry.rejoin(*addr, Some(run.clone()));
                }
                for a in known.keys() {
                    if !now.contains_key(a) {
                        info!(upstream = %a, "server left");
                    }
                }
                let set = now
                    .keys()
                    .map(|addr| Backend::new(&addr.to_string()))
                    .collect::<pingora_core::Result<BTreeSet<_>>>()?;
                *known = now;
                Ok((set, HashMap::new()))
            }
            Err(e) => {
                let message = e.to_string();
                let mut failing = self.failing.lock().expect("lock");
                if failing.as_ref().map(|f| f.to_string()).as_deref() != Some(message.as_str()) {
                    warn!(error = %message, "cannot read the server list; keeping the last one");
                    *failing = Some(Arc::new(e));
                }
                Err(pingora_core::Error::explain(
                    pingora_core::ErrorType::InternalError,
                    message,
                ))
            }
        }
    }
}

/// Lends the shared [`Dynamic`] to pingora's discovery (which takes ownership).
struct SharedDiscovery(Arc<Dynamic>);

#[async_trait]
impl ServiceDiscovery for SharedDiscovery {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        self.0.discover().await
    }
}

/// The active check: pingora's HTTP check of `health.path`, each result recorded against
/// the run of the server it was started for. The registry's verdict (with `rise`/`fall`)
/// is what routes traffic; pingora's own per-address verdict is not used: it is dropped when
/// a server leaves the list and starts as "healthy" when it rejoins, so a server taken
/// down before it left would never be announced up again.
struct ReadyzCheck {
    inner: HttpHealthCheck,
    registry: Arc<Registry>,
}

#[async_trait]
impl HealthCheck for ReadyzCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let run = backend_addr(target).map(|a| self.registry.get(a));
        let r = self.inner.check(target).await;
        if let Some(u) = run {
            let result = r.as_ref().map(|_| ()).map_err(|e| CheckFailure::from(&**e));
            match self.registry.record(&u, result) {
                Some(true) => info!(upstream = %target.addr, "server is up"),
                Some(false) => warn!(
                    upstream = %target.addr,
                    error = u.last_check_error.lock().expect("check error lock").as_deref().unwrap_or(""),
                    "server is down (failing its readiness check)"
                ),
                None => {}
            }
        }
        r
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// The background work: the active checks every `health.interval_ms` and (with a store)
/// the server list every `upstreams.refresh_interval_ms`, as two loops that never wait on
/// each other: a slow or unreachable store does not slow the checks.
struct Balancing {
    lb: Arc<LoadBalancer<RoundRobin>>,
    check_every: Duration,
    /// A check round's bound (each check has its own timeout; this is a backstop).
    check_timeout: Duration,
    /// The interval of the server-list refresh (each read is bounded by the discovery);
    /// None for a static list.
    refresh: Option<Duration>,
}

impl Balancing {
    async fn checks(&self) {
        loop {
            let next = tokio::time::Instant::now() + self.check_every;
            let round = self.lb.backends().run_health_check(true);
            if tokio::time::timeout(self.check_timeout, round)
                .await
                .is_err()
            {
                warn!(
                    timeout_ms = self.check_timeout.as_millis() as u64,
                    "a round of readiness checks overran; the next one starts now"
                );
            }
            tokio::time::sleep_until(next).await;
        }
    }

    async fn refreshes(&self) {
        let Some(every) = self.refresh else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(every).await;
            // Errors and timeouts are logged (once) by the discovery; the last list stays.
            let _ = self.lb.update().await;
        }
    }
}

#[async_trait]
impl pingora_core::services::background::BackgroundService for Balancing {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = self.checks() => {}
            _ = self.refreshes() => {}
            _ = async {
                while shutdown.changed().await.is_ok() && !*shutdown.borrow() {}
            } => {}
        }
    }
}

/// Before taking traffic: the first server list (with a store: retried until
/// `first_list_timeout`) and a first round of checks, so that the first requests find their
/// servers checked. The inner Err: no list could be read (the last error).
fn first_list_and_checks(
    cfg: &ProxyConfig,
    lb: &LoadBalancer<RoundRobin>,
    dynamic: Option<&Dynamic>,
) -> Result<Result<(), Arc<ListError>>, ProxyError> {
    let rt = side_runtime()?;
    let check_timeout = Duration::from_millis(cfg.health.timeout_ms + 1_000);
    Ok(rt.block_on(async {
        let deadline = tokio::time::Instant::now() + cfg.first_list_timeout();
        loop {
            // Each read is bounded by the discovery; the deadline bounds the last one too.
            if let Ok(Ok(())) = tokio::time::timeout_at(deadline, lb.update()).await {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(dynamic
                    .and_then(Dynamic::last_error)
                    .unwrap_or_else(|| Arc::new(ListError::NoAnswer)));
            }
            // Paced, but never past the deadline.
            tokio::time::sleep_until(deadline.min(now + Duration::from_millis(200))).await;
        }
        let _ = tokio::time::timeout(check_timeout, lb.backends().run_health_check(true)).await;
        Ok(())
    }))
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes the pid file if it still names `me` (a successor may have written its own).
fn remove_pid_file(path: &std::path::Path, me: u32) {
    if read_pid(path) == Some(me as i32) {
        let _ = std::fs::remove_file(path);
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Runs the proxy until SIGTERM (graceful stop), SIGINT (fast stop) or SIGQUIT (hand-over
/// to an upgraded process). With `upgrade`, takes the listening sockets from the running
/// proxy named by the pid file instead of binding them.
pub fn run(cfg: ProxyConfig, upstreams: Upstreams, upgrade: bool) -> Result<(), ProxyError> {
    if matches!(upstreams, Upstreams::Static) && cfg.upstreams.servers.is_empty() {
        return Err(ProxyError::NeedsSource);
    }
    let p = &cfg.proxy;
    std::fs::create_dir_all(&p.state_dir).map_err(|source| ProxyError::StateDir {
        path: p.state_dir.clone(),
        source,
    })?;
    let pid_file = cfg.pid_file();
    let running = read_pid(&pid_file).filter(|&pid| alive(pid) && pid != std::process::id() as i32);
    let old = match (upgrade, running) {
        (true, Some(pid)) => Some(pid),
        (true, None) => return Err(ProxyError::NothingToUpgrade { pid_file }),
        (false, Some(pid)) => {
            return Err(ProxyError::AlreadyRunning {
                pid,
                state_dir: p.state_dir.clone(),
            });
        }
        (false, None) => {
            // Fail with a clear message now rather than inside pingora's listener setup.
            let mut addrs = vec![p.listen.as_str()];
            addrs.extend(cfg.tls.as_ref().map(|t| t.listen.as_str()));
            if !p.stats_listen.is_empty() {
                addrs.push(p.stats_listen.as_str());
            }
            for a in addrs {
                std::net::TcpListener::bind(a).map_err(|source| ProxyError::Listen {
                    addr: a.to_owned(),
                    source,
                })?;
            }
            None
        }
    };

    let registry = Arc::new(
        Registry::new(p.balance, Duration::from_millis(p.passive_down_ms))
            .with_thresholds(cfg.health.rise, cfg.health.fall),
    );
    let dynamic = match upstreams {
        Upstreams::Static => None,
        Upstreams::Source(source) => Some(Arc::new(Dynamic {
            source: Arc::from(source),
            rt: side_runtime()?.handle().clone(),
            registry: registry.clone(),
            timeout: cfg.refresh_timeout(),
            failing: Default::default(),
            known: Default::default(),
        })),
    };
    let discovery: Box<dyn ServiceDiscovery + Send + Sync> = match &dynamic {
        Some(d) => Box::new(SharedDiscovery(d.clone())),
        None => {
            let mut set = BTreeSet::new();
            for s in &cfg.upstreams.servers {
                set.insert(Backend::new(s).map_err(|source| ProxyError::Upstream {
                    server: s.clone(),
                    source,
                })?);
            }
            Box::new(StaticServers(set))
        }
    };
    let mut check = HttpHealthCheck::new("oxbus-proxy", false);
    let mut req = RequestHeader::build("GET", cfg.health.path.as_bytes(), None)?;
    req.append_header("Host", "oxbus-proxy")?;
    req.append_header("User-Agent", "oxbus-proxy-health")?;
    check.req = req;
    check.consecutive_success = cfg.health.rise;
    check.consecutive_failure = cfg.health.fall;
    let timeout = Duration::from_millis(cfg.health.timeout_ms);
    check.peer_template.options.connection_timeout = Some(timeout);
    check.peer_template.options.read_timeout = Some(timeout);
    let mut backends = Backends::new(discovery);
    backends.set_health_check(Box::new(ReadyzCheck {
        inner: check,
        registry: registry.clone(),
    }));
    let lb: Arc<LoadBalancer<RoundRobin>> = Arc::new(LoadBalancer::from_backends(backends));

    // The server list and a first round of checks before taking traffic: an upgrading proxy
    // asks for the running one's sockets only then (that one serves meanwhile), so no
    // request finds the new process without servers.
    if let Err(e) = first_list_and_checks(&cfg, &lb, dynamic.as_deref())? {
        let waited = cfg.first_list_timeout().as_millis() as u64;
        if upgrade {
            return Err(ProxyError::UpgradeWithoutList {
                waited_ms: waited,
                reason: e,
            });
        }
        error!(
            waited_ms = waited,
            error = %e,
            "starting WITHOUT a server list: the config store did not answer; every request \
             is answered 503 until it does (the list is read again every refresh_interval_ms)"
        );
    }
    let background = background_service(
        "servers and health checks",
        Balancing {
            lb: lb.clone(),
            check_every: Duration::from_millis(cfg.health.interval_ms),
            check_timeout: Duration::from_millis(cfg.health.timeout_ms + 1_000),
            refresh: dynamic.as_ref().map(|_| cfg.refresh_interval()),
        },
    );

    let conf = ServerConf {
        threads: p.threads,
        pid_file: pid_file.display().to_string(),
        upgrade_sock: cfg.upgrade_socket().display().to_string(),
        grace_period_seconds: Some(p.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(2),
        // One current-thread runtime per thread: no cross-thread stealing or wake-ups
        // (measured: ~2 µs less CPU per request than the work-stealing runtime).
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if let Some(pid) = old {
        info!(
            old_pid = pid,
            "upgrading: asking the running proxy for its sockets"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGQUIT,
        )
        .map_err(|source| ProxyError::Signal { pid, source })?;
    }
    server.bootstrap();

    let totals = Arc::new(app::Totals::default());
    let draining = Arc::new(AtomicBool::new(false));
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let balancer = Arc::new(app::Balancer {
        lb: lb.clone(),
        registry: registry.clone(),
        limits: app::Limits {
            connect_timeout: Duration::from_millis(p.connect_timeout_ms),
            read_timeout: Duration::from_millis(p.upstream_read_timeout_ms),
            header_timeout: Duration::from_millis(p.header_read_timeout_ms),
            expect_continue_timeout: Duration::from_millis(p.expect_continue_timeout_ms),
            keepalive_timeout: Duration::from_millis(p.keepalive_timeout_ms),
            tunnel_idle_timeout: Duration::from_millis(p.tunnel_idle_timeout_ms),
            max_header_bytes: p.max_header_bytes,
            retries: p.retries,
            first_check_wait: Duration::from_millis(cfg.health.timeout_ms + cfg.health.interval_ms),
            pass_trace_context: p.pass_trace_context,
        },
        totals: totals.clone(),
        draining: draining.clone(),
        id_prefix: format!("{started:x}"),
        id_counter: AtomicU64::new(0),
    });
    let app = app::HttpApp { balancer };
    let mut service = Service::new("oxbus proxy".to_string(), app);
    // Unbuffered: the data path buffers reads and writes itself; pingora's buffered stream
    // would add a copy per read and a flush layer per write.
    use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
    service.add_listener(
        ListenerConfig::tcp(p.listen.clone()).l4_buffer(L4BufferSettings::unbuffered()),
    );
    if let Some(tls) = &cfg.tls {
        let settings = pingora_core::listeners::tls::TlsSettings::intermediate(
            &tls.cert_file.display().to_string(),
            &tls.key_file.display().to_string(),
        )
        .map_err(ProxyError::Tls)?;
        service.add_listener(
            ListenerConfig::tcp(tls.listen.clone())
                .tls(settings)
                .l4_buffer(L4BufferSettings::unbuffered()),
        );
    }
    server.add_service(service);
    if !p.stats_listen.is_empty() {
        let mut stats = Service::new(
            "oxbus proxy stats".to_string(),
            stats::Stats {
                lb,
                registry,
                totals,
                draining: draining.clone(),
            },
        );
        stats.add_tcp(&p.stats_listen);
        server.add_service(stats);
    }
    server.add_service(background);

    let me = std::process::id();
    let mut phases = server.watch_execution_phase();
    let pid_path = pid_file.clone();
    // Probed with a plain connect: not the TLS listener (a bare connect is a failed
    // handshake there, logged as an error), which the proxy service binds with the plain one.
    let mut listeners = vec![p.listen.clone()];
    if !p.stats_listen.is_empty() {
        listeners.push(p.stats_listen.clone());
    }
    let serving = format!(
        "proxy serving listen={} tls={} stats={} balance={} upgraded={upgrade}",
        p.listen,
        cfg.tls.as_ref().map_or("-", |t| t.listen.as_str()),
        if p.stats_listen.is_empty() {
            "-"
        } else {
            p.stats_listen.as_str()
        },
        p.balance.as_str(),
    );
    std::thread::Builder::new()
        .name("proxy-phase".into())
        .spawn(move || {
            while let Ok(phase) = phases.blocking_recv() {
                if matches!(phase, ExecutionPhase::Running) {
                    // Services bind in their own runtimes: announce once all accept.
                    for a in &listeners {
                        let end = std::time::Instant::now() + Duration::from_secs(10);
                        while std::net::TcpStream::connect(a).is_err()
                            && std::time::Instant::now() < end
                        {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    info!("{serving}");
                }
                if matches!(phase, ExecutionPhase::GracefulTerminate) {
                    // Stopping, not handing over: the listener closes now, so a new proxy
                    // may start while this one finishes its requests.
                    remove_pid_file(&pid_path, me);
                }
                if matches!(
                    phase,
                    ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::ShutdownStarted
                ) && !draining.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    info!(?phase, "draining: answers now close their connections");
                }
            }
        })
        .map_err(ProxyError::Thread)?;

    std::fs::write(&pid_file, format!("{me}\n")).map_err(|source| ProxyError::WritePid {
        path: pid_file.clone(),
        source,
    })?;
    server.run(RunArgs::default());
    remove_pid_file(&pid_file, me);
    info!("proxy stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use std::sync::atomic::Ordering;

    /// A source whose list the test sets.
    struct Listed(Arc<std::sync::Mutex<Vec<SourcedServer>>>);

    #[async_trait]
    impl ServerSource for Listed {
        async fn servers(&self) -> Result<Vec<SourcedServer>, SourceError> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_new_run_at_a_known_address_starts_afresh() {
        let list = Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = Arc::new(Registry::new(Balance::RoundRobin, Duration::from_secs(5)));
        let d = Dynamic {
            source: Arc::new(Listed(list.clone())),
            rt: tokio::runtime::Handle::current(),
            registry: registry.clone(),
            timeout: Duration::from_secs(5),
            failing: Default::default(),
            known: Default::default(),
        };
        let addr: std::net::SocketAddr = "127.0.0.1:7".parse().unwrap();
        let run = |r: &str| SourcedServer {
            addr,
            run: r.into(),
        };
        *list.lock().unwrap() = vec![run("a/1/1")];
        d.discover().await.unwrap();
        registry.record_check(addr, Err(CheckFailure("503".into())));
        let first = registry.get(addr);
        // Listed again as the same run: the same entry, its failing check remembered.
        d.discover().await.unwrap();
        assert!(Arc::ptr_eq(&first, &registry.get(addr)));
        // Restarted between two reads (never seen gone): a fresh, unchecked entry.
        *list.lock().unwrap() = vec![run("a/2/2")];
        let (set, _) = d.discover().await.unwrap();
        assert_eq!(set.len(), 1);
        let now = registry.get(addr);
        assert!(!Arc::ptr_eq(&first, &now));
        assert_eq!(now.run.as_deref(), Some("a/2/2"));
        assert!(!now.checked.load(Ordering::Acquire));
        assert_eq!(registry.record_check(addr, Ok(())), Some(true));
        // Gone, then back as the same run it had: it left, so it starts afresh too.
        *list.lock().unwrap() = vec![];
        d.discover().await.unwrap();
        *list.lock().unwrap() = vec![run("a/2/2")];
        d.discover().await.unwrap();
        assert!(!registry.get(addr).checked.load(Ordering::Acquire));
    }
}
