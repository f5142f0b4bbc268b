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

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The cache that always exists.
pub const DEFAULT_CACHE: &str = "default";
/// How long a delete is remembered, against late writes of older stamps.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 4096;
/// Upper bound of `max_item_size`: a value travels in one IPC frame and, replicated, in one
/// bus frame of at most 64 MiB, where JSON text is escaped (up to twice its size).
pub const MAX_ITEM_SIZE_LIMIT: u64 = 16 * 1024 * 1024;
/// Upper bound of `max_entries`.
pub const MAX_ENTRIES_LIMIT: u64 = 100_000_000;

fn default_max_entries() -> u64 {
    10_000
}
fn default_max_item_size() -> u64 {
    1024 * 1024
}
fn yes() -> bool {
    true
}

/// A cache definition as stored and exported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheDef {
    pub name: String,
    /// At most this many entries; beyond it the least valuable are evicted (moka's TinyLFU).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Largest value accepted, bytes (JSON text or raw bytes); a larger one is refused.
    #[serde(default = "default_max_item_size")]
    pub max_item_size: u64,
    /// Expiry of a `set` that names none, seconds; 0 = never.
    #[serde(default)]
    pub default_expiry_s: u64,
    /// A `get` that finds an entry with an expiry pushes it forward by the entry's expiry
    /// (on the server that served the get: reads are not replicated).
    #[serde(default)]
    pub extend_expiry_on_get: bool,
    /// Writes reach the other servers of the cluster.
    #[serde(default = "yes")]
    pub replicate: bool,
}

impl CacheDef {
    /// The `default` cache as it is when no definition names it.
    pub fn builtin_default() -> CacheDef {
        CacheDef::named(DEFAULT_CACHE)
    }

    /// A definition with every setting at its default.
    pub fn named(name: &str) -> CacheDef {
        CacheDef {
            name: name.to_owned(),
            max_entries: default_max_entries(),
            max_item_size: default_max_item_size(),
            default_expiry_s: 0,
            extend_expiry_on_get: false,
            replicate: true,
        }
    }

    /// Checks every field; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if !(1..=MAX_ENTRIES_LIMIT).contains(&self.max_entries) {
            return Err(format!(
                "cache {}: max_entries must be 1..={MAX_ENTRIES_LIMIT}, got {}",
                self.name, self.max_entries
            ));
        }
        if !(1..=MAX_ITEM_SIZE_LIMIT).contains(&self.max_item_size) {
            return Err(format!(
                "cache {}: max_item_size must be 1..={MAX_ITEM_SIZE_LIMIT} bytes, got {}",
                self.name, self.max_item_size
            ));
        }
        if self.default_expiry_s > MAX_EXPIRY_S {
            return Err(format!(
                "cache {}: default_expiry_s must be at most {MAX_EXPIRY_S} (10 years), got {}",
                self.name, self.default_expiry_s
            ));
        }
        Ok(())
    }
}

/// Ten years: longer expiries are refused rather than overflowing anything.
pub const MAX_EXPIRY_S: u64 = 10 * 366 * 24 * 3600;

/// Valid cache names: 1-64 of letters, digits, `._-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{name:?} is not a valid cache name (1-64 characters: letters, digits, ._-)"
        ));
    }
    Ok(())
}

// -- clock -----------------------------------------------------------------------------------

/// A write's place in the cluster-wide order: hybrid logical time, then the server's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Wall-clock milliseconds << 16 | a counter (see [`Hlc`]).
    pub t: u64,
    /// The writing server's id ([`node_id`]).
    pub node: u64,
}

impl Stamp {
    pub const ZERO: Stamp = Stamp { t: 0, node: 0 };
}

/// The id of a server in stamps: the first 8 bytes of SHA-256 of its name.
pub fn node_id(server: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(server.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A hybrid logical clock: never goes backwards, stays close to wall-clock time, and moves
/// past every stamp it has seen, so a write made after seeing another is ordered after it.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A new local time, greater than every time returned or observed before.
    pub fn now(&self) -> u64 {
        let wall = now_ms() << 16;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Takes note of a time seen in another server's write.
    pub fn observe(&self, t: u64) {
        self.last.fetch_max(t, Ordering::AcqRel);
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// -- entries ---------------------------------------------------------------------------------

/// What a value is, so that it comes back as what was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    /// JSON text (any JSON-serialisable value on the Python side).
    Json,
    /// Raw bytes.
    Bytes,
}

impl ValueKind {
    /// The content type a value of this kind travels with.
    pub fn content_type(self) -> &'static str {
        match self {
            ValueKind::Json => "application/json",
            ValueKind::Bytes => "application/octet-stream",
        }
    }

    pub fn from_content_type(ct: &str) -> Option<ValueKind> {
        match ct {
            "application/json" | "json" => Some(ValueKind::Json),
            "application/octet-stream" | "bytes" => Some(ValueKind::Bytes),
            _ => None,
        }
    }
}

/// One cached value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Bytes,
    pub kind: ValueKind,
    /// Wall-clock ms when it expires; 0 = never.
    pub expires_at: u64,
    /// The expiry it was written with, ms (0 = none): what extend-on-get extends by.
    pub ttl_ms: u64,
    pub stamp: Stamp,
}

impl Entry {
    fn remaining(&self) -> Option<Duration> {
        (self.expires_at != 0)
            .then(|| Duration::from_millis(self.expires_at.saturating_sub(now_ms())))
    }
}

/// Per-entry expiry for moka, from the entry's absolute expiry time.
struct ByEntry {
    extend_on_get: bool,
}

impl moka::Expiry<String, Entry> for ByEntry {
    fn expire_after_create(&self, _: &String, v: &Entry, _: Instant) -> Option<Duration> {
        v.remaining()
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.remaining()
    }

    fn expire_after_read(
        &self,
        _: &String,
        v: &Entry,
        _: Instant,
        left: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        if self.extend_on_get && v.ttl_ms > 0 {
            Some(Duration::from_millis(v.ttl_ms))
        } else {
            left
        }
    }
}

// -- errors ----------------------------------------------------------------------------------

/// Why a cache operation was refused. Each maps to a REPLY status and a Python exception.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("no cache named {0}")]
    UnknownCache(String),
    #[error("the value is {size} bytes, more than cache {cache}'s max_item_size of {max}")]
    TooLarge {
        cache: String,
        size: usize,
        max: u64,
    },
    #[error("the value of {key:?} is not an integer")]
    NotInteger { key: String },
    #[error("incrementing {key:?} overflows a 64-bit integer")]
    Overflow { key: String },
    #[error("{0}")]
    Invalid(String),
}

