//! The HTTP edge against the real binary and real Python workers: routing, SimpleIO,
//! errors, limits, timeouts, cids.

use bytes::Bytes;
use oxbus_integration::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn echo_params_errors_and_cids() {
    let srv = Env::new().workers(2).with_test_services().start().await;

    // Echo: the JSON object back plus "ok": true, with a cid header.
    let r = srv
        .post_json("/echo", &json!({"name": "Ann", "n": [1, 2]}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"name": "Ann", "n": [1, 2], "ok": true}));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.cid().len(), 20);

    // Path params + query + headers + SimpleIO typing (item_id -> int, is_active -> bool).
    let r = srv
        .request(
            "GET",
            "/items/42/caf%C3%A9?is_active=yes&x=1",
            &[("user-agent", "it/1")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["item_id"], 42);
    assert_eq!(j["name"], "café");
    assert_eq!(j["is_active"], true);
    assert_eq!(j["query"]["x"], "1");
    assert_eq!(j["method"], "GET");
    assert_eq!(j["ua"], "it/1");

    // SimpleIO: an ill-typed input is a 400 naming the field.
    let r = srv.get("/items/abc/x").await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert!(j["error"].as_str().unwrap().contains("item_id"), "{j}");
    assert_eq!(j["cid"], r.cid());

    // A service exception: 500 with the cid, no detail; the traceback is in the log.
    let r = srv.get("/boom").await;
    assert_eq!(r.status, 500);
    let j = r.json();
    assert_eq!(j["cid"], r.cid());
    assert!(!String::from_utf8_lossy(&r.body).contains("secret detail"));
    let cid = r.cid();
    eventually(
        Duration::from_secs(5),
        "traceback in the server log",
        || {
            let log = srv.log();
            let cid = cid.clone();
            async move { (log.contains("secret detail") && log.contains(&cid)).then_some(()) }
        },
    )
    .await;

    // A Zato-style reportable exception keeps its status and message.
    let r = srv.get("/refuse").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "already exists");

    // Status, extra headers and content type set by the service.
    let r = srv.get("/headers").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-custom").as_deref(), Some("yes"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/csv"));
    assert_eq!(&r.body[..], b"a,b\n1,2\n");

    // Per-verb handlers: handle_GET / handle_POST, others 405.
    assert_eq!(srv.get("/verbs").await.json()["verb"], "GET");
    assert_eq!(
        srv.request("POST", "/verbs", &[], b"").await.json()["verb"],
        "POST"
    );
    let r = srv.request("DELETE", "/verbs", &[], b"").await;
    assert_eq!(r.status, 405);

    // Unknown path 404 and wrong method 405, both JSON with a cid.
    let r = srv.get("/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("/nope"));
    let r = srv.get("/echo").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
    assert_eq!(r.json()["cid"], r.cid());

    // Malformed JSON on a JSON channel.
    let r = srv
        .request(
            "POST",
            "/echo",
            &[("content-type", "application/json")],
            b"{\"a\": ",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("JSON"),
        "{:?}",
        r.body
    );

    // An async service.
    let r = srv.post_json("/async", &json!({"k": 1})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"async": true, "payload": {"k": 1}}));

    // The cid of a response is the cid in the log lines of that request.
    let r = srv.get("/log").await;
    assert_eq!(r.status, 200);
    let cid = r.cid();
    assert_eq!(r.json()["cid"], cid);
    eventually(
        Duration::from_secs(5),
        "service log line with its cid",
        || {
            let log = srv.log();
            let cid = cid.clone();
            async move {
                log.lines()
                    .any(|l| {
                        l.contains("hello from the log service")
                            && l.contains(&cid)
                            && l.contains("test.log")
                    })
                    .then_some(())
            }
        },
    )
    .await;

    // healthz / readyz
    assert_eq!(srv.get("/healthz").await.status, 200);
    let r = srv.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["workers_ready"], 2);

    srv.assert_no_errors(&[
        "secret detail",
        "Traceback",
        "ValueError",
        "raise ValueError",
        "test.boom",
    ]);
}

#[tokio::test]
async fn invoke_and_invoke_async() {
    // Also runs the server on a multi-threaded I/O runtime (the default on small machines is
    // the single-threaded one the other tests use).
    let srv = Env::new()
        .workers(2)
        .with_test_services()
        .set("server", "io_threads", "2")
        .start()
        .await;
    let dir = srv.dir.join("rec");
    std::fs::create_dir_all(&dir).unwrap();
    let r = srv.get(&format!("/caller?dir={}", dir.display())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["inner"], json!({"from": "caller", "ok": true}));
    let async_cid = j["async_cid"].as_str().unwrap().to_owned();
    assert_ne!(async_cid, r.cid());
    let recorded = dir.join("recorded");
    let got = eventually(Duration::from_secs(10), "invoke_async target ran", || {
        let p = recorded.clone();
        async move { std::fs::read_to_string(p).ok().filter(|s| !s.is_empty()) }
    })
    .await;
    assert_eq!(got, async_cid);
}

