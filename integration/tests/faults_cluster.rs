//! Fault tests of a cluster's store outages and operation (issue 16, items 13–15): with the
//! PostgreSQL store down, admin changes get their 503 at once, a restarted server boots from
//! its snapshot without waiting on the store and links to its peers, a stop does not wait on
//! the store; `cluster status` is right straight after a deploy; a scheduler lease belongs to
//! a boot, not a name; only the lease holder hands it back; the deploy report names the
//! server deployed through; the PostgreSQL setup of docs/CLUSTER.md works as written.

use oxbus_integration::bus::{cluster_status, linked};
use oxbus_integration::versioned::{deploy, module};
use oxbus_integration::*;
use std::time::Duration;

fn env() -> Env {
    Env::new().workers(1).with_test_services()
}

/// Waits until `srv` answers GET /cv with `version`.
async fn serves(srv: &Server, version: u64) {
    eventually(
        Duration::from_secs(20),
        &format!("/cv -> {version}"),
        || async move {
            let r = srv
                .try_request("GET", "/cv", &[], bytes::Bytes::new())
                .await
                .ok()?;
            (r.status == 200 && r.json()["version"].as_u64() == Some(version)).then_some(())
        },
    )
    .await;
}

async fn degraded(srv: &Server) {
    eventually(Duration::from_secs(30), "store degraded", || async {
        let r = srv.get("/healthz").await;
        (r.status == 200 && r.json()["store"] == "degraded").then_some(())
    })
    .await;
}

fn bus_server(url: &str, name: &str, secret: &std::path::Path) -> Env {
    env()
        .cluster_member(url, name, secret)
        .channel("/cv", &["GET"], "c.version")
}

/// Waits until `srv`'s snapshot is at `version` or later.
async fn snapshot_at(srv: &Server, version: i64) {
    let path = srv.dir.join("snapshot.json");
    eventually(Duration::from_secs(20), "the snapshot", || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        async move {
            let doc: serde_json::Value = serde_json::from_str(text.split_once('\n')?.1).ok()?;
            (doc["config_version"].as_i64()? >= version).then_some(())
        }
    })
    .await;
}

/// Waits until `srv`'s snapshot lists exactly `peers` (by name) as the cluster's servers.
async fn snapshot_lists(srv: &Server, peers: &[&str]) {
    let path = srv.dir.join("snapshot.json");
    eventually(
        Duration::from_secs(20),
        &format!("the snapshot listing {peers:?}"),
        || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            async move {
                let doc: serde_json::Value = serde_json::from_str(text.split_once('\n')?.1).ok()?;
                let mut names: Vec<&str> = doc["peers"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                names.sort_unstable();
                (names == peers).then_some(())
            }
        },
    )
    .await;
}

