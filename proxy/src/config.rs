//! `oxbus proxy` configuration: one TOML file, every key with a default except the listener.
//!
//! ```toml
//! [proxy]
//! listen = "0.0.0.0:8080"
//! stats_listen = "127.0.0.1:9180"     # JSON at /stats, Prometheus text at /metrics
//! balance = "round_robin"             # or "least_connections"
//! state_dir = "/run/oxbus-proxy"      # pid file and graceful-upgrade socket
//!
//! [upstreams]
//! servers = ["10.0.0.1:17010", "10.0.0.2:17010"]   # a static list, or:
//! # store = "postgres://oxbus@db/oxbus"            # the cluster's servers, from its store
//!
//! [health]
//! path = "/readyz"
//! interval_ms = 1000
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a proxy configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// How the next upstream is chosen among the healthy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConnections => "least_connections",
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub proxy: ProxySection,
    #[serde(default)]
    pub upstreams: UpstreamsSection,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Where clients connect (plain HTTP).
    pub listen: String,
    /// The stats endpoint (`/stats` JSON, `/metrics` Prometheus); empty = none.
    pub stats_listen: String,
    pub balance: Balance,
    /// Where the pid file and the graceful-upgrade socket live.
    pub state_dir: PathBuf,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Connecting to a server may take this long before another server is tried.
    pub connect_timeout_ms: u64,
    /// A server may take this long between reads of its answer (keep it above the servers'
    /// own request timeout, so they answer 504 first).
    pub upstream_read_timeout_ms: u64,
    /// A client must send a whole request head within this time (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// A request with `Expect: 100-continue` waits this long for the server's "100
    /// Continue"; then the proxy sends the client its own and the body goes to the server
    /// anyway (RFC 9110 §10.1.1: a server need not send 100).
    pub expect_continue_timeout_ms: u64,
    /// Idle keep-alive client connections are closed after this long.
    pub keepalive_timeout_ms: u64,
    /// The tunnel of an upgraded connection (a WebSocket) is closed after this long with no
    /// byte moving either way; it has no other timeout.
    pub tunnel_idle_timeout_ms: u64,
    /// Request heads larger than this are refused with 431.
    pub max_header_bytes: usize,
    /// Attempts on other servers after a failed connection (never after a non-idempotent
    /// request reached a server).
    pub retries: usize,
    /// After a stop or an upgrade, in-flight requests of the old process get this long.
    pub grace_period_s: u64,
    /// A server that refused a connection is skipped for this long (passive detection),
    /// unless an active check finds it ready again sooner.
    pub passive_down_ms: u64,
    /// Pass a client's W3C trace context (`traceparent`, `tracestate`) on to the servers.
    /// Off: they are dropped, since servers that trust this proxy would otherwise let any
    /// client choose the trace its request joins. On only when what sends to this proxy is
    /// itself a trusted tracer (a gateway that sets or checks the trace context).
    pub pass_trace_context: bool,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            listen: String::new(),
            stats_listen: String::new(),
            balance: Balance::RoundRobin,
            state_dir: PathBuf::from("/run/oxbus-proxy"),
            threads: 1,
            connect_timeout_ms: 1_000,
            upstream_read_timeout_ms: 60_000,
            header_read_timeout_ms: 10_000,
            expect_continue_timeout_ms: 1_000,
            keepalive_timeout_ms: 75_000,
            tunnel_idle_timeout_ms: 300_000,
            max_header_bytes: 16 * 1024,
            retries: 2,
            grace_period_s: 10,
            passive_down_ms: 5_000,
            pass_trace_context: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamsSection {
    /// A static list of servers (`host:port`).
    pub servers: Vec<String>,
    /// A config-store URL: upstreams are the cluster's live servers, refreshed.
    pub store: Option<String>,
    /// How often the store is read for servers joining or leaving. A read that takes longer
    /// (at least 1 s) is abandoned and the last list kept.
    pub refresh_interval_ms: Option<u64>,
    /// How long a starting proxy waits for its first server list from the store before it
    /// takes traffic: an upgrading one gives up (the running proxy keeps serving), a fresh
    /// one starts with no server, saying so.
    pub first_list_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive passes that make a down server up.
    pub rise: usize,
    /// Consecutive failures that make an up server down.
    pub fall: usize,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            path: "/readyz".into(),
            interval_ms: 1_000,
            timeout_ms: 1_000,
            rise: 1,
            fall: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Where TLS clients connect.
    pub listen: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ProxyConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: ProxyConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // Relative paths are relative to the file's directory, not to where it is run from.
        if let Some(base) = path.parent() {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            fix(&mut cfg.proxy.state_dir);
            if let Some(t) = cfg.tls.as_mut() {
                fix(&mut t.cert_file);
                fix(&mut t.key_file);
            }
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let addr = |key, v: &str| {
            v.parse::<SocketAddr>()
                .map(|_| ())
                .map_err(|e| bad(key, format!("{v:?} is not an ip:port address ({e})")))
        };
        if self.proxy.listen.is_empty() {
            return Err(bad("proxy.listen", "is required (ip:port)".into()));
        }
        addr("proxy.listen", &self.proxy.listen)?;
        if !self.proxy.stats_listen.is_empty() {
            addr("proxy.stats_listen", &self.proxy.stats_listen)?;
        }
        if let Some(tls) = &self.tls {
            addr("tls.listen", &tls.listen)?;
            for (key, f) in [
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
            ] {
                if !f.is_file() {
                    return Err(bad(key, format!("{} is not a readable file", f.display())));
                }
            }
        }
        let u = &self.upstreams;
        match (u.servers.is_empty(), &u.store) {
            (true, None) => {
                return Err(bad(
                    "upstreams",
                    "name the servers (`servers = [\"host:port\", …]`) or a config store \
                     (`store = \"postgres://…\"`)"
                        .into(),
                ));
            }
            (false, Some(_)) => {
                return Err(bad(
                    "upstreams",
                    "`servers` and `store` are exclusive: a static list or the store's".into(),
                ));
            }
            _ => {}
        }
        if u.servers.len() > crate::MAX_UPSTREAMS {
            return Err(bad(
                "upstreams.servers",
                format!(
                    "{} servers named; a cluster has at most {} servers",
                    u.servers.len(),
                    crate::MAX_UPSTREAMS
                ),
            ));
        }
        for s in &u.servers {
            addr("upstreams.servers", s)?;
        }
        if !self.health.path.starts_with('/') {
            return Err(bad("health.path", "must start with /".into()));
        }
        let positive = [
            ("proxy.threads", self.proxy.threads as u64),
            ("proxy.connect_timeout_ms", self.proxy.connect_timeout_ms),
            (
                "proxy.upstream_read_timeout_ms",
                self.proxy.upstream_read_timeout_ms,
            ),
            (
                "proxy.header_read_timeout_ms",
                self.proxy.header_read_timeout_ms,
            ),
            (
                "proxy.expect_continue_timeout_ms",
                self.proxy.expect_continue_timeout_ms,
            ),
            (
                "proxy.keepalive_timeout_ms",
                self.proxy.keepalive_timeout_ms,
            ),
            (
                "proxy.tunnel_idle_timeout_ms",
                self.proxy.tunnel_idle_timeout_ms,
            ),
            ("proxy.max_header_bytes", self.proxy.max_header_bytes as u64),
            ("health.interval_ms", self.health.interval_ms),
            ("health.timeout_ms", self.health.timeout_ms),
            ("health.rise", self.health.rise as u64),
            ("health.fall", self.health.fall as u64),
            (
                "upstreams.refresh_interval_ms",
                self.upstreams.refresh_interval_ms.unwrap_or(1),
            ),
            (
                "upstreams.first_list_timeout_ms",
                self.upstreams.first_list_timeout_ms.unwrap_or(1),
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(bad(key, "must be greater than 0".into()));
            }
        }
        if self.proxy.max_header_bytes > 512 * 1024 {
            return Err(bad(
                "proxy.max_header_bytes",
                "at most 524288 (the HTTP parser's own bound is 1 MiB)".into(),
            ));
        }
        Ok(())
    }

    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.upstreams.refresh_interval_ms.unwrap_or(2_000))
    }

    /// How long one read of the server list may take before it is abandoned: its interval,
    /// but at least 1 s (a store under load is not a store that is down).
    pub fn refresh_timeout(&self) -> Duration {
        self.refresh_interval().max(Duration::from_secs(1))
    }

    pub fn first_list_timeout(&self) -> Duration {
        Duration::from_millis(self.upstreams.first_list_timeout_ms.unwrap_or(10_000))
    }

    pub fn pid_file(&self) -> PathBuf {
        self.proxy.state_dir.join("proxy.pid")
    }

    pub fn upgrade_socket(&self) -> PathBuf {
        self.proxy.state_dir.join("upgrade.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::parse(t, Path::new("proxy.toml"))
    }

    #[test]
    fn minimal_static_config_gets_defaults() {
        let c = parse(
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[upstreams]\nservers = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert_eq!(c.proxy.balance, Balance::RoundRobin);
        assert_eq!(c.health.path, "/readyz");
        assert_eq!(c.proxy.keepalive_timeout_ms, 75_000);
        assert_eq!(c.proxy.tunnel_idle_timeout_ms, 300_000);
        assert!(c.tls.is_none());
        assert!(
            !c.proxy.pass_trace_context,
            "a client's trace context is dropped"
        );
        let c = parse(
            "[proxy]\nlisten = \"127.0.0.1:8080\"\npass_trace_context = true\n[upstreams]\nservers = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert!(c.proxy.pass_trace_context);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[proxy]\n", "proxy.listen"),
            ("[proxy]\nlisten = \"nope\"\n", "proxy.listen"),
            ("[proxy]\nlisten = \"127.0.0.1:1\"\n", "upstreams"),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nservers=[\"a\"]\n",
                "upstreams.servers",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nservers=[\"127.0.0.1:2\"]\nstore=\"sqlite://x\"\n",
                "upstreams",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nservers=[\"127.0.0.1:2\",\"127.0.0.1:3\",\"127.0.0.1:4\",\"127.0.0.1:5\"]\n",
                "at most 3 servers",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nbalance=\"random\"\n[upstreams]\nservers=[\"127.0.0.1:2\"]\n",
                "unknown variant",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nservers=[\"127.0.0.1:2\"]\n[health]\nfall=0\n",
                "health.fall",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nstore=\"postgres://x\"\nrefresh_interval_ms=0\n",
                "upstreams.refresh_interval_ms: must be greater than 0",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nstore=\"postgres://x\"\nfirst_list_timeout_ms=0\n",
                "upstreams.first_list_timeout_ms: must be greater than 0",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nservers=[\"127.0.0.1:2\"]\n[tls]\nlisten=\"127.0.0.1:3\"\ncert_file=\"/nonexistent\"\nkey_file=\"/nonexistent\"\n",
                "tls.cert_file",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
