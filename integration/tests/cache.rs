//! The caches against real servers and real Python workers: every call of the Python API
//! (`self.cache.default…`), expiry with short real expiries, values of every type back as
//! they went in, `incr` from several workers at once, eviction at `max_entries`, refusals as
//! Python exceptions; replication across three servers on the cluster bus, concurrent
//! writes to one key from two servers converging.

use oxbus_integration::bus::linked;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

/// `cachetest.op`: one call of the cache API described by the payload, with bytes carried
/// as `{"$bytes": base64}` both ways; `cachetest.incr`: `times` increments of one key.
const SERVICE: &str = r#"import base64
import os

from oxbus import Service


def enc(v):
    if isinstance(v, bytes):
        return {'$bytes': base64.b64encode(v).decode()}
    if isinstance(v, (list, tuple)):
        return [enc(x) for x in v]
    return v


def dec(v):
    if isinstance(v, dict) and '$bytes' in v:
        return base64.b64decode(v['$bytes'])
    return v


class Op(Service):
    name = 'cachetest.op'

    def handle(self):
        p = self.request.payload
        name = p.get('cache', 'default')
        if p.get('via') == 'get_cache':
            cache = self.cache.get_cache(name)
        elif name == 'default' and p.get('via') == 'attr':
            cache = self.cache.default
        else:
            cache = self.cache[name]
        args = [dec(a) for a in p.get('args', [])]
        try:
            if p['op'] == 'len':
                result = len(cache)
            elif p['op'] == 'contains':
                result = args[0] in cache
            else:
                result = getattr(cache, p['op'])(*args, **p.get('kwargs', {}))
        except Exception as e:
            self.response.payload = {'error': type(e).__name__, 'message': str(e),
                                     'bases': [c.__name__ for c in type(e).__mro__]}
            return
        self.response.payload = {'result': enc(result), 'type': type(result).__name__}


class Fill(Service):
    name = 'cachetest.fill'

    def handle(self):
        for key in self.request.payload['keys']:
            self.cache.default.set(key, 1)


class Race(Service):
    name = 'cachetest.race'

    def handle(self):
        import time
        p = self.request.payload
        # Both servers start at the same wall-clock moment, so that their writes to each
        # key cross on the bus.
        time.sleep(max(0.0, p['at'] - time.time()))
        for key in p['keys']:
            self.cache.default.set(key, p['value'])


class Incr(Service):
    name = 'cachetest.incr'

    def handle(self):
        p = self.request.payload
        last = [self.cache.default.incr(p['key']) for _ in range(p['times'])][-1]
        self.response.payload = {'pid': os.getpid(), 'last': last}
"#;

fn env() -> Env {
    Env::new()
        .workers(2)
        .service("cachetest.py", SERVICE)
        .channel("/op", &["POST"], "cachetest.op")
        .channel("/incr", &["POST"], "cachetest.incr")
        .channel("/fill", &["POST"], "cachetest.fill")
        .channel("/race", &["POST"], "cachetest.race")
}

