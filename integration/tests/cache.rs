//! The caches against real servers and real Python workers: every call of the Python API
//! (`self.cache.default…`), expiry with short real expiries, values of every type back as
//! they went in, `incr` from several workers at once, eviction at `max_entries`, refusals as
//! Python exceptions; replication across three servers on the cluster bus, concurrent
//! writes to one key from two servers converging.

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
