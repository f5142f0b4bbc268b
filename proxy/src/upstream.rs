//! The upstream registry: per-server counters, latency histogram, active-check results and
//! passive failure marks, and the choice of the next server (round-robin or
//! least-connections) among those that are up.
//!
//! Discovery and the active checks' consecutive thresholds are pingora-load-balancing's
//! (`Backends`); this registry adds what it lacks: least-connections, "never checked yet"
//! (a server that just joined gets traffic only after its first passing `/readyz`), passive
//! marks on refused connections, and the numbers the stats endpoint reports.

use pingora_load_balancing::{Backend, LoadBalancer, selection::RoundRobin};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::Balance;
use crate::pool::Pool;

/// Why an active check failed: its reason as the stats page and the log show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure(pub String);

impl From<&pingora_core::Error> for CheckFailure {
    fn from(e: &pingora_core::Error) -> Self {
        CheckFailure(e.to_string())
    }
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket is +Inf).
pub const LATENCY_BOUNDS_US: [u64; 18] = [
    500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (Prometheus `le` semantics), then the sum in µs.
    pub fn cumulative(&self) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let counts = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (counts, self.sum_us.load(Ordering::Relaxed))
    }

    /// The bucket bound under which `q` of the samples fall (None: no samples; the top
    /// bucket reports the largest finite bound).
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let (counts, _) = self.cumulative();
        let total = *counts.last()?;
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let i = counts.iter().position(|&c| c >= want)?;
        Some(
            LATENCY_BOUNDS_US
                .get(i)
                .copied()
                .unwrap_or(*LATENCY_BOUNDS_US.last().expect("bounds")),
        )
    }
}

/// One server as the proxy sees it: one run of it. A server that leaves the list and comes
/// back, or comes back at the same address as a new run (restarted: another pid or start
/// time in the store), gets a fresh `Upstream`, so nothing the proxy learned about the old
/// run (a failing check, a passive mark, pooled connections) outlives it.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// What identifies this run of the server (from the store; None for a static list).
    pub run: Option<String>,
    pub in_flight: AtomicU64,
    /// Attempts sent to this server (a retried request counts once per server tried).
    pub requests: AtomicU64,
    /// Attempts that failed in transport: refused or timed-out connections, broken
    /// connections, read timeouts.
    pub errors: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Answers with a 5xx status from the server itself.
    pub responses_5xx: AtomicU64,
    /// Tunnels opened to it: upgrade requests it answered with `101 Switching Protocols`.
    pub tunnels: AtomicU64,
    pub latency: Histogram,
    /// Active checks completed.
    pub checks: AtomicU64,
    /// An active check has run at least once.
    pub checked: AtomicBool,
    /// The last active check passed.
    pub check_ok: AtomicBool,
    /// The verdict of the active checks: set by the first check, then flipped by `rise`
    /// consecutive passes or `fall` consecutive failures.
    pub ready: AtomicBool,
    /// Consecutive check results that disagree with `ready`.
    streak: AtomicU64,
    pub last_check_error: Mutex<Option<String>>,
    /// Skipped until this time (ms since the registry's epoch): it refused a connection.
    pub passive_down_until: AtomicU64,
    /// Idle keep-alive connections to it.
    pub pool: Pool,
}

impl Upstream {
    fn new(addr: SocketAddr, run: Option<String>) -> Self {
        Upstream {
            addr,
            run,
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            responses_5xx: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            latency: Histogram::default(),
            checks: AtomicU64::new(0),
            checked: AtomicBool::new(false),
            check_ok: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            streak: AtomicU64::new(0),
            last_check_error: Mutex::new(None),
            passive_down_until: AtomicU64::new(0),
            pool: Pool::default(),
        }
    }
}

/// Every server seen, by address: the current run of each (a server that leaves keeps its
/// entry and counters until it comes back; it is simply no longer offered by discovery).
#[derive(Debug)]
pub struct Registry {
    epoch: Instant,
    /// One entry per address, its current run (a handful: a linear scan beats hashing here).
    map: RwLock<Vec<Arc<Upstream>>>,
    rr: AtomicUsize,
    pub balance: Balance,
    passive_down: Duration,
    /// Consecutive passes that bring a server up, failures that take it down.
    rise: u64,
    fall: u64,
    /// Woken by every active check result.
    pub checked: tokio::sync::Notify,
}

