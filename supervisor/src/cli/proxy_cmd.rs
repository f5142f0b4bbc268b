//! `oxbus proxy --config FILE`: the cluster's load balancer (the `oxbus-proxy` crate), with
//! its server list read from the config store when the file names one.

use async_trait::async_trait;
use oxbus_proxy::{ProxyConfig, ServerSource, SourceError, SourcedServer, Upstreams};
use std::net::SocketAddr;
use std::path::Path;
use tokio::sync::OnceCell;

use super::CliError;
use crate::store::{SERVER_STALE, Store};

/// The cluster's live servers: registered in the store, heartbeat fresher than
/// [`SERVER_STALE`]. A server that stops cleanly deregisters and leaves at once; one that
/// dies stays listed until its heartbeat goes stale, and the proxy's checks keep it out.
/// Each is listed with its run (name, pid, start time): a restarted server is a new run.
struct StoreServers {
    url: String,
    store: OnceCell<Store>,
}

#[async_trait]
impl ServerSource for StoreServers {
    async fn servers(&self) -> Result<Vec<SourcedServer>, SourceError> {
        // Opened on first use, on the runtime the proxy keeps for its server source.
        let store = self
            .store
            .get_or_try_init(|| Store::open(&self.url))
            .await
            .map_err(|e| SourceError::new("config store", e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let fresh = now - SERVER_STALE.as_millis() as i64;
        let mut out = Vec::new();
        for s in store
            .servers()
            .await
            .map_err(|e| SourceError::new("config store", e))?
        {
            if s.last_seen < fresh {
                continue;
            }
            match s.http_address.parse::<SocketAddr>() {
                Ok(addr) => out.push(SourcedServer {
                    addr,
                    run: format!("{}/{}/{}", s.name, s.pid, s.started_at),
                }),
                Err(e) => tracing::warn!(
                    server = %s.name,
                    address = %s.http_address,
                    error = %e,
                    "server registered an unusable address; skipped"
                ),
            }
        }
        Ok(out)
    }
}

/// `oxbus proxy`: the log subscriber (`OXBUS_LOG`, default `info`), then [`run`].
pub fn command(config: &Path, upgrade: bool, exit_with_parent: bool) -> Result<(), CliError> {
    let level = std::env::var("OXBUS_LOG").unwrap_or_else(|_| "info".into());
    super::logging::init_logging(&level, super::logging::LogFormat::Text)?;
    run(config, upgrade, exit_with_parent)
}

/// Runs the proxy in the foreground. `exit_with_parent`: stop (gracefully) when the process
/// that started this one dies: quickstart's proxy does not outlive quickstart.
pub fn run(config: &Path, upgrade: bool, exit_with_parent: bool) -> Result<(), CliError> {
    let cfg = ProxyConfig::load(config)?;
    let upstreams = match &cfg.upstreams.store {
        Some(url) => Upstreams::Source(Box::new(StoreServers {
            url: url.clone(),
            store: OnceCell::new(),
        })),
        None => Upstreams::Static,
    };
    if exit_with_parent {
        super::when_parent_gone(|| {
            tracing::info!("parent process gone; stopping");
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
        })?;
    }
    oxbus_proxy::run(cfg, upstreams, upgrade).map_err(CliError::Proxy)
}
