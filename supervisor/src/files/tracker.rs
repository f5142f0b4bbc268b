//! Which files of a channel are complete: written and then closed by their writer (or
//! renamed into the folder), or left alone for the channel's quiet time. Pure: every call
//! takes the time; the notify thread and the channel's loop share one behind a mutex.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Created or written: a writer may still be at it.
    Written,
    /// A writer closed it after writing.
    Closed,
    /// Renamed into the folder: complete at once.
    Arrived,
    /// Deleted or renamed away.
    Gone,
}

/// What a scan saw of a file: its modification time (ns) and size. A file known only from
/// scans (no events: a network filesystem, a writer that predates the watch) is complete
/// once these stayed the same for the quiet time.
pub type Sig = (i128, u64);

#[derive(Debug, Clone, Copy)]
struct Pending {
    last: Instant,
    closed: bool,
    /// Set for a file seen by a scan and by no event since.
    sig: Option<Sig>,
}

/// The files seen and not yet handed on.
#[derive(Debug)]
pub struct Tracker {
    quiet: Duration,
    pending: HashMap<PathBuf, Pending>,
}

impl Tracker {
    pub fn new(quiet: Duration) -> Tracker {
        Tracker {
            quiet,
            pending: HashMap::new(),
        }
    }

    /// Records an event on `path` at `now`.
    pub fn touch(&mut self, path: PathBuf, touch: Touch, now: Instant) {
        let closed = match touch {
            Touch::Gone => {
                self.pending.remove(&path);
                return;
            }
            Touch::Written => false,
            Touch::Closed | Touch::Arrived => true,
        };
        self.pending.insert(
            path,
            Pending {
                last: now,
                closed,
                sig: None,
            },
        );
    }

    /// Records a file a scan found as `sig`, last changed `age` ago, unless events already
    /// track it: with no close to wait for, it is complete once `age` reaches the quiet time
    /// (and its `sig` is still the same then: the caller checks, see [`Tracker::changed`]).
    pub fn seen(&mut self, path: PathBuf, sig: Sig, age: Duration, now: Instant) {
        self.pending.entry(path).or_insert(Pending {
            last: now.checked_sub(age).unwrap_or(now),
            closed: false,
            sig: Some(sig),
        });
    }

    /// A file handed out as complete whose `sig` turned out to have changed since the scan:
    /// its quiet time starts again.
    pub fn changed(&mut self, path: PathBuf, sig: Sig, now: Instant) {
        self.pending.insert(
            path,
            Pending {
                last: now,
                closed: false,
                sig: Some(sig),
            },
        );
    }

    fn ready(&self, p: &Pending, now: Instant) -> bool {
        p.closed || now >= p.last + self.quiet
    }

    /// The complete files (no order: the caller orders them by modification time), no longer
    /// tracked; with each, what the scan saw of it if only a scan saw it.
    pub fn take_ready(&mut self, now: Instant) -> Vec<(PathBuf, Option<Sig>)> {
        let ready: Vec<(PathBuf, Option<Sig>)> = self
            .pending
            .iter()
            .filter(|(_, p)| self.ready(p, now))
            .map(|(path, p)| (path.clone(), p.sig))
            .collect();
        for (p, _) in &ready {
            self.pending.remove(p);
        }
        ready
    }

    /// Files handed back (their service could not be called yet): complete, taken next.
    pub fn put_back(&mut self, paths: impl IntoIterator<Item = PathBuf>, now: Instant) {
        for p in paths {
            self.pending.entry(p).or_insert(Pending {
                last: now,
                closed: true,
                sig: None,
            });
        }
    }

    /// When a file becomes complete without another event.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| !p.closed)
            .map(|p| p.last + self.quiet)
            .min()
    }

    /// Files seen and not complete yet (or not taken yet).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn names(v: Vec<(PathBuf, Option<Sig>)>) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = v.into_iter().map(|(p, _)| p).collect();
        v.sort();
        v
    }

    #[test]
    fn a_closed_file_is_ready_at_once_an_open_one_after_the_quiet_time() {
        let t0 = Instant::now();
        let mut t = Tracker::new(1000 * MS);
        t.touch(p("/d/a"), Touch::Written, t0);
        t.touch(p("/d/b"), Touch::Written, t0);
        t.touch(p("/d/b"), Touch::Closed, t0 + 5 * MS);
        assert_eq!(names(t.take_ready(t0 + 5 * MS)), vec![p("/d/b")]);
        // A slow writer: each write pushes the quiet time on.
        for i in 1..10 {
            t.touch(p("/d/a"), Touch::Written, t0 + i * 500 * MS);
            assert!(t.take_ready(t0 + i * 500 * MS + 999 * MS).is_empty());
        }
        assert_eq!(t.next_deadline(), Some(t0 + 5500 * MS));
        assert_eq!(names(t.take_ready(t0 + 5500 * MS)), vec![p("/d/a")]);
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn renamed_in_is_complete_gone_is_forgotten_a_write_after_close_reopens() {
        let t0 = Instant::now();
        let mut t = Tracker::new(1000 * MS);
        t.touch(p("/d/a"), Touch::Arrived, t0);
        t.touch(p("/d/b"), Touch::Written, t0);
        t.touch(p("/d/b"), Touch::Gone, t0);
        t.touch(p("/d/c"), Touch::Closed, t0);
        t.touch(p("/d/c"), Touch::Written, t0 + MS);
        assert_eq!(names(t.take_ready(t0 + 2 * MS)), vec![p("/d/a")]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn scanned_files_count_their_age_and_events_win() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut t = Tracker::new(1000 * MS);
        t.seen(p("/d/old"), (1, 10), Duration::from_secs(30), t0);
        t.seen(p("/d/new"), (2, 20), 200 * MS, t0);
        t.touch(p("/d/open"), Touch::Written, t0);
        t.seen(p("/d/open"), (3, 30), Duration::from_secs(30), t0);
        assert_eq!(t.take_ready(t0), vec![(p("/d/old"), Some((1, 10)))]);
        let mut later = t.take_ready(t0 + 1000 * MS);
        later.sort();
        assert_eq!(
            later,
            vec![(p("/d/new"), Some((2, 20))), (p("/d/open"), None)]
        );
        // Grown since the scan: quiet again from now.
        t.changed(p("/d/new"), (5, 40), t0 + 1000 * MS);
        assert!(t.take_ready(t0 + 1999 * MS).is_empty());
        assert_eq!(
            t.take_ready(t0 + 2000 * MS),
            vec![(p("/d/new"), Some((5, 40)))]
        );
        t.put_back([p("/d/x")], t0);
        assert_eq!(names(t.take_ready(t0)), vec![p("/d/x")]);
    }
}
