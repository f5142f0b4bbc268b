//! The SQL client of outgoing connections (issue 19) against real databases: the machine's
//! PostgreSQL (127.0.0.1:5432, user postgres, db test) and MariaDB (127.0.0.1:3306, root, db
//! test), and a SQLite file. Calls go through `Outgoing` / `SqlClient` with SPEC.md's
//! `out.sql` metas and bodies. Each test uses tables of its own, dropped at its end.

use bytes::Bytes;
use oxbus_supervisor::lifecycle::ops::ServerOps;
use oxbus_supervisor::metrics::Metrics;
use oxbus_supervisor::model::outgoing::SqlConn;
use oxbus_supervisor::outgoing::sql::SqlClient;
use oxbus_supervisor::outgoing::{ConnType, Outgoing};
use oxbus_supervisor::secrets::Key;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306/test";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name no other test (or run) uses.
fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{prefix}_{}_{t}_{n}", std::process::id())
}

fn key() -> Arc<Key> {
    let path = std::env::temp_dir().join(unique("oxbus-sql-key"));
    let k = Key::create(&path).expect("key");
    // Loaded: the file is not needed any more.
    let _ = std::fs::remove_file(&path);
    Arc::new(k)
}

fn def(name: &str, engine: &str, url: &str, extra: Value) -> SqlConn {
    let mut v = json!({ "name": name, "engine": engine, "url": url });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).expect("definition")
}

fn client(d: SqlConn) -> SqlClient {
    SqlClient::new(d, &key(), &Arc::new(Metrics::new(false)))
}

/// A call's status, `error` code and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    error: Option<String>,
    body: Value,
}

async fn call_w(c: &SqlClient, worker: u32, meta: Value, body: Value) -> Answer {
    let r = c
        .call(
            worker,
            meta.to_string().as_bytes(),
            Bytes::from(body.to_string()),
        )
        .await;
    Answer {
        status: r.meta.status,
        error: r.meta.error.clone(),
        body: serde_json::from_slice(&r.body).expect("JSON answer"),
    }
}

async fn call(c: &SqlClient, meta: Value, body: Value) -> Answer {
    call_w(c, 1, meta, body).await
}

/// `execute` that must succeed: its result.
async fn ok(c: &SqlClient, sql: &str, params: Value) -> Value {
    let a = exec(c, sql, params).await;
    assert_eq!(a.status, 200, "{sql}: {a:?}");
    a.body
}

async fn exec(c: &SqlClient, sql: &str, params: Value) -> Answer {
    call(
        c,
        json!({"action": "execute"}),
        json!({"sql": sql, "params": params}),
    )
    .await
}

async fn exec_tx(c: &SqlClient, tx: u64, sql: &str, params: Value) -> Answer {
    call(
        c,
        json!({"action": "execute", "tx": tx}),
        json!({"sql": sql, "params": params}),
    )
    .await
}

async fn count(c: &SqlClient, t: &str) -> i64 {
    let r = ok(c, &format!("SELECT count(*)::int FROM {t}"), Value::Null).await;
    rows(&r)[0][0].as_i64().unwrap()
}

fn rows(v: &Value) -> &Vec<Value> {
    v["rows"].as_array().expect("rows")
}

