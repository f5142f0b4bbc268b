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
use super::tracker::{Touch, Tracker};
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

/// What every channel of this server shares.
#[derive(Debug, Clone)]
pub(super) struct Cx {
    pub server: String,
    pub store: Store,
    pub pool: Arc<OnceLock<Arc<Pool>>>,
}

/// A channel's live state, read by [`super::FileChannels::status`].
#[derive(Debug)]
pub(super) struct Status {
    inner: Mutex<StatusInner>,
    done: AtomicU64,
    failed: AtomicU64,
    redelivered: AtomicU64,
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

/// Runs the channel until `stop`: after `previous` (the channel's earlier definition) ended,
/// takes the lease whenever it is free and, while holding it, takes the files.
pub(super) async fn run(
    cx: Cx,
    def: FileChannel,
    mut stop: watch::Receiver<bool>,
    status: Arc<Status>,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(p) = previous {
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
                status.set("holding", Some(cx.server.clone()), Some(epoch));
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
    /// Each watched folder (canonical) and its processed / failed folders.
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

    /// The watched folder a file of the channel's is in, if `path` is one.
    fn base_of(&self, path: &Path) -> Option<&Base> {
        let name = path.file_name()?.to_str()?;
        if !self.matcher.takes(name) {
            return None;
        }
        let parent = path.parent()?;
        self.bases.iter().find(|b| {
            if self.recursive {
                parent.starts_with(&b.dir) && !b.excluded.iter().any(|x| parent.starts_with(x))
            } else {
                parent == b.dir
            }
        })
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
                        || e.file_name().to_string_lossy().starts_with('.'))
            });
        for e in walk.flatten() {
            if !e.file_type().is_file() || folders.base_of(e.path()).is_none() {
                continue;
            }
            let age = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| wall.duration_since(m).ok())
                .unwrap_or_default();
            found.push((e.into_path(), age));
        }
    }
    let mut t = tracker.lock().expect("tracker lock");
    for (p, age) in found {
        t.seen(p, age, now);
    }
}

/// A complete file, stat'ed.
#[derive(Debug, Clone)]
struct Found {
    path: PathBuf,
    path_str: String,
    /// Device, inode, change time and size: a file put again under the same name is
    /// another version.
    version: String,
    base: PathBuf,
    relative_dir: String,
    file_name: String,
    size: u64,
    mtime_ns: i128,
    /// Handed as bytes, never decoded (`binary_patterns`).
    binary: bool,
}

