//! The job definition's tests: validation, JSON in and out, parsing, start dates. The
//! helpers `utc`, `every` and `cron` serve the scheduler's fire-time tests too.

use super::*;
use serde_json::json;

pub(crate) fn utc(s: &str) -> DateTime<Utc> {
    parse_start_date(s).unwrap()
}

pub(crate) fn every(name: &str) -> JobDef {
    JobDef {
        minutes: 5,
        start_date: Some("2026-01-01T00:00:00Z".into()),
        ..JobDef::new(name, JobType::IntervalBased, "demo.ping")
    }
}

pub(crate) fn cron(expr: &str, tz: &str) -> JobDef {
    JobDef {
        cron: Some(expr.into()),
        timezone: Some(tz.into()),
        ..JobDef::new("c", JobType::CronStyle, "demo.ping")
    }
}

/// `def` refused, the message naming `field` (and containing `also`).
#[track_caller]
fn refused(def: &JobDef, field: &str, also: &str) {
    let e = def.validate().expect_err("refused").to_string();
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
    let err = |v: Value, name: Option<&str>| parse_job_def(&v, name).unwrap_err().to_string();
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
            .to_string()
            .contains("start_date:")
    );
    assert!(d(None).start().unwrap_err().to_string().contains("not set"));

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
