//! Issue 19 end to end: outgoing REST and SQL connections used by real services in real
//! workers, against a real HTTP upstream started here (`oxbus_integration::upstream`: plain
//! and TLS with a CA made here, slow, early-closing, error statuses, an oversized answer,
//! an OAuth2 token endpoint and a 401 that forces a refresh) and the machine's PostgreSQL,
//! MariaDB and a SQLite file. Connections are defined through the admin API
//! (`PUT /v1/outgoing/rest|sql/{name}`) while the server runs; services call them with
//! Zato's API (`self.out.rest[name].conn.get(self.cid, params)`, `self.out.sql[name]…`).
//!
//! The services answer what they got — or the exception's class, its bases and its message
//! — so the tests assert on the Python side of each call, and on the upstream's record of
//! what reached it. The last test looks for the plaintext credentials everywhere they must
//! not be: the workers' memory and environment, the server's log, every admin answer.

use oxbus_integration::api::{admin, text};
use oxbus_integration::upstream::{OAuthClient, Upstream};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

/// `e2e.rest`: one REST call described by the payload (`conn`, `method`, `params`,
/// `headers`, `data`); `e2e.rest_async`: the same with the awaitable forms; `e2e.sql`: one
/// SQL call (`conn`, `call`: execute / fetch_one / fetch_all / fetch_value, `sql`,
/// `params`); `e2e.sql_tx`: inserts in a transaction, raising inside it when asked;
/// `e2e.types`: writes a row of every mapped type and compares what comes back;
/// `e2e.sql_async`: awaitable SQL. Every one answers its pid and, on failure, the
/// exception's class, bases and message.
const SERVICES: &str = r#"import base64
import datetime
import decimal
import os
import uuid

from oxbus import Service


def failure(e):
    return {'error': type(e).__name__, 'bases': [c.__name__ for c in type(e).__mro__],
            'message': str(e), 'pid': os.getpid()}


def rest_args(p):
    kw = {}
    if p.get('params') is not None:
        kw['params'] = p['params']
    if p.get('headers') is not None:
        kw['headers'] = p['headers']
    if p.get('method', 'GET') in ('POST', 'PUT', 'PATCH') and 'data' in p:
        kw['data'] = p['data']
    return kw


def rest_answer(svc, r):
    return {'status': r.status_code, 'data': r.data if not isinstance(r.data, bytes) else None,
            'text_len': len(r.text), 'headers': {k.lower(): v for k, v in dict(r.headers).items()},
            'cid': svc.cid, 'trace_id': svc.trace_id, 'pid': os.getpid()}


class Rest(Service):
    name = 'e2e.rest'

    def handle(self):
        p = self.request.payload
        conn = self.out.rest[p['conn']].conn
        try:
            r = getattr(conn, p.get('method', 'GET').lower())(self.cid, **rest_args(p))
        except Exception as e:
            self.response.payload = failure(e)
            return
        self.response.payload = rest_answer(self, r)


class RestAsync(Service):
    name = 'e2e.rest_async'

    async def handle(self):
        p = self.request.payload
        conn = self.out.rest[p['conn']].conn
        try:
            r = await getattr(conn, 'a' + p.get('method', 'GET').lower())(self.cid,
                                                                          **rest_args(p))
        except Exception as e:
            self.response.payload = failure(e)
            return
        self.response.payload = rest_answer(self, r)


