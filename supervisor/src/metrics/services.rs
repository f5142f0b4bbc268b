//! Metrics of services: calls, errors by exception family, duration, per service; and the
//! per-service statistics (`stats`) recorded at the same time.
//!
//! Recorded by `lifecycle::pool` around `Pool::invoke`, which every invocation passes (HTTP
//! and JSON-RPC channels, the admin API's invoke, scheduled jobs, `invoke_async` of one
//! service by another). Each service's handles (its counters, its histogram, its statistics)
//! are built the first time it is called and cached in a read-mostly map, so a call costs a
//! read lock and a hash of the name, no allocation.
//!
//! The label values are bounded: a service is recorded only once a worker confirmed it
//! exists (a call of an unknown name is not counted: its name is whatever the caller sent),
//! and an error family must look like a class name (`[A-Za-z][A-Za-z0-9_]{0,63}`). The
//! families of [`FIXED_FAMILIES`] (the server's own and the `oxbus.errors` classes) are
//! always kept; of the others (built-in exception classes) the first [`MAX_FAMILIES`]
//! distinct ones are, and any other is `other`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::histogram::DurationHistogram;
use super::stats::{LastError, ServerStats, ServiceStats, Snapshot};

/// Distinct error families outside [`FIXED_FAMILIES`] kept as label values; past them a
/// family is `other`.
pub const MAX_FAMILIES: usize = 32;
/// The family of a value that is not a class-like name, or past [`MAX_FAMILIES`].
pub const OTHER_FAMILY: &str = "other";
/// The family of a call whose caller went away before its reply (an HTTP client that
/// disconnected): recorded with [`CANCELLED_STATUS`].
pub const CANCELLED_FAMILY: &str = "cancelled";
/// The status of a cancelled call (nginx's "client closed request"): nobody was answered.
pub const CANCELLED_STATUS: u16 = 499;
/// The families always kept as label values, whatever came first: the server's own (no
/// reply came, the input was refused, the dispatcher failed, the caller went away), the
/// `oxbus.errors` classes, and the other fixed names the worker sends (`OutputError`,
/// `CancelledError`). A fixed list, so the label set stays bounded.
pub const FIXED_FAMILIES: [&str; 19] = [
    "timeout",
    "worker_died",
    "busy",
    "too_large",
    "input",
    "internal",
    CANCELLED_FAMILY,
    "Reportable",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "OutputError",
    "CancelledError",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    service: String,
    family: String,
}

/// How a call ended, as the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The service answered (whatever the status it chose).
    Ok,
    /// The service raised, its input was refused, or no reply came: `family` says which,
    /// `status` is what the caller was answered.
    Error { family: &'a str, status: u16 },
}

/// The clock of the statistics' buckets: `Instant`s (which the request path takes anyway)
/// turned into milliseconds since the epoch, from one wall-clock reading at start, so the
/// buckets never go back when the system clock is set. An error's `at_ms` reads the wall
/// clock itself ([`Clock::wall_ms`]). Tests move both forward by hand.
#[derive(Debug)]
pub struct Clock {
    base: Instant,
    base_ms: u64,
    shift_ms: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Instant::now(),
            base_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            shift_ms: AtomicU64::new(0),
        }
    }

    /// `at` in milliseconds since the epoch.
    pub fn ms(&self, at: Instant) -> u64 {
        self.base_ms
            + at.saturating_duration_since(self.base).as_millis() as u64
            + self.shift_ms.load(Ordering::Relaxed)
    }

    /// The wall clock now, in milliseconds since the epoch (an error's `at_ms`: a system
    /// call, on the error path only).
    pub fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + self.shift_ms.load(Ordering::Relaxed)
    }

    /// Moves the clock forward (tests).
    pub fn advance(&self, by: Duration) {
        self.shift_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

/// One service's handles.
#[derive(Debug)]
pub struct ServiceHandles {
    calls: Counter,
    duration: DurationHistogram,
    /// The error counter of each family seen for this service (a few at most).
    errors: Mutex<Vec<(Arc<str>, Counter)>>,
    stats: ServiceStats,
}

pub struct ServiceMetrics {
    calls: Family<ServiceLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ServiceLabel, DurationHistogram>,
    handles: RwLock<HashMap<Box<str>, Arc<ServiceHandles>>>,
    /// The label values of [`FIXED_FAMILIES`], in its order.
    fixed: Vec<Arc<str>>,
    /// The other error families admitted as label values, in the order first seen.
    families: Mutex<Vec<Arc<str>>>,
    other: Arc<str>,
    pub clock: Clock,
}

impl std::fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMetrics").finish_non_exhaustive()
    }
}

