//! Faults a service, a deploy or a crash can cause, against the real binary and real
//! workers (issue 16): no service takes the server down, whatever exit code it passes to
//! `os._exit`; a deploy whose import ends or never finishes is refused at its deadline and
//! holds nothing meanwhile (the scheduler, channel changes and traffic carry on); the files
//! the server creates are private; the worker's token is out of `ps`'s sight; a worker's
//! memory has a ceiling by default; a killed server's runtime directory does not outlive
//! the next start; a missing services directory is created.
//!
//! Over ~800 lines on purpose: every test shares this file's fixtures (`faults_env`, the deploy
//! and hanging-module helpers); a split would copy them or cost another test binary to link.

use bytes::Bytes;
use nix::sys::signal::Signal;
use oxbus_integration::api::text;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Services that end their own worker, report on it, or grow it.
const FAULTS: &str = r#"
import os
import sys

from oxbus import Service

HOG = []


class Exit(Service):
    name = 'faults.exit'

    def handle(self):
        os._exit(int(self.request.payload['code']))


class Me(Service):
    name = 'faults.me'

    def handle(self):
        mask = os.umask(0)
        os.umask(mask)
        self.response.payload = {'pid': os.getpid(), 'umask': mask,
                                 'stdin': sys.stdin.read() if sys.stdin else None}


class Wait(Service):
    name = 'faults.wait'

    def handle(self):
        import time
        with open(self.request.payload['started'], 'w') as f:
            f.write(str(os.getpid()))
        while not os.path.exists(self.request.payload['go']):
            time.sleep(0.02)
        self.response.payload = {'pid': os.getpid()}


class Hog(Service):
    name = 'faults.hog'

    def handle(self):
        HOG.append(b'\x01' * (int(self.request.payload['mib']) << 20))
        self.response.payload = {'pid': os.getpid()}
"#;

fn faults_env() -> Env {
    Env::new()
        .with_test_services()
        .service("faults.py", FAULTS)
        .channel("/exit", &["POST"], "faults.exit")
        .channel("/me", &["GET"], "faults.me")
        .channel("/hog", &["POST"], "faults.hog")
        .channel("/wait", &["POST"], "faults.wait")
}

/// A private scratch directory of this test process (removed by the test at its end).
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "oxbus-faults-{}-{}-{tag}",
        std::process::id(),
        next_id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

async fn deploy(srv: &Server, modules: &[(&str, &str)]) -> Resp {
    deploy_with(srv, modules, false).await
}

async fn deploy_with(srv: &Server, modules: &[(&str, &str)], skip_unchanged: bool) -> Resp {
    let list: Vec<Value> = modules
        .iter()
        .map(|(n, s)| json!({"name": n, "source": s}))
        .collect();
    let body = json!({"modules": list, "deployed_by": "faults", "skip_unchanged": skip_unchanged});
    srv.admin(
        "POST",
        "/v1/modules",
        Some(&srv.admin_token()),
        body.to_string().as_bytes(),
    )
    .await
}

/// Waits until the server runs `n` workers again, all ready.
async fn wait_workers(srv: &Server, n: usize) {
    eventually(
        Duration::from_secs(30),
        "the workers to be back",
        || async {
            let info = srv
                .admin("GET", "/v1/info", Some(&srv.admin_token()), b"")
                .await;
            let ready = srv.worker_pids().len() == n
                && srv.get("/readyz").await.status == 200
                && info.status == 200;
            ready.then_some(())
        },
    )
    .await;
}

/// Keeps `tasks` connections sending `/echo` until `stop`; returns each answer's status
/// (0: no answer at all — a refused or dropped connection).
fn echo_load(
    srv: &Arc<Server>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..tasks)
        .map(|i| {
            let (srv, stop) = (srv.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let body = Bytes::from(json!({"task": i, "n": n}).to_string());
                    let r = srv
                        .try_request(
                            "POST",
                            "/echo",
                            &[("content-type", "application/json")],
                            body,
                        )
                        .await;
                    statuses.push(r.map(|r| r.status).unwrap_or(0));
                }
                statuses
            })
        })
        .collect()
}

