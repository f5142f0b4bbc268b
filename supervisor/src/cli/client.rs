//! The CLI's client of the admin API: where the server is, the token, one request, and the
//! two ways the subcommands read an answer. It talks to a server only over HTTP.
//!
//! Commands that talk to a server take `--env DIR` (the address and token of the
//! environment `oxbus quickstart` made) or `--server URL --token TOKEN` (also
//! `OXBUS_URL`, `OXBUS_TOKEN`; `OXBUS_SERVER` is `OXBUS_URL`'s old name, read with a
//! warning for one release).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::Path;

use super::CliError;
use super::args::ServerArgs;

/// The server `--env` or `--server`/`--token` name.
pub fn target(a: &ServerArgs) -> Result<Target, CliError> {
    let (server, warning) = server_url(a, url_vars());
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    match (&a.env, server, &a.token) {
        (Some(dir), _, _) => Target::from_env_dir(dir),
        (None, Some(url), Some(token)) => Target::from_url(&url, token),
        _ => Err(CliError::NoServer),
    }
}

/// The admin API URL `target` uses when `--env` does not name the server (no warning).
pub fn server_url_given(a: &ServerArgs) -> Option<String> {
    server_url(a, url_vars()).0
}

/// The admin API URL variable. Read here, not by clap (`env = …` on `--server`): clap would
/// count it as `--server` given, and refuse it beside `--env`.
const URL_VAR: &str = "OXBUS_URL";
/// `OXBUS_URL`'s old name: it read like an `OXBUS_SERVER_<KEY>` settings override.
const LEGACY_URL_VAR: &str = "OXBUS_SERVER";

/// The values of `OXBUS_URL` and of its old name `OXBUS_SERVER`, unset or empty as `None`.
fn url_vars() -> UrlVars {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    UrlVars {
        url: var(URL_VAR),
        legacy: var(LEGACY_URL_VAR),
    }
}

/// What the environment says about the admin API URL ([`url_vars`]).
#[derive(Clone, Default)]
struct UrlVars {
    /// `OXBUS_URL`
    url: Option<String>,
    /// `OXBUS_SERVER`, deprecated
    legacy: Option<String>,
}

/// The admin API URL: `--server`; nothing when `--env` names the server; else `OXBUS_URL`;
/// else the value of the deprecated `OXBUS_SERVER`, with a warning to print.
fn server_url(a: &ServerArgs, vars: UrlVars) -> (Option<String>, Option<String>) {
    if a.server.is_some() || a.env.is_some() {
        return (a.server.clone(), None);
    }
    if vars.url.is_some() {
        return (vars.url, None);
    }
    match vars.legacy {
        Some(url) => (
            Some(url),
            Some(format!(
                "oxbus: warning: {LEGACY_URL_VAR} is deprecated and will stop working in the next \
                 release: set OXBUS_URL instead (OXBUS_SERVER_<KEY> variables are server settings)"
            )),
        ),
        None => (None, None),
    }
}

/// Where and how to reach an admin API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`
    pub authority: String,
    pub token: String,
}

impl Target {
    /// From an environment directory (its server.toml and token file).
    pub fn from_env_dir(dir: &Path) -> Result<Target, CliError> {
        let settings = crate::config::Settings::load(&dir.join("server.toml"), std::env::vars())?;
        let file = settings.admin_token_file();
        let token = match std::fs::read_to_string(&file) {
            Ok(t) => t.trim().to_owned(),
            Err(source) => return Err(CliError::AdminToken { path: file, source }),
        };
        let mut addr = settings.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Target {
            authority: addr.to_string(),
            token,
        })
    }

    /// From `--server URL` (`http://host:port` or `host:port`) and a token.
    pub fn from_url(url: &str, token: &str) -> Result<Target, CliError> {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_owned();
        if url.starts_with("https://") || authority.is_empty() || authority.contains('/') {
            return Err(CliError::ServerUrl(url.to_owned()));
        }
        Ok(Target {
            authority,
            token: token.to_owned(),
        })
    }

    /// One request; returns the status and the body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), CliError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| CliError::Unreachable {
                authority: self.authority.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// One request whose answer is printed as the server sends it or read as JSON: an error
    /// status is an error, its `error` field (else its text) and the status; a `traceback`
    /// the answer carries goes to standard error first.
    pub async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Answer, CliError> {
        let (status, body) = self.request(method, path, body).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let doc: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if !(200..300).contains(&status) {
            let reason = doc
                .as_ref()
                .and_then(|d| d.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            if let Some(tb) = doc
                .as_ref()
                .and_then(|d| d.get("traceback"))
                .and_then(|t| t.as_str())
            {
                eprintln!("{tb}");
            }
            return Err(CliError::Refused { reason, status });
        }
        Ok(Answer { text, doc })
    }

    /// One request whose answer must be JSON (`cache`, `jobs`): an error status is an error,
    /// its `error` field (else the whole document) and the status.
    pub async fn call_json(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, CliError> {
        let (status, body) = self.request(method, path, body).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| CliError::NotJson {
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            })?;
        if !(200..300).contains(&status) {
            let reason = doc["error"]
                .as_str()
                .map_or_else(|| doc.to_string(), str::to_owned);
            return Err(CliError::Refused { reason, status });
        }
        Ok(doc)
    }
}

