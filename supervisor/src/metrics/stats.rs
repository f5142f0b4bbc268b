//! Per-service statistics over the last 1, 5 and 15 minutes (`GET /v1/services/{name}/stats`,
//! `oxbus services --stats`): calls, errors, mean, p50 and p99, and the last error.
//!
//! Each service has a ring of 15 one-minute buckets (wall-clock minutes, UTC), each with its
//! minute, the number of calls and errors, the sum of their durations and a fixed log-scale
//! histogram of durations. A call lands in the bucket of the minute it ended in; a bucket
//! whose minute has gone round the ring is cleared by the first call that needs it. The
//! window of `w` minutes is the current minute and the `w - 1` before it, so the 1-minute
//! window holds what ended since the minute began.
//!
//! Recording takes no lock (a few atomic additions; clearing a bucket once a minute takes
//! the service's rotation lock). The histogram has 8 bins per power of two of microseconds
//! (exact below 8 µs, up to 2^32 µs ≈ 71 min; longer calls land in the last bin): a quantile
//! is reported as the upper edge of its bin, so it is never below the true value and at
//! most 12.5 % (or 1 µs) above it. The mean is exact to the microsecond.
//!
//! Every function takes the time as an argument (milliseconds since the Unix epoch): the
//! caller's clock, so tests move it by hand.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Minutes kept (the longest window).
pub const MINUTES: u64 = 15;
/// The windows reported, in minutes.
pub const WINDOWS: [u64; 3] = [1, 5, 15];

/// Histogram bins: 8 exact ones (0..8 µs), then 8 per power of two from 2^3 to 2^31 µs.
const BINS: usize = 8 + 29 * 8;
/// The largest duration the bins tell apart, in microseconds.
const MAX_US: u64 = (1 << 32) - 1;

/// The bin of a duration in microseconds.
fn bin(us: u64) -> usize {
    let v = us.min(MAX_US);
    if v < 8 {
        return v as usize;
    }
    let k = 63 - v.leading_zeros() as usize; // 3..=31
    let sub = ((v >> (k - 3)) & 7) as usize;
    8 + (k - 3) * 8 + sub
}

/// The upper edge of a bin (exclusive), in microseconds: what a quantile in it reports.
fn upper_edge(bin: usize) -> u64 {
    if bin < 8 {
        return bin as u64 + 1;
    }
    let k = (bin - 8) / 8 + 3;
    let sub = ((bin - 8) % 8) as u64;
    ((8 + sub) << (k - 3)) + (1 << (k - 3))
}

/// One minute of one service.
struct Bucket {
    /// The minute (since the epoch) + 1 this bucket holds; 0: none yet.
    minute: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    sum_us: AtomicU64,
    bins: [AtomicU32; BINS],
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            minute: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            bins: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// The last failed call of a service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastError {
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub cid: String,
    /// The exception class family (`ValueError`, `BadRequest`, `input`, `timeout`...).
    pub family: String,
    /// The status of the service's error reply; for a call that got no reply, the status
    /// a REST channel answers for it (503 `busy` / `worker_died`, 504 `timeout`, 413
    /// `too_large`; 499 `cancelled`: the caller went away). The admin API's invoke and
    /// JSON-RPC channels answer those in their own way (docs/OBSERVABILITY.md).
    pub status: u16,
}

/// One window's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub calls: u64,
    pub errors: u64,
    /// Milliseconds; absent without calls.
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A service's figures: one [`Window`] per entry of [`WINDOWS`], and the last error.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// `"1m"`, `"5m"`, `"15m"`.
    pub windows: std::collections::BTreeMap<String, Window>,
    pub last_error: Option<LastError>,
}

impl Snapshot {
    /// The calls of the longest window (15 minutes).
    pub fn calls_in_longest_window(&self) -> u64 {
        self.windows.values().map(|w| w.calls).max().unwrap_or(0)
    }

    /// The figures of a service without calls.
    pub fn empty() -> Snapshot {
        Snapshot {
            windows: WINDOWS
                .iter()
                .map(|w| {
                    (
                        format!("{w}m"),
                        Window {
                            calls: 0,
                            errors: 0,
                            mean_ms: None,
                            p50_ms: None,
                            p99_ms: None,
                        },
                    )
                })
                .collect(),
            last_error: None,
        }
    }
}

/// One server's statistics: what `GET /v1/services/stats` shows per server and what the bus
/// op `services.stats` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerStats {
    /// Whether this server records figures (`metrics.enabled`); when not, every figure is 0.
    pub recording: bool,
    /// By service name: every service it ran in the last 15 minutes or runs now.
    pub services: std::collections::BTreeMap<String, Snapshot>,
}

/// The statistics of one service.
pub struct ServiceStats {
    ring: Box<[Bucket]>,
    /// Held while a bucket is cleared for a new minute (once a minute at most).
    rotate: Mutex<()>,
    /// The last error, with the bucket clock's time it ended at (monotonic, unlike its
    /// `at_ms`): which one is the last.
    last_error: Mutex<Option<(u64, LastError)>>,
}