#[tokio::test]
async fn a_handler_exiting_with_any_code_crashes_only_its_worker_under_load() {
    let srv = Arc::new(faults_env().workers(2).start().await);
    for code in [2, 3, 4] {
        let stop = Arc::new(AtomicBool::new(false));
        let load = echo_load(&srv, 3, &stop);
        let before = srv.worker_pids();
        // The dying worker's own request gets 503; the server stays.
        let r = srv.post_json("/exit", &json!({"code": code})).await;
        assert_eq!(r.status, 503, "os._exit({code}): {}", text(&r));
        // A replacement starts; the other worker answered meanwhile.
        eventually(Duration::from_secs(30), "a replacement worker", || {
            let pids = srv.worker_pids();
            let before = before.clone();
            async move { (pids.len() == 2 && pids != before).then_some(()) }
        })
        .await;
        wait_workers(&srv, 2).await;
        stop.store(true, Ordering::SeqCst);
        let mut statuses = Vec::new();
        for t in load {
            statuses.extend(t.await.unwrap());
        }
        // Answered throughout: 200, or 503 for a request the dying worker had; never a
        // connection the server dropped or refused.
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 503),
            "os._exit({code}): statuses {statuses:?}"
        );
        assert!(
            statuses.iter().filter(|s| **s == 200).count() > 0,
            "os._exit({code}): no request answered: {statuses:?}"
        );
        let r = srv.post_json("/echo", &json!({"after": code})).await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    assert!(
        !srv.log().contains("restarting will not help"),
        "{}",
        srv.log()
    );
    srv.assert_no_errors(&["worker died"]);
}

#[tokio::test]
async fn a_deployed_module_that_exits_at_import_is_refused_and_the_server_serves_on() {
    let srv = faults_env().workers(2).start().await;
    for code in [3, 2, 4] {
        let source = format!("import os\nos._exit({code})\n");
        let r = deploy(&srv, &[("exits_at_import", &source)]).await;
        assert_eq!(r.status, 422, "os._exit({code}) at import: {}", text(&r));
        let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains(&format!("exited with code {code} while importing")),
            "{error}"
        );
        wait_workers(&srv, 2).await;
        assert_eq!(srv.post_json("/echo", &json!({"x": 1})).await.status, 200);
        let m = srv
            .admin(
                "GET",
                "/v1/modules/exits_at_import",
                Some(&srv.admin_token()),
                b"",
            )
            .await;
        assert_eq!(m.status, 404, "{}", text(&m));
    }
    assert!(
        !srv.log().contains("restarting will not help"),
        "{}",
        srv.log()
    );
    srv.assert_no_errors(&["worker died"]);
}
/// The checking worker `checker` of a refused hung check is killed within `within`, and
/// `workers` workers serve again.
async fn checker_killed(srv: &Server, checker: u32, within: Duration, workers: usize) {
    eventually(within, "the checking worker to be killed", || {
        let alive = living(&[checker]);
        async move { alive.is_empty().then_some(()) }
    })
    .await;
    wait_workers(srv, workers).await;
}

/// No module `name` is deployed.
async fn module_absent(srv: &Server, token: &str, name: &str) {
    let m = srv
        .admin("GET", &format!("/v1/modules/{name}"), Some(token), b"")
        .await;
    assert_eq!(m.status, 404, "{}", text(&m));
}

/// A module whose import never ends; it first writes its worker's pid to `marker`.
fn hanging_module(marker: &Path) -> String {
    format!(
        "import os\nwith open({marker:?}, 'w') as f:\n    f.write(str(os.getpid()))\nwhile True:\n    pass\n"
    )
}

async fn marker_pid(marker: &Path) -> u32 {
    eventually(Duration::from_secs(30), "the hung import to start", || {
        let pid = std::fs::read_to_string(marker)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        async move { pid }
    })
    .await
}

