//! Scheduler jobs (issue 8) against the real binary: CRUD through the admin API and the CLI,
//! enable/disable, refused definitions naming the field, a service not deployed (allowed,
//! with a warning), config export → import (YAML through the CLI) with `--replace` and
//! `--dry-run`, a change reaching another server of the cluster over the bus, and a restart
//! with the store down that boots the jobs from the snapshot. (Running them is the runtime's,
//! tested with it.)

use oxbus_integration::api::{self, admin, config_version, export_body, ok, text};
use oxbus_integration::bus::linked;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::time::Duration;

/// The jobs of `srv`, by name.
async fn jobs(srv: &Server) -> Vec<Value> {
    api::list(srv, "jobs").await
}

async fn names(srv: &Server) -> Vec<String> {
    api::names(srv, "jobs").await
}

/// PUT a job; asserts the status.
async fn put(srv: &Server, name: &str, def: Value, status: u16) -> Value {
    api::put(srv, "jobs", name, def, status).await
}

/// A 400 whose message contains every one of `needles`; nothing is stored.
async fn refused(srv: &Server, name: &str, body: &str, needles: &[&str]) {
    api::refused(srv, "jobs", name, body, needles).await
}

/// Unix seconds of an RFC 3339 `start_date` as the server writes it (`…Z`, whole seconds).
fn unix_s(start_date: &str) -> i64 {
    let out = Command::new("date")
        .args(["-u", "-d", start_date, "+%s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "date cannot read {start_date:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn jobs_are_created_listed_replaced_enabled_and_deleted_through_the_admin_api() {
    let srv = Env::new().with_test_services().start().await;
    let v0 = config_version(&srv).await;
    assert_eq!(jobs(&srv).await, Vec::<Value>::new());

    // Create: 201, the new version, the job as stored: defaults filled in, the start date
    // (left out) the time of creation.
    let before = now_s();
    let a = put(
        &srv,
        "ping",
        json!({"type": "interval_based", "service": "test.echo", "minutes": 5,
               "extra": {"to": ["a", "b"], "n": 1}}),
        201,
    )
    .await;
    assert_eq!(a["config_version"], v0 + 1);
    assert_eq!(a["created"], true);
    assert!(a.get("warning").is_none(), "test.echo is deployed: {a}");
    let start = a["job"]["start_date"].as_str().unwrap().to_owned();
    assert!(start.ends_with('Z'), "{start}");
    assert!(
        (before - 1..=now_s() + 1).contains(&unix_s(&start)),
        "{start}"
    );
    assert_eq!(
        a["job"],
        json!({"name": "ping", "active": true, "type": "interval_based", "service": "test.echo",
               "extra": {"to": ["a", "b"], "n": 1}, "start_date": start, "minutes": 5,
               "jitter_ms": 0, "overlap": "skip"})
    );

    // A service no worker runs: allowed (deploy order must not matter), with a warning.
    let r = put(
        &srv,
        "report",
        json!({"type": "cron_style", "service": "reports.daily", "cron": "0 30 8 * * MON-FRI",
               "timezone": "Europe/Warsaw", "jitter_ms": 2000, "overlap": "allow"}),
        201,
    )
    .await;
    assert_eq!(r["warning"], "no service named reports.daily is deployed");
    assert_eq!(r["job"]["timezone"], "Europe/Warsaw");
    assert_eq!(r["job"]["overlap"], "allow");
    // A start date given is kept as given; a cron job's time zone left out is UTC.
    let o = put(
        &srv,
        "once",
        json!({"name": "once", "type": "one_time", "service": "test.echo",
               "start_date": "2030-12-01T08:00:00+01:00"}),
        201,
    )
    .await;
    assert_eq!(o["job"]["start_date"], "2030-12-01T08:00:00+01:00");
    let n = put(
        &srv,
        "nightly",
        json!({"type": "cron_style", "service": "test.echo", "cron": "@daily"}),
        201,
    )
    .await;
    assert_eq!(n["job"]["timezone"], "UTC");
    assert_eq!(names(&srv).await, ["nightly", "once", "ping", "report"]);
    let one = admin(&srv, "GET", "/v1/jobs/ping", Value::Null)
        .await
        .json();
    assert_eq!(one, a["job"]);

    // Replace: 200; fields left out take their defaults (no merge), but the start date left
    // out is kept.
    let b = put(
        &srv,
        "ping",
        json!({"name": "ping", "type": "interval_based", "service": "test.echo",
               "hours": 1, "repeats": 3}),
        200,
    )
    .await;
    assert_eq!(b["created"], false);
    assert_eq!(b["config_version"], v0 + 5);
    assert_eq!(
        b["job"],
        json!({"name": "ping", "active": true, "type": "interval_based", "service": "test.echo",
               "start_date": start, "hours": 1, "repeats": 3, "jitter_ms": 0, "overlap": "skip"})
    );
    assert_eq!(jobs(&srv).await[2], b["job"]);

    // Refused, each naming the field; nothing stored.
    let base = r#""type": "interval_based", "service": "test.echo""#;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "minutes": 5, "every": 5, "tz": "UTC"}}"#),
        &["unknown field(s) every, tz", "timezone"],
    )
    .await;
    refused(
        &srv,
        "ping",
        r#"{"type": "hourly", "service": "s"}"#,
        &["type:", "unknown variant"],
    )
    .await;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "minutes": "five"}}"#),
        &["minutes:", "invalid type"],
    )
    .await;
    refused(&srv, "ping", &format!("{{{base}}}"), &["needs an interval"]).await;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "days": 400}}"#),
        &["days:", "at most a year"],
    )
    .await;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "minutes": 5, "repeats": 0}}"#),
        &["repeats:", "at least 1"],
    )
    .await;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "minutes": 5, "jitter_ms": 3600001}}"#),
        &["jitter_ms:"],
    )
    .await;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "minutes": 5, "start_date": "2030-12-01 08:00"}}"#),
        &["start_date:", "RFC 3339"],
    )
    .await;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "minutes": 5, "overlap": "queue"}}"#),
        &["overlap:", "unknown variant"],
    )
    .await;
    refused(
        &srv,
        "ping",
        &format!(r#"{{{base}, "minutes": 5, "cron": "* * * * *"}}"#),
        &["cron:", "only a cron_style job"],
    )
    .await;
    refused(
        &srv,
        "ping",
        r#"{"type": "one_time", "service": "s", "seconds": 5}"#,
        &["seconds:", "only an interval_based job"],
    )
    .await;
    refused(
        &srv,
        "report",
        r#"{"type": "cron_style", "service": "s", "cron": "0 25 * * *"}"#,
        &["cron:", "not a valid cron expression"],
    )
    .await;
    refused(
        &srv,
        "report",
        r#"{"type": "cron_style", "service": "s", "cron": "* * * *"}"#,
        &["cron:", "4 field(s)"],
    )
    .await;
    refused(
        &srv,
        "report",
        r#"{"type": "cron_style", "service": "s"}"#,
        &["cron:", "missing"],
    )
    .await;
    refused(
        &srv,
        "report",
        r#"{"type": "cron_style", "service": "s", "cron": "0 8 * * *", "timezone": "Mars/Base"}"#,
        &["timezone:", "IANA"],
    )
    .await;
    refused(
        &srv,
        "ping",
        r#"{"type": "one_time"}"#,
        &["missing field `service`"],
    )
    .await;
    refused(
        &srv,
        "ping",
        r#"{"type": "one_time", "service": ""}"#,
        &["service:"],
    )
    .await;
    refused(
        &srv,
        "ping",
        r#"{"name": "pong", "type": "one_time", "service": "s"}"#,
        &["cannot be renamed"],
    )
    .await;
    refused(
        &srv,
        "bad%20name",
        r#"{"type": "one_time", "service": "s"}"#,
        &["name:", "not a valid job name"],
    )
    .await;
    refused(&srv, "ping", "[1]", &["JSON object"]).await;
    refused(&srv, "ping", "not json", &["not JSON"]).await;
    assert_eq!(jobs(&srv).await[2], b["job"], "unchanged");

    // Disable / enable: `active` alone changes, a config change each.
    let v = config_version(&srv).await;
    let r = admin(&srv, "POST", "/v1/jobs/ping/disable", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let mut off = b["job"].clone();
    off["active"] = json!(false);
    assert_eq!(r.json(), json!({"config_version": v + 1, "job": off}));
    assert_eq!(jobs(&srv).await[2], off);
    let r = admin(&srv, "POST", "/v1/jobs/ping/enable", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["job"], b["job"]);
    assert_eq!(config_version(&srv).await, v + 2);

    // The admin token is required.
    let r = srv.admin("GET", "/v1/jobs", None, b"").await;
    assert_eq!(r.status, 401);
    let r = srv.admin("PUT", "/v1/jobs/x", Some("wrong"), b"{}").await;
    assert_eq!(r.status, 401);

    // Unknown jobs: 404 with a message naming them.
    for (method, path) in [
        ("GET", "/v1/jobs/ghost"),
        ("DELETE", "/v1/jobs/ghost"),
        ("POST", "/v1/jobs/ghost/enable"),
        ("POST", "/v1/jobs/ghost/disable"),
    ] {
        let r = admin(&srv, method, path, Value::Null).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", text(&r));
        assert_eq!(r.json()["error"], "no job named ghost");
    }

    // Survives a restart (read back from the store).
    let srv = srv.restart().await;
    assert_eq!(names(&srv).await, ["nightly", "once", "ping", "report"]);
    assert_eq!(jobs(&srv).await[2], b["job"]);

    // Delete: gone at once.
    let v = config_version(&srv).await;
    let r = admin(&srv, "DELETE", "/v1/jobs/ping", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        r.json(),
        json!({"config_version": v + 1, "deleted": "ping"})
    );
    assert_eq!(names(&srv).await, ["nightly", "once", "report"]);
    let r = admin(&srv, "GET", "/v1/jobs/ping", Value::Null).await;
    assert_eq!(r.status, 404);
    srv.assert_no_errors(&[]);
}

/// A failed command's standard error.
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn jobs_through_the_cli() {
    let srv = Env::new().with_test_services().start().await;
    let v0 = config_version(&srv).await;

    let out = ok(&srv.cli(&[
            "jobs",
            "put",
            "ping",
            "--json",
            r#"{"type": "interval_based", "service": "test.echo", "hours": 1, "minutes": 30, "repeats": 3}"#,
        ],
    ));
    assert_eq!(
        out,
        format!(
            "job ping created (config version {}): every 1 hour 30 minutes (3 times)\n",
            v0 + 1
        )
    );
    let file = srv.dir.join("report.json");
    std::fs::write(
        &file,
        r#"{"type": "cron_style", "service": "reports.daily", "cron": "0 8 * * *", "timezone": "Europe/Warsaw", "start_date": "2030-01-01T00:00:00+01:00"}"#,
    )
    .unwrap();
    let put = srv.cli(&["jobs", "put", "report", "--file", file.to_str().unwrap()]);
    let out = ok(&put);
    assert!(
        out.starts_with("job report created") && out.contains("cron 0 8 * * * Europe/Warsaw"),
        "{out}"
    );
    assert_eq!(
        String::from_utf8_lossy(&put.stderr),
        "warning: no service named reports.daily is deployed\n"
    );
    let out = ok(&srv.cli(&[
        "jobs",
        "put",
        "once",
        "--json",
        r#"{"type": "one_time", "service": "test.echo"}"#,
        "--output",
        "json",
    ]));
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["created"], true);
    assert_eq!(answer["job"]["type"], "one_time");

    // list: a line per job by name; --output json is the API's answer.
    let out = ok(&srv.cli(&["jobs", "list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("JOB") && lines[0].contains("SCHEDULE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("once ") && lines[1].ends_with(" once"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("ping ") && lines[2].contains(" yes "),
        "{out}"
    );
    assert!(
        lines[3].contains("reports.daily")
            && lines[3].contains("2030-01-01T00:00:00+01:00")
            && lines[3].ends_with("cron 0 8 * * * Europe/Warsaw"),
        "{out}"
    );
    let listed: Value =
        serde_json::from_str(&ok(&srv.cli(&["jobs", "list", "--output", "json"]))).unwrap();
    assert_eq!(listed["jobs"], Value::Array(jobs(&srv).await));

    // get: field per line; --output json the definition.
    let out = ok(&srv.cli(&["jobs", "get", "ping"]));
    assert!(out.contains("name: ping\n"), "{out}");
    assert!(out.contains("type: interval_based\n"), "{out}");
    assert!(out.contains("repeats: 3\n"), "{out}");
    let got: Value =
        serde_json::from_str(&ok(&srv.cli(&["jobs", "get", "ping", "--output", "json"]))).unwrap();
    assert_eq!(got, jobs(&srv).await[1]);

    // disable / enable.
    let v = config_version(&srv).await;
    let out = ok(&srv.cli(&["jobs", "disable", "ping"]));
    assert_eq!(
        out,
        format!("job ping disabled (config version {})\n", v + 1)
    );
    let out = ok(&srv.cli(&["jobs", "list"]));
    assert!(out.lines().nth(2).unwrap().contains(" no "), "{out}");
    assert_eq!(jobs(&srv).await[1]["active"], false);
    let out = ok(&srv.cli(&["jobs", "enable", "ping"]));
    assert_eq!(
        out,
        format!("job ping enabled (config version {})\n", v + 2)
    );
    assert_eq!(jobs(&srv).await[1]["active"], true);

    // Refused: the server's message, naming the field, and the status; nothing stored.
    let v = config_version(&srv).await;
    let err = failed(&srv.cli(&[
        "jobs",
        "put",
        "bad",
        "--json",
        r#"{"type": "one_time", "service": "s", "minutes": 5}"#,
    ]));
    assert!(
        err.contains("job bad: minutes: only an interval_based job has it")
            && err.contains("(HTTP 400)"),
        "{err}"
    );
    let err = failed(&srv.cli(&["jobs", "put", "bad", "--json", "{not json"]));
    assert!(err.contains("--json is not JSON"), "{err}");
    let err = failed(&srv.cli(&["jobs", "put", "bad"]));
    assert!(err.contains("--file"), "{err}");
    let err = failed(&srv.cli(&["jobs", "put", "bad", "--file", "/nonexistent/x.json"]));
    assert!(err.contains("cannot read /nonexistent/x.json"), "{err}");
    assert_eq!(config_version(&srv).await, v);

    // delete.
    let out = ok(&srv.cli(&["jobs", "delete", "ping"]));
    assert_eq!(
        out,
        format!("job ping deleted (config version {})\n", v + 1)
    );
    let err = failed(&srv.cli(&["jobs", "get", "ping"]));
    assert!(err.contains("no job named ping (HTTP 404)"), "{err}");
    let err = failed(&srv.cli(&["jobs", "delete", "ping"]));
    assert!(err.contains("no job named ping (HTTP 404)"), "{err}");
    assert_eq!(names(&srv).await, ["once", "report"]);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn jobs_export_and_import_with_replace_and_dry_run() {
    let srv = Env::new().with_test_services().start().await;
    put(
        &srv,
        "a",
        json!({"type": "interval_based", "service": "test.echo", "minutes": 5,
               "extra": {"k": [1, 2]}}),
        201,
    )
    .await;
    put(
        &srv,
        "b",
        json!({"type": "one_time", "service": "test.echo",
               "start_date": "2030-06-01T12:00:00+02:00", "active": false}),
        201,
    )
    .await;
    put(
        &srv,
        "c",
        json!({"type": "cron_style", "service": "test.echo", "cron": "*/10 * * * *",
               "timezone": "America/New_York"}),
        201,
    )
    .await;
    let a_start = jobs(&srv).await[0]["start_date"].clone();

    // Exported as YAML, field by field, name first.
    let first = srv.dir.join("first.yaml");
    ok(&srv.cli(&["config", "export", "-f", first.to_str().unwrap()]));
    let first_text = std::fs::read_to_string(&first).unwrap();
    assert!(
        first_text.contains("job:\n- name: a\n  active: true\n  type: interval_based\n"),
        "{first_text}"
    );
    assert!(
        first_text.contains("start_date: 2030-06-01T12:00:00+02:00"),
        "{first_text}"
    );
    assert!(
        first_text.contains("timezone: America/New_York"),
        "{first_text}"
    );
    let doc = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    assert_eq!(doc["job"], Value::Array(jobs(&srv).await));

    // Imported back: nothing changes.
    let out = ok(&srv.cli(&["config", "import", first.to_str().unwrap()]));
    assert!(out.starts_with("0 changes, 3 unchanged"), "{out}");
    // A job listed without its start date keeps the stored one: no change either.
    let no_start = srv.dir.join("no-start.yaml");
    std::fs::write(
        &no_start,
        "job:\n- name: a\n  type: interval_based\n  service: test.echo\n  minutes: 5\n  extra: {k: [1, 2]}\n",
    )
    .unwrap();
    let out = ok(&srv.cli(&["config", "import", no_start.to_str().unwrap()]));
    assert!(out.starts_with("0 changes, 1 unchanged"), "{out}");

    // --replace with a document that lists only `a` (changed): b and c go, in one
    // transaction; a keeps its start date.
    let only_a = srv.dir.join("only-a.yaml");
    std::fs::write(
        &only_a,
        "job:\n- name: a\n  type: interval_based\n  service: test.echo\n  minutes: 10\n",
    )
    .unwrap();
    let v = config_version(&srv).await;
    let out = ok(&srv.cli(&["config", "import", "--replace", only_a.to_str().unwrap()]));
    assert!(out.contains("update job a"), "{out}");
    assert!(out.contains("delete job b"), "{out}");
    assert!(out.contains("delete job c"), "{out}");
    assert!(out.contains("3 changes"), "{out}");
    assert_eq!(config_version(&srv).await, v + 1, "one transaction");
    let live = jobs(&srv).await;
    assert_eq!(
        live,
        [
            json!({"name": "a", "active": true, "type": "interval_based", "service": "test.echo",
                "start_date": a_start, "minutes": 10, "jitter_ms": 0, "overlap": "skip"})
        ],
        "replaced, not merged; the start date kept"
    );

    // A dry run changes nothing.
    let v = config_version(&srv).await;
    let out = ok(&srv.cli(&["config", "import", "--dry-run", first.to_str().unwrap()]));
    assert!(out.contains("would create job b"), "{out}");
    assert!(out.contains("would create job c"), "{out}");
    assert!(out.contains("would update job a"), "{out}");
    assert_eq!(config_version(&srv).await, v);
    assert_eq!(names(&srv).await, ["a"]);

    // Validated in full: one bad job, and the good one beside it is not written.
    for (bad, needle) in [
        (
            json!({"job": [
                {"name": "d", "type": "one_time", "service": "s"},
                {"name": "e", "type": "cron_style", "service": "s", "cron": "0 8 * * *",
                 "timezone": "Nowhere/Land"},
            ]}),
            "job e: timezone:",
        ),
        (
            json!({"job": [{"name": "d", "type": "one_time", "service": "s", "every": 3}]}),
            "job[0]: job d: unknown field(s) every",
        ),
        (
            json!({"job": [{"name": "d", "type": "one_time", "service": "s"},
                           {"name": "d", "type": "one_time", "service": "s"}]}),
            "job: d is listed twice",
        ),
    ] {
        let r = admin(&srv, "POST", "/v1/config", bad).await;
        assert_eq!(r.status, 400, "{}", text(&r));
        assert!(text(&r).contains(needle), "{} lacks {needle}", text(&r));
    }
    assert_eq!(config_version(&srv).await, v);
    assert_eq!(names(&srv).await, ["a"]);

    // The first export imported: back as it was, and exported again the same.
    let out = ok(&srv.cli(&["config", "import", first.to_str().unwrap()]));
    assert!(out.contains("create job b"), "{out}");
    assert!(out.contains("create job c"), "{out}");
    assert!(out.contains("update job a"), "{out}");
    assert_eq!(names(&srv).await, ["a", "b", "c"]);
    let second = srv.dir.join("second.yaml");
    ok(&srv.cli(&["config", "export", "-f", second.to_str().unwrap()]));
    assert_eq!(
        export_body(&std::fs::read_to_string(&second).unwrap()),
        export_body(&first_text)
    );
    srv.assert_no_errors(&[]);
}

/// Waits until `srv` has job `name` with `field` = `want` (`Value::Null`: no such job).
async fn has(srv: &Server, name: &str, field: &str, want: Value) {
    api::has(srv, "jobs", "job", name, field, want).await
}

#[tokio::test]
async fn a_job_change_reaches_the_other_server() {
    let db = PgDatabase::create();
    let url = format!("{:?}", db.url);
    let secret = cluster_secret("live");
    let a = Env::new().bus_member(&url, "a", &secret).start().await;
    let b = Env::new().bus_member(&url, "b", &secret).start().await;
    linked(&a, &["b"]).await;
    linked(&b, &["a"]).await;

    let job = json!({"type": "interval_based", "service": "test.echo", "seconds": 30});
    put(&a, "tick", job, 201).await;
    has(&b, "tick", "seconds", json!(30)).await;
    let r = admin(&b, "POST", "/v1/jobs/tick/disable", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    has(&a, "tick", "active", json!(false)).await;
    let r = admin(&a, "DELETE", "/v1/jobs/tick", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    has(&b, "tick", "name", Value::Null).await;
    // An import through B reaches A too.
    let r = admin(
        &b,
        "POST",
        "/v1/config",
        json!({"job": [{"name": "imported", "type": "one_time", "service": "test.echo"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    has(&a, "imported", "type", json!("one_time")).await;
    for s in [&a, &b] {
        s.assert_no_errors(&[]);
    }
    let _ = std::fs::remove_file(secret);
}

#[tokio::test]
async fn a_server_restarted_with_the_store_down_boots_its_jobs_from_the_snapshot() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let srv = Env::new().set("store", "url", &url).start().await;
    let stored = put(
        &srv,
        "nightly",
        json!({"type": "cron_style", "service": "test.echo", "cron": "0 3 * * *",
               "timezone": "Europe/Warsaw"}),
        201,
    )
    .await["job"]
        .clone();
    let v = config_version(&srv).await;
    let snapshot = srv.dir.join("snapshot.json");
    eventually(Duration::from_secs(20), "the snapshot with the job", || {
        let text = std::fs::read_to_string(&snapshot).unwrap_or_default();
        async move {
            (text.contains(&format!("\"config_version\":{v}"))
                && text.contains("\"name\":\"nightly\""))
            .then_some(())
        }
    })
    .await;
    pg.stop();
    // The only path to the job now is the snapshot, read at start.
    let srv = srv.restart().await;
    assert!(
        srv.log().contains("serving the on-disk snapshot"),
        "{}",
        srv.log()
    );
    assert_eq!(jobs(&srv).await, [stored]);
    // A change needs the store: refused, and nothing changes here.
    let r = admin(&srv, "POST", "/v1/jobs/nightly/disable", Value::Null).await;
    assert_eq!(r.status, 503, "{}", text(&r));
    assert_eq!(jobs(&srv).await[0]["active"], true);
}
