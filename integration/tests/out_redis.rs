//! Issue 21, outgoing Redis end to end: connections defined through the admin API while the
//! server runs, used by real services in real workers (`self.out.redis[name]`,
//! `self.kvdb.conn`) against the machine's Redis (127.0.0.1:6379). Each test uses keys
//! under its own random prefix and deletes them at the end; what the services did is also
//! checked with a RESP client of the test's own ([`Resp2`]), not only through Oxbus.
//!
//! Redis "going away" is a relay the test controls ([`Relay`]) or a listener that accepts
//! and never answers; the shared Redis itself is never stopped or reconfigured.

use base64::Engine;
use oxbus_integration::api::{self, admin, text};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const REDIS: &str = "redis://127.0.0.1:6379/0";

/// `redis.call`: runs `ops` (`[method, args, kwargs]`) one by one on a connection (`conn`,
/// `decode`; `kvdb`: self.kvdb.conn) and answers each result or exception; `redis.pipe`:
/// queues `ops` in a pipeline (`transaction`) and executes it (`raise`);
/// `redis.async`: `redis.call` with the awaitable `a*` forms (and `aexecute`). Arguments
/// `{"$b": base64}` are bytes; results: bytes as `{"$b": …}`, a float as `{"$f": …}`, a
/// set as `{"$set": sorted}`, a dict as `{"$dict": [[k, v]…] sorted}`, an exception as
/// `{"error": class, "bases", "message": str(e), "redis_message", "code", "conn"}`.
const SERVICES: &str = r#"import base64

from oxbus import Service


def failure(e):
    return {'error': type(e).__name__, 'bases': [c.__name__ for c in type(e).__mro__],
            'message': str(e), 'redis_message': getattr(e, 'message', None),
            'code': getattr(e, 'code', None), 'conn': getattr(e, 'conn', None)}


def enc(v):
    if isinstance(v, BaseException):
        return failure(v)
    if isinstance(v, bytes):
        return {'$b': base64.b64encode(v).decode()}
    if isinstance(v, float):
        return {'$f': v}
    if isinstance(v, set):
        return {'$set': [enc(x) for x in sorted(v)]}
    if isinstance(v, dict):
        return {'$dict': [[enc(k), enc(x)] for k, x in sorted(v.items())]}
    if isinstance(v, (list, tuple)):
        return [enc(x) for x in v]
    return v


def dec(v):
    if isinstance(v, dict) and '$b' in v:
        return base64.b64decode(v['$b'])
    if isinstance(v, dict):
        return {k: dec(x) for k, x in v.items()}
    if isinstance(v, list):
        return [dec(x) for x in v]
    return v


def conn(svc, p):
    if p.get('kvdb'):
        return svc.kvdb.conn
    return svc.out.redis.get(p['conn'], decode_responses=p.get('decode', False))


def op(o):
    return o[0], dec(o[1]) if len(o) > 1 else [], dec(o[2]) if len(o) > 2 else {}


class Call(Service):
    name = 'redis.call'

    def handle(self):
        p = self.request.payload
        r = conn(self, p)
        out = []
        for o in p['ops']:
            method, args, kwargs = op(o)
            try:
                v = getattr(r, method)(*args, **kwargs)
                if method == 'scan_iter':
                    v = sorted(v)
                out.append({'ok': enc(v)})
            except Exception as e:
                out.append(failure(e))
        self.response.payload = {'results': out}


class Pipe(Service):
    name = 'redis.pipe'

    def handle(self):
        p = self.request.payload
        pipe = conn(self, p).pipeline(transaction=p.get('transaction', True))
        for o in p['ops']:
            method, args, kwargs = op(o)
            getattr(pipe, method)(*args, **kwargs)
        try:
            self.response.payload = {'ok': enc(pipe.execute(raise_on_error=p.get('raise', True)))}
        except Exception as e:
            self.response.payload = failure(e)


class Async(Service):
    name = 'redis.async'

    async def handle(self):
        p = self.request.payload
        r = conn(self, p)
        out = []
        for o in p['ops']:
            method, args, kwargs = op(o)
            try:
                if method == 'pipeline':
                    pipe = r.pipeline(**kwargs)
                    for m, a, k in (op(x) for x in args):
                        getattr(pipe, m)(*a, **k)
                    v = await pipe.aexecute()
                else:
                    v = await getattr(r, 'a' + method)(*args, **kwargs)
                out.append({'ok': enc(v)})
            except Exception as e:
                out.append(failure(e))
        self.response.payload = {'results': out}
"#;

fn env() -> Env {
    Env::new()
        .workers(2)
        .service("redis_svc.py", SERVICES)
        .channel("/redis", &["POST"], "redis.call")
        .channel("/redis-pipe", &["POST"], "redis.pipe")
        .channel("/redis-async", &["POST"], "redis.async")
}

/// A prefix of keys no other test or run uses.
fn prefix(tag: &str) -> String {
    format!("oxbus-test:{tag}:{}:{}:", std::process::id(), next_id())
}

/// `{"$b": base64}` of `bytes`.
fn b(bytes: impl AsRef<[u8]>) -> Value {
    json!({"$b": base64::engine::general_purpose::STANDARD.encode(bytes.as_ref())})
}

async fn put_conn(srv: &Server, name: &str, mut def: Value) -> Value {
    def["name"] = json!(name);
    let r = admin(
        srv,
        "PUT",
        &format!("/v1/outgoing/redis/{name}"),
        def.clone(),
    )
    .await;
    assert!(
        r.status == 200 || r.status == 201,
        "PUT redis {name} {def}: {} {}",
        r.status,
        text(&r)
    );
    r.json()
}