impl std::fmt::Debug for ServiceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceStats").finish_non_exhaustive()
    }
}

impl Default for ServiceStats {
    fn default() -> Self {
        ServiceStats::new()
    }
}

impl ServiceStats {
    pub fn new() -> ServiceStats {
        ServiceStats {
            ring: (0..MINUTES).map(|_| Bucket::new()).collect(),
            rotate: Mutex::new(()),
            last_error: Mutex::new(None),
        }
    }

    /// The bucket of `minute`, cleared first if it still holds an older minute.
    fn bucket(&self, minute: u64) -> &Bucket {
        let b = &self.ring[(minute % MINUTES) as usize];
        let tag = minute + 1;
        if b.minute.load(Ordering::Acquire) != tag {
            let _g = self.rotate.lock().expect("stats rotate lock");
            let held = b.minute.load(Ordering::Acquire);
            // Never go back: a call that ended just before a newer one cleared the bucket
            // for a later minute (15 minutes on) is dropped rather than erase it.
            if held < tag {
                b.calls.store(0, Ordering::Relaxed);
                b.errors.store(0, Ordering::Relaxed);
                b.sum_us.store(0, Ordering::Relaxed);
                for c in &b.bins {
                    c.store(0, Ordering::Relaxed);
                }
                b.minute.store(tag, Ordering::Release);
            }
        }
        b
    }

