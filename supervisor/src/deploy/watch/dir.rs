//! The directory watch: notify's watcher (its thread only `try_send`s into a bounded
//! channel), the run loop that feeds the debouncer, retries and reports to a [`Sink`], and
//! reading a batch's files. It knows no deploy and no HTTP: results go through the sink.

use super::filter::{candidate, classify, module_name};
use super::{Debouncer, MAX_MODULE_BYTES, Note, Outcome, Signal, Sink, Timing, Touch, WatchError};
use notify::{Event, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events queued between notify's thread and the watching task before a rescan is due.
const QUEUE: usize = 1024;

/// First and longest wait before a deploy that could not run is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// Where the module `name` of this directory is read from: `DIR/NAME.py`, the origin a
    /// deploy records for it.
    pub fn origin(dir: &Path, name: &str) -> String {
        dir.join(format!("{name}.py"))
            .to_string_lossy()
            .into_owned()
    }

    pub fn start(dir: &Path) -> Result<DirWatcher, WatchError> {
        let shown = dir;
        let unreadable = |source| WatchError::Unreadable {
            dir: shown.to_owned(),
            source,
        };
        let dir = std::fs::canonicalize(shown).map_err(unreadable)?;
        if !dir.is_dir() {
            return Err(WatchError::NotADirectory(shown.to_owned()));
        }
        std::fs::read_dir(&dir).map_err(unreadable)?;
        let (tx, events) = mpsc::channel(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        // notify's thread: never blocks on the watching task.
        let mut watcher = notify::recommended_watcher(move |ev| {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(ev) {
                flag.store(true, Ordering::Relaxed);
            }
        })
        .map_err(WatchError::Watcher)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                dir: shown.to_owned(),
                source,
            })?;
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
    ) -> Result<(), WatchError> {
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
                    Outcome::Fatal(reason) => return Err(WatchError::Fatal(reason)),
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
                        None => return Err(WatchError::Stopped),
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
                                        return Err(WatchError::DirGone(self.dir.clone()));
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
                    reason: &reason.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(task.await.unwrap(), Ok(())));
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
        let e = r.unwrap_err().to_string();
        assert!(e.contains("deleted or renamed"), "{e}");
        assert!(
            DirWatcher::start(&dir)
                .unwrap_err()
                .to_string()
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
