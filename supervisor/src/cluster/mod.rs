//! The cluster: the bus between servers (links, heartbeats, NOTIFY, deploy activation,
//! cache replication), `sync` (following the config store's version), and the on-disk
//! snapshot a server boots from when the store is down, and this server's membership in the
//! store's server list. It knows no HTTP. It may use `deploy` (to activate what peers
//! deployed) but `deploy` never names it: a deploy reaches the peers through the
//! `deploy::Peers` trait the bus implements.

pub mod bus;
pub mod membership;
pub mod snapshot;
pub mod sync;