async fn cache_put(srv: &Server, key: &str, value: &str) {
    let body = serde_json::json!({ "value": value });
    let path = format!("/v1/caches/default/keys/{key}");
    let r = srv
        .admin(
            "PUT",
            &path,
            Some(&srv.admin_token()),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Waits until `srv`'s default cache holds `value` under `key`.
async fn cache_holds(srv: &Server, key: &str, value: &str) {
    let path = format!("/v1/caches/default/keys/{key}");
    let token = srv.admin_token();
    eventually(
        Duration::from_secs(20),
        &format!("{key} = {value}"),
        || async {
            let r = srv.admin("GET", &path, Some(&token), b"").await;
            (r.status == 200 && r.json()["value"] == value).then_some(())
        },
    )
    .await;
}

const NO_HAND_BACK: &str = "could not hand the scheduler's lease back";

/// The store down: changes answer 503 saying so (one connection attempt, not the pool's
/// retries), `cluster status` says the store is unreachable, a stop does not wait on the
/// store, and the restart boots from the snapshot after a short look for the store (2 s),
/// not the pool's connect wait.
#[tokio::test]
async fn with_the_store_down_changes_get_503_at_once_and_stop_and_boot_do_not_wait() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let srv = env()
        .set("store", "url", &url)
        .set("cluster", "server", "\"solo\"")
        .channel("/cv", &["GET"], "c.version")
        .start()
        .await;
    assert_eq!(deploy(&srv, 1).await.status, 200);
    serves(&srv, 1).await;
    snapshot_at(&srv, 1).await;

    pg.stop();
    degraded(&srv).await;
    let token = srv.admin_token();
    let ch = serde_json::json!({"url_path": "/new", "service": "c.version"});
    for (method, path, body) in [
        (
            "POST",
            "/v1/modules",
            serde_json::json!({"modules": [{"name": "cmod", "source": module(2)}]}),
        ),
        ("POST", "/v1/channels", ch),
        ("DELETE", "/v1/modules/cmod", serde_json::Value::Null),
    ] {
        let r = srv
            .admin(method, path, Some(&token), body.to_string().as_bytes())
            .await;
        assert_eq!(r.status, 503, "{method} {path}");
        let msg = r.json()["error"].as_str().unwrap_or("").to_owned();
        assert!(
            msg.contains("the config store is unreachable") && msg.contains("refused"),
            "{method} {path}: {msg}"
        );
    }
    let r = srv.admin("GET", "/v1/modules", Some(&token), b"").await;
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("the config store is unreachable"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Reads and calls that need no store still work.
    let r = srv
        .admin("POST", "/v1/invoke/c.version", Some(&token), b"{}")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let d = cluster_status(&srv);
    assert_eq!(d["store"]["reachable"], false, "{d}");

    // The stop does not wait on the dead store, and says why it did not.
    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(30)), Some(0));
    let log = srv.log();
    assert!(
        log.contains("the config store is down: stopping without it"),
        "{log}"
    );
    assert!(!log.contains(NO_HAND_BACK), "{log}");
    assert!(!log.contains("the config store did not answer"), "{log}");

    // The restart looks for the store a little longer, then boots from the snapshot without
    // the pool's connect wait.
    let srv = srv.spawn_again();
    srv.wait_ready().await;
    serves(&srv, 1).await;
    assert!(
        srv.log()
            .contains("looking for it a little longer before serving the snapshot"),
        "{}",
        srv.log()
    );
    assert!(
        srv.log().contains(
            "nothing answers at the config store's address: serving the on-disk snapshot"
        ),
        "{}",
        srv.log()
    );

    // The store returns: the server notices, and a change applies.
    pg.start_again();
    eventually(Duration::from_secs(30), "store ok", || async {
        (srv.get("/healthz").await.json()["store"] == "ok").then_some(())
    })
    .await;
    assert_eq!(deploy(&srv, 3).await.status, 200);
    serves(&srv, 3).await;
    srv.assert_no_errors(&[]);
}

/// Three servers on the bus, the last config change made before B and C joined; the store
/// goes down and A restarts: A boots from its snapshot, links to B and C from the peers its
/// snapshot lists (written again when they joined, not only at a config change), and cache
/// writes replicate across the restart while the store is still down. A server that does
/// not lead the scheduler stops without a lease error.
#[tokio::test]
async fn a_server_restarted_during_an_outage_links_to_its_peers() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let secret = cluster_secret("outage-links");
    // The only config change comes before B and C join: A's snapshot of version 1 lists A
    // alone, and no later change rewrites it. The peers must reach it all the same.
    let a = bus_server(&url, "a", &secret).start().await;
    assert_eq!(deploy(&a, 1).await.status, 200);
    snapshot_at(&a, 1).await;
    let b = bus_server(&url, "b", &secret).start().await;
    let c = bus_server(&url, "c", &secret).start().await;
    linked(&a, &["b", "c"]).await;
    snapshot_lists(&a, &["a", "b", "c"]).await;

    // One of B and C does not lead the scheduler: it has no lease to hand back.
    let leader = eventually(Duration::from_secs(20), "a leader", || async {
        for (name, srv) in [("a", &a), ("b", &b), ("c", &c)] {
            if scheduler(srv).await["this_server_leads"] == true {
                return Some(name);
            }
        }
        None
    })
    .await;

    pg.stop();
    degraded(&a).await;
    let mut a = a;
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(30)), Some(0));
    let a = a.spawn_again();
    a.wait_ready().await;
    serves(&a, 1).await;
    linked(&a, &["b", "c"]).await;

    // A cache write on B reaches the restarted A, and one on A reaches B and C.
    cache_put(&b, "from-b", "1").await;
    cache_holds(&a, "from-b", "1").await;
    cache_put(&a, "from-a", "2").await;
    cache_holds(&c, "from-a", "2").await;
    cache_holds(&b, "from-a", "2").await;

    // The follower stops while the store is down: a clean stop, no lease error.
    let (mut follower, other) = if leader == "b" { (c, b) } else { (b, c) };
    follower.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(follower.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!follower.log().contains(NO_HAND_BACK), "{}", follower.log());
    drop(other);
    let _ = std::fs::remove_file(secret);
}

