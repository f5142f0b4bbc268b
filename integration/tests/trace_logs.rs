//! W3C trace context and JSON logs against the real binary: a `traceparent` is believed
//! only from a trusted proxy (`http.trusted_proxies`, the test client connects from
//! 127.0.0.1) and only when well-formed, and is then passed on unchanged with its
//! `tracestate`; otherwise the request starts a trace of its own and its service sees
//! neither header; `oxbus proxy` drops a client's trace context unless told to pass it on;
//! every kind of invocation (REST, JSON-RPC, admin invoke, a scheduled job's run, a
//! service's `invoke` / `invoke_async`) hands its service a trace; and with
//! `server.log_format = "json"` every line the server writes parses as JSON, a service's
//! log line carries its cid, service and trace id, and a huge record is cut.

use oxbus_integration::api::admin;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

const TRACED: &str = r#"import logging
from oxbus import Service

later_log = logging.getLogger('tr.later')


class Echo(Service):
    """Its trace, as the service sees it, and a log line of its own."""
    name = 'tr.echo'

    def handle(self):
        self.logger.info('echo in trace %s', self.trace_id)
        headers = self.request.http.headers
        self.response.payload = {'trace_id': self.trace_id, 'traceparent': self.traceparent,
                                 'tracestate': self.tracestate, 'cid': self.cid,
                                 'header_traceparent': headers.get('traceparent'),
                                 'header_tracestate': headers.get('tracestate')}


class Outer(Service):
    """Calls tr.echo in process and tr.later through the server."""
    name = 'tr.outer'

    def handle(self):
        inner = self.invoke('tr.echo')
        later_cid = self.invoke_async('tr.later')
        self.response.payload = {'trace_id': self.trace_id, 'inner': inner,
                                 'later_cid': later_cid}


class Later(Service):
    name = 'tr.later'

    def handle(self):
        later_log.info('later ran in trace %s %s state %s', self.trace_id, self.traceparent,
                       self.tracestate)


class Loud(Service):
    """Logs a record far over the JSON line's limit."""
    name = 'tr.loud'

    def handle(self):
        self.logger.warning('big:' + 'x' * 40000)
"#;

/// A valid incoming trace context (the specification's example).
const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_STATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

fn env(trusted: &str) -> Env {
    Env::new()
        .service("tr.py", TRACED)
        .channel("/echo", &["GET"], "tr.echo")
        .channel("/outer", &["GET"], "tr.outer")
        .channel("/loud", &["GET"], "tr.loud")
        .jsonrpc_channel("/rpc", &["tr.echo"])
        .set("http", "trusted_proxies", trusted)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A well-formed traceparent: (trace id, parent id, flags).
fn parts(tp: &str) -> (&str, &str, &str) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(p[0], "00", "{tp}");
    assert!(is_hex(p[1], 32) && p[1] != "0".repeat(32), "{tp}");
    assert!(is_hex(p[2], 16) && p[2] != "0".repeat(16), "{tp}");
    assert!(is_hex(p[3], 2), "{tp}");
    (p[1], p[2], p[3])
}

/// GET /echo with `headers`: (the service's trace id, its traceparent, the cid).
async fn echo(srv: &Server, headers: &[(&str, &str)]) -> (String, String, String) {
    let j = echo_json(srv, headers).await;
    (
        j["trace_id"].as_str().unwrap().to_owned(),
        j["traceparent"].as_str().unwrap().to_owned(),
        j["cid"].as_str().unwrap().to_owned(),
    )
}

/// GET /echo with `headers`: everything tr.echo answers, checked for consistency.
async fn echo_json(srv: &Server, headers: &[(&str, &str)]) -> Value {
    let r = srv.request("GET", "/echo", headers, b"").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let tp = j["traceparent"].as_str().expect("a traceparent");
    let trace = j["trace_id"].as_str().expect("a trace id");
    assert_eq!(parts(tp).0, trace, "self.trace_id is the traceparent's");
    assert_eq!(j["cid"], r.cid().as_str());
    j
}

/// Traceparents that are not version-00 trace contexts, each with the trace id a careless
/// parser would take from it.
fn malformed() -> Vec<String> {
    vec![
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        format!("01{}x", &INCOMING[2..]),
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".into(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7".into(),
        format!("{INCOMING}-00"),
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01".into(),
        "garbage".into(),
    ]
}