/// Runs `ops` on connection `conn` through `redis.call`; the results.
async fn run(srv: &Server, conn: &str, ops: Value) -> Vec<Value> {
    run_doc(srv, "/redis", json!({"conn": conn, "ops": ops})).await
}

async fn run_doc(srv: &Server, path: &str, doc: Value) -> Vec<Value> {
    let r = srv.post_json(path, &doc).await;
    assert_eq!(r.status, 200, "{path} {doc}: {}", text(&r));
    r.json()["results"].as_array().unwrap().clone()
}

/// The value of a successful result, or a panic naming the failure.
fn ok(result: &Value) -> &Value {
    result
        .get("ok")
        .unwrap_or_else(|| panic!("expected a result, got {result}"))
}

/// Asserts a result is a failure of class (or base) `class`; it.
fn failed<'a>(result: &'a Value, class: &str) -> &'a Value {
    let bases: Vec<&str> = result["bases"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a {class}, got {result}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(bases.contains(&class), "expected a {class}: {result}");
    result
}

/// A RESP2 client of the test's own: what Redis really holds, and the cleanup.
struct Resp2 {
    r: BufReader<TcpStream>,
}

#[derive(Debug, PartialEq)]
enum R {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Err(String),
    Array(Vec<R>),
}

impl Resp2 {
    async fn connect() -> Resp2 {
        let s = TcpStream::connect("127.0.0.1:6379")
            .await
            .expect("the machine's Redis on 127.0.0.1:6379");
        Resp2 {
            r: BufReader::new(s),
        }
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> R {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.r.get_mut().write_all(&out).await.unwrap();
        self.read().await
    }

    fn read(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = R> + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            self.r.read_line(&mut line).await.unwrap();
            let (tag, rest) = line.trim_end().split_at(1);
            match tag {
                "+" => R::Simple(rest.into()),
                "-" => R::Err(rest.into()),
                ":" => R::Int(rest.parse().unwrap()),
                "$" if rest == "-1" => R::Nil,
                "$" => {
                    let mut buf = vec![0; rest.parse::<usize>().unwrap() + 2];
                    self.r.read_exact(&mut buf).await.unwrap();
                    buf.truncate(buf.len() - 2);
                    R::Bulk(buf)
                }
                "*" if rest == "-1" => R::Nil,
                "*" => {
                    let n: usize = rest.parse().unwrap();
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.read().await);
                    }
                    R::Array(items)
                }
                _ => panic!("unexpected RESP line {line:?}"),
            }
        })
    }

    async fn get(&mut self, key: &str) -> R {
        self.cmd(&[b"GET", key.as_bytes()]).await
    }

    /// Deletes every key under `prefix`; how many there were.
    async fn clean(&mut self, prefix: &str) -> usize {
        let pattern = format!("{prefix}*");
        let R::Array(keys) = self.cmd(&[b"KEYS", pattern.as_bytes()]).await else {
            panic!("KEYS answered no array")
        };
        for k in &keys {
            let R::Bulk(k) = k else { panic!("{k:?}") };
            self.cmd(&[b"DEL", k]).await;
        }
        keys.len()
    }
}

