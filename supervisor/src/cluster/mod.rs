//! The cluster: the bus between servers (links, heartbeats, NOTIFY, deploy activation,
//! cache replication), `sync` (following the config store's version), and the on-disk
//! snapshot a server boots from when the store is down. It knows no HTTP.

pub mod bus;
pub mod membership;
pub mod snapshot;
pub mod sync;
