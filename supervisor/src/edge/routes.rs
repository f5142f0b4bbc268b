//! The live routing table: server.toml's channels plus the store's, with the checks compiled
//! against the security definitions. Owns the one way a table is built and swapped in
//! ([`RoutingTable::rebuild`]), used by boot, the sync loop, the admin API and config import;
//! a request holds the `Arc<Router>` it started with. It reads no store: callers pass the
//! stored channels and definitions in.

use std::sync::{Arc, RwLock};

use crate::edge::router::Router;
pub use crate::edge::router::TableError;
use crate::model::channel::Channel;
use crate::model::security::SecurityDef;

/// The routing table a server serves with, and what it is built from besides the store.
#[derive(Debug)]
pub struct RoutingTable {
    current: RwLock<Arc<Router>>,
    /// server.toml's channels: part of every table.
    file_channels: Vec<Channel>,
    /// Opens the sealed secrets the checks use.
    key: crate::secrets::Key,
    /// Told of each table installed after the first (boot: the WebSocket sessions close
    /// those whose channel or security definition changed).
    on_swap: std::sync::OnceLock<SwapHook>,
}

/// What is told of each table installed (see [`RoutingTable::on_swap`]).
struct SwapHook(OnSwap);

/// What [`RoutingTable::on_swap`] is given.
pub type OnSwap = Box<dyn Fn(&Arc<Router>) + Send + Sync>;

impl std::fmt::Debug for SwapHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwapHook")
    }
}

impl RoutingTable {
    /// The first table: server.toml's channels, the stored ones and `defs`' checks.
    pub fn new(
        file_channels: Vec<Channel>,
        stored: &[Channel],
        defs: &[SecurityDef],
        key: crate::secrets::Key,
    ) -> Result<RoutingTable, TableError> {
        let table = RoutingTable {
            current: RwLock::new(Arc::new(Router::default())),
            file_channels,
            key,
            on_swap: std::sync::OnceLock::new(),
        };
        let first = table.build(stored, defs, None)?;
        *table.current.write().expect("router lock") = Arc::new(first);
        Ok(table)
    }

    /// The table requests are routed with now.
    pub fn current(&self) -> Arc<Router> {
        self.current.read().expect("router lock").clone()
    }

    /// Builds the table `stored` and `defs` would make, without swapping it in (to validate
    /// a change before it is stored).
    pub fn check(&self, stored: &[Channel], defs: &[SecurityDef]) -> Result<Router, TableError> {
        self.build(stored, defs, None)
    }

    /// Builds the table from `stored` and `defs`, carrying the current table's gate state
    /// (rate buckets) over, and swaps it in.
    pub fn rebuild(&self, stored: &[Channel], defs: &[SecurityDef]) -> Result<(), TableError> {
        let previous = self.current();
        let router = Arc::new(self.build(stored, defs, Some(&previous))?);
        *self.current.write().expect("router lock") = router.clone();
        if let Some(f) = self.on_swap.get() {
            (f.0)(&router);
        }
        Ok(())
    }

    /// Sets what is told of each table installed from now on (once).
    pub fn on_swap(&self, f: OnSwap) {
        let _ = self.on_swap.set(SwapHook(f));
    }

    fn build(
        &self,
        stored: &[Channel],
        defs: &[SecurityDef],
        previous: Option<&Router>,
    ) -> Result<Router, TableError> {
        let mut all = self.file_channels.clone();
        all.extend(stored.iter().cloned());
        Router::with_gate(&all, defs, &self.key, previous)
    }
}