def plain(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {'$bytes': base64.b64encode(bytes(v)).decode()}
    if isinstance(v, (decimal.Decimal, uuid.UUID, datetime.date, datetime.time)):
        return {'$' + type(v).__name__: str(v)}
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


class Sql(Service):
    name = 'e2e.sql'

    def handle(self):
        p = self.request.payload
        db = self.out.sql[p['conn']]
        try:
            r = getattr(db, p.get('call', 'fetch_all'))(p['sql'], p.get('params'))
        except Exception as e:
            self.response.payload = failure(e)
            return
        if p.get('call') == 'execute':
            r = {'rowcount': getattr(r, 'rowcount', None)}
        self.response.payload = {'result': plain(r), 'pid': os.getpid()}


class SqlAsync(Service):
    name = 'e2e.sql_async'

    async def handle(self):
        p = self.request.payload
        db = self.out.sql[p['conn']]
        try:
            await db.aexecute(p['insert'], p['params'])
            rows = await db.afetch_all(p['select'])
        except Exception as e:
            self.response.payload = failure(e)
            return
        self.response.payload = {'result': plain(rows), 'pid': os.getpid()}


class SqlTx(Service):
    name = 'e2e.sql_tx'

    def handle(self):
        p = self.request.payload
        db = self.out.sql[p['conn']]
        try:
            with db.transaction() as tx:
                for params in p['rows']:
                    tx.execute(p['insert'], params)
                if p.get('fail'):
                    raise ValueError('rolled back on purpose')
        except ValueError as e:
            self.response.payload = {'rolled_back': str(e)}
            return
        self.response.payload = {'committed': len(p['rows'])}


def typed(spec):
    """(what is bound, what must come back) of one column's test value."""
    kind, v = spec
    if kind == 'jsonb':
        from oxbus.sql import Json
        return Json(v), v
    return plain_typed(kind, v), plain_typed(kind, v)


def plain_typed(kind, v):
    if kind == 'decimal':
        return decimal.Decimal(v)
    if kind == 'datetimetz':
        return datetime.datetime.fromisoformat(v)
    if kind == 'datetime':
        return datetime.datetime.fromisoformat(v)
    if kind == 'date':
        return datetime.date.fromisoformat(v)
    if kind == 'time':
        return datetime.time.fromisoformat(v)
    if kind == 'bytes':
        return base64.b64decode(v)
    if kind == 'uuid':
        return uuid.UUID(v)
    return v


class Types(Service):
    """Inserts one row of Python values, reads it back, and says per column whether the
    value and its type came back as they went in."""
    name = 'e2e.types'

    def handle(self):
        p = self.request.payload
        db = self.out.sql[p['conn']]
        both = {col: typed(spec) for col, spec in p['values'].items()}
        values = {col: want for col, (_, want) in both.items()}
        try:
            db.execute(p['insert'], {col: sent for col, (sent, _) in both.items()})
            row = db.fetch_one(p['select'])
        except Exception as e:
            self.response.payload = failure(e)
            return
        out = {}
        for col, want in values.items():
            got = row[col]
            same = got == want and type(got) is type(want)
            out[col] = True if same else '%r (%s) != %r (%s)' % (
                got, type(got).__name__, want, type(want).__name__)
        self.response.payload = {'columns': out, 'pid': os.getpid()}
"#;

fn env(workers: u32) -> Env {
    Env::new()
        .workers(workers)
        .service("e2e.py", SERVICES)
        .channel("/rest", &["POST"], "e2e.rest")
        .channel("/rest-async", &["POST"], "e2e.rest_async")
        .channel("/sql", &["POST"], "e2e.sql")
        .channel("/sql-async", &["POST"], "e2e.sql_async")
        .channel("/sql-tx", &["POST"], "e2e.sql_tx")
        .channel("/types", &["POST"], "e2e.types")
}

/// PUT a connection definition (`kind`: rest or sql); asserts 200/201.
async fn put_conn(srv: &Server, kind: &str, name: &str, mut def: Value) {
    def["name"] = json!(name);
    let r = admin(
        srv,
        "PUT",
        &format!("/v1/outgoing/{kind}/{name}"),
        def.clone(),
    )
    .await;
    assert!(
        r.status == 200 || r.status == 201,
        "PUT {kind} {name} {def}: {} {}",
        r.status,
        text(&r)
    );
}

/// A service call through `path`; the service always answers 200 with what it got.
async fn call(srv: &Server, path: &str, doc: Value) -> Value {
    let r = srv.post_json(path, &doc).await;
    assert_eq!(r.status, 200, "{path} {doc}: {}", text(&r));
    r.json()
}

/// Asserts the answer is a failure whose class or a base is `class`; its message.
fn failed_with(answer: &Value, class: &str) -> String {
    let bases: Vec<&str> = answer["bases"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a {class}, got {answer}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(bases.contains(&class), "expected a {class}: {answer}");
    answer["message"].as_str().unwrap().to_owned()
}

/// A unique table name for this run.
fn table(tag: &str) -> String {
    format!("e2e_{tag}_{}_{}", std::process::id(), next_id())
}

// ---------------------------------------------------------------------------------------
// REST

#[tokio::test]
async fn rest_get_with_placeholders_carries_the_cid_and_the_trace() {
    let up = Upstream::plain().await;
    let srv = env(2)
        .set("http", "trusted_proxies", "[\"127.0.0.1/32\"]")
        .start()
        .await;
    put_conn(
        &srv,
        "rest",
        "crm",
        json!({
            "address": up.address(),
            "url_path": "/echo/customers/{id}",
            "headers": {"x-default": "d", "x-override": "from-conn"},
        }),
    )
    .await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace}-00f067aa0ba902b7-01");
    let doc = json!({"conn": "crm", "params": {"id": "a b/c", "active": "yes", "tag": ["x", "y"]},
                     "headers": {"x-override": "from-call"}});
    let r = srv
        .request(
            "POST",
            "/rest",
            &[
                ("content-type", "application/json"),
                ("traceparent", &parent),
            ],
            doc.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let cid = r.cid();
    let a = r.json();
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(a["cid"], cid.as_str(), "the service's cid is the request's");
    assert_eq!(a["trace_id"], trace, "{a}");
    let echo = &a["data"];
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo/customers/a%20b%2Fc", "{echo}");
    assert_eq!(echo["query"], "active=yes&tag=x&tag=y", "{echo}");
    assert_eq!(echo["headers"]["x-default"], "d");
    assert_eq!(echo["headers"]["x-override"], "from-call");

    // What reached the upstream: the request's cid and its traceparent as is (Oxbus records
    // no span of its own).
    let seen = up.requests_to("/echo/customers/");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-oxbus-cid"), Some(cid.as_str()));
    let tp = seen[0]
        .header("traceparent")
        .expect("a traceparent upstream");
    assert_eq!(&tp[3..35], trace, "{tp}");
    assert_eq!(&tp[36..52], "00f067aa0ba902b7", "the caller's span: {tp}");

    // Without a traceparent of the client's, the service's own trace goes upstream.
    let a = call(&srv, "/rest", json!({"conn": "crm", "params": {"id": "7"}})).await;
    let tp = up.requests_to("/echo/customers/7")[0]
        .header("traceparent")
        .unwrap()
        .to_owned();
    assert_eq!(a["trace_id"].as_str().unwrap(), &tp[3..35], "{a} {tp}");

    // A placeholder without a value is the caller's mistake, named.
    let a = call(&srv, "/rest", json!({"conn": "crm", "params": {}})).await;
    let msg = a["message"].as_str().unwrap_or_else(|| panic!("{a}"));
    assert!(msg.contains("id") && msg.contains("crm"), "{a}");
}

#[tokio::test]
async fn rest_post_json_error_statuses_and_async_forms() {
    let up = Upstream::plain().await;
    let srv = env(2).start().await;
    put_conn(
        &srv,
        "rest",
        "echo",
        json!({"address": up.address(), "url_path": "/echo/x"}),
    )
    .await;
    put_conn(
        &srv,
        "rest",
        "status",
        json!({"address": up.address(), "url_path": "/status/{code}"}),
    )
    .await;

    let data = json!({"a": 1, "b": ["é", null]});
    let a = call(
        &srv,
        "/rest",
        json!({"conn": "echo", "method": "POST", "data": data}),
    )
    .await;
    assert_eq!(a["status"], 200, "{a}");
    let echo = &a["data"];
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["headers"]["content-type"], "application/json",
        "{echo}"
    );
    let sent: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, data);

    // Error statuses do not raise (Zato's behaviour).
    for code in [404, 503] {
        let a = call(
            &srv,
            "/rest",
            json!({"conn": "status", "params": {"code": code.to_string()}}),
        )
        .await;
        assert_eq!(a["status"], code, "{a}");
        assert_eq!(a["data"], json!({"status": code}), "{a}");
    }

    // The awaitable forms in an async service.
    let a = call(
        &srv,
        "/rest-async",
        json!({"conn": "echo", "method": "PUT", "data": {"k": "v"}, "params": {"q": "1"}}),
    )
    .await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(a["data"]["method"], "PUT");
    assert_eq!(a["data"]["query"], "q=1");
    let a = call(&srv, "/rest-async", json!({"conn": "echo"})).await;
    assert_eq!(a["data"]["method"], "GET", "{a}");
}

