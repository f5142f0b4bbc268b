//! The server's Prometheus metrics: one registry (`prometheus-client`), served as text by the
//! admin listener's `GET /metrics`. Every figure is named by Prometheus conventions (`oxbus_`
//! prefix, `_total` counters, `_seconds` histograms, base units) and labelled only with values
//! from a bounded set (channel and service names, reasons, classes): never a cid, a path or
//! anything a client sent. docs/OBSERVABILITY.md lists every series.
//!
//! This module knows no subsystem: each subsystem records into its own area's handle
//! (`http`, `workers`, `services`, `store`, `cluster`, `deploys`, `caches`, `scheduler`,
//! `pubsub`, `inbound`, `websocket`), one
//! file each; figures that are a state rather than a count are read at scrape time.

use prometheus_client::registry::Registry;

pub mod caches;
pub mod cluster;
pub mod deploys;
pub mod histogram;
pub mod http;
pub mod inbound;
pub mod outgoing;
pub mod pubsub;
pub mod scheduler;
pub mod services;
pub mod stats;
pub mod store;
pub mod websocket;
pub mod workers;

/// Every metric of this server. Built once by boot and shared (`Arc<Metrics>`).
pub struct Metrics {
    /// `metrics.enabled`: when off, the request path records nothing (the benchmark's
    /// baseline) and `/metrics` says so.
    enabled: bool,
    /// Behind a lock only so that a subsystem built after the metrics can add a collector
    /// (figures read at scrape time); recording never takes it.
    registry: std::sync::Mutex<Registry>,
    pub http: http::HttpMetrics,
    pub workers: workers::WorkerMetrics,
    pub services: services::ServiceMetrics,
    pub store: store::StoreMetrics,
    pub cluster: cluster::ClusterMetrics,
    pub deploys: deploys::DeployMetrics,
    pub caches: caches::CacheMetrics,
    pub scheduler: scheduler::SchedulerMetrics,
    pub pubsub: pubsub::PubsubMetrics,
    pub inbound: inbound::InboundMetrics,
    pub websocket: websocket::WebsocketMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(enabled: bool) -> Metrics {
        let mut registry = Registry::with_prefix("oxbus");
        Metrics {
            enabled,
            http: http::HttpMetrics::register(&mut registry),
            workers: workers::WorkerMetrics::register(&mut registry),
            services: services::ServiceMetrics::register(&mut registry),
            store: store::StoreMetrics::register(&mut registry),
            cluster: cluster::ClusterMetrics::register(&mut registry),
            deploys: deploys::DeployMetrics::register(&mut registry),
            caches: caches::CacheMetrics::register(&mut registry),
            scheduler: scheduler::SchedulerMetrics::register(&mut registry),
            pubsub: pubsub::PubsubMetrics::register(&mut registry),
            inbound: inbound::InboundMetrics::register(&mut registry),
            websocket: websocket::WebsocketMetrics::register(&mut registry),
            registry: std::sync::Mutex::new(registry),
        }
    }

    /// Whether figures are recorded (`metrics.enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Adds figures read at scrape time (a state owned by a subsystem: its collector reads it).
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register_collector(collector);
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(64 * 1024);
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}
