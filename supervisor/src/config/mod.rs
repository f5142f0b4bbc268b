//! Server settings: a TOML file, then `OXBUS_<SECTION>_<KEY>` environment overrides, then
//! validation. Everything is checked before anything starts, and a bad setting is an error
//! that names the setting, the value and the limit.
//!
//! Below every subsystem: it reads the file and the environment and knows only `model` (the
//! channels' checks are `model::channel::routes`, the same ones the routing table runs).
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:17010"
//! workers = 2                 # 1..=8
//! python = "/srv/venv/bin/python"
//! threads = 8                 # concurrent `def handle` per worker
//! services_dir = "services"   # relative to this file
//!
//! [pickup]
//! dir = "pickup"              # *.py saved here are hot-deployed; absent = no pickup
//!
//! [[channels]]
//! url_path = "/customers/{id}"
//! methods = ["GET"]
//! service = "crm.customer.get"
//! ```

use crate::model::channel::{Channel, ChannelError};
use crate::model::net::TrustedProxies;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most Python workers one server runs: a product limit, not a tuning default.
pub const MAX_WORKERS: u32 = 8;

/// Errors found while reading or checking the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid setting {key} = {value}: {message}")]
    Invalid {
        key: String,
        value: String,
        message: String,
    },
    /// A channel that cannot be routed (the same text as `Invalid`).
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub workers: WorkersSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub pickup: PickupSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub openapi: OpenApiSection,
    #[serde(default)]
    pub deploy: DeploySection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub debug: DebugSection,
    #[serde(default)]
    pub channels: Vec<Channel>,
    /// Directory of the file the settings came from; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: SocketAddr,
    /// Number of Python workers; default min(CPUs, 8).
    pub workers: Option<u32>,
    /// The Python interpreter the workers run (a venv's `bin/python` works).
    pub python: String,
    pub threads: u32,
    pub services_dir: PathBuf,
    /// Private directory for the IPC socket and the bundled Python package; default: a
    /// fresh directory under `$XDG_RUNTIME_DIR` or `/tmp`.
    pub runtime_dir: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug` or `trace`, or a tracing target list.
    pub log_level: String,
    /// How log lines are written: `text` (the default) or `json` (one object per line).
    pub log_format: LogFormat,
    /// Threads of the server's own I/O runtime (HTTP, IPC). Default: 1 per 4 CPUs, at
    /// least 1 — the Python workers are meant to have the cores; an extra I/O thread on a
    /// small machine costs more in context switches than it gives.
    pub io_threads: Option<usize>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "0.0.0.0:17010".parse().expect("valid address"),
            workers: None,
            python: "python3".into(),
            threads: 8,
            services_dir: "services".into(),
            runtime_dir: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            io_threads: None,
        }
    }
}

/// `server.log_format`: how the server writes its log lines (`cli::logging`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line: time, level, target, cid, service, trace_id, message,
    /// fields.
    Json,
}

/// `[workers]`: supervision of the Python processes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersSection {
    /// Invocations sent to one worker at once (pipelined on its socket).
    pub max_inflight: u32,
    /// Requests that may wait for a free worker before the server answers 503.
    pub max_queue: u32,
    /// Recycle a worker after this many requests (0 = never), plus up to `max_requests_jitter`.
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// Recycle a worker whose resident memory exceeds this many MiB (0 = never): its
    /// replacement starts first, then it drains. Default [`DEFAULT_MAX_RSS_MB`].
    pub max_rss_mb: u64,
    pub heartbeat_ms: u64,
    /// How long a worker may take from spawn to READY.
    pub startup_timeout_ms: u64,
    /// How long a draining worker may take to finish before it is killed.
    pub drain_timeout_ms: u64,
}

impl Default for WorkersSection {
    fn default() -> Self {
        WorkersSection {
            max_inflight: 64,
            max_queue: 1024,
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss_mb: DEFAULT_MAX_RSS_MB,
            heartbeat_ms: 5000,
            startup_timeout_ms: 30_000,
            drain_timeout_ms: 30_000,
        }
    }
}

/// The default ceiling on a worker's resident memory, in MiB. An idle worker is ~20–40 MiB
/// and a busy one with numpy, lxml or a pandas frame a few hundred; a worker past 1 GiB has
/// almost always leaked (a cache that only grows, a request that read a huge file), and with
/// up to 8 workers per server an unbounded one takes the machine's memory from the others.
/// Recycling is graceful (replacement first, then drain), so a legitimate peak costs one
/// worker start. Services that really need more set `workers.max_rss_mb` (0 = no ceiling).
pub const DEFAULT_MAX_RSS_MB: u64 = 1024;

/// The smallest non-zero `workers.max_rss_mb`: below the interpreter's own footprint a
/// worker would be recycled as soon as it starts, forever.
pub const MIN_MAX_RSS_MB: u64 = 64;

/// `[deploy]`: hot deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySection {
    /// How long a deploy's check (one worker importing the new modules) may take. Past it
    /// the deploy is refused (422) and the checking worker replaced as a stuck one is: a
    /// module whose import never returns must not hold a worker, a lock or the deploy's
    /// caller. The activation of checked modules in every worker is bounded by
    /// `workers.startup_timeout_ms` instead (the same imports a starting worker does).
    pub check_timeout_ms: u64,
}

impl Default for DeploySection {
    fn default() -> Self {
        DeploySection {
            check_timeout_ms: 10_000,
        }
    }
}

/// `[audit]`: the audit log of admin changes (docs/OBSERVABILITY.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Days a row is kept; older ones are deleted in the background (hourly).
    pub retention_days: u32,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection { retention_days: 90 }
    }
}

/// `[http]`: the edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Per-request deadline; past it the client gets 504 and the worker is replaced.
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this; above 60 s for AWS ALB.
    pub keepalive_timeout_ms: u64,
    /// On SIGTERM, time in-flight requests get to finish.
    pub drain_timeout_ms: u64,
    /// On SIGTERM, how long to keep serving with `/readyz` answering 503 before the listener
    /// closes: long enough for a load balancer (an AWS ALB's health checks) to take the
    /// server out of rotation, so that no new connection is refused. 0 = close at once.
    pub shutdown_delay_ms: u64,
    /// Reverse proxies (CIDR networks, e.g. an ALB's subnets) whose `X-Forwarded-For`,
    /// `X-Forwarded-Proto`, `X-Forwarded-Port` and `X-Request-Id` are believed (see
    /// `edge::forwarded`). Empty = trust nobody: the client is the TCP peer. A string is read
    /// as a comma-separated list, so that `OXBUS_HTTP_TRUSTED_PROXIES=10.0.0.0/8,::1` works.
    #[serde(deserialize_with = "list_or_csv")]
    pub trusted_proxies: Vec<String>,
    /// `trusted_proxies` parsed, when the settings are loaded.
    #[serde(skip)]
    trusted: TrustedProxies,
}

impl HttpSection {
    /// The parsed `trusted_proxies`.
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }
}

/// A list of strings, or one string holding a comma-separated list (empty = none).
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(v) => v,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            request_timeout_ms: 30_000,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_ms: 75_000,
            drain_timeout_ms: 30_000,
            shutdown_delay_ms: 0,
            trusted_proxies: Vec::new(),
            trusted: TrustedProxies::default(),
        }
    }
}

/// `[store]`: the config store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite:oxbus.db` (a path relative to the settings file, or absolute) or
    /// `postgres://user@host/db`.
    pub url: String,
    /// The key that seals secrets in the store (64 hex characters), outside the store:
    /// relative to the settings file; created 0600 when missing and the store holds no
    /// secret yet. A systemd credential `oxbus-secret-key` takes precedence.
    pub key_file: PathBuf,
    /// The on-disk snapshot of the config this server runs (see `snapshot`): what it boots
    /// from when a PostgreSQL store is down. Relative to the settings file.
    pub snapshot_file: PathBuf,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: "sqlite:oxbus.db".into(),
            key_file: "secret.key".into(),
            snapshot_file: "snapshot.json".into(),
        }
    }
}