/// One [`Target::call`] to the server `to` names, on `rt` (the server is looked up after
/// the request is built, so a bad argument is reported first).
pub fn call(
    rt: &tokio::runtime::Runtime,
    to: &ServerArgs,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Answer, CliError> {
    let target = target(to)?;
    rt.block_on(target.call(method, path, body))
}

/// A successful answer: its text, and its document when it is JSON.
pub struct Answer {
    pub text: String,
    pub doc: Option<serde_json::Value>,
}

/// Percent-encodes a path segment (names may hold `/`).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::args::ServerArgs;

    fn args(env: Option<&str>, server: Option<&str>) -> ServerArgs {
        ServerArgs {
            env: env.map(Into::into),
            server: server.map(str::to_owned),
            token: Some("t".into()),
        }
    }

    /// The environment with `OXBUS_URL` and `OXBUS_SERVER` set as given.
    fn vars(url: Option<&str>, legacy: Option<&str>) -> super::UrlVars {
        super::UrlVars {
            url: url.map(str::to_owned),
            legacy: legacy.map(str::to_owned),
        }
    }

    #[test]
    fn the_old_oxbus_server_variable_still_works_with_a_warning() {
        let old = vars(None, Some("http://127.0.0.1:1"));
        let (url, warning) = super::server_url(&args(None, None), old.clone());
        assert_eq!(url.as_deref(), Some("http://127.0.0.1:1"));
        let w = warning.expect("a deprecation warning");
        assert!(
            w.contains("OXBUS_SERVER is deprecated") && w.contains("OXBUS_URL"),
            "{w}"
        );
        // --server and --env win, silently; so does OXBUS_URL.
        let (url, warning) = super::server_url(&args(None, Some("http://h:2")), old.clone());
        assert_eq!((url.as_deref(), warning), (Some("http://h:2"), None));
        let (url, warning) = super::server_url(&args(Some("env"), None), old);
        assert_eq!((url, warning), (None, None));
        let both = vars(Some("http://h:3"), Some("http://127.0.0.1:1"));
        let (url, warning) = super::server_url(&args(None, None), both);
        assert_eq!((url.as_deref(), warning), (Some("http://h:3"), None));
        // Unset: no server, no warning.
        let none = super::UrlVars::default();
        assert_eq!(super::server_url(&args(None, None), none), (None, None));
    }

    #[test]
    fn oxbus_url_comes_after_the_server_and_env_options() {
        let env = vars(Some("http://h:3"), None);
        let (url, _) = super::server_url(&args(None, None), env.clone());
        assert_eq!(url.as_deref(), Some("http://h:3"));
        let (url, _) = super::server_url(&args(None, Some("http://h:2")), env.clone());
        assert_eq!(url.as_deref(), Some("http://h:2"));
        // --env names the server: OXBUS_URL is not an error beside it, only unused.
        let (url, _) = super::server_url(&args(Some("env"), None), env);
        assert_eq!(url, None);
    }

    #[test]
    fn oxbus_url_in_the_environment_is_no_server_option_to_clap() {
        use clap::{CommandFactory, Parser};
        // clap reads no variable for --server: `OXBUS_URL=… oxbus services --env X` parses
        // (an `env = "OXBUS_URL"` would make it `--server`, which --env conflicts with).
        let cli = super::super::args::Cli::try_parse_from(["oxbus", "services", "--env", "x"])
            .unwrap_or_else(|e| panic!("{e}"));
        let super::super::args::Command::Services { to, .. } = cli.command else {
            panic!("not services")
        };
        assert!(to.server.is_none());
        let server = super::super::args::Cli::command()
            .find_subcommand("services")
            .and_then(|c| c.get_arguments().find(|a| a.get_id() == "server").cloned())
            .expect("--server");
        assert_eq!(server.get_env(), None);
    }

    #[test]
    fn percent_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(super::percent_encode("mq/token a"), "mq%2Ftoken%20a");
        assert_eq!(super::percent_encode("a.b-c_d~"), "a.b-c_d~");
    }
}
