//! Hot deployment through the admin API against the real binary and real workers, with the
//! config store on SQLite and on PostgreSQL.

use nix::sys::signal::Signal;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn module(version: u32) -> String {
    format!(
        r#"
from oxbus import Service

COUNTER = [0]

class Hello(Service):
    name = 'hot.hello'

    def handle(self):
        COUNTER[0] += 1
        self.response.payload = {{'version': {version}, 'calls': COUNTER[0]}}
"#
    )
}

async fn deploy(srv: &Server, token: &str, name: &str, source: &str) -> Resp {
    let body = json!({"modules": [{"name": name, "source": source}], "deployed_by": "it"});
    srv.admin(
        "POST",
        "/v1/modules",
        Some(token),
        body.to_string().as_bytes(),
    )
    .await
}

async fn version_served(srv: &Server) -> Value {
    let r = srv.get("/hot").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn env() -> Env {
    Env::new()
        .workers(2)
        .with_test_services()
        .channel("/hot", &["GET"], "hot.hello")
}

#[tokio::test]
async fn deploy_redeploy_rollback_undeploy() {
    deploy_cycle(env().start().await).await;
}

#[tokio::test]
async fn deploy_redeploy_rollback_undeploy_on_postgres() {
    let (env, _db) = env().postgres_store();
    let srv = env.start().await;
    let info = srv
        .admin("GET", "/v1/info", Some(&srv.admin_token()), b"")
        .await
        .json();
    assert_eq!(info["store"], "postgres");
    deploy_cycle(srv).await;
}

async fn deploy_cycle(srv: Server) {
    let token = srv.admin_token();
    // Not deployed yet: the channel exists, the service does not.
    assert_eq!(srv.get("/hot").await.status, 404);

    let r = deploy(&srv, &token, "hot", &module(1)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rep = r.json();
    assert_eq!(rep["modules"][0]["version"], 1);
    assert_eq!(rep["workers"].as_array().unwrap().len(), 2);
    assert!(
        rep["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["ok"] == true)
    );
    assert_eq!(version_served(&srv).await["version"], 1);

    let pids = srv.worker_pids();
    let r = deploy(&srv, &token, "hot", &module(2)).await;
    assert_eq!(r.status, 200);
    let hash = r.json()["modules"][0]["source_hash"].clone();
    assert_eq!(r.json()["modules"][0]["version"], 2);
    // The service list says where each service comes from.
    let list = srv
        .admin("GET", "/v1/services", Some(&token), b"")
        .await
        .json();
    let hot = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hot.hello")
        .expect("hot.hello listed")
        .clone();
    assert_eq!(hot["module"], "hot");
    assert_eq!(hot["version"], 2);
    assert_eq!(hot["source_hash"], hash);
    assert_eq!(hot["origin"], "deployed");
    assert!(hot["deployed_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let file = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "test.echo")
        .expect("test.echo listed");
    assert_eq!(file["origin"], "services_dir");
    let j = version_served(&srv).await;
    assert_eq!(j["version"], 2);
    assert!(
        j["calls"].as_u64().unwrap() <= 2,
        "module state must start fresh: {j}"
    );
    assert_eq!(srv.worker_pids(), pids, "a deploy must not restart workers");

    // A syntax error and an import error: 422 with the traceback, the old version serves,
    // the config version does not move.
    let before =
        srv.admin("GET", "/v1/info", Some(&token), b"").await.json()["config_version"].clone();
    let r = deploy(&srv, &token, "hot", "def broken(:\n").await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["traceback"]
            .as_str()
            .unwrap()
            .contains("SyntaxError")
    );
    let r = deploy(&srv, &token, "hot", "import no_such_module_abc\n").await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["traceback"]
            .as_str()
            .unwrap()
            .contains("no_such_module_abc")
    );
    assert_eq!(version_served(&srv).await["version"], 2);
    let after =
        srv.admin("GET", "/v1/info", Some(&token), b"").await.json()["config_version"].clone();
    assert_eq!(before, after);

    // Source and list.
    let r = srv.admin("GET", "/v1/modules/hot", Some(&token), b"").await;
    assert_eq!(r.json()["version"], 2);
    assert_eq!(r.json()["source"], module(2));

    // Rollback to version 1.
    let r = srv
        .admin("POST", "/v1/modules/hot/rollback", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(version_served(&srv).await["version"], 1);

    // Undeploy: the service is gone at once.
    let r = srv
        .admin("DELETE", "/v1/modules/hot", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(srv.get("/hot").await.status, 404);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn redeploy_under_load_loses_nothing() {
    redeploy_under_load(env()).await;
}

#[tokio::test]
async fn redeploy_under_load_loses_nothing_on_postgres() {
    let (env, _db) = env().postgres_store();
    redeploy_under_load(env).await;
}

async fn redeploy_under_load(env: Env) {
    let srv = Arc::new(env.start().await);
    let token = srv.admin_token();
    assert_eq!(deploy(&srv, &token, "hot", &module(1)).await.status, 200);
    let pids = srv.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let srv = srv.clone();
            let stop = stop.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(srv.port()).await.unwrap();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .request("GET", "/hot", &[], bytes::Bytes::new())
                        .await
                        .unwrap();
                    served.fetch_add(1, Ordering::Relaxed);
                    seen.push((
                        r.status,
                        if r.status == 200 {
                            r.json()["version"].as_u64().unwrap()
                        } else {
                            0
                        },
                    ));
                }
                seen
            })
        })
        .collect();
    // Between deploys, wait until the load has been answered some more times.
    let more_load = |n: usize| {
        let served = served.clone();
        let target = served.load(Ordering::Relaxed) + n;
        eventually(Duration::from_secs(20), "load served", move || {
            let done = served.load(Ordering::Relaxed);
            async move { (done >= target).then_some(()) }
        })
    };
    for v in 2..=6 {
        more_load(20).await;
        assert_eq!(deploy(&srv, &token, "hot", &module(v)).await.status, 200);
    }
    more_load(20).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let bad: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(bad.is_empty(), "{} of {} failed", bad.len(), all.len());
    let versions: HashSet<u64> = all.iter().map(|(_, v)| *v).collect();
    assert!(versions.contains(&6) && versions.len() >= 3, "{versions:?}");
    assert_eq!(srv.worker_pids(), pids);
}

#[tokio::test]
async fn a_respawned_worker_runs_the_current_version() {
    respawn_cycle(env()).await;
}

#[tokio::test]
async fn a_respawned_worker_runs_the_current_version_on_postgres() {
    let (env, _db) = env().postgres_store();
    respawn_cycle(env).await;
}

async fn respawn_cycle(env: Env) {
    let srv = env.start().await;
    let token = srv.admin_token();
    assert_eq!(deploy(&srv, &token, "hot", &module(1)).await.status, 200);
    assert_eq!(deploy(&srv, &token, "hot", &module(2)).await.status, 200);
    // kill -9 one worker: its replacement loads version 2 from the store.
    let victim = srv.worker_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(15), "replacement worker", || {
        let p = srv.worker_pids();
        async move { (p.len() == 2 && !p.contains(&victim)).then_some(()) }
    })
    .await;
    srv.wait_ready().await;
    for _ in 0..10 {
        assert_eq!(version_served(&srv).await["version"], 2);
    }
}

