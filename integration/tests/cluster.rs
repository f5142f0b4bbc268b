//! Cluster membership (issue 4, first part): servers register in the config store; a SQLite
//! store takes one server, a PostgreSQL store at most three.

use oxbus_integration::bus::{cluster_status, linked, links};
use oxbus_integration::versioned::{deploy, module};
use oxbus_integration::*;
use std::time::Duration;

fn env() -> Env {
    Env::new().workers(1).with_test_services()
}

#[tokio::test]
async fn a_second_server_on_a_sqlite_store_is_refused() {
    let a = env().start().await;
    let info = a
        .admin("GET", "/v1/info", Some(&a.admin_token()), b"")
        .await
        .json();
    assert_eq!(info["servers"].as_array().unwrap().len(), 1);
    assert_eq!(info["servers"][0]["name"], info["server"]);
    let url = format!("\"sqlite:{}\"", a.dir.join("oxbus.db").display());
    let mut b = env().set("store", "url", &url).spawn();
    assert_eq!(b.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        b.log()
            .contains("a cluster of servers needs a PostgreSQL store"),
        "{}",
        b.log()
    );
    // A stops cleanly: its row goes, and another server may take the store.
    let a = a.restart().await;
    let info = a
        .admin("GET", "/v1/info", Some(&a.admin_token()), b"")
        .await
        .json();
    assert_eq!(info["servers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_fourth_server_on_a_postgres_store_is_refused() {
    let (first, db) = env().postgres_store();
    let url = format!("{:?}", db.url);
    let mut servers = vec![first.start().await];
    for _ in 0..2 {
        servers.push(env().set("store", "url", &url).start().await);
    }
    let info = servers[2]
        .admin("GET", "/v1/info", Some(&servers[2].admin_token()), b"")
        .await
        .json();
    assert_eq!(info["servers"].as_array().unwrap().len(), 3);
    let mut fourth = env().set("store", "url", &url).spawn();
    assert_eq!(fourth.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        fourth.log().contains("a cluster has at most 3 servers"),
        "{}",
        fourth.log()
    );
    // One stops cleanly: now there is room.
    let mut gone = servers.pop().unwrap();
    gone.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(gone.wait_exit(Duration::from_secs(30)), Some(0));
    let again = env().set("store", "url", &url).start().await;
    again.assert_no_errors(&[]);
}

/// Waits until `srv` answers GET `path` with `status` (and, for 200, `version`).
async fn serves(srv: &Server, path: &str, status: u16, version: Option<u64>) {
    eventually(
        Duration::from_secs(20),
        &format!("{path} -> {status} {version:?}"),
        || async move {
            let r = srv
                .try_request("GET", path, &[], bytes::Bytes::new())
                .await
                .ok()?;
            let v = (r.status == 200)
                .then(|| r.json()["version"].as_u64())
                .flatten();
            (r.status == status && v == version).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_change_through_one_server_reaches_the_others() {
    let (first, db) = env().postgres_store();
    let url = format!("{:?}", db.url);
    let a = first.start().await;
    let b = env().set("store", "url", &url).start().await;
    let token_a = a.admin_token();
    // A channel created on A routes on B; a module deployed on A serves on B.
    let ch = serde_json::json!({"name": "cv", "url_path": "/cv", "methods": ["GET"], "service": "c.version"});
    let r = a
        .admin(
            "POST",
            "/v1/channels",
            Some(&token_a),
            ch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(deploy(&a, 1).await.status, 200);
    serves(&b, "/cv", 200, Some(1)).await;
    // Redeployed on B: A follows, with its worker PIDs unchanged.
    let pids = a.worker_pids();
    assert_eq!(deploy(&b, 2).await.status, 200);
    serves(&a, "/cv", 200, Some(2)).await;
    assert_eq!(a.worker_pids(), pids);
    // Undeployed on A: B answers 404 for the service.
    let r = a
        .admin("DELETE", "/v1/modules/cmod", Some(&token_a), b"")
        .await;
    assert_eq!(r.status, 200);
    serves(&b, "/cv", 404, None).await;

    // `oxbus cluster status`: both servers, each at the store's version once it heartbeats.
    eventually(Duration::from_secs(30), "both servers in sync", || {
        let d = cluster_status(&a);
        async move {
            let v = d["store"]["config_version"].as_i64()?;
            let servers = d["servers"].as_array()?;
            (servers.len() == 2 && servers.iter().all(|s| s["config_version"] == v)).then_some(())
        }
    })
    .await;
    let text = std::process::Command::new(oxbus_bin())
        .args(["cluster", "status"])
        .env("OXBUS_URL", format!("http://127.0.0.1:{}", b.admin_port()))
        .env("OXBUS_TOKEN", b.admin_token())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("postgres reachable") && text.contains("in sync"),
        "{text}"
    );
    a.assert_no_errors(&[]);
    b.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_store_outage_keeps_traffic_flowing_and_a_restart_boots_from_the_snapshot() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let srv = env()
        .set("store", "url", &url)
        .channel("/cv", &["GET"], "c.version")
        .start()
        .await;
    assert_eq!(deploy(&srv, 1).await.status, 200);
    serves(&srv, "/cv", 200, Some(1)).await;
    let snapshot = srv.dir.join("snapshot.json");
    eventually(Duration::from_secs(20), "the snapshot of version 1", || {
        let text = std::fs::read_to_string(&snapshot).unwrap_or_default();
        async move { text.contains("\"config_version\":1").then_some(()) }
    })
    .await;

    // The store goes down: traffic flows, /healthz says degraded, changes get 503.
    pg.stop();
    for _ in 0..20 {
        assert_eq!(srv.get("/cv").await.status, 200);
    }
    eventually(Duration::from_secs(20), "store degraded", || async {
        let r = srv.get("/healthz").await;
        (r.status == 200 && r.json()["store"] == "degraded").then_some(())
    })
    .await;
    assert_eq!(srv.get("/readyz").await.status, 200);
    assert_eq!(deploy(&srv, 2).await.status, 503);

    // Restarted while the store is down: it boots from the snapshot and serves version 1.
    let srv = srv.restart().await;
    serves(&srv, "/cv", 200, Some(1)).await;
    assert!(
        srv.log().contains("serving the on-disk snapshot"),
        "{}",
        srv.log()
    );

    // The store returns: the server says so and a change made now applies.
    pg.start_again();
    eventually(Duration::from_secs(30), "store ok", || async {
        let r = srv.get("/healthz").await;
        (r.json()["store"] == "ok").then_some(())
    })
    .await;
    assert_eq!(deploy(&srv, 3).await.status, 200);
    serves(&srv, "/cv", 200, Some(3)).await;

    // A corrupt snapshot with the store down: a clear error exit, not a guess.
    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(30)), Some(0));
    pg.stop();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&snapshot, bytes).unwrap();
    let mut srv = srv.spawn_again();
    assert_eq!(srv.wait_exit(Duration::from_secs(60)), Some(1));
    assert!(
        srv.log().contains("is corrupt (checksum mismatch)"),
        "{}",
        srv.log()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three servers on a PostgreSQL of the test's own: a deploy through A answers on B and C, a
/// change through C reaches A and B, and B — killed, then restarted after another deploy —
/// comes back on the new version.
#[tokio::test]
async fn three_servers_converge_and_a_server_that_was_down_comes_back_current() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let b_port = free_port();
    let server = |name: &str, listen: Option<u16>| {
        let mut e = env()
            .set("store", "url", &url)
            .set("cluster", "server", &format!("{name:?}"))
            .channel("/cv", &["GET"], "c.version");
        if let Some(p) = listen {
            e = e.set("server", "listen", &format!("\"127.0.0.1:{p}\""));
        }
        e
    };
    let a = server("a", None).start().await;
    let b = server("b", Some(b_port)).start().await;
    let c = server("c", None).start().await;

    assert_eq!(deploy(&a, 1).await.status, 200);
    for s in [&a, &b, &c] {
        serves(s, "/cv", 200, Some(1)).await;
    }
    // A channel created through C routes on A and B.
    let ch = serde_json::json!({"name": "extra", "url_path": "/extra", "methods": ["GET"], "service": "c.version"});
    let r = c
        .admin(
            "POST",
            "/v1/channels",
            Some(&c.admin_token()),
            ch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201);
    for s in [&a, &b] {
        serves(s, "/extra", 200, Some(1)).await;
    }

    // B dies (kill -9); a deploy through A reaches C; B, restarted, serves it too.
    let mut b = b;
    b.signal(nix::sys::signal::Signal::SIGKILL);
    b.wait_exit(Duration::from_secs(10));
    assert_eq!(deploy(&a, 2).await.status, 200);
    serves(&c, "/cv", 200, Some(2)).await;
    let b = b.spawn_again();
    b.wait_ready().await;
    serves(&b, "/cv", 200, Some(2)).await;
    let info = b
        .admin("GET", "/v1/info", Some(&b.admin_token()), b"")
        .await
        .json();
    assert_eq!(info["servers"].as_array().unwrap().len(), 3, "{info}");
    for s in [&a, &c] {
        s.assert_no_errors(&[]);
    }
}

fn bus_server(url: &str, name: &str, secret: &std::path::Path) -> Env {
    env()
        .bus_member(url, name, secret)
        .channel("/cv", &["GET"], "c.version")
}

#[tokio::test]
async fn the_bus_links_every_pair_carries_changes_and_heals_after_a_partition() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let secret = cluster_secret("good");
    let a = bus_server(&url, "a", &secret).start().await;
    let b = bus_server(&url, "b", &secret).start().await;
    let c = bus_server(&url, "c", &secret).start().await;
    linked(&a, &["b", "c"]).await;
    linked(&b, &["a", "c"]).await;
    linked(&c, &["a", "b"]).await;

    // With the version check slowed to 10 minutes, only the bus can carry these. The deploy
    // report lists B and C, each running the new version.
    let r = deploy(&a, 1).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rep = r.json();
    let servers: Vec<&str> = rep["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["b", "c"], "{rep}");
    for s in rep["servers"].as_array().unwrap() {
        assert_eq!(s["ok"], true, "{rep}");
        assert_eq!(
            s["answer"]["running"]["cmod"], rep["modules"][0]["version"],
            "{rep}"
        );
        assert_eq!(s["answer"]["worker_count"], 1, "{rep}");
    }
    for s in [&b, &c] {
        serves(s, "/cv", 200, Some(1)).await;
    }
    assert_eq!(deploy(&c, 2).await.status, 200);
    for s in [&a, &b] {
        serves(s, "/cv", 200, Some(2)).await;
    }

    // A partition: B frozen (SIGSTOP) until its links die; a deploy meanwhile; B thawed
    // relinks and catches up on its own.
    b.signal(nix::sys::signal::Signal::SIGSTOP);
    linked(&a, &["c"]).await;
    assert_eq!(deploy(&a, 3).await.status, 200);
    serves(&c, "/cv", 200, Some(3)).await;
    b.signal(nix::sys::signal::Signal::SIGCONT);
    linked(&b, &["a", "c"]).await;
    serves(&b, "/cv", 200, Some(3)).await;
    for s in [&a, &c] {
        s.assert_no_errors(&[]);
    }
    // A clean stop says BYE: the others log it as such, not as a lost link.
    let mut c = c;
    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(c.wait_exit(Duration::from_secs(30)), Some(0));
    linked(&a, &["b"]).await;
    assert!(
        a.log().contains("bus link closed: the peer is stopping"),
        "{}",
        a.log()
    );
    let _ = std::fs::remove_file(secret);
}

#[tokio::test]
async fn a_server_with_another_cluster_secret_is_refused_on_the_bus() {
    let (first, db) = env().postgres_store();
    let url = format!("{:?}", db.url);
    let good = cluster_secret("one");
    let bad = cluster_secret("two");
    let a = bus_server(&url, "a", &good).start().await;
    let _ = first;
    let b = bus_server(&url, "b", &bad).start().await;
    eventually(Duration::from_secs(30), "a refused link", || {
        let log = a.log();
        async move { log.contains("bus dial refused").then_some(()) }
    })
    .await;
    assert!(a.log().contains("proof"), "{}", a.log());
    assert!(links(&a).is_empty());
    assert!(links(&b).is_empty());
    assert!(!a.log().contains("s3cr3t") && !b.log().contains("s3cr3t"));
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(bad);
}

/// Deploys through two servers at the same time both succeed, each report listing the other
/// (each server's deploy lock is released before it waits on its peers).
#[tokio::test]
async fn concurrent_deploys_through_two_servers_both_complete() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let secret = cluster_secret("concurrent");
    let a = bus_server(&url, "a", &secret).start().await;
    let b = bus_server(&url, "b", &secret).start().await;
    linked(&a, &["b"]).await;
    // Different modules with different services (one service name in two modules deployed
    // through two servers at once is a conflict the per-server check cannot see).
    let body = |name: &str| {
        let source = module(7).replace("c.version", &format!("svc.{name}"));
        serde_json::json!({"modules": [{"name": name, "source": source}]}).to_string()
    };
    for round in 0..3 {
        let (x, y) = (body(&format!("ca{round}")), body(&format!("cb{round}")));
        let (ta, tb) = (a.admin_token(), b.admin_token());
        let (ra, rb) = tokio::join!(
            a.admin("POST", "/v1/modules", Some(&ta), x.as_bytes()),
            b.admin("POST", "/v1/modules", Some(&tb), y.as_bytes()),
        );
        for (r, peer) in [(&ra, "b"), (&rb, "a")] {
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["servers"][0]["server"], peer);
            assert_eq!(r.json()["servers"][0]["ok"], true);
        }
    }
    // One service in two modules through two servers at once: one deploy wins, the other
    // is refused naming the service, and both servers run the winner.
    let same = |name: &str| {
        let source = module(8).replace("c.version", "svc.contested");
        serde_json::json!({"modules": [{"name": name, "source": source}]}).to_string()
    };
    let (x, y) = (same("wa"), same("wb"));
    let (ta, tb) = (a.admin_token(), b.admin_token());
    let (ra, rb) = tokio::join!(
        a.admin("POST", "/v1/modules", Some(&ta), x.as_bytes()),
        b.admin("POST", "/v1/modules", Some(&tb), y.as_bytes()),
    );
    let mut statuses = [ra.status, rb.status];
    statuses.sort();
    // The loser is refused by the store's claim (400) or, when the winner reached its
    // server first, by its worker's check (422): either way it names the service.
    assert!(
        statuses == [200, 400] || statuses == [200, 422],
        "{statuses:?}: {:?} / {:?}",
        ra.body,
        rb.body
    );
    let (winner, loser) = if ra.status == 200 {
        ("wa", &rb)
    } else {
        ("wb", &ra)
    };
    assert!(
        String::from_utf8_lossy(&loser.body).contains("svc.contested"),
        "{}",
        String::from_utf8_lossy(&loser.body)
    );
    for s in [&a, &b] {
        let list = s
            .admin("GET", "/v1/services", Some(&s.admin_token()), b"")
            .await
            .json();
        let owner = list["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "svc.contested")
            .map(|v| v["module"].clone());
        assert_eq!(owner, Some(serde_json::json!(winner)));
    }
    let _ = std::fs::remove_file(secret);
}

/// The store down under a cluster of three: all keep answering, changes get 503 on each;
/// the store back: a change made through one reaches all three.
#[tokio::test]
async fn a_store_outage_under_three_servers_and_the_recovery() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let secret = cluster_secret("outage3");
    let a = bus_server(&url, "a", &secret).start().await;
    let b = bus_server(&url, "b", &secret).start().await;
    let c = bus_server(&url, "c", &secret).start().await;
    linked(&a, &["b", "c"]).await;
    assert_eq!(deploy(&a, 1).await.status, 200);
    for s in [&a, &b, &c] {
        serves(s, "/cv", 200, Some(1)).await;
    }

    pg.stop();
    for s in [&a, &b, &c] {
        for _ in 0..10 {
            assert_eq!(s.get("/cv").await.status, 200);
        }
    }
    for s in [&b, &c] {
        let ch = serde_json::json!({"url_path": "/new", "service": "c.version"});
        let r = s
            .admin(
                "POST",
                "/v1/channels",
                Some(&s.admin_token()),
                ch.to_string().as_bytes(),
            )
            .await;
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(deploy(&a, 2).await.status, 503);
    for s in [&a, &b, &c] {
        serves(s, "/cv", 200, Some(1)).await;
    }

    pg.start_again();
    for (name, s) in [("a", &a), ("b", &b), ("c", &c)] {
        let what = format!("{name} to see the store back (/healthz store ok)");
        eventually(Duration::from_secs(30), &what, || async move {
            let r = s.get("/healthz").await;
            (r.json()["store"] == "ok").then_some(())
        })
        .await;
    }
    let r = deploy(&b, 3).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for s in [&a, &b, &c] {
        serves(s, "/cv", 200, Some(3)).await;
    }
    let _ = std::fs::remove_file(secret);
}