/// A TCP relay to the machine's Redis on a port of its own, which the test starts
/// (accepting and forwarding) and stops (closing the listener and every relayed
/// connection): Redis "going away" without touching it.
struct Relay {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// A relay on a free port, not listening yet.
    async fn new() -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        Relay { port, task: None }
    }

    async fn start(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut a, _)) = l.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    if let Ok(mut r) = TcpStream::connect("127.0.0.1:6379").await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut r).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and cuts every relayed connection (the JoinSet aborts its tasks).
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_method_through_a_real_service() {
    let srv = env().start().await;
    put_conn(&srv, "kv", json!({"address": REDIS, "pool_size": 2})).await;
    let p = prefix("methods");
    let k = |s: &str| format!("{p}{s}");
    let r = run(
        &srv,
        "kv",
        json!([
            ["set", [k("s"), "v1"]],
            ["get", [k("s")]],
            ["set", [k("s"), "v2"], {"nx": true}],
            ["set", [k("s"), "v3"], {"xx": true, "ex": 100}],
            ["ttl", [k("s")]],
            ["set", [k("px"), "x"], {"px": 50000}],
            ["persist", [k("px")]],
            ["ttl", [k("px")]],
            ["expire", [k("px"), 30]],
            ["exists", [k("s"), k("px"), k("none")]],
            ["incr", [k("n")]],
            ["incrby", [k("n"), 10]],
            ["decr", [k("n"), 2]],
            ["mset", [{k("m1"): "a", k("m2"): "b"}]],
            ["mget", [[k("m1"), k("none"), k("m2")]]],
            ["hset", [k("h"), "f1", "1"], {"mapping": {"f2": "2", "f3": "3"}}],
            ["hget", [k("h"), "f2"]],
            ["hincrby", [k("h"), "f1", 5]],
            ["hgetall", [k("h")]],
            ["hdel", [k("h"), "f3", "nope"]],
            ["hkeys", [k("h")]],
            ["hlen", [k("h")]],
            ["rpush", [k("l"), "a", "b"]],
            ["lpush", [k("l"), "z"]],
            ["lrange", [k("l"), 0, -1]],
            ["llen", [k("l")]],
            ["lpop", [k("l")]],
            ["rpop", [k("l")]],
            ["sadd", [k("set"), "x", "y", "x"]],
            ["srem", [k("set"), "y"]],
            ["smembers", [k("set")]],
            ["sismember", [k("set"), "x"]],
            ["scard", [k("set")]],
            ["zadd", [k("z"), {"a": 1, "b": 2.5}]],
            ["zscore", [k("z"), "b"]],
            ["zrange", [k("z"), 0, -1], {"withscores": true}],
            ["zrem", [k("z"), "a"]],
            ["keys", [format!("{p}m*")]],
            ["scan_iter", [], {"match": format!("{p}m*"), "count": 2}],
            ["publish", [k("channel"), "hello"]],
            ["ping", []],
            ["execute", ["STRLEN", k("s")]],
            ["delete", [k("s"), k("none")]],
            ["get", [k("s")]],
        ]),
    )
    .await;
    let want = [
        json!(true),
        b("v1"),
        Value::Null, // NX: exists
        json!(true),
        json!(100),
        json!(true),
        json!(true),
        json!(-1),
        json!(true),
        json!(2),
        json!(1),
        json!(11),
        json!(9),
        json!(true),
        json!([b("a"), Value::Null, b("b")]),
        json!(3),
        b("2"),
        json!(6),
        json!({"$dict": [[b("f1"), b("6")], [b("f2"), b("2")], [b("f3"), b("3")]]}),
        json!(1),
        json!([b("f1"), b("f2")]),
        json!(2),
        json!(2),
        json!(3),
        json!([b("z"), b("a"), b("b")]),
        json!(3),
        b("z"),
        b("b"),
        json!(2),
        json!(1),
        json!({"$set": [b("x")]}),
        json!(true),
        json!(1),
        json!(2),
        json!({"$f": 2.5}),
        json!([[b("a"), {"$f": 1.0}], [b("b"), {"$f": 2.5}]]),
        json!(1),
        Value::Null, // keys: order unspecified, checked below
        json!([b(k("m1")), b(k("m2"))]),
        json!(0),
        json!(true),
        json!(2),
        json!(1),
        Value::Null,
    ];
    assert_eq!(r.len(), want.len());
    for (i, (got, want)) in r.iter().zip(&want).enumerate() {
        if i == 37 {
            let mut keys: Vec<String> = ok(got)
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect();
            keys.sort();
            assert_eq!(keys, [b(k("m1")).to_string(), b(k("m2")).to_string()]);
            continue;
        }
        assert_eq!(ok(got), want, "op {i}: {got}");
    }
    // What Redis holds, seen by a client of the test's own.
    let mut redis = Resp2::connect().await;
    assert_eq!(redis.get(&k("n")).await, R::Bulk(b"9".to_vec()));
    assert_eq!(
        redis.cmd(&[b"HGET", k("h").as_bytes(), b"f1"]).await,
        R::Bulk(b"6".to_vec())
    );

    // decode_responses: str values; the a* forms (and a pipeline awaited) the same.
    let r = run_doc(
        &srv,
        "/redis",
        json!({"conn": "kv", "decode": true, "ops": [
            ["get", [k("n")]], ["hgetall", [k("h")]], ["lrange", [k("l"), 0, -1]],
        ]}),
    )
    .await;
    assert_eq!(ok(&r[0]), "9");
    assert_eq!(ok(&r[1]), &json!({"$dict": [["f1", "6"], ["f2", "2"]]}));
    assert_eq!(ok(&r[2]), &json!(["a"]));
    let r = run_doc(
        &srv,
        "/redis-async",
        json!({"conn": "kv", "ops": [
            ["set", [k("as"), "1"], {"ex": 60}],
            ["incr", [k("as")]],
            ["get", [k("as")]],
            ["execute", ["TYPE", k("as")]],
            ["pipeline", [["incr", [k("as")]], ["get", [k("as")]]], {"transaction": true}],
            ["hgetall", [k("h")]],
        ]}),
    )
    .await;
    assert_eq!(ok(&r[0]), &json!(true));
    assert_eq!(ok(&r[1]), &json!(2));
    assert_eq!(ok(&r[2]), &b("2"));
    assert_eq!(ok(&r[3]), "string", "a simple string reply is a str");
    assert_eq!(ok(&r[4]), &json!([3, b("3")]));
    assert_eq!(
        ok(&r[5]),
        &json!({"$dict": [[b("f1"), b("6")], [b("f2"), b("2")]]})
    );

    // The figures count the calls.
    let s = admin(&srv, "GET", "/v1/outgoing/redis/kv/stats", Value::Null).await;
    assert_eq!(s.status, 200, "{}", text(&s));
    let s = s.json();
    assert_eq!(s["type"], "redis");
    assert_eq!(s["pool_size"], 2);
    assert!(s["calls"].as_u64().unwrap() >= 50, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    // The same figures as metrics, labelled type="redis", a page promtool accepts.
    let page = oxbus_integration::prom::scrape_until(&srv, "the Redis series", |pg| {
        pg.get(
            "oxbus_outgoing_calls_total",
            &[("type", "redis"), ("conn", "kv")],
        )
        .is_some_and(|n| n >= 50.0)
    })
    .await;
    oxbus_integration::prom::check(&page.text);
    assert_eq!(
        page.get(
            "oxbus_outgoing_pool_size",
            &[("type", "redis"), ("conn", "kv")]
        ),
        Some(2.0)
    );
    assert_eq!(
        page.get(
            "oxbus_outgoing_errors_total",
            &[("type", "redis"), ("conn", "kv")]
        ),
        Some(0.0)
    );
    // The CLI: list, stats, ping; put with the password from a file; delete.
    let out = api::ok(&srv.cli(&["out", "list", "redis"]));
    assert!(out.contains("redis kv") && out.contains("pool 2"), "{out}");
    let out = api::ok(&srv.cli(&["out", "stats", "redis"]));
    assert!(out.lines().any(|l| l.starts_with("redis kv ")), "{out}");
    let out = api::ok(&srv.cli(&["out", "ping", "redis", "kv"]));
    assert!(out.contains("redis kv: ok"), "{out}");
    let def = srv.dir.join("cli-redis.json");
    std::fs::write(&def, r#"{"address": "redis://127.0.0.1:9"}"#).unwrap();
    let pw = srv.dir.join("cli-redis.pw");
    std::fs::write(&pw, "cli-redis-pw-Tz4\n").unwrap();
    let out = api::ok(&srv.cli(&[
        "out",
        "put",
        "redis",
        "cli",
        def.to_str().unwrap(),
        "--secret-file",
        pw.to_str().unwrap(),
    ]));
    assert!(out.contains("redis connection cli created"), "{out}");
    let out = api::ok(&srv.cli(&["out", "get", "redis", "cli"]));
    assert!(
        out.contains("\"has_secret\": true") && !out.contains("cli-redis-pw"),
        "{out}"
    );
    let bad = srv.cli(&["out", "ping", "redis", "cli"]);
    assert!(!bad.status.success(), "{bad:?}");
    api::ok(&srv.cli(&["out", "delete", "redis", "cli"]));
    assert!(redis.clean(&p).await > 0);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn pipelines_transactions_and_binary_values() {
    let srv = env().start().await;
    put_conn(&srv, "kv", json!({"address": REDIS})).await;
    let p = prefix("pipe");
    let k = |s: &str| format!("{p}{s}");
    let mut redis = Resp2::connect().await;

    // Every byte value, in a key and a value, both ways.
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let mut bkey = k("bin-").into_bytes();
    bkey.extend_from_slice(b"\x00\xff\r\n");
    let r = run(
        &srv,
        "kv",
        json!([
            ["set", [b(&bkey), b(&all)]],
            ["get", [b(&bkey)]],
            ["hset", [k("bh"), b(&bkey), b(&all)]],
            ["hgetall", [k("bh")]],
            ["execute", ["GETRANGE", b(&bkey), 0, 3]]
        ]),
    )
    .await;
    assert_eq!(ok(&r[1]), &b(&all));
    assert_eq!(ok(&r[3]), &json!({"$dict": [[b(&bkey), b(&all)]]}));
    assert_eq!(ok(&r[4]), &b([0u8, 1, 2, 3]));
    assert_eq!(redis.cmd(&[b"GET", &bkey]).await, R::Bulk(all.clone()));

    // A pipeline without a transaction: the commands after an error still run; the error
    // is raised once all ran, or returned in its place.
    let doc = |transaction: bool, raise: bool| {
        json!({"conn": "kv", "transaction": transaction, "raise": raise, "ops": [
            ["set", [k("str"), "x"]],
            ["lpush", [k("str"), "y"]],
            ["incr", [k("cnt")]],
            ["get", [k("cnt")]],
        ]})
    };
    let r = srv
        .post_json("/redis-pipe", &doc(false, false))
        .await
        .json();
    let got = ok(&r).as_array().unwrap();
    assert_eq!(got[0], true);
    let e = failed(&got[1], "RedisError");
    assert!(
        e["redis_message"]
            .as_str()
            .unwrap()
            .starts_with("WRONGTYPE Operation against a key holding the wrong kind of value"),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Redis connection 'kv': command 1 (LPUSH) of the pipeline: WRONGTYPE"),
        "{e}"
    );
    assert_eq!((&got[2], &got[3]), (&json!(1), &b("1")));
    let r = srv.post_json("/redis-pipe", &doc(false, true)).await.json();
    assert_eq!(failed(&r, "RedisError")["code"], "WRONGTYPE");
    assert_eq!(redis.get(&k("cnt")).await, R::Bulk(b"2".to_vec()), "it ran");

    // A transaction with a runtime error: the others are applied (Redis has no rollback),
    // the error raised.
    let r = srv.post_json("/redis-pipe", &doc(true, true)).await.json();
    assert_eq!(failed(&r, "RedisError")["code"], "WRONGTYPE");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("of the transaction"),
        "{r}"
    );
    assert_eq!(redis.get(&k("cnt")).await, R::Bulk(b"3".to_vec()));
    // A command Redis refuses to queue aborts the whole transaction: nothing applied.
    let r = srv
        .post_json(
            "/redis-pipe",
            &json!({"conn": "kv", "ops": [
                ["incr", [k("cnt")]],
                ["execute_command", ["NOSUCHCOMMAND", "x"]],
                ["set", [k("after"), "1"]],
            ]}),
        )
        .await
        .json();
    let e = failed(&r, "RedisError");
    assert_eq!(e["code"], "EXECABORT", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Redis connection \"kv\""),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("unknown command"),
        "{e}"
    );
    assert_eq!(
        redis.get(&k("cnt")).await,
        R::Bulk(b"3".to_vec()),
        "not applied"
    );
    assert_eq!(redis.get(&k("after")).await, R::Nil);
    // A transaction that works: its replies in order, shaped.
    let r = srv
        .post_json(
            "/redis-pipe",
            &json!({"conn": "kv", "ops": [
                ["incr", [k("cnt")]], ["expire", [k("cnt"), 60]], ["ttl", [k("cnt")]],
                ["hset", [k("th")], {"mapping": {"a": 1}}], ["hgetall", [k("th")]],
            ]}),
        )
        .await
        .json();
    assert_eq!(
        ok(&r),
        &json!([4, true, 60, 1, {"$dict": [[b("a"), b("1")]]}])
    );
    // A large pipeline (one call) of 2000 SETs and the GETs back.
    let ops: Vec<Value> = (0..2000)
        .map(|i| json!(["set", [k(&format!("many{i}")), format!("v{i}")]]))
        .chain((0..2000).map(|i| json!(["get", [k(&format!("many{i}"))]])))
        .collect();
    let r = srv
        .post_json(
            "/redis-pipe",
            &json!({"conn": "kv", "transaction": false, "ops": ops}),
        )
        .await
        .json();
    let got = ok(&r).as_array().unwrap();
    assert_eq!(got.len(), 4000);
    assert_eq!(got[3999], b("v1999"));
    assert!(redis.clean(&p).await >= 2000);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn errors_refusals_timeouts_and_an_outage_as_exceptions() {
    let srv = env().start().await;
    put_conn(&srv, "kv", json!({"address": REDIS})).await;
    let p = prefix("errors");
    let k = |s: &str| format!("{p}{s}");
    let r = run(
        &srv,
        "kv",
        json!([
            ["set", [k("str"), "x"]],
            ["hget", [k("str"), "f"]],
            ["execute", ["NOSUCHCOMMAND"]],
            ["execute", ["SELECT", 1]],
            ["execute", ["blpop", k("l"), 0]],
            ["execute", ["SUBSCRIBE", "ch"]],
            ["execute", ["CLIENT", "KILL", "ID", 1]],
            ["execute", ["MULTI"]],
            ["set", [k("x"), null]],
        ]),
    )
    .await;
    let e = failed(&r[1], "RedisError");
    assert_eq!(
        e["redis_message"],
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    assert_eq!(e["conn"], "kv");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("Redis connection \"kv\" (redis://127.0.0.1:6379/0): WRONGTYPE"),
        "{e}"
    );
    let e = failed(&r[2], "RedisError");
    assert_eq!(e["code"], "ERR");
    for (i, what) in [
        (3, "SELECT is refused"),
        (4, "BLPOP is refused: a blocking command"),
        (5, "SUBSCRIBE is refused"),
        (6, "CLIENT is refused"),
        (7, "MULTI is refused"),
    ] {
        let e = failed(&r[i], "InvalidCall");
        assert!(e["message"].as_str().unwrap().contains(what), "{i}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains("\"kv\""),
            "{i}: {e}"
        );
    }
    assert!(
        failed(&r[8], "InvalidCall")["message"]
            .as_str()
            .unwrap()
            .contains("not NoneType"),
    );
    // An unknown connection; self.kvdb.conn without a `kvdb` or `default` connection.
    let r = run(&srv, "nope", json!([["get", ["x"]]])).await;
    assert!(
        failed(&r[0], "UnknownConnection")["message"]
            .as_str()
            .unwrap()
            .contains("no Redis connection \"nope\"")
    );
    let r = run_doc(
        &srv,
        "/redis",
        json!({"kvdb": true, "ops": [["get", ["x"]]]}),
    )
    .await;
    assert!(
        failed(&r[0], "UnknownConnection")["message"]
            .as_str()
            .unwrap()
            .contains("self.kvdb.conn: no Redis connection named \"kvdb\" or \"default\"")
    );

    // A closed port: a connection error at once, naming the connection and its address.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    put_conn(
        &srv,
        "down",
        json!({"address": format!("redis://127.0.0.1:{closed_port}"), "timeout_ms": 5000}),
    )
    .await;
    let r = run(&srv, "down", json!([["get", ["x"]], ["get", ["x"]]])).await;
    for one in &r {
        let e = failed(one, "OutgoingConnectionError");
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains(&format!(
                "Redis connection \"down\" (redis://127.0.0.1:{closed_port})"
            )),
            "{m}"
        );
    }
    // A server that accepts and never answers: a timeout after timeout_ms.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    put_conn(
        &srv,
        "silent",
        json!({"address": format!("redis://127.0.0.1:{silent_port}"), "timeout_ms": 300}),
    )
    .await;
    let r = run(&srv, "silent", json!([["get", ["x"]]])).await;
    let e = failed(&r[0], "OutgoingTimeout");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Redis connection \"silent\""),
        "{e}"
    );
    let ping = admin(&srv, "POST", "/v1/outgoing/redis/silent/ping", Value::Null)
        .await
        .json();
    assert_eq!(ping["ok"], false, "{ping}");
    held.abort();

    // Redis going away and coming back, through a relay: defined while nothing listens
    // (lazily connected: the PUT succeeds), failing meanwhile, working once it listens,
    // failing while it is cut, and working again after: the first call after it came back
    // already works, on both of the pool's connections (a failure is never kept).
    let mut relay = Relay::new().await;
    put_conn(
        &srv,
        "relayed",
        json!({"address": format!("redis://127.0.0.1:{}", relay.port), "pool_size": 2,
               "timeout_ms": 2000}),
    )
    .await;
    let r = run(&srv, "relayed", json!([["set", [k("r"), "1"]]])).await;
    failed(&r[0], "OutgoingConnectionError");
    relay.start().await;
    let key = k("r");
    relayed_works(&srv, &key, "1")
        .await
        .expect("the first calls once the relay listens");
    relay.stop();
    let r = run(&srv, "relayed", json!([["get", [k("r")]]])).await;
    failed(&r[0], "OutgoingConnectionError");
    relay.start().await;
    relayed_works(&srv, &key, "2")
        .await
        .expect("the first calls after the relay came back");
    relayed_works(&srv, &key, "3")
        .await
        .expect("the next calls after the relay came back");
    relay.stop();

    let s = admin(&srv, "GET", "/v1/outgoing/redis/kv/stats", Value::Null)
        .await
        .json();
    assert!(s["errors"].as_u64().unwrap() >= 2, "{s}");
    let mut redis = Resp2::connect().await;
    assert!(redis.clean(&p).await > 0);
}

