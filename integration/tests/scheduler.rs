//! The scheduler against real servers and real Python workers. Every run is counted by the
//! service itself (a line appended to a file: job, channel type, worker pid, payload), so
//! "fires once" is counted, not assumed. Jobs of 1 s intervals and per-second cron
//! expressions keep the waits short; "stopped firing" is judged against another job's
//! runs, not a fixed sleep.

use oxbus_integration::api::admin;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn service(runs: &Path) -> String {
    format!(
        r#"import json
import os
import time

from oxbus import Service


class Record(Service):
    name = 'sched.record'

    def handle(self):
        p = self.request.payload or {{}}
        line = json.dumps({{'job': self.channel.name, 'type': self.channel.type,
                            'pid': os.getpid(), 'extra': p, 't': time.time()}})
        with open({runs:?}, 'a') as f:
            f.write(line + '\n')
        if isinstance(p, dict) and p.get('sleep'):
            time.sleep(p['sleep'])
"#
    )
}

fn runs_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "oxbus-sched-{}-{}-{tag}",
        std::process::id(),
        next_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("runs.jsonl")
}

/// Every line the service wrote.
fn lines(runs: &Path) -> Vec<Value> {
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count(runs: &Path, job: &str) -> usize {
    lines(runs).iter().filter(|l| l["job"] == job).count()
}

async fn wait_count(runs: &Path, job: &str, at_least: usize) {
    eventually(
        Duration::from_secs(30),
        &format!("{job} to run {at_least} times"),
        || {
            let n = count(runs, job);
            async move { (n >= at_least).then_some(()) }
        },
    )
    .await;
}

/// A job's history (`GET /v1/jobs/{job}/runs`) once its runs satisfy `done`: the history is
/// written in batches after each run is over, so it lags what the service has recorded.
async fn history_when(
    srv: &Server,
    job: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let path = format!("/v1/jobs/{job}/runs");
    let done = &done;
    eventually(Duration::from_secs(30), what, || {
        let path = &path;
        async move {
            let h = admin(srv, "GET", path, Value::Null).await.json();
            h["runs"].as_array().is_some_and(|r| done(r)).then_some(h)
        }
    })
    .await
}

async fn put_job(srv: &Server, name: &str, def: Value) {
    let r = admin(srv, "PUT", &format!("/v1/jobs/{name}"), def).await;
    assert!(
        r.status == 200 || r.status == 201,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

fn in_secs(s: f64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs_f64(s);
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // RFC 3339 in UTC with milliseconds, computed without a date library.
    let whole = secs.floor() as i64;
    let ms = ((secs - secs.floor()) * 1000.0) as i64;
    let (days, rem) = (whole.div_euclid(86_400), whole.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test]
async fn every_kind_of_job_fires_and_edits_take_effect_at_once() {
    let runs = runs_file("one");
    let srv = Env::new()
        .workers(2)
        .service("sched.py", &service(&runs))
        .start()
        .await;
    put_job(
        &srv,
        "tick",
        json!({"type": "interval_based", "service": "sched.record",
                                 "seconds": 1, "extra": {"v": 1}}),
    )
    .await;
    put_job(
        &srv,
        "cron",
        json!({"type": "cron_style", "service": "sched.record",
                                 "cron": "* * * * * *", "timezone": "Europe/Warsaw"}),
    )
    .await;
    put_job(
        &srv,
        "once",
        json!({"type": "one_time", "service": "sched.record",
                                 "start_date": in_secs(1.0)}),
    )
    .await;
    wait_count(&runs, "tick", 3).await;
    wait_count(&runs, "cron", 3).await;
    wait_count(&runs, "once", 1).await;
    let first = lines(&runs);
    let tick = first.iter().find(|l| l["job"] == "tick").unwrap();
    assert_eq!(tick["type"], "scheduler", "{tick}");
    assert_eq!(tick["extra"], json!({"v": 1}));
    // Edit live: the next runs carry the new payload.
    put_job(
        &srv,
        "tick",
        json!({"type": "interval_based", "service": "sched.record",
                                 "seconds": 1, "extra": {"v": 2}}),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "a run with the new payload",
        || {
            let l = lines(&runs);
            async move {
                l.iter()
                    .any(|x| x["job"] == "tick" && x["extra"] == json!({"v": 2}))
                    .then_some(())
            }
        },
    )
    .await;
    // Disable: it stops (judged over three more cron runs); the one_time job ran once.
    let r = admin(&srv, "POST", "/v1/jobs/tick/disable", Value::Null).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let stopped_at = count(&runs, "tick");
    let cron_now = count(&runs, "cron");
    wait_count(&runs, "cron", cron_now + 3).await;
    assert!(
        count(&runs, "tick") <= stopped_at + 1,
        "a disabled job kept firing"
    );
    assert_eq!(count(&runs, "once"), 1);
    // Delete the cron job: it never fires again (judged over the tick job, enabled again).
    let r = admin(&srv, "DELETE", "/v1/jobs/cron", Value::Null).await;
    assert_eq!(r.status, 200);
    let cron_gone_at = count(&runs, "cron");
    admin(&srv, "POST", "/v1/jobs/tick/enable", Value::Null).await;
    let ticks = count(&runs, "tick");
    wait_count(&runs, "tick", ticks + 3).await;
    assert!(
        count(&runs, "cron") <= cron_gone_at + 1,
        "a deleted job kept firing"
    );

    // Execute now: the run happens before the answer, whatever the schedule.
    put_job(
        &srv,
        "manual",
        json!({"type": "one_time", "service": "sched.record",
                                   "start_date": "2099-01-01T00:00:00Z"}),
    )
    .await;
    let r = admin(&srv, "POST", "/v1/jobs/manual/execute", Value::Null).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["run"]["outcome"], "ok", "{}", r.json());
    assert_eq!(count(&runs, "manual"), 1);
    // History: scheduled and manual runs, with the server and the outcome.
    let h = admin(&srv, "GET", "/v1/jobs/tick/runs?limit=5", Value::Null)
        .await
        .json();
    let list = h["runs"].as_array().unwrap();
    assert_eq!(list.len(), 5, "{h}");
    assert!(
        list.iter()
            .all(|r| r["outcome"] == "ok" && r["trigger"] == "schedule"),
        "{h}"
    );
    let h = admin(&srv, "GET", "/v1/jobs/manual/runs", Value::Null)
        .await
        .json();
    assert_eq!(h["runs"][0]["trigger"], "manual", "{h}");
    assert!(h["runs"][0]["duration_ms"].is_number());
    let status = admin(&srv, "GET", "/v1/scheduler", Value::Null)
        .await
        .json();
    assert_eq!(status["this_server_leads"], true, "{status}");
    // The same through the CLI.
    let out = cli(&srv, &["execute", "manual"]);
    assert!(
        out.contains(" manual manual on ") && out.trim_end().ends_with(" ok"),
        "{out}"
    );
    assert_eq!(count(&runs, "manual"), 2);
    let out = cli(&srv, &["history", "manual"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = cli(&srv, &["status"]);
    assert!(out.contains("leads the scheduler (this server)"), "{out}");
}

/// `oxbus jobs …` against `srv`: its standard output (the command must succeed).
fn cli(srv: &Server, args: &[&str]) -> String {
    let out = srv.cli(&[&["jobs"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn overlapping_runs_are_skipped_by_default() {
    let runs = runs_file("overlap");
    let srv = Env::new()
        .workers(2)
        .service("sched.py", &service(&runs))
        .start()
        .await;
    put_job(
        &srv,
        "slow",
        json!({"type": "interval_based", "service": "sched.record",
                                 "seconds": 1, "extra": {"sleep": 2.5}}),
    )
    .await;
    history_when(&srv, "slow", "a skipped run in the history", |runs| {
        runs.iter().any(|x| x["outcome"] == "skipped")
    })
    .await;
    // Never two at once: the service's own start times are at least the run time apart.
    let t: Vec<f64> = lines(&runs)
        .iter()
        .map(|l| l["t"].as_f64().unwrap())
        .collect();
    assert!(t.windows(2).all(|w| w[1] - w[0] >= 2.4), "{t:?}");
}

fn cluster_server(url: &str, name: &str, secret: &Path, runs: &Path) -> Env {
    Env::new()
        .workers(1)
        .service("sched.py", &service(runs))
        .cluster_member(url, name, secret)
}

async fn leader(srv: &Server) -> Option<String> {
    let s = admin(srv, "GET", "/v1/scheduler", Value::Null).await.json();
    s["leader"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn three_servers_fire_each_run_once_and_a_killed_leader_is_replaced() {
    let db = PgDatabase::create();
    let url = format!("{:?}", db.url);
    let secret = cluster_secret("scheduler");
    let runs = runs_file("cluster");
    let servers = vec![
        ("a", cluster_server(&url, "a", &secret, &runs).start().await),
        ("b", cluster_server(&url, "b", &secret, &runs).start().await),
        ("c", cluster_server(&url, "c", &secret, &runs).start().await),
    ];
    put_job(
        &servers[0].1,
        "beat",
        json!({"type": "interval_based", "service": "sched.record",
                                          "seconds": 1}),
    )
    .await;
    wait_count(&runs, "beat", 5).await;
    // Each due time ran once: one history entry per due time, one line per run.
    let h = admin(
        &servers[1].1,
        "GET",
        "/v1/jobs/beat/runs?limit=100",
        Value::Null,
    )
    .await
    .json();
    each_due_time_once(&h);

    // Kill the leader -9; a one_time job due while nobody leads runs once at takeover.
    let lead = leader(&servers[0].1).await.expect("a leader");
    let (i, _) = servers
        .iter()
        .enumerate()
        .find(|(_, (n, _))| *n == lead)
        .unwrap();
    let mut servers = servers;
    let (_, victim) = servers.remove(i);
    let survivor = &servers[0].1;
    put_job(
        survivor,
        "gap",
        json!({"type": "one_time", "service": "sched.record",
                                    "start_date": in_secs(1.5)}),
    )
    .await;
    let victim_workers = victim.worker_pids();
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    let survivors: Vec<&str> = servers.iter().map(|(n, _)| *n).collect();
    eventually(
        Duration::from_secs(30),
        "another server to lead",
        || async {
            leader(survivor)
                .await
                .filter(|l| survivors.contains(&l.as_str()))
                .map(|_| ())
        },
    )
    .await;
    wait_count(&runs, "gap", 1).await;
    let beats = count(&runs, "beat");
    wait_count(&runs, "beat", beats + 3).await;
    assert_eq!(count(&runs, "gap"), 1, "the gap's run ran more than once");
    let h = admin(survivor, "GET", "/v1/jobs/beat/runs?limit=100", Value::Null)
        .await
        .json();
    each_due_time_once(&h);
    // Counted by the service: with the job stopped, the runs the survivors' workers made
    // are exactly the survivors' entries in the history, which has one entry per due time;
    // so no due time ran twice on the survivors, recorded or not. (A run of the killed
    // leader may have lost its history entry with it; its due time was claimed in the
    // store, so nobody runs it again.)
    admin(survivor, "POST", "/v1/jobs/beat/disable", Value::Null).await;
    eventually(
        Duration::from_secs(15),
        "as many runs by the survivors as history entries of theirs",
        || async {
            let made = lines(&runs)
                .iter()
                .filter(|l| l["job"] == "beat")
                .filter(|l| !victim_workers.contains(&(l["pid"].as_u64().unwrap() as u32)))
                .count();
            let h = admin(survivor, "GET", "/v1/jobs/beat/runs?limit=100", Value::Null)
                .await
                .json();
            let recorded = h["runs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["server"] != lead.as_str() && r["outcome"] == "ok")
                .count();
            (made > 0 && made == recorded).then(|| each_due_time_once(&h))
        },
    )
    .await;
    drop(victim);
    drop(db);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_job_turned_off_and_on_or_deleted_and_created_again_starts_afresh() {
    let runs = runs_file("again");
    let srv = Env::new()
        .workers(2)
        .service("sched.py", &service(&runs))
        .start()
        .await;
    let every = |name: &str, s: u64| json!({"name": name, "type": "interval_based", "service": "sched.record", "seconds": s});
    put_job(&srv, "clock", every("clock", 1)).await;
    put_job(&srv, "slow", every("slow", 3)).await;
    wait_count(&runs, "slow", 1).await;
    // Off for longer than its interval: back on, it does not make up for the time off (a
    // run due while it was off would carry a due time from before it was enabled again).
    admin(&srv, "POST", "/v1/jobs/slow/disable", Value::Null).await;
    let clock = count(&runs, "clock");
    wait_count(&runs, "clock", clock + 5).await;
    let enabled_at = now_ms();
    admin(&srv, "POST", "/v1/jobs/slow/enable", Value::Null).await;
    let slow = count(&runs, "slow");
    wait_count(&runs, "slow", slow + 1).await;
    // The history is written after a run is over (in batches), the runs file during it: wait
    // until the history lists every run the file has, so its newest entry is the new run.
    let ran = count(&runs, "slow");
    let h = history_when(
        &srv,
        "slow",
        "the history of slow to list its runs",
        |runs| runs.len() >= ran,
    )
    .await;
    let latest = &h["runs"][0];
    assert!(
        latest["due"].as_i64().unwrap() >= enabled_at - 5,
        "a run due while the job was off ran when it came back: {latest}, enabled at {enabled_at}"
    );
    // A one_time job that ran, deleted and created again (an import of an export, say): its
    // time has passed, so it runs at once, as any new one_time job would.
    let once = json!({"type": "one_time", "service": "sched.record", "start_date": in_secs(0.5)});
    put_job(&srv, "once", once.clone()).await;
    wait_count(&runs, "once", 1).await;
    let r = admin(&srv, "DELETE", "/v1/jobs/once", Value::Null).await;
    assert_eq!(r.status, 200);
    put_job(&srv, "once", once).await;
    wait_count(&runs, "once", 2).await;
}

/// Asserts that a job's history (`GET /v1/jobs/{name}/runs`) has no due time twice.
fn each_due_time_once(history: &Value) {
    let dues: Vec<i64> = history["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["due"].as_i64())
        .collect();
    let mut unique = dues.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), dues.len(), "a due time ran twice: {dues:?}");
}
