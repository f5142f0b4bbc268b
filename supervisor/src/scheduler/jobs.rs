//! Scheduler job definitions (docs/SCHEDULER.md, "Jobs"): what a job is, its validation, and
//! the pure time arithmetic the scheduler's runtime fires them by.
//!
//! A job is a store object like a channel or a cache definition (table `jobs`, migration
//! 0010): kept in the config store, in every server's snapshot, changed through the admin API
//! (`/v1/jobs…`), config export/import (`job:`) and `oxbus jobs …`. Each server holds the
//! current definitions in `scheduler::JobsTable` (set at boot, by `sync::catch_up`, and by the admin
//! API or an import on the server that made the change) and notifies the scheduler
//! whenever they change; the runtime (leader election, firing, execute-now, history) reads
//! them from there.
//!
//! Three types:
//! - `one_time`: runs once, at `start_date`;
//! - `interval_based`: runs at `start_date`, then every `weeks`/`days`/`hours`/`minutes`/
//!   `seconds` (added up), `repeats` times in all (absent: forever) — see
//!   [`next_interval_fire`];
//! - `cron_style`: runs at every wall-clock match of `cron` in `timezone` — see
//!   [`next_cron_fire`] for what happens across a DST change.
//!
//! `start_date` left out means "when the job was created": the store fills it in with the
//! time of creation (and a replace that leaves it out keeps the stored one), so a stored
//! definition always has one and [`JobDef::start`] always has an answer for it.

use chrono::{DateTime, LocalResult, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The longest interval of an `interval_based` job: a year (of 366 days).
pub const MAX_INTERVAL_S: u64 = 366 * 24 * 3600;
/// The largest `jitter_ms`: an hour.
pub const MAX_JITTER_MS: u64 = 3_600_000;
/// The longest job name.
pub const MAX_NAME_LEN: usize = 200;

/// Every field of a job definition, in the order they are exported.
pub const FIELDS: &[&str] = &[
    "name",
    "active",
    "type",
    "service",
    "extra",
    "start_date",
    "weeks",
    "days",
    "hours",
    "minutes",
    "seconds",
    "repeats",
    "cron",
    "timezone",
    "jitter_ms",
    "overlap",
];

/// The interval fields: only an `interval_based` job has them.
const INTERVAL_FIELDS: [&str; 5] = ["weeks", "days", "hours", "minutes", "seconds"];

fn yes() -> bool {
    true
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// When a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    /// Once, at `start_date`.
    OneTime,
    /// At `start_date`, then every interval, `repeats` times in all (absent: forever).
    IntervalBased,
    /// At every match of a cron expression in a time zone.
    CronStyle,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::OneTime => "one_time",
            JobType::IntervalBased => "interval_based",
            JobType::CronStyle => "cron_style",
        }
    }
}

/// What happens when a job is due while its previous run is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// This run is skipped (the default).
    #[default]
    Skip,
    /// This run starts beside the previous one.
    Allow,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }
}

/// A job definition as stored and exported (JSON; YAML in an export). Fields that do not
/// belong to the job's type are refused by [`JobDef::validate`]; the interval fields are left
/// out of the output when 0, `extra`, `start_date`, `repeats`, `cron` and `timezone` when
/// absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDef {
    pub name: String,
    /// False: the job is kept but does not run on schedule.
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(rename = "type")]
    pub kind: JobType,
    /// The service the job invokes.
    pub service: String,
    /// The JSON payload the service is given (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
    /// RFC 3339 with an offset ("2026-12-01T08:00:00+01:00"), kept as given. Absent: when
    /// the job was created (the store fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weeks: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub days: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hours: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub minutes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seconds: u64,
    /// interval_based: how many runs in all, at least 1 (absent: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<u64>,
    /// cron_style: 5 fields (minute first) or 6 (seconds first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// cron_style: an IANA time zone name (absent: UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Each run starts up to this many milliseconds late, at random (0 = on time).
    #[serde(default)]
    pub jitter_ms: u64,
    #[serde(default)]
    pub overlap: Overlap,
}

