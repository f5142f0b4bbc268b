//! The debouncer: turns file events into batches of files that are ready to deploy (quiet,
//! closed, a burst together). Pure: every call takes the time; no I/O, no clock, no tasks.

use super::{Timing, Touch};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::watch::drop_path as p;
    use std::time::Duration;

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
}