    /// Records a call that ended at `now_ms` after `us` microseconds.
    pub fn record(&self, now_ms: u64, us: u64, error: bool) {
        let minute = now_ms / 60_000;
        let b = self.bucket(minute);
        if b.minute.load(Ordering::Acquire) != minute + 1 {
            return; // see `bucket`: a newer minute owns it
        }
        b.calls.fetch_add(1, Ordering::Relaxed);
        b.sum_us.fetch_add(us, Ordering::Relaxed);
        b.bins[bin(us)].fetch_add(1, Ordering::Relaxed);
        if error {
            b.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a failed call that ended at `now_ms` (the time [`ServiceStats::record`]
    /// counted it at): remembered here unless a later one already is.
    pub fn record_error(&self, now_ms: u64, e: LastError) {
        let mut last = self.last_error.lock().expect("last error lock");
        if last.as_ref().is_none_or(|(at, _)| *at <= now_ms) {
            *last = Some((now_ms, e));
        }
    }

    /// The figures of each window ending at `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let minute = now_ms / 60_000;
        let windows = WINDOWS
            .iter()
            .map(|&w| (format!("{w}m"), self.window(minute, w)))
            .collect();
        Snapshot {
            windows,
            last_error: self
                .last_error
                .lock()
                .expect("last error lock")
                .as_ref()
                .map(|(_, e)| e.clone()),
        }
    }

    fn window(&self, minute: u64, w: u64) -> Window {
        let (mut calls, mut errors, mut sum_us) = (0u64, 0u64, 0u64);
        let mut bins = [0u64; BINS];
        for b in self.ring.iter() {
            let tag = b.minute.load(Ordering::Acquire);
            // Tags are minute + 1: the window is minute - w + 1 ..= minute.
            if tag == 0 || tag > minute + 1 || tag + w <= minute + 1 {
                continue;
            }
            calls += b.calls.load(Ordering::Relaxed);
            errors += b.errors.load(Ordering::Relaxed);
            sum_us += b.sum_us.load(Ordering::Relaxed);
            for (acc, c) in bins.iter_mut().zip(&b.bins) {
                *acc += u64::from(c.load(Ordering::Relaxed));
            }
        }
        let counted: u64 = bins.iter().sum();
        let quantile = |q: f64| -> Option<f64> {
            if counted == 0 {
                return None;
            }
            let rank = ((q * counted as f64).ceil() as u64).clamp(1, counted);
            let mut seen = 0;
            for (i, n) in bins.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Some(upper_edge(i) as f64 / 1000.0);
                }
            }
            None
        };
        Window {
            calls,
            errors,
            mean_ms: (calls > 0).then(|| sum_us as f64 / calls as f64 / 1000.0),
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    /// A minute boundary, far from the epoch.
    const T0: u64 = 29_000_000 * MIN;

    #[test]
    fn bins_cover_every_duration_and_edges_bound_it_from_above() {
        let mut last = 0;
        for us in (0..5000).chain([1 << 20, (1 << 31) + 5, MAX_US, u64::MAX]) {
            let b = bin(us);
            assert!(b < BINS, "{us}");
            assert!(b >= last || us > 5000, "bins are monotonic");
            last = b;
            let edge = upper_edge(b);
            if us < MAX_US {
                assert!(edge > us, "{us}: edge {edge}");
                assert!(
                    edge <= us + 1 + us / 8,
                    "{us}: edge {edge} is more than 12.5 % above"
                );
            }
        }
        assert_eq!(bin(7), 7);
        assert_eq!(bin(8), 8);
        assert_eq!(upper_edge(bin(8)), 9);
        assert_eq!(upper_edge(bin(16)), 18);
    }

    #[test]
    fn windows_count_their_minutes_and_buckets_expire() {
        let s = ServiceStats::new();
        // 3 calls (1 error) in minute 0, 2 in minute 3, 1 error in minute 10.
        s.record(T0 + 1_000, 1_000, false);
        s.record(T0 + 2_000, 3_000, false);
        s.record(T0 + 59_999, 2_000, true);
        s.record(T0 + 3 * MIN, 10_000, false);
        s.record(T0 + 3 * MIN + 5, 10_000, false);
        s.record(T0 + 10 * MIN + 1, 500, true);
        let at = |t: u64| s.snapshot(t).windows;
        let w = at(T0 + 30_000);
        assert_eq!((w["1m"].calls, w["1m"].errors), (3, 1));
        assert_eq!(w["1m"].mean_ms, Some(2.0));
        assert_eq!((w["15m"].calls, w["15m"].errors), (3, 1));
        // Minute 3: 1m sees its own 2 calls, 5m sees minutes 0..=3.
        let w = at(T0 + 3 * MIN + 10);
        assert_eq!(w["1m"].calls, 2);
        assert_eq!((w["5m"].calls, w["5m"].errors), (5, 1));
        // Minute 5: minute 0 left the 5-minute window, not the 15-minute one.
        let w = at(T0 + 5 * MIN);
        assert_eq!(w["1m"].calls, 0);
        assert_eq!(w["1m"].mean_ms, None);
        assert_eq!(w["5m"].calls, 2);
        assert_eq!(w["15m"].calls, 5);
        // Minute 14: still everything; minute 15: minute 0 expired.
        assert_eq!(at(T0 + 14 * MIN + 59_999)["15m"].calls, 6);
        let w = at(T0 + 15 * MIN);
        assert_eq!((w["15m"].calls, w["15m"].errors), (3, 1));
        // Minute 18: only minute 10's call is left.
        let w = at(T0 + 18 * MIN);
        assert_eq!((w["15m"].calls, w["15m"].errors), (1, 1));
        assert_eq!(w["5m"].calls, 0);
        // Minute 25: nothing.
        assert_eq!(at(T0 + 25 * MIN)["15m"].calls, 0);
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let s = ServiceStats::new();
        s.record(T0, 1_000, true);
        // 15 minutes later the same ring slot: the old minute is gone, not added.
        s.record(T0 + 15 * MIN, 2_000, false);
        let w = s.snapshot(T0 + 15 * MIN).windows;
        assert_eq!((w["15m"].calls, w["15m"].errors), (1, 0));
        assert_eq!(w["15m"].mean_ms, Some(2.0));
        // A late call for the old minute does not erase the newer one.
        s.record(T0 + 10, 1_000, false);
        assert_eq!(s.snapshot(T0 + 15 * MIN).windows["15m"].calls, 1);
    }

    #[test]
    fn quantiles_are_upper_bounds_within_an_eighth() {
        let s = ServiceStats::new();
        // 100 calls: 1..=100 ms.
        for i in 1..=100u64 {
            s.record(T0 + i, i * 1000, false);
        }
        let w = &s.snapshot(T0 + 200).windows["1m"];
        assert_eq!(w.calls, 100);
        assert_eq!(w.mean_ms, Some(50.5));
        let p50 = w.p50_ms.unwrap();
        let p99 = w.p99_ms.unwrap();
        assert!((50.0..=50.0 * 1.125 + 0.001).contains(&p50), "p50 {p50}");
        assert!((99.0..=99.0 * 1.125 + 0.001).contains(&p99), "p99 {p99}");
        // One slow call among many fast ones moves p99, not p50.
        let s = ServiceStats::new();
        for i in 0..99 {
            s.record(T0 + i, 100, false);
        }
        s.record(T0 + 100, 2_000_000, false);
        let w = &s.snapshot(T0 + 200).windows["1m"];
        assert!(w.p50_ms.unwrap() < 0.2);
        assert!(
            w.p99_ms.unwrap() < 0.2,
            "rank 99 of 100 is still a fast call"
        );
        s.record(T0 + 101, 2_000_000, false);
        let w = &s.snapshot(T0 + 200).windows["1m"];
        assert!(w.p99_ms.unwrap() >= 2000.0);
    }

    #[test]
    fn the_last_error_is_the_latest() {
        let s = ServiceStats::new();
        assert_eq!(s.snapshot(T0).last_error, None);
        // `at_ms` is the wall clock, which may go back: the order is the buckets' clock.
        let e = |at_ms, cid: &str| LastError {
            at_ms,
            cid: cid.into(),
            family: "ValueError".into(),
            status: 500,
        };
        s.record_error(T0 + 5, e(T0 + 5, "b"));
        s.record_error(T0 + 1, e(T0 + 1, "a")); // ended earlier, reported later
        assert_eq!(s.snapshot(T0 + 10).last_error.unwrap().cid, "b");
        s.record_error(T0 + 9, e(T0 - 60_000, "c")); // the system clock was set back
        let last = s.snapshot(T0 + 10).last_error.unwrap();
        assert_eq!((last.cid.as_str(), last.at_ms), ("c", T0 - 60_000));
    }
}