impl Registry {
    pub fn new(balance: Balance, passive_down: Duration) -> Self {
        Registry {
            epoch: Instant::now(),
            map: RwLock::new(Vec::new()),
            rr: AtomicUsize::new(0),
            balance,
            passive_down,
            rise: 1,
            fall: 1,
            checked: tokio::sync::Notify::new(),
        }
    }

    /// The check thresholds (`health.rise`, `health.fall`; both at least 1).
    pub fn with_thresholds(mut self, rise: usize, fall: usize) -> Self {
        self.rise = rise.max(1) as u64;
        self.fall = fall.max(1) as u64;
        self
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current run of the server at `addr` (a new entry if it was never seen).
    pub fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        if let Some(u) = self
            .map
            .read()
            .expect("registry lock")
            .iter()
            .find(|u| u.addr == addr)
        {
            return u.clone();
        }
        let mut map = self.map.write().expect("registry lock");
        if let Some(u) = map.iter().find(|u| u.addr == addr) {
            return u.clone();
        }
        let u = Arc::new(Upstream::new(addr, None));
        map.push(u.clone());
        u
    }

    /// A server (re)joined the list, as run `run`: it gets a fresh entry, unchecked (no
    /// traffic until its first passing check), with no mark, counter or pooled connection
    /// of an earlier run. Returns the entry it replaced, if any.
    pub fn rejoin(&self, addr: SocketAddr, run: Option<String>) -> Option<Arc<Upstream>> {
        let fresh = Arc::new(Upstream::new(addr, run));
        let mut map = self.map.write().expect("registry lock");
        let old = match map.iter().position(|u| u.addr == addr) {
            Some(i) => Some(std::mem::replace(&mut map[i], fresh)),
            None => {
                map.push(fresh);
                None
            }
        };
        drop(map);
        if let Some(o) = &old {
            o.pool.clear();
        }
        old
    }

    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let mut v = self.map.read().expect("registry lock").clone();
        v.sort_by_key(|u| u.addr);
        v
    }

    /// Records an active check's result for the current run at `addr`; see [`Self::record`].
    pub fn record_check(&self, addr: SocketAddr, result: Result<(), CheckFailure>) -> Option<bool> {
        self.record(&self.get(addr), result)
    }

    /// Records an active check's result for run `u` (the run the check was started for: a
    /// result for a run since replaced changes nothing that serves). Returns the new verdict
    /// when it changed. The first check decides; then `rise` consecutive passes bring a
    /// server up and `fall` consecutive failures take it down. A pass also lifts a passive
    /// mark: the server is back (restarted, say) before the mark would have lapsed.
    pub fn record(&self, u: &Upstream, result: Result<(), CheckFailure>) -> Option<bool> {
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                u.check_ok.store(true, Ordering::Relaxed);
                u.passive_down_until.store(0, Ordering::Relaxed);
                *u.last_check_error.lock().expect("check error lock") = None;
            }
            Err(e) => {
                u.check_ok.store(false, Ordering::Relaxed);
                *u.last_check_error.lock().expect("check error lock") = Some(e.0);
            }
        }
        u.checks.fetch_add(1, Ordering::Relaxed);
        let first = !u.checked.swap(true, Ordering::AcqRel);
        let ready = u.ready.load(Ordering::Relaxed);
        let flipped = if first {
            u.ready.store(ok, Ordering::Relaxed);
            u.streak.store(0, Ordering::Relaxed);
            // A first failure is news too: the server is known not to be up.
            Some(ok)
        } else if ok == ready {
            u.streak.store(0, Ordering::Relaxed);
            None
        } else {
            let n = u.streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= if ok { self.rise } else { self.fall } {
                u.ready.store(ok, Ordering::Relaxed);
                u.streak.store(0, Ordering::Relaxed);
                Some(ok)
            } else {
                None
            }
        };
        self.checked.notify_waiters();
        flipped
    }

    /// Whether a server on offer has not had its first active check yet (just started, or
    /// just joined): a request finding no server up should wait for that check, not fail.
    pub fn pending(&self, lb: &LoadBalancer<RoundRobin>) -> bool {
        lb.backends()
            .get_backend()
            .iter()
            .any(|b| backend_addr(b).is_some_and(|a| !self.get(a).checked.load(Ordering::Acquire)))
    }

    /// Marks a server down after it refused a connection.
    pub fn mark_passive_down(&self, u: &Upstream) {
        u.passive_down_until.store(
            self.now_ms() + self.passive_down.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    pub fn passive_down_left(&self, u: &Upstream) -> Duration {
        Duration::from_millis(
            u.passive_down_until
                .load(Ordering::Relaxed)
                .saturating_sub(self.now_ms()),
        )
    }

    /// Whether `u` may get new requests: checked, its checks' verdict is up, and not
    /// passively marked down.
    pub fn is_up(&self, u: &Upstream) -> bool {
        if !u.ready.load(Ordering::Relaxed) || !u.checked.load(Ordering::Acquire) {
            return false;
        }
        let until = u.passive_down_until.load(Ordering::Relaxed);
        until == 0 || until <= self.now_ms()
    }

    /// The next server for a request, skipping those already tried for it.
    pub fn pick(
        &self,
        lb: &LoadBalancer<RoundRobin>,
        tried: &[SocketAddr],
    ) -> Option<Arc<Upstream>> {
        let backends = lb.backends().get_backend();
        // No allocation per request: discovery offers at most MAX_UPSTREAMS servers.
        let mut up: [Option<Arc<Upstream>>; crate::MAX_UPSTREAMS] = Default::default();
        let mut n = 0;
        for b in backends.iter() {
            if n == up.len() {
                break;
            }
            let Some(addr) = backend_addr(b) else {
                continue;
            };
            if tried.contains(&addr) {
                continue;
            }
            let u = self.get(addr);
            if self.is_up(&u) {
                up[n] = Some(u);
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
        match self.balance {
            Balance::RoundRobin => up[start].take(),
            Balance::LeastConnections => {
                // Fewest in flight; ties go round-robin.
                let best = (0..n).map(|k| (start + k) % n).min_by_key(|&i| {
                    up[i]
                        .as_ref()
                        .map_or(u64::MAX, |u| u.in_flight.load(Ordering::Relaxed))
                })?;
                up[best].take()
            }
        }
    }
}

pub fn backend_addr(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_fall_in_buckets() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(800));
        }
        h.record(Duration::from_millis(40));
        h.record(Duration::from_secs(100));
        assert_eq!(h.quantile_us(0.5), Some(1_000));
        assert_eq!(h.quantile_us(0.99), Some(50_000));
        assert_eq!(h.quantile_us(1.0), Some(30_000_000));
        let (c, sum) = h.cumulative();
        assert_eq!(*c.last().unwrap(), 100);
        assert_eq!(c[0], 0);
        assert_eq!(c[1], 98);
        assert_eq!(sum, 98 * 800 + 40_000 + 100_000_000);
    }

    fn lb(addrs: &[&str]) -> LoadBalancer<RoundRobin> {
        LoadBalancer::try_from_iter(addrs.iter().copied()).unwrap()
    }

    fn checked(r: &Registry, addrs: &[&str]) {
        for a in addrs {
            r.record_check(a.parse().unwrap(), Ok(()));
        }
    }

    #[test]
    fn unchecked_servers_get_nothing_and_round_robin_spreads() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let lb = lb(&addrs);
        let r = Registry::new(Balance::RoundRobin, Duration::from_secs(5));
        assert!(r.pick(&lb, &[]).is_none(), "never checked: no traffic");
        checked(&r, &addrs);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..300 {
            *seen.entry(r.pick(&lb, &[]).unwrap().addr).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3);
        assert!(seen.values().all(|&n| n == 100), "{seen:?}");
    }

    #[test]
    fn tried_and_passively_down_servers_are_skipped() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2"];
        let lb = lb(&addrs);
        let r = Registry::new(Balance::RoundRobin, Duration::from_secs(60));
        checked(&r, &addrs);
        let first: SocketAddr = addrs[0].parse().unwrap();
        for _ in 0..10 {
            assert_ne!(r.pick(&lb, &[first]).unwrap().addr, first);
        }
        let u = r.get(first);
        r.mark_passive_down(&u);
        assert!(r.passive_down_left(&u) > Duration::from_secs(50));
        for _ in 0..10 {
            assert_ne!(r.pick(&lb, &[]).unwrap().addr, first);
        }
        // A passing active check brings it back before the mark lapses.
        r.record_check(first, Ok(()));
        assert!((0..10).any(|_| r.pick(&lb, &[]).unwrap().addr == first));
        let both: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        assert!(r.pick(&lb, &both).is_none());
    }

    #[test]
    fn least_connections_prefers_the_idle_server() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let lb = lb(&addrs);
        let r = Registry::new(Balance::LeastConnections, Duration::from_secs(5));
        checked(&r, &addrs);
        r.get(addrs[0].parse().unwrap())
            .in_flight
            .store(5, Ordering::Relaxed);
        r.get(addrs[1].parse().unwrap())
            .in_flight
            .store(1, Ordering::Relaxed);
        r.get(addrs[2].parse().unwrap())
            .in_flight
            .store(3, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(r.pick(&lb, &[]).unwrap().addr, addrs[1].parse().unwrap());
        }
    }

    #[test]
    fn a_failing_check_is_remembered() {
        let r = Registry::new(Balance::RoundRobin, Duration::from_secs(5));
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        r.record_check(a, Err(CheckFailure("503".into())));
        let u = r.get(a);
        assert!(u.checked.load(Ordering::Relaxed));
        assert!(!u.check_ok.load(Ordering::Relaxed));
        assert_eq!(u.last_check_error.lock().unwrap().as_deref(), Some("503"));
    }

    #[test]
    fn a_server_that_rejoins_starts_afresh_and_serves_after_its_first_pass() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2"];
        let lb = lb(&addrs);
        let r = Registry::new(Balance::RoundRobin, Duration::from_secs(60));
        checked(&r, &addrs);
        let a: SocketAddr = addrs[0].parse().unwrap();
        // Stopping: its check fails, it is taken down and marked; it leaves the list.
        assert_eq!(
            r.record_check(a, Err(CheckFailure("503".into()))),
            Some(false)
        );
        r.mark_passive_down(&r.get(a));
        assert!((0..10).all(|_| r.pick(&lb, &[]).unwrap().addr != a));
        // Back as a new run: nothing of the old run holds it out, but it waits for a check.
        let old = r.rejoin(a, Some("a/2/2".into())).unwrap();
        assert!(!old.ready.load(Ordering::Relaxed));
        let u = r.get(a);
        assert_eq!(u.run.as_deref(), Some("a/2/2"));
        assert!(r.passive_down_left(&u).is_zero());
        assert!((0..10).all(|_| r.pick(&lb, &[]).unwrap().addr != a));
        assert_eq!(r.record_check(a, Ok(())), Some(true));
        assert!((0..10).any(|_| r.pick(&lb, &[]).unwrap().addr == a));
        // A late result for the old run changes nothing that serves.
        assert_eq!(r.record(&old, Err(CheckFailure("refused".into()))), None);
        assert!(r.is_up(&r.get(a)));
    }

    #[test]
    fn rise_and_fall_count_consecutive_results_after_the_first_check() {
        let r = Registry::new(Balance::RoundRobin, Duration::from_secs(5)).with_thresholds(2, 3);
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            r.record_check(a, Ok(())),
            Some(true),
            "the first check decides"
        );
        assert_eq!(r.record_check(a, Err(CheckFailure("x".into()))), None);
        assert_eq!(r.record_check(a, Err(CheckFailure("x".into()))), None);
        assert_eq!(r.record_check(a, Ok(())), None, "a pass resets the count");
        for _ in 0..2 {
            assert_eq!(r.record_check(a, Err(CheckFailure("x".into()))), None);
        }
        assert_eq!(
            r.record_check(a, Err(CheckFailure("x".into()))),
            Some(false)
        );
        assert_eq!(r.record_check(a, Ok(())), None);
        assert_eq!(r.record_check(a, Ok(())), Some(true));
        assert_eq!(r.get(a).checks.load(Ordering::Relaxed), 9);
    }
}