#[tokio::test]
async fn a_restarted_server_serves_what_was_last_deployed() {
    restart_cycle(env().start().await).await;
}

#[tokio::test]
async fn a_restarted_server_serves_what_was_last_deployed_on_postgres() {
    let (env, _db) = env().postgres_store();
    restart_cycle(env.start().await).await;
}

async fn restart_cycle(srv: Server) {
    let token = srv.admin_token();
    assert_eq!(deploy(&srv, &token, "hot", &module(1)).await.status, 200);
    assert_eq!(deploy(&srv, &token, "hot", &module(3)).await.status, 200);
    let srv = srv.restart().await;
    assert_eq!(version_served(&srv).await["version"], 3);
    let r = srv
        .admin("GET", "/v1/modules", Some(&srv.admin_token()), b"")
        .await;
    assert_eq!(
        r.json()["modules"][0]["version"],
        2,
        "stored versions of `hot`: 1, then 2"
    );
}

#[tokio::test]
async fn cli_deploy_services_invoke_rollback() {
    let srv = env().start().await;
    let dir = srv.dir.join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hot.py");
    std::fs::write(&file, module(1)).unwrap();
    let out = srv.cli(&["deploy", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployed hot version 1"));
    std::fs::write(&file, module(2)).unwrap();
    assert!(
        srv.cli(&["deploy", file.to_str().unwrap()])
            .status
            .success()
    );

    let out = srv.cli(&["services", "--output", "json"]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        j["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "hot.hello")
    );

    let out = srv.cli(&["invoke", "hot.hello", "--payload", "{}"]);
    assert!(out.status.success());
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["version"], 2);

    let out = srv.cli(&["rollback", "hot"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("hot is back at version 1"), "{text}");
    assert_eq!(version_served(&srv).await["version"], 1);

    // A broken module: non-zero exit, the traceback on stderr, nothing changed.
    std::fs::write(&file, "def broken(:\n").unwrap();
    let out = srv.cli(&["deploy", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SyntaxError") && err.contains("oxbus: error:"),
        "{err}"
    );
    assert_eq!(version_served(&srv).await["version"], 1);

    // Usage errors exit 2; a wrong token is a one-line reason.
    let out = std::process::Command::new(oxbus_bin())
        .args(["invoke"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(oxbus_bin())
        .args([
            "services",
            "--server",
            &format!("http://127.0.0.1:{}", srv.admin_port()),
            "--token",
            "bad",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));

    // Undeploy: its services are gone at once; a second undeploy is a clear error.
    let out = srv.cli(&["undeploy", "hot"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("undeployed hot"));
    assert_eq!(srv.get("/hot").await.status, 404);
    let out = srv.cli(&["undeploy", "hot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not deployed"));
}

#[tokio::test]
async fn a_py_file_where_the_server_was_started_does_not_shadow_a_deploy() {
    // `python -m` puts the working directory on sys.path; workers run in the environment
    // directory, so a user's `hot.py` next to where they started the server is not "taken".
    let here = std::env::temp_dir().join(format!("oxbus-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&here).unwrap();
    std::fs::write(here.join("hot.py"), module(9)).unwrap();
    let srv = env().cwd(&here).start().await;
    let r = deploy(&srv, &srv.admin_token(), "hot", &module(1)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(version_served(&srv).await["version"], 1);
    std::fs::remove_dir_all(&here).unwrap();
}

/// A module of `services` small services, as a bench or a big shop would have them.
fn bulk_module(i: usize, services: usize) -> String {
    let mut s = String::from("from oxbus import Service\n");
    for j in 0..services {
        s.push_str(&format!(
            r#"

class Get{j}(Service):
    name = 'bulk{i}.get{j}'
    input = 'customer_id', '-needs_details'
    output = 'customer_id', 'name'

    def handle(self):
        cid = self.request.input.customer_id
        self.response.payload = {{'customer_id': cid, 'name': 'c%d of {i}.{j}' % cid}}
"#
        ));
    }
    s
}

async fn all_workers_ready(srv: &Server, n: u64) {
    eventually(Duration::from_secs(60), "every worker ready", || async {
        let r = srv.get("/readyz").await;
        (r.status == 200 && r.json()["workers_ready"] == n).then_some(())
    })
    .await;
}

async fn invoke_bulk(srv: &Server, token: &str, i: usize, j: usize) {
    let r = srv
        .admin(
            "POST",
            &format!("/v1/invoke/bulk{i}.get{j}"),
            Some(token),
            br#"{"customer_id": 5}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["name"], format!("c5 of {i}.{j}"));
}

#[tokio::test]
async fn many_stored_modules_load_in_every_worker_with_or_without_the_code_cache() {
    let cache = tempfile_dir("oxbus-it-code-cache");
    let srv = env()
        .workers(3)
        .env("CACHE_DIRECTORY", cache.to_str().unwrap())
        .start()
        .await;
    all_workers_ready(&srv, 3).await;
    let token = srv.admin_token();
    let modules: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("bulk{i}"), "source": bulk_module(i, 5)}))
        .collect();
    let r = srv
        .admin(
            "POST",
            "/v1/modules",
            Some(&token),
            json!({ "modules": modules }).to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["services"].as_array().unwrap().len(), 200);
    assert_eq!(r.json()["workers"].as_array().unwrap().len(), 3);
    let code = cache.join("code");
    let packs = || {
        std::fs::read_dir(&code)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(
        packs(),
        1,
        "the checking worker wrote the compiled modules once"
    );
    invoke_bulk(&srv, &token, 39, 4).await;

    // A restart loads all 40 modules in every worker (from the cache); then again with the
    // cache gone (every worker... or the first one, alone, compiles).
    let srv = srv.restart().await;
    all_workers_ready(&srv, 3).await;
    for i in [0, 17, 39] {
        invoke_bulk(&srv, &token, i, 2).await;
    }
    std::fs::remove_dir_all(&code).unwrap();
    let srv = srv.restart().await;
    all_workers_ready(&srv, 3).await;
    invoke_bulk(&srv, &token, 23, 0).await;
    assert_eq!(packs(), 1, "the first worker to load them wrote them again");
    let pids = srv.worker_pids();
    assert_eq!(pids.len(), 3);
    srv.assert_no_errors(&[]);
    drop(srv);
    let _ = std::fs::remove_dir_all(&cache);
}

fn tempfile_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
