//! `GET /metrics` on the admin listener (issue 18): what it serves parses with Prometheus's
//! own `promtool check metrics` (no error, no lint warning), and its figures move as traffic
//! is driven: a 404, a 429 of a rate-limited channel, a 413, a 2xx by channel and method, a
//! request in flight and back, a worker killed (a `crash` restart, its slot ready again),
//! a JSON-RPC channel's refusals per call; `admin.metrics_token` is asked for when set (its
//! scheme in any case); OpenMetrics only for a client that prefers it (q-values);
//! `metrics.enabled = false` answers 404.

use nix::sys::signal::Signal;
use oxbus_integration::prom::{self, Flavour, Page, scrape, scrape_as};
use oxbus_integration::*;
use serde_json::json;
use std::time::Duration;

const TOKEN: &str = "metrics-token-0123456789";

/// How many worker slots are ready or busy (`slot`: of that slot, 0 or 1; `None`: of
/// them all).
fn live(page: &Page, slot: Option<&str>) -> f64 {
    page.matching("oxbus_worker_state", &[])
        .filter(|s| slot.is_none_or(|slot| s.label("slot") == Some(slot)))
        .filter(|s| matches!(s.label("state"), Some("ready" | "busy")))
        .map(|s| s.value)
        .sum()
}

fn env() -> Env {
    Env::new()
        .workers(2)
        .with_test_services()
        .set("http", "max_body_bytes", "1000")
        .channel_toml(
            "name = \"limited\"\nurl_path = \"/limited\"\nmethods = [\"GET\"]\nservice = \"test.pid\"\nrate_limit = { requests = 1, per_s = 3600 }",
        )
        .channel_toml(
            "name = \"named-echo\"\nurl_path = \"/named\"\nmethods = [\"PUT\"]\nservice = \"test.echo\"",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_with_traffic() {
    let srv = env().start().await;
    // No token needed when none is set.
    let before = scrape(&srv).await;
    prom::check(&before.text);
    // The OpenMetrics flavour has the same series; its counter families are named without
    // `_total` (the samples have it), as OpenMetrics wants.
    let om = scrape_as(&srv, None, Flavour::OpenMetrics).await;
    assert_eq!(om.series(), before.series());
    assert!(
        om.text.contains("# TYPE oxbus_http_requests counter\n"),
        "{}",
        om.text
    );
    assert!(
        before
            .text
            .contains("# TYPE oxbus_http_requests_total counter\n"),
        "{}",
        before.text
    );
    for line in [
        "oxbus_http_requests_in_flight 0",
        "oxbus_http_refused_total{reason=\"rate_limited\"} 0",
        "oxbus_worker_restarts_total{reason=\"crash\"} 0",
        "oxbus_worker_queue_depth 0",
    ] {
        assert!(
            before.text.contains(&format!("{line}\n")),
            "{line}:\n{}",
            before.text
        );
    }
    // Two workers, slots 0 and 1, each ready (or busy), with their memory.
    for slot in ["0", "1"] {
        assert_eq!(
            live(&before, Some(slot)),
            1.0,
            "slot {slot}:\n{}",
            before.text
        );
        let rss = before
            .get("oxbus_worker_resident_memory_bytes", &[("slot", slot)])
            .unwrap_or_else(|| panic!("no RSS of slot {slot}:\n{}", before.text));
        assert!(rss > 1_000_000.0, "{rss}");
    }

    // A 404: no channel, so the fixed channel label.
    assert_eq!(srv.get("/no/such/path").await.status, 404);
    // A 429 from the rate-limited channel (one request per hour).
    assert_eq!(srv.get("/limited").await.status, 200);
    assert_eq!(srv.get("/limited").await.status, 429);
    // A head the head gate refuses (both framings): counted under its own method.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", srv.port()))
            .await
            .unwrap();
        s.write_all(
            b"DELETE /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 400 "), "{answer:?}");
    }
    // A 413: the body is over http.max_body_bytes.
    let big = vec![b'x'; 2000];
    assert_eq!(srv.request("POST", "/echo", &[], &big).await.status, 413);
    // 2xx by channel (the URL pattern of an unnamed one, the name of a named one) and method.
    assert_eq!(srv.post_json("/echo", &json!({"a": 1})).await.status, 200);
    assert_eq!(srv.post_json("/echo", &json!({"a": 2})).await.status, 200);
    let put = srv
        .request(
            "PUT",
            "/named",
            &[("content-type", "application/json")],
            b"{}",
        )
        .await;
    assert_eq!(put.status, 200);
    let after = scrape(&srv).await;
    prom::check(&after.text);
    let moved = |name: &str, labels: &[(&str, &str)], by: f64| {
        assert_eq!(
            after.get_or_zero(name, labels) - before.get_or_zero(name, labels),
            by,
            "{name}{labels:?}:\n{}",
            after.text
        );
    };
    moved(
        "oxbus_http_requests_total",
        &[("channel", "(none)"), ("method", "GET"), ("status", "4xx")],
        1.0,
    );
    moved("oxbus_http_refused_total", &[("reason", "not_found")], 1.0);
    moved("oxbus_http_refused_total", &[("reason", "bad_head")], 1.0);
    moved(
        "oxbus_http_requests_total",
        &[
            ("channel", "(none)"),
            ("method", "DELETE"),
            ("status", "4xx"),
        ],
        1.0,
    );
    moved(
        "oxbus_http_requests_total",
        &[("channel", "limited"), ("method", "GET"), ("status", "2xx")],
        1.0,
    );
    moved(
        "oxbus_http_requests_total",
        &[("channel", "limited"), ("method", "GET"), ("status", "4xx")],
        1.0,
    );
    moved(
        "oxbus_http_refused_total",
        &[("reason", "rate_limited")],
        1.0,
    );
    moved(
        "oxbus_http_refused_total",
        &[("reason", "body_too_large")],
        1.0,
    );
    moved(
        "oxbus_http_requests_total",
        &[("channel", "/echo"), ("method", "POST"), ("status", "2xx")],
        2.0,
    );
    moved(
        "oxbus_http_requests_total",
        &[("channel", "/echo"), ("method", "POST"), ("status", "4xx")],
        1.0,
    );
    moved(
        "oxbus_http_requests_total",
        &[
            ("channel", "named-echo"),
            ("method", "PUT"),
            ("status", "2xx"),
        ],
        1.0,
    );
    moved(
        "oxbus_http_request_duration_seconds_count",
        &[("channel", "/echo")],
        3.0,
    );
    moved(
        "oxbus_http_refused_total",
        &[("reason", "unauthorized")],
        0.0,
    );
    // Every request went through the workers' socket both ways: frames and bytes moved.
    for name in ["oxbus_ipc_frames_total", "oxbus_ipc_bytes_total"] {
        for direction in ["to_worker", "from_worker"] {
            let labels = [("direction", direction)];
            assert!(
                after.get_or_zero(name, &labels) >= before.get_or_zero(name, &labels) + 4.0,
                "{name}{labels:?}:\n{}",
                after.text
            );
        }
    }
    // No path, cid or client value is ever a label.
    assert!(!after.text.contains("/no/such/path"), "{}", after.text);
    assert!(!after.text.contains(&put.cid()), "{}", after.text);

    // A request in flight, and back to 0 once answered.
    let gate = srv.dir.join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let dir = gate.display().to_string();
    let pending = {
        let port = srv.port();
        let path = format!("/gate?dir={dir}&n=0");
        tokio::spawn(async move {
            let mut c = Client::connect(port).await.unwrap();
            c.request("GET", &path, &[], bytes::Bytes::new())
                .await
                .unwrap()
                .status
        })
    };
    eventually(
        Duration::from_secs(20),
        "the gated request to start",
        || {
            let started = gate.join("started-0").exists();
            async move { started.then_some(()) }
        },
    )
    .await;
    let during = scrape(&srv).await;
    assert_eq!(
        during.get("oxbus_http_requests_in_flight", &[]),
        Some(1.0),
        "{}",
        during.text
    );
    assert_eq!(
        during.sum("oxbus_worker_state", &[("state", "busy")]),
        1.0,
        "{}",
        during.text
    );
    assert_eq!(
        during.sum("oxbus_worker_inflight", &[]),
        1.0,
        "{}",
        during.text
    );
    std::fs::write(gate.join("open"), b"").unwrap();
    assert_eq!(pending.await.unwrap(), 200);
    let done = scrape(&srv).await;
    assert_eq!(
        done.get("oxbus_http_requests_in_flight", &[]),
        Some(0.0),
        "{}",
        done.text
    );
    assert_eq!(done.sum("oxbus_worker_inflight", &[]), 0.0, "{}", done.text);

    // A worker killed: a `crash` restart, and its slot (the same one, not a new label)
    // ready again.
    let pids = srv.worker_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    let recovered = prom::scrape_until(&srv, "a crash restart and both slots ready again", |p| {
        p.get_or_zero("oxbus_worker_restarts_total", &[("reason", "crash")]) == 1.0
            && live(p, None) == 2.0
    })
    .await;
    let slots: std::collections::BTreeSet<Option<&str>> = recovered
        .matching("oxbus_worker_state", &[])
        .map(|s| s.label("slot"))
        .collect();
    assert_eq!(
        slots.into_iter().collect::<Vec<_>>(),
        [Some("0"), Some("1")],
        "{}",
        recovered.text
    );
    for reason in ["recycle_requests", "recycle_rss", "deadline", "heartbeat"] {
        assert_eq!(
            recovered.get("oxbus_worker_restarts_total", &[("reason", reason)]),
            Some(0.0),
            "{}",
            recovered.text
        );
    }
    prom::check(&recovered.text);
    srv.assert_no_errors(&["worker died"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_token_is_required_when_set() {
    let srv = Env::new()
        .with_test_services()
        .set("admin", "metrics_token", &format!("{TOKEN:?}"))
        .start()
        .await;
    let none = srv.admin("GET", "/metrics", None, b"").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate").as_deref(), Some("Bearer"));
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("admin.metrics_token")
    );
    assert_eq!(
        srv.admin("GET", "/metrics", Some("metrics-token-wrong-value"), b"")
            .await
            .status,
        401
    );
    // The admin token is not the metrics token...
    let admin = srv.admin_token();
    assert_eq!(
        srv.admin("GET", "/metrics", Some(&admin), b"").await.status,
        401
    );
    // ...nor the metrics token an admin one.
    assert_eq!(
        srv.admin("GET", "/v1/info", Some(TOKEN), b"").await.status,
        401
    );
    let page = scrape_as(&srv, Some(TOKEN), Flavour::Prometheus).await;
    prom::check(&page.text);
    // The token is never in the log.
    assert!(!srv.log().contains(TOKEN));
    // The scheme's name is case-insensitive.
    let mut c = Client::connect(srv.admin_port()).await.unwrap();
    let auth = format!("bearer {TOKEN}");
    let r = c
        .request(
            "GET",
            "/metrics",
            &[("authorization", &auth)],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("vary").as_deref(), Some("Accept"));
    // A 405 says what its Allow header lists.
    let r = srv.admin("POST", "/metrics", Some(TOKEN), b"").await;
    assert_eq!(r.status, 405);
    let allow = r.header("allow").expect("Allow");
    assert_eq!(allow, "GET, HEAD");
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(msg.ends_with(&format!("allowed: {allow}")), "{msg}");
    assert_eq!(r.json()["allowed"], json!(["GET", "HEAD"]));
}

/// An OpenMetrics range the client refuses (q=0), or likes less than the text format, gets
/// the text format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_is_served_only_when_preferred() {
    let srv = Env::new().with_test_services().start().await;
    let mut c = Client::connect(srv.admin_port()).await.unwrap();
    for (accept, content_type) in [
        (
            "application/openmetrics-text;q=0",
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (
            "application/openmetrics-text;q=0.3, text/plain;q=0.5",
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (
            "text/plain;q=0.5, application/openmetrics-text;q=0.6",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    ] {
        let r = c
            .request(
                "GET",
                "/metrics",
                &[("accept", accept)],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some(content_type),
            "{accept}"
        );
        assert_eq!(r.header("vary").as_deref(), Some("Accept"), "{accept}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_disabled_answers_404_and_serving_goes_on() {
    let srv = Env::new()
        .with_test_services()
        .set("metrics", "enabled", "false")
        .start()
        .await;
    assert_eq!(srv.post_json("/echo", &json!({"a": 1})).await.status, 200);
    let r = srv.admin("GET", "/metrics", None, b"").await;
    assert_eq!(r.status, 404);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(msg.contains("metrics.enabled = false"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_recycled_after_max_requests_counts_as_recycle_requests() {
    let srv = Env::new()
        .with_test_services()
        .set("workers", "max_requests", "3")
        .start()
        .await;
    for i in 0..3 {
        assert_eq!(srv.post_json("/echo", &json!({ "i": i })).await.status, 200);
    }
    let page = prom::scrape_until(
        &srv,
        "a recycle_requests restart and the worker ready again",
        |p| {
            p.get_or_zero(
                "oxbus_worker_restarts_total",
                &[("reason", "recycle_requests")],
            ) >= 1.0
                && p.sum("oxbus_worker_state", &[("state", "ready")]) == 1.0
        },
    )
    .await;
    assert_eq!(
        page.get("oxbus_worker_restarts_total", &[("reason", "crash")]),
        Some(0.0),
        "{}",
        page.text
    );
}

/// A JSON-RPC answer is HTTP 200 however its calls ended: the edge's refusals are counted
/// per call (a batch's invalid entries each, a call past its deadline by `deadline`), the
/// HTTP request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_refusals_count_per_call() {
    let srv = Env::new()
        .workers(2)
        .with_test_services()
        .jsonrpc_channel("/rpc", &[])
        .set("http", "request_timeout_ms", "1000")
        .start()
        .await;
    let rpc = |body: &'static str| {
        let srv = &srv;
        async move {
            srv.request(
                "POST",
                "/rpc",
                &[("content-type", "application/json")],
                body.as_bytes(),
            )
            .await
        }
    };
    let before = scrape(&srv).await;
    // Not JSON: one -32700, one bad body.
    let r = rpc(r#"{"jsonrpc": "2.0", "method""#).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (200, json!(-32700))
    );
    // A batch of two invalid Request objects: two bad bodies, one HTTP request.
    let r = rpc(r#"[1, {"jsonrpc": "2.0", "method": 1, "id": 2}]"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().map(Vec::len), Some(2), "{:?}", r.json());
    let mid = scrape(&srv).await;
    let moved = |from: &Page, to: &Page, name: &str, labels: &[(&str, &str)], by: f64| {
        assert_eq!(
            to.get_or_zero(name, labels) - from.get_or_zero(name, labels),
            by,
            "{name} {labels:?}:\n{}",
            to.text
        );
    };
    moved(
        &before,
        &mid,
        "oxbus_http_refused_total",
        &[("reason", "bad_body")],
        3.0,
    );
    moved(
        &before,
        &mid,
        "oxbus_http_requests_total",
        &[("channel", "/rpc"), ("method", "POST"), ("status", "2xx")],
        2.0,
    );
    // A call no worker answers before the request's deadline: -32000 inside a 200, and a
    // `deadline` refusal.
    let r = rpc(r#"{"jsonrpc": "2.0", "method": "test.spin", "id": 3}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["error"]["code"], json!(-32000), "{:?}", r.json());
    let after = scrape(&srv).await;
    moved(
        &mid,
        &after,
        "oxbus_http_refused_total",
        &[("reason", "deadline")],
        1.0,
    );
    moved(
        &mid,
        &after,
        "oxbus_http_refused_total",
        &[("reason", "bad_body")],
        0.0,
    );
    moved(
        &mid,
        &after,
        "oxbus_http_requests_total",
        &[("channel", "/rpc"), ("method", "POST"), ("status", "2xx")],
        1.0,
    );
}