#[tokio::test]
async fn a_trusted_proxys_traceparent_continues_its_trace_and_a_malformed_one_is_ignored() {
    let srv = env(r#"["127.0.0.1/32"]"#).start().await;

    // Continued: the proxy's traceparent passed on as it came (Oxbus records no span of
    // its own, so the proxy's span stays the parent), and its tracestate with it.
    let j = echo_json(
        &srv,
        &[("traceparent", INCOMING), ("tracestate", INCOMING_STATE)],
    )
    .await;
    assert_eq!(j["traceparent"], INCOMING, "{j}");
    assert_eq!(j["trace_id"], INCOMING_TRACE, "{j}");
    assert_eq!(j["tracestate"], INCOMING_STATE, "{j}");
    // A trusted peer's headers reach the service as they came.
    assert_eq!(j["header_traceparent"], INCOMING, "{j}");
    assert_eq!(j["header_tracestate"], INCOMING_STATE, "{j}");
    let (_, tp2, _) = echo(&srv, &[("traceparent", INCOMING)]).await;
    assert_eq!(tp2, INCOMING, "the same context every time");

    // Flags are masked to sampled (01) and random (02).
    let unknown_flags = format!("{}ff", &INCOMING[..53]);
    let (_, tp, _) = echo(&srv, &[("traceparent", &unknown_flags)]).await;
    assert_eq!(tp, format!("{}03", &INCOMING[..53]));
    let (_, tp, _) = echo(&srv, &[("traceparent", &format!("{}fc", &INCOMING[..53]))]).await;
    assert_eq!(tp, format!("{}00", &INCOMING[..53]));

    // A later version is read as version 00: its first fields, passed on as 00.
    for later in [
        format!("01{}", &INCOMING[2..]),
        format!("cc{}-more-fields", &INCOMING[2..]),
    ] {
        let (_, tp, _) = echo(&srv, &[("traceparent", &later)]).await;
        assert_eq!(tp, INCOMING, "{later}");
    }

    // A tracestate over 512 characters is dropped whole; the trace still continues.
    let long_state = format!("a={}", "x".repeat(511));
    let j = echo_json(
        &srv,
        &[("traceparent", INCOMING), ("tracestate", &long_state)],
    )
    .await;
    assert_eq!(j["traceparent"], INCOMING, "{j}");
    assert_eq!(j["tracestate"], Value::Null, "{j}");
    // Without a valid traceparent, a tracestate is not taken either.
    let j = echo_json(
        &srv,
        &[("traceparent", "garbage"), ("tracestate", INCOMING_STATE)],
    )
    .await;
    assert_ne!(j["trace_id"], INCOMING_TRACE, "{j}");
    assert_eq!(j["tracestate"], Value::Null, "{j}");

    // Malformed, or two of them: ignored, the request starts a new trace.
    let mut seen = std::collections::HashSet::new();
    for bad in malformed() {
        let (trace, tp, _) = echo(&srv, &[("traceparent", &bad)]).await;
        assert_ne!(trace, INCOMING_TRACE, "{bad:?} was believed");
        assert_eq!(parts(&tp).2, "00", "a new trace is not sampled: {tp}");
        assert!(seen.insert(trace), "a trace id came twice");
    }
    let (trace, _, _) = echo(
        &srv,
        &[("traceparent", INCOMING), ("traceparent", INCOMING)],
    )
    .await;
    assert_ne!(
        trace, INCOMING_TRACE,
        "two traceparent headers are not a trace context"
    );

    // None: a new trace, every time.
    let (a, _, _) = echo(&srv, &[]).await;
    let (b, _, _) = echo(&srv, &[]).await;
    assert_ne!(a, b);
    assert!(seen.insert(a) && seen.insert(b));

    // Every call of a JSON-RPC batch runs in the request's trace.
    let batch = json!([
        {"jsonrpc": "2.0", "method": "tr.echo", "id": 1},
        {"jsonrpc": "2.0", "method": "tr.echo", "id": 2},
    ]);
    let r = srv
        .request(
            "POST",
            "/rpc",
            &[
                ("content-type", "application/json"),
                ("traceparent", INCOMING),
            ],
            batch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let answers = r.json();
    let answers = answers.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 2, "{answers:?}");
    for a in answers {
        assert_eq!(a["result"]["trace_id"], INCOMING_TRACE, "{a}");
    }
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_service_call_keeps_the_callers_tracestate() {
    let srv = env(r#"["127.0.0.1/32"]"#)
        .set("server", "log_format", "\"json\"")
        .start()
        .await;
    let r = srv
        .request(
            "GET",
            "/outer",
            &[("traceparent", INCOMING), ("tracestate", INCOMING_STATE)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    // In process...
    assert_eq!(j["inner"]["traceparent"], INCOMING, "{j}");
    assert_eq!(j["inner"]["tracestate"], INCOMING_STATE, "{j}");
    // ...and through the server (invoke_async).
    let later_cid = j["later_cid"].as_str().unwrap().to_owned();
    let later = wait_line(&srv, "the invoke_async callee's log line", |v| {
        v["cid"] == later_cid.as_str() && v["target"] == "oxbus::python"
    })
    .await;
    assert_eq!(
        later["message"],
        format!("later ran in trace {INCOMING_TRACE} {INCOMING} state {INCOMING_STATE}"),
        "{later}"
    );
    srv.assert_no_errors(&[]);
}

/// tr.echo through `oxbus proxy` in front of `srv` (which trusts it), with a client's own
/// trace context.
async fn echo_through_proxy(srv: &Server, proxy_keys: &str) -> Value {
    let p = oxbus_integration::proxy::Proxy::in_front_of(proxy_keys, &[srv.port()]).await;
    let mut conn = oxbus_integration::proxy::Conn::connect(p.port, None)
        .await
        .expect("connect to the proxy");
    let (status, body, _) = conn
        .send(
            "GET",
            "/echo",
            &[("traceparent", INCOMING), ("tracestate", INCOMING_STATE)],
            bytes::Bytes::new(),
        )
        .await
        .expect("an answer through the proxy");
    assert_eq!(status, 200, "{:?}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn the_proxy_drops_a_clients_trace_context_unless_told_to_pass_it() {
    let srv = env(r#"["127.0.0.1/32"]"#).start().await;
    // By default: the client's context never reaches the server, which starts a trace.
    let j = echo_through_proxy(&srv, "").await;
    assert_ne!(j["trace_id"], INCOMING_TRACE, "{j}");
    assert_eq!(parts(j["traceparent"].as_str().unwrap()).2, "00", "{j}");
    assert_eq!(j["tracestate"], Value::Null, "{j}");
    assert_eq!(j["header_traceparent"], Value::Null, "{j}");
    assert_eq!(j["header_tracestate"], Value::Null, "{j}");
    // A proxy behind a trusted tracer passes it on.
    let j = echo_through_proxy(&srv, "pass_trace_context = true").await;
    assert_eq!(j["traceparent"], INCOMING, "{j}");
    assert_eq!(j["tracestate"], INCOMING_STATE, "{j}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn an_untrusted_peers_traceparent_is_ignored() {
    // Nobody trusted, then proxies trusted but not the loopback this client comes from.
    for trusted in ["[]", r#"["10.0.0.0/8"]"#] {
        let srv = env(trusted).start().await;
        let sent = [
            ("traceparent", INCOMING),
            ("tracestate", INCOMING_STATE),
            ("x-other", "kept"),
        ];
        let j = echo_json(&srv, &sent).await;
        let trace = j["trace_id"].as_str().unwrap().to_owned();
        assert_ne!(trace, INCOMING_TRACE, "trusted_proxies = {trusted}");
        assert_eq!(parts(j["traceparent"].as_str().unwrap()).2, "00");
        assert_eq!(j["tracestate"], Value::Null, "{j}");
        // The headers do not reach the service either: a service reading them itself sees
        // no trace but its own.
        assert_eq!(j["header_traceparent"], Value::Null, "{j}");
        assert_eq!(j["header_tracestate"], Value::Null, "{j}");
        let (other, _, _) = echo(&srv, &sent).await;
        assert_ne!(trace, other, "each request starts its own trace");
        srv.assert_no_errors(&[]);
    }
}

/// Every line of `srv`'s output as JSON; panics naming a line that is not a JSON object with
/// the keys of the format.
fn json_lines(srv: &Server) -> Vec<Value> {
    srv.log()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"));
            for key in [
                "time", "level", "target", "cid", "service", "trace_id", "message", "fields",
            ] {
                assert!(v.get(key).is_some(), "no {key:?} in {l}");
            }
            assert!(v["fields"].is_object(), "{l}");
            let time = v["time"].as_str().expect("time is text");
            assert!(
                time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "time is RFC 3339 UTC: {time}"
            );
            v
        })
        .collect()
}

/// Waits for a JSON line matching `pred`.
async fn wait_line(srv: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), what, || {
        let found = json_lines(srv).into_iter().find(&pred);
        async move { found }
    })
    .await
}

#[tokio::test]
async fn json_logs_parse_and_carry_cid_service_and_trace_id() {
    let srv = env(r#"["127.0.0.1/32"]"#)
        .set("server", "log_format", "\"json\"")
        // The request span and its "answered" event are debug-level: their fields reach
        // the line through the span.
        .set(
            "server",
            "log_level",
            "\"info,oxbus_supervisor::edge::http=debug\"",
        )
        .start()
        .await;

    // A REST request in the proxy's trace: the service's own log line, relayed from the
    // worker, and the server's line about the request.
    let (trace, _, cid) = echo(&srv, &[("traceparent", INCOMING)]).await;
    assert_eq!(trace, INCOMING_TRACE);
    let line = wait_line(&srv, "the service's log line", |v| {
        v["target"] == "oxbus::python" && v["cid"] == cid.as_str()
    })
    .await;
    assert_eq!(line["service"], "tr.echo", "{line}");
    assert_eq!(line["trace_id"], INCOMING_TRACE, "{line}");
    assert_eq!(line["level"], "info", "{line}");
    assert_eq!(
        line["message"],
        format!("echo in trace {INCOMING_TRACE}"),
        "{line}"
    );
    assert_eq!(line["fields"]["logger"], "tr.echo", "{line}");
    let answered = wait_line(&srv, "the request's answered line", |v| {
        v["message"] == "answered" && v["cid"] == cid.as_str()
    })
    .await;
    assert_eq!(answered["service"], "tr.echo", "{answered}");
    assert_eq!(answered["trace_id"], INCOMING_TRACE, "{answered}");
    assert_eq!(answered["fields"]["status"], 200, "{answered}");

    // A service's invoke keeps its trace in process, and so does invoke_async through the
    // server: the callee's log line has its own cid and the caller's trace id.
    let r = srv.get("/outer").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let outer_trace = j["trace_id"].as_str().unwrap().to_owned();
    assert!(is_hex(&outer_trace, 32), "{j}");
    assert_ne!(outer_trace, INCOMING_TRACE);
    assert_eq!(j["inner"]["trace_id"], outer_trace.as_str(), "{j}");
    let later_cid = j["later_cid"].as_str().unwrap().to_owned();
    let later = wait_line(&srv, "the invoke_async callee's log line", |v| {
        v["cid"] == later_cid.as_str() && v["target"] == "oxbus::python"
    })
    .await;
    assert_eq!(later["service"], "tr.later", "{later}");
    assert_eq!(later["trace_id"], outer_trace.as_str(), "{later}");

    // The admin API's invoke and a scheduled job's run start traces of their own.
    let r = admin(&srv, "POST", "/v1/invoke/tr.echo", Value::Null).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let admin_trace = r.json()["trace_id"].as_str().unwrap().to_owned();
    assert!(is_hex(&admin_trace, 32));
    assert!(admin_trace != INCOMING_TRACE && admin_trace != outer_trace);
    let r = admin(
        &srv,
        "PUT",
        "/v1/jobs/traced",
        json!({"type": "one_time", "service": "tr.echo", "start_date": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert!(r.status < 300, "{:?}", String::from_utf8_lossy(&r.body));
    let r = admin(&srv, "POST", "/v1/jobs/traced/execute", Value::Null).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let run_cid = r.json()["run"]["cid"].as_str().unwrap().to_owned();
    let run = wait_line(&srv, "the job run's log line", |v| {
        v["cid"] == run_cid.as_str() && v["target"] == "oxbus::python"
    })
    .await;
    let run_trace = run["trace_id"].as_str().expect("a trace id").to_owned();
    assert!(is_hex(&run_trace, 32), "{run}");
    assert!(![INCOMING_TRACE, &outer_trace, &admin_trace].contains(&run_trace.as_str()));

    // A record far over 16 KiB is cut, on one line that still parses.
    let r = srv.get("/loud").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let loud = wait_line(&srv, "the loud record", |v| {
        v["service"] == "tr.loud" && v["target"] == "oxbus::python"
    })
    .await;
    let message = loud["message"].as_str().unwrap();
    assert!(message.starts_with("big:xxx"), "{}", &message[..40]);
    let marker = format!("…[truncated {} bytes]", 40_004 - 16 * 1024);
    assert!(
        message.ends_with(&marker),
        "{}",
        &message[message.len() - 60..]
    );
    assert_eq!(message.len(), 16 * 1024 + marker.len());

    // Every line so far parses (json_lines panics otherwise), the start-up line included.
    let lines = json_lines(&srv);
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "oxbus server starting" && v["fields"]["listen"].is_string()),
        "no start-up line"
    );
    srv.assert_no_errors(&[]);
}