/// Whether a SET and GET of `n` through connection `relayed` work now.
async fn relayed_works(srv: &Server, key: &str, n: &str) -> Option<()> {
    let r = run(srv, "relayed", json!([["set", [key, n]], ["get", [key]]])).await;
    (r[1].get("ok") == Some(&b(n))).then_some(())
}

/// The plaintext passwords of this test: nowhere but where they are sent.
const SECRET: &str = "redis-pw-Kd82Lm";
const SECRET2: &str = "redis-pw-Vq51Xe";

/// A fake Redis that reads what a connection sends first; the bytes.
async fn first_bytes(l: TcpListener) -> Vec<u8> {
    let (mut s, _) = l.accept().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The client sends AUTH (and its SETINFO) without waiting: read until AUTH's arguments
    // are in or the client gives up.
    while !String::from_utf8_lossy(&got).contains(SECRET) {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test]
async fn admin_definitions_ping_kvdb_and_no_password_in_answers() {
    let srv = env().start().await;
    // Validation names the field.
    for (def, says) in [
        (json!({"address": "http://h"}), "is not redis://"),
        (json!({"address": "redis://u:pw@h"}), "user info"),
        (json!({"address": REDIS, "pool_size": 0}), "pool_size"),
        (json!({"address": REDIS, "timeout_ms": 0}), "timeout_ms"),
        (json!({"address": "redis://h/abc"}), "db number"),
    ] {
        let r = admin(&srv, "PUT", "/v1/outgoing/redis/bad", def.clone()).await;
        assert_eq!(r.status, 400, "{def}: {}", text(&r));
        assert!(text(&r).contains(says), "{def}: {}", text(&r));
        assert!(!text(&r).contains(":pw@"), "{}", text(&r));
    }

    // A password: sealed, never answered; sent to the server it was given for.
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let sent = tokio::spawn(first_bytes(fake));
    let addr = format!("redis://127.0.0.1:{fake_port}/2");
    let created = put_conn(
        &srv,
        "authed",
        json!({"address": addr, "username": "app", "password": SECRET, "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(created["created"], true);
    assert_eq!(created["connection"]["has_secret"], true);
    let r = run(&srv, "authed", json!([["get", ["x"]]])).await;
    failed(&r[0], "OutgoingError");
    let sent = String::from_utf8_lossy(&sent.await.unwrap()).into_owned();
    assert!(
        sent.contains("AUTH") && sent.contains("app") && sent.contains(SECRET),
        "{sent}"
    );
    // An edit without the password keeps it (same host, port and user; another db)...
    let kept = put_conn(
        &srv,
        "authed",
        json!({"address": format!("redis://127.0.0.1:{fake_port}/3"), "username": "app"}),
    )
    .await;
    assert_eq!(kept["connection"]["has_secret"], true);
    // ...but not for another host or user: given again or refused.
    for moved in [
        json!({"address": format!("redis://localhost:{fake_port}/3"), "username": "app"}),
        json!({"address": format!("redis://127.0.0.1:{fake_port}/3"), "username": "root"}),
    ] {
        let r = admin(&srv, "PUT", "/v1/outgoing/redis/authed", moved.clone()).await;
        assert_eq!(r.status, 400, "{moved}: {}", text(&r));
        assert!(text(&r).contains("give password again"), "{}", text(&r));
    }
    put_conn(
        &srv,
        "other",
        json!({"address": REDIS, "password": SECRET2, "pool_size": 3}),
    )
    .await;
    let one = admin(&srv, "GET", "/v1/outgoing/redis/authed", Value::Null).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["username"], "app");
    let list = admin(&srv, "GET", "/v1/outgoing/redis", Value::Null).await;
    assert_eq!(list.status, 200);
    let names: Vec<String> = list.json()["redis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["authed", "other"]);
    let export = admin(&srv, "GET", "/v1/config", Value::Null).await;
    assert_eq!(export.status, 200, "{}", text(&export));
    assert!(
        text(&export).contains("outgoing_redis"),
        "{}",
        text(&export)
    );
    for answer in [text(&one), text(&list), text(&export), srv.log()] {
        for s in [SECRET, SECRET2] {
            assert!(!answer.contains(s), "{s} in {answer}");
        }
    }
    // The machine's Redis has no password: AUTH fails, clearly.
    let r = run(&srv, "other", json!([["get", ["x"]]])).await;
    let m = failed(&r[0], "OutgoingConnectionError")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        m.contains("Redis connection \"other\"") && m.contains("authentication failed"),
        "{m}"
    );
    assert!(!m.contains(SECRET2), "{m}");

    // Import (the document's `outgoing_redis`): a plaintext password sealed on import, the
    // same again no change, a bad entry refused naming it; the export carries it sealed.
    let plain = json!({"outgoing_redis": [{"name": "imported", "address": REDIS,
                                           "password": SECRET, "pool_size": 2}]});
    let r = admin(&srv, "POST", "/v1/config", plain.clone()).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(!text(&r).contains(SECRET), "{}", text(&r));
    let r = admin(&srv, "POST", "/v1/config", plain).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["changes"], json!([]), "{}", text(&r));
    let r = admin(
        &srv,
        "POST",
        "/v1/config",
        json!({"outgoing_redis": [{"name": "x", "address": REDIS, "pool_size": 100}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains("outgoing_redis[0]") && text(&r).contains("pool_size"),
        "{}",
        text(&r)
    );
    let imported = admin(&srv, "GET", "/v1/outgoing/redis/imported", Value::Null)
        .await
        .json();
    assert_eq!(imported["has_secret"], true, "{imported}");
    let export = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    let sealed = export["outgoing_redis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "imported")
        .unwrap_or_else(|| panic!("{export}"))["sealed"]
        .clone();
    assert!(sealed.as_str().unwrap().starts_with("oxbus1:"), "{export}");
    assert!(!export.to_string().contains(SECRET));

    // Ping: a live one, an unknown name.
    put_conn(&srv, "default", json!({"address": REDIS})).await;
    let ping = admin(&srv, "POST", "/v1/outgoing/redis/default/ping", Value::Null).await;
    assert_eq!(ping.status, 200);
    let ping = ping.json();
    assert_eq!(ping["ok"], true, "{ping}");
    assert!(
        ping["detail"].as_str().unwrap().starts_with("PONG"),
        "{ping}"
    );
    let r = admin(&srv, "POST", "/v1/outgoing/redis/nope/ping", Value::Null).await;
    assert_eq!(r.status, 404);

    // self.kvdb.conn: the connection named `default` (str values, as Zato's)...
    let p = prefix("kvdb");
    let key = format!("{p}k");
    let r = run_doc(
        &srv,
        "/redis",
        json!({"kvdb": true, "ops": [["set", [key, "zato"]], ["get", [key]]]}),
    )
    .await;
    assert_eq!(ok(&r[1]), "zato");
    // ...or, once there is one, the one named `kvdb`.
    put_conn(&srv, "kvdb", json!({"address": "redis://127.0.0.1:6379/1"})).await;
    let r = run_doc(
        &srv,
        "/redis",
        json!({"kvdb": true, "ops": [["get", [key]]]}),
    )
    .await;
    assert_eq!(ok(&r[0]), &Value::Null, "db 1 has no such key");

    // Delete: calls then fail as unknown.
    let r = admin(&srv, "DELETE", "/v1/outgoing/redis/kvdb", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = admin(&srv, "DELETE", "/v1/outgoing/redis/default", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = run_doc(
        &srv,
        "/redis",
        json!({"kvdb": true, "ops": [["get", [key]]]}),
    )
    .await;
    failed(&r[0], "UnknownConnection");
    let audit = admin(&srv, "GET", "/v1/audit", Value::Null).await;
    assert!(text(&audit).contains("outgoing_redis"), "{}", text(&audit));
    let mut redis = Resp2::connect().await;
    assert_eq!(redis.clean(&p).await, 1);
}

/// A TLS server (a CA and certificate made here) relaying to the machine's Redis: `rediss://`
/// with the CA given works, bytes exact; without it the certificate is refused, clearly.
#[tokio::test]
async fn rediss_with_a_ca_of_the_tests() {
    let srv = env().start().await;
    let certs = oxbus_integration::upstream::make_certs(&srv.dir.join("redis-tls"));
    let read = |p: &std::path::Path| std::io::BufReader::new(std::fs::File::open(p).unwrap());
    let chain = rustls_pemfile::certs(&mut read(&certs.cert))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut read(&certs.key))
        .unwrap()
        .expect("a private key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let relay = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((a, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            conns.spawn(async move {
                let Ok(mut a) = acceptor.accept(a).await else {
                    return;
                };
                if let Ok(mut r) = TcpStream::connect("127.0.0.1:6379").await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut r).await;
                }
            });
        }
    });
    put_conn(
        &srv,
        "tls",
        json!({"address": format!("rediss://localhost:{port}/0"),
               "tls": {"ca_file": certs.ca.to_str().unwrap()}}),
    )
    .await;
    put_conn(
        &srv,
        "untrusted",
        json!({"address": format!("rediss://localhost:{port}/0"), "timeout_ms": 3000}),
    )
    .await;
    let p = prefix("tls");
    let key = format!("{p}k");
    let value: Vec<u8> = (0..=255u8).collect();
    let r = run(
        &srv,
        "tls",
        json!([["set", [key, b(&value)]], ["get", [key]]]),
    )
    .await;
    assert_eq!(ok(&r[1]), &b(&value));
    let ping = admin(&srv, "POST", "/v1/outgoing/redis/tls/ping", Value::Null)
        .await
        .json();
    assert_eq!(ping["ok"], true, "{ping}");
    let r = run(&srv, "untrusted", json!([["get", [key]]])).await;
    let m = failed(&r[0], "OutgoingConnectionError")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(m.contains("Redis connection \"untrusted\""), "{m}");
    assert!(
        m.contains("connect: invalid peer certificate: UnknownIssuer"),
        "{m}"
    );
    relay.abort();
    let mut redis = Resp2::connect().await;
    assert_eq!(redis.clean(&p).await, 1);
}

/// A relay to the machine's Redis whose connections can be stalled: [`StallRelay::stall`]
/// makes every connection relayed so far stop forwarding while staying open (a peer gone
/// silent, never closing); connections accepted after it forward again.
struct StallRelay {
    port: u16,
    stall: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl StallRelay {
    async fn start() -> StallRelay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (stall, rx) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut a, _)) = l.accept().await {
                let mut rx = rx.clone();
                rx.mark_unchanged();
                conns.spawn(async move {
                    let Ok(mut r) = TcpStream::connect("127.0.0.1:6379").await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut r) => {}
                        _ = rx.changed() => std::future::pending::<()>().await,
                    }
                });
            }
        });
        StallRelay { port, stall, task }
    }

    fn stall(&self) {
        self.stall.send_modify(|g| *g += 1);
    }
}