fn stat(folders: &Folders, paths: Vec<PathBuf>) -> Vec<Found> {
    let mut out: Vec<Found> = paths
        .into_iter()
        .filter_map(|path| {
            let base = folders.base_of(&path)?.dir.clone();
            let m = std::fs::symlink_metadata(&path).ok()?;
            if !m.file_type().is_file() {
                return None;
            }
            let path_str = path.to_str()?.to_owned();
            let relative_dir = path
                .parent()
                .and_then(|p| p.strip_prefix(&base).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let file_name = path.file_name()?.to_string_lossy().into_owned();
            let binary = folders.matcher.binary(&file_name);
            Some(Found {
                version: format!(
                    "{}:{}:{}.{}:{}",
                    m.dev(),
                    m.ino(),
                    m.ctime(),
                    m.ctime_nsec(),
                    m.size()
                ),
                path,
                path_str,
                base,
                relative_dir,
                file_name,
                size: m.size(),
                binary,
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            })
        })
        .collect();
    // Arrival order: the oldest last change first; the path breaks ties (timestamps are
    // coarser than a fast writer).
    out.sort_by(|a, b| (a.mtime_ns, &a.path).cmp(&(b.mtime_ns, &b.path)));
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
    let folders = Arc::new(Folders::new(def));
    let tracker = status.tracker.clone();
    let rescan = Arc::new(AtomicBool::new(true));
    // The watch: created (with the folders) until it works or the channel stops.
    let _watcher = loop {
        match start_watch(&folders, &tracker, &wake, &rescan) {
            Ok(w) => break w,
            Err(e) => {
                status.error(e);
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    return true;
                }
                if lost.load(Ordering::Acquire) {
                    return false;
                }
            }
        }
    };
    let mut next_rescan = Instant::now() + RESCAN;
    loop {
        if *stop.borrow() {
            return true;
        }
        if lost.load(Ordering::Acquire) {
            return false;
        }
        if rescan.swap(false, Ordering::AcqRel) || Instant::now() >= next_rescan {
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
        let Some(pool) = cx.pool.get() else {
            status.error("this server has no worker pool yet".into());
            tracker
                .lock()
                .expect("tracker lock")
                .put_back(ready, Instant::now());
            pause(stop).await;
            continue;
        };
        if !pool.has_service(&def.service) {
            status.error(format!(
                "service {} is not deployed: files wait until it is",
                def.service
            ));
            tracker
                .lock()
                .expect("tracker lock")
                .put_back(ready, Instant::now());
            pause(stop).await;
            continue;
        }
        let f = folders.clone();
        let found = tokio::task::spawn_blocking(move || stat(&f, ready))
            .await
            .unwrap_or_default();
        for chunk in found.chunks(BATCH) {
            match batch(cx, def, epoch, pool, chunk, stop, status, &lost).await {
                Ok(()) => {}
                Err(Stopped::Lost) => return false,
                Err(Stopped::Store(e)) => {
                    status.error(format!("the store did not answer: {e}"));
                    tracker
                        .lock()
                        .expect("tracker lock")
                        .put_back(chunk.iter().map(|f| f.path.clone()), Instant::now());
                    pause(stop).await;
                }
                Err(Stopped::Stop) => return true,
            }
        }
    }
}

async fn pause(stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => {}
        _ = stop.changed() => {}
    }
}