impl CacheError {
    /// The REPLY status (and admin API status) of this error.
    pub fn status(&self) -> u16 {
        match self {
            CacheError::UnknownCache(_) => 404,
            CacheError::TooLarge { .. } => 413,
            CacheError::NotInteger { .. } | CacheError::Overflow { .. } => 409,
            CacheError::Invalid(_) => 400,
        }
    }

    /// The REPLY meta's `error` kind, which the Python side turns into an exception class.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::UnknownCache(_) => "unknown_cache",
            CacheError::TooLarge { .. } => "too_large",
            CacheError::NotInteger { .. } | CacheError::Overflow { .. } => "not_integer",
            CacheError::Invalid(_) => "invalid",
        }
    }
}

fn check_key(key: &str) -> Result<(), CacheError> {
    if key.len() > MAX_KEY_LEN {
        return Err(CacheError::Invalid(format!(
            "a cache key is at most {MAX_KEY_LEN} bytes, this one has {}",
            key.len()
        )));
    }
    Ok(())
}

/// A requested expiry, seconds (fractions allowed), into milliseconds; `None` = the cache's
/// default. 0 = never.
fn expiry_ms(def: &CacheDef, expiry: Option<f64>) -> Result<u64, CacheError> {
    match expiry {
        None => Ok(def.default_expiry_s * 1000),
        Some(s) if s.is_finite() && (0.0..=MAX_EXPIRY_S as f64).contains(&s) => {
            Ok((s * 1000.0).ceil() as u64)
        }
        Some(s) => Err(CacheError::Invalid(format!(
            "expiry must be 0 (never) to {MAX_EXPIRY_S} seconds, got {s}"
        ))),
    }
}

// -- one cache -------------------------------------------------------------------------------

/// Counters of one cache since this server started.
#[derive(Debug, Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub sets: AtomicU64,
    pub deletes: AtomicU64,
    pub evictions: Arc<AtomicU64>,
}

/// A cache's figures as the admin API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    #[serde(flatten)]
    pub def: CacheDef,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    /// True when no stored definition names it (the built-in `default`).
    pub builtin: bool,
}

/// What a cache holds: shared by the versions of its definition that do not change how it
/// is built (`max_entries`, `extend_expiry_on_get`), so such an edit loses nothing.
struct Storage {
    map: moka::sync::Cache<String, Entry>,
    /// Deletes remembered against late, older writes (only when replicating).
    tombs: moka::sync::Cache<String, Stamp>,
    /// The stamp of the last clear: older writes are dropped.
    cleared: Mutex<Stamp>,
    counters: Counters,
}

impl Storage {
    fn new(def: &CacheDef, evictions: Arc<AtomicU64>) -> Storage {
        let counted = evictions.clone();
        let map = moka::sync::Cache::builder()
            .max_capacity(def.max_entries)
            .expire_after(ByEntry {
                extend_on_get: def.extend_expiry_on_get,
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        let tombs = moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(TOMBSTONE_TTL)
            .build();
        Storage {
            map,
            tombs,
            cleared: Mutex::new(Stamp::ZERO),
            counters: Counters {
                evictions,
                ..Counters::default()
            },
        }
    }

    fn cleared(&self) -> Stamp {
        *self.cleared.lock().expect("cleared lock")
    }
}

/// One named cache.
pub struct Cache {
    pub def: CacheDef,
    builtin: bool,
    store: Arc<Storage>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("def", &self.def).finish()
    }
}

/// Whether two definitions build their caches the same way (the rest is read per call).
fn same_structure(a: &CacheDef, b: &CacheDef) -> bool {
    a.max_entries == b.max_entries && a.extend_expiry_on_get == b.extend_expiry_on_get
}

impl Cache {
    fn new(def: CacheDef, builtin: bool) -> Cache {
        let store = Arc::new(Storage::new(&def, Arc::default()));
        Cache {
            def,
            builtin,
            store,
        }
    }

    /// The counters of this cache.
    pub fn counters(&self) -> &Counters {
        &self.store.counters
    }

    /// The number of live entries, exactly: counted, because moka's own count includes
    /// entries that have expired but whose removal has not run yet.
    pub fn len(&self) -> u64 {
        self.store.map.run_pending_tasks();
        self.store.map.iter().count() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.store.counters;
        CacheStats {
            def: self.def.clone(),
            entries: self.len(),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            sets: c.sets.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            builtin: self.builtin,
        }
    }

