//! The CLI's client of the admin API: where the server is, the token, and one request.
//!
//! Commands that talk to a server take `--env DIR` (the address and token of the
//! environment `oxbus quickstart` made) or `--server URL --token TOKEN` (also
//! `OXBUS_SERVER`, `OXBUS_TOKEN`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::Path;

/// Where and how to reach an admin API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`
    pub authority: String,
    pub token: String,
}

impl Target {
    /// From an environment directory (its server.toml and token file).
    pub fn from_env_dir(dir: &Path) -> Result<Target, String> {
        let settings = crate::config::Settings::load(&dir.join("server.toml"), std::env::vars())
            .map_err(|e| e.to_string())?;
        let file = settings.admin_token_file();
        let token = std::fs::read_to_string(&file)
            .map_err(|e| {
                format!(
                    "cannot read the admin token {}: {e} (has the server run once?)",
                    file.display()
                )
            })?
            .trim()
            .to_owned();
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
    pub fn from_url(url: &str, token: &str) -> Result<Target, String> {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_owned();
        if url.starts_with("https://") || authority.is_empty() || authority.contains('/') {
            return Err(format!("--server {url:?}: expected http://host:port"));
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
    ) -> Result<(u16, Bytes), String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

/// `oxbus deploy --watch DIR`: deploys what DIR holds, then every `*.py` saved there,
/// through the admin API (unchanged modules skipped), one line of output per deploy, until
/// Ctrl-C or SIGTERM (`Ok`). The watching and debouncing are the pickup directory's
/// (`crate::deploy::watch`). `Err` when the watch cannot start or breaks, or the server refuses the
/// token.
pub async fn deploy_watch(target: Target, dir: &Path, json: bool) -> Result<(), String> {
    let watcher = crate::deploy::watch::DirWatcher::start(dir)?;
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let mut sink = WatchOutput {
        target,
        json,
        by: format!("{who} (deploy --watch)"),
    };
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    watcher
        .run(&mut sink, crate::deploy::watch::Timing::default(), stop)
        .await
}

/// `deploy --watch`'s output: a line of text, or one JSON object, per event on stdout.
struct WatchOutput {
    target: Target,
    json: bool,
    by: String,
}

impl WatchOutput {
    fn emit(&self, doc: serde_json::Value, text: String) {
        if self.json {
            println!("{doc}");
        } else {
            println!("{text}");
        }
    }
}

impl crate::deploy::watch::Sink for WatchOutput {
    async fn deploy(&mut self, modules: Vec<(String, String)>) -> crate::deploy::watch::Outcome {
        use crate::deploy::watch::Outcome;
        use serde_json::{Value, json};
        let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
        let body = json!({
            "modules": modules.iter().map(|(name, source)| json!({"name": name, "source": source})).collect::<Vec<_>>(),
            "deployed_by": self.by,
            "skip_unchanged": true,
        });
        let (status, body) = match self
            .target
            .request("POST", "/v1/modules", body.to_string().into_bytes())
            .await
        {
            Ok(x) => x,
            Err(e) => {
                self.emit(
                    json!({"event": "error", "modules": names, "error": e}),
                    format!("error: {}: {e}", names.join(", ")),
                );
                return Outcome::Unavailable;
            }
        };
        let doc: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(&body).trim()}));
        match status {
            200 | 500 => {
                let deployed = doc["modules"].as_array().cloned().unwrap_or_default();
                let unchanged = doc["unchanged"].clone();
                if deployed.is_empty() {
                    let list: Vec<&str> = unchanged
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    self.emit(
                        json!({"event": "unchanged", "modules": unchanged}),
                        format!("unchanged: {}", list.join(", ")),
                    );
                    return Outcome::Done;
                }
                let workers = doc["workers"].as_array().cloned().unwrap_or_default();
                let ok = status == 200;
                let ms = doc["total_ms"].as_f64().unwrap_or(0.0);
                let list = deployed
                    .iter()
                    .map(|m| format!("{} v{}", m["name"].as_str().unwrap_or(""), m["version"]))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut text = format!(
                    "deployed {list} · config version {} · {} worker(s) · {ms:.1} ms",
                    doc["config_version"],
                    workers.len()
                );
                for w in workers.iter().filter(|w| w["ok"] != true) {
                    text.push_str(&format!(
                        "\n  worker {} (pid {}) did not switch: {}",
                        w["worker_id"],
                        w["pid"],
                        w["error"].as_str().unwrap_or("")
                    ));
                }
                self.emit(
                    json!({
                        "event": "deployed", "ok": ok, "modules": deployed,
                        "unchanged": unchanged, "config_version": doc["config_version"],
                        "workers": workers, "ms": ms,
                    }),
                    text,
                );
                Outcome::Done
            }
            400 | 422 => {
                let (error, module, traceback) = crate::deploy::watch::refusal(&doc);
                let culprit = if module.is_empty() {
                    String::new()
                } else {
                    format!(" in {module}")
                };
                let mut text = format!("refused: {error}{culprit} (nothing changed)");
                if !traceback.is_empty() {
                    text.push('\n');
                    text.push_str(traceback.trim_end());
                }
                self.emit(
                    json!({
                        "event": "refused", "modules": names, "module": module,
                        "error": error, "traceback": traceback,
                    }),
                    text,
                );
                Outcome::Refused
            }
            401 | 403 | 404 => {
                let (error, _, _) = crate::deploy::watch::refusal(&doc);
                Outcome::Fatal(format!("{error} (HTTP {status})"))
            }
            _ => {
                let (error, _, _) = crate::deploy::watch::refusal(&doc);
                self.emit(
                    json!({"event": "error", "modules": names, "error": error, "status": status}),
                    format!("error: {}: {error} (HTTP {status})", names.join(", ")),
                );
                Outcome::Unavailable
            }
        }
    }

    fn note(&mut self, note: crate::deploy::watch::Note<'_>) {
        use crate::deploy::watch::Note;
        use serde_json::json;
        match note {
            Note::Watching { dir } => eprintln!(
                "watching {}: every *.py saved there is deployed (Ctrl-C stops)",
                dir.display()
            ),
            Note::Skipped { file, reason } => self.emit(
                json!({"event": "skipped", "file": file, "reason": reason}),
                format!("skipped: {reason}"),
            ),
            Note::Deleted { file, module } => self.emit(
                json!({"event": "deleted", "file": file, "module": module}),
                format!(
                    "deleted: {} (the module {module} stays deployed; undeploy is explicit)",
                    file.display()
                ),
            ),
            Note::Retrying { modules, after } => self.emit(
                json!({"event": "retrying", "modules": modules, "after_s": after.as_secs_f64()}),
                format!(
                    "retrying {} in {:.0} s",
                    modules.join(", "),
                    after.as_secs_f64()
                ),
            ),
            Note::WatchError { error } => self.emit(
                json!({"event": "watch_error", "error": error}),
                format!("watch error: {error}"),
            ),
        }
    }
}
