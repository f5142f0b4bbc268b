//! One file-transfer channel on this server: take its lease (or wait for it), watch its
//! folders, and hand each complete file to its service, oldest first, recording the outcome
//! before the file is moved (module docs in `files/mod.rs`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::ChannelStatus;
use super::tracker::{Sig, Touch, Tracker};
use crate::lifecycle::pool::{DispatchError, Pool};
use crate::model::files::{After, FileChannel, Matcher};
use crate::store::Store;
use crate::store::files::{Claimed, Outcome};

/// The lease: held this long past each renewal, renewed three times as often.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a server without the lease (or without its store) tries again.
const RETRY: Duration = Duration::from_secs(2);
/// Files claimed (and their outcomes recorded) per store transaction.
const BATCH: usize = 128;
/// Folders are walked again this often: files whose events were missed (a folder created
/// before its watch, the kernel's event queue overflowing) and moves that failed.
const RESCAN: Duration = Duration::from_secs(60);
/// The most of a failed call's answer kept as its reason.
const REASON_BYTES: usize = 64 * 1024;
/// A move that failed is tried again this soon (by a rescan).
const MOVE_RETRY: Duration = Duration::from_secs(5);
/// Rows of files taken and never recorded are forgotten after this long (their files went).
const PRUNE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// What every channel of this server shares.
#[derive(Debug, Clone)]
pub(super) struct Cx {
    pub server: String,
    pub store: Store,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub pool: Arc<OnceLock<Arc<Pool>>>,
}

/// A channel's live state, read by [`super::FileChannels::status`].
#[derive(Debug)]
pub(super) struct Status {
    inner: Mutex<StatusInner>,
    done: AtomicU64,
    failed: AtomicU64,
    redelivered: AtomicU64,
    /// A move failed in the last batch: rescan soon.
    moves_failed: AtomicBool,
    tracker: Arc<Mutex<Tracker>>,
}

#[derive(Debug, Default)]
struct StatusInner {
    state: &'static str,
    holder: Option<String>,
    epoch: Option<i64>,
    last_error: Option<String>,
    last_file: Option<String>,
}

impl Status {
    pub fn new(quiet_ms: u64) -> Status {
        Status {
            inner: Mutex::new(StatusInner {
                state: "starting",
                ..Default::default()
            }),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            moves_failed: AtomicBool::new(false),
            tracker: Arc::new(Mutex::new(Tracker::new(Duration::from_millis(quiet_ms)))),
        }
    }

    fn set(&self, state: &'static str, holder: Option<String>, epoch: Option<i64>) {
        let mut s = self.inner.lock().expect("status lock");
        s.state = state;
        s.holder = holder;
        s.epoch = epoch;
        if state == "holding" || state == "standby" {
            s.last_error = None;
        }
    }

    fn error(&self, e: String) {
        let mut s = self.inner.lock().expect("status lock");
        if s.last_error.as_deref() != Some(&e) {
            warn!(error = %e, "file channel");
        }
        s.last_error = Some(e);
    }

