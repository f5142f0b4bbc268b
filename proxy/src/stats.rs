//! The stats endpoint: `GET /stats` (JSON) and `GET /metrics` (Prometheus text format) with
//! per-server health, in-flight, requests, errors, tunnels and latency.

use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::app::Totals;
use crate::upstream::{LATENCY_BOUNDS_US, Registry, Upstream, backend_addr};

pub struct Stats {
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub registry: Arc<Registry>,
    pub totals: Arc<Totals>,
    pub draining: Arc<AtomicBool>,
}

struct Row {
    u: Arc<Upstream>,
    /// Offered by discovery right now.
    member: bool,
    /// The active checks' verdict (after the `rise`/`fall` thresholds).
    ready: bool,
    up: bool,
    passive_down: bool,
}

impl Stats {
    fn rows(&self) -> Vec<Row> {
        let backends = self.lb.backends().get_backend();
        let mut rows: Vec<Row> = self
            .registry
            .all()
            .into_iter()
            .map(|u| Row {
                u,
                member: false,
                ready: false,
                up: false,
                passive_down: false,
            })
            .collect();
        for b in backends.iter() {
            let Some(addr) = backend_addr(b) else {
                continue;
            };
            let i = match rows.iter().position(|r| r.u.addr == addr) {
                Some(i) => i,
                None => {
                    rows.push(Row {
                        u: self.registry.get(addr),
                        member: false,
                        ready: false,
                        up: false,
                        passive_down: false,
                    });
                    rows.len() - 1
                }
            };
            let r = &mut rows[i];
            r.member = true;
            r.ready = r.u.ready.load(Ordering::Relaxed) && r.u.checked.load(Ordering::Acquire);
            r.up = self.registry.is_up(&r.u);
            r.passive_down = !self.registry.passive_down_left(&r.u).is_zero();
        }
        rows.sort_by_key(|r| r.u.addr);
        rows
    }

    pub fn json(&self) -> serde_json::Value {
        let ms = |us: Option<u64>| us.map(|v| v as f64 / 1000.0);
        let upstreams: Vec<_> = self
            .rows()
            .iter()
            .map(|r| {
                let u = &r.u;
                let check = if !u.checked.load(Ordering::Acquire) {
                    "pending"
                } else if u.check_ok.load(Ordering::Relaxed) {
                    "passing"
                } else {
                    "failing"
                };
                let (counts, sum_us) = u.latency.cumulative();
                let n = counts.last().copied().unwrap_or(0);
                serde_json::json!({
                    "address": u.addr.to_string(),
                    "run": u.run,
                    "member": r.member,
                    "up": r.up,
                    "active_check": check,
                    "ready": r.ready,
                    "checks": u.checks.load(Ordering::Relaxed),
                    "last_check_error": u.last_check_error.lock().expect("check error lock").clone(),
                    "passive_down_ms": self.registry.passive_down_left(u).as_millis() as u64,
                    "in_flight": u.in_flight.load(Ordering::Relaxed),
                    "requests": u.requests.load(Ordering::Relaxed),
                    "errors": u.errors.load(Ordering::Relaxed),
                    "connect_failures": u.connect_failures.load(Ordering::Relaxed),
                    "responses_5xx": u.responses_5xx.load(Ordering::Relaxed),
                    "tunnels": u.tunnels.load(Ordering::Relaxed),
                    "latency_ms": {
                        "count": n,
                        "mean": if n > 0 { Some(sum_us as f64 / n as f64 / 1000.0) } else { None },
                        "p50": ms(u.latency.quantile_us(0.5)),
                        "p90": ms(u.latency.quantile_us(0.9)),
                        "p99": ms(u.latency.quantile_us(0.99)),
                    },
                })
            })
            .collect();
        let t = &self.totals;
        serde_json::json!({
            "balance": self.registry.balance.as_str(),
            "draining": self.draining.load(Ordering::Relaxed),
            "requests": t.requests.load(Ordering::Relaxed),
            "retries": t.retries.load(Ordering::Relaxed),
            "no_upstream": t.no_upstream.load(Ordering::Relaxed),
            "header_too_large": t.header_too_large.load(Ordering::Relaxed),
            "bad_requests": t.bad_requests.load(Ordering::Relaxed),
            "tunnels_open": t.tunnels_open.load(Ordering::Relaxed),
            "upstreams": upstreams,
        })
    }