/// Polls `check` until it holds or 10 s pass (the reaper and background rollbacks run on
/// their own; the assertion is on the outcome, not on how fast it came).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < until, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------- PostgreSQL ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_every_type_round_trips_nulls_included() {
    let c = client(def(&unique("pgtypes"), "postgresql", PG, json!({})));
    let t = unique("t_types");
    ok(
        &c,
        &format!(
            "CREATE TABLE {t} (id serial primary key, i2 int2, i4 int4, i8 int8, f4 float4, \
             f8 float8, n numeric, b bool, tx text, vc varchar(20), ts timestamp, \
             tz timestamptz, d date, tm time, by bytea, u uuid, j json, jb jsonb, \
             ai int4[], at text[], an numeric[], af float8[])"
        ),
        Value::Null,
    )
    .await;
    let big = "12345678901234567890123456789012345678.123456789012345678";
    let insert = format!(
        "INSERT INTO {t} (i2, i4, i8, f4, f8, n, b, tx, vc, ts, tz, d, tm, by, u, j, jb, ai, \
         at, an, af) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,\
         $19,$20,$21) RETURNING id"
    );
    let r = ok(
        &c,
        &insert,
        json!([
            7, 70000, 9007199254740993i64, 1.5, 2.25,
            {"$t": "decimal", "v": big}, true, "héllo 'x'", "short",
            {"$t": "datetime", "v": "2024-05-01T10:20:30.123456"},
            {"$t": "datetime", "v": "2024-05-01T10:20:30+02:00"},
            {"$t": "date", "v": "2024-02-29"}, {"$t": "time", "v": "23:59:58.5"},
            {"$t": "bytes", "v": "AAEAAv8="}, {"$t": "uuid", "v": "6f1c6d1e-9b3e-4c55-8a39-1b2c3d4e5f60"},
            {"$t": "json", "v": {"a": [1, null, "x"]}}, {"$t": "json", "v": {"k": true}},
            [1, null, 3], ["a", "b,c", null], [{"$t": "decimal", "v": "1.10"}, null], [1, 2.5]
        ]),
    )
    .await;
    assert_eq!(r["rowcount"], 1);
    assert_eq!(r["types"], json!(["int"]));
    assert_eq!(r["last_insert_id"], Value::Null);
    // A row of NULLs: an untyped NULL goes into every column type.
    let nulls: Vec<Value> = vec![Value::Null; 21];
    ok(&c, &insert, Value::Array(nulls)).await;
    let r = ok(
        &c,
        &format!(
            "SELECT i2, i4, i8, f4, f8, n, b, tx, vc, ts, tz, d, tm, by, u, j, jb, ai, at, an, \
             af FROM {t} ORDER BY id"
        ),
        Value::Null,
    )
    .await;
    assert_eq!(
        r["types"],
        json!([
            "int",
            "int",
            "int",
            "float",
            "float",
            "decimal",
            "bool",
            "text",
            "text",
            "datetime",
            "datetimetz",
            "date",
            "time",
            "bytes",
            "uuid",
            "json",
            "json",
            "int[]",
            "text[]",
            "decimal[]",
            "float[]"
        ])
    );
    assert_eq!(
        rows(&r)[0],
        json!([
            7, 70000, 9007199254740993i64, 1.5, 2.25, big, true, "héllo 'x'", "short",
            "2024-05-01T10:20:30.123456", "2024-05-01T08:20:30+00:00", "2024-02-29",
            "23:59:58.500", "AAEAAv8=", "6f1c6d1e-9b3e-4c55-8a39-1b2c3d4e5f60",
            {"a": [1, null, "x"]}, {"k": true}, [1, null, 3], ["a", "b,c", null], ["1.10", null],
            [1.0, 2.5]
        ])
    );
    assert_eq!(rows(&r)[1], Value::Array(vec![Value::Null; 21]));
    assert_eq!(r["rowcount"], 2);
    // The same statement with other parameter types is not confused with the first.
    let r = ok(&c, "SELECT $1 AS v", json!([5])).await;
    assert_eq!(rows(&r)[0], json!([5]));
    let r = ok(&c, "SELECT $1 AS v", json!(["five"])).await;
    assert_eq!(
        (rows(&r)[0].clone(), r["types"].clone()),
        (json!(["five"]), json!(["text"]))
    );
    // An untyped NULL where the server cannot infer a type is retried as text.
    let r = ok(&c, "SELECT $1 AS v", json!([null])).await;
    assert_eq!(rows(&r)[0], json!([null]));
    // A type without mapping: invalid naming the column and type; cast works.
    let a = exec(&c, "SELECT interval '1 day' AS span", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    let msg = a.body["error"].as_str().unwrap();
    assert!(
        msg.contains("\"span\"") && msg.contains("INTERVAL"),
        "{msg}"
    );
    let r = ok(&c, "SELECT (interval '1 day')::text AS span", Value::Null).await;
    assert_eq!(rows(&r)[0], json!(["1 day"]));
    // An empty result still names its columns; an UPDATE counts affected rows.
    let r = ok(
        &c,
        &format!("SELECT id, tx FROM {t} WHERE id < 0"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (r["columns"].clone(), r["types"].clone()),
        (json!(["id", "tx"]), json!(["int", "text"]))
    );
    assert_eq!(r["rowcount"], 0);
    let r = ok(&c, &format!("UPDATE {t} SET b = false"), Value::Null).await;
    assert_eq!(
        (r["rowcount"].clone(), r["columns"].clone()),
        (json!(2), json!([]))
    );
    ok(&c, &format!("DROP TABLE {t}"), Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_named_binds_skip_casts_literals_and_comments() {
    let c = client(def(&unique("pgnamed"), "postgresql", PG, json!({})));
    let r = ok(
        &c,
        "SELECT :a::int + 1 AS x, ':x' AS lit, CAST(:a AS text) AS again /* :zz */, :b AS b -- :c",
        json!({"a": "41", "b": {"$t": "decimal", "v": "0.1"}}),
    )
    .await;
    assert_eq!(rows(&r)[0], json!([42, ":x", "41", "0.1"]));
    let a = exec(&c, "SELECT :a, :missing", json!({"a": 1})).await;
    assert_eq!((a.status, a.error.as_deref()), (400, Some("invalid")));
    assert!(
        a.body["error"].as_str().unwrap().contains(":missing"),
        "{a:?}"
    );
    let a = exec(&c, "SELECT $1", json!([{"$t": "nope", "v": "x"}])).await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    assert!(a.body["error"].as_str().unwrap().contains("nope"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_transactions_commit_roll_back_and_die_with_their_worker() {
    let name = unique("pgtx");
    let c = client(def(&name, "postgresql", PG, json!({})));
    let idle_in_tx = format!(
        "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'oxbus:{name}' \
         AND state = 'idle in transaction'"
    );
    let t = unique("t_tx");
    ok(&c, &format!("CREATE TABLE {t} (v int)"), Value::Null).await;

    // Commit: visible.
    let a = call(&c, json!({"action": "begin"}), json!({})).await;
    let tx = a.body["tx"].as_u64().expect("tx id");
    assert_eq!(
        exec_tx(&c, tx, &format!("INSERT INTO {t} VALUES ($1)"), json!([1]))
            .await
            .status,
        200
    );
    assert_eq!(count(&c, &t).await, 0, "not visible before commit");
    let a = call(&c, json!({"action": "commit", "tx": tx}), json!({})).await;
    assert_eq!((a.status, a.body.clone()), (200, json!({})));
    assert_eq!(count(&c, &t).await, 1);
    let a = call(&c, json!({"action": "commit", "tx": tx}), json!({})).await;
    assert_eq!(
        a.error.as_deref(),
        Some("invalid"),
        "a finished tx is unknown"
    );
    // Rollback: nothing.
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    exec_tx(&c, tx, &format!("INSERT INTO {t} VALUES (2)"), Value::Null).await;
    call(&c, json!({"action": "rollback", "tx": tx}), json!({})).await;
    assert_eq!(count(&c, &t).await, 1);
    // A stream reading inside a transaction holds its connection: a statement meanwhile is
    // refused (not left waiting), a commit closes the stream first.
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    exec_tx(&c, tx, &format!("INSERT INTO {t} VALUES (5)"), Value::Null).await;
    let a = call(
        &c,
        json!({"action": "stream", "tx": tx}),
        json!({"sql": format!("SELECT v FROM {t}, generate_series(1, 3000) ORDER BY v"), "batch": 2}),
    )
    .await;
    assert_eq!(
        (rows(&a.body).clone(), a.body["done"].clone()),
        (vec![json!([1]), json!([1])], json!(false)),
        "{a:?}"
    );
    let a2 = exec_tx(&c, tx, "SELECT 1", Value::Null).await;
    assert_eq!(a2.error.as_deref(), Some("invalid"));
    assert!(
        a2.body["error"]
            .as_str()
            .unwrap()
            .contains("close it first"),
        "{a2:?}"
    );
    let done = call(&c, json!({"action": "commit", "tx": tx}), json!({})).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(count(&c, &t).await, 2);
    let a = call(
        &c,
        json!({"action": "next", "stream": a.body["stream"]}),
        json!({}),
    )
    .await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    ok(&c, &format!("DELETE FROM {t} WHERE v = 5"), Value::Null).await;
    // Another worker cannot use it.
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let a = call_w(
        &c,
        2,
        json!({"action": "execute", "tx": tx}),
        json!({"sql": "SELECT 1"}),
    )
    .await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    // Its worker goes: rolled back.
    exec_tx(&c, tx, &format!("INSERT INTO {t} VALUES (3)"), Value::Null).await;
    assert_eq!(rows(&ok(&c, &idle_in_tx, Value::Null).await)[0], json!([1]));
    c.worker_gone(1);
    assert_eq!(c.open_sessions(), (0, 0));
    let a = exec_tx(&c, tx, "SELECT 1", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    eventually("the abandoned transaction's lock is released", || async {
        // The insert was rolled back: a lock-free table count stays 1, and the connection
        // came back to the pool.
        count(&c, &t).await == 1 && c.stats().in_use == 0
    })
    .await;
    assert_eq!(rows(&ok(&c, &idle_in_tx, Value::Null).await)[0], json!([0]));
    ok(&c, &format!("DROP TABLE {t}"), Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_idle_transactions_and_streams_are_reaped_without_a_call() {
    let c = client(def(
        &unique("pgidle"),
        "postgresql",
        PG,
        json!({"session_idle_ms": 200}),
    ));
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let a = call(
        &c,
        json!({"action": "stream"}),
        json!({"sql": "SELECT generate_series(1, 5000)", "batch": 10}),
    )
    .await;
    assert_eq!(a.body["done"], false);
    let stream = a.body["stream"].as_u64().expect("a stream id");
    assert_eq!(c.open_sessions(), (1, 1));
    eventually("idle sessions reaped", || async {
        c.open_sessions() == (0, 0)
    })
    .await;
    let a = call(&c, json!({"action": "commit", "tx": tx}), json!({})).await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    let a = call(&c, json!({"action": "next", "stream": stream}), json!({})).await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    eventually("connections back in the pool", || async {
        c.stats().in_use == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_streams_come_in_batches_and_max_rows_is_too_large() {
    let c = client(def(
        &unique("pgstream"),
        "postgresql",
        PG,
        json!({"max_rows": 2000}),
    ));
    let a = call(
        &c,
        json!({"action": "stream"}),
        json!({"sql": "SELECT g AS n, 'r' || g AS s FROM generate_series(1, $1) g", "params": [2500], "batch": 1000}),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["columns"], json!(["n", "s"]));
    assert_eq!(a.body["types"], json!(["int", "text"]));
    let id = a.body["stream"].as_u64().unwrap();
    let mut got: Vec<Value> = rows(&a.body).clone();
    assert_eq!((got.len(), a.body["done"].clone()), (1000, json!(false)));
    let a = call(&c, json!({"action": "next", "stream": id}), json!({})).await;
    assert_eq!(
        (rows(&a.body).len(), a.body["done"].clone()),
        (1000, json!(false))
    );
    got.extend(rows(&a.body).iter().cloned());
    let a = call(&c, json!({"action": "next", "stream": id}), json!({})).await;
    assert_eq!(
        (rows(&a.body).len(), a.body["done"].clone()),
        (500, json!(true))
    );
    got.extend(rows(&a.body).iter().cloned());
    assert_eq!(got.len(), 2500);
    assert_eq!(got[2499], json!([2500, "r2500"]));
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, r)| r[0] == json!(i as i64 + 1))
    );
    assert_eq!(c.open_sessions(), (0, 0), "a stream that is done is closed");
    // Closing a stream early frees its connection.
    let a = call(
        &c,
        json!({"action": "stream"}),
        json!({"sql": "SELECT generate_series(1, 100000)", "batch": 10}),
    )
    .await;
    let id = a.body["stream"].as_u64().unwrap();
    let a = call(&c, json!({"action": "close", "stream": id}), json!({})).await;
    assert_eq!((a.status, a.body.clone()), (200, json!({})));
    eventually("closed stream's connection released", || async {
        c.stats().in_use == 0
    })
    .await;
    // execute over max_rows.
    let a = exec(&c, "SELECT generate_series(1, 2001)", Value::Null).await;
    assert_eq!(
        (a.status, a.error.as_deref()),
        (502, Some("too_large")),
        "{a:?}"
    );
    assert!(a.body["error"].as_str().unwrap().contains("2000"));
    assert_eq!(
        rows(&ok(&c, "SELECT generate_series(1, 2000)", Value::Null).await).len(),
        2000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_database_errors_carry_message_and_code_and_the_next_call_works() {
    let name = unique("pgerr");
    let c = client(def(&name, "postgresql", PG, json!({})));
    let a = exec(&c, "SELEC 1", Value::Null).await;
    assert_eq!((a.status, a.error.as_deref()), (400, Some("sql")));
    assert_eq!(a.body["code"], "42601");
    let msg = a.body["error"].as_str().unwrap();
    assert!(msg.contains("syntax error") && msg.contains(&name), "{msg}");
    let t = unique("t_uniq");
    ok(
        &c,
        &format!("CREATE TABLE {t} (k int primary key)"),
        Value::Null,
    )
    .await;
    ok(&c, &format!("INSERT INTO {t} VALUES (1)"), Value::Null).await;
    let a = exec(&c, &format!("INSERT INTO {t} VALUES (1)"), Value::Null).await;
    assert_eq!(
        (a.error.as_deref(), a.body["code"].clone()),
        (Some("sql"), json!("23505"))
    );
    assert!(
        a.body["error"].as_str().unwrap().contains("duplicate key"),
        "{a:?}"
    );
    // Inside a transaction too, and the transaction can still be rolled back.
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let a = exec_tx(&c, tx, &format!("INSERT INTO {t} VALUES (1)"), Value::Null).await;
    assert_eq!(a.body["code"], "23505");
    assert_eq!(
        call(&c, json!({"action": "rollback", "tx": tx}), json!({}))
            .await
            .status,
        200
    );
    assert_eq!(rows(&ok(&c, "SELECT 1", Value::Null).await)[0], json!([1]));
    ok(&c, &format!("DROP TABLE {t}"), Value::Null).await;
    let s = c.stats();
    assert_eq!((s.errors, s.pool_size), (3, 10));
    assert!(
        s.calls >= 6 && s.latency_count == s.calls + s.errors,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_full_pool_answers_pool_full_after_the_wait() {
    let name = unique("pgfull");
    let c = client(def(
        &name,
        "postgresql",
        PG,
        json!({"pool_max": 1, "pool_wait_ms": 300}),
    ));
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    let a = exec(&c, "SELECT 1", Value::Null).await;
    assert_eq!(
        (a.status, a.error.as_deref()),
        (503, Some("pool_full")),
        "{a:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        a.body["error"],
        format!(
            "SQL connection {name:?}: no free connection within 300 ms (pool_max 1, all in use)"
        )
    );
    let s = c.stats();
    assert_eq!((s.pool_size, s.in_use, s.idle, s.waiting), (1, 1, 0, 0));
    call(&c, json!({"action": "rollback", "tx": tx}), json!({})).await;
    assert_eq!(exec(&c, "SELECT 1", Value::Null).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_statement_timeout_fails_timeout_and_the_pool_still_works() {
    let c = client(def(
        &unique("pgslow"),
        "postgresql",
        PG,
        json!({"statement_timeout_ms": 200, "pool_max": 1}),
    ));
    let a = exec(&c, "SELECT pg_sleep(2)", Value::Null).await;
    assert_eq!(
        (a.status, a.error.as_deref()),
        (504, Some("timeout")),
        "{a:?}"
    );
    assert!(
        a.body["error"].as_str().unwrap().contains("200 ms"),
        "{a:?}"
    );
    assert_eq!(rows(&ok(&c, "SELECT 2", Value::Null).await)[0], json!([2]));
    // Inside a transaction: the transaction stays, to be rolled back.
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let a = exec_tx(&c, tx, "SELECT pg_sleep(2)", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("timeout"), "{a:?}");
    let a = call(&c, json!({"action": "rollback", "tx": tx}), json!({})).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(rows(&ok(&c, "SELECT 3", Value::Null).await)[0], json!([3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_backends_never_exceed_pool_max_under_concurrency() {
    let name = unique("pgconc");
    let c = Arc::new(client(def(&name, "postgresql", PG, json!({"pool_max": 3}))));
    let app = format!("oxbus:{name}");
    let sql =
        "SELECT count(*)::int FROM pg_stat_activity, pg_sleep(0.05) WHERE application_name = $1";
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            rows(&ok(&c, sql, json!([app])).await)[0][0]
                .as_i64()
                .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    assert!(seen.iter().all(|n| (1..=3).contains(n)), "{seen:?}");
    assert!(seen.contains(&3), "the pool was used to its max: {seen:?}");
    assert!(c.stats().calls == 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_connect_failures_and_bad_definitions_name_the_connection() {
    // Nothing listens on port 1.
    let name = unique("pgdown");
    let c = client(def(
        &name,
        "postgresql",
        "postgres://postgres@127.0.0.1:1/test",
        json!({"pool_wait_ms": 300}),
    ));
    let a = exec(&c, "SELECT 1", Value::Null).await;
    assert_eq!(
        (a.status, a.error.as_deref()),
        (502, Some("connect")),
        "{a:?}"
    );
    let msg = a.body["error"].as_str().unwrap();
    assert!(
        msg.contains(&name)
            && msg.contains("127.0.0.1:1")
            && msg.to_lowercase().contains("refused"),
        "{msg}"
    );
    let p = c.ping().await;
    assert!(!p.ok && p.detail.contains(&name), "{p:?}");
    // A sealed password that does not open.
    let d = def(
        &unique("pgbadseal"),
        "postgresql",
        PG,
        json!({"sealed": "oxbus1:nokey:00:00"}),
    );
    let c = client(d);
    let a = exec(&c, "SELECT 1", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("connect"));
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("password does not open"),
        "{a:?}"
    );
    // A URL of another engine.
    let c = client(def(&unique("pgbadurl"), "postgresql", MY, json!({})));
    assert_eq!(
        exec(&c, "SELECT 1", Value::Null).await.error.as_deref(),
        Some("connect")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_through_outgoing_ping_and_a_sealed_password() {
    let k = key();
    let out = Outgoing::new(k.clone(), Arc::new(Metrics::new(false)));
    let name = unique("pgout");
    let mut d = def(&name, "postgresql", PG, json!({}));
    // Trust auth ignores it, but it must open and be used.
    d.sealed = Some(k.seal(&SqlConn::seal_name(&name), "s3cret"));
    out.apply_sql(&[d]);
    let meta = json!({"op": "out.sql", "conn": name, "action": "execute"});
    let r = out
        .call(
            4,
            "out.sql",
            Bytes::from(meta.to_string()),
            Bytes::from(json!({"sql": "SELECT 'ok' AS v"}).to_string()),
        )
        .await;
    assert_eq!(r.meta.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["rows"], json!([["ok"]]));
    let p = out.ping(ConnType::Sql, &name).await.unwrap();
    assert!(p.ok && p.detail.starts_with("SELECT 1 in "), "{p:?}");
    let s = out.stats(ConnType::Sql);
    assert_eq!(s[0].calls, 1);
}

// ---------- MariaDB / MySQL ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_every_type_round_trips_with_binds_errors_and_timeouts() {
    let name = unique("mytypes");
    let c = client(def(
        &name,
        "mysql",
        MY,
        json!({"statement_timeout_ms": 300}),
    ));
    let t = unique("t_my");
    ok(
        &c,
        &format!(
            "CREATE TABLE {t} (id bigint auto_increment primary key, b tinyint(1), i int, \
             u bigint unsigned, f double, n decimal(40,12), s varchar(40), dt datetime(6), \
             ts timestamp(6) NULL, d date, tm time(3), bin varbinary(20), j json, uid char(36))"
        ),
        Value::Null,
    )
    .await;
    let big = "1234567890123456789012345678.123456789012";
    let insert = format!(
        "INSERT INTO {t} (b, i, u, f, n, s, dt, ts, d, tm, bin, j, uid) VALUES \
         (:b, :i, :u, :f, :n, :s, :dt, :ts, :d, :tm, :bin, :j, :uid)"
    );
    let r = ok(
        &c,
        &insert,
        json!({
            "b": true, "i": -42, "u": 18446744073709551615u64, "f": 0.5,
            "n": {"$t": "decimal", "v": big}, "s": "it's ':x'",
            "dt": {"$t": "datetime", "v": "2024-05-01T10:20:30.123456"},
            "ts": {"$t": "datetime", "v": "2024-05-01T10:20:30+02:00"},
            "d": {"$t": "date", "v": "2024-02-29"}, "tm": {"$t": "time", "v": "12:34:56.789"},
            "bin": {"$t": "bytes", "v": "AAEAAv8="}, "j": {"$t": "json", "v": {"a": [1, "x"]}},
            "uid": {"$t": "uuid", "v": "6f1c6d1e-9b3e-4c55-8a39-1b2c3d4e5f60"}
        }),
    )
    .await;
    assert_eq!(r["rowcount"], 1);
    let first_id = r["last_insert_id"].as_i64().expect("last_insert_id");
    let r = ok(&c, &insert, json!({
        "b": null, "i": null, "u": null, "f": null, "n": null, "s": null, "dt": null, "ts": null,
        "d": null, "tm": null, "bin": null, "j": null, "uid": null
    })).await;
    assert_eq!(r["last_insert_id"], first_id + 1);
    let r = ok(
        &c,
        &format!("SELECT b, i, u, f, n, s, dt, ts, d, tm, bin, j, uid FROM {t} ORDER BY id"),
        Value::Null,
    )
    .await;
    // MariaDB's JSON is LONGTEXT: text (MySQL's own JSON type is json).
    let json_code = r["types"][11].as_str().unwrap().to_owned();
    assert!(json_code == "text" || json_code == "json", "{json_code}");
    assert_eq!(
        r["types"],
        json!([
            "bool",
            "int",
            "int",
            "float",
            "decimal",
            "text",
            "datetime",
            "datetimetz",
            "date",
            "time",
            "bytes",
            json_code,
            "text"
        ])
    );
    let j = if json_code == "json" {
        json!({"a": [1, "x"]})
    } else {
        json!("{\"a\":[1,\"x\"]}")
    };
    assert_eq!(
        rows(&r)[0],
        json!([
            true,
            -42,
            18446744073709551615u64,
            0.5,
            big,
            "it's ':x'",
            "2024-05-01T10:20:30.123456",
            "2024-05-01T08:20:30+00:00",
            "2024-02-29",
            "12:34:56.789",
            "AAEAAv8=",
            j,
            "6f1c6d1e-9b3e-4c55-8a39-1b2c3d4e5f60"
        ])
    );
    assert_eq!(rows(&r)[1], Value::Array(vec![Value::Null; 13]));
    // The same name twice binds twice.
    let r = ok(&c, "SELECT :a + :a AS twice", json!({"a": 21})).await;
    assert_eq!(rows(&r)[0], json!([42]));
    // Errors: the MySQL error number as code.
    let a = exec(&c, "SELEC 1", Value::Null).await;
    assert_eq!(
        (a.error.as_deref(), a.body["code"].clone()),
        (Some("sql"), json!("1064")),
        "{a:?}"
    );
    ok(
        &c,
        &format!("CREATE UNIQUE INDEX {t}_s ON {t} (s)"),
        Value::Null,
    )
    .await;
    ok(
        &c,
        &format!("UPDATE {t} SET s = 'same' WHERE id = {first_id}"),
        Value::Null,
    )
    .await;
    let a = exec(&c, &format!("UPDATE {t} SET s = 'same'"), Value::Null).await;
    assert_eq!(a.body["code"], "1062", "{a:?}");
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("Duplicate entry"),
        "{a:?}"
    );
    // Arrays are PostgreSQL's.
    assert_eq!(
        exec(&c, "SELECT ?", json!([[1, 2]])).await.error.as_deref(),
        Some("invalid")
    );
    // The statement time limit.
    let a = exec(&c, "SELECT SLEEP(3) AS s", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("timeout"), "{a:?}");
    assert_eq!(rows(&ok(&c, "SELECT 1", Value::Null).await)[0], json!([1]));
    // A transaction rolled back leaves nothing; a stream.
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    exec_tx(&c, tx, &format!("DELETE FROM {t}"), Value::Null).await;
    call(&c, json!({"action": "rollback", "tx": tx}), json!({})).await;
    assert_eq!(
        rows(&ok(&c, &format!("SELECT count(*) FROM {t}"), Value::Null).await)[0],
        json!([2])
    );
    let a = call(
        &c,
        json!({"action": "stream"}),
        json!({"sql": "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 50) \
                   SELECT a.n * 100 + b.n AS n FROM s a, s b", "batch": 1000}),
    )
    .await;
    let id = a.body["stream"].as_u64().expect("stream");
    let mut n = rows(&a.body).len();
    loop {
        let a = call(&c, json!({"action": "next", "stream": id}), json!({})).await;
        n += rows(&a.body).len();
        if a.body["done"] == true {
            break;
        }
    }
    assert_eq!(n, 2500);
    ok(&c, &format!("DROP TABLE {t}"), Value::Null).await;
}

// ---------- SQLite ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_types_transactions_and_streams() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("oxbus-sql")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let c = client(def(
        &unique("lite"),
        "sqlite",
        &url,
        json!({"max_rows": 100}),
    ));
    ok(
        &c,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, b BLOB, ok BOOLEAN, d DATETIME)",
        Value::Null,
    )
    .await;
    let r = ok(
        &c,
        "INSERT INTO t (i, f, s, b, ok, d) VALUES (:i, :f, :s, :b, :ok, :d)",
        json!({"i": 9007199254740993i64, "f": 1.25, "s": "x ':y'", "b": {"$t": "bytes", "v": "AAEAAv8="},
               "ok": true, "d": {"$t": "datetime", "v": "2024-05-01T10:20:30"}}),
    )
    .await;
    assert_eq!(
        (r["rowcount"].clone(), r["last_insert_id"].clone()),
        (json!(1), json!(1))
    );
    ok(
        &c,
        "INSERT INTO t (i, f, s, b, ok, d) VALUES (?, ?, ?, ?, ?, ?)",
        json!([null, null, null, null, null, null]),
    )
    .await;
    let r = ok(
        &c,
        "SELECT i, f, s, b, ok, d, 1 + 1 AS expr FROM t ORDER BY id",
        Value::Null,
    )
    .await;
    assert_eq!(
        r["types"],
        json!(["int", "float", "text", "bytes", "bool", "datetime", "int"])
    );
    assert_eq!(
        rows(&r)[0],
        json!([
            9007199254740993i64,
            1.25,
            "x ':y'",
            "AAEAAv8=",
            true,
            "2024-05-01T10:20:30",
            2
        ])
    );
    assert_eq!(rows(&r)[1], json!([null, null, null, null, null, null, 2]));
    let a = exec(&c, "SELEC 1", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("sql"));
    assert!(
        a.body["error"].as_str().unwrap().contains("syntax error"),
        "{a:?}"
    );
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    exec_tx(&c, tx, "DELETE FROM t", Value::Null).await;
    call(&c, json!({"action": "rollback", "tx": tx}), json!({})).await;
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    exec_tx(&c, tx, "INSERT INTO t (i) VALUES (3)", Value::Null).await;
    // A stream inside the transaction sees its row.
    let a = call(
        &c,
        json!({"action": "stream", "tx": tx}),
        json!({"sql": "SELECT count(*) AS n FROM t", "batch": 5}),
    )
    .await;
    assert_eq!(
        (rows(&a.body).clone(), a.body["done"].clone()),
        (vec![json!([3])], json!(true)),
        "{a:?}"
    );
    call(&c, json!({"action": "commit", "tx": tx}), json!({})).await;
    assert_eq!(
        rows(&ok(&c, "SELECT count(*) FROM t", Value::Null).await)[0],
        json!([3])
    );
    let a = call(
        &c,
        json!({"action": "stream"}),
        json!({"sql": "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2500) SELECT n FROM s", "batch": 1000}),
    )
    .await;
    let id = a.body["stream"].as_u64().unwrap();
    let mut all: Vec<Value> = rows(&a.body).clone();
    while all.len() < 2500 {
        let a = call(&c, json!({"action": "next", "stream": id}), json!({})).await;
        assert_eq!(a.status, 200, "{a:?}");
        all.extend(rows(&a.body).iter().cloned());
    }
    assert_eq!(all.last(), Some(&json!([2500])));
    assert_eq!(exec(&c, "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 101) SELECT n FROM s", Value::Null).await.error.as_deref(), Some("too_large"));
    drop(c);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_the_client_side_backstop_closes_a_connection_the_server_let_run() {
    let name = unique("pgbackstop");
    let c = client(def(
        &name,
        "postgresql",
        PG,
        json!({"statement_timeout_ms": 200, "pool_max": 2}),
    ));
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    // The server's limit lifted for this transaction: only the client's backstop remains.
    exec_tx(&c, tx, "SET LOCAL statement_timeout = 0", Value::Null).await;
    let a = exec_tx(&c, tx, "SELECT pg_sleep(3)", Value::Null).await;
    assert_eq!(
        (a.status, a.error.as_deref()),
        (504, Some("timeout")),
        "{a:?}"
    );
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("connection was closed"),
        "{a:?}"
    );
    // The transaction went with its connection.
    let a = call(&c, json!({"action": "rollback", "tx": tx}), json!({})).await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    assert_eq!(c.open_sessions(), (0, 0));
    eventually("the closed connection left the pool", || async {
        c.stats().in_use == 0
    })
    .await;
    assert_eq!(rows(&ok(&c, "SELECT 4", Value::Null).await)[0], json!([4]));
}

#[test]
fn a_client_made_outside_a_runtime_builds_its_pool_at_the_first_call() {
    let c = client(def(&unique("pgnort"), "postgresql", PG, json!({})));
    assert_eq!(c.stats().idle, 0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async { ok(&c, "SELECT 7", Value::Null).await });
    assert_eq!(rows(&r)[0], json!([7]));
    rt.block_on(async { drop(c) });
}

// ---------- review fixes (issue 19) ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_infinite_dates_floats_and_numerics_are_strings_not_panics() {
    let c = client(def(&unique("pginf"), "postgresql", PG, json!({})));
    let r = ok(
        &c,
        "SELECT 'infinity'::timestamp, '-infinity'::timestamptz, 'infinity'::date, \
         ARRAY['-infinity'::timestamp, '2024-05-01 10:00:00'], ARRAY['infinity'::date, NULL], \
         '2024-05-01 10:00:00+00'::timestamptz, '2024-05-01'::date",
        Value::Null,
    )
    .await;
    assert_eq!(
        rows(&r)[0],
        json!([
            "infinity",
            "-infinity",
            "infinity",
            ["-infinity", "2024-05-01T10:00:00"],
            ["infinity", null],
            "2024-05-01T10:00:00+00:00",
            "2024-05-01"
        ])
    );
    assert_eq!(
        r["types"],
        json!([
            "datetime",
            "datetimetz",
            "date",
            "datetime[]",
            "date[]",
            "datetimetz",
            "date"
        ])
    );
    // Past chrono's years: a clear `invalid`, and the pool goes on.
    let a = exec(&c, "SELECT '294000-01-01'::timestamp", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    let a = exec(&c, "SELECT '5874000-01-01'::date", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    let r = ok(
        &c,
        "SELECT 'NaN'::float8, '-Infinity'::float8, 'Infinity'::real, 0.1::real, \
         ARRAY[0.1::real, 'NaN'], :n::numeric, :i::numeric, :m::numeric",
        json!({"n": {"$t": "decimal", "v": "NaN"}, "i": {"$t": "decimal", "v": "Infinity"},
               "m": {"$t": "decimal", "v": "-Infinity"}}),
    )
    .await;
    assert_eq!(
        rows(&r)[0],
        json!([
            "NaN",
            "-Infinity",
            "Infinity",
            0.1,
            [0.1, "NaN"],
            "NaN",
            "Infinity",
            "-Infinity"
        ])
    );
    // The same stream: closed channel or not, each value is read, never a dead task.
    let a = call(
        &c,
        json!({"action": "stream"}),
        json!({"sql": "SELECT 'infinity'::timestamp FROM generate_series(1, 3)", "batch": 10}),
    )
    .await;
    assert_eq!(
        (a.status, a.body["done"].clone()),
        (200, json!(true)),
        "{a:?}"
    );
    assert_eq!(rows(&a.body).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_transaction_control_and_session_settings_are_refused_outside_transaction() {
    let c = client(def(
        &unique("pgtxc"),
        "postgresql",
        PG,
        json!({"pool_max": 1}),
    ));
    for sql in [
        "BEGIN",
        " /* x */ start transaction",
        "COMMIT",
        "SET search_path = nowhere",
        "RESET ALL",
    ] {
        let a = exec(&c, sql, Value::Null).await;
        assert_eq!(a.error.as_deref(), Some("invalid"), "{sql}: {a:?}");
        assert!(
            a.body["error"].as_str().unwrap().contains("transaction"),
            "{a:?}"
        );
    }
    // The one connection is not left inside a transaction: what it writes, another
    // client sees.
    let t = unique("t_txc");
    ok(&c, &format!("CREATE TABLE {t} (k int)"), Value::Null).await;
    ok(&c, &format!("INSERT INTO {t} VALUES (1)"), Value::Null).await;
    let other = client(def(&unique("pgtxc2"), "postgresql", PG, json!({})));
    assert_eq!(count(&other, &t).await, 1);
    ok(&other, &format!("DROP TABLE {t}"), Value::Null).await;
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let a = exec_tx(&c, tx, "SET LOCAL search_path = public", Value::Null).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = exec_tx(&c, tx, "SAVEPOINT s1", Value::Null).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = exec_tx(&c, tx, "ROLLBACK TO SAVEPOINT s1", Value::Null).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = exec_tx(&c, tx, "COMMIT", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    let a = call(
        &c,
        json!({"action": "stream", "tx": tx}),
        json!({"sql": "BEGIN"}),
    )
    .await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    let a = call(&c, json!({"action": "commit", "tx": tx}), json!({})).await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_too_large_does_not_return_the_connection_with_rows_unread() {
    let c = client(def(
        &unique("pgbig"),
        "postgresql",
        PG,
        json!({"pool_max": 1, "max_rows": 10}),
    ));
    let pid = |r: Value| rows(&r)[0][0].as_i64().unwrap();
    let before = pid(ok(&c, "SELECT pg_backend_pid()", Value::Null).await);
    assert_eq!(
        pid(ok(&c, "SELECT pg_backend_pid()", Value::Null).await),
        before
    );
    let a = exec(&c, "SELECT generate_series(1, 100000)", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("too_large"));
    let after = pid(ok(&c, "SELECT pg_backend_pid()", Value::Null).await);
    assert_ne!(after, before, "the connection was closed, a new one made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_stream_keeps_its_transaction_alive_while_it_is_read() {
    let c = client(def(
        &unique("pgstx"),
        "postgresql",
        PG,
        json!({"session_idle_ms": 1000}),
    ));
    let tx = call(&c, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let a = call(
        &c,
        json!({"action": "stream", "tx": tx}),
        json!({"sql": "SELECT generate_series(1, 20)", "batch": 1}),
    )
    .await;
    let stream = a.body["stream"].as_u64().expect("a stream");
    // The rows are read ahead at once (the task lets go of the transaction); each `next`,
    // well within the idle limit, for longer than the limit in all.
    let mut done = false;
    for _ in 0..19 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let a = call(&c, json!({"action": "next", "stream": stream}), json!({})).await;
        assert_eq!(a.status, 200, "{a:?}");
        done = a.body["done"] == true;
        if done {
            break;
        }
    }
    assert!(done);
    // Idle since the last `next` for less than the limit (but longer than the reaper's
    // period): the transaction, last used by the stream, stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = exec_tx(&c, tx, "SELECT 1", Value::Null).await;
    assert_eq!(a.status, 200, "the transaction outlived its stream: {a:?}");
    let a = call(&c, json!({"action": "commit", "tx": tx}), json!({})).await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_session_ids_are_unique_across_clients_and_gone_workers_open_none() {
    let c1 = client(def(&unique("pgid1"), "postgresql", PG, json!({})));
    let c2 = client(def(&unique("pgid2"), "postgresql", PG, json!({})));
    let t1 = call(&c1, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    let t2 = call(&c2, json!({"action": "begin"}), json!({})).await.body["tx"]
        .as_u64()
        .unwrap();
    assert_ne!(t1, t2);
    // A stale id (from the other client) names nothing here.
    let a = exec_tx(&c2, t1, "SELECT 1", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"));
    for (c, t) in [(&c1, t1), (&c2, t2)] {
        let a = call(c, json!({"action": "rollback", "tx": t}), json!({})).await;
        assert_eq!(a.status, 200);
    }
    // Worker 9 went while its begin / stream were on their way: nothing stays open.
    c1.worker_gone(9);
    let a = call_w(&c1, 9, json!({"action": "begin"}), json!({})).await;
    assert_eq!(a.error.as_deref(), Some("io"), "{a:?}");
    let a = call_w(
        &c1,
        9,
        json!({"action": "stream"}),
        json!({"sql": "SELECT generate_series(1, 5000)", "batch": 10}),
    )
    .await;
    assert_eq!(a.error.as_deref(), Some("io"), "{a:?}");
    assert_eq!(c1.open_sessions(), (0, 0));
    eventually("connections back", || async { c1.stats().in_use == 0 }).await;
    // Other workers are unaffected.
    let a = call_w(&c1, 10, json!({"action": "begin"}), json!({})).await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_decimal_nan_is_refused_and_backslashes_do_not_hide_binds() {
    let c = client(def(&unique("mynan"), "mysql", MY, json!({})));
    let a = exec(&c, "SELECT :d", json!({"d": {"$t": "decimal", "v": "NaN"}})).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    assert!(
        a.body["error"].as_str().unwrap().contains("PostgreSQL"),
        "{a:?}"
    );
    let r = ok(
        &c,
        r#"SELECT 'it\'s :no', "x\":no", :a # :c"#,
        json!({"a": 5}),
    )
    .await;
    assert_eq!(rows(&r)[0], json!(["it's :no", "x\":no", 5]));
    let a = exec(&c, "USE mysql", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    let a = exec(&c, "SET @x = 1", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_codes_fit_the_values_and_last_insert_id_is_the_statements_own() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("oxbus-sql")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let c = client(def(&unique("lite2"), "sqlite", &url, json!({})));
    ok(
        &c,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, ts TIMESTAMP, d DATE, b BLOB, dt DATETIME)",
        Value::Null,
    )
    .await;
    let r = ok(
        &c,
        "INSERT INTO t (ts, d, b, dt) VALUES (1714557600, '2024-05-01 10:00:00', x'0001', '2024-05-01 10:00:00')",
        Value::Null,
    )
    .await;
    assert_eq!(r["last_insert_id"], json!(1));
    ok(
        &c,
        "INSERT INTO t (ts, d, b, dt) VALUES (NULL, NULL, 'text', 'not a date')",
        Value::Null,
    )
    .await;
    let r = ok(&c, "SELECT ts, d, b, dt FROM t ORDER BY id", Value::Null).await;
    // TIMESTAMP holding an integer: an int; DATE holding a datetime: text; BLOB: bytes,
    // its TEXT value too (base64 of its UTF-8).
    assert_eq!(r["types"], json!(["int", "text", "bytes", "datetime"]));
    assert_eq!(
        rows(&r)[0],
        json!([
            1714557600,
            "2024-05-01 10:00:00",
            "AAE=",
            "2024-05-01 10:00:00"
        ])
    );
    assert_eq!(rows(&r)[1], json!([null, null, "dGV4dA==", "not a date"]));
    // Not an insert, or nothing inserted: no id (the connection's last one is stale).
    let r = ok(&c, "UPDATE t SET d = NULL", Value::Null).await;
    assert_eq!(
        (r["rowcount"].clone(), r["last_insert_id"].clone()),
        (json!(2), Value::Null)
    );
    let r = ok(&c, "INSERT INTO t (d) SELECT d FROM t WHERE 0", Value::Null).await;
    assert_eq!(r["last_insert_id"], Value::Null);
    let a = exec(&c, "BEGIN", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    let a = exec(&c, "SELECT 1; BEGIN", Value::Null).await;
    assert_eq!(a.error.as_deref(), Some("invalid"), "{a:?}");
    drop(c);
    let _ = std::fs::remove_file(&path);
}