    pub fn snapshot(&self, name: &str) -> ChannelStatus {
        let s = self.inner.lock().expect("status lock");
        ChannelStatus {
            name: name.to_owned(),
            state: s.state.to_owned(),
            holder: s.holder.clone(),
            epoch: s.epoch,
            pending: self.tracker.lock().expect("tracker lock").len(),
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            last_error: s.last_error.clone(),
            last_file: s.last_file.clone(),
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the channel until `stop`: after `previous` (its earlier definitions' tasks) ended,
/// takes the lease whenever it is free and, while holding it, takes the files.
pub(super) async fn run(
    cx: Cx,
    def: FileChannel,
    mut stop: watch::Receiver<bool>,
    status: Arc<Status>,
    previous: Vec<JoinHandle<()>>,
) {
    for p in previous {
        let _ = p.await;
    }
    let name = def.name.clone();
    while !*stop.borrow() {
        match cx
            .store
            .file_lease_acquire(&name, &cx.server, unix_ms(), LEASE_TTL)
            .await
        {
            Ok(Some(epoch)) => {
                // "holding" once the watch is on (hold): a file written after that is seen.
                status.set("starting", Some(cx.server.clone()), Some(epoch));
                info!(channel = %name, epoch, "file channel: this server takes the files");
                let released = hold(&cx, &def, epoch, &mut stop, &status).await;
                if released {
                    if let Err(e) = cx.store.file_lease_release(&name, &cx.server, epoch).await {
                        warn!(channel = %name, error = %e, "file channel: the lease was not handed back; it expires");
                    }
                    status.set("stopped", None, None);
                    return;
                }
                status.set("starting", None, None);
            }
            Ok(None) => {
                let holder = cx.store.file_lease(&name).await.ok().flatten();
                status.set(
                    "standby",
                    holder.as_ref().map(|h| h.0.clone()),
                    holder.map(|h| h.1),
                );
            }
            Err(e) => {
                status.set("error", None, None);
                status.error(format!("the store did not answer: {e}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => {}
        }
    }
    status.set("stopped", None, None);
}

/// The folders a channel watches and where its files go.
struct Folders {
    /// Each watched folder and its processed / failed folders.
    bases: Vec<Base>,
    matcher: Matcher,
    recursive: bool,
}

struct Base {
    dir: PathBuf,
    /// Processed and failed folders inside `dir` (never taken from).
    excluded: Vec<PathBuf>,
}

impl Folders {
    fn new(def: &FileChannel) -> Folders {
        let bases = def
            .directories
            .iter()
            .map(|d| {
                let dir = PathBuf::from(d);
                let excluded = [false, true]
                    .iter()
                    .map(|f| def.target_dir(d, *f))
                    .filter(|t| t.starts_with(&dir))
                    .collect();
                Base { dir, excluded }
            })
            .collect();
        Folders {
            bases,
            matcher: def.matcher(),
            recursive: def.recursive,
        }
    }

    /// The watched folder a file of the channel's is in, if `path` is one: its name matches,
    /// and (recursive) no folder between is hidden or a processed / failed folder.
    fn base_of(&self, path: &Path) -> Option<&Base> {
        let name = path.file_name()?.to_string_lossy();
        if !self.matcher.takes(&name) {
            return None;
        }
        let parent = path.parent()?;
        self.bases.iter().find(|b| {
            if self.recursive {
                parent.strip_prefix(&b.dir).is_ok_and(|rel| {
                    !rel.components()
                        .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."))
                }) && !b.excluded.iter().any(|x| parent.starts_with(x))
            } else {
                parent == b.dir
            }
        })
    }

    fn is_base(&self, path: &Path) -> bool {
        self.bases.iter().any(|b| b.dir == path)
    }
}

/// What a notify event means for a channel's tracker.
fn touches(event: &notify::Event) -> Vec<(PathBuf, Touch)> {
    let one = |t: Touch| event.paths.iter().map(|p| (p.clone(), t)).collect();
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => one(Touch::Closed),
        EventKind::Access(_) => Vec::new(),
        EventKind::Create(CreateKind::Folder) => Vec::new(),
        EventKind::Create(_) => one(Touch::Written),
        EventKind::Modify(ModifyKind::Metadata(_)) => Vec::new(),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => one(Touch::Gone),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => one(Touch::Arrived),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut v = Vec::new();
            if let Some(from) = event.paths.first() {
                v.push((from.clone(), Touch::Gone));
            }
            if let Some(to) = event.paths.get(1) {
                v.push((to.clone(), Touch::Arrived));
            }
            v
        }
        EventKind::Modify(_) => one(Touch::Written),
        EventKind::Remove(_) => one(Touch::Gone),
        EventKind::Any | EventKind::Other => Vec::new(),
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

/// Walks the folders into the tracker: every file of the channel's not tracked yet.
fn scan(folders: &Folders, tracker: &Mutex<Tracker>) {
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut found = Vec::new();
    for b in &folders.bases {
        let depth = if folders.recursive { usize::MAX } else { 1 };
        let walk = walkdir::WalkDir::new(&b.dir)
            .max_depth(depth)
            .into_iter()
            .filter_entry(|e| {
                e.depth() == 0
                    || !e.file_type().is_dir()
                    || !(b.excluded.iter().any(|x| e.path() == x)
                        || e.file_name().as_encoded_bytes().starts_with(b"."))
            });
        for e in walk.flatten() {
            if !e.file_type().is_file() || folders.base_of(e.path()).is_none() {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let age = m
                .modified()
                .ok()
                .and_then(|t| wall.duration_since(t).ok())
                .unwrap_or_default();
            found.push((e.into_path(), (mtime_ns(&m), m.size()), age));
        }
    }
    let mut t = tracker.lock().expect("tracker lock");
    for (p, sig, age) in found {
        t.seen(p, sig, age, now);
    }
}

/// A complete file, stat'ed.
#[derive(Debug, Clone)]
struct Found {
    path: PathBuf,
    path_str: String,
    /// Inode, modification time and size: a file put again under the same name is another
    /// version. (Not the device, which a network filesystem numbers per client, nor the
    /// change time, which a chmod moves.)
    version: String,
    ino: u64,
    base: PathBuf,
    relative_dir: String,
    file_name: String,
    size: u64,
    mtime_ns: i128,
    /// Handed as bytes, never decoded (`binary_patterns`).
    binary: bool,
}

impl Found {
    /// Whether `m` is still the version that was claimed.
    fn same(&self, m: &std::fs::Metadata) -> bool {
        m.ino() == self.ino && m.size() == self.size && mtime_ns(m) == self.mtime_ns
    }
}

/// What a look at the complete files found.
#[derive(Default)]
struct Looked {
    /// The files to hand, oldest first.
    found: Vec<Found>,
    /// Files only a scan saw that changed since: not complete after all.
    changed: Vec<(PathBuf, Sig)>,
    /// Files whose path is not UTF-8: they cannot be named to a service.
    unnamed: Vec<(PathBuf, PathBuf)>,
}

fn look(folders: &Folders, paths: Vec<(PathBuf, Option<Sig>)>) -> Looked {
    let mut out = Looked::default();
    for (path, sig) in paths {
        let Some(base) = folders.base_of(&path).map(|b| b.dir.clone()) else {
            continue;
        };
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.file_type().is_file() {
            continue;
        }
        let now_sig = (mtime_ns(&m), m.size());
        if sig.is_some_and(|s| s != now_sig) {
            out.changed.push((path, now_sig));
            continue;
        }
        let Some(path_str) = path.to_str().map(str::to_owned) else {
            out.unnamed.push((path, base));
            continue;
        };
        let relative_dir = path
            .parent()
            .and_then(|p| p.strip_prefix(&base).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let binary = folders.matcher.binary(&file_name);
        out.found.push(Found {
            version: format!("{}:{}:{}", m.ino(), now_sig.0, m.size()),
            ino: m.ino(),
            path,
            path_str,
            base,
            relative_dir,
            file_name,
            size: m.size(),
            binary,
            mtime_ns: now_sig.0,
        });
    }
    // Arrival order: the oldest last change first; the path breaks ties (timestamps are
    // coarser than a fast writer).
    out.found
        .sort_by(|a, b| (a.mtime_ns, &a.path).cmp(&(b.mtime_ns, &b.path)));
    out
}

/// Holds the lease `epoch` until `stop` (true: let go of it) or until it is lost (false).
async fn hold(
    cx: &Cx,
    def: &FileChannel,
    epoch: i64,
    stop: &mut watch::Receiver<bool>,
    status: &Arc<Status>,
) -> bool {
    let lost = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let renewer = tokio::spawn(renew(
        cx.clone(),
        def.name.clone(),
        epoch,
        lost.clone(),
        wake.clone(),
        status.clone(),
    ));
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _renewer = AbortOnDrop(renewer);
    let _ = cx
        .store
        .files_prune(&def.name, unix_ms() - PRUNE_AFTER.as_millis() as i64)
        .await;
    let folders = Arc::new(Folders::new(def));
    let tracker = status.tracker.clone();
    let flags = Arc::new(Flags::default());
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut next_rescan = Instant::now() + RESCAN;
    let mut move_retry = MOVE_RETRY;
    loop {
        if *stop.borrow() {
            return true;
        }
        if lost.load(Ordering::Acquire) {
            return false;
        }
        // The watch: (re)made with the folders when there is none or a watched folder went.
        if watcher.is_none() || flags.rewatch.swap(false, Ordering::AcqRel) {
            watcher = None;
            let (f, t, w, fl) = (
                folders.clone(),
                tracker.clone(),
                wake.clone(),
                flags.clone(),
            );
            match tokio::task::spawn_blocking(move || start_watch(&f, &t, &w, &fl)).await {
                Ok(Ok(w)) => {
                    watcher = Some(w);
                    flags.rescan.store(true, Ordering::Release);
                    status.set("holding", Some(cx.server.clone()), Some(epoch));
                }
                Ok(Err(e)) => {
                    status.error(e);
                    pause(stop).await;
                    continue;
                }
                Err(e) => {
                    status.error(format!("the watch could not be made: {e}"));
                    pause(stop).await;
                    continue;
                }
            }
        }
        if flags.rescan.swap(false, Ordering::AcqRel) || Instant::now() >= next_rescan {
            next_rescan = Instant::now() + RESCAN;
            let (f, t) = (folders.clone(), tracker.clone());
            let _ = tokio::task::spawn_blocking(move || scan(&f, &t)).await;
        }
        let ready = tracker
            .lock()
            .expect("tracker lock")
            .take_ready(Instant::now());
        if ready.is_empty() {
            let deadline = tracker
                .lock()
                .expect("tracker lock")
                .next_deadline()
                .map_or(next_rescan, |d| d.min(next_rescan));
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let put_back = |paths: Vec<PathBuf>| {
            tracker
                .lock()
                .expect("tracker lock")
                .put_back(paths, Instant::now());
        };
        let ready_paths = || ready.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        let Some(pool) = cx.pool.get() else {
            status.error("this server has no worker pool yet".into());
            put_back(ready_paths());
            pause(stop).await;
            continue;
        };
        if !pool.has_service(&def.service) {
            status.error(format!(
                "service {} is not deployed: files wait until it is",
                def.service
            ));
            put_back(ready_paths());
            pause(stop).await;
            continue;
        }
        let f = folders.clone();
        let looked = tokio::task::spawn_blocking(move || look(&f, ready))
            .await
            .unwrap_or_default();
        if !looked.changed.is_empty() {
            let now = Instant::now();
            let mut t = tracker.lock().expect("tracker lock");
            for (p, sig) in looked.changed {
                t.changed(p, sig, now);
            }
        }
        if !looked.unnamed.is_empty() {
            fail_unnamed(def, looked.unnamed, status).await;
        }
        let mut chunks = looked.found.chunks(BATCH);
        while let Some(chunk) = chunks.next() {
            match batch(cx, def, epoch, pool, chunk, stop, status, &lost).await {
                Ok(()) => {}
                Err(Stopped::Lost) => return false,
                Err(Stopped::Store(e)) => {
                    // This chunk and the later ones wait, in their order, for the store.
                    status.error(format!("the store did not answer: {e}"));
                    let rest = chunk
                        .iter()
                        .chain(chunks.by_ref().flatten())
                        .map(|f| f.path.clone())
                        .collect();
                    put_back(rest);
                    pause(stop).await;
                    break;
                }
                Err(Stopped::Stop) => return true,
            }
            if !status.moves_failed.load(Ordering::Acquire) {
                continue;
            }
            // A move failed: the file stays with its outcome recorded; a rescan moves it, in
            // 5 s, then 10, 20, 40, 60 s (for the rest of this holding) while moves fail.
            status.moves_failed.store(false, Ordering::Release);
            next_rescan = next_rescan.min(Instant::now() + move_retry);
            move_retry = (move_retry * 2).min(RESCAN);
        }
    }
}

/// Files whose path is not UTF-8 go to the failed folder, saying why, without a call.
async fn fail_unnamed(def: &FileChannel, files: Vec<(PathBuf, PathBuf)>, status: &Status) {
    let def = def.clone();
    let errors = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        for (path, base) in files {
            let reason = format!(
                "the file's path is not UTF-8 ({}): it cannot be named to service {}; rename it",
                path.display(),
                def.service
            );
            warn!(channel = %def.name, path = %path.display(), "file channel: a path that is not UTF-8 goes to the failed folder");
            let rel = path
                .parent()
                .and_then(|p| p.strip_prefix(&base).ok())
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
            let dir = def
                .target_dir(&base.to_string_lossy(), true)
                .join(rel);
            if let Err(e) = place(&path, &dir, &name, Some(&reason), None) {
                errors.push(e);
            }
        }
        errors
    })
    .await
    .unwrap_or_default();
    if let Some(e) = errors.first() {
        status.error(e.clone());
    }
}

async fn pause(stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => {}
        _ = stop.changed() => {}
    }
}

/// What the watch tells the channel's loop besides the tracker.
#[derive(Debug, Default)]
struct Flags {
    /// Events were lost, or a folder arrived whose files may predate its watch: walk again.
    rescan: AtomicBool,
    /// A watched folder went (deleted, renamed): make the watch again.
    rewatch: AtomicBool,
}

fn start_watch(
    folders: &Arc<Folders>,
    tracker: &Arc<Mutex<Tracker>>,
    wake: &Arc<Notify>,
    flags: &Arc<Flags>,
) -> Result<notify::RecommendedWatcher, String> {
    for b in &folders.bases {
        std::fs::create_dir_all(&b.dir)
            .map_err(|e| format!("folder {}: cannot create it: {e}", b.dir.display()))?;
    }
    let (f, t, w, fl) = (
        folders.clone(),
        tracker.clone(),
        wake.clone(),
        flags.clone(),
    );
    let handler = move |ev: notify::Result<notify::Event>| {
        let ev = match ev {
            Ok(ev) => ev,
            Err(_) => {
                fl.rescan.store(true, Ordering::Release);
                w.notify_one();
                return;
            }
        };
        let gone = matches!(
            ev.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        ) && ev.paths.iter().any(|p| f.is_base(p));
        if gone {
            fl.rewatch.store(true, Ordering::Release);
        }
        let arrived_folder = f.recursive
            && match ev.kind {
                EventKind::Create(CreateKind::Folder) => true,
                EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                    ev.paths.last().is_some_and(|p| p.is_dir())
                }
                _ => false,
            };
        if gone || ev.need_rescan() || arrived_folder {
            fl.rescan.store(true, Ordering::Release);
            w.notify_one();
        }
        let mut any = false;
        let now = Instant::now();
        let mut t = t.lock().expect("tracker lock");
        for (path, touch) in touches(&ev) {
            if f.base_of(&path).is_some() {
                t.touch(path, touch, now);
                any = true;
            }
        }
        drop(t);
        if any {
            w.notify_one();
        }
    };
    // Links are not followed: a linked folder's files are not the channel's.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(handler, config)
        .map_err(|e| format!("cannot watch: {e}"))?;
    let mode = if folders.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    for b in &folders.bases {
        watcher.watch(&b.dir, mode).map_err(|e| {
            format!(
                "folder {}: cannot watch it: {e} (the kernel's limit of watches: \
                 fs.inotify.max_user_watches)",
                b.dir.display()
            )
        })?;
    }
    Ok(watcher)
}

/// Keeps the lease: `lost` once it was taken over or could not be renewed before it expired.
async fn renew(
    cx: Cx,
    name: String,
    epoch: i64,
    lost: Arc<AtomicBool>,
    wake: Arc<Notify>,
    status: Arc<Status>,
) {
    let mut held_until = Instant::now() + LEASE_TTL;
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        let asked = Instant::now();
        let renewed = tokio::time::timeout(
            LEASE_TTL / 3,
            cx.store
                .file_lease_renew(&name, &cx.server, epoch, unix_ms(), LEASE_TTL),
        )
        .await;
        match renewed {
            Ok(Ok(true)) => held_until = asked + LEASE_TTL,
            Ok(Ok(false)) => break,
            Ok(Err(e)) => status.error(format!("the lease could not be renewed: {e}")),
            Err(_) => {
                status.error("the lease could not be renewed: the store did not answer".into())
            }
        }
        // Stop before it may have expired: another server could take over.
        if Instant::now() + LEASE_TTL / 3 >= held_until {
            break;
        }
    }
    warn!(channel = %name, epoch, "file channel: the lease is lost; files in flight are handed again by its next holder");
    lost.store(true, Ordering::Release);
    wake.notify_one();
}

enum Stopped {
    Stop,
    Lost,
    Store(crate::store::StoreError),
}

/// What became of one claimed file.
#[derive(Debug)]
enum Fate {
    /// Its outcome is recorded (now or before): move it.
    Recorded(Option<String>),
    /// Handed now: record this outcome (None: done), then move it.
    Handled(Option<String>),
    /// Not handed: the channel stopped first (or lost its lease), or the file is not the
    /// version claimed any more (replaced, gone). Its row is forgotten.
    Skipped,
    /// Handed, and its worker was stopped with the server before it answered: neither
    /// recorded nor forgotten, so the next holding hands it again, marked redelivered.
    Interrupted,
}

#[allow(clippy::too_many_arguments)]
async fn batch(
    cx: &Cx,
    def: &FileChannel,
    epoch: i64,
    pool: &Arc<Pool>,
    files: &[Found],
    stop: &watch::Receiver<bool>,
    status: &Arc<Status>,
    lost: &AtomicBool,
) -> Result<(), Stopped> {
    let keys: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.path_str.clone(), f.version.clone()))
        .collect();
    let claims = match cx
        .store
        .files_claim(&def.name, &cx.server, epoch, &keys, unix_ms())
        .await
    {
        Ok(Some(c)) => c,
        Ok(None) => return Err(Stopped::Lost),
        Err(e) => return Err(Stopped::Store(e)),
    };
    // Small files are read a few at a time just ahead of their calls (one blocking task per
    // group: a hop to the blocking pool per file costs more than the read), so what a call
    // gets was checked to be the claimed version moments before.
    let claims: Vec<Claimed> = claims;
    let mut prefetched: Vec<Option<ReadOutcome>> = (0..files.len()).map(|_| None).collect();
    let mut read_upto = 0;
    let mut results: Vec<Fate> = Vec::with_capacity(files.len());
    let mut running = futures_util::stream::FuturesOrdered::new();
    let mut next = 0;
    loop {
        while running.len() < def.parallel as usize && next < files.len() {
            if next >= read_upto {
                let end = (next + PREFETCH_AHEAD).min(files.len());
                let small: Vec<(usize, Found)> = (next..end)
                    .filter(|&i| {
                        matches!(claims[i], Claimed::Take { .. }) && files[i].size <= PREFETCH_BYTES
                    })
                    .map(|i| (i, files[i].clone()))
                    .collect();
                if !small.is_empty() {
                    let d = def.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        small
                            .into_iter()
                            .map(|(i, f)| (i, read_now(&d, &f)))
                            .collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                    for (i, r) in read {
                        prefetched[i] = Some(r);
                    }
                }
                read_upto = end;
            }
            let pre = prefetched[next].take();
            running.push_back(fate(
                def,
                pool,
                &files[next],
                claims[next].clone(),
                pre,
                stop,
                status,
                lost,
            ));
            next += 1;
        }
        match running.next().await {
            Some(r) => results.push(r),
            None => break,
        }
    }
    // Record what was handed, in one transaction, before any file moves. A store that does
    // not answer now is asked again: the calls were made, their outcomes must not be lost
    // (the files would be handed twice). An outcome recorded after the lease was lost is
    // still taken, unless another server took the file meanwhile.
    let outcomes: Vec<Outcome<'_>> = files
        .iter()
        .zip(&results)
        .filter_map(|(f, r)| match r {
            Fate::Handled(o) => Some(Outcome {
                path: &f.path_str,
                version: &f.version,
                failed: o.as_deref(),
            }),
            _ => None,
        })
        .collect();
    // Once the channel is stopping, a few more tries: the rows then stay `taken` and the
    // next holding hands those files again, redelivered.
    let recorded = if outcomes.is_empty() {
        Vec::new()
    } else {
        let mut tries_stopping = 0;
        loop {
            match cx.store.files_finish(&def.name, epoch, &outcomes).await {
                Ok(r) => break r,
                Err(e) => {
                    status.error(format!("outcomes not recorded yet: {e}"));
                    if *stop.borrow() {
                        tries_stopping += 1;
                        if tries_stopping > 10 {
                            return Err(Stopped::Stop);
                        }
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    };
    let mut recorded = recorded.into_iter();
    let (mut done, mut failed) = (0u64, 0u64);
    let mut moves: Vec<(Found, Option<String>)> = Vec::new();
    let mut unhanded: Vec<(String, String)> = Vec::new();
    for (f, r) in files.iter().zip(results) {
        match r {
            Fate::Recorded(o) => moves.push((f.clone(), o)),
            Fate::Handled(o) => {
                if recorded.next() == Some(true) {
                    match &o {
                        None => done += 1,
                        Some(_) => failed += 1,
                    };
                    moves.push((f.clone(), o));
                }
            }
            Fate::Skipped => unhanded.push((f.path_str.clone(), f.version.clone())),
            Fate::Interrupted => {}
        }
    }
    status.done.fetch_add(done, Ordering::Relaxed);
    status.failed.fetch_add(failed, Ordering::Relaxed);
    if cx.metrics.enabled() {
        for (outcome, n) in [("done", done), ("failed", failed)] {
            if n > 0 {
                cx.metrics.inbound.messages_n("file", &def.name, outcome, n);
            }
        }
    }
    if let Some((f, _)) = moves.last() {
        status.inner.lock().expect("status lock").last_file = Some(f.path_str.clone());
    }
    let def2 = def.clone();
    let (moved, errors) = tokio::task::spawn_blocking(move || {
        let mut moved = Vec::new();
        let mut errors = Vec::new();
        for (f, outcome) in moves {
            match move_away(&def2, &f, outcome.as_deref()) {
                Ok(()) => moved.push((f.path_str, f.version)),
                Err(e) => errors.push(e),
            }
        }
        (moved, errors)
    })
    .await
    .unwrap_or_default();
    if let Some(e) = errors.first() {
        status.moves_failed.store(true, Ordering::Release);
        status.error(format!(
            "{} file(s) could not be moved away (tried again shortly): {e}",
            errors.len()
        ));
    }
    // Files claimed and never handed: forgotten (while still this holding's), so the next
    // look hands them as new rather than as redelivered.
    if let Err(e) = cx
        .store
        .files_forget(&def.name, &cx.server, epoch, &moved, &unhanded)
        .await
    {
        // Harmless: a row of a file moved away is only looked at if that file comes back.
        status.error(format!("rows of moved files not forgotten: {e}"));
    } else if errors.is_empty() {
        status.inner.lock().expect("status lock").last_error = None;
    }
    if *stop.borrow() {
        return Err(Stopped::Stop);
    }
    if lost.load(Ordering::Acquire) {
        return Err(Stopped::Lost);
    }
    Ok(())
}

/// What becomes of one claimed file.
#[allow(clippy::too_many_arguments)]
async fn fate(
    def: &FileChannel,
    pool: &Arc<Pool>,
    f: &Found,
    claim: Claimed,
    prefetched: Option<ReadOutcome>,
    stop: &watch::Receiver<bool>,
    status: &Status,
    lost: &AtomicBool,
) -> Fate {
    match claim {
        Claimed::Done => Fate::Recorded(None),
        Claimed::Failed(r) => Fate::Recorded(Some(r)),
        Claimed::Take { redelivered } => {
            if *stop.borrow() || lost.load(Ordering::Acquire) {
                return Fate::Skipped;
            }
            match hand(def, pool, f, prefetched, redelivered, stop, lost, status).await {
                Handed::Outcome(outcome) => {
                    if redelivered {
                        status.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Fate::Handled(outcome)
                }
                Handed::Not => Fate::Skipped,
                Handed::Interrupted => Fate::Interrupted,
            }
        }
    }
}

/// Reads the claimed version of `f`: None when the file is not that version any more (gone,
/// replaced, rewritten), else its bytes or why it cannot be handed. One blocking task for
/// the open, the check on the open file and the read.
async fn read(def: &FileChannel, f: &Found) -> ReadOutcome {
    let (def, f) = (def.clone(), f.clone());
    tokio::task::spawn_blocking(move || read_now(&def, &f))
        .await
        .unwrap_or_else(|e| Some(Err(format!("the file could not be read: {e}"))))
}

/// [`read`], blocking.
fn read_now(def: &FileChannel, claimed: &Found) -> ReadOutcome {
    use std::io::Read;
    let max = def.max_bytes;
    let file = match std::fs::File::open(&claimed.path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("the file could not be opened: {e}"))),
    };
    match file.metadata() {
        Ok(m) if claimed.same(&m) => {}
        Ok(_) => return None,
        Err(e) => return Some(Err(format!("the file could not be read: {e}"))),
    }
    if !def.read_on_pickup {
        return Some(Ok(Vec::new()));
    }
    if claimed.size > max {
        return Some(Err(too_large(def, claimed.size)));
    }
    // At most max_bytes + 1, whatever the file grew to since.
    let mut body = Vec::with_capacity(claimed.size as usize);
    if let Err(e) = file.take(max + 1).read_to_end(&mut body) {
        return Some(Err(format!("the file could not be read: {e}")));
    }
    if body.len() as u64 > max {
        return Some(Err(format!(
            "the file grew past the channel's max_bytes ({max}) while it was read"
        )));
    }
    Some(Ok(body))
}

/// What reading a claimed file came to (see [`read`]).
type ReadOutcome = Option<Result<Vec<u8>, String>>;

/// Small files of a batch are read together, in one blocking task, before their calls (a
/// hop to the blocking pool per file costs more than the read); larger ones each in turn.
const PREFETCH_BYTES: u64 = 64 * 1024;
/// How many files ahead of the calls small files are read.
const PREFETCH_AHEAD: usize = 16;

fn too_large(def: &FileChannel, size: u64) -> String {
    format!(
        "the file's {size} bytes are over the channel's max_bytes ({}): raise max_bytes, or set \
         read_on_pickup false and read the file in the service",
        def.max_bytes
    )
}

/// What a hand-over came to.
enum Handed {
    /// The call's outcome (None: done), or why the file cannot be handed (a failure).
    Outcome(Option<String>),
    /// Not handed: the channel stopped or lost its lease before the call could be made, or
    /// the file is not the version claimed.
    Not,
    /// Handed, and the worker was stopped with the server before it answered.
    Interrupted,
}

/// Hands one file to the service.
#[allow(clippy::too_many_arguments)]
async fn hand(
    def: &FileChannel,
    pool: &Arc<Pool>,
    f: &Found,
    prefetched: Option<ReadOutcome>,
    redelivered: bool,
    stop: &watch::Receiver<bool>,
    lost: &AtomicBool,
    status: &Status,
) -> Handed {
    let read = match prefetched {
        Some(r) => r,
        None => read(def, f).await,
    };
    let body = match read {
        None => return Handed::Not,
        Some(Ok(b)) => b,
        Some(Err(reason)) => return Handed::Outcome(Some(reason)),
    };
    let ts_utc = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    // Zato's base_dir is the file's own folder; the watched one is `watched_dir`.
    let file_dir = f
        .path
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta_json = json!({
        "full_path": f.path_str,
        "file_name": f.file_name,
        "relative_dir": f.relative_dir,
        "base_dir": file_dir,
        "watched_dir": f.base.to_string_lossy(),
        "ts_utc": ts_utc,
        "size": f.size,
        "mtime_ns": f.mtime_ns as i64,
        "has_raw_data": def.read_on_pickup,
        "binary": f.binary,
        "data_encoding": def.data_encoding,
        "parse_with": if def.parse_on_pickup { def.parse_with.as_deref() } else { None },
        "redelivered": redelivered,
    });
    let cid = crate::random::random_hex(12);
    let meta: oxbus_ipc::InvokeMeta<'_> = oxbus_ipc::InvokeMeta {
        op: "invoke",
        service: &def.service,
        cid: &cid,
        channel: Some("file-transfer"),
        data_format: Some("raw"),
        method: None,
        path: None,
        params: None,
        query: None,
        headers: None,
        deadline_ms: Some(def.timeout_ms),
        remote_addr: None,
        scheme: None,
        port: None,
        channel_name: Some(&def.name),
        security: None,
        traceparent: None,
        tracestate: None,
        pubsub: None,
        mqtt: None,
        amqp: None,
        wsx: None,
        file: Some(&meta_json),
        params_priority: None,
        job_type: None,
    };
    loop {
        let deadline = Instant::now() + Duration::from_millis(def.timeout_ms);
        let transient = match pool.invoke(&meta, &body, deadline).await {
            Ok(r) if r.status < 400 && r.exc.is_none() && r.error.is_none() => {
                return Handed::Outcome(None);
            }
            Ok(r) if r.error.as_deref() == Some(oxbus_ipc::REPLY_ERROR_NO_SERVICE) => {
                format!("service {} is not deployed", def.service)
            }
            Ok(r) => return Handed::Outcome(Some(failure_reason(&def.service, r.status, &r.body))),
            Err(e @ (DispatchError::Busy | DispatchError::QueueTimeout)) => e.to_string(),
            // Workers are retired or killed when the server stops: not the file's fault.
            Err(DispatchError::WorkerDied) if *stop.borrow() => return Handed::Interrupted,
            Err(DispatchError::WorkerDied) => {
                return Handed::Outcome(Some(format!(
                    "the worker running service {} died (a crash, an exit or a kill)",
                    def.service
                )));
            }
            Err(DispatchError::Deadline) => {
                return Handed::Outcome(Some(format!(
                    "service {} did not return within timeout_ms ({} ms)",
                    def.service, def.timeout_ms
                )));
            }
            Err(DispatchError::TooLarge) => {
                return Handed::Outcome(Some(
                    "the file is too large for a worker call: set read_on_pickup false".into(),
                ));
            }
        };
        // Not the file's fault: the same call again, unless the channel stops or another
        // server may have taken the file. (Said once per reason, not once per file.)
        status.error(format!(
            "the service cannot be called now ({transient}): trying again"
        ));
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() || lost.load(Ordering::Acquire) {
            return Handed::Not;
        }
    }
}

/// The reason a failed call gives, for `<name>.error.txt`: the exception and its traceback
/// when the worker sent them (it does for this channel), else the error answer itself.
fn failure_reason(service: &str, status: u16, body: &[u8]) -> String {
    // A NUL is no text to PostgreSQL (nor to the note's reader).
    let cap = |s: &str| -> String {
        let s = s.replace('\0', "\\0");
        let s = s.as_str();
        if s.len() <= REASON_BYTES {
            return s.to_owned();
        }
        let mut end = REASON_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… (cut at {REASON_BYTES} bytes)", &s[..end])
    };
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
        let cid = doc["cid"].as_str().unwrap_or("");
        if let Some(exc) = doc["exception"].as_str() {
            return cap(&format!(
                "service {service} failed (status {status}, cid {cid}): {exc}\n\n{}",
                doc["traceback"].as_str().unwrap_or("")
            ));
        }
        if let Some(e) = doc["error"].as_str() {
            return cap(&format!(
                "service {service} answered {status} (cid {cid}): {e}"
            ));
        }
    }
    cap(&format!(
        "service {service} answered {status}: {}",
        String::from_utf8_lossy(body)
    ))
}

/// Moves a file whose outcome is recorded: to the processed folder (or deleted), or to the
/// failed folder with `<name>.error.txt` beside it. A file gone, or no longer the version
/// handed (replaced meanwhile: the new one is handed on its own), is left alone.
fn move_away(def: &FileChannel, f: &Found, failed: Option<&str>) -> Result<(), String> {
    match std::fs::symlink_metadata(&f.path) {
        Ok(m) if f.same(&m) => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", f.path_str)),
    }
    let named = |e: String| {
        if e.contains(&f.path_str) {
            e
        } else {
            format!("{}: {e}", f.path_str)
        }
    };
    if failed.is_none() && def.after == After::Delete {
        return delete(f).map_err(named);
    }
    let dir = def
        .target_dir(&f.base.to_string_lossy(), failed.is_some())
        .join(&f.relative_dir);
    place(
        &f.path,
        &dir,
        std::ffi::OsStr::new(&f.file_name),
        failed,
        Some(f),
    )
    .map_err(named)
}

/// Deletes the claimed version of `f`.
fn delete(f: &Found) -> Result<(), String> {
    remove_claimed(&f.path, Some(f.ino))
}

/// Removes the file at `path` if it is inode `ino` (None: whatever is there): first renamed
/// aside under a short hidden name (one inode, whatever replaces the name meanwhile),
/// checked, then unlinked; another file is put back under its name.
fn remove_claimed(path: &Path, ino: Option<u64>) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let aside = dir.join(format!(".oxbus-rm-{}", crate::random::random_hex(8)));
    match rename_no_replace(path, &aside) {
        Ok(()) => {}
        Err(Move::Gone) => return Ok(()),
        Err(e) => return Err(format!("cannot remove it: {}", e.text(path, &aside))),
    }
    match std::fs::symlink_metadata(&aside) {
        Ok(m) if ino.is_none_or(|i| m.ino() == i) => std::fs::remove_file(&aside)
            .map_err(|e| format!("{}: cannot remove it: {e}", aside.display())),
        _ => {
            // Replaced between the check and the rename: not ours, back under its name.
            rename_no_replace(&aside, path).map_err(|e| {
                format!(
                    "a file that replaced the one handed is left as {}: {}",
                    aside.display(),
                    e.text(&aside, path)
                )
            })
        }
    }
}

/// Why a rename did not happen.
#[derive(Debug)]
enum Move {
    /// The target exists.
    Exists,
    /// The source is not there.
    Gone,
    /// Another filesystem.
    CrossDevice,
    Other(std::io::Error),
}

impl Move {
    fn text(&self, from: &Path, to: &Path) -> String {
        let why = match self {
            Move::Exists => "the target exists".to_owned(),
            Move::Gone => "the file is gone".to_owned(),
            Move::CrossDevice => "another filesystem".to_owned(),
            Move::Other(e) => e.to_string(),
        };
        format!("{} → {}: {why}", from.display(), to.display())
    }
}

fn move_error(e: std::io::Error) -> Move {
    match e.raw_os_error() {
        Some(nix::libc::EEXIST) => Move::Exists,
        Some(nix::libc::ENOENT) => Move::Gone,
        Some(nix::libc::EXDEV) => Move::CrossDevice,
        _ => Move::Other(e),
    }
}

/// Renames `from` to `to` unless `to` exists: atomically where the filesystem can
/// (`renameat2(RENAME_NOREPLACE)`); else by a hard link and an unlink; else (no hard links,
/// or `protected_hardlinks` refusing one to a file this server does not own) by a check
/// and a rename.
fn rename_no_replace(from: &Path, to: &Path) -> Result<(), Move> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {}
            Err(e) => return Err(move_error(std::io::Error::from(e))),
        }
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            return match std::fs::remove_file(from) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Move::Other(e)),
            };
        }
        Err(e) => match e.raw_os_error() {
            Some(nix::libc::EPERM | nix::libc::EOPNOTSUPP | nix::libc::EMLINK) => {}
            _ => return Err(move_error(e)),
        },
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(Move::Exists);
    }
    std::fs::rename(from, to).map_err(move_error)
}