/// A fake Redis: while `refusing`, a connection's AUTH is refused (every command answered
/// WRONGPASS); otherwise it answers AUTH +OK itself and relays the rest to the machine's
/// Redis.
async fn refuse_auth_while(l: TcpListener, refusing: Arc<AtomicBool>) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((a, _)) = l.accept().await {
        let refuse = refusing.load(Ordering::SeqCst);
        conns.spawn(async move {
            let mut a = BufReader::new(a);
            if refuse {
                while read_command(&mut a).await.is_some() {
                    let wrong = b"-WRONGPASS invalid username-password pair\r\n";
                    if a.get_mut().write_all(wrong).await.is_err() {
                        return;
                    }
                }
                return;
            }
            match read_command(&mut a).await {
                Some(c) if c[0].eq_ignore_ascii_case(b"AUTH") => {}
                _ => return,
            }
            let Ok(mut r) = TcpStream::connect("127.0.0.1:6379").await else {
                return;
            };
            let early = a.buffer().to_vec();
            let mut a = a.into_inner();
            if a.write_all(b"+OK\r\n").await.is_err() || r.write_all(&early).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut a, &mut r).await;
        });
    }
}

/// One RESP command (an array of bulk strings) from `r`; None at its end.
async fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    r.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0u8; len + 2];
        r.read_exact(&mut arg).await.ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

