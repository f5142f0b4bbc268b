//! When jobs fire (docs/SCHEDULER.md, "Jobs"): the pure time arithmetic the scheduler's
//! runtime fires them by — an `interval_based` job's grid ([`next_interval_fire`]), a
//! `cron_style` job's wall-clock matches ([`next_cron_fire`], and what happens across a DST
//! change) — and the live jobs table of this server ([`set_live`]). The definition itself is
//! `crate::model::job`'s; where the due times are kept is the store's.
//!
//! Each server holds the current definitions in `scheduler::JobsTable` (set at boot, by
//! `sync::catch_up`, and by the admin API or an import on the server that made the change)
//! and notifies the scheduler whenever they change; the runtime (leader election, firing,
//! execute-now, history) reads them from there.

use chrono::{DateTime, LocalResult, TimeZone, Utc};

use crate::model::job::{JobDef, JobDefError, JobType, parse_cron, parse_timezone};

/// A cron_style job's schedule, parsed once: for a runtime that asks for many fire times.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

/// How many matches [`CronSchedule::next_after`] passes over (times a DST change skipped or
/// already ran) before it gives up: a per-second expression over a repeated hour is 3600.
const MAX_PASSED_MATCHES: usize = 10_000;

impl CronSchedule {
    /// The schedule of a cron_style job (`Err` for another type or a definition that does
    /// not validate).
    pub fn new(def: &JobDef) -> Result<CronSchedule, JobDefError> {
        let Some(expr) = def
            .cron
            .as_deref()
            .filter(|_| def.kind == JobType::CronStyle)
        else {
            return Err(JobDefError::Job {
                job: def.name.clone(),
                reason: "not a cron_style job".into(),
            });
        };
        Ok(CronSchedule {
            cron: parse_cron(expr).map_err(|e| JobDefError::field(&def.name, "cron", e))?,
            tz: parse_timezone(def.timezone())
                .map_err(|e| JobDefError::field(&def.name, "timezone", e))?,
        })
    }

    /// The first instant strictly after `after` whose wall-clock time in the schedule's time
    /// zone matches the expression; `None` when there is none (before the year 5000).
    ///
    /// Matching is on the wall clock, and each wall-clock match fires once: a local time that
    /// a spring-forward change skips does not fire at all (no run is moved to after the gap),
    /// and a local time that a fall-back change repeats fires once, on its first pass (an
    /// hourly job runs at 02:00 once on that night, not twice). Croner's own zoned search
    /// differs on both (it moves a fixed-time match out of the gap, and runs a wildcard
    /// match on both passes), so the search here runs on the naive wall clock and maps each
    /// match to an instant itself.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut wall = after.with_timezone(&self.tz).naive_local();
        for _ in 0..MAX_PASSED_MATCHES {
            let next = self.cron.find_next_occurrence(&wall, false).ok()?;
            match self.tz.from_local_datetime(&next) {
                // Ambiguous: the first pass only; if it has gone by, the time already ran.
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    let t = t.with_timezone(&Utc);
                    if t > after {
                        return Some(t);
                    }
                }
                // In a gap: this local time does not exist that day.
                LocalResult::None => {}
            }
            wall = next;
        }
        None
    }
}

/// A cron_style job's next fire time strictly after `after`: see [`CronSchedule::next_after`]
/// (`None` also for a job that is not cron_style or does not validate). `start_date` is not
/// looked at: a runtime that honours it passes `max(after, start - 1 s)`.
pub fn next_cron_fire(def: &JobDef, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    CronSchedule::new(def).ok()?.next_after(after)
}

/// An interval_based job's next fire time strictly after `after`: runs are at `start`,
/// `start + interval`, `start + 2 × interval`, … (`repeats` of them when given). `None` when
/// every run is before or at `after`, or for a job that is not interval_based or does not
/// validate. Runs missed while no server ran them are not made up: the next one is the first
/// after `after`.
pub fn next_interval_fire(def: &JobDef, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let start = def.start().ok()?;
    let every_ms = i64::try_from(def.interval()?.as_millis()).ok()?;
    // The index of the first run after `after` (run k is at start + k × interval).
    let k: i64 = if after < start {
        0
    } else {
        (after - start).num_milliseconds() / every_ms + 1
    };
    if def
        .repeats
        .is_some_and(|r| u64::try_from(k).is_ok_and(|k| k >= r))
    {
        return None;
    }
    start.checked_add_signed(chrono::TimeDelta::try_milliseconds(
        k.checked_mul(every_ms)?,
    )?)
}

/// Makes `defs` (by name) the jobs this server has (`table`) and, when they differ from what
/// it had, notifies the scheduler. Returns whether they differed.
pub fn set_live(table: &crate::scheduler::JobsTable, defs: Vec<JobDef>) -> bool {
    swap_live(&table.jobs, &table.changed, defs)
}