    /// The entry under `key`, if present and not expired.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let found = self.store.map.get(key);
        let counter = if found.is_some() {
            &self.store.counters.hits
        } else {
            &self.store.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The entry under `key` without counting a hit or a miss (the admin API's reads; an
    /// extend-on-get cache still extends it, as moka sees a read).
    pub fn peek(&self, key: &str) -> Option<Entry> {
        self.store.map.get(key)
    }

    /// Whether `key` is present (counts as neither hit nor miss, extends nothing).
    pub fn contains(&self, key: &str) -> bool {
        self.store.map.contains_key(key)
    }

    fn check_size(&self, size: usize) -> Result<(), CacheError> {
        if size as u64 > self.def.max_item_size {
            return Err(CacheError::TooLarge {
                cache: self.def.name.clone(),
                size,
                max: self.def.max_item_size,
            });
        }
        Ok(())
    }

    /// Applies a write stamped `stamp` unless a newer write, delete or clear is known; true
    /// when it took effect. Atomic per key with every other write: the clear stamp and the
    /// tombstone are read under the key's lock.
    fn put_stamped(&self, key: String, entry: Entry) -> bool {
        let stamp = entry.stamp;
        let st = &*self.store;
        let result = st.map.entry(key.clone()).and_compute_with(|old| {
            if stamp <= st.cleared()
                || old.is_some_and(|o| o.value().stamp >= stamp)
                || st.tombs.get(&key).is_some_and(|t| t >= stamp)
            {
                moka::ops::compute::Op::Nop
            } else {
                moka::ops::compute::Op::Put(entry)
            }
        });
        !matches!(
            result,
            moka::ops::compute::CompResult::Unchanged(_)
                | moka::ops::compute::CompResult::StillNone(_)
        )
    }

    /// Removes `key` if its write is older than `stamp`; remembers the delete (the newest
    /// of concurrent ones).
    fn delete_stamped(&self, key: String, stamp: Stamp) -> bool {
        let st = &*self.store;
        st.tombs
            .entry(key.clone())
            .and_upsert_with(|old| old.map_or(stamp, |o| (*o.value()).max(stamp)));
        let result = st.map.entry(key).and_compute_with(|old| match old {
            Some(o) if o.value().stamp < stamp => moka::ops::compute::Op::Remove,
            _ => moka::ops::compute::Op::Nop,
        });
        matches!(result, moka::ops::compute::CompResult::Removed(_))
    }

    /// Drops every entry written before `stamp`; returns how many.
    fn clear_stamped(&self, stamp: Stamp) -> u64 {
        let st = &*self.store;
        {
            let mut cleared = st.cleared.lock().expect("cleared lock");
            if stamp <= *cleared {
                return 0;
            }
            *cleared = stamp;
        }
        let keys: Vec<String> = st
            .map
            .iter()
            .filter(|(_, e)| e.stamp < stamp)
            .map(|(k, _)| String::clone(&k))
            .collect();
        let mut n = 0;
        for k in keys {
            let r = st.map.entry(k).and_compute_with(|old| match old {
                Some(o) if o.value().stamp < stamp => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
            if matches!(r, moka::ops::compute::CompResult::Removed(_)) {
                n += 1;
            }
        }
        n
    }

    /// Keys starting with `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .store
            .map
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| String::clone(&k))
            .collect();
        keys.sort();
        keys
    }

    /// Entries whose key starts with `prefix`, sorted by key.
    pub fn items(&self, prefix: &str) -> Vec<(String, Entry)> {
        let mut items: Vec<(String, Entry)> = self
            .store
            .map
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (String::clone(&k), v))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }

    /// A copy of `other`'s contents and counters in a cache built for `def` (a definition
    /// change that needs a new moka cache). Entries of an extend-on-get cache get a full
    /// expiry again, as their recorded one may be older than their reads made it.
    fn rebuilt(def: CacheDef, builtin: bool, other: &Cache) -> Cache {
        let old = &*other.store;
        let st = Storage::new(&def, old.counters.evictions.clone());
        *st.cleared.lock().expect("cleared lock") = old.cleared();
        let extended = other.def.extend_expiry_on_get;
        let now = now_ms();
        for (k, mut v) in old.map.iter() {
            if extended && v.ttl_ms > 0 {
                v.expires_at = now + v.ttl_ms;
            }
            st.map.insert(String::clone(&k), v);
        }
        for (k, v) in old.tombs.iter() {
            st.tombs.insert(String::clone(&k), v);
        }
        for (a, b) in [
            (&st.counters.hits, &old.counters.hits),
            (&st.counters.misses, &old.counters.misses),
            (&st.counters.sets, &old.counters.sets),
            (&st.counters.deletes, &old.counters.deletes),
        ] {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        Cache {
            def,
            builtin,
            store: Arc::new(st),
        }
    }
}

// -- replication messages --------------------------------------------------------------------

/// One replicated write (`cache.apply` on the cluster bus; `BUS.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Repl {
    Put {
        cache: String,
        key: String,
        kind: ValueKind,
        /// JSON text as is, or base64 for bytes.
        value: String,
        #[serde(default)]
        expires_at: u64,
        #[serde(default)]
        ttl_ms: u64,
        stamp: Stamp,
    },
    Delete {
        cache: String,
        key: String,
        stamp: Stamp,
    },
    Clear {
        cache: String,
        stamp: Stamp,
    },
}

impl Repl {
    fn put(cache: &str, key: &str, e: &Entry) -> Repl {
        use base64::Engine;
        let value = match e.kind {
            ValueKind::Json => String::from_utf8_lossy(&e.value).into_owned(),
            ValueKind::Bytes => base64::engine::general_purpose::STANDARD.encode(&e.value),
        };
        Repl::Put {
            cache: cache.to_owned(),
            key: key.to_owned(),
            kind: e.kind,
            value,
            expires_at: e.expires_at,
            ttl_ms: e.ttl_ms,
            stamp: e.stamp,
        }
    }

