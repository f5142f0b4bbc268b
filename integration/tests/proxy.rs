//! `oxbus proxy` in front of three real servers (issue 5): spread, kill -9, drain, graceful
//! upgrade, limits, slowloris, stats, servers from the store, TLS.

use nix::sys::signal::Signal;
use oxbus_integration::proxy::{Conn, Load, Proxy, free_port, get, old_exits_cleanly};
use oxbus_integration::*;
use std::time::{Duration, Instant};

const SVC: &str = r#"
import os
from oxbus import Service

class Who(Service):
    name = 'px.who'

    def handle(self):
        h = self.request.http.headers
        self.response.payload = {
            'pid': os.getpid(),
            'xff': h.get('X-Forwarded-For'),
            'proto': h.get('X-Forwarded-Proto'),
            'port': h.get('X-Forwarded-Port'),
            'request_id': h.get('X-Request-Id'),
            'remote_addr': self.request.http.remote_addr,
            'scheme': self.request.http.scheme,
        }

class Slow(Service):
    name = 'px.slow'

    def handle(self):
        import time
        time.sleep(int(self.request.http.query.get('ms', '0')) / 1000)
        self.response.payload = {'pid': os.getpid()}

class Echo(Service):
    name = 'px.echo'

    def handle(self):
        self.response.payload = {'pid': os.getpid(), 'got': self.request.payload}
"#;

/// A server on a fixed port (so a restart keeps its address in the proxy's list).
fn server_env(port: u16) -> Env {
    Env::new()
        .workers(1)
        .service("pxsvc.py", SVC)
        .channel("/who", &["GET"], "px.who")
        .channel("/slow", &["GET"], "px.slow")
        .channel("/echo", &["POST"], "px.echo")
        .set("server", "listen", &format!("\"127.0.0.1:{port}\""))
        // Drain like a server behind a balancer: /readyz 503 first, long enough for the
        // proxy's checks (every 100 ms) to take it out, then close.
        .set("http", "shutdown_delay_ms", "800")
        // Believe the proxy (on loopback) about the client.
        .set("http", "trusted_proxies", "[\"127.0.0.1/32\"]")
}

struct Cluster {
    servers: Vec<Server>,
    ports: Vec<u16>,
}

async fn three_servers() -> Cluster {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for p in &ports {
        servers.push(server_env(*p).spawn());
    }
    for s in &servers {
        s.wait_ready().await;
    }
    Cluster { servers, ports }
}

fn static_upstreams(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[upstreams]\nservers = [{}]\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n",
        list.join(", ")
    )
}

/// Waits until the proxy sees the upstream on `port` as `up`.
async fn upstream_up(p: &Proxy, port: u16, up: bool) {
    eventually(Duration::from_secs(20), "upstream state", || async {
        (p.upstream(port).await["up"] == up).then_some(())
    })
    .await;
}

async fn all_up(p: &Proxy, ports: &[u16]) {
    for port in ports {
        upstream_up(p, *port, true).await;
    }
}

fn pids_of(c: &Cluster) -> Vec<Vec<u32>> {
    c.servers.iter().map(|s| s.worker_pids()).collect()
}

/// Requests per server, from the workers' pids in the answers.
fn per_server(by_pid: &std::collections::BTreeMap<u64, u64>, pids: &[Vec<u32>]) -> Vec<u64> {
    pids.iter()
        .map(|ps| {
            ps.iter()
                .map(|p| by_pid.get(&(*p as u64)).copied().unwrap_or(0))
                .sum()
        })
        .collect()
}

