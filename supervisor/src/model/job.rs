//! A scheduler job's definition as plain data (docs/SCHEDULER.md, "Jobs"): its fields, its
//! validation, and its parsing from admin/import input. No I/O and no clock but what a caller
//! passes in; when a job fires is the scheduler's (`scheduler/jobs.rs`), where it is
//! stored the store's (table `jobs`).
//!
//! A job is a store object like a channel or a cache definition (table `jobs`, migration
//! 0010): kept in the config store, in every server's snapshot, changed through the admin API
//! (`/v1/jobs…`), config export/import (`job:`) and `oxbus jobs …`.
//!
//! Three types:
//! - `one_time`: runs once, at `start_date`;
//! - `interval_based`: runs at `start_date`, then every `weeks`/`days`/`hours`/`minutes`/
//!   `seconds` (added up), `repeats` times in all (absent: forever);
//! - `cron_style`: runs at every wall-clock match of `cron` in `timezone`.
//!
//! `start_date` left out means "when the job was created": the store fills it in with the
//! time of creation (and a replace that leaves it out keeps the stored one), so a stored
//! definition always has one and [`JobDef::start`] always has an answer for it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Why a job definition, or one of its values, is refused. The texts are those the admin API
/// and an import answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobDefError {
    /// A value that is not what it should be, before any job or field is named (`parse_*`).
    #[error("{0}")]
    Value(String),
    /// The job's name: `name: …`.
    #[error("name: {0}")]
    Name(String),
    /// One field of a job (or several, comma-separated): `job JOB: FIELD: …`.
    #[error("job {job}: {field}: {reason}")]
    Field {
        job: String,
        field: String,
        reason: String,
    },
    /// A job as a whole: `job JOB: …`.
    #[error("job {job}: {reason}")]
    Job { job: String, reason: String },
    /// Input that is not a JSON object.
    #[error("expected a JSON object of job definition fields")]
    NotAnObject,
}

impl JobDefError {
    /// A refusal of `field` of job `job`.
    pub fn field(job: &str, field: &str, reason: impl std::fmt::Display) -> JobDefError {
        JobDefError::Field {
            job: job.to_owned(),
            field: field.to_owned(),
            reason: reason.to_string(),
        }
    }
}

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
    pub fn validate(&self) -> Result<(), JobDefError> {
        validate_name(&self.name)?;
        let name = &self.name;
        let field = |f: &str, msg: String| Err(JobDefError::field(name, f, msg));
        if self.service.trim().is_empty() {
            return field("service", "must name the service the job invokes".into());
        }
        if let Some(s) = &self.start_date
            && let Err(e) = parse_start_date(s)
        {
            return field("start_date", e.to_string());
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
                        return Err(JobDefError::field(
                            name,
                            "weeks, days, hours, minutes, seconds",
                            "an interval_based job needs an interval (at least one of them \
                             above 0)",
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
                        return Err(JobDefError::field(
                            name,
                            &given.join(", "),
                            format!(
                                "the interval may be at most a year ({MAX_INTERVAL_S} s = 366 \
                                 days), got {}",
                                self.interval_description()
                            ),
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
                    return field("cron", e.to_string());
                }
                if let Err(e) = parse_timezone(self.timezone()) {
                    return field("timezone", e.to_string());
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
    pub fn start(&self) -> Result<DateTime<Utc>, JobDefError> {
        match &self.start_date {
            Some(s) => {
                parse_start_date(s).map_err(|e| JobDefError::field(&self.name, "start_date", e))
            }
            None => Err(JobDefError::field(
                &self.name,
                "start_date",
                "not set (the store sets it when the job is created)",
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
pub fn validate_name(name: &str) -> Result<(), JobDefError> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(JobDefError::Name(format!(
            "{} is not a valid job name (1-{MAX_NAME_LEN} characters: letters, digits, ._-)",
            shown(name, 60)
        )));
    }
    Ok(())
}

/// An RFC 3339 date and time with an offset (`Z` or `±hh:mm`), as an instant.
pub fn parse_start_date(s: &str) -> Result<DateTime<Utc>, JobDefError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            JobDefError::Value(format!(
                "{} is not an RFC 3339 date and time with an offset, e.g. \
                 2026-12-01T08:00:00+01:00 ({e})",
                shown(s, 60)
            ))
        })
}

/// `t` as a `start_date` (UTC, whole seconds: `2026-12-01T07:00:00Z`).
pub fn format_start_date(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, JobDefError> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        JobDefError::Value(format!(
            "{} is not an IANA time zone name (e.g. UTC, Europe/Warsaw, America/New_York)",
            shown(name, 60)
        ))
    })
}

/// A cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds
/// first), or a nickname (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). Croner's
/// syntax: lists, ranges, steps, `L`, `W`, `#`, month and weekday names.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, JobDefError> {
    use croner::parser::{CronParser, Seconds, Year};
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(JobDefError::Value(format!(
            "{} has {fields} field(s): give 5 (minute hour day-of-month month \
             day-of-week) or 6 (seconds first)",
            shown(expr, 80)
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            JobDefError::Value(format!(
                "{} is not a valid cron expression: {e}",
                shown(expr, 80)
            ))
        })
}

/// A job definition from JSON (an admin request's body, an entry of a config document). Every
/// error names the field: unknown fields are listed, a field of the wrong type is named.
/// `path_name`: the name the request's URL gives; the body may leave `name` out, and must
/// not name another job. Not validated here: see [`JobDef::validate`].
pub fn parse_job_def(v: &Value, path_name: Option<&str>) -> Result<JobDef, JobDefError> {
    use serde_json::json;
    let Some(obj) = v.as_object() else {
        return Err(JobDefError::NotAnObject);
    };
    let name = match (obj.get("name"), path_name) {
        (Some(Value::String(n)), Some(p)) if n != p => {
            return Err(JobDefError::Name(format!(
                "the body names job {n:?}, the URL {p:?}: a job cannot be renamed"
            )));
        }
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err(JobDefError::Name("must be a string".into())),
        (None, Some(p)) => p.to_owned(),
        (None, None) => return Err(JobDefError::Name("missing".into())),
    };
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(JobDefError::Job {
            reason: format!(
                "unknown field(s) {} (a job has {})",
                unknown.join(", "),
                FIELDS.join(", ")
            ),
            job: name,
        });
    }
    // Field by field, so that a value of the wrong type is reported with its field's name.
    for (k, value) in obj.iter().filter(|(k, _)| *k != "name") {
        let mut one = json!({"name": name, "type": "one_time", "service": "s"});
        one[k.as_str()] = value.clone();
        if let Err(e) = serde_json::from_value::<JobDef>(one) {
            return Err(JobDefError::field(&name, k, e));
        }
    }
    let mut full = obj.clone();
    full.insert("name".into(), Value::String(name.clone()));
    serde_json::from_value(Value::Object(full)).map_err(|e| JobDefError::Job {
        job: name,
        reason: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests;