    fn stamp(&self) -> Stamp {
        match self {
            Repl::Put { stamp, .. } | Repl::Delete { stamp, .. } | Repl::Clear { stamp, .. } => {
                *stamp
            }
        }
    }
}

// -- the set of caches -----------------------------------------------------------------------

/// Every cache of this server.
pub struct Caches {
    caches: RwLock<HashMap<String, Arc<Cache>>>,
    pub clock: Hlc,
    node: AtomicU64,
    /// Where replicated writes go (set when the server runs a cluster bus).
    replicator: OnceLock<tokio::sync::mpsc::UnboundedSender<Repl>>,
    /// One definition change at a time (sync, the admin API and an import may race).
    applying: Mutex<()>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

impl Default for Caches {
    fn default() -> Self {
        Caches::new()
    }
}

impl Caches {
    /// Just the built-in `default` cache.
    pub fn new() -> Caches {
        let caches = Caches {
            caches: RwLock::new(HashMap::new()),
            clock: Hlc::default(),
            node: AtomicU64::new(0),
            replicator: OnceLock::new(),
            applying: Mutex::new(()),
        };
        caches.apply_defs(&[]);
        caches
    }

    /// Sets this server's name (its id in stamps).
    pub fn set_server(&self, name: &str) {
        self.node.store(node_id(name), Ordering::Relaxed);
    }

    /// From now on, writes to replicating caches are sent to `tx` (the bus's replicator).
    pub fn replicate_to(&self, tx: tokio::sync::mpsc::UnboundedSender<Repl>) {
        let _ = self.replicator.set(tx);
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            t: self.clock.now(),
            node: self.node.load(Ordering::Relaxed),
        }
    }

    /// Makes the set of caches match `defs` (plus the built-in `default` when no definition
    /// names it). Unchanged caches keep everything; a definition change that does not alter
    /// how the cache is built (expiry default, item size, replication) keeps its contents in
    /// place; one that does (`max_entries`, `extend_expiry_on_get`) builds a new cache and
    /// copies the entries over — writes made to that cache while it is being copied can be
    /// lost. Copies happen outside the lock every cache call takes. Caches no longer defined
    /// are dropped.
    pub fn apply_defs(&self, defs: &[CacheDef]) {
        let _one_at_a_time = self.applying.lock().expect("applying lock");
        let mut wanted: Vec<(CacheDef, bool)> = defs.iter().map(|d| (d.clone(), false)).collect();
        if !defs.iter().any(|d| d.name == DEFAULT_CACHE) {
            wanted.push((CacheDef::builtin_default(), true));
        }
        let current = self.caches.read().expect("caches lock").clone();
        let mut next = HashMap::with_capacity(wanted.len());
        for (def, builtin) in wanted {
            let cache = match current.get(&def.name) {
                Some(old) if old.def == def && old.builtin == builtin => old.clone(),
                Some(old) if same_structure(&old.def, &def) => Arc::new(Cache {
                    def,
                    builtin,
                    store: old.store.clone(),
                }),
                Some(old) => Arc::new(Cache::rebuilt(def, builtin, old)),
                None => Arc::new(Cache::new(def, builtin)),
            };
            next.insert(cache.def.name.clone(), cache);
        }
        *self.caches.write().expect("caches lock") = next;
    }

    /// The cache called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Cache>, CacheError> {
        self.caches
            .read()
            .expect("caches lock")
            .get(name)
            .cloned()
            .ok_or_else(|| CacheError::UnknownCache(name.to_owned()))
    }

