//! The outgoing REST client (issue 19) against upstream servers these tests start on
//! 127.0.0.1: what a call sends, auth, OAuth2 tokens, timeouts, retries, limits, the pool,
//! TLS, live edits. Calls go through `Outgoing` as the worker's `out.rest` does, with
//! SPEC.md-format metas.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use oxbus_supervisor::lifecycle::ops::{OpReply, ServerOps};
use oxbus_supervisor::model::outgoing::RestConn;
use oxbus_supervisor::outgoing::{ConnType, Outgoing};
use oxbus_supervisor::secrets::Key;

/// What an upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// What an upstream answers: status, headers, body.
type Answer = (u16, Vec<(&'static str, String)>, Bytes);
type Handler =
    Arc<dyn Fn(Seen, usize) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Seen, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    Arc::new(move |s, n| Box::pin(f(s, n)))
}

fn ok(body: &str) -> Answer {
    (200, vec![], Bytes::from(body.to_owned()))
}

/// An upstream HTTP/1.1 server: every request recorded, answered by `h` (with the
/// request's index among all it received).
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
}

impl Upstream {
    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn upstream(h: Handler) -> Upstream {
    upstream_tls(h, None).await
}

async fn upstream_tls(h: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let conns: Arc<AtomicUsize> = Arc::default();
    let (seen2, conns2) = (seen.clone(), conns.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            conns2.fetch_add(1, Ordering::SeqCst);
            let (h, seen) = (h.clone(), seen2.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (h, seen) = (h.clone(), seen.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let s = Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        };
                        let n = {
                            let mut all = seen.lock().unwrap();
                            all.push(s.clone());
                            all.len() - 1
                        };
                        let (status, headers, body) = h(s, n).await;
                        let mut resp = Response::new(Full::new(body));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        for (k, v) in headers {
                            resp.headers_mut().append(k, v.parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    Some(cfg) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await
                        else {
                            return;
                        };
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    Upstream { addr, seen, conns }
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "oxbus-rest-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn key() -> Arc<Key> {
    let d = temp_dir("key");
    let k = Key::create(&d.join("key")).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    Arc::new(k)
}

fn conn(v: Value) -> RestConn {
    serde_json::from_value(v).unwrap()
}

/// An `Outgoing` holding `defs`.
fn outgoing(key: &Arc<Key>, defs: &[RestConn]) -> Outgoing {
    let o = Outgoing::new(
        key.clone(),
        Arc::new(oxbus_supervisor::metrics::Metrics::new(false)),
    );
    o.apply_rest(defs);
    o
}

async fn call(o: &Outgoing, meta: Value, body: &[u8]) -> OpReply {
    let mut meta = meta;
    meta["op"] = json!("out.rest");
    o.call(
        1,
        "out.rest",
        Bytes::from(meta.to_string()),
        Bytes::copy_from_slice(body),
    )
    .await
}

fn error_of(r: &OpReply) -> (String, String) {
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    (
        r.meta.error.clone().unwrap_or_default(),
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

fn assert_answer(r: &OpReply, status: u16, body: &str) {
    assert_eq!(r.meta.error, None, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.meta.status, status);
    assert_eq!(String::from_utf8_lossy(&r.body), body);
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_call_carries_its_path_query_headers_cid_and_trace() {
    let up = upstream(handler(|_, _| async {
        (
            201,
            vec![("x-up", "1".into()), ("x-up", "2".into())],
            Bytes::from("made"),
        )
    }))
    .await;
    let k = key();
    let o = outgoing(
        &k,
        &[conn(json!({
            "name": "crm", "address": up.url("http"), "url_path": "/items/{id}/x",
            "headers": {"X-Default": "d", "X-Call": "default"}
        }))],
    );
    // Raw JSON: the params' order is the caller's (json! would sort them).
    let meta = format!(
        r#"{{"op": "out.rest", "conn": "crm", "method": "GET", "cid": "c0ffee",
            "params": {{"q": "a&b", "id": "a b/c", "tag": ["1", "2"], "n": 5}},
            "headers": {{"X-Call": "yes"}}, "traceparent": "{TP}", "tracestate": "rojo=1"}}"#
    );
    let r = o.call(1, "out.rest", Bytes::from(meta), Bytes::new()).await;
    assert_answer(&r, 201, "made");
    assert!(
        r.meta.headers.contains(&("x-up".into(), "1".into())),
        "{:?}",
        r.meta.headers
    );
    assert!(
        r.meta.headers.contains(&("x-up".into(), "2".into())),
        "{:?}",
        r.meta.headers
    );
    let s = &up.seen()[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.uri, "/items/a%20b%2Fc/x?q=a%26b&tag=1&tag=2&n=5");
    assert_eq!(s.header("x-call"), Some("yes"));
    assert_eq!(s.header("x-default"), Some("d"));
    assert_eq!(s.header("x-oxbus-cid"), Some("c0ffee"));
    assert_eq!(s.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(s.header("tracestate"), Some("rojo=1"));
    // The caller's traceparent as is: Oxbus records no span of its own.
    assert_eq!(s.header("traceparent"), Some(TP));

    // No traceparent from the caller: a new trace, and its tracestate is not sent on.
    let r = call(
        &o,
        json!({"conn": "crm", "method": "GET", "params": {"id": "1"}, "tracestate": "rojo=1"}),
        b"",
    )
    .await;
    assert_answer(&r, 201, "made");
    let tp = up.seen()[1].header("traceparent").unwrap().to_owned();
    assert_eq!(tp.len(), 55, "{tp}");
    assert_ne!(&tp[3..35], &TP[3..35]);
    assert_eq!(up.seen()[1].header("tracestate"), None);

    // Malformed calls.
    for (meta, needle) in [
        (json!({"conn": "crm", "method": "GET"}), "no value for {id}"),
        (
            json!({"conn": "crm", "method": "GET", "params": {"id": ["1", "2"]}}),
            "one value",
        ),
        (
            json!({"conn": "crm", "method": "BREW", "params": {"id": "1"}}),
            "BREW",
        ),
        (
            json!({"conn": "crm", "method": "GET", "params": {"id": "1"}, "headers": {"Host": "evil"}}),
            "set by the server",
        ),
        (
            json!({"conn": "crm", "method": "GET", "params": {"id": "1"}, "headers": {"Content-Length": "3"}}),
            "set by the server",
        ),
    ] {
        let r = call(&o, meta.clone(), b"").await;
        let (code, msg) = error_of(&r);
        assert_eq!(
            (code.as_str(), r.meta.status),
            ("invalid", 400),
            "{meta}: {msg}"
        );
        assert!(msg.contains(needle), "{meta}: {msg}");
        assert!(
            msg.starts_with(&format!("REST connection \"crm\" ({})", up.url("http"))),
            "{msg}"
        );
    }
    assert_eq!(up.seen().len(), 2, "nothing malformed was sent");

    // Error statuses of the upstream are answers.
    let up404 = upstream(handler(|_, _| async { (404, vec![], Bytes::from("nope")) })).await;
    o.apply_rest(&[conn(json!({"name": "crm", "address": up404.url("http")}))]);
    let r = call(&o, json!({"conn": "crm", "method": "DELETE"}), b"").await;
    assert_answer(&r, 404, "nope");

    let stats = o.stats(ConnType::Rest);
    assert_eq!(
        (stats[0].calls, stats[0].errors, stats[0].latency_count),
        (1, 0, 1)
    );
    assert_eq!(stats[0].latency_buckets.len(), 16);
    assert_eq!((stats[0].in_use, stats[0].idle), (0, 1));
    let p = o.ping(ConnType::Rest, "crm").await.unwrap();
    assert!(p.ok && p.detail.starts_with("HTTP 404 in "), "{p:?}");
    assert!(o.ping(ConnType::Rest, "gone").await.is_err());
}

#[tokio::test]
async fn bodies_follow_body_kind_and_data_format() {
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let o = outgoing(
        &k,
        &[
            conn(json!({"name": "j", "address": up.url("http")})),
            conn(json!({"name": "f", "address": up.url("http"), "data_format": "form"})),
            conn(json!({"name": "r", "address": up.url("http"), "data_format": "raw"})),
        ],
    );
    let cases: Vec<(Value, &[u8], &str, Option<&str>)> = vec![
        (
            json!({"conn": "j", "method": "POST", "body_kind": "json"}),
            br#"{"a": [1, 2]}"#,
            r#"{"a": [1, 2]}"#,
            Some("application/json"),
        ),
        (
            json!({"conn": "f", "method": "POST", "body_kind": "json"}),
            br#"{"z": "x y&", "n": 1, "b": true, "l": ["p", 2]}"#,
            "z=x+y%26&n=1&b=true&l=p&l=2",
            Some("application/x-www-form-urlencoded"),
        ),
        (
            json!({"conn": "r", "method": "PUT", "body_kind": "json"}),
            br#""hello""#,
            "hello",
            None,
        ),
        (
            json!({"conn": "r", "method": "PUT", "body_kind": "json"}),
            br#"[1,2]"#,
            "[1,2]",
            None,
        ),
        (
            json!({"conn": "j", "method": "PATCH", "content_type": "text/plain"}),
            b"raw bytes",
            "raw bytes",
            Some("text/plain"),
        ),
        (
            json!({"conn": "f", "method": "POST"}),
            b"a=1",
            "a=1",
            Some("application/x-www-form-urlencoded"),
        ),
        (
            json!({"conn": "j", "method": "POST", "body_kind": "json"}),
            b"",
            "",
            None,
        ),
    ];
    for (i, (meta, body, sent, ct)) in cases.iter().enumerate() {
        let r = call(&o, meta.clone(), body).await;
        assert_answer(&r, 200, "");
        let s = &up.seen()[i];
        assert_eq!(s.method, meta["method"].as_str().unwrap());
        assert_eq!(String::from_utf8_lossy(&s.body), *sent, "{meta}");
        assert_eq!(s.header("content-type"), *ct, "{meta}");
    }
    let r = call(
        &o,
        json!({"conn": "f", "method": "POST", "body_kind": "json"}),
        br#"{"a": {"b": 1}}"#,
    )
    .await;
    assert_eq!(error_of(&r).0, "invalid");
    let r = call(
        &o,
        json!({"conn": "f", "method": "POST", "body_kind": "json"}),
        b"[1]",
    )
    .await;
    assert_eq!(error_of(&r).0, "invalid");
}

#[tokio::test]
async fn basic_apikey_and_bearer_credentials_are_sent() {
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let seal = |name: &str, plain: &str| k.seal(&RestConn::seal_name(name), plain);
    let o = outgoing(
        &k,
        &[
            conn(json!({"name": "b", "address": up.url("http"),
                "auth": {"type": "basic", "username": "ann", "sealed": seal("b", "s3cret")}})),
            conn(json!({"name": "k", "address": up.url("http"),
                "auth": {"type": "apikey", "header": "X-Key", "sealed": seal("k", "kkk")}})),
            conn(json!({"name": "t", "address": up.url("http"),
                "auth": {"type": "bearer", "sealed": seal("t", "tok")}})),
            // Sealed for another connection's name: does not open.
            conn(json!({"name": "bad", "address": up.url("http"),
                "auth": {"type": "bearer", "sealed": seal("t", "tok")}})),
        ],
    );
    for name in ["b", "k", "t"] {
        let r = call(
            &o,
            json!({"conn": name, "method": "GET", "headers": {"Authorization": "mine"}}),
            b"",
        )
        .await;
        assert_answer(&r, 200, "");
    }
    let seen = up.seen();
    assert_eq!(
        seen[0].header("authorization"),
        Some("Basic YW5uOnMzY3JldA==")
    );
    assert_eq!(seen[1].header("x-key"), Some("kkk"));
    assert_eq!(seen[1].header("authorization"), Some("mine"));
    assert_eq!(seen[2].header("authorization"), Some("Bearer tok"));
    let r = call(&o, json!({"conn": "bad", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "auth", "{msg}");
    assert!(
        msg.starts_with("REST connection \"bad\" (http://127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("does not open"), "{msg}");
    assert_eq!(up.seen().len(), 3);
    assert!(!o.ping(ConnType::Rest, "bad").await.unwrap().ok);
}

/// A token endpoint handing out `t1`, `t2`… with `expires_in`.
async fn token_server(expires_in: u64) -> Upstream {
    upstream(handler(move |s, n| async move {
        assert_eq!(s.method, "POST");
        assert_eq!(s.uri, "/oauth/token");
        assert_eq!(s.header("content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(
            String::from_utf8_lossy(&s.body),
            "grant_type=client_credentials&client_id=me&client_secret=c+s&scope=read+write"
        );
        let body = json!({"access_token": format!("t{}", n + 1), "token_type": "Bearer", "expires_in": expires_in});
        (200, vec![("content-type", "application/json".into())], Bytes::from(body.to_string()))
    }))
    .await
}

fn oauth_conn(k: &Key, address: &str, token_url: &str, refresh_before_s: u64) -> RestConn {
    conn(json!({
        "name": "o", "address": address,
        "auth": {"type": "oauth2", "token_url": token_url, "client_id": "me", "scope": "read write",
                 "refresh_before_s": refresh_before_s, "sealed": k.seal(&RestConn::seal_name("o"), "c s")}
    }))
}

#[tokio::test]
async fn an_oauth2_token_is_fetched_once_for_many_calls() {
    let tokens = token_server(3600).await;
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let o = Arc::new(outgoing(
        &k,
        &[oauth_conn(
            &k,
            &up.url("http"),
            &format!("{}/oauth/token", tokens.url("http")),
            30,
        )],
    ));
    let mut calls = Vec::new();
    for _ in 0..8 {
        let o = o.clone();
        calls.push(tokio::spawn(async move {
            call(&o, json!({"conn": "o", "method": "GET"}), b"").await
        }));
    }
    for c in calls {
        assert_answer(&c.await.unwrap(), 200, "");
    }
    assert_answer(
        &call(&o, json!({"conn": "o", "method": "GET"}), b"").await,
        200,
        "",
    );
    assert_eq!(tokens.seen().len(), 1, "one fetch, shared");
    assert!(
        up.seen()
            .iter()
            .all(|s| s.header("authorization") == Some("Bearer t1"))
    );
    assert_eq!(up.seen().len(), 9);
}

#[tokio::test]
async fn an_oauth2_token_is_refreshed_before_it_expires() {
    // Kept max(expires_in - refresh_before_s, expires_in / 2) = 3 s (the first two calls
    // are well within it).
    let tokens = token_server(6).await;
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let o = outgoing(
        &k,
        &[oauth_conn(
            &k,
            &up.url("http"),
            &format!("{}/oauth/token", tokens.url("http")),
            4,
        )],
    );
    assert_answer(
        &call(&o, json!({"conn": "o", "method": "GET"}), b"").await,
        200,
        "",
    );
    assert_answer(
        &call(&o, json!({"conn": "o", "method": "GET"}), b"").await,
        200,
        "",
    );
    assert_eq!(tokens.seen().len(), 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_answer(
        &call(&o, json!({"conn": "o", "method": "GET"}), b"").await,
        200,
        "",
    );
    assert_eq!(tokens.seen().len(), 2);
    assert_eq!(up.seen()[2].header("authorization"), Some("Bearer t2"));
}

#[tokio::test]
async fn a_401_drops_the_token_and_the_call_is_retried_once_with_a_new_one() {
    let tokens = token_server(3600).await;
    let up = upstream(handler(|s, _| async move {
        if s.header("authorization") == Some("Bearer t1") {
            (401, vec![], Bytes::from("expired"))
        } else {
            ok("welcome")
        }
    }))
    .await;
    let k = key();
    let o = outgoing(
        &k,
        &[oauth_conn(
            &k,
            &up.url("http"),
            &format!("{}/oauth/token", tokens.url("http")),
            30,
        )],
    );
    assert_answer(
        &call(&o, json!({"conn": "o", "method": "POST"}), b"{}").await,
        200,
        "welcome",
    );
    assert_eq!(tokens.seen().len(), 2);
    assert_eq!(up.seen().len(), 2);
    assert_answer(
        &call(&o, json!({"conn": "o", "method": "GET"}), b"").await,
        200,
        "welcome",
    );
    assert_eq!(tokens.seen().len(), 2, "t2 is kept");

    // An upstream refusing every token: one retry only, then its 401 is the answer.
    let no = upstream(handler(|_, _| async {
        (401, vec![], Bytes::from("never"))
    }))
    .await;
    o.apply_rest(&[oauth_conn(
        &k,
        &no.url("http"),
        &format!("{}/oauth/token", tokens.url("http")),
        30,
    )]);
    assert_answer(
        &call(&o, json!({"conn": "o", "method": "GET"}), b"").await,
        401,
        "never",
    );
    assert_eq!(no.seen().len(), 2);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_an_auth_error() {
    let tokens = upstream(handler(|_, _| async {
        (400, vec![], Bytes::from(r#"{"error":"invalid_client"}"#))
    }))
    .await;
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let url = format!("{}/oauth/token", tokens.url("http"));
    let o = outgoing(&k, &[oauth_conn(&k, &up.url("http"), &url, 30)]);
    let r = call(&o, json!({"conn": "o", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("auth", 502), "{msg}");
    assert!(
        msg.contains(&url) && msg.contains("HTTP 400") && msg.contains("invalid_client"),
        "{msg}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_slow_upstream_times_out() {
    let up = upstream(handler(|_, _| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        ok("late")
    }))
    .await;
    let k = key();
    let o = outgoing(
        &k,
        &[
            conn(json!({"name": "slow", "address": up.url("http"), "timeout_ms": 300})),
            conn(json!({"name": "slow2", "address": up.url("http")})),
        ],
    );
    let r = call(&o, json!({"conn": "slow", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("timeout", 504));
    assert_eq!(
        msg,
        format!(
            "REST connection \"slow\" ({}): timed out after 300 ms",
            up.url("http")
        )
    );
    // The caller's deadline is shorter than the connection's timeout.
    let r = call(
        &o,
        json!({"conn": "slow2", "method": "GET", "deadline_ms": 200}),
        b"",
    )
    .await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "timeout");
    assert!(msg.ends_with("timed out after 200 ms"), "{msg}");
    let stats = o.stats(ConnType::Rest);
    assert_eq!(
        (stats[0].calls, stats[0].errors, stats[0].in_use),
        (0, 1, 0)
    );
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let k = key();
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "closed", "address": format!("http://127.0.0.1:{port}"),
                      "retries": 1, "retry_backoff_ms": 10}),
        )],
    );
    let r = call(&o, json!({"conn": "closed", "method": "POST"}), b"x").await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("connect", 502));
    assert!(
        msg.starts_with(&format!(
            "REST connection \"closed\" (http://127.0.0.1:{port}): "
        )),
        "{msg}"
    );
    assert!(msg.contains("refused"), "{msg}");
}

#[tokio::test]
async fn a_refused_connect_is_retried_for_any_method() {
    // The port is free at first; the upstream comes up while the call backs off.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let k = key();
    let o = Arc::new(outgoing(
        &k,
        &[conn(
            json!({"name": "late", "address": format!("http://{addr}"),
                      "retries": 3, "retry_backoff_ms": 300}),
        )],
    ));
    let o2 = o.clone();
    let c =
        tokio::spawn(
            async move { call(&o2, json!({"conn": "late", "method": "POST"}), b"x").await },
        );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"POST / HTTP/1.1"));
    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    assert_answer(&c.await.unwrap(), 200, "ok");
}

/// A raw upstream: its first `closing` connections read the request and close without
/// answering; later ones answer `ok`. Counts the requests it read.
async fn closing_upstream(closing: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Arc<AtomicUsize> = Arc::default();
    let r2 = requests.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            accepted += 1;
            let close = accepted <= closing;
            let r = r2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut have = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    if have.windows(4).any(|w| w == b"\r\n\r\n") {
                        r.fetch_add(1, Ordering::SeqCst);
                        have.clear();
                        if close {
                            return; // dropped: closed without an answer
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn an_early_close_is_retried_for_get_but_not_for_post() {
    let k = key();
    let (addr, requests) = closing_upstream(1).await;
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "c", "address": format!("http://{addr}"), "retry_backoff_ms": 10}),
        )],
    );
    assert_answer(
        &call(&o, json!({"conn": "c", "method": "GET"}), b"").await,
        200,
        "ok",
    );
    assert_eq!(requests.load(Ordering::SeqCst), 2);

    let (addr, requests) = closing_upstream(1).await;
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "c", "address": format!("http://{addr}"), "retry_backoff_ms": 10}),
        )],
    );
    let r = call(&o, json!({"conn": "c", "method": "POST"}), b"{}").await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("io", 502), "{msg}");
    assert!(msg.contains("the connection broke"), "{msg}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "a POST is never sent twice"
    );

    // A PUT whose every attempt breaks: the first send and `retries` more, then `io`.
    let (addr, requests) = closing_upstream(usize::MAX).await;
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "c", "address": format!("http://{addr}"), "retries": 2, "retry_backoff_ms": 10}),
        )],
    );
    let r = call(&o, json!({"conn": "c", "method": "PUT"}), b"{}").await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "io", "{msg}");
    assert!(
        msg.starts_with(&format!("REST connection \"c\" (http://{addr}): ")),
        "{msg}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_oversized_answer_is_too_large() {
    let up = upstream(handler(|s, _| async move {
        let n = if s.uri == "/big" { 1000 } else { 10 };
        ok(&"x".repeat(n))
    }))
    .await;
    let k = key();
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "l", "address": up.url("http"), "url_path": "/{p}", "max_response_bytes": 100}),
        )],
    );
    let r = call(
        &o,
        json!({"conn": "l", "method": "GET", "params": {"p": "big"}}),
        b"",
    )
    .await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("too_large", 502));
    assert!(msg.contains("max_response_bytes (100 bytes)"), "{msg}");
    let r = call(
        &o,
        json!({"conn": "l", "method": "GET", "params": {"p": "small"}}),
        b"",
    )
    .await;
    assert_answer(&r, 200, &"x".repeat(10));
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        2,
        "the oversized answer's connection was closed"
    );
}