#[tokio::test]
async fn rest_failures_arrive_as_python_exceptions_naming_the_connection() {
    let up = Upstream::plain().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let srv = env(2).start().await;
    put_conn(
        &srv,
        "rest",
        "slowpoke",
        json!({"address": up.address(), "url_path": "/slow/5000", "timeout_ms": 300, "retries": 0}),
    )
    .await;
    put_conn(
        &srv,
        "rest",
        "nobody",
        json!({"address": format!("http://127.0.0.1:{closed}"), "retries": 1, "retry_backoff_ms": 10}),
    )
    .await;
    put_conn(
        &srv,
        "rest",
        "hangup",
        json!({"address": up.address(), "url_path": "/close/x", "retries": 2, "retry_backoff_ms": 10}),
    )
    .await;
    put_conn(
        &srv,
        "rest",
        "huge",
        json!({"address": up.address(), "url_path": "/big/{n}", "max_response_bytes": 1000}),
    )
    .await;

    let a = call(&srv, "/rest", json!({"conn": "slowpoke"})).await;
    let msg = failed_with(&a, "OutgoingTimeout");
    assert!(
        msg.contains("slowpoke") && msg.contains(&up.address()),
        "{msg}"
    );

    let a = call(&srv, "/rest", json!({"conn": "nobody"})).await;
    let msg = failed_with(&a, "OutgoingConnectionError");
    assert!(
        msg.contains("nobody") && msg.contains(&closed.to_string()),
        "{msg}"
    );

    // An early close: the GET (idempotent) is retried `retries` times, then it fails.
    let a = call(&srv, "/rest", json!({"conn": "hangup"})).await;
    assert!(a.get("error").is_some(), "{a}");
    assert!(a["message"].as_str().unwrap().contains("hangup"), "{a}");
    assert_eq!(up.requests_to("/close/").len(), 3, "1 call + 2 retries");
    // A POST is not idempotent: sent once.
    let a = call(
        &srv,
        "/rest",
        json!({"conn": "hangup", "method": "POST", "data": {"x": 1}}),
    )
    .await;
    assert!(a.get("error").is_some(), "{a}");
    assert_eq!(up.requests_to("/close/").len(), 4, "no retry of a POST");

    // An answer over max_response_bytes fails; one under it does not.
    let a = call(
        &srv,
        "/rest",
        json!({"conn": "huge", "params": {"n": "5000"}}),
    )
    .await;
    assert!(a.get("error").is_some(), "{a}");
    let msg = a["message"].as_str().unwrap();
    assert!(msg.contains("huge") && msg.contains("1000"), "{msg}");
    let a = call(
        &srv,
        "/rest",
        json!({"conn": "huge", "params": {"n": "900"}}),
    )
    .await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(a["text_len"], 900, "{a}");

    // The same workers served all of it: a failed call does not cost a worker.
    assert_eq!(srv.worker_pids().len(), 2);
}