#[tokio::test]
async fn a_stalled_connection_is_replaced() {
    let srv = env().start().await;
    let p = prefix("stall");
    let key = format!("{p}:k");

    // A connection that stops answering while staying open: the call times out, and the
    // next one (on a new connection: the stalled one was replaced) works.
    let relay = StallRelay::start().await;
    put_conn(
        &srv,
        "stalled",
        json!({"address": format!("redis://127.0.0.1:{}", relay.port), "pool_size": 1,
               "timeout_ms": 500}),
    )
    .await;
    let r = run(
        &srv,
        "stalled",
        json!([["set", [&key, "1"]], ["get", [&key]]]),
    )
    .await;
    assert_eq!(r[1].get("ok"), Some(&b("1")), "{r:?}");
    relay.stall();
    let r = run(&srv, "stalled", json!([["get", [&key]]])).await;
    failed(&r[0], "OutgoingTimeout");
    let r = run(
        &srv,
        "stalled",
        json!([["set", [&key, "2"]], ["get", [&key]]]),
    )
    .await;
    assert_eq!(r[1].get("ok"), Some(&b("2")), "after the stall: {r:?}");
    let ping = admin(&srv, "POST", "/v1/outgoing/redis/stalled/ping", Value::Null)
        .await
        .json();
    assert_eq!(ping["ok"], true, "{ping}");
    relay.task.abort();
    let mut redis = Resp2::connect().await;
    assert!(redis.clean(&p).await > 0);
}

