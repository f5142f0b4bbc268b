//! Worker supervision against the real binary: crashes, deadlines, backpressure,
//! concurrency, recycling, signals.

use nix::sys::signal::Signal;
use oxbus_integration::*;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn gate_dir(srv: &Server) -> std::path::PathBuf {
    let d = srv.dir.join("gate");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn wait_file(p: std::path::PathBuf) {
    eventually(
        Duration::from_secs(15),
        &format!("{} exists", p.display()),
        || {
            let p = p.clone();
            async move { p.exists().then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn kill_9_mid_request_gives_503_then_recovers() {
    let srv = Arc::new(Env::new().workers(2).with_test_services().start().await);
    let dir = gate_dir(&srv);
    let before = srv.worker_pids();
    assert_eq!(before.len(), 2);
    let s2 = srv.clone();
    let d2 = dir.clone();
    let pending =
        tokio::spawn(async move { s2.get(&format!("/gate?dir={}&n=k", d2.display())).await });
    wait_file(dir.join("started-k")).await;
    let victim: u32 = std::fs::read_to_string(dir.join("started-k"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(before.contains(&victim));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("request hung after its worker was killed")
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("died"));
    // The other worker keeps serving and a replacement appears.
    assert_eq!(srv.get("/pid").await.status, 200);
    eventually(Duration::from_secs(15), "a replacement worker", || {
        let pids = srv.worker_pids();
        async move { (pids.len() == 2 && !pids.contains(&victim)).then_some(()) }
    })
    .await;
    srv.wait_ready().await;
    for _ in 0..10 {
        assert_eq!(srv.get("/pid").await.status, 200);
    }
    srv.assert_no_errors(&["worker died"]);
}

#[tokio::test]
async fn deadline_gives_504_and_replaces_the_stuck_worker() {
    let srv = Env::new()
        .workers(2)
        .with_test_services()
        .set("http", "request_timeout_ms", "800")
        .start()
        .await;
    let before: HashSet<u32> = srv.worker_pids().into_iter().collect();
    // /spin never returns: only the deadline can answer it.
    let r = srv.get("/spin").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["cid"], r.cid());
    // The other worker is unaffected meanwhile.
    assert_eq!(srv.get("/pid").await.status, 200);
    eventually(Duration::from_secs(15), "stuck worker replaced", || {
        let now: HashSet<u32> = srv.worker_pids().into_iter().collect();
        let before = before.clone();
        async move { (now.len() == 2 && now.intersection(&before).count() == 1).then_some(()) }
    })
    .await;
    for _ in 0..10 {
        assert_eq!(srv.get("/pid").await.status, 200);
    }
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn backpressure_503_with_retry_after_when_queue_is_full() {
    let srv = Arc::new(
        Env::new()
            .workers(1)
            .with_test_services()
            .set("server", "threads", "4")
            .set("workers", "max_inflight", "1")
            .set("workers", "max_queue", "1")
            .start()
            .await,
    );
    let dir = gate_dir(&srv);
    let spawn_gate = |n: &str| {
        let s = srv.clone();
        let path = format!("/gate?dir={}&n={n}", dir.display());
        tokio::spawn(async move { s.get(&path).await })
    };
    let a = spawn_gate("a");
    wait_file(dir.join("started-a")).await;
    let b = spawn_gate("b");
    let c = spawn_gate("c");
    // One of b/c takes the single queue slot; the other is refused at once.
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            r = &mut Box::pin(async { b.await.unwrap() }) => r,
            r = &mut Box::pin(async { c.await.unwrap() }) => r,
        }
    })
    .await
    .expect("no immediate 503");
    assert_eq!(first.status, 503);
    assert_eq!(first.header("retry-after").as_deref(), Some("1"));
    assert!(first.json()["error"].as_str().unwrap().contains("busy"));
    std::fs::write(dir.join("open"), "").unwrap();
    assert_eq!(a.await.unwrap().status, 200);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn sync_handlers_run_concurrently() {
    // 8 invocations that each wait for the 8 others on a threading.Barrier: only completes if
    // all 8 run at the same time in one worker.
    let srv = Arc::new(
        Env::new()
            .workers(1)
            .with_test_services()
            .set("server", "threads", "8")
            .start()
            .await,
    );
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = srv.clone();
            tokio::spawn(async move { s.get("/barrier").await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

/// Keeps `conns` keep-alive clients busy with GET /pid until `stop`; returns every status and
/// the pids seen. `served` counts the answers as they come, so a test can wait for load.
fn load(
    srv: &Arc<Server>,
    conns: usize,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<(Vec<u16>, HashSet<u64>)>> {
    (0..conns)
        .map(|_| {
            let srv = srv.clone();
            let stop = stop.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut pids = HashSet::new();
                let mut c = Client::connect(srv.port()).await.unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let r = c.request("GET", "/pid", &[], bytes::Bytes::new()).await;
                    served.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) => {
                            if r.status == 200 {
                                pids.insert(r.json()["pid"].as_u64().unwrap());
                            }
                            statuses.push(r.status);
                        }
                        Err(_) => {
                            statuses.push(0);
                            c = Client::connect(srv.port()).await.unwrap();
                        }
                    }
                }
                (statuses, pids)
            })
        })
        .collect()
}

/// Waits until the load has been answered `n` times in all.
async fn wait_served(served: &Arc<AtomicUsize>, n: usize) {
    eventually(
        Duration::from_secs(20),
        &format!("{n} requests served"),
        || {
            let done = served.load(Ordering::Relaxed);
            async move { (done >= n).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn sighup_rolls_all_workers_with_zero_failed_requests() {
    let srv = Arc::new(Env::new().workers(2).with_test_services().start().await);
    let before = srv.worker_pids();
    let fds_before = srv.fd_count();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let tasks = load(&srv, 4, stop.clone(), served.clone());
    wait_served(&served, 50).await;
    srv.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(20), "all workers replaced", || {
        let now = srv.worker_pids();
        let before = before.clone();
        async move { (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(()) }
    })
    .await;
    // Keep the load on the new generation for a while too.
    wait_served(&served, served.load(Ordering::Relaxed) + 50).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut pids = HashSet::new();
    for t in tasks {
        let (s, p) = t.await.unwrap();
        all.extend(s);
        pids.extend(p);
    }
    let failed: Vec<_> = all.iter().filter(|s| **s != 200).collect();
    assert!(all.len() > 50, "too little load: {}", all.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        all.len()
    );
    assert!(
        pids.len() >= 3,
        "requests should have been served by both generations: {pids:?}"
    );
    assert!(srv.log().contains("rolling restart complete"));
    // No descriptor leak from the replaced workers (allow a little slack for timing).
    let fds_after = srv.fd_count();
    assert!(
        fds_after <= fds_before + 4,
        "fds grew from {fds_before} to {fds_after}"
    );
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let srv = Arc::new(Env::new().workers(1).with_test_services().start().await);
    let dir = gate_dir(&srv);
    let s = srv.clone();
    let path = format!("/gate?dir={}&n=t", dir.display());
    let inflight = tokio::spawn(async move { s.get(&path).await });
    wait_file(dir.join("started-t")).await;
    srv.signal(Signal::SIGTERM);
    eventually(Duration::from_secs(5), "SIGTERM seen", || {
        let log = srv.log();
        async move { log.contains("SIGTERM").then_some(()) }
    })
    .await;
    std::fs::write(dir.join("open"), "").unwrap();
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut srv = Arc::try_unwrap(srv).expect("only owner");
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(0));
    let log = srv.log();
    assert!(log.contains("SIGTERM"), "{log}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn sigterm_to_every_process_like_systemd_is_still_a_clean_drain() {
    // systemd's default KillMode=control-group sends SIGTERM to the server and every worker
    // at once: the workers must leave the stopping to the server.
    let srv = Arc::new(Env::new().workers(2).with_test_services().start().await);
    let workers = srv.worker_pids();
    let dir = gate_dir(&srv);
    let s = srv.clone();
    let path = format!("/gate?dir={}&n=s", dir.display());
    let inflight = tokio::spawn(async move { s.get(&path).await });
    wait_file(dir.join("started-s")).await;
    for p in &workers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), Signal::SIGTERM).unwrap();
    }
    srv.signal(Signal::SIGTERM);
    eventually(Duration::from_secs(5), "SIGTERM seen", || {
        let log = srv.log();
        async move { log.contains("SIGTERM").then_some(()) }
    })
    .await;
    std::fs::write(dir.join("open"), "").unwrap();
    assert_eq!(inflight.await.unwrap().status, 200);
    let mut srv = Arc::try_unwrap(srv).expect("only owner");
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!srv.log().contains("worker died"), "{}", srv.log());
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn sigterm_with_shutdown_delay_reports_not_ready_while_still_serving() {
    let srv = Arc::new(
        Env::new()
            .workers(1)
            .with_test_services()
            .set("http", "shutdown_delay_ms", "1500")
            .start()
            .await,
    );
    srv.signal(Signal::SIGTERM);
    let r = eventually(Duration::from_secs(5), "readyz 503", || {
        let srv = srv.clone();
        async move {
            let r = srv.get("/readyz").await;
            (r.status == 503).then_some(r)
        }
    })
    .await;
    assert_eq!(r.json()["status"], "not ready");
    // Requests are still served during the delay.
    assert_eq!(srv.get("/pid").await.status, 200);
    let mut srv = Arc::try_unwrap(srv).expect("only owner");
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(srv.log().contains("closing the listener"));
}

#[tokio::test]
async fn recycling_after_max_requests_loses_nothing() {
    let srv = Arc::new(
        Env::new()
            .workers(2)
            .with_test_services()
            .set("workers", "max_requests", "25")
            .set("workers", "max_requests_jitter", "5")
            .start()
            .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&srv, 3, stop.clone(), Arc::new(AtomicUsize::new(0)));
    eventually(Duration::from_secs(30), "several recycles", || {
        let n = srv.log().matches("recycling worker").count();
        async move { (n >= 4).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut pids = HashSet::new();
    for t in tasks {
        let (s, p) = t.await.unwrap();
        all.extend(s);
        pids.extend(p);
    }
    assert!(
        all.iter().all(|s| *s == 200),
        "failures: {:?}",
        all.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert!(pids.len() >= 4, "{pids:?}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn an_rss_limit_below_the_interpreters_footprint_is_refused() {
    // 1 MiB would recycle every worker as soon as it starts, forever: refused, naming the
    // setting. (Recycling past the ceiling: faults_workers.rs.)
    let mut srv = Env::new()
        .workers(1)
        .with_test_services()
        .set("workers", "max_rss_mb", "1")
        .spawn();
    assert_ne!(srv.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        srv.log().contains("workers.max_rss_mb = 1"),
        "{}",
        srv.log()
    );
}

#[tokio::test]
async fn hung_worker_is_detected_by_heartbeats_and_replaced() {
    let srv = Env::new()
        .workers(1)
        .with_test_services()
        .set("workers", "heartbeat_ms", "200")
        .start()
        .await;
    let pid = srv.worker_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    eventually(Duration::from_secs(15), "hung worker replaced", || {
        let pids = srv.worker_pids();
        async move { (pids.len() == 1 && pids[0] != pid).then_some(()) }
    })
    .await;
    srv.wait_ready().await;
    assert_eq!(srv.get("/pid").await.status, 200);
    srv.assert_no_errors(&["heartbeats", "worker died"]);
}

#[tokio::test]
async fn crash_loop_stops_the_server() {
    let mut srv = Env::new()
        .workers(1)
        .service("crash.py", "import os\nos._exit(1)\n")
        .spawn();
    let code = srv.wait_exit(Duration::from_secs(60));
    assert_ne!(code, Some(0));
    assert!(srv.log().contains("crash loop"), "{}", srv.log());
}

#[tokio::test]
async fn sigint_stops_fast_and_leaves_no_workers() {
    let mut srv = Env::new().workers(2).with_test_services().start().await;
    let workers = srv.worker_pids();
    assert_eq!(workers.len(), 2);
    srv.signal(Signal::SIGINT);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
    eventually(Duration::from_secs(5), "workers gone", || {
        let left = living(&workers);
        async move { left.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn workers_die_with_a_killed_server() {
    let mut srv = Env::new().workers(2).with_test_services().start().await;
    let workers = srv.worker_pids();
    srv.signal(Signal::SIGKILL);
    srv.wait_exit(Duration::from_secs(5));
    eventually(Duration::from_secs(5), "workers gone", || {
        let left = living(&workers);
        async move { left.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn the_admin_apis_rolling_restart_replaces_every_worker_as_sighup_does() {
    let srv = Env::new().workers(2).with_test_services().start().await;
    let before = srv.worker_pids();
    let r = oxbus_integration::api::admin(&srv, "POST", "/v1/workers/restart", Value::Null).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.json()["restarting"], true);
    eventually(Duration::from_secs(20), "all workers replaced", || {
        let now = srv.worker_pids();
        let before = before.clone();
        async move { (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(()) }
    })
    .await;
    let st = eventually(
        Duration::from_secs(20),
        "the restart reported done",
        || async {
            let s = oxbus_integration::api::admin(&srv, "GET", "/v1/workers/restart", Value::Null)
                .await
                .json();
            (s["reloading"] == false && s["finished"] == 1).then_some(s)
        },
    )
    .await;
    assert_eq!(st["failed"], 0, "{st}");
    assert_eq!(st["generation"], 2, "{st}");
    let audit =
        oxbus_integration::api::admin(&srv, "GET", "/v1/audit?object=workers", Value::Null).await;
    let entries = audit.json()["entries"].clone();
    assert_eq!(entries[0]["action"], "restart", "{entries}");
    assert_eq!(entries[0]["who"], "root", "{entries}");
    assert!(srv.log().contains("rolling restart complete"));
}