/// `dir/name`, else `name.1`, `name.2`…
fn candidate(dir: &Path, name: &std::ffi::OsStr, i: u32) -> PathBuf {
    if i == 0 {
        return dir.join(name);
    }
    let mut n = name.to_owned();
    n.push(format!(".{i}"));
    dir.join(n)
}

fn note_of(target: &Path) -> PathBuf {
    let mut note = target.as_os_str().to_owned();
    note.push(".error.txt");
    PathBuf::from(note)
}

/// Puts `path` into `dir` under `name` — or `name.1`, `name.2`… when taken: never over
/// another file — and, for a failure, `reason` beside it as `<name>.error.txt` (written
/// first, under a free name too). `claimed`: the version expected at `path`; a different one
/// found moved (replaced meanwhile) is put back.
fn place(
    path: &Path,
    dir: &Path,
    name: &std::ffi::OsStr,
    failed: Option<&str>,
    claimed: Option<&Found>,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let source = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for i in 0u32..10_000 {
        let target = candidate(dir, name, i);
        let note = note_of(&target);
        if let Some(reason) = failed {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&note)
            {
                Ok(mut w) => {
                    use std::io::Write;
                    if let Err(e) = w.write_all(format!("{reason}\n").as_bytes()) {
                        let _ = std::fs::remove_file(&note);
                        return Err(format!("{}: {e}", note.display()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("{}: {e}", note.display())),
            }
        }
        let drop_note = || {
            if failed.is_some() {
                let _ = std::fs::remove_file(&note);
            }
        };
        match rename_no_replace(path, &target) {
            Ok(()) => {
                // What moved is the version claimed, unless the name was replaced between
                // the check and the rename: then that one goes back, for its own turn.
                if let Some(f) = claimed
                    && std::fs::symlink_metadata(&target).is_ok_and(|m| !f.same(&m))
                {
                    drop_note();
                    return rename_no_replace(&target, path).map_err(|e| {
                        format!(
                            "a file that replaced the one handed was moved to {}: {}",
                            target.display(),
                            e.text(&target, path)
                        )
                    });
                }
                return Ok(());
            }
            Err(Move::Gone) => {
                drop_note();
                return Ok(());
            }
            Err(Move::Exists) => {
                drop_note();
                // Linked before a stop cut the move short (the hard-link fallback): the
                // same file, only the removal is left.
                if std::fs::symlink_metadata(&target)
                    .is_ok_and(|m| m.ino() == source.ino() && m.dev() == source.dev())
                {
                    return remove_claimed(path, Some(source.ino()));
                }
            }
            Err(Move::CrossDevice) => match copy_across(path, &target, claimed) {
                Ok(Copied::Placed) => return Ok(()),
                Ok(Copied::NotClaimed) => {
                    drop_note();
                    return Ok(());
                }
                Ok(Copied::Taken) => drop_note(),
                Err(e) => {
                    drop_note();
                    return Err(e);
                }
            },
            Err(e) => {
                drop_note();
                return Err(e.text(path, &target));
            }
        }
    }
    Err(format!(
        "{}: no free name in {}",
        path.display(),
        dir.display()
    ))
}

/// What a copy to another filesystem came to.
enum Copied {
    /// Copied (synced) into place and the source removed.
    Placed,
    /// The target name is taken: try the next.
    Taken,
    /// The file at the path is not the version claimed: left alone.
    NotClaimed,
}

/// Another filesystem: the claimed version (checked on the open file) copied under a unique
/// hidden name, synced, renamed into place (never over a file), the folder synced, and only
/// then the source removed (if it is still that file). A crash in between leaves the source
/// in place, at worst with a second copy in the target folder; never no copy at all.
fn copy_across(path: &Path, target: &Path, claimed: Option<&Found>) -> Result<Copied, String> {
    use std::io::Write;
    let fail = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    let mut from = std::fs::File::open(path).map_err(|e| fail(path, e))?;
    let meta = from.metadata().map_err(|e| fail(path, e))?;
    if claimed.is_some_and(|f| !f.same(&meta)) {
        return Ok(Copied::NotClaimed);
    }
    let dir = target.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".oxbus-cp-{}", crate::random::random_hex(8)));
    let copied = (|| -> std::io::Result<()> {
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        std::io::copy(&mut from, &mut to)?;
        to.flush()?;
        if let Ok(t) = meta.modified() {
            let _ = to.set_modified(t);
        }
        to.set_permissions(meta.permissions())?;
        to.sync_all()
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(&tmp, e));
    }
    match rename_no_replace(&tmp, target) {
        Ok(()) => {}
        Err(Move::Exists) => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Copied::Taken);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.text(&tmp, target));
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    remove_claimed(path, Some(meta.ino()))
        .map(|()| Copied::Placed)
        .map_err(|e| {
            format!(
                "{}: copied to {}, but {e}",
                path.display(),
                target.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_touches() {
        let ev = |k: EventKind, p: &[&str]| {
            let mut e = notify::Event::new(k);
            for x in p {
                e = e.add_path(PathBuf::from(x));
            }
            touches(&e)
        };
        let a = PathBuf::from("/d/a");
        assert_eq!(
            ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/d/a"]
            ),
            vec![(a.clone(), Touch::Closed)]
        );
        assert!(
            ev(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                &["/d/a"]
            )
            .is_empty()
        );
        assert_eq!(
            ev(EventKind::Create(CreateKind::File), &["/d/a"]),
            vec![(a.clone(), Touch::Written)]
        );
        assert_eq!(
            ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/d/.a.tmp", "/d/a"]
            ),
            vec![
                (PathBuf::from("/d/.a.tmp"), Touch::Gone),
                (a.clone(), Touch::Arrived)
            ]
        );
        assert_eq!(
            ev(
                EventKind::Remove(notify::event::RemoveKind::File),
                &["/d/a"]
            ),
            vec![(a, Touch::Gone)]
        );
    }

    #[test]
    fn only_the_channels_files_count() {
        let def: FileChannel = serde_json::from_value(json!({"name": "c", "service": "s",
            "directories": ["/d"], "patterns": ["*.csv"], "recursive": true}))
        .unwrap();
        let f = Folders::new(&def);
        assert!(f.base_of(Path::new("/d/a.csv")).is_some());
        assert!(f.base_of(Path::new("/d/x/y/a.csv")).is_some());
        assert!(f.base_of(Path::new("/d/processed/a.csv")).is_none());
        assert!(f.base_of(Path::new("/d/failed/x/a.csv")).is_none());
        assert!(f.base_of(Path::new("/d/a.txt")).is_none());
        assert!(f.base_of(Path::new("/e/a.csv")).is_none());
        let flat: FileChannel =
            serde_json::from_value(json!({"name": "c", "service": "s", "directories": ["/d"]}))
                .unwrap();
        let f = Folders::new(&flat);
        assert!(f.base_of(Path::new("/d/a")).is_some());
        assert!(f.base_of(Path::new("/d/x/a")).is_none());
    }

    #[test]
    fn a_move_to_another_filesystem_copies_then_removes() {
        // /dev/shm (tmpfs) and the temp dir (this machine's disk) are two filesystems.
        let src = PathBuf::from(format!(
            "/dev/shm/oxbus-files-{}",
            crate::random::random_hex(6)
        ));
        let dst =
            std::env::temp_dir().join(format!("oxbus-files-{}", crate::random::random_hex(6)));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        assert_ne!(
            std::fs::metadata(&src).unwrap().dev(),
            std::fs::metadata(&dst).unwrap().dev(),
            "the test needs /dev/shm and the temp dir on two filesystems"
        );
        let def: FileChannel = serde_json::from_value(json!({"name": "c", "service": "s",
            "directories": [src.to_str().unwrap()],
            "processed_dir": dst.join("done").to_str().unwrap(),
            "failed_dir": dst.join("bad").to_str().unwrap()}))
        .unwrap();
        let folders = Folders::new(&def);
        for (round, failed) in [(0, None), (1, None), (2, Some("boom"))] {
            std::fs::write(src.join("a.txt"), format!("v{round}")).unwrap();
            let found = look(&folders, vec![(src.join("a.txt"), None)]).found;
            move_away(&def, &found[0], failed).unwrap();
            assert!(!src.join("a.txt").exists());
        }
        assert_eq!(
            std::fs::read_to_string(dst.join("done/a.txt")).unwrap(),
            "v0"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("done/a.txt.1")).unwrap(),
            "v1"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("bad/a.txt")).unwrap(),
            "v2"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("bad/a.txt.error.txt")).unwrap(),
            "boom\n"
        );
        // No hidden copy or removal left behind.
        for d in [dst.join("done"), dst.join("bad"), src.clone()] {
            let left: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().starts_with(".oxbus"))
                .collect();
            assert!(left.is_empty(), "{d:?}: {left:?}");
        }
        std::fs::remove_dir_all(&src).unwrap();
        std::fs::remove_dir_all(&dst).unwrap();
    }

    #[test]
    fn moves_keep_both_files_of_one_name_and_write_the_reason() {
        let tmp =
            std::env::temp_dir().join(format!("oxbus-files-{}", crate::random::random_hex(6)));
        std::fs::create_dir_all(tmp.join("sub")).unwrap();
        let def: FileChannel = serde_json::from_value(json!({"name": "c", "service": "s",
            "directories": [tmp.to_str().unwrap()], "recursive": true}))
        .unwrap();
        let folders = Folders::new(&def);
        for round in 0..2 {
            std::fs::write(tmp.join("sub/a.txt"), format!("v{round}")).unwrap();
            let found = look(&folders, vec![(tmp.join("sub/a.txt"), None)]).found;
            assert_eq!(found[0].relative_dir, "sub");
            move_away(&def, &found[0], None).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(tmp.join("processed/sub/a.txt")).unwrap(),
            "v0"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.join("processed/sub/a.txt.1")).unwrap(),
            "v1"
        );
        std::fs::write(tmp.join("b.txt"), "x").unwrap();
        let found = look(&folders, vec![(tmp.join("b.txt"), None)]).found;
        move_away(&def, &found[0], Some("boom")).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.join("failed/b.txt")).unwrap(),
            "x"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.join("failed/b.txt.error.txt")).unwrap(),
            "boom\n"
        );
        // Gone before its move: nothing to do.
        move_away(&def, &found[0], None).unwrap();
        // Replaced after it was looked at: the new version stays, for its own turn.
        std::fs::write(tmp.join("c.txt"), "old").unwrap();
        let found = look(&folders, vec![(tmp.join("c.txt"), None)]).found;
        std::fs::remove_file(tmp.join("c.txt")).unwrap();
        std::fs::write(tmp.join("c.txt"), "new and longer").unwrap();
        move_away(&def, &found[0], None).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.join("c.txt")).unwrap(),
            "new and longer"
        );
        // Seen by a scan as one thing, something else by its turn: not complete yet.
        let looked = look(&folders, vec![(tmp.join("c.txt"), Some((1, 3)))]);
        assert!(looked.found.is_empty());
        assert_eq!(looked.changed.len(), 1);
        // A writer's hidden folder is not the channel's.
        assert!(folders.base_of(&tmp.join(".incoming/x.txt")).is_none());
        assert!(folders.base_of(&tmp.join("sub/x.txt")).is_some());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
