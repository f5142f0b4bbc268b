//! Per-service statistics (issue 18): a known mix of calls and errors gives exact counts per
//! service, with each error's family, in `GET /v1/services/{name}/stats`,
//! `GET /v1/services/stats` and `oxbus services --stats`; the last error is the failing
//! response's cid; a slow service's mean and p50 are at least its sleep; the admin API of one
//! server of a cluster answers for every server, each with its own counts, and marks a
//! server that does not answer. `GET /metrics` has the same calls and errors by family, and
//! the slow service's duration histogram.

use oxbus_integration::bus::linked;
use oxbus_integration::prom::{self, scrape};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

const SERVICES: &str = r#"
import time

from oxbus import Service, BadRequest


class Ok(Service):
    name = 'st.ok'

    def handle(self):
        self.response.payload = {'ok': True}


class Value(Service):
    name = 'st.value'

    def handle(self):
        raise ValueError('no')


class CustomerMissing(KeyError):
    """A user class: counted under its nearest built-in class, KeyError."""


class Missing(Service):
    name = 'st.missing'

    def handle(self):
        raise CustomerMissing('c-1')


class Bad(Service):
    name = 'st.bad'

    def handle(self):
        raise BadRequest('bad')


class Typed(Service):
    name = 'st.input'
    input = 'customer_id'

    def handle(self):
        self.response.payload = {'id': self.request.input.customer_id}


class Fanout(Service):
    name = 'st.fanout'

    def handle(self):
        self.response.payload = {'cid': self.invoke_async('st.ok')}


class Slow(Service):
    name = 'st.slow'

    def handle(self):
        time.sleep(0.15)
        self.response.payload = {}
"#;

/// The sleep of `st.slow`, in milliseconds.
const SLOW_MS: f64 = 150.0;

fn env() -> Env {
    Env::new()
        .workers(1)
        .service("st.py", SERVICES)
        .channel("/ok", &["GET"], "st.ok")
        .channel("/value", &["GET"], "st.value")
        .channel("/missing", &["GET"], "st.missing")
        .channel("/bad", &["GET"], "st.bad")
        .channel("/input", &["POST"], "st.input")
        .channel("/slow", &["GET"], "st.slow")
        .channel("/fanout", &["GET"], "st.fanout")
        .jsonrpc_channel("/rpc", &["st.ok"])
}