/// `[admin]`: the admin API (the CLI and the dashboard use it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: SocketAddr,
    /// File holding the bearer token; created (0600) with a random token when missing.
    pub token_file: PathBuf,
    /// The bearer token `GET /metrics` asks for; none (the default): `/metrics` needs no
    /// token. An empty value is no token too (so `OXBUS_ADMIN_METRICS_TOKEN=""` turns off one
    /// that the file sets).
    pub metrics_token: Option<MetricsToken>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:17011".parse().expect("valid address"),
            token_file: "admin.token".into(),
            metrics_token: None,
        }
    }
}

/// `admin.metrics_token`: a secret, so its `Debug` never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct MetricsToken(String);

impl MetricsToken {
    /// The shortest token accepted: a guessable one would protect nothing.
    pub const MIN_LEN: usize = 16;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

/// `[metrics]`: the Prometheus metrics of `GET /metrics` (docs/OBSERVABILITY.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Off: nothing is recorded on the request path and `/metrics` answers 404.
    pub enabled: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { enabled: true }
    }
}

/// `[debug]`: run the one worker under `debugpy`, for an IDE to attach to (docs/DEBUGGING.md).
/// Off unless `port` is set (or `oxbus server --debug`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugSection {
    /// The port on 127.0.0.1 debugpy listens on; absent = no debugger. Never another
    /// address: whoever reaches a debug adapter runs code in the worker.
    pub port: Option<u16>,
}

