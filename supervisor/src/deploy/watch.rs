//! Deploy-on-save: a watched directory of `*.py` modules, turned into deploys. One
//! implementation for both ways in: the server's pickup directory (`[pickup] dir`, see
//! [`pickup`]) and the CLI's `oxbus deploy --watch DIR` (`client::deploy_watch`).
//!
//! - **What counts.** Files directly in the directory whose name ends in `.py`; the module
//!   is the file name without `.py` (`crm.util.py` deploys the module `crm.util`), checked
//!   by the rules of every deploy (a bad name is reported and skipped, never a crash).
//!   Subdirectories are not watched and not packages (the name gives the dots). Hidden
//!   files and editor files are ignored: dotfiles (`.x.py.swp`, `.#x.py`, git's and
//!   rsync's `.x.py.XXXX` temp files), `x.py~`, `#x.py#`, vim's `4913`, `__pycache__`.
//!   `__init__.py` and other `__dunder__.py` files are reported as not deployable.
//! - **Never half-written.** A file is deployed once it is *quiet*: no event on it for
//!   [`Timing::quiet`] and, on Linux (inotify reports closes), every writer has closed it
//!   (`IN_CLOSE_WRITE`) — a writer that pauses for a minute with the file open is waited
//!   for. A file renamed into place (`git`, rsync and many editors write a temp file and
//!   rename it) is complete at once. Elsewhere only the quiet time applies.
//! - **Bursts are one deploy.** Changes are grouped: the batch goes when every changed file
//!   is quiet, so a `git pull` of 20 files is one all-or-nothing deploy and modules that
//!   import each other change together. A file that stays open (or keeps changing) does not
//!   hold the others back for longer than [`Timing::hold`].
//! - **Nothing lost, nothing silent.** Every result is reported through a [`Sink`] (the
//!   server's log, the CLI's output). A refused deploy (syntax or import error) leaves the
//!   active versions serving, and its files are tried again with the next change, so a fix
//!   of one file also deploys the others of the refused batch. A deploy that could not run
//!   at all (no worker ready, store or server unreachable) is retried with backoff.
//!   Unchanged files are skipped by the deploy itself (`skip_unchanged`), so a restart or
//!   a rescan creates no new versions.
//! - **Deleting a file does not undeploy** its module: undeploy is explicit
//!   (`oxbus undeploy NAME`, `DELETE /v1/modules/NAME`); the deletion is reported.
//! - The notify callback runs on notify's own thread and only `try_send`s into a bounded
//!   channel (never blocks, bounded memory); when the channel is full, or the kernel's
//!   queue overflowed, the directory is rescanned instead.

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest module file a watched directory deploys.
pub const MAX_MODULE_BYTES: u64 = 8 * 1024 * 1024;

/// Events queued between notify's thread and the watching task before a rescan is due.
const QUEUE: usize = 1024;

/// First and longest wait before a deploy that could not run is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long the debouncer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A file is quiet after this long without an event (and, on Linux, closed).
    pub quiet: Duration,
    /// A quiet file waits at most this long (from its first event) for the other changed
    /// files of its burst to become quiet too.
    pub hold: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            quiet: Duration::from_millis(300),
            hold: Duration::from_secs(2),
        }
    }
}

/// Whether a file name is a module candidate: `*.py`, not hidden, not an editor's file.
pub fn is_module_file(file_name: &str) -> bool {
    file_name.len() > ".py".len()
        && file_name.ends_with(".py")
        && !file_name.starts_with(['.', '#', '~'])
}

/// The module a candidate file deploys as, or why it cannot be deployed.
pub fn module_name(file_name: &str) -> Result<String, String> {
    let stem = file_name.strip_suffix(".py").unwrap_or(file_name);
    if stem.starts_with("__") && stem.ends_with("__") {
        return Err(format!(
            "{file_name} is not deployed: a watched directory holds top-level modules only, \
             not packages (name files with dots instead: crm.util.py deploys crm.util)"
        ));
    }
    crate::store::validate_module_name(stem)
        .map(|()| stem.to_owned())
        .map_err(|e| format!("{file_name} is not deployed: {e}"))
}

/// The file name of `path` when it is a module candidate directly in `dir`.
fn candidate<'p>(dir: &Path, path: &'p Path) -> Option<&'p str> {
    if path.parent() != Some(dir) {
        return None;
    }
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_module_file(n))
}