async fn stats(srv: &Server, path: &str) -> Value {
    let r = srv.admin("GET", path, Some(&srv.admin_token()), b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The 15-minute (calls, errors) of `service` on `server` in a stats document.
fn counts(doc: &Value, server: &str, service: &str) -> (u64, u64) {
    let w = &doc["servers"][server]["services"][service]["windows"]["15m"];
    (
        w["calls"]
            .as_u64()
            .unwrap_or_else(|| panic!("{service} on {server}: {doc:#}")),
        w["errors"].as_u64().unwrap(),
    )
}

async fn calls(
    srv: &Server,
    method: &str,
    path: &str,
    body: &[u8],
    n: usize,
    status: u16,
) -> String {
    let mut cid = String::new();
    for _ in 0..n {
        let r = srv
            .request(method, path, &[("content-type", "application/json")], body)
            .await;
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        cid = r.cid();
    }
    cid
}

#[tokio::test]
async fn a_known_mix_of_calls_and_errors_gives_exact_counts_by_family() {
    let srv = env().start().await;
    let token = srv.admin_token();
    calls(&srv, "GET", "/ok", b"", 5, 200).await;
    calls(&srv, "GET", "/value", b"", 3, 500).await;
    calls(&srv, "GET", "/missing", b"", 1, 500).await;
    calls(&srv, "GET", "/bad", b"", 2, 400).await;
    calls(&srv, "POST", "/input", b"{}", 1, 400).await;
    calls(&srv, "POST", "/input", br#"{"customer_id": 7}"#, 1, 200).await;
    // The admin API's invoke passes the same place: a fourth ValueError...
    let r = srv
        .admin("POST", "/v1/invoke/st.value", Some(&token), b"{}")
        .await;
    assert_eq!(r.status, 500);
    // ...and the last error of st.value is this HTTP call's.
    let last_cid = calls(&srv, "GET", "/value", b"", 1, 500).await;
    // A service no worker has is not counted (its name is the caller's).
    let r = srv
        .admin("POST", "/v1/invoke/no.such", Some(&token), b"{}")
        .await;
    assert_eq!(r.status, 404);

    let me = stats(&srv, "/v1/info").await["server"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = stats(&srv, "/v1/services/st.value/stats").await;
    assert_eq!(one["service"], "st.value");
    assert_eq!(one["server"], me.as_str());
    assert_eq!(counts(&one, &me, "st.value"), (5, 5));
    let last = &one["servers"][&me]["services"]["st.value"]["last_error"];
    assert_eq!(last["cid"], last_cid.as_str(), "{one:#}");
    assert_eq!(
        (last["family"].as_str(), last["status"].as_u64()),
        (Some("ValueError"), Some(500))
    );
    assert!(last["at_ms"].as_u64().unwrap() > 1_700_000_000_000);

    let all = stats(&srv, "/v1/services/stats").await;
    assert_eq!(all["windows"], json!(["1m", "5m", "15m"]));
    assert_eq!(all["servers"][&me]["recording"], true);
    assert_eq!(counts(&all, &me, "st.ok"), (5, 0));
    assert_eq!(counts(&all, &me, "st.value"), (5, 5));
    assert_eq!(counts(&all, &me, "st.missing"), (1, 1));
    assert_eq!(counts(&all, &me, "st.bad"), (2, 2));
    assert_eq!(counts(&all, &me, "st.input"), (2, 1));
    // Each service's errors are of one family: the counts above are the counts by family.
    let services = &all["servers"][&me]["services"];
    for (service, family, status) in [
        ("st.value", "ValueError", 500),
        ("st.missing", "KeyError", 500),
        ("st.bad", "BadRequest", 400),
        ("st.input", "input", 400),
    ] {
        let e = &services[service]["last_error"];
        assert_eq!(
            (e["family"].as_str(), e["status"].as_u64()),
            (Some(family), Some(status)),
            "{service}"
        );
    }
    assert!(services["st.ok"]["last_error"].is_null());
    // A service that ran nothing yet is listed with zero figures; an unknown one is not.
    assert_eq!(counts(&all, &me, "st.slow"), (0, 0));
    assert!(services["st.slow"]["windows"]["15m"]["p50_ms"].is_null());
    assert!(services.get("no.such").is_none());
    let r = srv
        .admin("GET", "/v1/services/no.such/stats", Some(&token), b"")
        .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("no.such"));
    // Successes took some time: the mean is positive; p99 of 5 calls is the slowest one's
    // bin's upper edge, so never below the mean (nor is p50 below zero time).
    let ok = &services["st.ok"]["windows"]["15m"];
    let mean = ok["mean_ms"].as_f64().unwrap();
    assert!(mean > 0.0);
    assert!(ok["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(ok["p99_ms"].as_f64().unwrap() >= mean, "{ok:#}");

    // The CLI: the same document with --json, a table without.
    let out = srv.cli(&["services", "--stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts(&doc, &me, "st.bad"), (2, 2));
    let out = srv.cli(&["services", "--stats", "st.value"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("st.value") && first.contains(&me),
        "{text}"
    );
    assert!(
        first.contains(&format!("ValueError 500 cid {last_cid}")),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        4,
        "a header and three windows: {text}"
    );
    let out = srv.cli(&["services", "--json"]);
    assert!(!out.status.success(), "--json needs --stats");

    // The metrics count the same calls, and the errors by family; the unknown service is
    // in none of them; the page passes promtool.
    let page = scrape(&srv).await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        page.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?}:\n{}", page.text))
    };
    assert_eq!(
        value("oxbus_service_calls_total", &[("service", "st.ok")]),
        5.0
    );
    for (service, family, n) in [
        ("st.value", "ValueError", 5.0),
        ("st.missing", "KeyError", 1.0),
        ("st.bad", "BadRequest", 2.0),
        ("st.input", "input", 1.0),
    ] {
        let labels = [("service", service), ("family", family)];
        assert_eq!(
            value("oxbus_service_errors_total", &labels),
            n,
            "{labels:?}"
        );
    }
    let unknown: Vec<_> = page
        .samples
        .iter()
        .filter(|s| s.name.contains("no.such") || s.labels.values().any(|v| v.contains("no.such")))
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
    prom::check(&page.text);
}

#[tokio::test]
async fn a_slow_service_has_a_mean_and_p50_at_least_its_sleep() {
    let srv = env().start().await;
    calls(&srv, "GET", "/slow", b"", 3, 200).await;
    let doc = stats(&srv, "/v1/services/st.slow/stats").await;
    let me = doc["server"].as_str().unwrap();
    for window in ["1m", "5m", "15m"] {
        let w = &doc["servers"][me]["services"]["st.slow"]["windows"][window];
        if w["calls"] == 0 {
            continue; // the calls ended in the previous minute
        }
        for figure in ["mean_ms", "p50_ms", "p99_ms"] {
            let v = w[figure].as_f64().unwrap();
            assert!(
                v >= SLOW_MS,
                "{window} {figure} = {v} ms < {SLOW_MS} ms: {doc:#}"
            );
        }
    }
    assert_eq!(counts(&doc, me, "st.slow"), (3, 0));
    // The histogram: three observations, each of at least the sleep.
    let page = scrape(&srv).await;
    let slow = [("service", "st.slow")];
    assert_eq!(
        page.get("oxbus_service_duration_seconds_count", &slow),
        Some(3.0),
        "{}",
        page.text
    );
    let sum = page
        .get("oxbus_service_duration_seconds_sum", &slow)
        .unwrap_or_else(|| panic!("no sum:\n{}", page.text));
    assert!(
        sum >= 3.0 * SLOW_MS / 1000.0,
        "{sum} s < 3 × {SLOW_MS} ms:\n{}",
        page.text
    );
}

#[tokio::test]
async fn one_server_answers_for_the_cluster_each_server_with_its_own_counts() {
    let db = PgDatabase::create();
    let url = format!("{:?}", db.url);
    let secret = cluster_secret("stats");
    let a = env().cluster_member(&url, "a", &secret).start().await;
    let b = env().cluster_member(&url, "b", &secret).start().await;
    linked(&a, &["b"]).await;
    linked(&b, &["a"]).await;
    calls(&a, "GET", "/ok", b"", 3, 200).await;
    calls(&b, "GET", "/ok", b"", 2, 200).await;
    let b_cid = calls(&b, "GET", "/bad", b"", 1, 400).await;

    for (srv, me) in [(&a, "a"), (&b, "b")] {
        let doc = stats(srv, "/v1/services/stats").await;
        assert_eq!(doc["server"], me);
        let names: Vec<&String> = doc["servers"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["a", "b"], "{doc:#}");
        assert_eq!(doc["servers"]["a"]["answered"], true);
        assert_eq!(doc["servers"]["b"]["answered"], true);
        assert_eq!(counts(&doc, "a", "st.ok"), (3, 0));
        assert_eq!(counts(&doc, "b", "st.ok"), (2, 0));
        assert_eq!(counts(&doc, "a", "st.bad"), (0, 0));
        assert_eq!(counts(&doc, "b", "st.bad"), (1, 1));
        assert_eq!(
            doc["servers"]["b"]["services"]["st.bad"]["last_error"]["cid"],
            b_cid.as_str()
        );
    }
    let one = stats(&a, "/v1/services/st.ok/stats").await;
    assert_eq!(counts(&one, "b", "st.ok"), (2, 0));
    assert_eq!(
        one["servers"]["b"]["services"].as_object().unwrap().len(),
        1
    );
    // The CLI of A shows both servers.
    let out = a.cli(&["services", "--stats", "st.ok"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1 + 3 + 3, "{text}");

    // B dies (its entry stays in the store until it is found stale): listed, not answering.
    let mut b = b;
    b.signal(nix::sys::signal::Signal::SIGKILL);
    b.wait_exit(Duration::from_secs(10));
    // A call racing B's death fails when the link ends ("the link went down"), not after
    // 2 s; once the link is gone, B is listed for that reason.
    let doc = eventually(
        Duration::from_secs(20),
        "B marked as not answering: no bus link",
        || {
            let a = &a;
            async move {
                let doc = stats(a, "/v1/services/stats").await;
                let b = &doc["servers"]["b"];
                (b["answered"] == false
                    && b["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no bus link")))
                .then_some(doc)
            }
        },
    )
    .await;
    assert_eq!(counts(&doc, "a", "st.ok"), (3, 0));
    // A name no server that answered has, while B does not answer: not known to be absent.
    let r = a
        .admin(
            "GET",
            "/v1/services/no.such/stats",
            Some(&a.admin_token()),
            b"",
        )
        .await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "{text}");
    assert!(text.contains("b did not answer"), "{text}");
}

#[tokio::test]
async fn every_way_of_calling_a_service_is_counted() {
    let srv = env().start().await;
    let token = srv.admin_token();
    // A REST channel, a JSON-RPC channel, the admin API's invoke, invoke_async from another
    // service and a scheduled job's run: one call of st.ok each.
    calls(&srv, "GET", "/ok", b"", 1, 200).await;
    let r = srv
        .post_json(
            "/rpc",
            &json!({"jsonrpc": "2.0", "method": "st.ok", "id": 1}),
        )
        .await;
    assert_eq!(r.json()["result"], json!({"ok": true}), "{}", r.json());
    let r = srv
        .admin("POST", "/v1/invoke/st.ok", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200);
    calls(&srv, "GET", "/fanout", b"", 1, 200).await;
    let job = json!({"type": "one_time", "service": "st.ok", "start_date": "2099-01-01T00:00:00Z"});
    let r = srv
        .admin(
            "PUT",
            "/v1/jobs/manual",
            Some(&token),
            job.to_string().as_bytes(),
        )
        .await;
    assert!(
        r.status == 200 || r.status == 201,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = srv
        .admin("POST", "/v1/jobs/manual/execute", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    eventually(Duration::from_secs(10), "five calls of st.ok", || {
        let srv = &srv;
        async move {
            let doc = stats(srv, "/v1/services/st.ok/stats").await;
            let me = doc["server"].as_str().unwrap().to_owned();
            (counts(&doc, &me, "st.ok") == (5, 0)).then_some(())
        }
    })
    .await;
    let doc = stats(&srv, "/v1/services/stats").await;
    let me = doc["server"].as_str().unwrap();
    assert_eq!(counts(&doc, me, "st.fanout"), (1, 0));
}

#[tokio::test]
async fn a_jsonrpc_batch_counts_each_call_once() {
    let srv = env().start().await;
    let batch = json!([
        {"jsonrpc": "2.0", "method": "st.ok", "id": 1},
        {"jsonrpc": "2.0", "method": "st.ok", "id": 2},
        {"jsonrpc": "2.0", "method": "st.ok"},
        {"jsonrpc": "2.0", "method": "no.such", "id": 3},
    ]);
    let r = srv.post_json("/rpc", &batch).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().as_array().map(Vec::len), Some(3), "{}", r.json());
    let doc = stats(&srv, "/v1/services/st.ok/stats").await;
    let me = doc["server"].as_str().unwrap();
    // Three calls of st.ok (the notification included), one each; the unknown method is
    // not a service's call.
    assert_eq!(counts(&doc, me, "st.ok"), (3, 0), "{doc:#}");
    let all = stats(&srv, "/v1/services/stats").await;
    assert!(all["servers"][me]["services"].get("no.such").is_none());
}

/// A service that marks, through a file, that it is running, then waits until the file is
/// gone (at most 30 s).
fn hanging_service(marker: &std::path::Path) -> String {
    format!(
        r#"
import os
import time

from oxbus import Service

MARKER = {marker:?}


class Hang(Service):
    name = 'st.hang'

    def handle(self):
        open(MARKER, 'w').close()
        end = time.monotonic() + 30
        while os.path.exists(MARKER) and time.monotonic() < end:
            time.sleep(0.02)
        self.response.payload = {{}}
"#,
        marker = marker.to_str().unwrap()
    )
}

#[tokio::test]
async fn a_call_whose_client_went_away_is_counted_as_cancelled() {
    use tokio::io::AsyncWriteExt;
    let marker = std::env::temp_dir().join(format!(
        "oxbus-stats-hang-{}-{}",
        std::process::id(),
        next_id()
    ));
    let srv = env()
        .service("hang.py", &hanging_service(&marker))
        .channel("/hang", &["GET"], "st.hang")
        .start()
        .await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", srv.port()))
        .await
        .unwrap();
    client
        .write_all(b"GET /hang HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the call reached the service",
        || {
            let marker = &marker;
            async move { marker.exists().then_some(()) }
        },
    )
    .await;
    // The client goes away mid-call: hyper drops the request's future.
    drop(client);
    let doc = eventually(
        Duration::from_secs(10),
        "the call counted as cancelled",
        || {
            let srv = &srv;
            async move {
                let doc = stats(srv, "/v1/services/st.hang/stats").await;
                let me = doc["server"].as_str().unwrap().to_owned();
                (doc["servers"][&me]["services"]["st.hang"]["last_error"]["family"] == "cancelled")
                    .then_some(doc)
            }
        },
    )
    .await;
    let _ = std::fs::remove_file(&marker);
    let me = doc["server"].as_str().unwrap();
    assert_eq!(counts(&doc, me, "st.hang"), (1, 1), "{doc:#}");
    let last = &doc["servers"][me]["services"]["st.hang"]["last_error"];
    assert_eq!(last["status"], 499, "{doc:#}");
    assert!(!last["cid"].as_str().unwrap().is_empty());
    let text =
        String::from_utf8_lossy(&srv.admin("GET", "/metrics", None, b"").await.body).into_owned();
    assert!(
        text.lines()
            .any(|l| l == r#"oxbus_service_errors_total{service="st.hang",family="cancelled"} 1"#),
        "{text}"
    );
}