/// The port `oxbus server --debug` uses when it is given none (debugpy's and the IDEs' own
/// default).
pub const DEFAULT_DEBUG_PORT: u16 = 5678;

/// `[pickup]`: a directory the server watches; a `*.py` file saved (or `git pull`ed) into it
/// is hot-deployed as the module named after the file (see `watch`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PickupSection {
    /// Relative to the settings file, or absolute. Absent or empty = no pickup directory
    /// (so `OXBUS_PICKUP_DIR=""` turns off one that the file sets).
    pub dir: Option<PathBuf>,
}

/// `[cluster]`: who this server is among the (at most 3) servers sharing a config store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This server's name in the store's server list (a-z, 0-9, `.`, `_`, `-`; at most 63);
    /// default `<hostname>-<HTTP port>`.
    pub server: Option<String>,
    /// The cluster's name: servers of other clusters are refused on the bus.
    pub name: String,
    /// File holding the cluster secret (at least 32 bytes; the same on every server). With
    /// it, and a PostgreSQL store, the server runs the cluster bus; without, servers follow
    /// the store by checking its version every second.
    pub secret_file: Option<PathBuf>,
    /// Where the cluster bus listens.
    pub bus_listen: SocketAddr,
    /// The address other servers dial; default `bus_listen` (required when that is
    /// 0.0.0.0 or [::]).
    pub bus_address: Option<SocketAddr>,
    /// How often the store's version is checked (the backstop of the bus).
    pub sync_interval_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            server: None,
            name: "oxbus".into(),
            secret_file: None,
            bus_listen: "127.0.0.1:17020".parse().expect("valid address"),
            bus_address: None,
            sync_interval_ms: 1000,
        }
    }
}

/// `[openapi]`: the `info` of the OpenAPI document each server publishes (`openapi`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenApiSection {
    /// `info.title`; default: the cluster's name.
    pub title: Option<String>,
    /// The API's own version; `info.version` is `<version>+config.<N>` with N the config
    /// version the server runs, or `config.<N>` without it.
    pub version: Option<String>,
    /// `info.description`; default: none.
    pub description: Option<String>,
}

/// The most servers one cluster (one config store) may have.
pub const MAX_SERVERS: usize = 3;

const SECTIONS: &[&str] = &[
    "server", "workers", "http", "store", "admin", "pickup", "cluster", "openapi", "deploy",
    "audit", "metrics", "debug",
];

