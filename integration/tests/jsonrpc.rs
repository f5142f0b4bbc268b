//! JSON-RPC 2.0 channels against the real binary and real Python workers: every example of
//! the specification's section 7 answered as the specification says (services deployed here
//! stand in for its subtract, sum, update, notify_hello and get_data), the error codes
//! -32602 and -32603 from the worker, concurrent batches answered in order, the allow list,
//! `self.channel.type`, and channels created, changed and exported through the admin API.

use oxbus_integration::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SERVICES: &str = r#"
import json
import os
import time

from oxbus import Conflict, Service

DIR = os.environ['RPCTEST_DIR']


def _mark(name):
    open(os.path.join(DIR, name), 'w').close()


class Subtract(Service):
    name = 'subtract'

    def handle(self):
        p = self.request.payload
        if isinstance(p, list):
            minuend, subtrahend = p
        else:
            minuend, subtrahend = p['minuend'], p['subtrahend']
        self.response.payload = minuend - subtrahend


class Sum(Service):
    name = 'sum'

    def handle(self):
        self.response.payload = sum(self.request.payload)


class Update(Service):
    name = 'update'

    def handle(self):
        _mark('update-' + '_'.join(map(str, self.request.payload)))


class NotifyHello(Service):
    name = 'notify_hello'

    def handle(self):
        _mark('hello-' + '_'.join(map(str, self.request.payload)))


class NotifySum(Service):
    name = 'notify_sum'

    def handle(self):
        _mark('notify_sum-%d' % sum(self.request.payload))


class GetData(Service):
    name = 'get_data'

    def handle(self):
        self.response.payload = ['hello', 5]


class Typed(Service):
    name = 'typed'
    input = 'customer_id', '-is_active'

    def handle(self):
        self.response.payload = {'customer_id': self.request.input.customer_id}


class Boom(Service):
    name = 'boom'

    def handle(self):
        raise ValueError('secret detail that must not reach the client')


class Refuse(Service):
    name = 'refuse'

    def handle(self):
        raise Conflict(self.cid, 'already exists')


class WhoAmI(Service):
    name = 'whoami'

    def handle(self):
        http = self.request.http
        self.response.payload = {
            'channel': self.channel.type, 'payload': self.request.payload,
            'method': http.method, 'path': http.path, 'cid': self.cid,
        }


class Text(Service):
    name = 'text'

    def handle(self):
        self.response.payload = '19'


class Gate(Service):
    """Returns only once `of` calls of run `run` are all running: proof they run at once."""
    name = 'gate'

    def handle(self):
        p = self.request.payload
        d = os.path.join(DIR, 'gate-' + p['run'])
        os.makedirs(d, exist_ok=True)
        _mark(os.path.join(d, str(p['n'])))
        deadline = time.monotonic() + 10
        while len(os.listdir(d)) < p['of']:
            if time.monotonic() > deadline:
                raise Conflict('only %d of %d calls ran at once' % (len(os.listdir(d)), p['of']))
            time.sleep(0.01)
        self.response.payload = {'n': p['n']}
"#;

