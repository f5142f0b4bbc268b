//! The server's pickup directory (`[pickup] dir`): creating it, starting its watch at boot,
//! and the task that deploys through `crate::deploy` once the server is ready, reporting to
//! the log. The watching itself is [`super::dir`]'s.

use super::{DirWatcher, Note, Outcome, Sink, Timing, WatchError, acks_summary, refusal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Why the pickup directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum PickupError {
    /// Neither the directory nor its parent exists.
    #[error(
        "the pickup directory {} does not exist, nor does its parent {}: create it or fix [pickup] dir",
        dir.display(),
        parent.display()
    )]
    NoParent { dir: PathBuf, parent: PathBuf },
    /// The missing directory could not be created.
    #[error("cannot create the pickup directory {}: {source}", dir.display())]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The directory's watch did not start.
    #[error("pickup directory: {0}")]
    Watch(#[source] WatchError),
}

/// Records a pickup deploy in the audit log (who = `pickup`): one row per module it stored,
/// with the digests of the version it replaced (`before`: the active versions' name, version
/// and source hash, read before the deploy; None when they could not be read) and of the new
/// one.
async fn audit(
    cx: &crate::deploy::Ctx,
    before: Option<Vec<(String, i64, String)>>,
    r: &crate::deploy::Report,
) {
    let rows: Vec<crate::store::AuditRecord> = r
        .deployed
        .iter()
        .map(|m| {
            let previous = before
                .as_ref()
                .and_then(|b| b.iter().find(|(name, _, _)| *name == m.name));
            let mut detail = serde_json::json!({
                "version": m.version,
                "config_version": r.config_version,
                "unchanged": r.unchanged_names(),
            });
            match (previous, &before) {
                (Some((_, version, _)), _) => detail["previous_version"] = (*version).into(),
                (None, None) => {
                    detail["digests"] = "unavailable: the store could not be read".into()
                }
                (None, Some(_)) => {}
            }
            if !r.all_ok() {
                detail["all_workers_ok"] = false.into();
            }
            crate::store::AuditRecord {
                id: 0,
                at: 0,
                server: cx.node.name.clone(),
                who: "pickup".into(),
                action: "deploy".into(),
                kind: "module".into(),
                name: m.name.clone(),
                before: previous.map(|(name, version, hash)| {
                    crate::store::module_head_digest(name, *version, hash)
                }),
                after: Some(crate::store::module_digest(m)),
                cid: None,
                detail,
            }
        })
        .collect();
    if let Err(e) = cx.store.audit_insert(&rows).await {
        for m in &r.deployed {
            tracing::error!(
                error = %e, who = "pickup", action = "deploy", kind = "module", name = %m.name,
                version = m.version,
                "cannot write the audit log: the change stands, unrecorded"
            );
        }
    }
}

/// The server's pickup directory: results go to the log.
struct PickupLog {
    deploy: Arc<crate::deploy::Ctx>,
    /// The pickup directory (canonical): each module's origin is its file there.
    dir: PathBuf,
}