    /// Every cache, by name.
    pub fn all(&self) -> Vec<Arc<Cache>> {
        let mut v: Vec<Arc<Cache>> = self
            .caches
            .read()
            .expect("caches lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        v
    }

    fn replicating(&self, cache: &Cache) -> Option<&tokio::sync::mpsc::UnboundedSender<Repl>> {
        if cache.def.replicate {
            self.replicator.get()
        } else {
            None
        }
    }

    /// Stores `value` under `key`. `expiry`: seconds, `None` = the cache's default, 0 = never.
    pub fn set(
        &self,
        cache: &Cache,
        key: &str,
        value: Bytes,
        kind: ValueKind,
        expiry: Option<f64>,
    ) -> Result<(), CacheError> {
        check_key(key)?;
        cache.check_size(value.len())?;
        let ttl_ms = expiry_ms(&cache.def, expiry)?;
        let entry = Entry {
            value,
            kind,
            expires_at: if ttl_ms == 0 { 0 } else { now_ms() + ttl_ms },
            ttl_ms,
            stamp: self.stamp(),
        };
        cache.store.counters.sets.fetch_add(1, Ordering::Relaxed);
        match self.replicating(cache) {
            None => {
                // Through the key's lock, not a plain insert, so it cannot land in the
                // middle of an incr of the same key.
                cache
                    .store
                    .map
                    .entry(key.to_owned())
                    .and_compute_with(|_| moka::ops::compute::Op::Put(entry));
            }
            Some(tx) => {
                if cache.put_stamped(key.to_owned(), entry.clone()) {
                    let _ = tx.send(Repl::put(&cache.def.name, key, &entry));
                }
            }
        }
        Ok(())
    }

    /// Removes `key`; true when it was present.
    pub fn delete(&self, cache: &Cache, key: &str) -> Result<bool, CacheError> {
        check_key(key)?;
        cache.store.counters.deletes.fetch_add(1, Ordering::Relaxed);
        match self.replicating(cache) {
            None => {
                let r = cache
                    .store
                    .map
                    .entry(key.to_owned())
                    .and_compute_with(|old| match old {
                        Some(_) => moka::ops::compute::Op::Remove,
                        None => moka::ops::compute::Op::Nop,
                    });
                Ok(matches!(r, moka::ops::compute::CompResult::Removed(_)))
            }
            Some(tx) => {
                let stamp = self.stamp();
                let existed = cache.delete_stamped(key.to_owned(), stamp);
                let _ = tx.send(Repl::Delete {
                    cache: cache.def.name.clone(),
                    key: key.to_owned(),
                    stamp,
                });
                Ok(existed)
            }
        }
    }

    /// The entry a read-modify-write sees under the key's lock: none when it was written
    /// before the cache's last clear (a clear whose sweep has not reached it yet).
    fn current(cache: &Cache, old: Option<moka::Entry<String, Entry>>) -> Option<Entry> {
        old.map(|o| o.into_value())
            .filter(|e| e.stamp > cache.store.cleared())
    }

    /// Sets a new expiry on an existing key (seconds; 0 = never); false when it is absent.
    pub fn expire(&self, cache: &Cache, key: &str, seconds: f64) -> Result<bool, CacheError> {
        check_key(key)?;
        let ttl_ms = expiry_ms(&cache.def, Some(seconds))?;
        let mut written = None;
        cache
            .store
            .map
            .entry(key.to_owned())
            .and_compute_with(|old| match Self::current(cache, old) {
                Some(mut e) => {
                    e.expires_at = if ttl_ms == 0 { 0 } else { now_ms() + ttl_ms };
                    e.ttl_ms = ttl_ms;
                    // Stamped under the key's lock: later than any write applied to it.
                    e.stamp = self.stamp();
                    written = Some(e.clone());
                    moka::ops::compute::Op::Put(e)
                }
                None => moka::ops::compute::Op::Nop,
            });
        let existed = written.is_some();
        if let (Some(tx), Some(e)) = (self.replicating(cache), written) {
            let _ = tx.send(Repl::put(&cache.def.name, key, &e));
        }
        Ok(existed)
    }

    /// Adds `by` to the integer under `key` (a missing key counts as 0) and returns the new
    /// value; atomic on this server. A new key gets the cache's default expiry, an existing
    /// one keeps its own (an extend-on-get cache counts the incr as a use and extends it).
    pub fn incr(&self, cache: &Cache, key: &str, by: i64) -> Result<i64, CacheError> {
        check_key(key)?;
        let default_ttl = cache.def.default_expiry_s * 1000;
        let extend = cache.def.extend_expiry_on_get;
        let mut outcome: Result<(i64, Entry), CacheError> = Err(CacheError::Invalid(String::new()));
        cache
            .store
            .map
            .entry(key.to_owned())
            .and_compute_with(|old| {
                let old = Self::current(cache, old);
                let current = match &old {
                    None => Some(0),
                    Some(e) => match e.kind {
                        ValueKind::Json => std::str::from_utf8(&e.value)
                            .ok()
                            .and_then(|s| s.trim().parse::<i64>().ok()),
                        ValueKind::Bytes => None,
                    },
                };
                let Some(current) = current else {
                    outcome = Err(CacheError::NotInteger {
                        key: key.to_owned(),
                    });
                    return moka::ops::compute::Op::Nop;
                };
                let Some(n) = current.checked_add(by) else {
                    outcome = Err(CacheError::Overflow {
                        key: key.to_owned(),
                    });
                    return moka::ops::compute::Op::Nop;
                };
                let now = now_ms();
                let (expires_at, ttl_ms) = match &old {
                    None if default_ttl > 0 => (now + default_ttl, default_ttl),
                    None => (0, 0),
                    Some(e) if extend && e.ttl_ms > 0 => (now + e.ttl_ms, e.ttl_ms),
                    Some(e) => (e.expires_at, e.ttl_ms),
                };
                let e = Entry {
                    value: Bytes::from(n.to_string()),
                    kind: ValueKind::Json,
                    expires_at,
                    ttl_ms,
                    // Stamped under the key's lock: later than any write applied to it.
                    stamp: self.stamp(),
                };
                outcome = Ok((n, e.clone()));
                moka::ops::compute::Op::Put(e)
            });
        let (n, e) = outcome?;
        cache.store.counters.sets.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = self.replicating(cache) {
            let _ = tx.send(Repl::put(&cache.def.name, key, &e));
        }
        Ok(n)
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self, cache: &Cache) -> u64 {
        let stamp = self.stamp();
        let n = cache.clear_stamped(stamp);
        if let Some(tx) = self.replicating(cache) {
            let _ = tx.send(Repl::Clear {
                cache: cache.def.name.clone(),
                stamp,
            });
        }
        n
    }

    /// Applies writes replicated from another server. A write for a cache this server does
    /// not have (yet) is dropped; so is one older than what this server holds.
    pub fn apply_remote(&self, batch: Vec<Repl>) {
        for r in batch {
            self.clock.observe(r.stamp().t);
            match r {
                Repl::Put {
                    cache,
                    key,
                    kind,
                    value,
                    expires_at,
                    ttl_ms,
                    stamp,
                } => {
                    let Ok(c) = self.get(&cache) else { continue };
                    let value = match kind {
                        ValueKind::Json => Bytes::from(value),
                        ValueKind::Bytes => {
                            use base64::Engine;
                            match base64::engine::general_purpose::STANDARD.decode(&value) {
                                Ok(v) => Bytes::from(v),
                                Err(_) => continue,
                            }
                        }
                    };
                    if expires_at != 0 && expires_at <= now_ms() {
                        // Expired in transit: it still deletes older writes.
                        c.delete_stamped(key, stamp);
                        continue;
                    }
                    c.put_stamped(
                        key,
                        Entry {
                            value,
                            kind,
                            expires_at,
                            ttl_ms,
                            stamp,
                        },
                    );
                }
                Repl::Delete { cache, key, stamp } => {
                    if let Ok(c) = self.get(&cache) {
                        c.delete_stamped(key, stamp);
                    }
                }
                Repl::Clear { cache, stamp } => {
                    if let Ok(c) = self.get(&cache) {
                        c.clear_stamped(stamp);
                    }
                }
            }
        }
    }
}

// -- the workers' calls -----------------------------------------------------------------------

/// A worker's `cache.*` call meta (`ipc-protocol/SPEC.md`, "Cache operations").
#[derive(Debug, Deserialize)]
struct IpcCall<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    cache: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    key: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    kind: Option<ValueKind>,
    #[serde(default)]
    expiry: Option<f64>,
    #[serde(default)]
    by: Option<i64>,
    #[serde(borrow, default)]
    prefix: Option<std::borrow::Cow<'a, str>>,
}

/// The answer to a worker's cache call: status, content type, error kind, body.
#[derive(Debug, PartialEq)]
pub struct IpcReply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub error: Option<&'static str>,
    pub body: Bytes,
}