#[tokio::test]
async fn rest_over_tls_with_a_ca_of_the_tests() {
    let dir = std::env::temp_dir().join(format!(
        "oxbus-e2e-tls-{}-{}",
        std::process::id(),
        next_id()
    ));
    let up = Upstream::tls(&dir).await;
    let srv = env(1).start().await;
    put_conn(
        &srv,
        "rest",
        "secure",
        json!({"address": up.address(), "url_path": "/echo/tls",
               "tls": {"ca_file": up.ca_file.as_ref().unwrap().to_str().unwrap()}}),
    )
    .await;
    put_conn(
        &srv,
        "rest",
        "untrusted",
        json!({"address": up.address(), "url_path": "/echo/tls", "retries": 0}),
    )
    .await;
    let a = call(&srv, "/rest", json!({"conn": "secure"})).await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(a["data"]["path"], "/echo/tls");
    // The system's roots do not know the test's CA: a connection error saying TLS.
    let a = call(&srv, "/rest", json!({"conn": "untrusted"})).await;
    let msg = failed_with(&a, "OutgoingConnectionError");
    assert!(msg.contains("untrusted"), "{msg}");
    assert!(
        msg.to_lowercase().contains("tls") || msg.to_lowercase().contains("certificate"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn rest_oauth2_token_cached_and_refreshed_after_a_401() {
    let up = Upstream::plain().await;
    up.oauth(OAuthClient {
        client_id: "e2e-client".into(),
        client_secret: "oauth-secret-Vq81".into(),
        expires_in: 3600,
    });
    let srv = env(1).start().await;
    put_conn(
        &srv,
        "rest",
        "api",
        json!({"address": up.address(), "url_path": "/oauth/thing",
               "auth": {"type": "oauth2", "token_url": format!("{}/token", up.address()),
                        "client_id": "e2e-client", "client_secret": "oauth-secret-Vq81"}}),
    )
    .await;
    let a = call(&srv, "/rest", json!({"conn": "api"})).await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(up.token_requests(), 1);
    let a = call(&srv, "/rest", json!({"conn": "api"})).await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(up.token_requests(), 1, "the token is cached");

    // The token stops working: a 401 makes the server fetch a new one (the call that met
    // the 401 may answer it; the next one at the latest has the new token).
    up.revoke_tokens();
    let a = call(&srv, "/rest", json!({"conn": "api"})).await;
    if a["status"] == 401 {
        let b = call(&srv, "/rest", json!({"conn": "api"})).await;
        assert_eq!(b["status"], 200, "{b}");
    } else {
        assert_eq!(a["status"], 200, "{a}");
    }
    assert_eq!(up.token_requests(), 2, "one refresh");

    // A token endpoint that refuses: an error naming the connection.
    up.oauth(OAuthClient {
        client_id: "e2e-client".into(),
        client_secret: "another".into(),
        expires_in: 3600,
    });
    up.revoke_tokens();
    let mut last = Value::Null;
    for _ in 0..2 {
        last = call(&srv, "/rest", json!({"conn": "api"})).await;
        if last.get("error").is_some() {
            break;
        }
    }
    let msg = last["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a refused token request fails the call: {last}"));
    assert!(msg.contains("api"), "{msg}");
    assert!(!msg.contains("oauth-secret-Vq81"), "{msg}");
}

#[tokio::test]
async fn rest_pool_exhaustion_fails_clearly_after_the_pool_wait() {
    let up = Upstream::plain().await;
    let srv = env(2).start().await;
    put_conn(
        &srv,
        "rest",
        "narrow",
        json!({"address": up.address(), "url_path": "/slow/3000", "pool_size": 1,
               "pool_wait_ms": 300, "timeout_ms": 10000}),
    )
    .await;
    let (a, b) = tokio::join!(
        call(&srv, "/rest", json!({"conn": "narrow"})),
        call(&srv, "/rest", json!({"conn": "narrow"}))
    );
    let (ok, full) = if a.get("error").is_some() {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(ok["status"], 200, "{ok}");
    let msg = failed_with(&full, "PoolFull");
    assert!(msg.contains("narrow"), "{msg}");
    assert_eq!(up.max_in_flight(), 1, "never more than pool_size at once");
}

#[tokio::test]
async fn rest_live_edit_and_delete_apply_without_a_restart() {
    let one = Upstream::plain().await;
    let two = Upstream::plain().await;
    let srv = env(2).start().await;
    let pids = srv.worker_pids();
    put_conn(
        &srv,
        "rest",
        "moving",
        json!({"address": one.address(), "url_path": "/echo/m"}),
    )
    .await;
    let a = call(&srv, "/rest", json!({"conn": "moving"})).await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(one.requests().len(), 1);

    put_conn(
        &srv,
        "rest",
        "moving",
        json!({"address": two.address(), "url_path": "/echo/m"}),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "calls reach the new address",
        || async {
            let a = call(&srv, "/rest", json!({"conn": "moving"})).await;
            (a["status"] == 200 && !two.requests().is_empty()).then_some(())
        },
    )
    .await;
    let before = one.requests().len();
    call(&srv, "/rest", json!({"conn": "moving"})).await;
    assert_eq!(
        one.requests().len(),
        before,
        "the old address is not called again"
    );

    let r = admin(&srv, "DELETE", "/v1/outgoing/rest/moving", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let gone = eventually(
        Duration::from_secs(15),
        "the deleted connection fails",
        || async {
            let a = call(&srv, "/rest", json!({"conn": "moving"})).await;
            a.get("error").is_some().then_some(a)
        },
    )
    .await;
    assert!(
        gone["message"].as_str().unwrap().contains("moving"),
        "{gone}"
    );
    assert_eq!(srv.worker_pids(), pids, "no worker was restarted");
}

// ---------------------------------------------------------------------------------------
// SQL

/// One engine's connection and its dialect for the tests.
struct Db {
    conn: &'static str,
    def: Value,
    /// `CREATE TABLE {t} (...)` of the constraint and transaction tests.
    create: &'static str,
    syntax_error_says: &'static str,
    duplicate_says: &'static str,
}

fn postgres() -> Db {
    Db {
        conn: "pg",
        def: json!({"engine": "postgresql", "url": "postgres://postgres@127.0.0.1:5432/test",
                    "pool_max": 3}),
        create: "CREATE TABLE {t} (id BIGINT PRIMARY KEY, note TEXT)",
        syntax_error_says: "syntax error",
        duplicate_says: "duplicate key",
    }
}

fn mariadb() -> Db {
    Db {
        conn: "maria",
        def: json!({"engine": "mysql", "url": "mysql://root@127.0.0.1:3306/test", "pool_max": 3}),
        create: "CREATE TABLE {t} (id BIGINT PRIMARY KEY, note TEXT)",
        syntax_error_says: "SQL syntax",
        duplicate_says: "Duplicate entry",
    }
}

fn sqlite(dir: &std::path::Path) -> Db {
    let file = dir.join("e2e.db");
    Db {
        conn: "lite",
        def: json!({"engine": "sqlite", "url": format!("sqlite://{}?mode=rwc", file.display())}),
        create: "CREATE TABLE {t} (id INTEGER PRIMARY KEY, note TEXT)",
        syntax_error_says: "syntax error",
        duplicate_says: "UNIQUE constraint failed",
    }
}

async fn sql(srv: &Server, conn: &str, call_: &str, sql: &str, params: Value) -> Value {
    call(
        srv,
        "/sql",
        json!({"conn": conn, "call": call_, "sql": sql, "params": params}),
    )
    .await
}

/// Errors with the database's message, the worker keeps serving, a rolled-back
/// transaction leaves nothing, a committed one everything, the awaitable forms.
async fn sql_behaviour(srv: &Server, db: &Db) {
    let c = db.conn;
    put_conn(srv, "sql", c, db.def.clone()).await;
    let t = table(c);
    let a = sql(
        srv,
        c,
        "execute",
        &db.create.replace("{t}", &t),
        Value::Null,
    )
    .await;
    assert!(a.get("error").is_none(), "{c}: {a}");

    // A syntax error: the database's message; the same worker answers the next call.
    let a = sql(srv, c, "fetch_all", "SELEC 1", Value::Null).await;
    let msg = failed_with(&a, "DatabaseError");
    assert!(msg.contains(db.syntax_error_says), "{c}: {msg}");
    assert!(
        msg.contains(c),
        "{c}: the message names the connection: {msg}"
    );
    let pid = a["pid"].clone();
    let a = sql(srv, c, "fetch_value", "SELECT 41 + 1", Value::Null).await;
    assert_eq!(a["result"], 42, "{c}: {a}");
    assert_eq!(a["pid"], pid, "{c}: the same worker keeps serving");

    // A constraint violation: IntegrityError with the database's message.
    let insert = format!("INSERT INTO {t} (id, note) VALUES (:id, :note)");
    let a = sql(srv, c, "execute", &insert, json!({"id": 1, "note": "one"})).await;
    assert_eq!(a["result"]["rowcount"], 1, "{c}: {a}");
    let a = sql(
        srv,
        c,
        "execute",
        &insert,
        json!({"id": 1, "note": "again"}),
    )
    .await;
    let msg = failed_with(&a, "IntegrityError");
    assert!(msg.contains(db.duplicate_says), "{c}: {msg}");
    assert_eq!(a["pid"], pid);

    // A transaction rolled back by an exception leaves nothing; a committed one stays.
    let rows = json!([{"id": 10, "note": "a"}, {"id": 11, "note": "b"}]);
    let a = call(
        srv,
        "/sql-tx",
        json!({"conn": c, "insert": insert, "rows": rows, "fail": true}),
    )
    .await;
    assert_eq!(a["rolled_back"], "rolled back on purpose", "{c}: {a}");
    let count = format!("SELECT COUNT(*) FROM {t} WHERE id >= 10");
    let a = sql(srv, c, "fetch_value", &count, Value::Null).await;
    assert_eq!(a["result"], 0, "{c}: the rollback left nothing: {a}");
    let a = call(
        srv,
        "/sql-tx",
        json!({"conn": c, "insert": insert, "rows": rows}),
    )
    .await;
    assert_eq!(a["committed"], 2, "{c}: {a}");
    let a = sql(srv, c, "fetch_value", &count, Value::Null).await;
    assert_eq!(a["result"], 2, "{c}: {a}");

    // fetch_one / fetch_all as dicts.
    let a = sql(
        srv,
        c,
        "fetch_all",
        &format!("SELECT id, note FROM {t} WHERE id >= :low ORDER BY id"),
        json!({"low": 10}),
    )
    .await;
    assert_eq!(
        a["result"],
        json!([{"id": 10, "note": "a"}, {"id": 11, "note": "b"}]),
        "{c}: {a}"
    );
    let a = sql(
        srv,
        c,
        "fetch_one",
        &format!("SELECT note FROM {t} WHERE id = :id"),
        json!({"id": 1}),
    )
    .await;
    assert_eq!(a["result"], json!({"note": "one"}), "{c}: {a}");

    // The awaitable forms.
    let a = call(
        srv,
        "/sql-async",
        json!({"conn": c, "insert": insert, "params": {"id": 20, "note": "async"},
               "select": format!("SELECT note FROM {t} WHERE id = 20")}),
    )
    .await;
    assert_eq!(a["result"], json!([{"note": "async"}]), "{c}: {a}");

    let a = sql(srv, c, "execute", &format!("DROP TABLE {t}"), Value::Null).await;
    assert!(a.get("error").is_none(), "{c}: {a}");
}

#[tokio::test]
async fn sql_on_postgresql_mariadb_and_sqlite() {
    let srv = env(1).start().await;
    for db in [postgres(), mariadb(), sqlite(&srv.dir)] {
        sql_behaviour(&srv, &db).await;
    }
}

/// The values of the type test: column → (tag for the service, value as JSON).
fn types_row(columns: &[(&str, &str, &str, Value)]) -> (String, String, Value) {
    let cols: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let ddl = columns
        .iter()
        .map(|c| format!("{} {}", c.0, c.1))
        .collect::<Vec<_>>()
        .join(", ");
    let binds = cols
        .iter()
        .map(|c| format!(":{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let values: serde_json::Map<String, Value> = columns
        .iter()
        .map(|c| (c.0.to_owned(), json!([c.2, c.3])))
        .collect();
    (
        ddl,
        format!("({}) VALUES ({binds})", cols.join(", ")),
        Value::Object(values),
    )
}

async fn round_trip(srv: &Server, conn: &str, columns: &[(&str, &str, &str, Value)]) {
    let t = table(&format!("{conn}_types"));
    let (ddl, insert, values) = types_row(columns);
    let a = sql(
        srv,
        conn,
        "execute",
        &format!("CREATE TABLE {t} ({ddl})"),
        Value::Null,
    )
    .await;
    assert!(a.get("error").is_none(), "{conn}: {a}");
    let a = call(
        srv,
        "/types",
        json!({"conn": conn, "values": values,
               "insert": format!("INSERT INTO {t} {insert}"),
               "select": format!("SELECT * FROM {t}")}),
    )
    .await;
    sql(
        srv,
        conn,
        "execute",
        &format!("DROP TABLE {t}"),
        Value::Null,
    )
    .await;
    let cols = a["columns"]
        .as_object()
        .unwrap_or_else(|| panic!("{conn}: {a}"));
    let wrong: Vec<String> = cols
        .iter()
        .filter(|(_, v)| **v != json!(true))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    assert!(wrong.is_empty(), "{conn}: {wrong:#?}");
    assert_eq!(cols.len(), columns.len());
}

#[tokio::test]
async fn sql_types_round_trip_per_engine() {
    let srv = env(1).start().await;
    let lite = sqlite(&srv.dir);
    for db in [&postgres(), &mariadb(), &lite] {
        put_conn(&srv, "sql", db.conn, db.def.clone()).await;
    }
    round_trip(
        &srv,
        "pg",
        &[
            ("i", "BIGINT", "int", json!(-9_007_199_254_740_993_i64)),
            ("f", "DOUBLE PRECISION", "float", json!(2.5)),
            (
                "d",
                "NUMERIC(30,10)",
                "decimal",
                json!("1234567890123456.0123456789"),
            ),
            ("s", "TEXT", "text", json!("é ✓ \"q\"")),
            ("b", "BYTEA", "bytes", json!("AAEC/w==")),
            ("ok", "BOOLEAN", "bool", json!(true)),
            (
                "tz",
                "TIMESTAMPTZ",
                "datetimetz",
                json!("2026-12-06T10:11:12.123456+00:00"),
            ),
            (
                "ts",
                "TIMESTAMP",
                "datetime",
                json!("2026-12-06T10:11:12.5"),
            ),
            ("dt", "DATE", "date", json!("2026-02-28")),
            ("tm", "TIME", "time", json!("23:59:58.25")),
            ("j", "JSONB", "jsonb", json!({"a": [1, "x", null]})),
            (
                "u",
                "UUID",
                "uuid",
                json!("12345678-1234-5678-1234-567812345678"),
            ),
            ("ia", "BIGINT[]", "json", json!([1, 2, 3])),
            ("ta", "TEXT[]", "json", json!(["a", "b"])),
            ("n", "TEXT", "json", Value::Null),
        ],
    )
    .await;
    round_trip(
        &srv,
        "maria",
        &[
            ("i", "BIGINT", "int", json!(-9_007_199_254_740_993_i64)),
            ("f", "DOUBLE", "float", json!(2.5)),
            (
                "d",
                "DECIMAL(30,10)",
                "decimal",
                json!("1234567890123456.0123456789"),
            ),
            (
                "s",
                "TEXT CHARACTER SET utf8mb4",
                "text",
                json!("é ✓ \"q\""),
            ),
            ("b", "BLOB", "bytes", json!("AAEC/w==")),
            (
                "ts",
                "DATETIME(6)",
                "datetime",
                json!("2026-12-06T10:11:12.5"),
            ),
            ("dt", "DATE", "date", json!("2026-02-28")),
            ("n", "TEXT", "json", Value::Null),
        ],
    )
    .await;
    round_trip(
        &srv,
        "lite",
        &[
            ("i", "INTEGER", "int", json!(-9_007_199_254_740_993_i64)),
            ("f", "REAL", "float", json!(2.5)),
            ("s", "TEXT", "text", json!("é ✓ \"q\"")),
            ("b", "BLOB", "bytes", json!("AAEC/w==")),
            ("n", "TEXT", "json", Value::Null),
        ],
    )
    .await;
}

#[tokio::test]
async fn eight_workers_never_hold_more_pg_backends_than_pool_max() {
    let srv = env(8).start().await;
    put_conn(
        &srv,
        "sql",
        "hammer",
        json!({"engine": "postgresql", "url": "postgres://postgres@127.0.0.1:5432/test",
               "pool_max": 3, "pool_wait_ms": 20000}),
    )
    .await;
    use sqlx::Connection;
    let mut pg = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    let backends = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'oxbus:hammer'";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let srv = &srv;
        async move {
            let calls = (0..48).map(|_| {
                sql(
                    srv,
                    "hammer",
                    "fetch_value",
                    "SELECT 1 FROM pg_sleep(0.05)",
                    Value::Null,
                )
            });
            let answers = futures_util::future::join_all(calls).await;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            answers
        }
    };
    let watch = async {
        let mut most = 0_i64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let n: i64 = sqlx::query_scalar(backends)
                .fetch_one(&mut pg)
                .await
                .unwrap();
            most = most.max(n);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        most
    };
    let (answers, most) = tokio::join!(load, watch);
    for a in &answers {
        assert_eq!(a["result"], 1, "{a}");
    }
    let pids: std::collections::BTreeSet<String> =
        answers.iter().map(|a| a["pid"].to_string()).collect();
    assert!(
        pids.len() > 1,
        "the calls came from several workers: {pids:?}"
    );
    assert!(
        most >= 1,
        "the watch saw the pool's backends (application_name)"
    );
    assert!(most <= 3, "{most} backends for pool_max 3");
}

// ---------------------------------------------------------------------------------------
// No credential where it must not be

/// Whether any readable region of process `pid`'s memory holds `needle`.
fn memory_holds(pid: u32, needles: &[&str]) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = u64::from_str_radix(lo, 16).unwrap();
        let hi = u64::from_str_radix(hi, 16).unwrap();
        let mut buf = vec![0u8; (hi - lo) as usize];
        if mem.seek(SeekFrom::Start(lo)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for n in needles {
            if buf.windows(n.len()).any(|w| w == n.as_bytes()) {
                found.push(format!("{n} in {line}"));
            }
        }
    }
    found
}

/// A fake PostgreSQL server on loopback that asks for a cleartext password: the password a
/// client sends on its first connection (then it hangs up).
async fn fake_pg_password(l: tokio::net::TcpListener) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut s, _) = l.accept().await.unwrap();
    loop {
        let len = s.read_i32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.unwrap();
        if body[..4] == 80877103i32.to_be_bytes() {
            s.write_all(b"N").await.unwrap(); // no TLS
            continue;
        }
        // AuthenticationCleartextPassword.
        s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), b'p');
        let len = s.read_i32().await.unwrap() as usize;
        let mut pw = vec![0; len - 4];
        s.read_exact(&mut pw).await.unwrap();
        return String::from_utf8_lossy(&pw)
            .trim_end_matches('\0')
            .to_owned();
    }
}