/// One cache call through the service: `{"result": …, "type": …}` or `{"error": …}`.
async fn op(srv: &Server, doc: Value) -> Value {
    let r = srv.post_json("/op", &doc).await;
    assert_eq!(r.status, 200, "{doc}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn call(srv: &Server, cache: &str, name: &str, args: Value) -> Value {
    let r = op(srv, json!({"cache": cache, "op": name, "args": args})).await;
    assert!(r.get("error").is_none(), "{name}{args}: {r}");
    r["result"].clone()
}

#[tokio::test]
async fn every_call_of_the_python_api_against_a_real_server() {
    let srv = env().start().await;
    let d = "default";
    // Values of every kind come back as they went in.
    let nested = json!({"a": [1, 2.5, null, true, "é", {"b": []}], "n": -7});
    for (key, value) in [
        ("nested", nested.clone()),
        ("text", json!("hello")),
        ("int", json!(42)),
        ("float", json!(0.25)),
        ("bool", json!(false)),
        ("list", json!([1, [2, [3]]])),
    ] {
        assert_eq!(call(&srv, d, "set", json!([key, value])).await, Value::Null);
        assert_eq!(call(&srv, d, "get", json!([key])).await, value, "{key}");
    }
    let raw = json!({"$bytes": "AP8QIH4="});
    call(&srv, d, "set", json!(["raw", raw])).await;
    let got = op(&srv, json!({"op": "get", "args": ["raw"]})).await;
    assert_eq!(
        (got["result"].clone(), got["type"].as_str()),
        (raw, Some("bytes"))
    );
    // Absent keys: None, or the default given.
    assert_eq!(call(&srv, d, "get", json!(["nope"])).await, Value::Null);
    assert_eq!(
        call(&srv, d, "get", json!(["nope", "dflt"])).await,
        json!("dflt")
    );
    assert_eq!(
        call(&srv, d, "has_key", json!(["nested"])).await,
        json!(true)
    );
    assert_eq!(
        call(&srv, d, "has_key", json!(["nope"])).await,
        json!(false)
    );
    assert_eq!(
        call(&srv, d, "contains", json!(["text"])).await,
        json!(true)
    );
    // incr/decr, atomic on the server; a value that is not an integer is refused.
    assert_eq!(call(&srv, d, "incr", json!(["n"])).await, json!(1));
    assert_eq!(call(&srv, d, "incr", json!(["n", 10])).await, json!(11));
    assert_eq!(call(&srv, d, "decr", json!(["n", 3])).await, json!(8));
    let e = op(&srv, json!({"op": "incr", "args": ["text"]})).await;
    assert_eq!(e["error"], "NotAnInteger", "{e}");
    assert!(e["bases"].as_array().unwrap().contains(&json!("TypeError")));
    // keys / items by prefix, sorted.
    call(&srv, d, "set", json!(["user:2", {"id": 2}])).await;
    call(&srv, d, "set", json!(["user:1", {"id": 1}])).await;
    call(&srv, d, "set", json!(["user:b", {"$bytes": "AQI="}])).await;
    assert_eq!(
        call(&srv, d, "keys", json!(["user:"])).await,
        json!(["user:1", "user:2", "user:b"])
    );
    assert_eq!(
        call(&srv, d, "items", json!(["user:"])).await,
        json!([["user:1", {"id": 1}], ["user:2", {"id": 2}], ["user:b", {"$bytes": "AQI="}]])
    );
    // delete says whether the key was there.
    assert_eq!(
        call(&srv, d, "delete", json!(["user:1"])).await,
        json!(true)
    );
    assert_eq!(
        call(&srv, d, "delete", json!(["user:1"])).await,
        json!(false)
    );
    // The same cache under all three names.
    for via in ["get_cache", "attr", "item"] {
        let r = op(&srv, json!({"via": via, "op": "get", "args": ["text"]})).await;
        assert_eq!(r["result"], "hello", "{via}");
    }
    // Expiry: a short one is gone soon (polled, not slept), the others stay.
    op(
        &srv,
        json!({"op": "set", "args": ["short", 1], "kwargs": {"expiry": 0.3}}),
    )
    .await;
    assert_eq!(call(&srv, d, "get", json!(["short"])).await, json!(1));
    eventually(Duration::from_secs(10), "the short entry to expire", || {
        let srv = &srv;
        async move {
            (call(srv, "default", "get", json!(["short"])).await == Value::Null).then_some(())
        }
    })
    .await;
    assert_eq!(
        call(&srv, d, "has_key", json!(["short"])).await,
        json!(false)
    );
    // expire() on an existing key (and false on a missing one); 0 = never.
    assert_eq!(
        call(&srv, d, "expire", json!(["int", 0.3])).await,
        json!(true)
    );
    assert_eq!(
        call(&srv, d, "expire", json!(["nope", 5])).await,
        json!(false)
    );
    assert_eq!(
        call(&srv, d, "expire", json!(["float", 0])).await,
        json!(true)
    );
    eventually(Duration::from_secs(10), "int to expire", || {
        let srv = &srv;
        async move { (call(srv, "default", "get", json!(["int"])).await == Value::Null).then_some(()) }
    })
    .await;
    assert_eq!(call(&srv, d, "get", json!(["float"])).await, json!(0.25));
    // Too large a value, an unknown cache, a key of the wrong type: clear exceptions.
    let big = "x".repeat(1024 * 1024 + 1);
    let e = op(&srv, json!({"op": "set", "args": ["big", big]})).await;
    assert_eq!(e["error"], "ValueTooLarge", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("max_item_size"),
        "{e}"
    );
    assert!(
        e["bases"]
            .as_array()
            .unwrap()
            .contains(&json!("ValueError"))
    );
    let e = op(&srv, json!({"cache": "nope", "op": "get", "args": ["x"]})).await;
    assert_eq!(e["error"], "UnknownCache", "{e}");
    assert_eq!(e["message"], "no cache named nope");
    let e = op(&srv, json!({"op": "get", "args": [5]})).await;
    assert_eq!(e["error"], "TypeError", "{e}");
    // len and clear.
    // nested text float bool list raw n user:2 user:b (int and short expired, user:1 gone).
    assert_eq!(call(&srv, d, "len", json!([])).await, json!(9));
    assert_eq!(call(&srv, d, "clear", json!([])).await, json!(9));
    assert_eq!(call(&srv, d, "len", json!([])).await, json!(0));
    assert_eq!(call(&srv, d, "get", json!(["text"])).await, Value::Null);
    srv.assert_no_errors(&["cachetest.op failed"]);
}

#[tokio::test]
async fn incr_from_several_workers_at_once_is_exact_and_max_entries_evicts() {
    let srv = env().set("server", "threads", "4").start().await;
    let (clients, times) = (16, 200);
    let calls = (0..clients).map(|_| {
        let srv = &srv;
        async move {
            let r = srv
                .post_json("/incr", &json!({"key": "total", "times": times}))
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["pid"].as_u64().unwrap()
        }
    });
    let pids: std::collections::BTreeSet<u64> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect();
    assert_eq!(pids.len(), 2, "both workers took part: {pids:?}");
    assert_eq!(
        call(&srv, "default", "get", json!(["total"])).await,
        json!(clients * times)
    );
    // The default cache holds at most 10 000 entries: 12 000 sets leave at most that.
    let r = srv.post_json("/op", &json!({"op": "clear"})).await;
    assert_eq!(r.status, 200);
    for chunk in 0..12 {
        let keys: Vec<Value> = (0..1000).map(|i| json!(format!("e{chunk}-{i}"))).collect();
        let r = srv.post_json("/fill", &json!({"keys": keys})).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let n = call(&srv, "default", "len", json!([]))
        .await
        .as_u64()
        .unwrap();
    assert!(
        (9_000..=10_000).contains(&n),
        "{n} entries after 12 000 sets"
    );
}

fn cluster_server(url: &str, name: &str, secret: &std::path::Path) -> Env {
    env().workers(1).cluster_member(url, name, secret)
}

async fn get(srv: &Server, key: &str) -> Value {
    call(srv, "default", "get", json!([key])).await
}

/// Waits until every server answers `want` for `key`.
async fn everywhere(servers: &[&Server], key: &str, want: Value) {
    for (i, srv) in servers.iter().enumerate() {
        eventually(
            Duration::from_secs(20),
            &format!("server {i} to hold {key} = {want}"),
            || {
                let want = want.clone();
                async move { (get(srv, key).await == want).then_some(()) }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn writes_replicate_across_three_servers_and_concurrent_writes_converge() {
    let db = PgDatabase::create();
    let url = format!("{:?}", db.url);
    let secret = cluster_secret("cache");
    let a = cluster_server(&url, "a", &secret).start().await;
    let b = cluster_server(&url, "b", &secret).start().await;
    let c = cluster_server(&url, "c", &secret).start().await;
    linked(&a, &["b", "c"]).await;
    linked(&b, &["a", "c"]).await;
    linked(&c, &["a", "b"]).await;
    let all = [&a, &b, &c];
    // set, expire, delete and clear on one server reach the others.
    call(&a, "default", "set", json!(["k", {"v": 1}])).await;
    call(&b, "default", "set", json!(["raw", {"$bytes": "AP8="}])).await;
    everywhere(&all, "k", json!({"v": 1})).await;
    everywhere(&all, "raw", json!({"$bytes": "AP8="})).await;
    assert_eq!(call(&c, "default", "incr", json!(["n", 5])).await, json!(5));
    everywhere(&all, "n", json!(5)).await;
    assert_eq!(
        call(&b, "default", "expire", json!(["k", 0.5])).await,
        json!(true)
    );
    everywhere(&all, "k", Value::Null).await;
    assert_eq!(
        call(&c, "default", "delete", json!(["raw"])).await,
        json!(true)
    );
    everywhere(&all, "raw", Value::Null).await;
    call(&a, "default", "set", json!(["x", 1])).await;
    everywhere(&all, "x", json!(1)).await;
    call(&b, "default", "clear", json!([])).await;
    everywhere(&all, "x", Value::Null).await;
    everywhere(&all, "n", Value::Null).await;

    // Two servers write the same keys at the same moment, many times: every server ends
    // with the same value for each key (the write with the highest stamp).
    let keys: Vec<String> = (0..300).map(|i| format!("race{i}")).collect();
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 0.5;
    let race = |value: &str| json!({"keys": keys, "value": value, "at": at});
    let (doc_a, doc_b) = (race("from-a"), race("from-b"));
    let (ra, rb) = tokio::join!(a.post_json("/race", &doc_a), b.post_json("/race", &doc_b));
    assert_eq!((ra.status, rb.status), (200, 200));
    // Let replication settle: a final marker written after the race on each server.
    call(&a, "default", "set", json!(["done-a", 1])).await;
    call(&b, "default", "set", json!(["done-b", 1])).await;
    for marker in ["done-a", "done-b"] {
        everywhere(&all, marker, json!(1)).await;
    }
    let mut winners = std::collections::BTreeMap::new();
    for key in &keys {
        let values: Vec<Value> =
            futures_util::future::join_all(all.iter().map(|s| get(s, key))).await;
        assert!(
            values.iter().all(|v| *v == values[0]),
            "{key} differs across servers: {values:?}"
        );
        assert!(
            values[0] == "from-a" || values[0] == "from-b",
            "{key}: {values:?}"
        );
        *winners.entry(values[0].to_string()).or_insert(0) += 1;
    }
    drop(db);
    let _ = std::fs::remove_file(&secret);
    eprintln!("race winners: {winners:?}");
}

/// `oxbus cache …` against `srv`: (exit code, stdout, stderr).
fn cli(srv: &Server, args: &[&str]) -> (i32, String, String) {
    let out = srv.cli(&[&["cache"], args].concat());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operators_browse_and_edit_through_the_admin_api_and_the_cli() {
    let srv = env().start().await;
    let token = srv.admin_token();
    let keys: Vec<Value> = (0..250).map(|i| json!(format!("item:{i:03}"))).collect();
    assert_eq!(
        srv.post_json("/fill", &json!({"keys": keys})).await.status,
        200
    );
    call(&srv, "default", "set", json!(["a/b c", {"$bytes": "AP8="}])).await;
    let admin = |method: &'static str, path: String, body: Value| {
        let (srv, token) = (&srv, token.clone());
        async move {
            let body = if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            };
            srv.admin(method, &path, Some(&token), &body).await
        }
    };
    // Paged listing by prefix: every key once, in order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/caches/default/keys?prefix=item%3A&limit=100".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = admin("GET", path, Value::Null).await;
        assert_eq!(page.status, 200);
        let page = page.json();
        seen.extend(page["keys"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.replace(':', "%3A")),
            None => break,
        }
    }
    assert_eq!(seen, keys);
    // One entry: read, written (a service then reads what the operator wrote), deleted.
    let e = admin(
        "GET",
        "/v1/caches/default/keys/a%2Fb%20c".into(),
        Value::Null,
    )
    .await;
    assert_eq!(e.status, 200);
    assert_eq!(e.json()["type"], "bytes");
    assert_eq!(e.json()["value"], "AP8=");
    let r = admin(
        "PUT",
        "/v1/caches/default/keys/op".into(),
        json!({"value": {"set": "by an operator"}, "expiry": 600}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        call(&srv, "default", "get", json!(["op"])).await,
        json!({"set": "by an operator"})
    );
    let r = admin(
        "PUT",
        "/v1/caches/default/keys/op".into(),
        json!({"value": 1, "ttl": 5}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("ttl"));
    let r = admin("GET", "/v1/caches/nope/keys".into(), Value::Null).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("no cache named nope"))
    );
    let r = admin("DELETE", "/v1/caches/default/keys/op".into(), Value::Null).await;
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(
        admin("GET", "/v1/caches/default/keys/op".into(), Value::Null)
            .await
            .status,
        404
    );

    // The same through the CLI.
    let (code, out, err) = cli(
        &srv,
        &["set", "greeting", "{\"hello\": [1, 2]}", "--expiry", "600"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "stored greeting in cache default");
    assert_eq!(
        call(&srv, "default", "get", json!(["greeting"])).await,
        json!({"hello": [1, 2]})
    );
    let (code, out, _) = cli(&srv, &["get", "greeting"]);
    assert_eq!((code, out.trim()), (0, r#"{"hello":[1,2]}"#));
    let (code, _, err) = cli(&srv, &["set", "bad", "not json"]);
    assert_eq!(code, 1);
    assert!(err.contains("--string"), "{err}");
    let (code, _, _) = cli(&srv, &["set", "plain", "not json", "--string"]);
    assert_eq!(code, 0);
    assert_eq!(
        call(&srv, "default", "get", json!(["plain"])).await,
        json!("not json")
    );
    let (code, out, err) = cli(&srv, &["keys", "--prefix", "item:", "--limit", "2"]);
    assert_eq!((code, out.as_str()), (0, "item:000\nitem:001\n"));
    assert!(err.contains("--after \"item:001\""), "{err}");
    let (code, out, _) = cli(
        &srv,
        &["keys", "--prefix", "item:", "--limit", "60", "--all"],
    );
    assert_eq!((code, out.lines().count()), (0, 250));
    let (code, out, _) = cli(&srv, &["get", "a/b c"]);
    assert_eq!((code, out.trim()), (0, "(bytes, base64) AP8="));
    let (code, _, err) = cli(&srv, &["get", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no key \"nope\" in cache default"), "{err}");
    let (code, out, _) = cli(&srv, &["delete", "greeting"]);
    assert_eq!(
        (code, out.trim()),
        (0, "deleted greeting from cache default")
    );
    let (code, _, err) = cli(&srv, &["get", "x", "--cache", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no cache named nope"), "{err}");
    let (code, out, _) = cli(&srv, &["list"]);
    assert_eq!(code, 0);
    let default = out
        .lines()
        .find(|l| l.starts_with("default "))
        .expect("default listed");
    let cols: Vec<&str> = default.split_whitespace().collect();
    assert_eq!(&cols[1..3], &["252", "10000"], "entries, max: {out}");
    // The default cache's expiry is 0: it never expires, and the list says so.
    assert!(default.contains("  expiry never, "), "{out}");
    // An incr reads the key: the first one of a new key is a miss, the next ones hits (the
    // quickstart's visit counter showed 0 hits after any number of visits).
    let figures = || {
        let (code, out, err) = cli(&srv, &["list", "--output", "json"]);
        assert_eq!(code, 0, "{err}");
        let d: Value = serde_json::from_str(&out).unwrap();
        let list = d.get("caches").unwrap_or(&d).as_array().unwrap().clone();
        let c = list.into_iter().find(|c| c["name"] == "default").unwrap();
        (c["hits"].as_u64().unwrap(), c["misses"].as_u64().unwrap())
    };
    let (hits, misses) = figures();
    for n in 1..=3 {
        assert_eq!(
            call(&srv, "default", "incr", json!(["visits"])).await,
            json!(n)
        );
    }
    assert_eq!(figures(), (hits + 2, misses + 1));
    let (code, out, _) = cli(&srv, &["clear"]);
    assert_eq!(
        (code, out.trim()),
        (0, "cleared 253 entries from cache default")
    );
    assert_eq!(call(&srv, "default", "len", json!([])).await, json!(0));
}
