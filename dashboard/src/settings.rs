//! `dashboard.toml`: where the dashboard listens, which servers' admin APIs it shows, where
//! its users are kept and how long a session lasts. Every key has a default but `servers`;
//! an unknown key is refused (a typo must not silently fall back to a default).
//!
//! ```toml
//! [dashboard]
//! listen = "127.0.0.1:8183"
//! servers = ["http://127.0.0.1:11224"]   # the servers' admin API addresses
//! users_file = "dashboard-users.json"     # relative to this file's directory
//! session_idle_s = 1800
//! session_max_s = 43200
//! secure_cookies = false                  # true when a TLS proxy is in front
//! metrics_token_file = ""                 # the servers' admin.metrics_token, if they set one
//! tls_cert_file = ""                      # HTTPS: a PEM certificate chain and its key
//! tls_key_file = ""                       #   (cookies are then Secure, as with secure_cookies)
//! trusted_proxies = []                    # proxies whose X-Forwarded-For names the client
//! hsts_max_age_s = 31536000               # HSTS under HTTPS; 0: none (it covers every port
//!                                         # of the host name, plain-HTTP channels too)
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most servers a cluster has (the product's limit).
pub const MAX_SERVERS: usize = 3;

#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Admin API authorities (`host:port`), in the order the file gives them.
    pub servers: Vec<String>,
    pub users_file: PathBuf,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after its sign-in, however busy.
    pub session_max: Duration,
    /// Cookies carry `Secure` (the dashboard is reached over HTTPS through a proxy).
    pub secure_cookies: bool,
    /// The bearer token the servers' `/metrics` needs (`admin.metrics_token`), if any.
    pub metrics_token: Option<String>,
    /// HTTPS: the certificate chain and key files (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `Strict-Transport-Security: max-age=` under HTTPS; 0 sends none.
    pub hsts_max_age_s: u64,
    /// Proxies in front of the dashboard whose `X-Forwarded-For` names the client (for the
    /// sign-in limit and the log); from anyone else it is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the metrics token.
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("servers", &self.servers)
            .field("users_file", &self.users_file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    dashboard: Section,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default = "default_listen")]
    listen: String,
    servers: Vec<String>,
    #[serde(default = "default_users_file")]
    users_file: PathBuf,
    #[serde(default = "default_idle")]
    session_idle_s: u64,
    #[serde(default = "default_max")]
    session_max_s: u64,
    #[serde(default)]
    secure_cookies: bool,
    #[serde(default)]
    metrics_token_file: Option<PathBuf>,
    #[serde(default)]
    tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    tls_key_file: Option<PathBuf>,
    #[serde(default = "default_hsts")]
    hsts_max_age_s: u64,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

fn default_hsts() -> u64 {
    365 * 86_400
}

fn default_listen() -> String {
    "127.0.0.1:8183".into()
}
fn default_users_file() -> PathBuf {
    "dashboard-users.json".into()
}
fn default_idle() -> u64 {
    1800
}
fn default_max() -> u64 {
    12 * 3600
}