/// Right after each deploy through A, `cluster status` (through A and through B) shows every
/// server at the store's config version: the applied version is recorded when it is applied,
/// not at the next heartbeat. The text deploy report names the server deployed through.
#[tokio::test]
async fn cluster_status_is_current_right_after_a_deploy_and_the_report_names_every_server() {
    let db = PgDatabase::create();
    let url = format!("{:?}", db.url);
    let secret = cluster_secret("status");
    let a = bus_server(&url, "a", &secret).start().await;
    let b = bus_server(&url, "b", &secret).start().await;
    linked(&a, &["b"]).await;
    for v in 1..=3 {
        let r = deploy(&a, v).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        for srv in [&a, &b] {
            let d = cluster_status(srv);
            let current = d["store"]["config_version"].as_i64().unwrap();
            let servers = d["servers"].as_array().unwrap();
            assert_eq!(servers.len(), 2, "{d}");
            for s in servers {
                assert_eq!(
                    s["config_version"], current,
                    "behind right after deploy {v}: {d}"
                );
            }
        }
        assert_eq!(r.json()["server"], "a");
    }
    // The CLI's text report: the server deployed through, then its peer.
    let file = a.dir.join("cmod.py");
    std::fs::write(&file, module(9)).unwrap();
    let out = a.cli(&["deploy", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("server a (deployed through): ok (1 worker)"),
        "{text}"
    );
    assert!(text.contains("server b: ok"), "{text}");

    // With the store up too, the server that does not lead stops without a lease error.
    let leader = eventually(Duration::from_secs(20), "a leader", || async {
        for (name, srv) in [("a", &a), ("b", &b)] {
            if scheduler(srv).await["this_server_leads"] == true {
                return Some(name);
            }
        }
        None
    })
    .await;
    let mut follower = if leader == "a" { b } else { a };
    follower.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(follower.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!follower.log().contains(NO_HAND_BACK), "{}", follower.log());
    follower.assert_no_errors(&[]);
    let _ = std::fs::remove_file(secret);
}

async fn scheduler(srv: &Server) -> serde_json::Value {
    srv.admin("GET", "/v1/scheduler", Some(&srv.admin_token()), b"")
        .await
        .json()
}

/// The scheduler's lease belongs to one boot of a server. The leader killed -9 and started
/// again under the same name while its old lease still runs does not take the lead back: it
/// waits for that lease to run out, as any other server would, then leads under its new boot.
/// (The old lease is made to last in the store, so that the restart surely falls within it.)
#[tokio::test]
async fn a_leader_restarted_under_its_name_waits_for_its_old_lease() {
    // A restart under the same name takes its old row over only at the same address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (e, db) = env()
        .set("cluster", "server", "\"solo\"")
        .set("server", "listen", &format!("\"127.0.0.1:{port}\""))
        .postgres_store();
    let srv = e.start().await;
    let first = eventually(Duration::from_secs(20), "solo leads", || async {
        let s = scheduler(&srv).await;
        (s["this_server_leads"] == true).then_some(s)
    })
    .await;
    assert_eq!(first["leader"], "solo");

    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGKILL);
    srv.wait_exit(Duration::from_secs(10));
    db.sql("UPDATE scheduler_lease SET expires_at = expires_at + 600000");
    let srv = srv.spawn_again();
    srv.wait_ready().await;
    eventually(
        Duration::from_secs(20),
        "the old boot's lease seen",
        || async {
            srv.log()
                .contains("the lease is still held by an earlier run of this server")
                .then_some(())
        },
    )
    .await;
    let old_boot = first["boot"].as_str().unwrap().to_owned();
    assert_eq!(first["leader_boot"], old_boot.as_str());
    let s = scheduler(&srv).await;
    assert_eq!(s["this_server_leads"], false, "{s}");
    assert_eq!(s["leader"], "solo", "{s}");
    assert_eq!(s["leader_boot"], old_boot.as_str(), "{s}");
    let new_boot = s["boot"].as_str().unwrap().to_owned();
    assert_ne!(new_boot, old_boot);

    // The old lease runs out: the new boot leads.
    db.sql("UPDATE scheduler_lease SET expires_at = 0");
    eventually(Duration::from_secs(20), "the new boot leads", || async {
        let s = scheduler(&srv).await;
        (s["this_server_leads"] == true && s["leader_boot"] == new_boot.as_str()).then_some(())
    })
    .await;
    srv.assert_no_errors(&[]);
}