impl Sink for PickupLog {
    async fn deploy(&mut self, modules: Vec<(String, String)>) -> Outcome {
        use crate::deploy::DeployError;
        let names = modules
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        // The active versions before, for the audit log's digests (without their sources).
        let before = self.deploy.store.active_module_heads().await;
        let origins: Vec<(String, String)> = modules
            .iter()
            .map(|(name, _)| (name.clone(), DirWatcher::origin(&self.dir, name)))
            .collect();
        match crate::deploy::deploy(&self.deploy, &modules, &origins, "pickup", true).await {
            Ok(r) if r.deployed.is_empty() => {
                tracing::info!(modules = %names, "pickup: unchanged, nothing to deploy");
                Outcome::Done
            }
            Ok(r) => {
                let mut deployed = r
                    .deployed
                    .iter()
                    .map(|m| {
                        let services = r
                            .services
                            .iter()
                            .filter(|(_, module)| *module == m.name)
                            .map(|(s, _)| s.as_str())
                            .collect::<Vec<_>>();
                        format!("{} v{} [{}]", m.name, m.version, services.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                if !r.unchanged.is_empty() {
                    deployed.push_str(&format!(" (unchanged: {})", r.unchanged_names().join(", ")));
                }
                for w in &r.warnings {
                    tracing::warn!(module = %w.module, "pickup: {}", w.message);
                }
                audit(&self.deploy, before.ok(), &r).await;
                let workers = acks_summary(&r.workers);
                if r.all_ok() {
                    tracing::info!(
                        modules = %deployed,
                        config_version = r.config_version,
                        workers = %workers,
                        ms = %format!("{:.1}", r.total_ms),
                        "pickup: deployed"
                    );
                } else {
                    tracing::error!(
                        modules = %deployed,
                        config_version = r.config_version,
                        workers = %workers,
                        "pickup: deployed and stored, but not every worker switched to it (a worker that failed is replaced when it dies; see its error)"
                    );
                }
                Outcome::Done
            }
            Err(DeployError::Refused(doc)) => {
                let (error, module, traceback) = refusal(&doc);
                let culprit = if module.is_empty() {
                    String::new()
                } else {
                    format!(" in {module}")
                };
                tracing::error!(
                    modules = %names,
                    "pickup: deploy refused: {error}{culprit}; nothing changed, the active versions \
                     keep serving (these files are tried again with the next change)\n{}",
                    traceback.trim_end()
                );
                Outcome::Refused
            }
            Err(DeployError::Invalid(m)) => {
                tracing::error!(modules = %names, "pickup: deploy refused, nothing changed: {m}");
                Outcome::Refused
            }
            Err(DeployError::Unavailable(m) | DeployError::Busy(m)) => {
                tracing::error!(modules = %names, "pickup: cannot deploy now: {m}");
                Outcome::Unavailable
            }
        }
    }

    fn note(&mut self, note: Note<'_>) {
        match note {
            Note::Watching { dir } => {
                tracing::info!(dir = %dir.display(), "pickup: watching; *.py saved there are deployed")
            }
            Note::Skipped { file, reason } => {
                tracing::error!(file = %file.display(), "pickup: {reason}")
            }
            Note::Deleted { file, module } => tracing::info!(
                file = %file.display(),
                "pickup: file deleted; the module {module} stays deployed if it was (undeploy is explicit: oxbus undeploy {module})"
            ),
            Note::Retrying { modules, after } => tracing::warn!(
                modules = %modules.join(", "),
                "pickup: trying the deploy again in {:.0} s",
                after.as_secs_f64()
            ),
            Note::WatchError { error } => tracing::error!("pickup: file watcher error: {error}"),
        }
    }
}

/// Creates the pickup directory when it is missing and its parent exists (a typo in a
/// parent is an error, not a new tree), then starts watching it.
pub fn start_pickup(dir: &Path) -> Result<DirWatcher, PickupError> {
    if !dir.exists() {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(PickupError::NoParent {
                dir: dir.to_owned(),
                parent: parent.to_owned(),
            });
        }
        std::fs::create_dir(dir).map_err(|source| PickupError::Create {
            dir: dir.to_owned(),
            source,
        })?;
        tracing::info!(dir = %dir.display(), "created the pickup directory");
    }
    DirWatcher::start(dir).map_err(PickupError::Watch)
}

/// The server's pickup task: once the server is ready, deploys what the directory holds,
/// then every change, until shutdown starts (or the server ends).
pub async fn pickup(
    deploy: Arc<crate::deploy::Ctx>,
    watcher: DirWatcher,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|down| *down).await;
    };
    let mut stop = std::pin::pin!(stop);
    // The first deploy needs a worker to check it: wait for the first generation.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !deploy.node.ready.load(Ordering::SeqCst) {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
    }
    let dir = watcher.dir().to_owned();
    let mut sink = PickupLog { deploy, dir };
    if let Err(e) = watcher.run(&mut sink, Timing::default(), stop).await {
        tracing::error!(
            "pickup: {e}; files saved there are no longer deployed (restart the server to watch again)"
        );
    }
}