    pub fn prometheus(&self) -> String {
        let mut o = String::with_capacity(4096);
        let t = &self.totals;
        let _ = writeln!(
            o,
            "# HELP oxbus_proxy_requests_total Requests received.\n\
             # TYPE oxbus_proxy_requests_total counter\n\
             oxbus_proxy_requests_total {}\n\
             # HELP oxbus_proxy_retries_total Attempts repeated on another server.\n\
             # TYPE oxbus_proxy_retries_total counter\n\
             oxbus_proxy_retries_total {}\n\
             # HELP oxbus_proxy_no_upstream_total Requests answered 503: no server up.\n\
             # TYPE oxbus_proxy_no_upstream_total counter\n\
             oxbus_proxy_no_upstream_total {}\n\
             # HELP oxbus_proxy_header_too_large_total Requests answered 431.\n\
             # TYPE oxbus_proxy_header_too_large_total counter\n\
             oxbus_proxy_header_too_large_total {}\n\
             # HELP oxbus_proxy_bad_requests_total Requests answered 400: malformed heads or bodies.\n\
             # TYPE oxbus_proxy_bad_requests_total counter\n\
             oxbus_proxy_bad_requests_total {}\n\
             # HELP oxbus_proxy_tunnels_open Tunnels of upgraded connections (WebSocket) open.\n\
             # TYPE oxbus_proxy_tunnels_open gauge\n\
             oxbus_proxy_tunnels_open {}",
            t.requests.load(Ordering::Relaxed),
            t.retries.load(Ordering::Relaxed),
            t.no_upstream.load(Ordering::Relaxed),
            t.header_too_large.load(Ordering::Relaxed),
            t.bad_requests.load(Ordering::Relaxed),
            t.tunnels_open.load(Ordering::Relaxed),
        );
        let rows = self.rows();
        type Metric = (&'static str, &'static str, &'static str, fn(&Row) -> u64);
        let metrics: [Metric; 9] = [
            ("up", "gauge", "1 if the server gets new requests.", |r| {
                u64::from(r.up)
            }),
            (
                "in_flight",
                "gauge",
                "Requests in flight (an open tunnel counts as one).",
                |r| r.u.in_flight.load(Ordering::Relaxed),
            ),
            ("requests_total", "counter", "Attempts sent.", |r| {
                r.u.requests.load(Ordering::Relaxed)
            }),
            (
                "errors_total",
                "counter",
                "Attempts failed in transport.",
                |r| r.u.errors.load(Ordering::Relaxed),
            ),
            (
                "connect_failures_total",
                "counter",
                "Connections refused or timed out.",
                |r| r.u.connect_failures.load(Ordering::Relaxed),
            ),
            (
                "responses_5xx_total",
                "counter",
                "5xx answers from the server.",
                |r| r.u.responses_5xx.load(Ordering::Relaxed),
            ),
            (
                "tunnels_total",
                "counter",
                "Tunnels opened: upgrade requests switched (a 101 as asked).",
                |r| r.u.tunnels.load(Ordering::Relaxed),
            ),
            (
                "checks_total",
                "counter",
                "Active checks completed (of the server's current run).",
                |r| r.u.checks.load(Ordering::Relaxed),
            ),
            (
                "passive_down",
                "gauge",
                "1 while skipped after a refused connection.",
                |r| u64::from(r.passive_down),
            ),
        ];
        for (name, kind, help, get) in metrics {
            let _ = writeln!(
                o,
                "# HELP oxbus_proxy_upstream_{name} {help}\n# TYPE oxbus_proxy_upstream_{name} {kind}"
            );
            for r in &rows {
                let _ = writeln!(
                    o,
                    "oxbus_proxy_upstream_{name}{{upstream=\"{}\"}} {}",
                    r.u.addr,
                    get(r)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP oxbus_proxy_upstream_latency_seconds Time from choosing the server to the end of its answer (for a tunnel, to its 101).\n\
             # TYPE oxbus_proxy_upstream_latency_seconds histogram"
        );
        for r in &rows {
            let (counts, sum_us) = r.u.latency.cumulative();
            for (i, c) in counts.iter().enumerate() {
                let le = LATENCY_BOUNDS_US
                    .get(i)
                    .map_or("+Inf".to_string(), |b| format!("{}", *b as f64 / 1e6));
                let _ = writeln!(
                    o,
                    "oxbus_proxy_upstream_latency_seconds_bucket{{upstream=\"{}\",le=\"{le}\"}} {c}",
                    r.u.addr
                );
            }
            let _ = writeln!(
                o,
                "oxbus_proxy_upstream_latency_seconds_sum{{upstream=\"{}\"}} {}\n\
                 oxbus_proxy_upstream_latency_seconds_count{{upstream=\"{}\"}} {}",
                r.u.addr,
                sum_us as f64 / 1e6,
                r.u.addr,
                counts.last().copied().unwrap_or(0)
            );
        }
        o
    }
}

#[async_trait]
impl ServeHttp for Stats {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, ctype, body) = match path.as_str() {
            "/stats" => (200, "application/json", self.json().to_string().into_bytes()),
            "/metrics" => (
                200,
                "text/plain; version=0.0.4",
                self.prometheus().into_bytes(),
            ),
            _ => (
                404,
                "application/json",
                serde_json::json!({"error": format!("no such endpoint {path}; try /stats or /metrics")})
                    .to_string()
                    .into_bytes(),
            ),
        };
        http::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .body(body)
            .expect("static response parts")
    }
}
