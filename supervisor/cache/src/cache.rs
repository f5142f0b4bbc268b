//! One named cache: [`Cache`] over its moka [`Storage`], its [`Counters`] and [`CacheStats`],
//! and the stamped (last-writer-wins) put, delete and clear that replication relies on. It
//! does not stamp or send anything itself: the registry ([`crate::Caches`]) does.

use crate::clock::{Stamp, now_ms};
use crate::def::{CacheDef, MAX_EXPIRY_S};
use crate::entry::{ByEntry, Entry};
use crate::error::CacheError;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a delete is remembered, against late writes of older stamps.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 4096;

pub(crate) fn check_key(key: &str) -> Result<(), CacheError> {
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
pub(crate) fn expiry_ms(def: &CacheDef, expiry: Option<f64>) -> Result<u64, CacheError> {
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
pub(crate) struct Storage {
    pub(crate) map: moka::sync::Cache<String, Entry>,
    /// Deletes remembered against late, older writes (only when replicating).
    pub(crate) tombs: moka::sync::Cache<String, Stamp>,
    /// The stamp of the last clear: older writes are dropped.
    pub(crate) cleared: Mutex<Stamp>,
    pub(crate) counters: Counters,
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

    pub(crate) fn cleared(&self) -> Stamp {
        *self.cleared.lock().expect("cleared lock")
    }
}

/// One named cache.
pub struct Cache {
    pub def: CacheDef,
    pub(crate) builtin: bool,
    pub(crate) store: Arc<Storage>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("def", &self.def).finish()
    }
}

/// Whether two definitions build their caches the same way (the rest is read per call).
pub(crate) fn same_structure(a: &CacheDef, b: &CacheDef) -> bool {
    a.max_entries == b.max_entries && a.extend_expiry_on_get == b.extend_expiry_on_get
}

impl Cache {
    pub(crate) fn new(def: CacheDef, builtin: bool) -> Cache {
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

    /// The number of entries as moka counts them once its pending maintenance has run (which
    /// removes expired entries and evicts past `max_entries`, counting the evictions):
    /// without walking the entries, for a scrape of the metrics. Read the counters after it.
    pub fn entry_count(&self) -> u64 {
        self.store.map.run_pending_tasks();
        self.store.map.entry_count()
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

    pub(crate) fn check_size(&self, size: usize) -> Result<(), CacheError> {
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
    pub(crate) fn put_stamped(&self, key: String, entry: Entry) -> bool {
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
    pub(crate) fn delete_stamped(&self, key: String, stamp: Stamp) -> bool {
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
    pub(crate) fn clear_stamped(&self, stamp: Stamp) -> u64 {
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
    pub(crate) fn rebuilt(def: CacheDef, builtin: bool, other: &Cache) -> Cache {
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