fn swap_live(
    live: &std::sync::RwLock<std::sync::Arc<Vec<JobDef>>>,
    changed: &tokio::sync::Notify,
    mut defs: Vec<JobDef>,
) -> bool {
    defs.sort_by(|a, b| a.name.cmp(&b.name));
    {
        let mut live = live.write().expect("jobs lock");
        if **live == defs {
            return false;
        }
        *live = std::sync::Arc::new(defs);
    }
    changed.notify_one();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::tests::{cron, every, utc};

    #[test]
    fn interval_fire_times() {
        // Fire times: start, start + 5 min, …; strictly after `after`; `repeats` in all.
        let e = every("i");
        let at = |s: &str| next_interval_fire(&e, utc(s));
        assert_eq!(
            at("2025-12-31T23:00:00Z"),
            Some(utc("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            at("2026-01-01T00:00:00Z"),
            Some(utc("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            at("2026-01-01T00:04:59.999Z"),
            Some(utc("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            at("2026-01-01T01:00:00Z"),
            Some(utc("2026-01-01T01:05:00Z"))
        );
        let three = JobDef {
            repeats: Some(3),
            ..every("i")
        };
        let at = |s: &str| next_interval_fire(&three, utc(s));
        assert_eq!(
            at("2026-01-01T00:05:00Z"),
            Some(utc("2026-01-01T00:10:00Z"))
        );
        assert_eq!(
            at("2026-01-01T00:10:00Z"),
            None,
            "three runs: 00:00, 00:05, 00:10"
        );
        let no_start = JobDef {
            start_date: None,
            ..every("i")
        };
        assert_eq!(
            next_interval_fire(&no_start, utc("2026-01-01T00:00:00Z")),
            None
        );
        assert_eq!(
            next_interval_fire(&cron("* * * * *", "UTC"), utc("2026-01-01T00:00:00Z")),
            None
        );
    }

    /// Every fire time of `def` in (from, to], in the job's zone's local time with offset.
    fn fires(def: &JobDef, from: &str, to: &str) -> Vec<String> {
        let tz = parse_timezone(def.timezone()).unwrap();
        let (mut t, end) = (utc(from), utc(to));
        let mut out = Vec::new();
        while let Some(n) = next_cron_fire(def, t) {
            if n > end {
                break;
            }
            out.push(n.with_timezone(&tz).to_rfc3339());
            t = n;
        }
        out
    }

    #[test]
    fn cron_fires_strictly_after_and_in_its_zone() {
        let daily = cron("30 2 * * *", "Europe/Warsaw");
        // Winter, UTC+1: 02:30 local is 01:30Z.
        assert_eq!(
            next_cron_fire(&daily, utc("2026-01-10T01:29:59.999Z")),
            Some(utc("2026-01-10T01:30:00Z"))
        );
        assert_eq!(
            next_cron_fire(&daily, utc("2026-01-10T01:30:00Z")),
            Some(utc("2026-01-11T01:30:00Z")),
            "strictly after"
        );
        assert_eq!(
            next_cron_fire(&daily, utc("2026-01-10T01:30:00.001Z")),
            Some(utc("2026-01-11T01:30:00Z"))
        );
        // Six fields, seconds first.
        let secs = cron("15 * * * * *", "UTC");
        assert_eq!(
            next_cron_fire(&secs, utc("2026-01-10T01:30:15Z")),
            Some(utc("2026-01-10T01:31:15Z"))
        );
        let no_tz = JobDef {
            timezone: None,
            ..cron("0 8 * * *", "x")
        };
        assert_eq!(
            next_cron_fire(&no_tz, utc("2026-01-10T00:00:00Z")),
            Some(utc("2026-01-10T08:00:00Z"))
        );
        assert_eq!(
            next_cron_fire(&every("i"), utc("2026-01-10T00:00:00Z")),
            None
        );
        // A match that never comes (30 February).
        assert_eq!(
            next_cron_fire(&cron("0 0 30 2 *", "UTC"), utc("2026-01-10T00:00:00Z")),
            None
        );
    }

    /// Europe/Warsaw, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:00-02:59 do not exist.
    #[test]
    fn cron_across_spring_forward_skips_the_missing_times() {
        let daily = cron("30 2 * * *", "Europe/Warsaw");
        assert_eq!(
            fires(&daily, "2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"),
            [
                "2026-03-27T02:30:00+01:00",
                "2026-03-28T02:30:00+01:00",
                // 29 March: no 02:30, and no run moved to 03:00 either.
                "2026-03-30T02:30:00+02:00",
            ]
        );
        let hourly = cron("0 * * * *", "Europe/Warsaw");
        assert_eq!(
            fires(&hourly, "2026-03-28T23:30:00Z", "2026-03-29T03:00:00Z"),
            [
                "2026-03-29T01:00:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T04:00:00+02:00",
                "2026-03-29T05:00:00+02:00",
            ]
        );
        // Asked from inside the night: the same answers.
        assert_eq!(
            next_cron_fire(&hourly, utc("2026-03-29T00:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            next_cron_fire(&daily, utc("2026-03-29T00:59:59Z")),
            Some(utc("2026-03-30T00:30:00Z"))
        );
    }

    /// Europe/Warsaw, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice.
    #[test]
    fn cron_across_fall_back_runs_a_repeated_time_once() {
        let daily = cron("30 2 * * *", "Europe/Warsaw");
        assert_eq!(
            fires(&daily, "2026-10-23T00:00:00Z", "2026-10-27T00:00:00Z"),
            [
                "2026-10-23T02:30:00+02:00",
                "2026-10-24T02:30:00+02:00",
                // The first 02:30 (CEST) only.
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
            ]
        );
        let hourly = cron("0 * * * *", "Europe/Warsaw");
        assert_eq!(
            fires(&hourly, "2026-10-24T22:30:00Z", "2026-10-25T04:00:00Z"),
            [
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                // 02:00 CET (the second pass) ran already as 02:00 CEST.
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T04:00:00+01:00",
                "2026-10-25T05:00:00+01:00",
            ]
        );
        // Asked from the second pass: what is left of it ran already on the first.
        assert_eq!(
            next_cron_fire(&hourly, utc("2026-10-25T01:00:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
        assert_eq!(
            next_cron_fire(&daily, utc("2026-10-25T01:10:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        // Asked from the first pass, before 02:30: the first 02:30.
        assert_eq!(
            next_cron_fire(&daily, utc("2026-10-25T00:10:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        // Every second across the repeated hour: the second pass is passed over whole.
        let per_second = cron("* * * * * *", "Europe/Warsaw");
        assert_eq!(
            next_cron_fire(&per_second, utc("2026-10-25T01:00:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
    }

    #[tokio::test]
    async fn the_live_set_is_swapped_and_notified_only_when_it_changes() {
        use std::sync::{Arc, RwLock};
        let live = RwLock::new(Arc::new(Vec::new()));
        let changed = tokio::sync::Notify::new();
        let notified = || {
            // A permit is kept for a waiter to come: taken at once when there is one.
            let fut = changed.notified();
            tokio::pin!(fut);
            futures_util::FutureExt::now_or_never(fut).is_some()
        };
        assert!(!swap_live(&live, &changed, Vec::new()), "empty to empty");
        assert!(!notified());
        let (a, b) = (every("a"), cron("0 8 * * *", "UTC"));
        assert!(swap_live(&live, &changed, vec![b.clone(), a.clone()]));
        assert!(notified());
        assert!(!notified(), "one permit");
        assert_eq!(**live.read().unwrap(), [a.clone(), b.clone()], "by name");
        let held = live.read().unwrap().clone();
        assert!(
            !swap_live(&live, &changed, vec![a.clone(), b.clone()]),
            "the same"
        );
        assert!(!notified());
        let off = JobDef {
            active: false,
            ..a.clone()
        };
        assert!(swap_live(&live, &changed, vec![off.clone(), b.clone()]));
        assert!(notified());
        assert_eq!(**live.read().unwrap(), [off, b]);
        assert_eq!(
            *held,
            [a, cron("0 8 * * *", "UTC")],
            "a reader keeps its Arc"
        );
    }

    /// What croner's own zoned search does across the same changes: the reason
    /// `next_after` searches on the naive wall clock. Should croner change, this says so.
    #[test]
    fn croner_zoned_search_differs_across_dst() {
        let tz: chrono_tz::Tz = "Europe/Warsaw".parse().unwrap();
        let zoned = |expr: &str, from: &str| {
            let c = parse_cron(expr).unwrap();
            c.find_next_occurrence(&utc(from).with_timezone(&tz), false)
                .unwrap()
                .with_timezone(&Utc)
        };
        // Spring forward: croner runs the fixed 02:30 right after the gap, at 03:00 CEST.
        assert_eq!(
            zoned("30 2 * * *", "2026-03-29T00:00:00Z"),
            utc("2026-03-29T01:00:00Z")
        );
        // Fall back: croner runs the hourly 02:00 on the second pass too.
        assert_eq!(
            zoned("0 * * * *", "2026-10-25T00:00:00Z"),
            utc("2026-10-25T01:00:00Z")
        );
    }
}