impl IpcReply {
    fn json(body: impl Into<Bytes>) -> IpcReply {
        IpcReply {
            status: 200,
            content_type: Some("application/json"),
            error: None,
            body: body.into(),
        }
    }

    fn error(e: &CacheError) -> IpcReply {
        IpcReply {
            status: e.status(),
            content_type: Some("application/json"),
            error: Some(e.kind()),
            body: Bytes::from(serde_json::json!({ "error": e.to_string() }).to_string()),
        }
    }
}

impl Caches {
    /// Serves one `cache.*` call of a worker: `meta` is the CALL's JSON meta, `body` its body.
    pub fn serve_ipc(&self, meta: &[u8], body: Bytes) -> IpcReply {
        match self.serve_ipc_inner(meta, body) {
            Ok(r) => r,
            Err(e) => IpcReply::error(&e),
        }
    }

    fn serve_ipc_inner(&self, meta: &[u8], body: Bytes) -> Result<IpcReply, CacheError> {
        let call: IpcCall<'_> = serde_json::from_slice(meta)
            .map_err(|e| CacheError::Invalid(format!("bad cache call: {e}")))?;
        let name = call.cache.as_deref().unwrap_or(DEFAULT_CACHE);
        let cache = self.get(name)?;
        let key = || {
            call.key
                .as_deref()
                .ok_or_else(|| CacheError::Invalid(format!("{} needs a key", call.op)))
        };
        let flag = |b: bool| IpcReply::json(if b { "true" } else { "false" });
        Ok(match &*call.op {
            "cache.get" => match cache.get(key()?) {
                Some(e) => IpcReply {
                    status: 200,
                    content_type: Some(e.kind.content_type()),
                    error: None,
                    body: e.value,
                },
                None => IpcReply {
                    status: 204,
                    content_type: None,
                    error: None,
                    body: Bytes::new(),
                },
            },
            "cache.set" => {
                let kind = call.kind.unwrap_or(ValueKind::Json);
                self.set(&cache, key()?, body, kind, call.expiry)?;
                IpcReply::json("true")
            }
            "cache.delete" => flag(self.delete(&cache, key()?)?),
            "cache.has" => flag(cache.contains(key()?)),
            "cache.expire" => {
                let seconds = call
                    .expiry
                    .ok_or_else(|| CacheError::Invalid("cache.expire needs an expiry".into()))?;
                flag(self.expire(&cache, key()?, seconds)?)
            }
            "cache.incr" => {
                IpcReply::json(self.incr(&cache, key()?, call.by.unwrap_or(1))?.to_string())
            }
            "cache.keys" => IpcReply::json(
                serde_json::to_vec(&cache.keys(call.prefix.as_deref().unwrap_or("")))
                    .expect("strings serialise"),
            ),
            "cache.items" => {
                let items: Vec<(String, ValueKind, String)> = cache
                    .items(call.prefix.as_deref().unwrap_or(""))
                    .into_iter()
                    .map(|(k, e)| {
                        let text = match e.kind {
                            ValueKind::Json => String::from_utf8_lossy(&e.value).into_owned(),
                            ValueKind::Bytes => {
                                use base64::Engine;
                                base64::engine::general_purpose::STANDARD.encode(&e.value)
                            }
                        };
                        (k, e.kind, text)
                    })
                    .collect();
                IpcReply::json(serde_json::to_vec(&items).expect("strings serialise"))
            }
            "cache.clear" => IpcReply::json(self.clear(&cache).to_string()),
            "cache.len" => IpcReply::json(cache.len().to_string()),
            other => {
                return Ok(IpcReply {
                    status: 501,
                    content_type: Some("application/json"),
                    error: None,
                    body: Bytes::from(
                        serde_json::json!({ "error": format!("unknown op: {other}") }).to_string(),
                    ),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caches(name: &str) -> Caches {
        let c = Caches::new();
        c.set_server(name);
        c
    }

    #[test]
    fn definitions_are_validated_with_the_field_named() {
        let mut d = CacheDef::named("sessions");
        assert!(d.validate().is_ok());
        d.max_entries = 0;
        assert!(d.validate().unwrap_err().contains("max_entries"));
        d = CacheDef::named("a b");
        assert!(d.validate().unwrap_err().contains("not a valid cache name"));
        d = CacheDef::named("x");
        d.max_item_size = MAX_ITEM_SIZE_LIMIT + 1;
        assert!(d.validate().unwrap_err().contains("max_item_size"));
        let parsed: Result<CacheDef, _> = serde_json::from_str(r#"{"name":"x","bogus":1}"#);
        assert!(parsed.is_err());
        let parsed: CacheDef = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
        assert_eq!(parsed, CacheDef::named("x"));
    }

    #[test]
    fn default_always_exists_and_definitions_replace_the_set() {
        let c = caches("a");
        assert!(c.get("default").unwrap().builtin);
        let d = c.get("default").unwrap();
        c.set(&d, "k", Bytes::from_static(b"1"), ValueKind::Json, None)
            .unwrap();
        let mut small = CacheDef::named("default");
        small.max_entries = 5;
        c.apply_defs(&[small.clone(), CacheDef::named("other")]);
        let d = c.get("default").unwrap();
        assert!(!d.builtin);
        assert_eq!(d.def.max_entries, 5);
        assert_eq!(d.get("k").unwrap().value, Bytes::from_static(b"1"));
        assert!(c.get("other").is_ok());
        c.apply_defs(&[]);
        assert!(matches!(c.get("other"), Err(CacheError::UnknownCache(_))));
        assert!(c.get("default").unwrap().builtin);
    }

    #[test]
    fn incr_counts_and_refuses_what_is_not_an_integer() {
        let c = caches("a");
        let d = c.get("default").unwrap();
        assert_eq!(c.incr(&d, "n", 5).unwrap(), 5);
        assert_eq!(c.incr(&d, "n", -7).unwrap(), -2);
        c.set(&d, "s", Bytes::from_static(b"\"x\""), ValueKind::Json, None)
            .unwrap();
        assert_eq!(c.incr(&d, "s", 1).unwrap_err().status(), 409);
        c.set(
            &d,
            "m",
            Bytes::from(i64::MAX.to_string()),
            ValueKind::Json,
            None,
        )
        .unwrap();
        assert!(matches!(
            c.incr(&d, "m", 1),
            Err(CacheError::Overflow { .. })
        ));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.incr(&d, "t", 1).unwrap();
                    }
                });
            }
        });
        assert_eq!(c.incr(&d, "t", 0).unwrap(), 4000);
    }

    #[test]
    fn oversized_values_and_keys_are_refused() {
        let c = caches("a");
        let mut def = CacheDef::named("small");
        def.max_item_size = 4;
        c.apply_defs(&[def]);
        let s = c.get("small").unwrap();
        let e = c
            .set(
                &s,
                "k",
                Bytes::from_static(b"12345"),
                ValueKind::Bytes,
                None,
            )
            .unwrap_err();
        assert_eq!(e.status(), 413);
        assert!(e.to_string().contains("max_item_size of 4"));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            c.set(&s, &long, Bytes::new(), ValueKind::Bytes, None)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn max_entries_evicts() {
        let c = caches("a");
        let mut def = CacheDef::named("tiny");
        def.max_entries = 10;
        c.apply_defs(&[def]);
        let t = c.get("tiny").unwrap();
        for i in 0..100 {
            c.set(
                &t,
                &format!("k{i}"),
                Bytes::from_static(b"1"),
                ValueKind::Json,
                None,
            )
            .unwrap();
        }
        assert!(t.len() <= 10, "{} entries", t.len());
        assert!(t.stats().evictions > 0);
    }

    /// Two servers' caches joined by a "bus" that delivers in the order given.
    fn replicated(name: &str) -> (Caches, tokio::sync::mpsc::UnboundedReceiver<Repl>) {
        let c = caches(name);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        c.replicate_to(tx);
        (c, rx)
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Repl>) -> Vec<Repl> {
        let mut v = Vec::new();
        while let Ok(r) = rx.try_recv() {
            v.push(r);
        }
        v
    }

    fn value(c: &Caches, key: &str) -> Option<Bytes> {
        c.get("default")
            .unwrap()
            .store
            .map
            .get(key)
            .map(|e| e.value)
    }

    #[test]
    fn concurrent_writes_converge_whatever_the_delivery_order() {
        let (a, mut ra) = replicated("a");
        let (b, mut rb) = replicated("b");
        let (da, db) = (a.get("default").unwrap(), b.get("default").unwrap());
        // Both write the same key before hearing of the other's write.
        a.set(
            &da,
            "k",
            Bytes::from_static(b"\"A\""),
            ValueKind::Json,
            None,
        )
        .unwrap();
        b.set(
            &db,
            "k",
            Bytes::from_static(b"\"B\""),
            ValueKind::Json,
            None,
        )
        .unwrap();
        let (from_a, from_b) = (drain(&mut ra), drain(&mut rb));
        a.apply_remote(from_b);
        b.apply_remote(from_a);
        assert_eq!(value(&a, "k"), value(&b, "k"));
        // A delete racing a write: both end up without the key when the delete is newer.
        b.set(&db, "d", Bytes::from_static(b"1"), ValueKind::Json, None)
            .unwrap();
        let first = drain(&mut rb);
        a.apply_remote(first.clone());
        a.delete(&da, "d").unwrap();
        let del = drain(&mut ra);
        b.apply_remote(del);
        // The older write arrives again (late): it must not resurrect the key.
        a.apply_remote(first);
        assert_eq!(value(&a, "d"), None);
        assert_eq!(value(&b, "d"), None);
        // A clear drops older writes everywhere, and later ones still land.
        a.set(&da, "x", Bytes::from_static(b"1"), ValueKind::Json, None)
            .unwrap();
        b.apply_remote(drain(&mut ra));
        b.clear(&db);
        a.apply_remote(drain(&mut rb));
        assert_eq!(value(&a, "x"), None);
        a.set(&da, "y", Bytes::from_static(b"2"), ValueKind::Json, None)
            .unwrap();
        b.apply_remote(drain(&mut ra));
        assert_eq!(value(&b, "y"), Some(Bytes::from_static(b"2")));
    }

    #[test]
    fn bytes_survive_replication() {
        let (a, mut ra) = replicated("a");
        let b = caches("b");
        let da = a.get("default").unwrap();
        let raw = Bytes::from_static(&[0, 159, 146, 150, 255]);
        a.set(&da, "b", raw.clone(), ValueKind::Bytes, Some(60.0))
            .unwrap();
        let batch = drain(&mut ra);
        let json = serde_json::to_string(&batch).unwrap();
        b.apply_remote(serde_json::from_str(&json).unwrap());
        let e = b.get("default").unwrap().get("b").unwrap();
        assert_eq!(e.value, raw);
        assert_eq!(e.kind, ValueKind::Bytes);
        assert!(e.expires_at > now_ms());
    }

    #[test]
    fn worker_calls_answer_as_the_protocol_says() {
        let c = caches("a");
        let call = |meta: &str, body: &'static [u8]| {
            c.serve_ipc(meta.as_bytes(), Bytes::from_static(body))
        };
        let r = call(
            r#"{"op":"cache.set","cache":"default","key":"k","kind":"bytes"}"#,
            b"\x00\x01",
        );
        assert_eq!(r.status, 200);
        let r = call(r#"{"op":"cache.get","key":"k"}"#, b"");
        assert_eq!(
            (r.status, r.content_type, &r.body[..]),
            (200, Some("application/octet-stream"), &b"\x00\x01"[..])
        );
        assert_eq!(call(r#"{"op":"cache.get","key":"nope"}"#, b"").status, 204);
        let r = call(r#"{"op":"cache.get","cache":"nope","key":"k"}"#, b"");
        assert_eq!((r.status, r.error), (404, Some("unknown_cache")));
        assert_eq!(
            &call(r#"{"op":"cache.incr","key":"n","by":3}"#, b"").body[..],
            b"3"
        );
        assert_eq!(
            &call(r#"{"op":"cache.has","key":"n"}"#, b"").body[..],
            b"true"
        );
        assert_eq!(
            &call(r#"{"op":"cache.keys","prefix":"k"}"#, b"").body[..],
            br#"["k"]"#
        );
        assert_eq!(
            &call(r#"{"op":"cache.items","prefix":"n"}"#, b"").body[..],
            br#"[["n","json","3"]]"#
        );
        assert_eq!(
            &call(r#"{"op":"cache.delete","key":"n"}"#, b"").body[..],
            b"true"
        );
        assert_eq!(
            &call(r#"{"op":"cache.expire","key":"n","expiry":5}"#, b"").body[..],
            b"false"
        );
        assert_eq!(call(r#"{"op":"cache.get"}"#, b"").status, 400);
        assert_eq!(call(r#"{"op":"cache.fly"}"#, b"").status, 501);
        assert_eq!(&call(r#"{"op":"cache.clear"}"#, b"").body[..], b"1");
    }

    #[test]
    fn incr_keeps_an_entry_that_reads_kept_alive() {
        let c = caches("a");
        let mut def = CacheDef::named("ext");
        def.extend_expiry_on_get = true;
        c.apply_defs(&[def]);
        let x = c.get("ext").unwrap();
        c.set(
            &x,
            "k",
            Bytes::from_static(b"1"),
            ValueKind::Json,
            Some(0.3),
        )
        .unwrap();
        // Reads keep it alive past its first expiry (read until that moment is well over)...
        let first_expiry = x.peek("k").unwrap().expires_at;
        while now_ms() < first_expiry + 300 {
            assert!(x.get("k").is_some(), "expired while being read");
            std::thread::sleep(Duration::from_millis(50));
        }
        // ...and an incr then must not write the stale expiry back.
        assert_eq!(c.incr(&x, "k", 1).unwrap(), 2);
        assert_eq!(x.get("k").unwrap().value, Bytes::from_static(b"2"));
    }

    #[test]
    fn concurrent_deletes_leave_the_newest_tombstone() {
        let (a, _ra) = replicated("a");
        let d = a.get("default").unwrap();
        let newer = Stamp {
            t: 100 << 16,
            node: 1,
        };
        let older = Stamp {
            t: 50 << 16,
            node: 1,
        };
        d.delete_stamped("k".into(), newer);
        d.delete_stamped("k".into(), older);
        // A late write between the two must stay deleted.
        let e = Entry {
            value: Bytes::from_static(b"1"),
            kind: ValueKind::Json,
            expires_at: 0,
            ttl_ms: 0,
            stamp: Stamp {
                t: 70 << 16,
                node: 1,
            },
        };
        assert!(!d.put_stamped("k".into(), e));
    }

    #[test]
    fn a_definition_edit_that_keeps_the_structure_keeps_the_same_storage() {
        let c = caches("a");
        let d = c.get("default").unwrap();
        c.set(&d, "k", Bytes::from_static(b"1"), ValueKind::Json, None)
            .unwrap();
        let mut def = CacheDef::named("default");
        def.default_expiry_s = 60;
        c.apply_defs(&[def]);
        // A write through the old handle (a call in flight during the edit) is not lost.
        c.set(&d, "late", Bytes::from_static(b"2"), ValueKind::Json, None)
            .unwrap();
        let now = c.get("default").unwrap();
        assert_eq!(now.def.default_expiry_s, 60);
        assert!(now.get("late").is_some() && now.get("k").is_some());
    }

    #[test]
    fn the_clock_moves_past_what_it_observes() {
        let h = Hlc::default();
        h.observe(u64::MAX);
        assert_eq!(h.now(), u64::MAX, "saturates instead of wrapping");
        let h = Hlc::default();
        let a = h.now();
        h.observe(a + (1 << 30));
        assert!(h.now() > a + (1 << 30));
    }
}