impl Settings {
    /// Reads `path`, applies the `OXBUS_*` variables of `env` and validates the result.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // `server.toml` (no directory part) has the parent "", which is no directory to
        // chdir into: the current directory is meant.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        Settings::from_toml(&text, path, &base, env)
    }

    /// Parses TOML text (named `origin` in errors), applies overrides, validates.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        base_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings> {
        let mut doc: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        apply_env(&mut doc, env)?;
        let mut s: Settings =
            toml::Value::Table(doc)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        s.base_dir = base_dir.to_owned();
        s.http.trusted =
            TrustedProxies::parse(&s.http.trusted_proxies).map_err(|e| ConfigError::Invalid {
                key: "http.trusted_proxies".into(),
                value: format!("{:?}", e.entry),
                message: e.message,
            })?;
        if s.admin
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.0.is_empty())
        {
            s.admin.metrics_token = None;
        }
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, value: &dyn std::fmt::Display, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                value: value.to_string(),
                message: message.into(),
            })
        };
        if self.debug.port == Some(0) {
            return bad(
                "debug.port",
                &0,
                "must be a port number (1-65535); leave it out for no debugger",
            );
        }
        if let Some(name) = &self.cluster.server
            && let Err(e) = oxbus_ipc::bus::check_name("server", name)
        {
            return bad("cluster.server", name, &e.to_string());
        }
        if let Some(t) = &self.admin.metrics_token {
            // Never the value itself in the message: it is a secret.
            let shown = format!("<{} characters>", t.0.chars().count());
            if t.0.chars().count() < MetricsToken::MIN_LEN {
                return bad(
                    "admin.metrics_token",
                    &shown,
                    &format!(
                        "must be at least {} characters (leave it out for no token)",
                        MetricsToken::MIN_LEN
                    ),
                );
            }
            if !t.0.chars().all(|c| c.is_ascii_graphic()) {
                return bad(
                    "admin.metrics_token",
                    &shown,
                    "must be printable ASCII without spaces (it is sent in an Authorization header)",
                );
            }
        }
        if let Err(e) = oxbus_ipc::bus::check_name("cluster", &self.cluster.name) {
            return bad("cluster.name", &self.cluster.name, &e.to_string());
        }
        if self.cluster.sync_interval_ms == 0 {
            return bad("cluster.sync_interval_ms", &0, "must be at least 1 ms");
        }
        if self.cluster_secret_file().is_some()
            && self.cluster.bus_address.is_none()
            && self.cluster.bus_listen.ip().is_unspecified()
        {
            return bad(
                "cluster.bus_address",
                &"(unset)",
                "bus_listen is a wildcard address: set bus_address to the address other servers dial",
            );
        }
        if let Some(w) = self.server.workers {
            if w == 0 {
                return bad("server.workers", &w, "at least 1 worker is needed");
            }
            if w > MAX_WORKERS {
                return bad(
                    "server.workers",
                    &w,
                    "Oxbus runs at most 8 Python workers per server; for more capacity add servers (up to 3 per cluster) or clusters",
                );
            }
        }
        if self.server.threads == 0 || self.server.threads > 1024 {
            return bad("server.threads", &self.server.threads, "must be 1..=1024");
        }
        if self.server.io_threads.is_some_and(|n| n == 0 || n > 256) {
            return bad(
                "server.io_threads",
                &self.server.io_threads.unwrap_or(0),
                "must be 1..=256",
            );
        }
        if self.workers.max_inflight == 0 {
            return bad("workers.max_inflight", &0, "must be at least 1");
        }
        if self.workers.max_rss_mb != 0 && self.workers.max_rss_mb < MIN_MAX_RSS_MB {
            return bad(
                "workers.max_rss_mb",
                &self.workers.max_rss_mb,
                "must be 0 (no ceiling) or at least 64: below that a worker is recycled as soon as it starts",
            );
        }
        if !(100..=600_000).contains(&self.deploy.check_timeout_ms) {
            return bad(
                "deploy.check_timeout_ms",
                &self.deploy.check_timeout_ms,
                "must be 100..=600000 (0.1 s to 10 min)",
            );
        }
        if !(1..=36_500).contains(&self.audit.retention_days) {
            return bad(
                "audit.retention_days",
                &self.audit.retention_days,
                "must be 1..=36500 (a day to a hundred years)",
            );
        }
        if self.workers.heartbeat_ms < 100 {
            return bad(
                "workers.heartbeat_ms",
                &self.workers.heartbeat_ms,
                "must be at least 100",
            );
        }
        if self.http.request_timeout_ms == 0 {
            return bad("http.request_timeout_ms", &0, "must be above 0");
        }
        if self.http.keepalive_timeout_ms == 0 || self.http.header_read_timeout_ms == 0 {
            return bad(
                "http.keepalive_timeout_ms / http.header_read_timeout_ms",
                &0,
                "must be above 0",
            );
        }
        if self.http.max_body_bytes > oxbus_ipc::MAX_PAYLOAD - 64 * 1024 {
            return bad(
                "http.max_body_bytes",
                &self.http.max_body_bytes,
                "must stay below the 64 MiB IPC frame maximum",
            );
        }
        if self.http.max_header_bytes < 1024 {
            return bad(
                "http.max_header_bytes",
                &self.http.max_header_bytes,
                "must be at least 1024",
            );
        }
        if let Some(dir) = self.pickup_dir()
            && dir == self.services_dir()
        {
            return bad(
                "pickup.dir",
                &dir.display(),
                "must not be the services directory: files there are loaded at start, files in the pickup directory are deployed",
            );
        }
        crate::model::channel::routes(&self.channels)?;
        Ok(())
    }

    /// The worker count, with the default applied: one under the debugger, so that every
    /// call reaches the worker an IDE is attached to.
    pub fn worker_count(&self) -> u32 {
        if self.debug_port().is_some() {
            return 1;
        }
        self.server.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .clamp(1, MAX_WORKERS)
        })
    }

    /// The store URL with a relative SQLite path resolved against the settings file.
    pub fn store_url(&self) -> String {
        let url = &self.store.url;
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            let p = Path::new(path);
            if p.is_relative() {
                return format!("sqlite:{}", self.base_dir.join(p).display());
            }
        }
        url.clone()
    }

    /// The cluster secret file, absolute, if the bus is configured.
    pub fn cluster_secret_file(&self) -> Option<PathBuf> {
        self.cluster
            .secret_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| self.base_dir.join(p))
    }

    /// The config snapshot file, absolute.
    pub fn snapshot_file(&self) -> PathBuf {
        self.base_dir.join(&self.store.snapshot_file)
    }

    /// The secret key file, absolute.
    pub fn secret_key_file(&self) -> PathBuf {
        self.base_dir.join(&self.store.key_file)
    }

    /// The admin token file, absolute.
    pub fn admin_token_file(&self) -> PathBuf {
        self.base_dir.join(&self.admin.token_file)
    }

    /// Threads of the I/O runtime, with the default applied.
    pub fn io_threads(&self) -> usize {
        self.server.io_threads.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            (cpus / 4).max(1)
        })
    }

    /// The services directory, absolute.
    pub fn services_dir(&self) -> PathBuf {
        self.base_dir.join(&self.server.services_dir)
    }

    /// The pickup directory, absolute; None when there is none.
    pub fn pickup_dir(&self) -> Option<PathBuf> {
        self.pickup
            .dir
            .as_ref()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| self.base_dir.join(d))
    }

    /// The debugger's port on 127.0.0.1 when the worker runs under debugpy (`[debug]`).
    pub fn debug_port(&self) -> Option<u16> {
        self.debug.port
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http.request_timeout_ms)
    }
}

/// Applies `OXBUS_<SECTION>_<KEY>=value`: the value is read as a TOML value when it parses as
/// one (numbers, booleans, arrays), else as a string.
fn apply_env(doc: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<()> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("OXBUS_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .map(|k| (*s, k.to_owned()))
        }) else {
            continue;
        };
        if key.is_empty() {
            return Err(ConfigError::Env {
                var,
                message: "names no setting".into(),
            });
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let table = doc
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let Some(table) = table.as_table_mut() else {
            return Err(ConfigError::Env {
                var,
                message: format!("[{section}] is not a table in the file"),
            });
        };
        table.insert(key, parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