impl Settings {
    /// Reads and checks `path`; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Settings::parse(&text, base).map_err(|message| SettingsError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// The settings `text` gives, relative paths resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Settings, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let d = f.dashboard;
        let listen: SocketAddr = d.listen.parse().map_err(|_| {
            format!(
                "dashboard.listen {:?} is not an address (expected host:port, e.g. 127.0.0.1:8183)",
                d.listen
            )
        })?;
        if d.servers.is_empty() {
            return Err(
                "dashboard.servers is empty: name at least one server's admin API \
                        address (e.g. [\"http://127.0.0.1:11224\"])"
                    .into(),
            );
        }
        if d.servers.len() > MAX_SERVERS {
            return Err(format!(
                "dashboard.servers names {} servers; a cluster has at most {MAX_SERVERS}",
                d.servers.len()
            ));
        }
        let servers = d
            .servers
            .iter()
            .map(|s| authority(s))
            .collect::<Result<Vec<_>, _>>()?;
        if d.session_idle_s == 0 || d.session_max_s == 0 {
            return Err("dashboard.session_idle_s and session_max_s must be above 0".into());
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let metrics_token = match d.metrics_token_file.filter(|p| !p.as_os_str().is_empty()) {
            None => None,
            Some(p) => {
                let p = resolve(&p);
                let t = std::fs::read_to_string(&p)
                    .map_err(|e| format!("cannot read metrics_token_file {}: {e}", p.display()))?;
                Some(t.trim().to_owned())
            }
        };
        let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let tls = match (nonempty(d.tls_cert_file), nonempty(d.tls_key_file)) {
            (Some(c), Some(k)) => Some((resolve(&c), resolve(&k))),
            (None, None) => None,
            _ => {
                return Err(
                    "dashboard.tls_cert_file and tls_key_file go together: name both \
                            (HTTPS) or neither"
                        .into(),
                );
            }
        };
        let trusted_proxies = d
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!(
                            "dashboard.trusted_proxies: {p:?} is not an address or a network \
                             (e.g. 127.0.0.1 or 10.0.0.0/8)"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            trusted_proxies,
            listen,
            servers,
            users_file: resolve(&d.users_file),
            session_idle: Duration::from_secs(d.session_idle_s),
            session_max: Duration::from_secs(d.session_max_s),
            // Under TLS cookies are Secure whatever the file says.
            secure_cookies: d.secure_cookies || tls.is_some(),
            metrics_token,
            tls,
            hsts_max_age_s: d.hsts_max_age_s,
        })
    }
}

/// `host:port` of an admin API address written `http://host:port` or `host:port`.
pub fn authority(url: &str) -> Result<String, String> {
    if url.starts_with("https://") {
        return Err(format!(
            "server {url:?}: the admin API is plain HTTP on a private address (https is not supported)"
        ));
    }
    let a = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    if a.is_empty() || a.contains('/') || !a.contains(':') {
        return Err(format!(
            "server {url:?} is not an admin API address (expected http://host:port)"
        ));
    }
    Ok(a.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let s = Settings::parse(
            "[dashboard]\nservers = [\"http://127.0.0.1:9\"]\n",
            Path::new("/etc/oxbus"),
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8183");
        assert_eq!(s.servers, vec!["127.0.0.1:9".to_owned()]);
        assert_eq!(s.users_file, Path::new("/etc/oxbus/dashboard-users.json"));
        assert!(!s.secure_cookies);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let base = Path::new("/");
        let e = Settings::parse("[dashboard]\nservers = []\n", base).unwrap_err();
        assert!(e.contains("at least one server"), "{e}");
        let e = Settings::parse(
            "[dashboard]\nservers = [\"a:1\", \"b:1\", \"c:1\", \"d:1\"]\n",
            base,
        )
        .unwrap_err();
        assert!(e.contains("at most 3"), "{e}");
        let e = Settings::parse(
            "[dashboard]\nservers = [\"a:1\"]\nlisten_on = \"x\"\n",
            base,
        )
        .unwrap_err();
        assert!(e.contains("listen_on"), "{e}");
        let e = Settings::parse("[dashboard]\nservers = [\"https://a:1\"]\n", base).unwrap_err();
        assert!(e.contains("https"), "{e}");
        let e = Settings::parse(
            "[dashboard]\nservers = [\"a:1\"]\ntls_cert_file = \"c.pem\"\n",
            base,
        )
        .unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let s = Settings::parse(
            "[dashboard]\nservers = [\"a:1\"]\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n",
            base,
        )
        .unwrap();
        assert!(s.secure_cookies, "cookies are Secure under TLS");
        let e = Settings::parse(
            "[dashboard]\nservers = [\"a:1\"]\ntrusted_proxies = [\"nope\"]\n",
            base,
        )
        .unwrap_err();
        assert!(e.contains("trusted_proxies"), "{e}");
    }
}