fn start_watch(
    folders: &Arc<Folders>,
    tracker: &Arc<Mutex<Tracker>>,
    wake: &Arc<Notify>,
    rescan: &Arc<AtomicBool>,
) -> Result<notify::RecommendedWatcher, String> {
    for b in &folders.bases {
        std::fs::create_dir_all(&b.dir)
            .map_err(|e| format!("folder {}: cannot create it: {e}", b.dir.display()))?;
    }
    let (f, t, w, r) = (
        folders.clone(),
        tracker.clone(),
        wake.clone(),
        rescan.clone(),
    );
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let ev = match ev {
            Ok(ev) => ev,
            Err(_) => {
                r.store(true, Ordering::Release);
                w.notify_one();
                return;
            }
        };
        if ev.need_rescan() || (f.recursive && ev.kind == EventKind::Create(CreateKind::Folder)) {
            // Events were lost, or a new folder's files may predate its watch.
            r.store(true, Ordering::Release);
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
    })
    .map_err(|e| format!("cannot watch: {e}"))?;
    let mode = if folders.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    for b in &folders.bases {
        watcher
            .watch(&b.dir, mode)
            .map_err(|e| format!("folder {}: cannot watch it: {e}", b.dir.display()))?;
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
        match cx
            .store
            .file_lease_renew(&name, &cx.server, epoch, unix_ms(), LEASE_TTL)
            .await
        {
            Ok(true) => held_until = asked + LEASE_TTL,
            Ok(false) => break,
            Err(e) => {
                status.error(format!("the lease could not be renewed: {e}"));
                // Stop before it may have expired: another server could take over.
                if Instant::now() + LEASE_TTL / 3 >= held_until {
                    break;
                }
            }
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
    /// Not handed (the channel stopped first, or it is in flight): leave it.
    Skipped,
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
    // In order, up to `parallel` at once; the results in the files' order.
    let mut results: Vec<Fate> = Vec::with_capacity(files.len());
    let mut running = futures_util::stream::FuturesOrdered::new();
    let mut next = files.iter().zip(claims);
    loop {
        while running.len() < def.parallel as usize {
            match next.next() {
                Some((f, claim)) => {
                    running.push_back(fate(def, pool, f, claim, stop, status, lost))
                }
                None => break,
            }
        }
        match running.next().await {
            Some(r) => results.push(r),
            None => break,
        }
    }
    // Record what was handed, in one transaction, before any file moves.
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
    // A store that does not answer now is asked again: the calls were made, their
    // outcomes must not be lost (the files would be handed twice).
    let recorded = if outcomes.is_empty() {
        Vec::new()
    } else {
        loop {
            match cx.store.files_finish(&def.name, epoch, &outcomes).await {
                Ok(r) => break r,
                Err(e) => {
                    status.error(format!("outcomes not recorded yet: {e}"));
                    if lost.load(Ordering::Acquire) {
                        return Err(Stopped::Lost);
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    };
    let mut recorded = recorded.into_iter();
    let mut moves: Vec<(Found, Option<String>)> = Vec::new();
    let mut unhanded: Vec<(String, String)> = Vec::new();
    for (f, r) in files.iter().zip(results) {
        match r {
            Fate::Recorded(o) => moves.push((f.clone(), o)),
            Fate::Handled(o) => {
                if recorded.next() == Some(true) {
                    match &o {
                        None => status.done.fetch_add(1, Ordering::Relaxed),
                        Some(_) => status.failed.fetch_add(1, Ordering::Relaxed),
                    };
                    moves.push((f.clone(), o));
                }
            }
            Fate::Skipped => {
                if *stop.borrow() {
                    unhanded.push((f.path_str.clone(), f.version.clone()));
                }
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
        status.error(format!(
            "{} file(s) could not be moved away (tried again at the next rescan): {e}",
            errors.len()
        ));
    }
    // Files claimed and never handed (the channel is stopping): forgotten, so the next start
    // hands them as new rather than as redelivered.
    let mut forget = moved;
    forget.extend(unhanded);
    if let Err(e) = cx.store.files_forget(&def.name, &forget).await {
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
async fn fate(
    def: &FileChannel,
    pool: &Arc<Pool>,
    f: &Found,
    claim: Claimed,
    stop: &watch::Receiver<bool>,
    status: &Status,
    lost: &AtomicBool,
) -> Fate {
    match claim {
        Claimed::Done => Fate::Recorded(None),
        Claimed::Failed(r) => Fate::Recorded(Some(r)),
        Claimed::InFlight => Fate::Skipped,
        Claimed::Take { redelivered } => {
            if *stop.borrow() || lost.load(Ordering::Acquire) {
                return Fate::Skipped;
            }
            match hand(def, pool, f, redelivered, stop).await {
                Some(outcome) => {
                    if redelivered {
                        status.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Fate::Handled(outcome)
                }
                None => Fate::Skipped,
            }
        }
    }
}

/// Hands one file to the service: None when the channel stopped before it could be called
/// (no worker free, the service not deployed), else its outcome (None: done).
async fn hand(
    def: &FileChannel,
    pool: &Arc<Pool>,
    f: &Found,
    redelivered: bool,
    stop: &watch::Receiver<bool>,
) -> Option<Option<String>> {
    let read = def.read_on_pickup;
    let body = if read {
        if f.size > def.max_bytes {
            return Some(Some(format!(
                "the file's {} bytes are over the channel's max_bytes ({}): raise max_bytes, or \
                 set read_on_pickup false and read the file in the service",
                f.size, def.max_bytes
            )));
        }
        match tokio::fs::read(&f.path).await {
            Ok(b) => b,
            Err(e) => return Some(Some(format!("the file could not be read: {e}"))),
        }
    } else {
        Vec::new()
    };
    let ts_utc = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    let meta_json = json!({
        "full_path": f.path_str,
        "file_name": f.file_name,
        "relative_dir": f.relative_dir,
        "base_dir": f.base.to_string_lossy(),
        "ts_utc": ts_utc,
        "size": f.size,
        "mtime_ns": f.mtime_ns as i64,
        "has_raw_data": read,
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
    };
    loop {
        let deadline = Instant::now() + Duration::from_millis(def.timeout_ms);
        let transient = match pool.invoke(&meta, &body, deadline).await {
            Ok(r) if r.status < 400 && r.exc.is_none() && r.error.is_none() => return Some(None),
            Ok(r) if r.error.as_deref() == Some(oxbus_ipc::REPLY_ERROR_NO_SERVICE) => {
                format!("service {} is not deployed", def.service)
            }
            Ok(r) => return Some(Some(failure_reason(&def.service, r.status, &r.body))),
            Err(e @ (DispatchError::Busy | DispatchError::QueueTimeout)) => e.to_string(),
            Err(DispatchError::WorkerDied) => {
                return Some(Some(format!(
                    "the worker running service {} died (a crash, an exit or a kill)",
                    def.service
                )));
            }
            Err(DispatchError::Deadline) => {
                return Some(Some(format!(
                    "service {} did not return within timeout_ms ({} ms)",
                    def.service, def.timeout_ms
                )));
            }
            Err(DispatchError::TooLarge) => {
                return Some(Some(
                    "the file is too large for a worker call: set read_on_pickup false".into(),
                ));
            }
        };
        // Not the file's fault: the same call again, unless the channel stops.
        warn!(channel = %def.name, file = %f.path_str, reason = %transient, "file channel: the service cannot be called now; trying again");
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return None;
        }
    }
}

/// The reason a failed call gives, for `<name>.error.txt`: the exception and its traceback
/// when the worker sent them (it does for this channel), else the error answer itself.
fn failure_reason(service: &str, status: u16, body: &[u8]) -> String {
    let body = &body[..body.len().min(REASON_BYTES)];
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
        let cid = doc["cid"].as_str().unwrap_or("");
        if let Some(exc) = doc["exception"].as_str() {
            return format!(
                "service {service} failed (status {status}, cid {cid}): {exc}\n\n{}",
                doc["traceback"].as_str().unwrap_or("")
            );
        }
        if let Some(e) = doc["error"].as_str() {
            return format!("service {service} answered {status} (cid {cid}): {e}");
        }
    }
    format!(
        "service {service} answered {status}: {}",
        String::from_utf8_lossy(body)
    )
}

/// Moves a file whose outcome is recorded: to the processed folder (or deleted), or to the
/// failed folder with `<name>.error.txt` beside it. A file already gone is fine.
fn move_away(def: &FileChannel, f: &Found, failed: Option<&str>) -> Result<(), String> {
    if failed.is_none() && def.after == After::Delete {
        return match std::fs::remove_file(&f.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: cannot delete it: {e}", f.path_str)),
        };
    }
    let dir = def
        .target_dir(&f.base.to_string_lossy(), failed.is_some())
        .join(&f.relative_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let target = free_name(&dir, &f.file_name);
    match std::fs::rename(&f.path, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            // Another filesystem: copy, then remove.
            std::fs::copy(&f.path, &target)
                .and_then(|_| std::fs::remove_file(&f.path))
                .map_err(|e| format!("{} → {}: {e}", f.path_str, target.display()))?;
        }
        Err(e) => return Err(format!("{} → {}: {e}", f.path_str, target.display())),
    }
    if let Some(reason) = failed {
        let mut note = target.clone().into_os_string();
        note.push(".error.txt");
        std::fs::write(&note, format!("{reason}\n"))
            .map_err(|e| format!("{}: {e}", PathBuf::from(&note).display()))?;
    }
    Ok(())
}

/// `dir/name`, or `dir/name.1`, `dir/name.2`… when taken: a file put twice is kept twice.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if std::fs::symlink_metadata(&first).is_err() {
        return first;
    }
    (1..)
        .map(|i| dir.join(format!("{name}.{i}")))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("some suffix is free")
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
            let found = stat(&folders, vec![tmp.join("sub/a.txt")]);
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
        let found = stat(&folders, vec![tmp.join("b.txt")]);
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
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