#[tokio::test]
async fn no_credential_in_workers_logs_or_admin_answers() {
    let up = Upstream::plain().await;
    up.oauth(OAuthClient {
        client_id: "e2e-client".into(),
        client_secret: "cred-oauth-Zr7Kq2".into(),
        expires_in: 3600,
    });
    let secrets = [
        "cred-basic-Hx9Wm4",
        "cred-apikey-Pl3Nv8",
        "cred-bearer-Qt6Jd1",
        "cred-oauth-Zr7Kq2",
        "cred-sqlpw-Bn5Yc0",
    ];
    let srv = env(2).start().await;
    // Answers of /status/200 carry no header back: what reaches the worker is the status.
    let target = json!({"address": up.address(), "url_path": "/status/200"});
    let mut basic = target.clone();
    basic["auth"] = json!({"type": "basic", "username": "ann", "password": secrets[0]});
    let mut key = target.clone();
    key["auth"] = json!({"type": "apikey", "header": "X-Api-Key", "key": secrets[1]});
    let mut bearer = target.clone();
    bearer["auth"] = json!({"type": "bearer", "token": secrets[2]});
    let mut oauth = target.clone();
    oauth["url_path"] = json!("/oauth/x");
    oauth["auth"] = json!({"type": "oauth2", "token_url": format!("{}/token", up.address()),
                           "client_id": "e2e-client", "client_secret": secrets[3]});
    put_conn(&srv, "rest", "c-basic", basic).await;
    put_conn(&srv, "rest", "c-key", key).await;
    put_conn(&srv, "rest", "c-bearer", bearer).await;
    put_conn(&srv, "rest", "c-oauth", oauth).await;
    put_conn(
        &srv,
        "sql",
        "c-sql",
        json!({"engine": "postgresql", "url": "postgres://postgres@127.0.0.1:5432/test",
               "password": secrets[4]}),
    )
    .await;
    // The shared PostgreSQL trusts 127.0.0.1: it never asks c-sql for its password, so the
    // calls below prove the password opens but not that it is sent. A fake server that asks
    // for it (in clear) shows that the server sends it, from a call of a worker, while the
    // scans below find it in no worker.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let asked = tokio::spawn(fake_pg_password(fake));
    put_conn(
        &srv,
        "sql",
        "c-sql-asked",
        json!({"engine": "postgresql", "url": format!("postgres://app@127.0.0.1:{fake_port}/db"),
               "password": secrets[4], "pool_wait_ms": 3000}),
    )
    .await;
    let a = sql(&srv, "c-sql-asked", "fetch_value", "SELECT 1", Value::Null).await;
    assert!(
        a.get("error").is_some(),
        "the fake server answers no query: {a}"
    );
    assert_eq!(
        asked.await.unwrap(),
        secrets[4],
        "the password the server sent"
    );

    // Every connection used from both workers (a few calls each).
    for _ in 0..3 {
        for c in ["c-basic", "c-key", "c-bearer"] {
            let a = call(&srv, "/rest", json!({"conn": c})).await;
            assert_eq!(a["status"], 200, "{c}: {a}");
        }
        let a = call(&srv, "/rest", json!({"conn": "c-oauth"})).await;
        assert!(a["status"] == 200, "{a}");
        let a = sql(&srv, "c-sql", "fetch_value", "SELECT 1", Value::Null).await;
        assert_eq!(a["result"], 1, "{a}");
    }
    // The credentials did reach the upstream (so they were in use).
    let reqs = up.requests();
    use base64::Engine;
    let basic_header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ann:{}", secrets[0]))
    );
    assert!(
        reqs.iter()
            .any(|r| r.header("authorization") == Some(basic_header.as_str()))
    );
    assert!(
        reqs.iter()
            .any(|r| r.header("x-api-key") == Some(secrets[1]))
    );
    let bearer_header = format!("Bearer {}", secrets[2]);
    assert!(
        reqs.iter()
            .any(|r| r.header("authorization") == Some(bearer_header.as_str()))
    );
    assert!(up.token_requests() >= 1);

    // The workers: memory and environment.
    let pids = srv.worker_pids();
    assert_eq!(pids.len(), 2);
    let mut needles: Vec<&str> = secrets.to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("ann:{}", secrets[0]));
    needles.push(&b64);
    for pid in &pids {
        let found = memory_holds(*pid, &needles);
        assert!(found.is_empty(), "worker {pid}'s memory: {found:#?}");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        for n in &needles {
            assert!(
                !environ.windows(n.len()).any(|w| w == n.as_bytes()),
                "worker {pid}'s environment holds {n}"
            );
        }
    }
    // A needle the scan must find, or it proves nothing: the service module's source.
    assert!(
        !memory_holds(pids[0], &["rolled back on purpose"]).is_empty(),
        "the memory scan reads the worker's heap"
    );

    // The admin API: each connection, the lists, the export.
    let mut answers = Vec::new();
    for (kind, name) in [
        ("rest", "c-basic"),
        ("rest", "c-key"),
        ("rest", "c-bearer"),
        ("rest", "c-oauth"),
        ("sql", "c-sql"),
        ("sql", "c-sql-asked"),
    ] {
        let r = admin(
            &srv,
            "GET",
            &format!("/v1/outgoing/{kind}/{name}"),
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200, "{}", text(&r));
        answers.push(text(&r));
    }
    for path in [
        "/v1/outgoing/rest",
        "/v1/outgoing/sql",
        "/v1/config",
        "/v1/audit",
    ] {
        let r = admin(&srv, "GET", path, Value::Null).await;
        assert_eq!(r.status, 200, "{path}: {}", text(&r));
        answers.push(text(&r));
    }
    let log = srv.log();
    for n in &needles {
        for a in &answers {
            assert!(!a.contains(n), "an admin answer holds {n}: {a}");
        }
        assert!(!log.contains(n), "the server's log holds {n}");
    }
}