#[tokio::test]
async fn limits_413_431_and_slowloris() {
    let srv = Env::new()
        .workers(1)
        .with_test_services()
        .set("http", "max_body_bytes", "1000")
        .set("http", "max_header_bytes", "4096")
        .set("http", "header_read_timeout_ms", "500")
        .start()
        .await;

    // 413 with Content-Length over the limit, and with a chunked body that grows past it.
    let r = srv
        .request(
            "POST",
            "/echo",
            &[("content-type", "application/json")],
            &vec![b' '; 1001],
        )
        .await;
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("1000"));
    let ok = srv
        .request(
            "POST",
            "/echo",
            &[("content-type", "application/json")],
            br#"{"a":1}"#,
        )
        .await;
    assert_eq!(ok.status, 200);

    // 431 for oversized headers.
    let big = "x".repeat(5000);
    let r = srv.request("GET", "/pid", &[("x-big", &big)], b"").await;
    assert_eq!(r.status, 431);

    // Slowloris: a client that dribbles a request head is cut off after the header timeout,
    // while a normal client keeps being served.
    let port = srv.port();
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    slow.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..40 {
        // The pacing of a slowloris client is the behaviour under test, not a wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X-a: b\r\n").await.is_err() {
            closed = true;
            break;
        }
        assert_eq!(srv.get("/pid").await.status, 200);
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut b)).await {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "slowloris connection still open after {:?}",
        started.elapsed()
    );

    // An idle keep-alive connection is kept (well below the 75 s default).
    let mut c = Client::connect(port).await.unwrap();
    assert_eq!(
        c.request("GET", "/pid", &[], Bytes::new())
            .await
            .unwrap()
            .status,
        200
    );
    // Idle time is the behaviour under test: the connection must survive it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        c.request("GET", "/pid", &[], Bytes::new())
            .await
            .unwrap()
            .status,
        200
    );
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_after_the_timeout() {
    let srv = Env::new()
        .workers(1)
        .with_test_services()
        .set("http", "keepalive_timeout_ms", "300")
        .start()
        .await;
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", srv.port()))
        .await
        .unwrap();
    c.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t0 = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0))), "idle connection not closed: {r:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn debug_logs_carry_request_and_worker_spans() {
    let srv = Env::new()
        .workers(1)
        .with_test_services()
        .set("server", "log_level", "\"debug\"")
        .start()
        .await;
    let r = srv.get("/log").await;
    let cid = r.cid();
    eventually(Duration::from_secs(5), "request span in the log", || {
        let log = srv.log();
        let cid = cid.clone();
        async move {
            let span = format!("request{{cid={cid} service=test.log trace_id=");
            (log.lines()
                .any(|l| l.contains(&span) && l.contains("answered"))
                && log
                    .lines()
                    .any(|l| l.contains("worker{id=") && l.contains("hello from the log service")))
            .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn worker_limit_is_refused_with_a_clear_message() {
    let mut srv = Env::new().workers(9).with_test_services().spawn();
    let code = srv.wait_exit(Duration::from_secs(20));
    assert_ne!(code, Some(0));
    let log = srv.log();
    assert!(log.contains("at most 8 Python workers"), "{log}");
}

#[tokio::test]
async fn import_error_stops_the_server_with_the_traceback() {
    let mut srv = Env::new()
        .workers(2)
        .service("broken.py", "import definitely_not_a_module_xyz\n")
        .spawn();
    let code = srv.wait_exit(Duration::from_secs(30));
    assert_ne!(code, Some(0));
    let log = srv.log();
    assert!(log.contains("definitely_not_a_module_xyz"), "{log}");
    assert!(log.contains("could not be imported"), "{log}");
}

/// `oxbus server --config server.toml` from the config's directory (a path without a
/// directory part) starts its workers and serves; it once made the workers' working
/// directory "" and failed with a misleading "cannot start Python interpreter".
#[tokio::test]
async fn a_config_path_without_a_directory_part_works() {
    let srv = Env::new()
        .with_test_services()
        .relative_config()
        .start()
        .await;
    let r = srv.post_json("/echo", &json!({"a": 1})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"a": 1, "ok": true}));
}