/// Whether `s` may be an error family label: `[A-Za-z][A-Za-z0-9_]{0,63}`.
pub fn valid_family(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

impl ServiceMetrics {
    pub fn register(registry: &mut Registry) -> ServiceMetrics {
        let calls = Family::<ServiceLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ServiceLabel, DurationHistogram>::default();
        registry.register(
            "service_calls",
            "Invocations of a service, however they ended",
            calls.clone(),
        );
        registry.register(
            "service_errors",
            "Invocations that failed: the service raised (family = its exception's class \
             family), its input was refused (input), no reply came (timeout, worker_died, \
             busy, too_large), or the caller went away (cancelled)",
            errors.clone(),
        );
        registry.register(
            "service_duration_seconds",
            "Time from dispatch to the reply (or to the failure), per service",
            duration.clone(),
        );
        ServiceMetrics {
            calls,
            errors,
            duration,
            handles: RwLock::new(HashMap::new()),
            fixed: FIXED_FAMILIES.iter().map(|f| Arc::from(*f)).collect(),
            families: Mutex::new(Vec::new()),
            other: Arc::from(OTHER_FAMILY),
            clock: Clock::new(),
        }
    }

    /// The handles of `service`, if it was ever recorded.
    pub fn get(&self, service: &str) -> Option<Arc<ServiceHandles>> {
        self.handles
            .read()
            .expect("service handles lock")
            .get(service)
            .cloned()
    }

    /// Whether `service` has been recorded.
    pub fn knows(&self, service: &str) -> bool {
        self.handles
            .read()
            .expect("service handles lock")
            .contains_key(service)
    }

    fn get_or_create(&self, service: &str) -> Arc<ServiceHandles> {
        if let Some(h) = self.get(service) {
            return h;
        }
        let mut map = self.handles.write().expect("service handles lock");
        map.entry(service.into())
            .or_insert_with(|| {
                let label = ServiceLabel {
                    service: service.to_owned(),
                };
                Arc::new(ServiceHandles {
                    calls: self.calls.get_or_create(&label).clone(),
                    duration: self.duration.get_or_create(&label).clone(),
                    errors: Mutex::new(Vec::new()),
                    stats: ServiceStats::new(),
                })
            })
            .clone()
    }

    /// The label value for `family`: itself when valid and fixed ([`FIXED_FAMILIES`]) or
    /// among the first [`MAX_FAMILIES`] others, otherwise `other`. Only a family outside
    /// the fixed list takes the lock.
    fn family(&self, family: &str) -> Arc<str> {
        if !valid_family(family) {
            return self.other.clone();
        }
        if let Some(f) = self.fixed.iter().find(|f| ***f == *family) {
            return f.clone();
        }
        let mut known = self.families.lock().expect("families lock");
        if let Some(f) = known.iter().find(|f| ***f == *family) {
            return f.clone();
        }
        if known.len() >= MAX_FAMILIES {
            return self.other.clone();
        }
        let f: Arc<str> = Arc::from(family);
        known.push(f.clone());
        f
    }

    /// Records one call of `service` (cid `cid`) that started at `started` and ended now.
    #[cfg(test)]
    pub fn record(&self, service: &str, cid: &str, started: Instant, outcome: Outcome<'_>) {
        self.record_if(service, cid, started, outcome, || true);
    }

    /// Records one call of `service` (cid `cid`) that started at `started` and ended now.
    /// The first call of a service builds its handles, if `exists` says a worker runs it:
    /// otherwise the call is not recorded (its name may be anything a caller sent).
    pub fn record_if(
        &self,
        service: &str,
        cid: &str,
        started: Instant,
        outcome: Outcome<'_>,
        exists: impl FnOnce() -> bool,
    ) {
        let ended = Instant::now();
        {
            // The common case: recorded under the read lock, without touching the handles'
            // reference count (an atomic every thread would share).
            let map = self.handles.read().expect("service handles lock");
            if let Some(h) = map.get(service) {
                self.record_in(h, service, cid, started, ended, outcome);
                return;
            }
        }
        if !exists() {
            return;
        }
        let h = self.get_or_create(service);
        self.record_in(&h, service, cid, started, ended, outcome);
    }

    fn record_in(
        &self,
        h: &ServiceHandles,
        service: &str,
        cid: &str,
        started: Instant,
        ended: Instant,
        outcome: Outcome<'_>,
    ) {
        let took = ended.saturating_duration_since(started);
        h.calls.inc();
        h.duration.observe(took);
        let now_ms = self.clock.ms(ended);
        let us = took.as_micros() as u64;
        match outcome {
            Outcome::Ok => h.stats.record(now_ms, us, false),
            Outcome::Error { family, status } => {
                h.stats.record(now_ms, us, true);
                let (family, counter) = self.error_counter(h, service, family);
                counter.inc();
                h.stats.record_error(
                    now_ms,
                    LastError {
                        at_ms: self.clock.wall_ms(),
                        cid: cid.to_owned(),
                        family: family.to_string(),
                        status,
                    },
                );
            }
        }
    }

    /// The label value and error counter of `family` for the service of `h`: looked up in
    /// the service's own list first, so only a family new to the service takes the global
    /// lock ([`ServiceMetrics::family`]).
    fn error_counter(
        &self,
        h: &ServiceHandles,
        service: &str,
        family: &str,
    ) -> (Arc<str>, Counter) {
        let mut errors = h.errors.lock().expect("service errors lock");
        if let Some((f, c)) = errors.iter().find(|(f, _)| **f == *family) {
            return (f.clone(), c.clone());
        }
        let label = self.family(family);
        if let Some((f, c)) = errors.iter().find(|(f, _)| Arc::ptr_eq(f, &label)) {
            return (f.clone(), c.clone()); // `other`
        }
        let c = self
            .errors
            .get_or_create(&ErrorLabels {
                service: service.to_owned(),
                family: label.to_string(),
            })
            .clone();
        errors.push((label.clone(), c.clone()));
        (label, c)
    }

    /// The statistics of `service` now; None if it was never recorded.
    pub fn snapshot(&self, service: &str) -> Option<Snapshot> {
        let now = self.clock.ms(Instant::now());
        self.get(service).map(|h| h.stats.snapshot(now))
    }

    /// This server's statistics: of `only` (when this server runs it or has figures for
    /// it, with zero figures if it ran nothing: otherwise none), or of every service with
    /// calls in the last 15 minutes or in `running` (those without calls with zero figures).
    pub fn report(
        &self,
        recording: bool,
        running: &std::collections::BTreeSet<String>,
        only: Option<&str>,
    ) -> ServerStats {
        let services = match only {
            Some(name) => match self.snapshot(name) {
                Some(snap) => std::iter::once((name.to_owned(), snap)).collect(),
                None if running.contains(name) => {
                    std::iter::once((name.to_owned(), Snapshot::empty())).collect()
                }
                None => Default::default(),
            },
            None => {
                let mut all = self.snapshot_all();
                all.retain(|name, snap| {
                    snap.calls_in_longest_window() > 0 || running.contains(name)
                });
                for name in running {
                    if !all.contains_key(name) {
                        all.insert(name.clone(), Snapshot::empty());
                    }
                }
                all
            }
        };
        ServerStats {
            recording,
            services,
        }
    }

    /// The statistics of every recorded service now, by name.
    pub fn snapshot_all(&self) -> std::collections::BTreeMap<String, Snapshot> {
        let now = self.clock.ms(Instant::now());
        let handles: Vec<(String, Arc<ServiceHandles>)> = self
            .handles
            .read()
            .expect("service handles lock")
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        handles
            .into_iter()
            .map(|(k, h)| (k, h.stats.snapshot(now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn calls_errors_and_durations_are_rendered_per_service() {
        let m = Metrics::new(true);
        let s = &m.services;
        let t = Instant::now();
        for _ in 0..3 {
            s.record("crm.get", "c1", t, Outcome::Ok);
        }
        s.record(
            "crm.get",
            "c2",
            t,
            Outcome::Error {
                family: "ValueError",
                status: 500,
            },
        );
        s.record(
            "crm.get",
            "c3",
            t,
            Outcome::Error {
                family: "ValueError",
                status: 500,
            },
        );
        s.record(
            "crm.put",
            "c4",
            t,
            Outcome::Error {
                family: "BadRequest",
                status: 400,
            },
        );
        let text = m.render().unwrap();
        assert_eq!(
            line(&text, r#"oxbus_service_calls_total{service="crm.get"}"#),
            Some(r#"oxbus_service_calls_total{service="crm.get"} 5"#)
        );
        assert_eq!(
            line(&text, r#"oxbus_service_calls_total{service="crm.put"}"#),
            Some(r#"oxbus_service_calls_total{service="crm.put"} 1"#)
        );
        assert_eq!(
            line(
                &text,
                r#"oxbus_service_errors_total{service="crm.get",family="ValueError"}"#
            ),
            Some(r#"oxbus_service_errors_total{service="crm.get",family="ValueError"} 2"#)
        );
        assert_eq!(
            line(
                &text,
                r#"oxbus_service_errors_total{service="crm.put",family="BadRequest"}"#
            ),
            Some(r#"oxbus_service_errors_total{service="crm.put",family="BadRequest"} 1"#)
        );
        assert_eq!(
            line(
                &text,
                r#"oxbus_service_duration_seconds_count{service="crm.get"}"#
            ),
            Some(r#"oxbus_service_duration_seconds_count{service="crm.get"} 5"#)
        );
        let snap = s.snapshot("crm.get").unwrap();
        assert_eq!(
            (snap.windows["15m"].calls, snap.windows["15m"].errors),
            (5, 2)
        );
        let last = snap.last_error.unwrap();
        assert_eq!(
            (last.cid.as_str(), last.family.as_str()),
            ("c3", "ValueError")
        );
        assert!(s.snapshot("nope").is_none());
        assert_eq!(
            s.snapshot_all().keys().collect::<Vec<_>>(),
            ["crm.get", "crm.put"]
        );
    }

    #[test]
    fn families_are_capped_and_checked() {
        let m = Metrics::new(true);
        let s = &m.services;
        let t = Instant::now();
        let err = |family: &str| {
            s.record(
                "svc",
                "c",
                t,
                Outcome::Error {
                    family,
                    status: 500,
                },
            )
        };
        for i in 0..MAX_FAMILIES {
            err(&format!("Family{i}"));
        }
        err("Family0");
        err("OneTooMany");
        err("AnotherOne");
        for bad in ["", "9lives", "has space", "x-y", &"A".repeat(65), "Ünicode"] {
            err(bad);
        }
        err(&"A".repeat(64)); // valid, but past the cap
        let text = m.render().unwrap();
        let families: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("oxbus_service_errors_total{"))
            .collect();
        assert_eq!(families.len(), MAX_FAMILIES + 1, "{families:#?}");
        assert!(text.contains(r#"oxbus_service_errors_total{service="svc",family="Family0"} 2"#));
        assert!(text.contains(r#"oxbus_service_errors_total{service="svc",family="other"} 9"#));
        assert!(!text.contains("OneTooMany"));
        assert_eq!(
            s.snapshot("svc").unwrap().last_error.unwrap().family,
            "other"
        );
        assert!(valid_family("OSError") && valid_family("worker_died") && valid_family("A"));
        assert!(valid_family(&"A".repeat(64)));
        assert!(FIXED_FAMILIES.iter().all(|f| valid_family(f)));
    }

    #[test]
    fn the_fixed_families_are_admitted_when_the_cap_is_full() {
        let m = Metrics::new(true);
        let s = &m.services;
        let t = Instant::now();
        let err = |service: &str, family: &str| {
            s.record(
                service,
                "c",
                t,
                Outcome::Error {
                    family,
                    status: 500,
                },
            )
        };
        // Weeks of built-in exception classes fill the cap...
        for i in 0..MAX_FAMILIES {
            err("old", &format!("BuiltIn{i}Error"));
        }
        err("old", "OneTooMany");
        // ...yet the server's own families and the oxbus.errors classes still get their
        // names, for any service.
        for family in FIXED_FAMILIES {
            err("new", family);
            assert_eq!(
                s.snapshot("new").unwrap().last_error.unwrap().family,
                family
            );
        }
        err("new", "AnotherBuiltIn");
        let text = m.render().unwrap();
        for family in [
            "timeout",
            "worker_died",
            "cancelled",
            "BadRequest",
            "CancelledError",
        ] {
            let line =
                format!(r#"oxbus_service_errors_total{{service="new",family="{family}"}} 1"#);
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.contains(r#"oxbus_service_errors_total{service="new",family="other"} 1"#));
        assert!(text.contains(r#"oxbus_service_errors_total{service="old",family="other"} 1"#));
        // A family the service has seen is found in its own list (no global lock): the
        // same counter again.
        err("new", "timeout");
        let text = m.render().unwrap();
        assert!(text.contains(r#"oxbus_service_errors_total{service="new",family="timeout"} 2"#));
    }

    #[test]
    fn a_new_name_is_recorded_only_if_it_exists_and_the_report_lists_recent_or_running_ones() {
        let m = Metrics::new(true);
        let s = &m.services;
        let t = Instant::now();
        s.record_if("ghost", "c", t, Outcome::Ok, || false);
        assert!(!s.knows("ghost"));
        s.record_if("svc", "c", t, Outcome::Ok, || true);
        s.record_if("svc", "c", t, Outcome::Ok, || unreachable!("known already"));
        s.record_if("gone", "c", t, Outcome::Ok, || true);
        let running: std::collections::BTreeSet<String> =
            ["svc".to_owned(), "idle".to_owned()].into();
        let names = |r: ServerStats| r.services.into_keys().collect::<Vec<_>>();
        assert_eq!(
            names(s.report(true, &running, None)),
            ["gone", "idle", "svc"]
        );
        // 15 minutes on: `gone` (not running) had no calls in the window and is left out.
        s.clock.advance(Duration::from_secs(15 * 60));
        assert_eq!(names(s.report(true, &running, None)), ["idle", "svc"]);
        // Asked for by name: a service with figures or running, never an unknown one.
        assert_eq!(names(s.report(true, &running, Some("gone"))), ["gone"]);
        assert_eq!(names(s.report(true, &running, Some("idle"))), ["idle"]);
        assert!(names(s.report(true, &running, Some("ghost"))).is_empty());
    }

    #[test]
    fn the_clock_moves_the_windows() {
        let m = Metrics::new(true);
        let s = &m.services;
        s.record("svc", "c", Instant::now(), Outcome::Ok);
        assert_eq!(s.snapshot("svc").unwrap().windows["15m"].calls, 1);
        s.clock.advance(Duration::from_secs(5 * 60));
        let w = s.snapshot("svc").unwrap().windows;
        assert_eq!((w["1m"].calls, w["5m"].calls, w["15m"].calls), (0, 0, 1));
        s.clock.advance(Duration::from_secs(10 * 60));
        assert_eq!(s.snapshot("svc").unwrap().windows["15m"].calls, 0);
    }
}