const RECORD: &str = r#"
import json
import os
import time

from oxbus import Service


class Record(Service):
    name = 'sched.record'

    def handle(self):
        with open(os.environ['FAULTS_RUNS'], 'a') as f:
            f.write(json.dumps({'job': self.channel.name, 't': time.time()}) + '\n')
"#;

fn run_times(runs: &Path) -> Vec<f64> {
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["t"].as_f64())
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn a_hung_import_is_refused_at_its_deadline_and_holds_no_store_or_lock() {
    let tmp = scratch("hung");
    let runs = tmp.join("runs.jsonl");
    let marker = tmp.join("marker");
    // SQLite: one writer at a time, so a transaction held across the check would stop the
    // scheduler's lease, its claims and every admin change. A deadline of 30 s, so that what
    // is checked during the hang is not racing it on a loaded machine.
    let srv = Arc::new(
        faults_env()
            .workers(2)
            .set("deploy", "check_timeout_ms", "30000")
            .service("sched.py", RECORD)
            .env("FAULTS_RUNS", runs.to_str().unwrap())
            .start()
            .await,
    );
    let token = srv.admin_token();
    let job = json!({"type": "interval_based", "service": "sched.record", "seconds": 1});
    let r = srv
        .admin(
            "PUT",
            "/v1/jobs/tick",
            Some(&token),
            job.to_string().as_bytes(),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", text(&r));
    eventually(Duration::from_secs(30), "the job to fire", || {
        let n = run_times(&runs).len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let lease = |srv: Arc<Server>, token: String| async move {
        let s = srv
            .admin("GET", "/v1/scheduler", Some(&token), b"")
            .await
            .json();
        assert_eq!(s["this_server_leads"], true, "{s}");
        s["lease_expires_at"].clone()
    };

    let hung = hanging_module(&marker);
    let deploying = {
        let srv = srv.clone();
        tokio::spawn(async move { deploy(&srv, &[("hangs", &hung)]).await })
    };
    let checker = marker_pid(&marker).await;
    let hang_started = unix_now();
    let lease_at_start = lease(srv.clone(), token.clone()).await;

    // While the import spins: a channel change goes through, the job fires twice more, the
    // lease is renewed — all before the deploy has its answer.
    let ch = json!({"name": "during", "url_path": "/during", "methods": ["POST"], "service": "test.echo"});
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            ch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(srv.post_json("/during", &json!({"a": 1})).await.status, 200);
    eventually(Duration::from_secs(30), "two runs during the hang", || {
        let n = run_times(&runs)
            .iter()
            .filter(|t| **t > hang_started)
            .count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(30), "the lease to be renewed", || {
        let (srv, token, at_start) = (srv.clone(), token.clone(), lease_at_start.clone());
        async move {
            let now = lease(srv, token).await;
            (now.as_i64() > at_start.as_i64() || (now.is_string() && now != at_start)).then_some(())
        }
    })
    .await;
    assert!(
        !deploying.is_finished(),
        "the deploy answered before the channel change, the runs and the renewal were seen"
    );

    let r = deploying.await.unwrap();
    assert_eq!(r.status, 422, "{}", text(&r));
    let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("deploy.check_timeout_ms (30000 ms)"),
        "{error}"
    );
    // The spinning worker is gone, a replacement serves, nothing was stored.
    checker_killed(&srv, checker, Duration::from_secs(10), 2).await;
    module_absent(&srv, &token, "hangs").await;
    assert!(
        !srv.log().contains("did not answer within"),
        "the store was held: {}",
        srv.log()
    );
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn a_second_deploy_during_a_hung_check_is_checked_after_it_on_its_own() {
    let tmp = scratch("second");
    let marker = tmp.join("marker");
    // One worker: the second check has to wait for the hung one's replacement.
    let srv = Arc::new(
        faults_env()
            .workers(1)
            .channel("/hot", &["GET"], "hot.hello")
            .env("OXBUS_DEPLOY_CHECK_TIMEOUT_MS", "5000")
            .start()
            .await,
    );
    let hung = hanging_module(&marker);
    let first = {
        let srv = srv.clone();
        tokio::spawn(async move { deploy(&srv, &[("hangs", &hung)]).await })
    };
    marker_pid(&marker).await;
    let good = "from oxbus import Service\n\nclass Hello(Service):\n    name = 'hot.hello'\n\n    def handle(self):\n        self.response.payload = {'hot': True}\n";
    let r = deploy(&srv, &[("hot", good)]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let f = first.await.unwrap();
    assert_eq!(f.status, 422, "{}", text(&f));
    assert!(text(&f).contains("check_timeout_ms"), "{}", text(&f));
    let r = srv.get("/hot").await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["hot"], true);
    let m = srv
        .admin("GET", "/v1/modules/hangs", Some(&srv.admin_token()), b"")
        .await;
    assert_eq!(m.status, 404, "{}", text(&m));
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn a_config_import_with_a_hung_module_holds_no_lock_and_is_refused() {
    let tmp = scratch("import");
    let marker = tmp.join("marker");
    let srv = Arc::new(
        faults_env()
            .workers(2)
            .env("OXBUS_DEPLOY_CHECK_TIMEOUT_MS", "5000")
            .start()
            .await,
    );
    let token = srv.admin_token();
    let doc = json!({"service_module": [{"name": "hangs", "source": hanging_module(&marker)}]});
    let importing = {
        let (srv, token) = (srv.clone(), token.clone());
        tokio::spawn(async move {
            srv.admin(
                "POST",
                "/v1/config",
                Some(&token),
                doc.to_string().as_bytes(),
            )
            .await
        })
    };
    let checker = marker_pid(&marker).await;
    let ch = json!({"name": "during", "url_path": "/during", "methods": ["POST"], "service": "test.echo"});
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            ch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert!(
        !importing.is_finished(),
        "the import answered before the channel change went through"
    );
    let r = importing.await.unwrap();
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(
        text(&r).contains("check_timeout_ms (5000 ms)"),
        "{}",
        text(&r)
    );
    checker_killed(&srv, checker, Duration::from_secs(10), 2).await;
    module_absent(&srv, &token, "hangs").await;
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Every entry under `root` (but those in `skip`): (path, mode, kind).
fn walk(root: &Path, skip: &[&Path], out: &mut Vec<(PathBuf, u32, &'static str)>) {
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if skip.contains(&p.as_path()) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue; // gone meanwhile (a temp file renamed)
        };
        let kind = if m.is_dir() {
            "dir"
        } else if m.file_type().is_socket() {
            "socket"
        } else {
            "file"
        };
        out.push((p.clone(), m.mode() & 0o7777, kind));
        if m.is_dir() {
            walk(&p, skip, out);
        }
    }
}

#[tokio::test]
async fn everything_the_server_creates_is_private_and_workers_keep_the_operators_umask() {
    let tmp = scratch("modes");
    let (run, cache) = (tmp.join("run"), tmp.join("cache"));
    std::fs::create_dir(&run).unwrap();
    let srv = faults_env()
        .pickup()
        .umask(0o027)
        .env("XDG_RUNTIME_DIR", run.to_str().unwrap())
        .env("XDG_CACHE_HOME", cache.to_str().unwrap())
        .start()
        .await;
    // A deploy, so that the store has written (and the workers compiled) something.
    let good = "from oxbus import Service\n\nclass Hello(Service):\n    name = 'hot.hello'\n\n    def handle(self):\n        pass\n";
    let r = deploy(&srv, &[("hot", good)]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    for name in [
        "oxbus.db",
        "oxbus.db-wal",
        "oxbus.db-shm",
        "snapshot.json",
        "secret.key",
        "admin.token",
        "pickup",
    ] {
        assert!(srv.dir.join(name).exists(), "{name} missing");
    }
    let rundir = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .next()
        .expect("a runtime dir")
        .path();
    assert!(rundir.join("ipc.sock").exists());
    assert!(cache.join("oxbus").is_dir());

    let mut entries = Vec::new();
    let (services, config) = (srv.dir.join("services"), srv.dir.join("server.toml"));
    walk(&srv.dir, &[&services, &config], &mut entries);
    walk(&run, &[], &mut entries);
    walk(&cache, &[], &mut entries);
    let loose: Vec<_> = entries
        .iter()
        .filter(|(_, mode, kind)| match *kind {
            "dir" => *mode != 0o700,
            "file" => *mode != 0o600,
            _ => mode & 0o077 != 0,
        })
        .collect();
    assert!(loose.is_empty(), "not private: {loose:#?}");

    // User code runs with the umask the server was started with (0o027 here, set by the
    // harness whatever the test runner's is), not the server's own 077.
    let me = srv.get("/me").await.json();
    assert_eq!(me["umask"].as_u64(), Some(0o027), "{me}");
    drop(srv);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn the_worker_token_is_not_on_its_command_line_nor_in_its_environment() {
    let srv = faults_env().workers(1).start().await;
    let me = srv.get("/me").await.json();
    let pid = me["pid"].as_u64().unwrap();
    // User code reads an empty stdin: the token line was consumed, the pipe closed.
    assert_eq!(me["stdin"], "", "{me}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(!args.iter().any(|a| a.contains("token")), "{args:?}");
    // Nothing but the socket and the id: no argument could be the token.
    let flags: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(String::as_str)
        .collect();
    assert_eq!(flags, ["--socket", "--worker-id"], "{args:?}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ)
            .to_lowercase()
            .contains("token"),
        "the environment names a token"
    );
}

#[tokio::test]
async fn a_worker_past_the_rss_ceiling_is_recycled_without_a_failed_request() {
    let srv = Arc::new(
        faults_env()
            .workers(1)
            .set("workers", "max_rss_mb", "100")
            .start()
            .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = echo_load(&srv, 2, &stop);
    let r = srv.post_json("/hog", &json!({"mib": 200})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let hog = r.json()["pid"].as_u64().unwrap() as u32;
    eventually(Duration::from_secs(30), "the hog to be recycled", || {
        let alive = living(&[hog]);
        async move { alive.is_empty().then_some(()) }
    })
    .await;
    wait_workers(&srv, 1).await;
    stop.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for t in load {
        statuses.extend(t.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        srv.log().contains("reason=\"max_rss\"") || srv.log().contains("reason=max_rss"),
        "{}",
        srv.log()
    );
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_killed_servers_runtime_dir_is_removed_by_the_next_start() {
    let tmp = scratch("stale");
    let run = tmp.join("run");
    std::fs::create_dir(&run).unwrap();
    let mut killed = faults_env()
        .env("XDG_RUNTIME_DIR", run.to_str().unwrap())
        .start()
        .await;
    let first = format!("oxbus.{}.", killed.pid());
    let dirs = |run: &Path| -> Vec<String> {
        std::fs::read_dir(run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        dirs(&run).iter().any(|d| d.starts_with(&first)),
        "{:?}",
        dirs(&run)
    );
    killed.signal(Signal::SIGKILL);
    killed.wait_exit(Duration::from_secs(10));
    drop(killed);
    assert!(
        dirs(&run).iter().any(|d| d.starts_with(&first)),
        "kill -9 left nothing to clean"
    );
    // Another server (its own store: the killed one's row would hold a SQLite store) on
    // the same runtime base.
    let srv = faults_env()
        .env("XDG_RUNTIME_DIR", run.to_str().unwrap())
        .start()
        .await;
    let second = format!("oxbus.{}.", srv.pid());
    let left = dirs(&run);
    assert!(
        !left.iter().any(|d| d.starts_with(&first)),
        "stale dir kept: {left:?}"
    );
    assert!(left.iter().any(|d| d.starts_with(&second)), "{left:?}");
    assert!(
        srv.log()
            .contains("removed the runtime directory of a server that is gone")
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn a_missing_services_dir_is_created_and_a_missing_parent_named() {
    let srv = Env::new()
        .set("server", "services_dir", "\"more_services\"")
        .start()
        .await;
    let dir = srv.dir.join("more_services");
    assert!(dir.is_dir());
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(srv.get("/readyz").await.status, 200);
    drop(srv);

    let mut srv = Env::new()
        .set("server", "services_dir", "\"no/such/parent\"")
        .spawn();
    assert_ne!(srv.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(srv.log().contains("nor does its parent"), "{}", srv.log());
}

/// Python that blocks (at import) until the file `go` exists, after appending its pid to
/// `started`.
fn gate(started: &Path, go: &Path) -> String {
    format!(
        "import os\nimport time\nwith open({started:?}, 'a') as f:\n    f.write('%d\\n' % os.getpid())\n\
         while not os.path.exists({go:?}):\n    time.sleep(0.02)\n"
    )
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn wait_lines(path: &Path, n: usize, what: &str) {
    eventually(Duration::from_secs(30), what, || {
        let ok = lines(path) >= n;
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_dependency_undeployed_during_a_check_refuses_the_dependent_with_409() {
    let tmp = scratch("dep");
    let (started, go) = (tmp.join("started"), tmp.join("go"));
    let srv = Arc::new(
        faults_env()
            .workers(2)
            .set("deploy", "check_timeout_ms", "30000")
            .start()
            .await,
    );
    let token = srv.admin_token();
    let r = deploy(&srv, &[("util", "X = 1\n")]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    // `api` imports `util`; its check waits (in the module) until `util` is undeployed.
    let api = format!(
        "import util\n{}\nfrom oxbus import Service\n\n\nclass Api(Service):\n    name = 'api.x'\n\n    def handle(self):\n        self.response.payload = {{'x': util.X}}\n",
        gate(&started, &go)
    );
    let deploying = {
        let srv = srv.clone();
        tokio::spawn(async move { deploy(&srv, &[("api", &api)]).await })
    };
    wait_lines(&started, 1, "the check of api to start").await;
    let undeploying = {
        let (srv, token) = (srv.clone(), token.clone());
        tokio::spawn(async move {
            srv.admin("DELETE", "/v1/modules/util", Some(&token), b"")
                .await
        })
    };
    eventually(Duration::from_secs(30), "util to be undeployed", || {
        let (srv, token) = (srv.clone(), token.clone());
        async move {
            let r = srv
                .admin("GET", "/v1/modules/util", Some(&token), b"")
                .await;
            (r.status == 404).then_some(())
        }
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let r = deploying.await.unwrap();
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(
        text(&r).contains("changed during the check"),
        "{}",
        text(&r)
    );
    assert!(text(&r).contains("util"), "{}", text(&r));
    let u = undeploying.await.unwrap();
    assert_eq!(u.status, 200, "{}", text(&u));
    module_absent(&srv, &token, "api").await;
    // The server serves on, and a fresh worker starts (nothing it cannot import is stored).
    let pids = srv.worker_pids();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(30), "a fresh worker", || {
        let fresh = srv.worker_pids().iter().any(|p| !pids.contains(p));
        async move { fresh.then_some(()) }
    })
    .await;
    wait_workers(&srv, 2).await;
    assert_eq!(srv.post_json("/echo", &json!({"x": 1})).await.status, 200);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn a_module_sent_unchanged_that_changes_during_the_check_refuses_the_deploy() {
    // `util` goes with the deploy as it is active (v2), so it is not checked again; while
    // `api` is checked against util v2, util is rolled back to v1. The deploy is refused:
    // what it checked no longer holds, and the caller's util is not what is active.
    let tmp = scratch("unchanged");
    let (started, go) = (tmp.join("started"), tmp.join("go"));
    let srv = Arc::new(
        faults_env()
            .workers(2)
            .set("deploy", "check_timeout_ms", "30000")
            .start()
            .await,
    );
    let token = srv.admin_token();
    for v in ["X = 1\n", "X = 2\n"] {
        let r = deploy(&srv, &[("util", v)]).await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    let api = format!(
        "import util\n{}\nfrom oxbus import Service\n\n\nclass Api(Service):\n    name = 'api.y'\n\n    def handle(self):\n        self.response.payload = {{'x': util.X}}\n",
        gate(&started, &go)
    );
    let deploying = {
        let srv = srv.clone();
        tokio::spawn(
            async move { deploy_with(&srv, &[("api", &api), ("util", "X = 2\n")], true).await },
        )
    };
    wait_lines(&started, 1, "the check of api to start").await;
    // The rollback is stored at once; its activation waits for the check in that worker.
    let rolling_back = {
        let (srv, token) = (srv.clone(), token.clone());
        tokio::spawn(async move {
            srv.admin("POST", "/v1/modules/util/rollback", Some(&token), b"")
                .await
        })
    };
    eventually(Duration::from_secs(30), "util rolled back to v1", || {
        let (srv, token) = (srv.clone(), token.clone());
        async move {
            let r = srv
                .admin("GET", "/v1/modules/util", Some(&token), b"")
                .await;
            (r.json()["source"] == "X = 1\n").then_some(())
        }
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let r = deploying.await.unwrap();
    let b = rolling_back.await.unwrap();
    assert_eq!(b.status, 200, "{}", text(&b));
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains("util"), "{}", text(&r));
    module_absent(&srv, &token, "api").await;
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn requests_on_the_checking_worker_finish_when_its_check_times_out() {
    let tmp = scratch("inflight");
    let (marker, started, go) = (tmp.join("marker"), tmp.join("started"), tmp.join("go"));
    // One worker: it serves the request and runs the check.
    let srv = Arc::new(
        faults_env()
            .workers(1)
            .set("deploy", "check_timeout_ms", "3000")
            .start()
            .await,
    );
    let waiting = {
        let srv = srv.clone();
        let body = json!({"started": started, "go": go});
        tokio::spawn(async move { srv.post_json("/wait", &body).await })
    };
    wait_lines(&started, 1, "the request to be in flight").await;
    let r = deploy(&srv, &[("hangs", &hanging_module(&marker))]).await;
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(
        text(&r).contains("check_timeout_ms (3000 ms)"),
        "{}",
        text(&r)
    );
    let checker = marker_pid(&marker).await;
    assert!(
        !waiting.is_finished(),
        "the request ended before it was let go"
    );
    std::fs::write(&go, "").unwrap();
    let w = waiting.await.unwrap();
    assert_eq!(w.status, 200, "{}", text(&w));
    assert_eq!(w.json()["pid"].as_u64(), Some(checker as u64));
    // Then the spinning worker is gone and its replacement serves.
    checker_killed(&srv, checker, Duration::from_secs(30), 1).await;
    assert_eq!(srv.post_json("/echo", &json!({"x": 1})).await.status, 200);
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn the_same_source_deployed_twice_at_once_is_stored_once() {
    let tmp = scratch("twice");
    let (started, go) = (tmp.join("started"), tmp.join("go"));
    let srv = Arc::new(
        faults_env()
            .workers(2)
            .set("deploy", "check_timeout_ms", "30000")
            .start()
            .await,
    );
    let source = format!(
        "{}\nfrom oxbus import Service\n\n\nclass Twice(Service):\n    name = 'twice.x'\n\n    def handle(self):\n        pass\n",
        gate(&started, &go)
    );
    let first = {
        let (srv, source) = (srv.clone(), source.clone());
        tokio::spawn(async move { deploy_with(&srv, &[("twice", &source)], true).await })
    };
    wait_lines(&started, 1, "the first check to start").await;
    // The second has read the active modules (none) and waits for the first's check.
    let second = {
        let (srv, source) = (srv.clone(), source.clone());
        tokio::spawn(async move { deploy_with(&srv, &[("twice", &source)], true).await })
    };
    eventually(Duration::from_secs(30), "the second deploy to wait", || {
        let n = srv
            .log_lines("a deploy waits for another deploy's check to end")
            .len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(a.status, 200, "{}", text(&a));
    assert_eq!(b.status, 200, "{}", text(&b));
    assert_eq!(a.json()["modules"][0]["version"], 1, "{}", text(&a));
    assert_eq!(b.json()["modules"], json!([]), "{}", text(&b));
    assert_eq!(b.json()["unchanged"], json!(["twice"]), "{}", text(&b));
    let m = srv
        .admin("GET", "/v1/modules/twice", Some(&srv.admin_token()), b"")
        .await;
    assert_eq!(m.json()["version"], 1, "{}", text(&m));
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn an_activation_slower_than_the_check_deadline_is_not_killed() {
    let tmp = scratch("slowact");
    let imports = tmp.join("imports");
    let srv = faults_env()
        .workers(2)
        .set("deploy", "check_timeout_ms", "1000")
        .start()
        .await;
    let pids = srv.worker_pids();
    // The check (the first import) is quick; every later one (the activations, run at the
    // same time in both workers) takes 1.5 s, past check_timeout_ms.
    let source = format!(
        "import time\nwith open({imports:?}, 'a') as f:\n    f.write('x\\n')\n\
         with open({imports:?}) as f:\n    if len(f.read().splitlines()) > 1:\n        time.sleep(1.5)\n\
         from oxbus import Service\n\n\nclass Slow(Service):\n    name = 'slow.x'\n\n    def handle(self):\n        self.response.payload = {{'ok': True}}\n"
    );
    let r = deploy(&srv, &[("slowact", &source)]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let acks = r.json()["workers"].as_array().cloned().unwrap_or_default();
    assert_eq!(acks.len(), 2, "{}", text(&r));
    assert!(
        acks.iter()
            .all(|a| a["ok"] == true && a.get("replaced").is_none()),
        "{}",
        text(&r)
    );
    let mut now = srv.worker_pids();
    now.sort();
    let mut before = pids.clone();
    before.sort();
    assert_eq!(now, before, "a worker was replaced");
    let r = srv
        .admin("POST", "/v1/invoke/slow.x", Some(&srv.admin_token()), b"{}")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test]
async fn an_undeploy_reaching_a_hung_check_waits_for_its_deadline() {
    let tmp = scratch("undeploy");
    let marker = tmp.join("marker");
    let srv = Arc::new(
        faults_env()
            .workers(1)
            .set("deploy", "check_timeout_ms", "3000")
            .start()
            .await,
    );
    let token = srv.admin_token();
    let r = deploy(&srv, &[("other", "X = 1\n")]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let hung = hanging_module(&marker);
    let deploying = {
        let srv = srv.clone();
        tokio::spawn(async move { deploy(&srv, &[("hangs", &hung)]).await })
    };
    let checker = marker_pid(&marker).await;
    // The worker runs one module op at a time: the removal waits for the check, which is
    // ended by its own deadline; the worker is replaced for that, not for the removal.
    let u = srv
        .admin("DELETE", "/v1/modules/other", Some(&token), b"")
        .await;
    assert_eq!(u.status, 200, "{}", text(&u));
    let ack = &u.json()["workers"][0];
    assert!(
        ack["replaced"]
            .as_str()
            .is_some_and(|r| r.contains("check_timeout_ms")),
        "{}",
        text(&u)
    );
    let r = deploying.await.unwrap();
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(
        text(&r).contains("check_timeout_ms (3000 ms)"),
        "{}",
        text(&r)
    );
    checker_killed(&srv, checker, Duration::from_secs(30), 1).await;
    module_absent(&srv, &token, "other").await;
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&tmp);
}
