//! The registry of a server's caches: [`Caches`] applies definitions, stamps local writes
//! with the hybrid logical clock, sends them to the replicator, and applies replicated
//! writes from other servers. The workers' IPC calls are in `ipc`; the bus itself is not
//! known here (writes go to a channel).

use crate::cache::{Cache, check_key, expiry_ms, same_structure};
use crate::clock::{Hlc, Stamp, node_id, now_ms};
use crate::def::{CacheDef, DEFAULT_CACHE};
use crate::entry::{Entry, ValueKind};
use crate::error::CacheError;
use crate::repl::Repl;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

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
    /// An incr reads the key as well as writing it: a hit when the key was there (even if
    /// its value is not an integer), a miss when it was not, and a set when it wrote.
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
                let counter = if old.is_some() {
                    &cache.store.counters.hits
                } else {
                    &cache.store.counters.misses
                };
                counter.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::MAX_KEY_LEN;
    use std::time::Duration;

    pub(crate) fn caches(name: &str) -> Caches {
        let c = Caches::new();
        c.set_server(name);
        c
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

    #[test]
    fn counters_follow_the_services_calls() {
        let c = caches("a");
        let mut def = CacheDef::named("tiny");
        def.max_entries = 3;
        c.apply_defs(&[def.clone()]);
        let t = c.get("tiny").unwrap();
        let one = || Bytes::from_static(b"1");
        c.set(&t, "a", one(), ValueKind::Json, None).unwrap();
        assert!(t.get("a").is_some());
        assert!(t.get("nope").is_none());
        // Reads of the admin API count as neither.
        assert!(t.peek("a").is_some() && t.peek("nope").is_none());
        // An incr reads the key: a miss when it was not there, a hit when it was (the
        // quickstart's visit counter showed no hits after many increments).
        c.incr(&t, "n", 2).unwrap();
        c.incr(&t, "n", 2).unwrap();
        c.set(&t, "s", Bytes::from_static(b"\"x\""), ValueKind::Json, None)
            .unwrap();
        assert!(c.incr(&t, "s", 1).is_err());
        assert!(c.delete(&t, "n").unwrap());
        assert!(c.delete(&t, "s").unwrap());
        let s = t.stats();
        assert_eq!(
            (s.hits, s.misses, s.sets, s.deletes, s.evictions),
            (3, 2, 4, 2, 0)
        );
        assert_eq!(t.entry_count(), 1);
        // Past max_entries: moka evicts, and each eviction is counted (not the expiries).
        for i in 0..50 {
            c.set(&t, &format!("k{i}"), one(), ValueKind::Json, None)
                .unwrap();
        }
        // Counting runs moka's pending maintenance, where evictions happen.
        assert!(t.entry_count() <= 3, "{}", t.entry_count());
        let evicted = t.counters().evictions.load(Ordering::Relaxed);
        assert!(evicted > 0);
        assert_eq!(t.counters().sets.load(Ordering::Relaxed), 54);
        // A rebuild (a new max_entries) keeps the figures; a deleted and recreated cache
        // starts from 0.
        def.max_entries = 5;
        c.apply_defs(&[def.clone()]);
        let t2 = c.get("tiny").unwrap();
        assert_eq!(t2.stats().hits, 3);
        assert_eq!(t2.stats().evictions, evicted);
        c.apply_defs(&[]);
        c.apply_defs(&[def]);
        let t3 = c.get("tiny").unwrap();
        let s = t3.stats();
        assert_eq!(
            (
                s.hits,
                s.misses,
                s.sets,
                s.deletes,
                s.evictions,
                t3.entry_count()
            ),
            (0, 0, 0, 0, 0, 0)
        );
    }

    #[test]
    fn expired_entries_leave_the_entry_count() {
        let c = caches("a");
        let d = c.get("default").unwrap();
        c.set(
            &d,
            "short",
            Bytes::from_static(b"1"),
            ValueKind::Json,
            Some(0.05),
        )
        .unwrap();
        c.set(&d, "long", Bytes::from_static(b"1"), ValueKind::Json, None)
            .unwrap();
        assert_eq!(d.entry_count(), 2);
        let until = now_ms() + 5_000;
        while d.entry_count() != 1 {
            assert!(now_ms() < until, "the expired entry is still counted");
            std::thread::sleep(Duration::from_millis(20));
        }
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
}