impl JobDef {
    /// A job of `kind` with every optional field at its default.
    pub fn new(name: &str, kind: JobType, service: &str) -> JobDef {
        JobDef {
            name: name.to_owned(),
            active: true,
            kind,
            service: service.to_owned(),
            extra: None,
            start_date: None,
            weeks: 0,
            days: 0,
            hours: 0,
            minutes: 0,
            seconds: 0,
            repeats: None,
            cron: None,
            timezone: None,
            jitter_ms: 0,
            overlap: Overlap::Skip,
        }
    }

    /// Checks every field; the message names the job and the field (`job NAME: FIELD: …`).
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        let name = &self.name;
        let field = |f: &str, msg: String| Err(format!("job {name}: {f}: {msg}"));
        if self.service.trim().is_empty() {
            return field("service", "must name the service the job invokes".into());
        }
        if let Some(s) = &self.start_date
            && let Err(e) = parse_start_date(s)
        {
            return field("start_date", e);
        }
        if self.jitter_ms > MAX_JITTER_MS {
            return field(
                "jitter_ms",
                format!("at most {MAX_JITTER_MS} (an hour), got {}", self.jitter_ms),
            );
        }
        let kind = self.kind.as_str();
        if self.kind != JobType::IntervalBased {
            for (f, n) in INTERVAL_FIELDS.iter().zip(self.interval_parts()) {
                if n != 0 {
                    return field(
                        f,
                        format!("only an interval_based job has it (this one is {kind})"),
                    );
                }
            }
            if self.repeats.is_some() {
                return field(
                    "repeats",
                    format!("only an interval_based job has it (this one is {kind})"),
                );
            }
        }
        if self.kind != JobType::CronStyle {
            for (f, given) in [
                ("cron", self.cron.is_some()),
                ("timezone", self.timezone.is_some()),
            ] {
                if given {
                    return field(
                        f,
                        format!("only a cron_style job has it (this one is {kind})"),
                    );
                }
            }
        }
        match self.kind {
            JobType::OneTime => {}
            JobType::IntervalBased => {
                match self.interval_s() {
                    Some(0) => {
                        return Err(format!(
                            "job {name}: weeks, days, hours, minutes, seconds: an interval_based \
                             job needs an interval (at least one of them above 0)"
                        ));
                    }
                    Some(s) if s <= MAX_INTERVAL_S => {}
                    _ => {
                        let given: Vec<&str> = INTERVAL_FIELDS
                            .iter()
                            .zip(self.interval_parts())
                            .filter(|(_, n)| *n != 0)
                            .map(|(f, _)| *f)
                            .collect();
                        return Err(format!(
                            "job {name}: {}: the interval may be at most a year \
                             ({MAX_INTERVAL_S} s = 366 days), got {}",
                            given.join(", "),
                            self.interval_description()
                        ));
                    }
                }
                if self.repeats == Some(0) {
                    return field(
                        "repeats",
                        "must be at least 1 (leave it out to repeat forever)".into(),
                    );
                }
            }
            JobType::CronStyle => {
                let Some(expr) = &self.cron else {
                    return field("cron", "missing (a cron_style job runs by it)".into());
                };
                if let Err(e) = parse_cron(expr) {
                    return field("cron", e);
                }
                if let Err(e) = parse_timezone(self.timezone()) {
                    return field("timezone", e);
                }
            }
        }
        Ok(())
    }

    fn interval_parts(&self) -> [u64; 5] {
        [
            self.weeks,
            self.days,
            self.hours,
            self.minutes,
            self.seconds,
        ]
    }

    /// The interval fields added up, in seconds (`None`: past u64).
    fn interval_s(&self) -> Option<u64> {
        let mut total: u64 = 0;
        for (n, unit) in self
            .interval_parts()
            .into_iter()
            .zip([7 * 86_400, 86_400, 3_600, 60, 1])
        {
            total = total.checked_add(n.checked_mul(unit)?)?;
        }
        Some(total)
    }

    fn interval_description(&self) -> String {
        INTERVAL_FIELDS
            .iter()
            .zip(self.interval_parts())
            .filter(|(_, n)| *n != 0)
            .map(|(f, n)| format!("{n} {f}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// An `interval_based` job's interval (its interval fields added up); `None` for the
    /// other types, and for an interval that does not validate.
    pub fn interval(&self) -> Option<Duration> {
        if self.kind != JobType::IntervalBased {
            return None;
        }
        self.interval_s()
            .filter(|s| (1..=MAX_INTERVAL_S).contains(s))
            .map(Duration::from_secs)
    }

    /// The instant `start_date` names. A stored definition always has one (the store fills
    /// it in at creation); a definition that does not is an error here, as is a malformed one.
    pub fn start(&self) -> Result<DateTime<Utc>, String> {
        match &self.start_date {
            Some(s) => {
                parse_start_date(s).map_err(|e| format!("job {}: start_date: {e}", self.name))
            }
            None => Err(format!(
                "job {}: start_date: not set (the store sets it when the job is created)",
                self.name
            )),
        }
    }

    /// The time zone a cron_style job runs in (`UTC` when none is given).
    pub fn timezone(&self) -> &str {
        self.timezone.as_deref().unwrap_or("UTC")
    }

    /// The definition as stored: `start_date` left out is filled in with the stored job's
    /// (`stored`: the same job as stored now, if it exists), else with `now` (creation).
    /// A cron_style job's time zone left out becomes an explicit `UTC`.
    pub fn as_stored(mut self, stored: Option<&JobDef>, now: DateTime<Utc>) -> JobDef {
        if self.start_date.is_none() {
            self.start_date = Some(match stored.and_then(|s| s.start_date.clone()) {
                Some(s) => s,
                None => format_start_date(now),
            });
        }
        if self.kind == JobType::CronStyle && self.timezone.is_none() {
            self.timezone = Some("UTC".into());
        }
        self
    }
}

/// `s` quoted for a message, cut at `max` characters (a precision does not cut `{:?}`).
fn shown(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        format!("{s:?}")
    } else {
        format!("{:?}…", s.chars().take(max).collect::<String>())
    }
}

/// Valid job names: 1-200 of letters, digits, `._-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "name: {} is not a valid job name (1-{MAX_NAME_LEN} characters: letters, digits, ._-)",
            shown(name, 60)
        ));
    }
    Ok(())
}

