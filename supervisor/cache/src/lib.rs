//! Named caches: every server holds them in memory (moka), services use them over their
//! worker's IPC connection (`cache.*` ops, `ipc-protocol/SPEC.md`), operators through the
//! admin API, and writes replicate to the other servers over the cluster bus.
//!
//! Consistency (`docs/CACHE.md`): on one server every operation is atomic per key (`incr`
//! included). Across servers a write is stamped with a hybrid logical clock (wall-clock
//! milliseconds and a counter, ties broken by a per-server id) and every server keeps, per
//! key, the write with the highest stamp: last writer wins, and concurrent writes to the same
//! key converge to the same value everywhere once their replication messages have arrived.
//! Deletes leave a tombstone (kept [`TOMBSTONE_TTL`]) so that an older write arriving late
//! cannot resurrect a key; `clear` records its stamp and drops every older entry. A server
//! that starts (or restarts) starts with empty caches: nothing is warmed from a peer.
//! Replication is best effort over live links: a server that was cut off misses the writes
//! of that time (they are not replayed), so its entries may differ until written again or
//! expired.
//!
//! Layout: `def` (definitions and their validation), `clock` (stamps and the hybrid logical
//! clock), `entry` (a value and its expiry), `cache` (one cache), `caches` (the registry and
//! replication), `repl` (the replication record), `ipc` (the workers' calls), `error`.

mod cache;
mod caches;
mod clock;
mod def;
mod entry;
mod error;
mod ipc;
mod repl;

pub use cache::{Cache, CacheStats, Counters, MAX_KEY_LEN, TOMBSTONE_TTL};
pub use caches::Caches;
pub use clock::{Hlc, Stamp, node_id, now_ms};
pub use def::{
    CacheDef, DEFAULT_CACHE, MAX_ENTRIES_LIMIT, MAX_EXPIRY_S, MAX_ITEM_SIZE_LIMIT, validate_name,
};
pub use entry::{Entry, ValueKind};
pub use error::{CacheDefError, CacheError};
pub use ipc::IpcReply;
pub use repl::Repl;
