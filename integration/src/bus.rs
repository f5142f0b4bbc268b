//! The cluster bus as the tests see it: a member whose changes travel only over the bus,
//! `oxbus cluster status`, and the wait for a server's bus links.
//!
//! Test code only: it reads what servers report and starts nothing (servers come from
//! [`crate::Env`], their secret from [`crate::cluster_secret`]).

use crate::{Env, Server, eventually};
use std::path::Path;
use std::time::Duration;

impl Env {
    /// [`Env::cluster_member`] with the version check (the bus's backstop) slowed to ten
    /// minutes, so that only the bus can carry a change within a test's waits.
    pub fn bus_member(self, url: &str, name: &str, secret: &Path) -> Self {
        self.cluster_member(url, name, secret)
            .set("cluster", "sync_interval_ms", "600000")
    }
}

/// `oxbus cluster status --output json` against `srv` (the command must succeed).
pub fn cluster_status(srv: &Server) -> serde_json::Value {
    let out = srv.cli(&["cluster", "status", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The peers `srv` has a bus link to, as `oxbus cluster status` lists them.
pub fn links(srv: &Server) -> Vec<String> {
    cluster_status(srv)["bus"]["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["peer"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `srv` has a bus link to each of `peers` (in name order, as servers list
/// them) and to no other server.
pub async fn linked(srv: &Server, peers: &[&str]) {
    eventually(
        Duration::from_secs(30),
        &format!("links to {peers:?}"),
        || {
            let l = links(srv);
            async move { (l == peers).then_some(()) }
        },
    )
    .await;
}
