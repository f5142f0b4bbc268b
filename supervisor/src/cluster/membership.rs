//! This server's membership in the cluster: its entry in the store's server list, the
//! registration at boot (refused beyond the cluster limits) and the heartbeat that keeps the
//! entry fresh. It knows the store and the node state, nothing else.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{debug, error, info};

use crate::config::Settings;
use crate::node::Node;
use crate::store::{ServerRecord, Store};

/// Why this server could not register in the store's server list.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The store refused it (the cluster's limits), with the store's reason.
    #[error("{0}")]
    Refused(String),
    #[error("cannot register in the config store: {0}")]
    Store(crate::store::StoreError),
}

/// This server's entry for the store's server list.
pub fn server_record(settings: &Settings, local: std::net::SocketAddr) -> ServerRecord {
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
    ServerRecord {
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
pub async fn register_server(
    store: &crate::store::Store,
    me: &ServerRecord,
) -> Result<(), MembershipError> {
    let others = store.register_server(me).await.map_err(|e| match e {
        crate::store::StoreError::Invalid(m) => MembershipError::Refused(m),
        e => MembershipError::Store(e),
    })?;
    info!(
        server = %me.name,
        others = ?others.iter().map(|o| &o.name).collect::<Vec<_>>(),
        "registered in the config store"
    );
    Ok(())
}

/// Keeps this server's row fresh (with the config version it has applied); registers again
/// if another server dropped it as stale or the store lost it during an outage.
pub async fn server_heartbeat(node: Arc<Node>, store: Store, me: ServerRecord) {
    let mut tick = tokio::time::interval(crate::store::SERVER_HEARTBEAT);
    tick.tick().await;
    loop {
        tick.tick().await;
        let applied = node.applied_version.load(Ordering::Relaxed);
        match store.heartbeat_server(&me.name, me.pid, applied).await {
            Ok(true) => {}
            Ok(false) => {
                info!(server = %me.name, "registering this server in the config store (again)");
                let me = ServerRecord {
                    config_version: applied,
                    ..me.clone()
                };
                if let Err(e) = store.register_server(&me).await {
                    error!(error = %e, "cannot register this server in the config store");
                }
            }
            Err(e) => debug!(error = %e, "server heartbeat to the config store failed"),
        }
    }
}