#[tokio::test]
async fn a_refused_auth_is_not_kept() {
    let srv = env().start().await;
    let p = prefix("auth");
    let key = format!("{p}:k");
    // AUTH refused: `connect`, saying so; once it is accepted, the next call connects
    // afresh (the refusal is not kept) and works.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let refusing = Arc::new(AtomicBool::new(true));
    let fake = tokio::spawn(refuse_auth_while(l, refusing.clone()));
    put_conn(
        &srv,
        "authed",
        json!({"address": format!("redis://127.0.0.1:{port}"), "pool_size": 1,
               "username": "app", "password": SECRET, "timeout_ms": 2000}),
    )
    .await;
    let r = run(&srv, "authed", json!([["get", [&key]]])).await;
    let e = failed(&r[0], "OutgoingConnectionError");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("Redis connection \"authed\"") && m.contains("AUTH"),
        "{m}"
    );
    assert!(!m.contains(SECRET), "{m}");
    refusing.store(false, Ordering::SeqCst);
    let r = run(
        &srv,
        "authed",
        json!([["set", [&key, "3"]], ["get", [&key]]]),
    )
    .await;
    assert_eq!(
        r[1].get("ok"),
        Some(&b("3")),
        "after the refused AUTH: {r:?}"
    );
    let s = admin(&srv, "GET", "/v1/outgoing/redis/authed/stats", Value::Null)
        .await
        .json();
    assert_eq!(
        (s["idle"].as_u64(), s["errors"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    fake.abort();

    let mut redis = Resp2::connect().await;
    assert!(redis.clean(&p).await > 0);
}

#[tokio::test]
async fn an_oversized_reply_and_a_refused_select() {
    let srv = env().start().await;
    let p = prefix("large");
    let key = format!("{p}:big");
    // A reply over what a worker frame carries: too_large, and the connection still works.
    let mut redis = Resp2::connect().await;
    let big = vec![b'x'; 64 << 20];
    redis.cmd(&[b"SET", key.as_bytes(), &big]).await;
    drop(big);
    put_conn(&srv, "kv", json!({"address": REDIS, "pool_size": 1})).await;
    let r = run(
        &srv,
        "kv",
        json!([["get", [&key]], ["execute", ["STRLEN", &key]]]),
    )
    .await;
    let e = failed(&r[0], "ResponseTooLarge");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Redis connection \"kv\""),
        "{e}"
    );
    assert_eq!(r[1].get("ok"), Some(&json!(64 << 20)), "{r:?}");

    // A db Redis does not have: SELECT refused while connecting is `connect`, saying why.
    put_conn(
        &srv,
        "nodb",
        json!({"address": "redis://127.0.0.1:6379/9999", "pool_size": 1}),
    )
    .await;
    let r = run(&srv, "nodb", json!([["get", [&key]]])).await;
    let e = failed(&r[0], "OutgoingConnectionError");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("Redis connection \"nodb\"") && m.contains("DB index"),
        "{m}"
    );
    assert_eq!(redis.clean(&p).await, 1);
}