#[tokio::test]
async fn traffic_spreads_over_three_servers_round_robin_and_least_connections() {
    let c = three_servers().await;
    for balance in ["round_robin", "least_connections"] {
        let p = Proxy::start(
            &format!("balance = \"{balance}\""),
            &static_upstreams(&c.ports),
        );
        all_up(&p, &c.ports).await;
        let load = Load::start(p.port, 6, "GET", "/who");
        load.more_ok(600).await;
        let t = load.stop().await;
        assert_eq!(t.not_ok(), 0, "{balance}: {t:?}");
        let spread = per_server(&t.by_pid, &pids_of(&c));
        let total: u64 = spread.iter().sum();
        assert_eq!(total, t.ok(), "every answer came from one of the three");
        for n in &spread {
            assert!(*n * 6 >= total, "{balance}: uneven spread {spread:?}");
        }
        let stats = p.stats().await;
        assert_eq!(stats["balance"], balance);
        for port in &c.ports {
            let u = p.upstream(*port).await;
            assert!(u["requests"].as_u64().unwrap() > 0, "{u}");
            assert_eq!(u["errors"], 0, "{u}");
            assert!(u["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{u}");
        }
        let metrics = get(p.stats_port, "/metrics").await.unwrap();
        let text = String::from_utf8_lossy(&metrics.1);
        for port in &c.ports {
            assert!(
                text.contains(&format!(
                    "oxbus_proxy_upstream_up{{upstream=\"127.0.0.1:{port}\"}} 1"
                )),
                "{text}"
            );
        }
        assert!(text.contains("oxbus_proxy_upstream_latency_seconds_bucket"));
        assert!(p.unexpected_errors(&[]).is_empty(), "{}", p.log());
    }
}

#[tokio::test]
async fn a_server_killed_under_load_fails_only_its_in_flight_requests_and_comes_back() {
    let c = three_servers().await;
    let p = Proxy::start("", &static_upstreams(&c.ports));
    all_up(&p, &c.ports).await;
    let conns = 6;
    let load = Load::start(p.port, conns, "GET", "/who");
    load.more_ok(300).await;
    let mut c = c;
    let victim = c.servers.remove(1);
    let victim_port = c.ports[1];
    victim.signal(Signal::SIGKILL);
    upstream_up(&p, victim_port, false).await;
    // From here on, nothing may fail: new requests go to the two others. (A request that
    // started before this moment may have been in flight on the dead server.)
    let down_at = Instant::now();
    load.more_ok(300).await;
    let after = load.tally();
    let late: Vec<_> = after
        .failed_started
        .iter()
        .filter(|t| **t >= down_at)
        .collect();
    assert!(
        late.is_empty(),
        "{} requests started after the server was marked down failed: {after:?}",
        late.len()
    );
    assert!(
        after.not_ok() <= conns as u64,
        "at most one in-flight request per connection may fail: {after:?}"
    );
    // Restarted on its port: marked up again and back in the rotation.
    let back = victim.spawn_again();
    back.wait_ready().await;
    upstream_up(&p, victim_port, true).await;
    let pids = back.worker_pids();
    eventually(
        Duration::from_secs(30),
        "the restarted server serves",
        || async {
            let t = load.tally();
            pids.iter()
                .any(|pid| t.by_pid.get(&(*pid as u64)).is_some_and(|n| *n > 10))
                .then_some(())
        },
    )
    .await;
    let t = load.stop().await;
    assert_eq!(t.not_ok(), after.not_ok(), "{t:?}");
    let u = p.upstream(victim_port).await;
    assert!(u["errors"].as_u64().unwrap() <= conns as u64 + 1, "{u}");
}

#[tokio::test]
async fn a_server_drained_with_sigterm_under_load_costs_no_client_a_request() {
    let mut c = three_servers().await;
    let p = Proxy::start("", &static_upstreams(&c.ports));
    all_up(&p, &c.ports).await;
    // Non-idempotent POSTs and slow GETs: neither may fail or be cut.
    let posts = Load::start(p.port, 4, "POST", "/echo");
    let slow = Load::start(p.port, 4, "GET", "/slow?ms=150");
    eventually(Duration::from_secs(30), "traffic", || async {
        (posts.tally().ok() >= 200 && slow.tally().ok() >= 20).then_some(())
    })
    .await;
    let mut drained = c.servers.remove(2);
    drained.signal(Signal::SIGTERM);
    assert_eq!(drained.wait_exit(Duration::from_secs(30)), Some(0));
    upstream_up(&p, c.ports[2], false).await;
    posts.more_ok(200).await;
    let (tp, ts) = (posts.stop().await, slow.stop().await);
    assert_eq!(tp.not_ok(), 0, "POSTs: {tp:?}");
    assert_eq!(ts.not_ok(), 0, "slow GETs: {ts:?}");
    for s in &c.servers {
        s.assert_no_errors(&[]);
    }
}

#[tokio::test]
async fn a_graceful_upgrade_under_load_refuses_and_fails_nothing() {
    let c = three_servers().await;
    let mut p = Proxy::start("grace_period_s = 2", &static_upstreams(&c.ports));
    all_up(&p, &c.ports).await;
    let gets = Load::start(p.port, 6, "GET", "/who");
    let posts = Load::start(p.port, 2, "POST", "/echo");
    for round in 0..2 {
        gets.more_ok(200).await;
        let old_pid = p.pid();
        let mut old = p.upgrade();
        assert_ne!(p.pid(), old_pid);
        // The old process hands over, finishes its requests and exits.
        old_exits_cleanly(&mut old, &format!("round {round}")).await;
        let pid_file = std::fs::read_to_string(p.dir.join("state/proxy.pid")).unwrap();
        assert_eq!(pid_file.trim(), p.pid().to_string());
    }
    gets.more_ok(200).await;
    let (tg, tp) = (gets.stop().await, posts.stop().await);
    assert_eq!(tg.not_ok(), 0, "GETs: {tg:?}");
    assert_eq!(tp.not_ok(), 0, "POSTs: {tp:?}");
    // The stats listener moved too.
    assert!(p.stats().await["requests"].as_u64().unwrap() > 0);
    // pingora logs its own retry while the sockets pass; nothing else may be an error.
    let errors = p.unexpected_errors(&["No incoming socket transfer"]);
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test]
async fn forwarding_headers_request_ids_limits_and_slowloris() {
    let port = free_port();
    let srv = server_env(port).start().await;
    let p = Proxy::start(
        "header_read_timeout_ms = 1000\nmax_header_bytes = 8192",
        &static_upstreams(&[port]),
    );
    all_up(&p, &[port]).await;

    // X-Forwarded-For is appended to (the client's own value stays leftmost, the address
    // the proxy saw is last), -Proto and -Port are the proxy's, a request id is made.
    let mut conn = Conn::connect(p.port, None).await.unwrap();
    let (status, body, headers) = conn
        .send(
            "GET",
            "/who",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["xff"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen["proto"], "http");
    assert_eq!(seen["port"], p.port.to_string());
    let id = seen["request_id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());
    assert_eq!(headers["x-request-id"], id.as_str());
    // A client's own request id passes through.
    let (_, body, headers) = conn
        .send(
            "GET",
            "/who",
            &[("x-request-id", "client-id-42")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["request_id"], "client-id-42");
    assert_eq!(headers["x-request-id"], "client-id-42");

    // Oversized heads: 431 with a JSON error.
    let big = "a".repeat(10_000);
    let (status, body, _) = Conn::connect(p.port, None)
        .await
        .unwrap()
        .send(
            "GET",
            "/who",
            &[("x-big", big.as_str())],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, 431);
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(err["error"].as_str().unwrap().contains("8192"), "{err}");

    // Slowloris: a head trickled in byte by byte is cut at the header timeout, while a
    // normal client on another connection is served throughout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .unwrap();
    slow.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = loop {
        if slow.write_all(b"X-A: b\r\n").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => panic!("the slow client got an answer"),
            Err(_) => {}
        }
        assert_eq!(get(p.port, "/who").await.unwrap().0, 200);
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    assert!(closed, "the slowloris connection was never closed");
    srv.assert_no_errors(&[]);
}

/// Client on 127.0.0.2, proxy → server from 127.0.0.1, the server trusting only 127.0.0.1:
/// what the client writes in X-Forwarded-For is not believed, what the proxy adds is; the
/// proxy's request id becomes the server's cid. Straight to the server, the same client is
/// believed about nothing.
#[tokio::test]
async fn spoofed_forwarded_for_is_not_believed_and_the_proxy_is() {
    let port = free_port();
    // server_env trusts 127.0.0.1 (the proxy's address) and nothing else.
    let srv = server_env(port).start().await;
    let p = Proxy::start("", &static_upstreams(&[port]));
    all_up(&p, &[port]).await;
    let client: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
    ];
    let mut via_proxy = Conn::connect(p.port, Some(client)).await.unwrap();
    let (status, body, headers) = via_proxy
        .send("GET", "/who", &spoof, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["remote_addr"], "127.0.0.2", "{seen}");
    assert_eq!(seen["scheme"], "http", "{seen}");
    assert_eq!(seen["xff"], "6.6.6.6, 127.0.0.2", "{seen}");
    assert_eq!(headers["x-oxbus-cid"], headers["x-request-id"]);

    let mut direct = Conn::connect(port, Some(client)).await.unwrap();
    let (status, body, _) = direct
        .send("GET", "/who", &spoof, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["remote_addr"], "127.0.0.2", "{seen}");
    assert_eq!(seen["scheme"], "http", "{seen}");
    assert_eq!(
        seen["xff"],
        serde_json::Value::Null,
        "stripped from an untrusted peer"
    );
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn servers_come_from_the_store_as_they_join_and_leave() {
    let (first, db) = Env::new().postgres_store();
    let url = db.url.clone();
    let store = format!("{url:?}");
    let env = |e: Env| {
        e.workers(1)
            .service("pxsvc.py", SVC)
            .channel("/who", &["GET"], "px.who")
            .set("store", "url", &store)
            .set("http", "shutdown_delay_ms", "500")
    };
    let a = env(first).start().await;
    let b = env(Env::new()).start().await;
    let p = Proxy::start(
        "",
        &format!(
            "[upstreams]\nstore = {store}\nrefresh_interval_ms = 200\n[health]\ninterval_ms = 100\n"
        ),
    );
    for s in [&a, &b] {
        upstream_up(&p, s.port(), true).await;
    }
    // A third server joins: it gets traffic without touching the proxy.
    let c = env(Env::new()).start().await;
    upstream_up(&p, c.port(), true).await;
    let pids = c.worker_pids();
    let load = Load::start(p.port, 3, "GET", "/who");
    eventually(Duration::from_secs(30), "the new server serves", || async {
        let t = load.tally();
        pids.iter()
            .any(|pid| t.by_pid.get(&(*pid as u64)).is_some_and(|n| *n > 10))
            .then_some(())
    })
    .await;
    // B stops cleanly: it deregisters and leaves the list; no request fails.
    let b_port = b.port();
    let mut b = b;
    b.signal(Signal::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(30)), Some(0));
    eventually(Duration::from_secs(20), "B left", || async {
        (p.upstream(b_port).await["member"] == false).then_some(())
    })
    .await;
    let t = load.stop().await;
    assert_eq!(t.not_ok(), 0, "{t:?}");
    assert!(p.log().contains("server left"), "{}", p.log());
    drop(c);
}

#[tokio::test]
async fn tls_is_terminated_from_certificate_files() {
    let port = free_port();
    let _srv = server_env(port).start().await;
    let dir =
        std::env::temp_dir().join(format!("oxbus-tls-it-{}-{}", std::process::id(), next_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .arg("-addext")
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let tls_port = free_port();
    let p = Proxy::start(
        "",
        &format!(
            "{}[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            static_upstreams(&[port]),
            cert.display(),
            key.display()
        ),
    );
    all_up(&p, &[port]).await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .arg(format!("https://127.0.0.1:{tls_port}/who"))
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["proto"], "https");
    assert_eq!(seen["port"], tls_port.to_string());
    let errors = p.unexpected_errors(&[]);
    assert!(errors.is_empty(), "{errors:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_proxy_configs_are_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!(
        "oxbus-pxcfg-it-{}-{}",
        std::process::id(),
        next_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[proxy]\nlisten = \"127.0.0.1:1\"\n", "upstreams"),
        (
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstreams]\nservers = [\"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\", \"127.0.0.1:5\"]\n",
            "at most 3 servers",
        ),
    ];
    for (text, want) in cases {
        let f = dir.join("proxy.toml");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(oxbus_bin())
            .args(["proxy", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
    // --upgrade with nothing to take over.
    let state = dir.join("state");
    std::fs::write(
        dir.join("proxy.toml"),
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n[upstreams]\nservers = [\"127.0.0.1:2\"]\n",
            free_port(),
            state.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(oxbus_bin())
        .args(["proxy", "--upgrade", "--config"])
        .arg(dir.join("proxy.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no running proxy to take over"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