/// What an event means for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The file was created: like [`Touch::Written`] unless the watcher finds it complete
    /// already (a symlink or hard link).
    Created,
    /// Content is being written (written, truncated).
    Written,
    /// A writer closed the file (Linux).
    Closed,
    /// Complete content arrived at once: renamed into place, or changed where the watcher
    /// does not report writes and closes apart.
    Replaced,
    /// The file was deleted.
    Deleted,
    /// The file was renamed away (a temp file moved into place under another name).
    MovedAway,
}

/// What the watcher makes of one notify event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    File(PathBuf, Touch),
    /// Events were lost: look at every file again.
    Rescan,
    /// The watched directory itself was deleted or renamed.
    DirGone,
}

/// Maps a notify event to signals about the candidate files of `dir`; events about other
/// files, and reads (the watcher's own included), give none.
pub fn classify(event: &Event, dir: &Path) -> Vec<Signal> {
    if event.need_rescan() {
        return vec![Signal::Rescan];
    }
    let touch = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Touch::Closed,
        EventKind::Access(_) => return Vec::new(),
        EventKind::Create(_) => Touch::Created,
        EventKind::Modify(ModifyKind::Metadata(_)) => return Vec::new(),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Touch::MovedAway,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            // [from, to]; inotify also sends the two halves on their own.
            let mut out = Vec::new();
            let mut halves = event.paths.iter();
            if let Some(from) = halves.next() {
                if from == dir {
                    out.push(Signal::DirGone);
                } else if candidate(dir, from).is_some() {
                    out.push(Signal::File(from.clone(), Touch::MovedAway));
                }
            }
            if let Some(to) = halves.next()
                && candidate(dir, to).is_some()
            {
                out.push(Signal::File(to.clone(), Touch::Replaced));
            }
            return out;
        }
        // `To`, or a backend that does not say which end of the rename this path is: the
        // read at deploy time finds out.
        EventKind::Modify(ModifyKind::Name(_)) => Touch::Replaced,
        EventKind::Modify(_) => Touch::Written,
        EventKind::Remove(_) => Touch::Deleted,
        EventKind::Any | EventKind::Other => Touch::Replaced,
    };
    let mut out = Vec::new();
    for p in &event.paths {
        if p == dir {
            if matches!(touch, Touch::Deleted | Touch::MovedAway) {
                out.push(Signal::DirGone);
            }
        } else if candidate(dir, p).is_some() {
            out.push(Signal::File(p.clone(), touch));
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    last: Instant,
    /// Written and not closed since (only when the watcher reports closes).
    open: bool,
}

/// Turns file events into batches of files that are ready to deploy. Pure: every call
/// takes the time, so tests drive it with a made-up clock.
#[derive(Debug)]
pub struct Debouncer {
    timing: Timing,
    /// The watcher reports closes (inotify): wait for them after a write.
    closes: bool,
    pending: BTreeMap<PathBuf, Pending>,
}

impl Debouncer {
    pub fn new(timing: Timing, closes: bool) -> Debouncer {
        Debouncer {
            timing,
            closes,
            pending: BTreeMap::new(),
        }
    }

    /// Records an event on `path` at `now`.
    pub fn touch(&mut self, path: PathBuf, touch: Touch, now: Instant) {
        if touch == Touch::MovedAway {
            // Whatever was written under this name now lives under another one.
            self.pending.remove(&path);
            return;
        }
        let open = self.closes && matches!(touch, Touch::Created | Touch::Written);
        let p = self.pending.entry(path).or_insert(Pending {
            first: now,
            last: now,
            open,
        });
        p.last = now;
        p.open = open;
    }

    fn ready(&self, p: &Pending, now: Instant) -> bool {
        !p.open && now >= p.last + self.timing.quiet
    }

    /// The files to deploy now, if any: every quiet file, once every changed file is quiet
    /// or a quiet one has waited [`Timing::hold`] for the rest.
    pub fn take_ready(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut ready = 0;
        let mut overdue = false;
        for p in self.pending.values() {
            if self.ready(p, now) {
                ready += 1;
                overdue |= now >= p.first + self.timing.hold;
            }
        }
        if ready == 0 || (ready < self.pending.len() && !overdue) {
            return Vec::new();
        }
        let paths: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| self.ready(p, now))
            .map(|(path, _)| path.clone())
            .collect();
        for path in &paths {
            self.pending.remove(path);
        }
        paths
    }

    /// When [`Debouncer::take_ready`] may have something next without another event.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| !p.open)
            .flat_map(|p| [p.last + self.timing.quiet, p.first + self.timing.hold])
            .filter(|t| *t > now)
            .min()
    }

    /// Files changed and not yet deployed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// How a deploy went, for the retry logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Deployed (or every module unchanged).
    Done,
    /// Refused (syntax or import error, invalid input): tried again with the next change.
    Refused,
    /// Could not run (no worker ready, unreachable): tried again after a backoff.
    Unavailable,
    /// Can never work (e.g. a wrong token): stop watching.
    Fatal(String),
}

