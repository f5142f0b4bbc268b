//! `oxbus deploy --watch DIR`: deploy on save through the admin API, one line (or one JSON
//! object) per deploy. The watching and debouncing are the pickup directory's
//! (`crate::deploy::watch`); this file only sends and prints.

use super::CliError;
use super::client::Target;
use std::path::Path;

/// `oxbus deploy --watch DIR`: deploys what DIR holds, then every `*.py` saved there,
/// through the admin API (unchanged modules skipped), one line of output per deploy, until
/// Ctrl-C or SIGTERM (`Ok`). The watching and debouncing are the pickup directory's
/// (`crate::deploy::watch`). `Err` when the watch cannot start or breaks, or the server refuses the
/// token.
pub async fn deploy_watch(target: Target, dir: &Path, json: bool) -> Result<(), CliError> {
    let watcher = crate::deploy::watch::DirWatcher::start(dir)?;
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let mut sink = WatchOutput {
        target,
        json,
        by: format!("{who} (deploy --watch)"),
        dir: watcher.dir().to_owned(),
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
        .await?;
    Ok(())
}

/// `deploy --watch`'s output: a line of text, or one JSON object, per event on stdout.
struct WatchOutput {
    target: Target,
    json: bool,
    by: String,
    /// The watched directory (canonical): each module's origin is its file there.
    dir: std::path::PathBuf,
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
            "modules": modules.iter().map(|(name, source)| json!({
                "name": name, "source": source,
                "origin": crate::deploy::watch::DirWatcher::origin(&self.dir, name),
            })).collect::<Vec<_>>(),
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
                let e = e.to_string();
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
                    .map(|m| {
                        let services: Vec<&str> = m["services"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        format!(
                            "{} v{} [{}]",
                            m["name"].as_str().unwrap_or(""),
                            m["version"],
                            services.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut text = format!(
                    "deployed {list} · config version {} · {} · {ms:.1} ms",
                    doc["config_version"],
                    super::format::count(workers.len() as u64, "worker", "workers")
                );
                for w in doc["warnings"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "\n  warning: {}",
                        w["message"].as_str().unwrap_or("")
                    ));
                }
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
                        "workers": workers, "ms": ms, "warnings": doc["warnings"],
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