#[tokio::test]
async fn a_busy_pool_answers_pool_full_after_the_pool_wait() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let tx = Arc::new(Mutex::new(Some(tx)));
    let release2 = release.clone();
    let up = upstream(handler(move |_, _| {
        let (tx, release) = (tx.clone(), release2.clone());
        async move {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            release.notified().await;
            ok("done")
        }
    }))
    .await;
    let k = key();
    let o = Arc::new(outgoing(
        &k,
        &[conn(
            json!({"name": "p", "address": up.url("http"), "pool_size": 1, "pool_wait_ms": 200}),
        )],
    ));
    let o2 = o.clone();
    let first =
        tokio::spawn(async move { call(&o2, json!({"conn": "p", "method": "GET"}), b"").await });
    rx.await.unwrap();
    let s = &o.stats(ConnType::Rest)[0];
    assert_eq!((s.pool_size, s.in_use, s.idle, s.waiting), (1, 1, 0, 0));
    let r = call(&o, json!({"conn": "p", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("pool_full", 503));
    assert!(
        msg.contains("pool_size 1") && msg.contains("pool_wait_ms 200"),
        "{msg}"
    );
    release.notify_one();
    assert_answer(&first.await.unwrap(), 200, "done");
    let s = &o.stats(ConnType::Rest)[0];
    assert_eq!(
        (s.in_use, s.idle, s.waiting, s.calls, s.errors),
        (0, 1, 0, 1, 1)
    );
}

#[tokio::test]
async fn calls_waiting_for_a_connection_are_counted_and_served_in_turn() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let release = Arc::new(tokio::sync::Notify::new());
    let release2 = release.clone();
    let up = upstream(handler(move |_, n| {
        let (tx, release) = (tx.clone(), release2.clone());
        async move {
            if n == 0 {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                release.notified().await;
            }
            ok(&format!("call {n}"))
        }
    }))
    .await;
    let k = key();
    let o = Arc::new(outgoing(
        &k,
        &[conn(
            json!({"name": "w", "address": up.url("http"), "pool_size": 1, "pool_wait_ms": 60000}),
        )],
    ));
    let spawn_call = || {
        let o = o.clone();
        tokio::spawn(async move { call(&o, json!({"conn": "w", "method": "GET"}), b"").await })
    };
    let first = spawn_call();
    rx.await.unwrap();
    let second = spawn_call();
    let third = spawn_call();
    // Polls the figures until both queued calls are counted (no time limit of its own:
    // the test harness's is the bound).
    loop {
        let s = &o.stats(ConnType::Rest)[0];
        if s.waiting == 2 {
            assert_eq!((s.in_use, s.idle), (1, 0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.notify_one();
    assert_answer(&first.await.unwrap(), 200, "call 0");
    let mut rest = [second.await.unwrap(), third.await.unwrap()]
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect::<Vec<_>>();
    rest.sort();
    assert_eq!(rest, ["call 1", "call 2"]);
    let s = &o.stats(ConnType::Rest)[0];
    assert_eq!((s.in_use, s.idle, s.waiting, s.calls), (0, 1, 0, 3));
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        1,
        "one connection served all three"
    );
}

/// A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, made
/// with the openssl command.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("pki");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("/usr/bin/openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=oxbus test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(
                dir.join(format!("{who}.ext")),
                format!("basicConstraints=CA:FALSE\n{ext}"),
            )
            .unwrap();
            run(&[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    &format!("{who}.key"),
                    "-out",
                    &format!("{who}.csr"),
                    "-subj",
                    &format!("/CN={who}"),
                ],
            ]
            .concat());
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ]);
        }
        Pki { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_owned()
    }

    fn server_config(&self, require_client: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = load_certs(&self.dir.join("server.pem"));
        let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
            std::fs::File::open(self.dir.join("server.key")).unwrap(),
        ))
        .unwrap()
        .unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(load_certs(&self.dir.join("ca.pem")));
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(certs, key).unwrap())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn load_certs(p: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(p).unwrap(),
    ))
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test]
async fn tls_verifies_with_the_given_ca_and_can_be_told_not_to() {
    let pki = Pki::new();
    let up = upstream_tls(
        handler(|_, _| async { ok("secure") }),
        Some(pki.server_config(false)),
    )
    .await;
    let k = key();
    let port = up.addr.port();
    let o = outgoing(
        &k,
        &[
            conn(
                json!({"name": "ca", "address": up.url("https"), "tls": {"ca_file": pki.path("ca.pem")}}),
            ),
            conn(
                json!({"name": "byname", "address": format!("https://localhost:{port}"), "tls": {"ca_file": pki.path("ca.pem")}}),
            ),
            conn(json!({"name": "system", "address": up.url("https"), "retries": 0})),
            conn(json!({"name": "trusting", "address": up.url("https"), "tls": {"verify": false}})),
            conn(
                json!({"name": "nofile", "address": up.url("https"), "tls": {"ca_file": pki.path("missing.pem")}}),
            ),
        ],
    );
    assert_answer(
        &call(&o, json!({"conn": "ca", "method": "GET"}), b"").await,
        200,
        "secure",
    );
    assert_answer(
        &call(&o, json!({"conn": "byname", "method": "GET"}), b"").await,
        200,
        "secure",
    );
    assert_answer(
        &call(&o, json!({"conn": "trusting", "method": "GET"}), b"").await,
        200,
        "secure",
    );
    let r = call(&o, json!({"conn": "system", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "connect", "{msg}");
    // Refused by the handshake (a test CA is not among the system's), not for want of roots.
    assert!(
        msg.contains("invalid peer certificate") && msg.contains("UnknownIssuer"),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!(
            "REST connection \"system\" (https://127.0.0.1:{port})"
        )),
        "{msg}"
    );
    let r = call(&o, json!({"conn": "nofile", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "connect", "{msg}");
    assert!(msg.contains("missing.pem"), "{msg}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    let pki = Pki::new();
    let up = upstream_tls(
        handler(|_, _| async { ok("you again") }),
        Some(pki.server_config(true)),
    )
    .await;
    let k = key();
    let o = outgoing(
        &k,
        &[
            conn(json!({"name": "with", "address": up.url("https"), "tls": {
                "ca_file": pki.path("ca.pem"), "client_cert_file": pki.path("client.pem"),
                "client_key_file": pki.path("client.key")}})),
            conn(
                json!({"name": "without", "address": up.url("https"), "retries": 0,
                "tls": {"ca_file": pki.path("ca.pem")}}),
            ),
        ],
    );
    assert_answer(
        &call(&o, json!({"conn": "with", "method": "GET"}), b"").await,
        200,
        "you again",
    );
    let r = call(&o, json!({"conn": "without", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert!(code == "connect" || code == "io", "{code}: {msg}");
    assert_eq!(
        up.seen().len(),
        1,
        "only the call with the certificate got through"
    );
}

#[tokio::test]
async fn a_live_edit_keeps_the_call_in_flight_on_the_old_upstream() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let release = Arc::new(tokio::sync::Notify::new());
    let release2 = release.clone();
    let old = upstream(handler(move |_, _| {
        let (tx, release) = (tx.clone(), release2.clone());
        async move {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            release.notified().await;
            ok("old")
        }
    }))
    .await;
    let new = upstream(handler(|_, _| async { ok("new") })).await;
    let k = key();
    let o = Arc::new(outgoing(
        &k,
        &[conn(json!({"name": "e", "address": old.url("http")}))],
    ));
    let o2 = o.clone();
    let first =
        tokio::spawn(async move { call(&o2, json!({"conn": "e", "method": "GET"}), b"").await });
    rx.await.unwrap();
    o.apply_rest(&[conn(json!({"name": "e", "address": new.url("http")}))]);
    assert_answer(
        &call(&o, json!({"conn": "e", "method": "GET"}), b"").await,
        200,
        "new",
    );
    release.notify_one();
    assert_answer(&first.await.unwrap(), 200, "old");
    assert_eq!((old.seen().len(), new.seen().len()), (1, 1));

    o.apply_rest(&[]);
    let r = call(&o, json!({"conn": "e", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("unknown_conn", 404));
    assert!(msg.contains("\"e\""), "{msg}");
}

#[tokio::test]
async fn pooled_connections_are_reused() {
    let up = upstream(handler(|_, _| async { ok("again") })).await;
    let k = key();
    let o = outgoing(&k, &[conn(json!({"name": "r", "address": up.url("http")}))]);
    for _ in 0..5 {
        assert_answer(
            &call(&o, json!({"conn": "r", "method": "GET"}), b"").await,
            200,
            "again",
        );
    }
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pooled_post_whose_connection_the_upstream_closed_idle_is_sent_once() {
    // Answers each request with keep-alive, then closes the connection after 100 ms idle.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Arc<AtomicUsize> = Arc::default();
    let accepted: Arc<AtomicUsize> = Arc::default();
    let (r2, a2) = (requests.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            a2.fetch_add(1, Ordering::SeqCst);
            let r = r2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut have = Vec::new();
                loop {
                    match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => have.extend_from_slice(&buf[..n]),
                        _ => return, // idle too long, or closed: dropped
                    }
                    if have.windows(4).any(|w| w == b"\r\n\r\n") && have.ends_with(b"x") {
                        have.clear();
                        r.fetch_add(1, Ordering::SeqCst);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    let k = key();
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "s", "address": format!("http://{addr}"), "retries": 0}),
        )],
    );
    for i in 0..3 {
        if i > 0 {
            // Past the upstream's idle close.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_answer(
            &call(&o, json!({"conn": "s", "method": "POST"}), b"x").await,
            200,
            "ok",
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(o.stats(ConnType::Rest)[0].errors, 0);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_a_failure() {
    // Answers each request, then closes the connection without saying so.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Arc<AtomicUsize> = Arc::default();
    let r2 = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let r = r2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut have = Vec::new();
                while !have.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let k = key();
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "s", "address": format!("http://{addr}"), "retry_backoff_ms": 10}),
        )],
    );
    for _ in 0..5 {
        assert_answer(
            &call(&o, json!({"conn": "s", "method": "GET"}), b"").await,
            200,
            "ok",
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    assert_eq!(o.stats(ConnType::Rest)[0].errors, 0);
}

#[tokio::test]
async fn ping_reports_the_answer_or_the_failure() {
    let up = upstream(handler(|s, _| async move {
        let status = if s.uri == "/health" { 204 } else { 503 };
        (status, vec![], Bytes::new())
    }))
    .await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let k = key();
    let o = outgoing(
        &k,
        &[
            conn(
                json!({"name": "h", "address": up.url("http"), "ping_method": "GET", "ping_path": "/health",
                        "headers": {"X-Default": "d"}}),
            ),
            conn(json!({"name": "down", "address": up.url("http")})),
            conn(
                json!({"name": "closed", "address": format!("http://127.0.0.1:{port}"), "retries": 0}),
            ),
        ],
    );
    let p = o.ping(ConnType::Rest, "h").await.unwrap();
    assert!(p.ok, "{p:?}");
    assert!(
        p.detail.starts_with("HTTP 204 in ") && p.detail.ends_with(" ms"),
        "{p:?}"
    );
    let s = &up.seen()[0];
    assert_eq!(
        (s.method.as_str(), s.header("x-default")),
        ("GET", Some("d"))
    );
    let p = o.ping(ConnType::Rest, "down").await.unwrap();
    assert!(!p.ok && p.detail.starts_with("HTTP 503 in "), "{p:?}");
    assert_eq!(up.seen()[1].method, "HEAD");
    let p = o.ping(ConnType::Rest, "closed").await.unwrap();
    assert!(!p.ok && p.detail.contains("refused"), "{p:?}");
    assert!(
        p.detail
            .starts_with("REST connection \"closed\" (http://127.0.0.1:"),
        "{p:?}"
    );
    // Pings are not calls.
    assert!(
        o.stats(ConnType::Rest)
            .iter()
            .all(|s| s.calls == 0 && s.errors == 0)
    );
}

#[tokio::test]
async fn a_short_lived_token_is_still_cached() {
    // expires_in 10 < refresh_before_s 30: kept for half its life, not refetched per call.
    let tokens = token_server(10).await;
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let url = format!("{}/oauth/token", tokens.url("http"));
    let o = outgoing(&k, &[oauth_conn(&k, &up.url("http"), &url, 30)]);
    for _ in 0..3 {
        assert_answer(
            &call(&o, json!({"conn": "o", "method": "GET"}), b"").await,
            200,
            "",
        );
    }
    assert_eq!(tokens.seen().len(), 1);
}

/// A token endpoint answering 200 with `body`.
async fn token_answer(body: &'static str) -> Upstream {
    upstream(handler(move |_, _| async move {
        (
            200,
            vec![("content-type", "application/json".into())],
            Bytes::from(body),
        )
    }))
    .await
}

#[tokio::test]
async fn expires_in_may_be_fractional_or_huge() {
    for body in [
        r#"{"access_token":"tok","expires_in":3599.0}"#,
        r#"{"access_token":"tok","expires_in":1e300}"#,
        r#"{"access_token":"tok","expires_in":18446744073709551615}"#,
        r#"{"access_token":"tok","expires_in":"3599"}"#,
    ] {
        let tokens = token_answer(body).await;
        let up = upstream(handler(|_, _| async { ok("in") })).await;
        let k = key();
        let url = format!("{}/oauth/token", tokens.url("http"));
        let o = outgoing(&k, &[oauth_conn(&k, &up.url("http"), &url, 30)]);
        for _ in 0..2 {
            let r = call(&o, json!({"conn": "o", "method": "GET"}), b"").await;
            assert_answer(&r, 200, "in");
        }
        assert_eq!(tokens.seen().len(), 1, "{body}: cached");
        assert_eq!(up.seen()[0].header("authorization"), Some("Bearer tok"));
    }
}

#[tokio::test]
async fn an_unusable_token_answer_is_described_never_quoted() {
    for (body, why) in [
        (
            r#"{"access_token":"SECRET-TOKEN","expires_in":-5}"#,
            "negative",
        ),
        (
            r#"{"access_token":"SECRET-TOKEN\nx","expires_in":60}"#,
            "not valid in a header",
        ),
        (
            r#"{"access_token":"SECRET-TOKEN","expires_in":[1]}"#,
            "expires_in",
        ),
        (r#"{"token":"SECRET-TOKEN"}"#, "no access_token"),
    ] {
        let tokens = token_answer(body).await;
        let up = upstream(handler(|_, _| async { ok("") })).await;
        let k = key();
        let url = format!("{}/oauth/token", tokens.url("http"));
        let o = outgoing(&k, &[oauth_conn(&k, &up.url("http"), &url, 30)]);
        let r = call(&o, json!({"conn": "o", "method": "GET"}), b"").await;
        let (code, msg) = error_of(&r);
        assert_eq!(code, "auth", "{msg}");
        assert!(msg.contains(why) && msg.contains(&url), "{body}: {msg}");
        assert!(!msg.contains("SECRET-TOKEN"), "{body}: {msg}");
        assert!(up.seen().is_empty());
    }
}

#[tokio::test]
async fn a_refusal_echoing_secrets_is_redacted() {
    let tokens = upstream(handler(|s, _| async move {
        let echo = String::from_utf8_lossy(&s.body).into_owned();
        let body = json!({"error": "invalid_scope", "access_token": "OLD-TOKEN", "request": echo});
        (400, vec![], Bytes::from(body.to_string()))
    }))
    .await;
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let url = format!("{}/oauth/token", tokens.url("http"));
    let o = outgoing(&k, &[oauth_conn(&k, &up.url("http"), &url, 30)]);
    let r = call(&o, json!({"conn": "o", "method": "GET"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "auth");
    assert!(
        msg.contains("invalid_scope") && msg.contains("HTTP 400"),
        "{msg}"
    );
    assert!(!msg.contains("OLD-TOKEN") && !msg.contains("c+s"), "{msg}");
    // Nor does anything printable of the connection hold the secret.
    let debug = format!("{o:?}");
    assert!(
        !debug.contains("c+s") && !debug.contains("client_secret"),
        "{debug}"
    );
}

#[tokio::test]
async fn static_credentials_are_not_in_debug_output() {
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let o = outgoing(
        &k,
        &[conn(json!({
            "name": "b", "address": up.url("http"),
            "auth": {"type": "bearer", "sealed": k.seal(&RestConn::seal_name("b"), "TOPSECRET")}
        }))],
    );
    assert_answer(&call(&o, json!({"conn": "b"}), b"").await, 200, "");
    assert_eq!(
        up.seen()[0].header("authorization"),
        Some("Bearer TOPSECRET")
    );
    let debug = format!("{o:?}");
    assert!(!debug.contains("TOPSECRET"), "{debug}");
}

#[tokio::test]
async fn a_slow_token_endpoint_serves_later_calls_despite_short_deadlines() {
    // The token takes 600 ms; each call gives up after 200 ms, but the fetch goes on
    // (bounded by timeout_ms) and a later call finds its token.
    let tokens = upstream(handler(|_, n| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let body = json!({"access_token": format!("t{}", n + 1), "expires_in": 3600});
        (200, vec![], Bytes::from(body.to_string()))
    }))
    .await;
    let up = upstream(handler(|_, _| async { ok("in") })).await;
    let k = key();
    let url = format!("{}/oauth/token", tokens.url("http"));
    let o = outgoing(&k, &[oauth_conn(&k, &up.url("http"), &url, 30)]);
    let short = json!({"conn": "o", "method": "GET", "deadline_ms": 200});
    let r = call(&o, short.clone(), b"").await;
    assert_eq!(error_of(&r).0, "timeout");
    let mut answered = false;
    for _ in 0..20 {
        let r = call(&o, short.clone(), b"").await;
        if r.meta.error.is_none() {
            assert_answer(&r, 200, "in");
            answered = true;
            break;
        }
        assert_eq!(error_of(&r).0, "timeout");
    }
    assert!(answered, "no call got the token");
    assert_eq!(tokens.seen().len(), 1, "one fetch served them all");
}

#[tokio::test]
async fn a_placeholder_cannot_climb_the_path() {
    let up = upstream(handler(|_, _| async { ok("") })).await;
    let k = key();
    let o = outgoing(
        &k,
        &[conn(
            json!({"name": "c", "address": up.url("http"), "url_path": "/customers/{id}/orders"}),
        )],
    );
    for v in ["..", ".", ""] {
        let r = call(&o, json!({"conn": "c", "params": {"id": v}}), b"").await;
        let (code, msg) = error_of(&r);
        assert_eq!(
            (code.as_str(), r.meta.status),
            ("invalid", 400),
            "{v}: {msg}"
        );
        assert!(msg.contains("{id}"), "{msg}");
    }
    let r = call(&o, json!({"conn": "c", "params": {"id": "..a"}}), b"").await;
    assert_answer(&r, 200, "");
    assert_eq!(up.seen()[0].uri, "/customers/..a/orders");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_deadline_ending_in_the_pool_wait_is_pool_full() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let release2 = release.clone();
    let up = upstream(handler(move |_, _| {
        let (tx, release) = (tx.clone(), release2.clone());
        async move {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            release.notified().await;
            ok("done")
        }
    }))
    .await;
    let k = key();
    let o = Arc::new(outgoing(
        &k,
        &[conn(
            json!({"name": "p", "address": up.url("http"), "pool_size": 1, "pool_wait_ms": 5000}),
        )],
    ));
    let o2 = o.clone();
    let first =
        tokio::spawn(async move { call(&o2, json!({"conn": "p", "method": "GET"}), b"").await });
    rx.await.unwrap();
    let r = call(
        &o,
        json!({"conn": "p", "method": "GET", "deadline_ms": 100}),
        b"",
    )
    .await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("pool_full", 503), "{msg}");
    assert!(
        msg.contains("deadline of 100 ms") && msg.contains("pool_wait_ms 5000"),
        "{msg}"
    );
    release.notify_one();
    assert_answer(&first.await.unwrap(), 200, "done");
}

#[tokio::test]
async fn an_oversized_chunked_answer_is_too_large() {
    // A raw server: a chunked answer (no Content-Length to refuse it up front).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..5 {
                    out.extend_from_slice(format!("40\r\n{}\r\n", "y".repeat(64)).as_bytes());
                }
                out.extend_from_slice(b"0\r\n\r\n");
                let _ = s.write_all(&out).await;
                let mut rest = [0u8; 16];
                let _ = s.read(&mut rest).await;
            });
        }
    });
    let k = key();
    let o = outgoing(
        &k,
        &[
            conn(
                json!({"name": "l", "address": format!("http://{addr}"), "max_response_bytes": 100}),
            ),
            conn(
                json!({"name": "m", "address": format!("http://{addr}"), "max_response_bytes": 320}),
            ),
        ],
    );
    let r = call(&o, json!({"conn": "l"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!((code.as_str(), r.meta.status), ("too_large", 502), "{msg}");
    let r = call(&o, json!({"conn": "m"}), b"").await;
    assert_answer(&r, 200, &"y".repeat(320));
}

/// An HTTPS token endpoint with the test PKI's server certificate.
async fn tls_token_server(pki: &Pki, require_client: bool) -> Upstream {
    upstream_tls(
        handler(|_, _| async {
            let body = json!({"access_token": "tls-token", "expires_in": 3600});
            (200, vec![], Bytes::from(body.to_string()))
        }),
        Some(pki.server_config(require_client)),
    )
    .await
}

#[tokio::test]
async fn the_token_endpoint_is_always_verified_and_shown_no_client_certificate() {
    let pki = Pki::new();
    let up = upstream(handler(|s, _| async move {
        ok(s.header("authorization").unwrap_or("none"))
    }))
    .await;
    let k = key();
    let oauth = |name: &str, token_url: String, tls: Value| {
        conn(json!({
            "name": name, "address": up.url("http"), "retries": 0, "tls": tls,
            "auth": {"type": "oauth2", "token_url": token_url, "client_id": "me",
                     "sealed": k.seal(&RestConn::seal_name(name), "c s")}
        }))
    };
    let plain = tls_token_server(&pki, false).await;
    let mutual = tls_token_server(&pki, true).await;
    let o = outgoing(
        &k,
        &[
            // The connection's CA is added to the system's for the token endpoint.
            oauth(
                "ca",
                format!("{}/t", plain.url("https")),
                json!({"ca_file": pki.path("ca.pem")}),
            ),
            // verify: false is the connection's, not the token endpoint's.
            oauth(
                "trusting",
                format!("{}/t", plain.url("https")),
                json!({"verify": false}),
            ),
            // The connection's client certificate is not shown to the token endpoint.
            oauth(
                "cert",
                format!("{}/t", mutual.url("https")),
                json!({"ca_file": pki.path("ca.pem"), "client_cert_file": pki.path("client.pem"),
                       "client_key_file": pki.path("client.key")}),
            ),
        ],
    );
    let r = call(&o, json!({"conn": "ca"}), b"").await;
    assert_answer(&r, 200, "Bearer tls-token");
    let r = call(&o, json!({"conn": "trusting"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "auth", "{msg}");
    assert!(msg.contains("invalid peer certificate"), "{msg}");
    let r = call(&o, json!({"conn": "cert"}), b"").await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, "auth", "{msg}");
    assert_eq!(plain.seen().len(), 1);
    assert!(mutual.seen().is_empty());
}