/// Drops the role and database of the documented setup at the end of the test.
struct DocRole(String);

impl Drop for DocRole {
    fn drop(&mut self) {
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
            format!("DROP ROLE IF EXISTS {}", self.0),
        ] {
            let admin = std::env::var("OXBUS_TEST_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let _ = std::process::Command::new("psql")
                .args([admin.as_str(), "-q", "-c", sql.as_str()])
                .output();
        }
    }
}

/// The PostgreSQL setup of docs/CLUSTER.md, followed as written (its SQL block run statement
/// by statement, names made unique): two servers and the proxy run on the role it creates —
/// migrations, registration, a deploy through one server served by the other, the proxy's
/// server list from the store.
#[tokio::test]
async fn the_documented_postgres_setup_runs_a_cluster_and_the_proxy() {
    let doc = std::fs::read_to_string(repo_root().join("docs/CLUSTER.md")).unwrap();
    let block = doc
        .split_once("<!-- setup-sql:")
        .and_then(|(_, rest)| rest.split_once("```sql\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(sql, _)| sql.to_owned())
        .expect("docs/CLUSTER.md has its setup-sql block");
    let name = format!("oxbus_doc_{}_{}", std::process::id(), next_id());
    let guard = DocRole(name.clone());
    let sql = block
        .replace("'change-me'", "'doc-pass'")
        .replace("oxbus", &name);
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        PgDatabase::admin_sql(statement);
    }
    let admin = std::env::var("OXBUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let host = admin
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host.to_owned())
        .expect("a host in OXBUS_TEST_PG");
    let url = format!("postgres://{name}:doc-pass@{host}/{name}");
    let store = format!("{url:?}");
    let server = |n: &str| {
        env()
            .set("store", "url", &store)
            .set("cluster", "server", &format!("{n:?}"))
            .channel("/cv", &["GET"], "c.version")
    };
    let a = server("node1").start().await;
    let b = server("node2").start().await;
    assert_eq!(deploy(&a, 1).await.status, 200);
    serves(&b, 1).await;
    let p = proxy::Proxy::start(
        "",
        &format!(
            "[upstreams]\nstore = {store}\nrefresh_interval_ms = 200\n[health]\ninterval_ms = 100\n"
        ),
    );
    for s in [&a, &b] {
        let port = s.port();
        eventually(
            Duration::from_secs(30),
            "the proxy has the server",
            || async { (p.upstream(port).await["member"] == true).then_some(()) },
        )
        .await;
    }
    for s in [&a, &b] {
        s.assert_no_errors(&[]);
    }
    drop((p, a, b));
    drop(guard);
}