/// A fresh directory the services mark what they ran in.
fn marks_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("oxbus-rpc-{}-{}", std::process::id(), next_id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn env(marks: &Path) -> Env {
    Env::new()
        .workers(2)
        .service("rpc.py", SERVICES)
        .env("RPCTEST_DIR", marks.to_str().unwrap())
}

async fn post(srv: &Server, path: &str, body: &str) -> Resp {
    srv.request(
        "POST",
        path,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// The answer without the `data` of error objects, which the specification's examples leave
/// out (it is optional) and which these tests check on their own.
fn spec_view(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(spec_view).collect()),
        Value::Object(m) => {
            let mut m = m.clone();
            if let Some(Value::Object(e)) = m.get_mut("error") {
                e.remove("data");
            }
            Value::Object(m)
        }
        other => other.clone(),
    }
}

/// POSTs `body` to `/rpc` and checks the answer against the specification's.
async fn exchange(srv: &Server, body: &str, expected: Value) -> Resp {
    let r = post(srv, "/rpc", body).await;
    assert_eq!(
        r.status,
        200,
        "{body}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(spec_view(&r.json()), expected, "{body}");
    r
}

/// POSTs `body` to `/rpc` and checks that nothing is answered.
async fn nothing(srv: &Server, body: &str) {
    let r = post(srv, "/rpc", body).await;
    assert_eq!(
        r.status,
        204,
        "{body}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.body.is_empty(), "{body}: {:?}", r.body);
    assert_eq!(r.cid().len(), 20);
}

#[tokio::test]
async fn the_specification_examples_get_the_specification_answers() {
    let marks = marks_dir();
    let srv = env(&marks).jsonrpc_channel("/rpc", &[]).start().await;

    // rpc call with positional parameters
    let r = exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
        json!({"jsonrpc": "2.0", "result": 19, "id": 1}),
    )
    .await;
    assert_eq!(r.cid().len(), 20);
    exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}"#,
        json!({"jsonrpc": "2.0", "result": -19, "id": 2}),
    )
    .await;
    // rpc call with named parameters
    exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
        json!({"jsonrpc": "2.0", "result": 19, "id": 3}),
    )
    .await;
    exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}"#,
        json!({"jsonrpc": "2.0", "result": 19, "id": 4}),
    )
    .await;
    // a Notification: run, not answered; one of a method that does not exist: not answered
    nothing(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#,
    )
    .await;
    assert!(marks.join("update-1_2_3_4_5").exists());
    nothing(&srv, r#"{"jsonrpc": "2.0", "method": "foobar"}"#).await;
    // rpc call of non-existent method
    let r = exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#,
        json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
    )
    .await;
    assert_eq!(r.json()["error"]["data"]["cid"], r.cid());
    // rpc call with invalid JSON
    exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
        json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}),
    )
    .await;
    // rpc call with invalid Request object
    let r = exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
        json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}),
    )
    .await;
    let reason = r.json()["error"]["data"]["error"].clone();
    assert!(reason.as_str().unwrap().contains("method"), "{reason}");
    // rpc call Batch, invalid JSON
    exchange(
        &srv,
        r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"#,
        json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}),
    )
    .await;
    // rpc call with an empty Array
    exchange(
        &srv,
        "[]",
        json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}),
    )
    .await;
    // rpc call with an invalid Batch (but not empty)
    let invalid = json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null});
    exchange(&srv, "[1]", json!([invalid])).await;
    // rpc call with invalid Batch
    exchange(
        &srv,
        "[1,2,3]",
        json!([invalid.clone(), invalid.clone(), invalid.clone()]),
    )
    .await;
    // rpc call Batch
    let r = exchange(
        &srv,
        r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#,
        json!([
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
        ]),
    )
    .await;
    assert!(marks.join("hello-7").exists());
    // Each call of a batch has its own cid: the request's, with the call's index.
    let cid = r.cid();
    assert_eq!(r.json()[2]["error"]["data"]["cid"], format!("{cid}.3"));
    assert_eq!(r.json()[3]["error"]["data"]["cid"], format!("{cid}.4"));
    // rpc call Batch (all notifications)
    nothing(
        &srv,
        r#"[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [8]}
    ]"#,
    )
    .await;
    assert!(marks.join("notify_sum-7").exists());
    assert!(marks.join("hello-8").exists());

    // Beyond section 7: an id of null is answered (it is not a notification), and an id is
    // echoed exactly as written.
    exchange(
        &srv,
        r#"{"jsonrpc": "2.0", "method": "sum", "params": [1], "id": null}"#,
        json!({"jsonrpc": "2.0", "result": 1, "id": null}),
    )
    .await;
    let r = post(
        &srv,
        "/rpc",
        r#"{"jsonrpc": "2.0", "method": "sum", "params": [2], "id": 1.50}"#,
    )
    .await;
    assert_eq!(&r.body[..], br#"{"jsonrpc":"2.0","result":2,"id":1.50}"#);

    // One URL, POST only.
    let r = srv.get("/rpc").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
    assert_eq!(srv.get("/rpc/x").await.status, 404);
    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&marks);
}

