//! Deploy-on-save: a watched directory of `*.py` modules, turned into deploys. One
//! implementation for both ways in: the server's pickup directory (`[pickup] dir`, see
//! [`pickup()`]) and the CLI's `oxbus deploy --watch DIR` (`client::deploy_watch`).
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
//!
//! The parts, one file each: [`filter`] (which files count, which module a file deploys
//! as, what a notify event means), [`debounce`] (when a changed file is ready), [`dir`]
//! (the watch itself: the notify thread, the run loop, reading a batch) and
//! [`pickup_dir`] (the server's pickup directory, reported to the log). This module holds
//! what they share: the timing, the [`Sink`] a watch reports to, and its error.

mod debounce;
mod dir;
mod filter;
mod pickup_dir;

pub use debounce::Debouncer;
pub use dir::DirWatcher;
pub use filter::{NotDeployable, Signal, Touch, classify, is_module_file, module_name};
pub use pickup_dir::{PickupError, pickup, start_pickup};

use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest module file a watched directory deploys.
pub const MAX_MODULE_BYTES: u64 = 8 * 1024 * 1024;

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

/// Why a directory watch did not start, or ended before it was told to stop.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The directory cannot be resolved or listed.
    #[error("cannot watch {}: {source}", dir.display())]
    Unreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The path is not a directory.
    #[error("cannot watch {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// notify's watcher did not start.
    #[error("cannot start a file watcher: {0}")]
    Watcher(#[source] notify::Error),
    /// notify refused to watch the directory.
    #[error("cannot watch {}: {source}", dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
    /// notify's thread stopped sending events.
    #[error("the file watcher stopped")]
    Stopped,
    /// The watched directory itself was deleted or renamed.
    #[error("{} was deleted or renamed; no longer watching it", .0.display())]
    DirGone(PathBuf),
    /// The sink said the deploys can never work ([`Outcome::Fatal`], its reason).
    #[error("{0}")]
    Fatal(String),
}

/// A file of the tests' made-up watched directory, `/drop`.
#[cfg(test)]
fn drop_path(name: &str) -> PathBuf {
    PathBuf::from("/drop").join(name)
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