/// An RFC 3339 date and time with an offset (`Z` or `±hh:mm`), as an instant.
pub fn parse_start_date(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "{} is not an RFC 3339 date and time with an offset, e.g. \
                 2026-12-01T08:00:00+01:00 ({e})",
                shown(s, 60)
            )
        })
}

/// `t` as a `start_date` (UTC, whole seconds: `2026-12-01T07:00:00Z`).
pub fn format_start_date(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "{} is not an IANA time zone name (e.g. UTC, Europe/Warsaw, America/New_York)",
            shown(name, 60)
        )
    })
}

/// A cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds
/// first), or a nickname (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). Croner's
/// syntax: lists, ranges, steps, `L`, `W`, `#`, month and weekday names.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "{} has {fields} field(s): give 5 (minute hour day-of-month month \
             day-of-week) or 6 (seconds first)",
            shown(expr, 80)
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("{} is not a valid cron expression: {e}", shown(expr, 80)))
}

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
    pub fn new(def: &JobDef) -> Result<CronSchedule, String> {
        let Some(expr) = def
            .cron
            .as_deref()
            .filter(|_| def.kind == JobType::CronStyle)
        else {
            return Err(format!("job {}: not a cron_style job", def.name));
        };
        Ok(CronSchedule {
            cron: parse_cron(expr).map_err(|e| format!("job {}: cron: {e}", def.name))?,
            tz: parse_timezone(def.timezone())
                .map_err(|e| format!("job {}: timezone: {e}", def.name))?,
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

/// A job definition from JSON (an admin request's body, an entry of a config document). Every
/// error names the field: unknown fields are listed, a field of the wrong type is named.
/// `path_name`: the name the request's URL gives; the body may leave `name` out, and must
/// not name another job. Not validated here: see [`JobDef::validate`].
pub fn parse_job_def(v: &Value, path_name: Option<&str>) -> Result<JobDef, String> {
    use serde_json::json;
    let Some(obj) = v.as_object() else {
        return Err("expected a JSON object of job definition fields".into());
    };
    let name = match (obj.get("name"), path_name) {
        (Some(Value::String(n)), Some(p)) if n != p => {
            return Err(format!(
                "name: the body names job {n:?}, the URL {p:?}: a job cannot be renamed"
            ));
        }
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err("name: must be a string".into()),
        (None, Some(p)) => p.to_owned(),
        (None, None) => return Err("name: missing".into()),
    };
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "job {name}: unknown field(s) {} (a job has {})",
            unknown.join(", "),
            FIELDS.join(", ")
        ));
    }
    // Field by field, so that a value of the wrong type is reported with its field's name.
    for (k, value) in obj.iter().filter(|(k, _)| *k != "name") {
        let mut one = json!({"name": name, "type": "one_time", "service": "s"});
        one[k.as_str()] = value.clone();
        if let Err(e) = serde_json::from_value::<JobDef>(one) {
            return Err(format!("job {name}: {k}: {e}"));
        }
    }
    let mut full = obj.clone();
    full.insert("name".into(), Value::String(name.clone()));
    serde_json::from_value(Value::Object(full)).map_err(|e| format!("job {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        parse_start_date(s).unwrap()
    }

    fn every(name: &str) -> JobDef {
        JobDef {
            minutes: 5,
            start_date: Some("2026-01-01T00:00:00Z".into()),
            ..JobDef::new(name, JobType::IntervalBased, "demo.ping")
        }
    }

    fn cron(expr: &str, tz: &str) -> JobDef {
        JobDef {
            cron: Some(expr.into()),
            timezone: Some(tz.into()),
            ..JobDef::new("c", JobType::CronStyle, "demo.ping")
        }
    }

    /// `def` refused, the message naming `field` (and containing `also`).
    #[track_caller]
    fn refused(def: &JobDef, field: &str, also: &str) {
        let e = def.validate().expect_err("refused");
        assert!(
            e.contains(&format!("{field}:")),
            "{e:?} does not name {field}"
        );
        assert!(e.contains(also), "{e:?} lacks {also:?}");
    }

    #[test]
    fn each_type_validates_with_its_fields() {
        let one = JobDef {
            start_date: Some("2026-12-01T08:00:00+01:00".into()),
            extra: Some(json!({"a": [1, 2]})),
            ..JobDef::new("report.monthly-1", JobType::OneTime, "demo.ping")
        };
        one.validate().unwrap();
        every("e").validate().unwrap();
        let weekly = JobDef {
            weeks: 52,
            days: 2,
            minutes: 0,
            repeats: Some(1),
            ..every("w")
        };
        weekly.validate().unwrap();
        cron("*/5 * * * *", "Europe/Warsaw").validate().unwrap();
        cron("30 */5 * * * MON-FRI", "America/New_York")
            .validate()
            .unwrap();
        cron("@daily", "UTC").validate().unwrap();
        let no_tz = JobDef {
            timezone: None,
            ..cron("0 8 * * *", "x")
        };
        no_tz.validate().unwrap();
        assert_eq!(no_tz.timezone(), "UTC");
    }

    #[test]
    fn each_field_is_refused_by_name() {
        let base = every("j");
        for bad in ["", "with space", "a/b", "ż", &"x".repeat(201)] {
            refused(
                &JobDef {
                    name: bad.into(),
                    ..base.clone()
                },
                "name",
                "not a valid job name",
            );
        }
        JobDef {
            name: "x".repeat(200),
            ..base.clone()
        }
        .validate()
        .unwrap();
        refused(
            &JobDef {
                service: " ".into(),
                ..base.clone()
            },
            "service",
            "must name",
        );
        for bad in [
            "2026-12-01",
            "2026-12-01T08:00:00",
            "2026-12-01 08:00:00+01:00x",
            "tomorrow",
            "2026-13-01T08:00:00Z",
        ] {
            refused(
                &JobDef {
                    start_date: Some(bad.into()),
                    ..base.clone()
                },
                "start_date",
                "RFC 3339",
            );
        }
        refused(
            &JobDef {
                jitter_ms: MAX_JITTER_MS + 1,
                ..base.clone()
            },
            "jitter_ms",
            "at most 3600000",
        );
        JobDef {
            jitter_ms: MAX_JITTER_MS,
            ..base.clone()
        }
        .validate()
        .unwrap();

        // Interval fields: a total above 0 and at most a year; repeats at least 1.
        let none = JobDef {
            minutes: 0,
            ..base.clone()
        };
        refused(&none, "seconds", "needs an interval");
        refused(
            &JobDef {
                days: 367,
                minutes: 0,
                ..base.clone()
            },
            "days",
            "at most a year",
        );
        refused(
            &JobDef {
                weeks: u64::MAX,
                minutes: 0,
                ..base.clone()
            },
            "weeks",
            "at most a year",
        );
        JobDef {
            days: 366,
            minutes: 0,
            ..base.clone()
        }
        .validate()
        .unwrap();
        refused(
            &JobDef {
                repeats: Some(0),
                ..base.clone()
            },
            "repeats",
            "at least 1",
        );

        // Fields of another type.
        let one = JobDef::new("o", JobType::OneTime, "s");
        for (f, def) in [
            (
                "hours",
                JobDef {
                    hours: 1,
                    ..one.clone()
                },
            ),
            (
                "repeats",
                JobDef {
                    repeats: Some(2),
                    ..one.clone()
                },
            ),
            (
                "cron",
                JobDef {
                    cron: Some("* * * * *".into()),
                    ..base.clone()
                },
            ),
            (
                "timezone",
                JobDef {
                    timezone: Some("UTC".into()),
                    ..one.clone()
                },
            ),
            (
                "seconds",
                JobDef {
                    seconds: 1,
                    ..cron("* * * * *", "UTC")
                },
            ),
        ] {
            refused(&def, f, "only a");
        }

        // Cron: parsed; 5 or 6 fields; the time zone an IANA name.
        refused(
            &JobDef {
                cron: None,
                ..cron("", "UTC")
            },
            "cron",
            "missing",
        );
        for (bad, why) in [
            ("* * * *", "4 field(s)"),
            ("0 0 * * * * 2027", "7 field(s)"),
            ("61 * * * *", "not a valid cron expression"),
            ("* * * * FRX", "not a valid cron expression"),
            ("", "0 field(s)"),
        ] {
            refused(&cron(bad, "UTC"), "cron", why);
        }
        for bad in ["Mars/Olympus", "utc+1", ""] {
            refused(&cron("* * * * *", bad), "timezone", "IANA");
        }
    }

    #[test]
    fn json_in_and_out() {
        // Defaults applied, zero intervals and absent options left out.
        let def: JobDef = serde_json::from_value(
            json!({"name": "j", "type": "interval_based", "service": "s", "hours": 2}),
        )
        .unwrap();
        assert_eq!(
            def,
            JobDef {
                hours: 2,
                ..JobDef::new("j", JobType::IntervalBased, "s")
            }
        );
        assert_eq!(
            serde_json::to_value(&def).unwrap(),
            json!({"name": "j", "active": true, "type": "interval_based", "service": "s",
                   "hours": 2, "jitter_ms": 0, "overlap": "skip"})
        );
        let c = cron("0 8 * * *", "Europe/Warsaw");
        let back: JobDef = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(
            serde_json::from_value::<JobDef>(json!({"name": "j", "type": "daily", "service": "s"}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<JobDef>(
                json!({"name": "j", "type": "one_time", "service": "s", "overlap": "queue"})
            )
            .is_err()
        );
    }

    #[test]
    fn a_parse_error_names_the_field() {
        let def = parse_job_def(
            &json!({"type": "cron_style", "service": "s", "cron": "0 8 * * *",
                    "extra": {"k": null}, "overlap": "allow", "active": false}),
            Some("j"),
        )
        .unwrap();
        assert_eq!(def.name, "j");
        assert_eq!(def.overlap, Overlap::Allow);
        assert!(!def.active);
        assert_eq!(def.extra, Some(json!({"k": null})));
        let err = |v: Value, name: Option<&str>| parse_job_def(&v, name).unwrap_err();
        let e = err(
            json!({"type": "one_time", "service": "s", "every": 5, "tz": "UTC"}),
            Some("j"),
        );
        assert!(
            e.contains("unknown field(s) every, tz") && e.contains("timezone"),
            "{e}"
        );
        let e = err(
            json!({"type": "one_time", "service": "s", "jitter_ms": "lots"}),
            Some("j"),
        );
        assert!(e.starts_with("job j: jitter_ms: invalid type"), "{e}");
        let e = err(json!({"type": "weekly", "service": "s"}), Some("j"));
        assert!(e.starts_with("job j: type: unknown variant"), "{e}");
        let e = err(
            json!({"type": "one_time", "service": "s", "minutes": -1}),
            Some("j"),
        );
        assert!(e.starts_with("job j: minutes:"), "{e}");
        let e = err(
            json!({"type": "one_time", "service": "s", "overlap": "queue"}),
            Some("j"),
        );
        assert!(e.starts_with("job j: overlap: unknown variant"), "{e}");
        let e = err(json!({"type": "one_time"}), Some("j"));
        assert!(e.contains("missing field `service`"), "{e}");
        let e = err(json!({"service": "s"}), Some("j"));
        assert!(e.contains("missing field `type`"), "{e}");
        let e = err(
            json!({"name": "k", "type": "one_time", "service": "s"}),
            Some("j"),
        );
        assert!(e.contains("cannot be renamed"), "{e}");
        assert!(err(json!({"type": "one_time", "service": "s"}), None).contains("name: missing"));
        assert!(err(json!([1]), Some("j")).contains("JSON object"));
    }

    #[test]
    fn intervals() {
        let d = JobDef {
            weeks: 1,
            days: 1,
            hours: 1,
            minutes: 1,
            seconds: 1,
            ..every("i")
        };
        assert_eq!(
            d.interval(),
            Some(Duration::from_secs(7 * 86_400 + 86_400 + 3_600 + 60 + 1))
        );
        assert_eq!(every("i").interval(), Some(Duration::from_secs(300)));
        assert_eq!(JobDef::new("o", JobType::OneTime, "s").interval(), None);
        assert_eq!(cron("* * * * *", "UTC").interval(), None);
        assert_eq!(
            JobDef {
                minutes: 0,
                ..every("i")
            }
            .interval(),
            None
        );
        assert_eq!(
            JobDef {
                weeks: u64::MAX,
                ..every("i")
            }
            .interval(),
            None
        );

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

    #[test]
    fn start_dates() {
        let d = |s: Option<&str>| JobDef {
            start_date: s.map(str::to_owned),
            ..JobDef::new("s", JobType::OneTime, "x")
        };
        assert_eq!(
            d(Some("2026-12-01T08:00:00+01:00")).start(),
            Ok(utc("2026-12-01T07:00:00Z"))
        );
        assert_eq!(
            d(Some("2026-12-01T08:00:00.250-05:30")).start().unwrap(),
            utc("2026-12-01T13:30:00.250Z")
        );
        assert!(
            d(Some("2026-12-01"))
                .start()
                .unwrap_err()
                .contains("start_date:")
        );
        assert!(d(None).start().unwrap_err().contains("not set"));

        // As stored: given, kept as given; left out, the stored job's, else now.
        let now = utc("2026-11-26T09:00:00.750Z");
        let given = d(Some("2026-12-01T08:00:00+01:00"));
        assert_eq!(given.clone().as_stored(None, now), given);
        let created = d(None).as_stored(None, now);
        assert_eq!(created.start_date.as_deref(), Some("2026-11-26T09:00:00Z"));
        let replaced = d(None).as_stored(Some(&given), now);
        assert_eq!(replaced.start_date, given.start_date);
        let c = JobDef {
            timezone: None,
            ..cron("0 8 * * *", "x")
        };
        assert_eq!(c.as_stored(None, now).timezone.as_deref(), Some("UTC"));
        assert_eq!(d(None).as_stored(None, now).timezone, None);
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