#[tokio::test]
async fn service_errors_channel_type_and_concurrent_batches() {
    let marks = marks_dir();
    let srv = env(&marks)
        .jsonrpc_channel("/rpc", &[])
        .channel("/who", &["POST"], "whoami")
        .set("http", "max_body_bytes", "4096")
        .start()
        .await;

    // -32602: the service's SimpleIO input refused (ill-typed, missing, or positional).
    for params in [
        r#"{"customer_id": "abc"}"#,
        r#"{"is_active": true}"#,
        "[1, 2]",
    ] {
        let body =
            format!(r#"{{"jsonrpc": "2.0", "method": "typed", "params": {params}, "id": 1}}"#);
        let r = post(&srv, "/rpc", &body).await;
        let e = &r.json()["error"];
        assert_eq!(e["code"], -32602, "{params}: {}", r.json());
        assert_eq!(e["message"], "Invalid params");
        assert_eq!(e["data"]["cid"], r.cid());
        if !params.starts_with('[') {
            assert_eq!(e["data"]["field"], "customer_id", "{params}");
        }
    }
    let r = post(
        &srv,
        "/rpc",
        r#"{"jsonrpc": "2.0", "method": "typed", "params": {"customer_id": "42"}, "id": 1}"#,
    )
    .await;
    assert_eq!(r.json()["result"], json!({"customer_id": 42}));

    // -32603: the service raised; the client gets the cid, the log the traceback.
    let r = post(
        &srv,
        "/rpc",
        r#"{"jsonrpc": "2.0", "method": "boom", "id": 7}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["id"], 7);
    assert_eq!(j["error"]["code"], -32603);
    assert_eq!(j["error"]["message"], "Internal error");
    assert_eq!(j["error"]["data"]["cid"], r.cid());
    assert!(!String::from_utf8_lossy(&r.body).contains("secret detail"));
    let cid = r.cid();
    eventually(Duration::from_secs(5), "the traceback in the log", || {
        let log = srv.log();
        let cid = cid.clone();
        async move { (log.contains("secret detail") && log.contains(&cid)).then_some(()) }
    })
    .await;
    // A Reportable error the service raised: its status is the code, its message the message.
    let r = post(
        &srv,
        "/rpc",
        r#"{"jsonrpc": "2.0", "method": "refuse", "id": 8}"#,
    )
    .await;
    let e = &r.json()["error"];
    assert_eq!(
        (e["code"].as_i64(), e["message"].as_str()),
        (Some(409), Some("already exists"))
    );

    // What the service sees: channel type jsonrpc, params as the payload (an array stays an
    // array), the HTTP request's method and path, its own cid; over REST the same service
    // sees rest.
    let r = post(
        &srv,
        "/rpc",
        r#"[{"jsonrpc": "2.0", "method": "whoami", "params": [1, "a"], "id": 1},
            {"jsonrpc": "2.0", "method": "whoami", "params": {"k": null}, "id": 2},
            {"jsonrpc": "2.0", "method": "whoami", "id": 3}]"#,
    )
    .await;
    let j = r.json();
    let cid = r.cid();
    assert_eq!(
        j[0]["result"],
        json!({"channel": "jsonrpc", "payload": [1, "a"], "method": "POST", "path": "/rpc", "cid": format!("{cid}.0")})
    );
    assert_eq!(j[1]["result"]["payload"], json!({"k": null}));
    assert_eq!(j[2]["result"]["payload"], Value::Null);
    assert_eq!(
        srv.post_json("/who", &json!({})).await.json()["channel"],
        "rest"
    );
    // A text answer is a string result.
    let r = post(
        &srv,
        "/rpc",
        r#"{"jsonrpc": "2.0", "method": "text", "id": 1}"#,
    )
    .await;
    assert_eq!(r.json()["result"], "19");

    // A batch's calls run at once (each gate call returns only when all four are running)
    // and are answered in request order.
    let calls: Vec<Value> = (0..4)
        .map(|n| json!({"jsonrpc": "2.0", "method": "gate", "params": {"run": "a", "n": n, "of": 4}, "id": n}))
        .collect();
    let r = post(&srv, "/rpc", &Value::Array(calls).to_string()).await;
    let j = r.json();
    for n in 0..4 {
        assert_eq!(j[n]["id"], n, "{j}");
        assert_eq!(j[n]["result"], json!({"n": n}), "{j}");
    }

    // The HTTP edge's body limit holds for JSON-RPC as for REST.
    let big = format!(
        r#"{{"jsonrpc": "2.0", "method": "sum", "params": [{}], "id": 1}}"#,
        vec!["1"; 3000].join(",")
    );
    assert_eq!(post(&srv, "/rpc", &big).await.status, 413);

    srv.assert_no_errors(&["boom"]);
    let _ = std::fs::remove_dir_all(&marks);
}

#[tokio::test]
async fn channels_from_the_admin_api_take_effect_at_once_with_their_allow_list() {
    let marks = marks_dir();
    let srv = env(&marks).start().await;
    let token = srv.admin_token();
    let admin = |method: &'static str, path: String, body: Value| {
        let srv = &srv;
        let token = token.clone();
        async move {
            srv.admin(method, &path, Some(&token), body.to_string().as_bytes())
                .await
        }
    };
    let sum = r#"{"jsonrpc": "2.0", "method": "sum", "params": [1, 2, 4], "id": 1}"#;
    let subtract = r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 2}"#;
    assert_eq!(post(&srv, "/api/rpc", sum).await.status, 404);

    // Settings a JSON-RPC channel cannot have, and a services list on a REST channel: 400.
    for bad in [
        json!({"type": "jsonrpc", "url_path": "/api/{x}"}),
        json!({"type": "jsonrpc", "url_path": "/api/rpc", "service": "sum"}),
        json!({"type": "jsonrpc", "url_path": "/api/rpc", "methods": ["GET"]}),
        json!({"type": "jsonrpc", "url_path": "/api/rpc", "data_format": "raw"}),
        json!({"type": "grpc", "url_path": "/api/rpc"}),
        json!({"url_path": "/api/rest", "service": "sum", "services": ["sum"]}),
    ] {
        let r = admin("POST", "/v1/channels".into(), bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }

    let r = admin(
        "POST",
        "/v1/channels".into(),
        json!({"name": "rpc", "type": "jsonrpc", "url_path": "/api/rpc", "services": ["sum"]}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["channel"]["type"], "jsonrpc");
    // Live at once; a deployed service that is not in the list is not found, exactly like
    // one that does not exist.
    let r = post(&srv, "/api/rpc", sum).await;
    assert_eq!(r.json(), json!({"jsonrpc": "2.0", "result": 7, "id": 1}));
    let refused = post(&srv, "/api/rpc", subtract).await.json();
    let unknown = post(
        &srv,
        "/api/rpc",
        r#"{"jsonrpc": "2.0", "method": "no.such", "id": 2}"#,
    )
    .await
    .json();
    assert_eq!(refused["error"]["code"], -32601);
    assert_eq!(
        refused["error"]["data"]["error"],
        "no such service: subtract"
    );
    assert_eq!(
        unknown["error"]["data"]["error"],
        "no such service: no.such"
    );
    assert!(!marks.join("update-1").exists());
    let r = post(
        &srv,
        "/api/rpc",
        r#"{"jsonrpc": "2.0", "method": "update", "params": [1]}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(
        !marks.join("update-1").exists(),
        "a notification outside the allow list ran"
    );

    let one = admin("GET", "/v1/channels/rpc".into(), Value::Null)
        .await
        .json();
    assert_eq!(one["type"], "jsonrpc");
    assert_eq!(one["services"], json!(["sum"]));
    assert_eq!(one["source"], "store");

    // Widened through the admin API: at once.
    let r = admin(
        "PUT",
        "/v1/channels/rpc".into(),
        json!({"type": "jsonrpc", "url_path": "/api/rpc", "services": ["sum", "subtract"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(post(&srv, "/api/rpc", subtract).await.json()["result"], 19);

    // Export lists it under channel_jsonrpc; an import of that document brings it back.
    let doc = admin("GET", "/v1/config".into(), Value::Null).await.json();
    assert_eq!(doc["channel_rest"], json!([]));
    assert_eq!(
        doc["channel_jsonrpc"],
        json!([{"name": "rpc", "type": "jsonrpc", "url_path": "/api/rpc", "methods": [],
                "data_format": "json", "services": ["sum", "subtract"]}])
    );
    let r = admin("DELETE", "/v1/channels/rpc".into(), Value::Null).await;
    assert_eq!(r.status, 200);
    assert_eq!(post(&srv, "/api/rpc", sum).await.status, 404);
    let r = admin("POST", "/v1/config".into(), doc.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let changes = &r.json()["changes"];
    assert_eq!(
        changes,
        &json!([{"kind": "channel_jsonrpc", "name": "rpc", "action": "create"}])
    );
    let r = post(&srv, "/api/rpc", subtract).await.json();
    assert_eq!(r["result"], 19, "{r}");
    // The same document again changes nothing; a JSON-RPC channel under channel_rest is
    // refused, naming the right list.
    let r = admin("POST", "/v1/config".into(), doc.clone()).await;
    assert_eq!(r.json()["changes"], json!([]));
    let misplaced = json!({"channel_rest": doc["channel_jsonrpc"].clone()});
    let r = admin("POST", "/v1/config".into(), misplaced).await;
    assert_eq!(r.status, 400);
    assert!(
        String::from_utf8_lossy(&r.body).contains("channel_jsonrpc"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    srv.assert_no_errors(&[]);
    let _ = std::fs::remove_dir_all(&marks);
}
