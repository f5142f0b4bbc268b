//! `oxbus proxy`: the cluster's load balancer, on pingora.
//!
//! One process with three pingora services: the proxy (plain and optionally TLS
//! listeners; each connection is served by the HTTP/1 data path in [`app`], built on the
//! head parsing and body framing of [`h1`]), the stats endpoint, and a background service that
//! refreshes the server list (static, or the cluster's store through a caller-provided
//! [`ServerSource`]) and runs the active `/readyz` checks.
//!
//! Graceful upgrade is pingora's: the new process (`--upgrade`) sends SIGQUIT to the one in
//! the pid file and receives its listening sockets over the upgrade socket; the old one
//! keeps accepting for pingora's 5 s hand-over window, answers with `Connection: close` from
//! the moment the upgrade starts (so keep-alive clients reconnect to the successor), then
//! finishes its in-flight requests within `grace_period_s`.

pub mod app;
pub mod config;
pub mod h1;
pub mod stats;
pub mod upstream;

use anyhow::{Context as _, bail};
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
use tracing::{info, warn};

pub use config::ProxyConfig;
use pingora_load_balancing::Backend;
use pingora_load_balancing::discovery::ServiceDiscovery;

use crate::upstream::{Registry, backend_addr};

/// A cluster has at most this many servers.
pub const MAX_UPSTREAMS: usize = 3;

/// Where the servers come from, for a proxy whose list is not static (the cluster's store,
/// read by the `oxbus` binary). Called every `upstreams.refresh_interval_ms`; an error keeps
/// the last list.
#[async_trait]
pub trait ServerSource: Send + Sync {
    async fn servers(&self) -> Result<Vec<std::net::SocketAddr>, String>;
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

struct Dynamic {
    source: Box<dyn ServerSource>,
    /// The last error, logged once until the source recovers.
    failing: std::sync::Mutex<Option<String>>,
    known: std::sync::Mutex<BTreeSet<std::net::SocketAddr>>,
}

#[async_trait]
impl ServiceDiscovery for Dynamic {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        match self.source.servers().await {
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
                let now: BTreeSet<_> = list.into_iter().take(MAX_UPSTREAMS).collect();
                let mut known = self.known.lock().expect("lock");
                for a in now.difference(&known) {
                    info!(upstream = %a, "server joined");
                }
                for a in known.difference(&now) {
                    info!(upstream = %a, "server left");
                }
                *known = now.clone();
                let set = now
                    .into_iter()
                    .map(|addr| Backend::new(&addr.to_string()))
                    .collect::<pingora_core::Result<BTreeSet<_>>>()?;
                Ok((set, HashMap::new()))
            }
            Err(e) => {
                let mut failing = self.failing.lock().expect("lock");
                if failing.as_deref() != Some(e.as_str()) {
                    warn!(error = %e, "cannot read the server list; keeping the last one");
                    *failing = Some(e.clone());
                }
                Err(pingora_core::Error::explain(
                    pingora_core::ErrorType::InternalError,
                    e,
                ))
            }
        }
    }
}

fn discovery(
    cfg: &ProxyConfig,
    upstreams: Upstreams,
) -> anyhow::Result<Box<dyn ServiceDiscovery + Send + Sync>> {
    Ok(match upstreams {
        Upstreams::Static => {
            let mut set = BTreeSet::new();
            for s in &cfg.upstreams.servers {
                set.insert(Backend::new(s).with_context(|| format!("upstream {s}"))?);
            }
            Box::new(StaticServers(set))
        }
        Upstreams::Source(source) => Box::new(Dynamic {
            source,
            failing: Default::default(),
            known: Default::default(),
        }),
    })
}

/// The active check: pingora's HTTP check of `health.path`, with each result recorded for
/// the registry (first-check gating, stats) and changes logged.
struct ReadyzCheck {
    inner: HttpHealthCheck,
    registry: Arc<Registry>,
}

#[async_trait]
impl HealthCheck for ReadyzCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let r = self.inner.check(target).await;
        if let Some(addr) = backend_addr(target) {
            self.registry
                .record_check(addr, r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        r
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let Some(addr) = backend_addr(target) {
            self.registry.set_ready(addr, healthy);
        }
        if healthy {
            info!(upstream = %target.addr, "server is up");
        } else {
            warn!(upstream = %target.addr, "server is down (failing its readiness check)");
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
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
pub fn run(cfg: ProxyConfig, upstreams: Upstreams, upgrade: bool) -> anyhow::Result<()> {
    if matches!(upstreams, Upstreams::Static) && cfg.upstreams.servers.is_empty() {
        bail!("the proxy config names a store: its servers need a ServerSource");
    }
    let discovery = discovery(&cfg, upstreams)?;
    let p = &cfg.proxy;
    std::fs::create_dir_all(&p.state_dir)
        .with_context(|| format!("cannot create state_dir {}", p.state_dir.display()))?;
    let pid_file = cfg.pid_file();
    let running = read_pid(&pid_file).filter(|&pid| alive(pid) && pid != std::process::id() as i32);
    let old = match (upgrade, running) {
        (true, Some(pid)) => Some(pid),
        (true, None) => bail!(
            "--upgrade: no running proxy to take over (pid file {} names no live process)",
            pid_file.display()
        ),
        (false, Some(pid)) => bail!(
            "a proxy (pid {pid}) already runs with state_dir {}; use --upgrade to replace it",
            p.state_dir.display()
        ),
        (false, None) => {
            // Fail with a clear message now rather than inside pingora's listener setup.
            let mut addrs = vec![p.listen.as_str()];
            addrs.extend(cfg.tls.as_ref().map(|t| t.listen.as_str()));
            if !p.stats_listen.is_empty() {
                addrs.push(p.stats_listen.as_str());
            }
            for a in addrs {
                std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a}"))?;
            }
            None
        }
    };

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
        .with_context(|| format!("cannot signal the running proxy (pid {pid})"))?;
    }
    server.bootstrap();

    let registry = Arc::new(Registry::new(
        p.balance,
        Duration::from_millis(p.passive_down_ms),
    ));
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
    let mut lb: LoadBalancer<RoundRobin> = LoadBalancer::from_backends(backends);
    lb.health_check_frequency = Some(Duration::from_millis(cfg.health.interval_ms));
    lb.update_frequency = cfg.upstreams.store.as_ref().map(|_| cfg.refresh_interval());
    lb.parallel_health_check = true;
    let background = background_service("servers and health checks", lb);
    let lb = background.task();

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
            max_header_bytes: p.max_header_bytes,
            retries: p.retries,
            first_check_wait: Duration::from_millis(cfg.health.timeout_ms + cfg.health.interval_ms),
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
        .map_err(|e| anyhow::anyhow!("TLS certificate or key: {e}"))?;
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
        })?;

    std::fs::write(&pid_file, format!("{me}\n"))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    server.run(RunArgs::default());
    remove_pid_file(&pid_file, me);
    info!("proxy stopped");
    Ok(())
}
