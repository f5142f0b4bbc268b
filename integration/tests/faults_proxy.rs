//! Fault suite, the proxy's part (issue 16, items 11–13): three servers on one PostgreSQL
//! store behind an `oxbus proxy` that reads its server list from that store, operated the
//! way PROXY.md says — a rolling restart and a proxy upgrade under load lose no request and
//! leave every server serving; with the store down, the readiness checks keep their
//! interval.

use oxbus_integration::proxy::{Load, Proxy, free_port, get, old_exits_cleanly};
use oxbus_integration::*;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SVC: &str = r#"
import os
from oxbus import Service

class Who(Service):
    name = 'fp.who'

    def handle(self):
        self.response.payload = {'pid': os.getpid()}

class Echo(Service):
    name = 'fp.echo'

    def handle(self):
        self.response.payload = {'pid': os.getpid(), 'got': self.request.payload}
"#;

/// A server of the store's cluster on a fixed port: a restart keeps its address, as a
/// server restarted in place does.
fn server_env(store: &str, port: u16) -> Env {
    Env::new()
        .workers(1)
        .service("fpsvc.py", SVC)
        .channel("/who", &["GET"], "fp.who")
        .channel("/echo", &["POST"], "fp.echo")
        .set("store", "url", store)
        .set("server", "listen", &format!("\"127.0.0.1:{port}\""))
        // As PROXY.md advises: above health.interval_ms × health.fall (100 ms) plus a margin.
        .set("http", "shutdown_delay_ms", "800")
}

/// The proxy's settings for a store-backed list read every `refresh_ms`, checked often.
fn store_upstreams(store: &str, refresh_ms: u64) -> String {
    format!(
        "[upstreams]\nstore = {store}\nrefresh_interval_ms = {refresh_ms}\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n"
    )
}

struct Cluster {
    servers: Vec<Server>,
    ports: Vec<u16>,
    store: String,
    _db: PgDatabase,
}

async fn three_servers_on_postgres() -> Cluster {
    let db = PgDatabase::create();
    let store = format!("{:?}", db.url);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // The first one alone (it runs the migrations), then the other two.
    let mut servers = vec![server_env(&store, ports[0]).start().await];
    for p in &ports[1..] {
        servers.push(server_env(&store, *p).spawn());
    }
    for s in &servers[1..] {
        s.wait_ready().await;
    }
    Cluster {
        servers,
        ports,
        store,
        _db: db,
    }
}

async fn all_up(p: &Proxy, ports: &[u16]) {
    for port in ports {
        eventually(Duration::from_secs(20), "every server up", || async {
            (p.upstream(*port).await["up"] == true).then_some(())
        })
        .await;
    }
}

/// Waits until `load` got `n` answers from the workers of `srv` (by their pids).
async fn serves(load: &Load, srv: &Server, n: u64, what: &str) {
    let pids = srv.worker_pids();
    eventually(Duration::from_secs(20), what, || async {
        let t = load.tally();
        let got: u64 = pids
            .iter()
            .map(|p| t.by_pid.get(&(*p as u64)).copied().unwrap_or(0))
            .sum();
        (got >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rolling_restart_under_load_loses_no_request_and_every_server_serves_again() {
    let mut c = three_servers_on_postgres().await;
    // Reads of the list far apart (like the default 2 s), so that a restarted server is
    // first seen ready, with a passing first check: the case that stayed out for good.
    let p = Proxy::start("", &store_upstreams(&c.store, 3_000));
    all_up(&p, &c.ports).await;
    let gets = Load::start(p.port, 4, "GET", "/who");
    let posts = Load::start(p.port, 2, "POST", "/echo");
    for s in &c.servers {
        serves(&gets, s, 20, "every server serves before the restarts").await;
    }
    // A, B, C in turn, each back in service before the next goes (as PROXY.md says). A and
    // C are started again once the proxy has seen them leave its list (an operator's stop,
    // then start); B comes back before the proxy's next read (a new run at the same
    // address, never seen gone).
    for i in 0..c.servers.len() {
        let mut old = c.servers.remove(i);
        let old_pids = old.worker_pids();
        let srv = if i == 1 {
            old.restart().await
        } else {
            old.signal(nix::sys::signal::Signal::SIGTERM);
            assert_eq!(old.wait_exit(Duration::from_secs(30)), Some(0));
            let port = c.ports[i];
            eventually(
                Duration::from_secs(20),
                "the proxy sees it leave",
                || async { (p.upstream(port).await["member"] == false).then_some(()) },
            )
            .await;
            let srv = old.spawn_again();
            srv.wait_ready().await;
            srv
        };
        assert_ne!(srv.worker_pids(), old_pids);
        serves(
            &gets,
            &srv,
            20,
            &format!("server {i} gets traffic again after its restart"),
        )
        .await;
        c.servers.insert(i, srv);
    }
    // Every server still serves once all three went round.
    for s in &c.servers {
        serves(
            &posts,
            s,
            5,
            "every server serves after the rolling restart",
        )
        .await;
    }
    let (tg, tp) = (gets.stop().await, posts.stop().await);
    assert_eq!(tg.not_ok(), 0, "GETs: {tg:?}");
    assert_eq!(tp.not_ok(), 0, "POSTs: {tp:?}");
    let stats = p.stats().await;
    for port in &c.ports {
        let u = p.upstream(*port).await;
        assert_eq!(u["up"], true, "{stats}");
        assert_eq!(u["active_check"], "passing", "{stats}");
    }
    assert_eq!(stats["no_upstream"], 0, "{stats}");
}

#[tokio::test]
async fn a_proxy_upgrade_under_load_answers_every_request() {
    let c = three_servers_on_postgres().await;
    let mut p = Proxy::start("grace_period_s = 2", &store_upstreams(&c.store, 200));
    all_up(&p, &c.ports).await;
    let gets = Load::start(p.port, 6, "GET", "/who");
    let posts = Load::start(p.port, 2, "POST", "/echo");
    for round in 0..2 {
        gets.more_ok(200).await;
        let mut old = p.upgrade();
        old_exits_cleanly(&mut old, &format!("round {round}")).await;
    }
    gets.more_ok(200).await;
    let (tg, tp) = (gets.stop().await, posts.stop().await);
    assert_eq!(tg.not_ok(), 0, "GETs: {tg:?}");
    assert_eq!(tp.not_ok(), 0, "POSTs: {tp:?}");
    assert_eq!(p.stats().await["no_upstream"], 0);
}

/// A stand-in server that answers every request 200 and counts the readiness checks.
fn counting_server() -> (u16, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let checks = Arc::new(AtomicU64::new(0));
    let count = checks.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /readyz ") {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
            });
        }
    });
    (port, checks)
}

fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn with_the_store_down_the_checks_keep_their_interval_and_an_upgrade_is_refused() {
    let pg = PrivatePg::start();
    let url = pg.url();
    let p = Proxy::start(
        "",
        &(store_upstreams(&format!("{url:?}"), 200)
            .replace("[health]", "first_list_timeout_ms = 1500\n[health]")),
    );
    // The proxy has opened the store (its schema is there); a server registers.
    let (port, checks) = counting_server();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    eventually(Duration::from_secs(20), "the store's schema", || async {
        let out = std::process::Command::new("psql")
            .args([url.as_str(), "-q", "-c", "SELECT 1 FROM servers"])
            .output()
            .unwrap();
        out.status.success().then_some(())
    })
    .await;
    psql(
        &url,
        &format!(
            "INSERT INTO servers (name, http_address, oxbus_version, pid, started_at, last_seen, \
             config_version) VALUES ('stand-in', '127.0.0.1:{port}', 'test', 1, {now}, {now}, 0)"
        ),
    );
    eventually(Duration::from_secs(20), "the server is up", || async {
        (p.upstream(port).await["up"] == true).then_some(())
    })
    .await;

    pg.stop();
    eventually(
        Duration::from_secs(20),
        "the proxy sees the outage",
        || async {
            p.log()
                .contains("cannot read the server list")
                .then_some(())
        },
    )
    .await;
    // Checks every 100 ms: 30 more take 3 s. A check loop that waits on the store's
    // refresh (5 s per attempt while it is down) gets a handful in the time allowed.
    let before = checks.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(12),
        "30 more readiness checks while the store is down",
        || async { (checks.load(Ordering::SeqCst) >= before + 30).then_some(()) },
    )
    .await;
    // The last list is kept: the server still gets traffic.
    let (status, _) = get(p.port, "/anything").await.unwrap();
    assert_eq!(status, 200);
    // An upgrade now would take traffic with no server list: it is refused, and the running
    // proxy goes on serving.
    let running = std::fs::read_to_string(p.dir.join("state/proxy.pid")).unwrap();
    let mut upgrade = p.spawn(true);
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = upgrade.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > end {
            // Took over instead of giving up: stop it, then fail.
            let _ = upgrade.kill();
            let _ = upgrade.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the upgrade must give up; log:\n{}",
        p.log()
    );
    assert!(
        p.log()
            .contains("--upgrade: no server list from the config store"),
        "{}",
        p.log()
    );
    assert_eq!(
        std::fs::read_to_string(p.dir.join("state/proxy.pid")).unwrap(),
        running
    );
    let (status, _) = get(p.port, "/anything").await.unwrap();
    assert_eq!(status, 200);

    pg.start_again();
    eventually(Duration::from_secs(30), "the store is back", || async {
        p.log().contains("server list readable again").then_some(())
    })
    .await;
    assert_eq!(p.upstream(port).await["up"], true);
}