/// Things to report besides deploys.
#[derive(Debug, Clone, Copy)]
pub enum Note<'a> {
    /// The watch is set up.
    Watching { dir: &'a Path },
    /// A changed file that is not deployed (bad name, unreadable, too big …).
    Skipped { file: &'a Path, reason: &'a str },
    /// A changed file was deleted: its module stays deployed.
    Deleted { file: &'a Path, module: &'a str },
    /// A deploy that could not run is tried again after `after`.
    Retrying {
        modules: &'a [String],
        after: Duration,
    },
    /// The file watcher reported an error.
    WatchError { error: &'a str },
}

/// Where a watched directory's deploys go and its results are reported.
pub trait Sink {
    /// Deploys `modules` (name, source), leaving unchanged ones alone, and reports the result.
    fn deploy(&mut self, modules: Vec<(String, String)>) -> impl Future<Output = Outcome> + Send;
    fn note(&mut self, note: Note<'_>);
}

/// A directory watch: notify's watcher and the channel its events arrive on.
pub struct DirWatcher {
    dir: PathBuf,
    events: mpsc::Receiver<notify::Result<Event>>,
    overflowed: Arc<AtomicBool>,
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DirWatcher {
    /// Starts watching `dir` (which must exist and be readable).
    pub fn start(dir: &Path) -> Result<DirWatcher, String> {
        let shown = dir.display();
        let dir = std::fs::canonicalize(dir).map_err(|e| format!("cannot watch {shown}: {e}"))?;
        if !dir.is_dir() {
            return Err(format!("cannot watch {shown}: not a directory"));
        }
        std::fs::read_dir(&dir).map_err(|e| format!("cannot watch {shown}: {e}"))?;
        let (tx, events) = mpsc::channel(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        // notify's thread: never blocks on the watching task.
        let mut watcher = notify::recommended_watcher(move |ev| {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(ev) {
                flag.store(true, Ordering::Relaxed);
            }
        })
        .map_err(|e| format!("cannot start a file watcher: {e}"))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {shown}: {e}"))?;
        Ok(DirWatcher {
            dir,
            events,
            overflowed,
            _watcher: watcher,
        })
    }

    /// The watched directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every candidate file of the directory, as if each had just been replaced.
    fn rescan<S: Sink>(&self, deb: &mut Debouncer, sink: &mut S) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                let error = format!("cannot list {}: {e}", self.dir.display());
                sink.note(Note::WatchError { error: &error });
                return;
            }
        };
        let now = Instant::now();
        for entry in entries.flatten() {
            let path = entry.path();
            if candidate(&self.dir, &path).is_some() {
                deb.touch(path, Touch::Replaced, now);
            }
        }
    }

    /// Deploys what is in the directory now, then every change, until `stop` completes
    /// (`Ok`) or the watch breaks (`Err` with the reason).
    pub async fn run<S: Sink>(
        mut self,
        sink: &mut S,
        timing: Timing,
        stop: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let mut stop = std::pin::pin!(stop);
        let mut deb = Debouncer::new(timing, cfg!(target_os = "linux"));
        // Files of a deploy that did not go through, tried again with the next batch.
        let mut retry: BTreeSet<PathBuf> = BTreeSet::new();
        let mut retry_at: Option<Instant> = None;
        let mut backoff = RETRY_FIRST;
        sink.note(Note::Watching { dir: &self.dir });
        self.rescan(&mut deb, sink);
        loop {
            if self.overflowed.swap(false, Ordering::Relaxed) {
                self.rescan(&mut deb, sink);
            }
            let now = Instant::now();
            let ready = deb.take_ready(now);
            let retry_due = retry_at.is_some_and(|t| now >= t);
            if !ready.is_empty() || retry_due {
                retry_at = None;
                let mut paths: BTreeSet<PathBuf> = std::mem::take(&mut retry);
                paths.extend(ready);
                let (modules, files) = read_modules(&paths, sink);
                if modules.is_empty() {
                    continue;
                }
                let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
                let outcome = tokio::select! {
                    _ = &mut stop => return Ok(()),
                    o = sink.deploy(modules) => o,
                };
                match outcome {
                    Outcome::Done => backoff = RETRY_FIRST,
                    Outcome::Refused => retry = files,
                    Outcome::Unavailable => {
                        retry = files;
                        sink.note(Note::Retrying {
                            modules: &names,
                            after: backoff,
                        });
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                    Outcome::Fatal(reason) => return Err(reason),
                }
                continue;
            }
            let wake = [deb.next_deadline(now), retry_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut stop => return Ok(()),
                msg = self.events.recv() => {
                    let at = Instant::now();
                    match msg {
                        None => return Err("the file watcher stopped".into()),
                        Some(Err(e)) => sink.note(Note::WatchError { error: &e.to_string() }),
                        Some(Ok(event)) => {
                            for signal in classify(&event, &self.dir) {
                                match signal {
                                    Signal::File(path, touch) => {
                                        let touch = if touch == Touch::Created {
                                            created(&path)
                                        } else {
                                            touch
                                        };
                                        deb.touch(path, touch, at);
                                    }
                                    Signal::Rescan => self.rescan(&mut deb, sink),
                                    Signal::DirGone => {
                                        return Err(format!(
                                            "{} was deleted or renamed; no longer watching it",
                                            self.dir.display()
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

/// A created path that is a symlink or a hard link is complete at once (no writer will
/// close it); a new file is being written.
fn created(path: &Path) -> Touch {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || m.nlink() > 1 => Touch::Replaced,
        _ => Touch::Created,
    }
}

/// Reads the files of a batch: (name, source) of each readable module, and the files they
/// came from. Files that cannot be deployed are reported; deleted ones too.
fn read_modules<S: Sink>(
    paths: &BTreeSet<PathBuf>,
    sink: &mut S,
) -> (Vec<(String, String)>, BTreeSet<PathBuf>) {
    let mut modules = Vec::new();
    let mut files = BTreeSet::new();
    for path in paths {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let name = match module_name(file_name) {
            Ok(n) => n,
            Err(reason) => {
                sink.note(Note::Skipped {
                    file: path,
                    reason: &reason,
                });
                continue;
            }
        };
        let skip = |sink: &mut S, reason: String| {
            sink.note(Note::Skipped {
                file: path,
                reason: &reason,
            })
        };
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                sink.note(Note::Deleted {
                    file: path,
                    module: &name,
                });
                continue;
            }
            Err(e) => {
                skip(sink, format!("{file_name} is not deployed: {e}"));
                continue;
            }
            Ok(m) if !m.is_file() => {
                skip(
                    sink,
                    format!("{file_name} is not deployed: not a regular file"),
                );
                continue;
            }
            Ok(m) if m.len() > MAX_MODULE_BYTES => {
                skip(
                    sink,
                    format!(
                        "{file_name} is not deployed: {} bytes, more than the {MAX_MODULE_BYTES} a module may have",
                        m.len()
                    ),
                );
                continue;
            }
            Ok(_) => {}
        }
        match std::fs::read_to_string(path) {
            Ok(source) => {
                modules.push((name, source));
                files.insert(path.clone());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => sink.note(Note::Deleted {
                file: path,
                module: &name,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                skip(sink, format!("{file_name} is not deployed: not UTF-8 text"))
            }
            Err(e) => skip(sink, format!("{file_name} is not deployed: {e}")),
        }
    }
    (modules, files)
}

/// One line per worker for a deploy report: `1 (pid 123) ok 1.2 ms`.
pub fn acks_summary(workers: &[crate::deploy::WorkerAck]) -> String {
    workers
        .iter()
        .map(|a| match &a.error {
            None => format!("{} (pid {}) ok {:.1} ms", a.worker_id, a.pid, a.ms),
            Some(e) => format!("{} (pid {}) FAILED: {e}", a.worker_id, a.pid),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The fields of a refused deploy's document: (error, module, traceback).
pub fn refusal(doc: &Value) -> (String, String, String) {
    let s = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let error = doc
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| doc.to_string());
    (error, s("module"), s("traceback"))
}

/// The server's pickup directory: results go to the log.
struct PickupLog {
    deploy: Arc<crate::deploy::Ctx>,
}

impl Sink for PickupLog {
    async fn deploy(&mut self, modules: Vec<(String, String)>) -> Outcome {
        use crate::deploy::DeployError;
        let names = modules
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match crate::deploy::deploy(&self.deploy, &modules, "pickup", true).await {
            Ok(r) if r.deployed.is_empty() => {
                tracing::info!(modules = %names, "pickup: unchanged, nothing to deploy");
                Outcome::Done
            }
            Ok(r) => {
                let mut deployed = r
                    .deployed
                    .iter()
                    .map(|m| format!("{} v{}", m.name, m.version))
                    .collect::<Vec<_>>()
                    .join(", ");
                if !r.unchanged.is_empty() {
                    deployed.push_str(&format!(" (unchanged: {})", r.unchanged.join(", ")));
                }
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
pub fn start_pickup(dir: &Path) -> Result<DirWatcher, String> {
    if !dir.exists() {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(format!(
                "the pickup directory {} does not exist, nor does its parent {}: create it or fix [pickup] dir",
                dir.display(),
                parent.display()
            ));
        }
        std::fs::create_dir(dir)
            .map_err(|e| format!("cannot create the pickup directory {}: {e}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "created the pickup directory");
    }
    DirWatcher::start(dir).map_err(|e| format!("pickup directory: {e}"))
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
    let mut sink = PickupLog { deploy };
    if let Err(e) = watcher.run(&mut sink, Timing::default(), stop).await {
        tracing::error!(
            "pickup: {e}; files saved there are no longer deployed (restart the server to watch again)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind};

    const MS: Duration = Duration::from_millis(1);

    fn deb(closes: bool) -> Debouncer {
        Debouncer::new(
            Timing {
                quiet: 300 * MS,
                hold: 2000 * MS,
            },
            closes,
        )
    }

    fn p(name: &str) -> PathBuf {
        PathBuf::from("/drop").join(name)
    }

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for n in paths {
            e = e.add_path(p(n));
        }
        e
    }

    #[test]
    fn only_python_files_directly_in_the_directory_count() {
        for ok in ["crm.py", "crm.util.py", "a.py", "Bad-Name.py"] {
            assert!(is_module_file(ok), "{ok}");
        }
        for no in [
            ".crm.py.swp",
            ".#crm.py",
            "crm.py~",
            "#crm.py#",
            "4913",
            ".crm.py.Ab12Cd",
            "__pycache__",
            "crm.pyc",
            "crm.py.orig",
            ".py",
            "crm.py___jb_tmp___",
            "~crm.py",
            "notes.txt",
        ] {
            assert!(!is_module_file(no), "{no}");
        }
        let dir = Path::new("/drop");
        assert_eq!(candidate(dir, Path::new("/drop/crm.py")), Some("crm.py"));
        assert_eq!(candidate(dir, Path::new("/drop/sub/crm.py")), None);
        assert_eq!(candidate(dir, Path::new("/elsewhere/crm.py")), None);
    }

    #[test]
    fn module_names_follow_the_deploy_rules() {
        assert_eq!(module_name("crm.py").unwrap(), "crm");
        assert_eq!(module_name("crm.util.py").unwrap(), "crm.util");
        let e = module_name("bad-name.py").unwrap_err();
        assert!(
            e.contains("bad-name.py") && e.contains("not a valid Python module name"),
            "{e}"
        );
        assert!(module_name("1st.py").is_err());
        assert!(module_name("a..b.py").is_err());
        let e = module_name("__init__.py").unwrap_err();
        assert!(e.contains("top-level modules only"), "{e}");
    }

    #[test]
    fn events_map_to_touches_and_reads_are_ignored() {
        let dir = Path::new("/drop");
        let file = |t| vec![Signal::File(p("a.py"), t)];
        let close_w = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(classify(&ev(close_w, &["a.py"]), dir), file(Touch::Closed));
        let create = EventKind::Create(CreateKind::File);
        assert_eq!(classify(&ev(create, &["a.py"]), dir), file(Touch::Created));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(classify(&ev(write, &["a.py"]), dir), file(Touch::Written));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(classify(&ev(to, &["a.py"]), dir), file(Touch::Replaced));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert_eq!(classify(&ev(from, &["a.py"]), dir), file(Touch::MovedAway));
        let rm = EventKind::Remove(RemoveKind::File);
        assert_eq!(classify(&ev(rm, &["a.py"]), dir), file(Touch::Deleted));
        // Our own reads (open, close-nowrite) and metadata changes are not changes.
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
        ] {
            assert!(classify(&ev(kind, &["a.py"]), dir).is_empty(), "{kind:?}");
        }
        // Temp files of editors and git are not files to deploy.
        for name in [".a.py.swp", "a.py~", "4913", ".a.py.XyZ123"] {
            assert!(classify(&ev(write, &[name]), dir).is_empty(), "{name}");
        }
        // A temp file renamed into place: only the target counts.
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(
            classify(&ev(both, &[".a.py.tmp", "a.py"]), dir),
            file(Touch::Replaced)
        );
        assert_eq!(
            classify(&ev(both, &["tmp_x.py", "a.py"]), dir),
            vec![
                Signal::File(p("tmp_x.py"), Touch::MovedAway),
                Signal::File(p("a.py"), Touch::Replaced)
            ]
        );
        // The directory itself going away, and lost events.
        let gone = Event::new(EventKind::Remove(RemoveKind::Folder)).add_path(dir.into());
        assert_eq!(classify(&gone, dir), vec![Signal::DirGone]);
        let moved =
            Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::From))).add_path(dir.into());
        assert_eq!(classify(&moved, dir), vec![Signal::DirGone]);
        let lost = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(classify(&lost, dir), vec![Signal::Rescan]);
    }

    #[test]
    fn a_closed_file_is_ready_once_quiet() {
        let t0 = Instant::now();
        let mut d = deb(true);
        d.touch(p("a.py"), Touch::Created, t0);
        d.touch(p("a.py"), Touch::Written, t0 + 10 * MS);
        d.touch(p("a.py"), Touch::Closed, t0 + 20 * MS);
        assert_eq!(d.next_deadline(t0 + 20 * MS), Some(t0 + 320 * MS));
        assert!(d.take_ready(t0 + 319 * MS).is_empty());
        assert_eq!(d.take_ready(t0 + 320 * MS), vec![p("a.py")]);
        assert_eq!(d.pending(), 0);
        assert!(d.take_ready(t0 + 5000 * MS).is_empty());
    }

    #[test]
    fn a_file_open_for_writing_waits_for_its_close_however_long_the_pause() {
        let t0 = Instant::now();
        let mut d = deb(true);
        d.touch(p("a.py"), Touch::Created, t0);
        d.touch(p("a.py"), Touch::Written, t0 + MS);
        // A writer that pauses for a minute with the file open: never half-deployed.
        for s in [1, 5, 60] {
            assert!(d.take_ready(t0 + Duration::from_secs(s)).is_empty());
        }
        assert_eq!(
            d.next_deadline(t0 + MS),
            None,
            "nothing to wait for but a close"
        );
        d.touch(p("a.py"), Touch::Written, t0 + Duration::from_secs(61));
        d.touch(p("a.py"), Touch::Closed, t0 + Duration::from_secs(62));
        assert!(d.take_ready(t0 + Duration::from_secs(62)).is_empty());
        assert_eq!(
            d.take_ready(t0 + Duration::from_secs(62) + 300 * MS),
            vec![p("a.py")]
        );
    }

    #[test]
    fn without_close_events_quiet_time_alone_decides() {
        let t0 = Instant::now();
        let mut d = deb(false);
        d.touch(p("a.py"), Touch::Written, t0);
        d.touch(p("a.py"), Touch::Written, t0 + 200 * MS);
        assert!(d.take_ready(t0 + 400 * MS).is_empty());
        assert_eq!(d.take_ready(t0 + 500 * MS), vec![p("a.py")]);
    }

    #[test]
    fn renamed_into_place_is_complete_at_once() {
        let t0 = Instant::now();
        let mut d = deb(true);
        // An earlier writer left the old file open; the rename replaces it whole.
        d.touch(p("a.py"), Touch::Written, t0);
        d.touch(p("a.py"), Touch::Replaced, t0 + 10 * MS);
        assert_eq!(d.take_ready(t0 + 310 * MS), vec![p("a.py")]);
        // A `.py` temp file renamed away is not deployed under its temp name.
        d.touch(p("tmp_1.py"), Touch::Created, t0 + 400 * MS);
        d.touch(p("tmp_1.py"), Touch::Closed, t0 + 410 * MS);
        d.touch(p("tmp_1.py"), Touch::MovedAway, t0 + 420 * MS);
        d.touch(p("b.py"), Touch::Replaced, t0 + 420 * MS);
        assert_eq!(d.take_ready(t0 + 720 * MS), vec![p("b.py")]);
    }

    #[test]
    fn a_burst_is_one_batch() {
        let t0 = Instant::now();
        let mut d = deb(true);
        // A git pull: 20 files, one every 50 ms, each written and closed.
        let names: Vec<String> = (0..20).map(|i| format!("m{i:02}.py")).collect();
        let mut t = t0;
        for n in &names {
            d.touch(p(n), Touch::Created, t);
            d.touch(p(n), Touch::Written, t + MS);
            d.touch(p(n), Touch::Closed, t + 2 * MS);
            // Nothing leaves while the burst goes on, though early files are quiet.
            assert!(d.take_ready(t + 2 * MS).is_empty());
            t += 50 * MS;
        }
        let last = t - 50 * MS + 2 * MS;
        assert!(d.take_ready(last + 299 * MS).is_empty());
        let batch = d.take_ready(last + 300 * MS);
        assert_eq!(batch, names.iter().map(|n| p(n)).collect::<Vec<_>>());
    }

    #[test]
    fn a_file_left_open_holds_the_others_back_only_so_long() {
        let t0 = Instant::now();
        let mut d = deb(true);
        d.touch(p("slow.py"), Touch::Written, t0);
        d.touch(p("a.py"), Touch::Replaced, t0 + 10 * MS);
        assert!(
            d.take_ready(t0 + 400 * MS).is_empty(),
            "waits for its burst"
        );
        assert_eq!(d.next_deadline(t0 + 400 * MS), Some(t0 + 2010 * MS));
        assert_eq!(d.take_ready(t0 + 2010 * MS), vec![p("a.py")]);
        assert_eq!(d.pending(), 1, "the open file still waits for its close");
        d.touch(p("slow.py"), Touch::Closed, t0 + 3000 * MS);
        assert_eq!(d.take_ready(t0 + 3300 * MS), vec![p("slow.py")]);
    }

    #[test]
    fn a_file_that_keeps_changing_does_not_starve_the_others() {
        let t0 = Instant::now();
        let mut d = deb(true);
        d.touch(p("a.py"), Touch::Replaced, t0);
        let mut t = t0;
        let mut got = Vec::new();
        // busy.py is rewritten every 100 ms, for ever.
        while got.is_empty() && t < t0 + Duration::from_secs(10) {
            d.touch(p("busy.py"), Touch::Written, t);
            d.touch(p("busy.py"), Touch::Closed, t + MS);
            t += 100 * MS;
            got = d.take_ready(t);
        }
        assert_eq!(got, vec![p("a.py")]);
        assert!(t <= t0 + 2100 * MS, "a.py waited until {:?}", t - t0);
    }

    #[test]
    fn deleted_files_are_reported_at_flush_and_moved_away_ones_forgotten() {
        let t0 = Instant::now();
        let mut d = deb(true);
        d.touch(p("a.py"), Touch::Deleted, t0);
        d.touch(p("b.py"), Touch::Replaced, t0);
        d.touch(p("b.py"), Touch::MovedAway, t0 + MS);
        assert_eq!(d.take_ready(t0 + 300 * MS), vec![p("a.py")]);
        assert_eq!(d.pending(), 0);
    }

    /// A sink that records what it is told.
    #[derive(Default)]
    struct Record {
        notes: Vec<String>,
    }

    impl Sink for Record {
        async fn deploy(&mut self, _: Vec<(String, String)>) -> Outcome {
            Outcome::Done
        }
        fn note(&mut self, note: Note<'_>) {
            self.notes.push(match note {
                Note::Skipped { reason, .. } => format!("skipped: {reason}"),
                Note::Deleted { module, .. } => format!("deleted: {module}"),
                other => format!("{other:?}"),
            });
        }
    }

    /// A sink that answers deploys from a script and hands each batch to the test.
    struct Scripted {
        script: std::collections::VecDeque<Outcome>,
        batches: mpsc::UnboundedSender<Vec<String>>,
        notes: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Sink for Scripted {
        async fn deploy(&mut self, modules: Vec<(String, String)>) -> Outcome {
            let _ = self
                .batches
                .send(modules.into_iter().map(|(n, _)| n).collect());
            self.script.pop_front().unwrap_or(Outcome::Done)
        }
        fn note(&mut self, note: Note<'_>) {
            self.notes.lock().unwrap().push(format!("{note:?}"));
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oxbus-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Vec<String>>) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a deploy within 20 s")
            .expect("the watcher is running")
    }

    #[tokio::test]
    async fn refused_files_go_again_with_the_next_change_and_unavailable_ones_after_a_backoff() {
        let dir = temp_dir("retry");
        std::fs::write(dir.join("a.py"), "A = 1\n").unwrap();
        let (tx, mut batches) = mpsc::unbounded_channel();
        let notes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sink = Scripted {
            script: [Outcome::Refused, Outcome::Unavailable].into(),
            batches: tx,
            notes: notes.clone(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let timing = Timing {
            quiet: Duration::from_millis(50),
            hold: Duration::from_millis(500),
        };
        let watcher = DirWatcher::start(&dir).unwrap();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            watcher.run(&mut sink, timing, stop).await
        });
        // What the directory holds at start; refused.
        assert_eq!(next(&mut batches).await, ["a"]);
        // The next change brings the refused file along; this time the server is away.
        std::fs::write(dir.join("b.py"), "B = 1\n").unwrap();
        assert_eq!(next(&mut batches).await, ["a", "b"]);
        // Tried again after the backoff, with no change needed.
        assert_eq!(next(&mut batches).await, ["a", "b"]);
        // Done: the next change is deployed alone.
        std::fs::write(dir.join("c.py"), "C = 1\n").unwrap();
        assert_eq!(next(&mut batches).await, ["c"]);
        stop_tx.send(()).unwrap();
        assert_eq!(task.await.unwrap(), Ok(()));
        let notes = notes.lock().unwrap().join("\n");
        assert!(notes.contains("Retrying"), "{notes}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_watch_ends_with_a_reason_when_its_directory_goes() {
        let dir = temp_dir("gone");
        let (tx, _batches) = mpsc::unbounded_channel();
        let mut sink = Scripted {
            script: Default::default(),
            batches: tx,
            notes: Default::default(),
        };
        let watcher = DirWatcher::start(&dir).unwrap();
        let task = tokio::spawn(async move {
            watcher
                .run(&mut sink, Timing::default(), std::future::pending())
                .await
        });
        std::fs::remove_dir(&dir).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the watch ends")
            .unwrap();
        let e = r.unwrap_err();
        assert!(e.contains("deleted or renamed"), "{e}");
        assert!(
            DirWatcher::start(&dir)
                .unwrap_err()
                .contains("cannot watch")
        );
    }

    #[test]
    fn reading_a_batch_reports_what_cannot_be_deployed() {
        let dir = std::env::temp_dir().join(format!("oxbus-watch-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub.py")).unwrap();
        std::fs::write(dir.join("good.py"), "X = 1\n").unwrap();
        std::fs::write(dir.join("bad-name.py"), "X = 1\n").unwrap();
        std::fs::write(dir.join("latin1.py"), b"X = '\xe9'\n").unwrap();
        let paths: BTreeSet<PathBuf> = ["good.py", "bad-name.py", "latin1.py", "sub.py", "gone.py"]
            .iter()
            .map(|n| dir.join(n))
            .collect();
        let mut sink = Record::default();
        let (modules, files) = read_modules(&paths, &mut sink);
        assert_eq!(modules, vec![("good".to_owned(), "X = 1\n".to_owned())]);
        assert_eq!(files, BTreeSet::from([dir.join("good.py")]));
        let notes = sink.notes.join("\n");
        assert!(notes.contains("bad-name.py is not deployed"), "{notes}");
        assert!(
            notes.contains("latin1.py is not deployed: not UTF-8"),
            "{notes}"
        );
        assert!(
            notes.contains("sub.py is not deployed: not a regular file"),
            "{notes}"
        );
        assert!(notes.contains("deleted: gone"), "{notes}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
