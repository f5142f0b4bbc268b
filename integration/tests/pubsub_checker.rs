//! The pub/sub checker (issue 20), in the style of Jepsen's RabbitMQ `total-queue`: every
//! message carries a value of its own; publishers and subscribers run against both servers
//! of a two-server cluster while a delivering server is killed -9 (twice: the pull
//! subscription's, then the push one's) and the cluster's own PostgreSQL is stopped and
//! started; at the end the values whose publish was acknowledged are compared with the
//! values received:
//!
//! - lost: acknowledged and never received (must be none);
//! - unexpected: received and never published (must be none);
//! - duplicates: received more than once (at-least-once delivery allows them: reported);
//! - recovered: received although the publish answered an error or no answer (reported).
//!
//! Two subscriptions of one GD topic are checked side by side: a pull subscription, pulled
//! and acked from both servers, and a push subscription to an HTTP server of the test.

use oxbus_integration::proxy::{Conn, SendError};
use oxbus_integration::upstream::Upstream;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "/chk/total";
const USER: &str = "checker";
const PASSWORD: &str = "chk-pass-9c1e";
/// How long one REST call may take before the checker counts it as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Acknowledged publishes each phase must see before the next fault: the faults then hit
/// a cluster under load, and a phase in which nothing could be published fails the test
/// instead of passing it with nothing checked.
const PER_PHASE: u64 = 150;
/// The shortest phase: the load that runs between two faults.
const MIN_PHASE: Duration = Duration::from_secs(2);
const PHASES: [&str; 4] = [
    "before any fault",
    "after the first kill -9",
    "after PostgreSQL came back",
    "after the second kill -9",
];

fn basic() -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

/// What the publishers saw, by value.
#[derive(Default)]
struct Published {
    /// Answered 200 with a msg_id per message.
    ok: BTreeSet<u64>,
    /// Answered with an error status, or refused before the request was sent: why.
    failed: BTreeMap<u64, String>,
    /// No answer (connection lost after sending, or no answer within [`CALL_TIMEOUT`]).
    unknown: BTreeMap<u64, String>,
    /// Acknowledged publishes per phase of [`PHASES`].
    ok_by_phase: [u64; 4],
}

/// What one subscription received: how many times each value, and what was not a value.
#[derive(Default)]
struct Received {
    counts: HashMap<u64, u32>,
    garbage: Vec<String>,
    /// When the last message arrived (for the drain's quiet period).
    last: Option<Instant>,
}

impl Received {
    fn record(&mut self, data: &str) {
        match data
            .strip_prefix("chk-")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(v) => *self.counts.entry(v).or_default() += 1,
            None => self.garbage.push(data.to_owned()),
        }
        self.last = Some(Instant::now());
    }
}

/// The shared state of the run.
struct Run {
    ports: [u16; 2],
    sub_key: String,
    next_value: AtomicU64,
    phase: AtomicUsize,
    stop_publishing: AtomicBool,
    stop_pulling: AtomicBool,
    published: Mutex<Published>,
    pulled: Mutex<Received>,
    /// Pull and ack calls that failed, by what was seen (for the report).
    pull_errors: Mutex<BTreeMap<String, u64>>,
}

/// A keep-alive connection to one server that reconnects after an error.
struct Caller {
    port: u16,
    conn: Option<Conn>,
}

/// How a call ended.
enum Outcome {
    Answered(u16, Value),
    /// Nothing was sent (no connection, or it closed first): the call had no effect.
    NotSent(String),
    /// Sent, and no answer: it may or may not have had its effect.
    NoAnswer(String),
}

impl Caller {
    fn new(port: u16) -> Caller {
        Caller { port, conn: None }
    }

    async fn post(&mut self, path: &str, body: &Value) -> Outcome {
        if self.conn.is_none() {
            match tokio::time::timeout(CALL_TIMEOUT, Conn::connect(self.port, None)).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => return Outcome::NotSent(format!("connect: {e}")),
                Err(_) => return Outcome::NotSent("connect: timed out".into()),
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        let auth = basic();
        let headers = [
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ];
        let sent = tokio::time::timeout(
            CALL_TIMEOUT,
            conn.send("POST", path, &headers, body.to_string().into()),
        )
        .await;
        match sent {
            Ok(Ok((status, body, _))) => {
                let v = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
                Outcome::Answered(status, v)
            }
            Ok(Err(SendError::Closed)) => {
                self.conn = None;
                Outcome::NotSent("the connection was closed before the request".into())
            }
            Ok(Err(SendError::Failed(e))) => {
                self.conn = None;
                Outcome::NoAnswer(e)
            }
            Err(_) => {
                self.conn = None;
                Outcome::NoAnswer(format!("no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }
}

/// The error code of an error answer, for the report.
fn code_of(status: u16, v: &Value) -> String {
    let code = v["error"]["code"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .unwrap_or("?");
    format!("HTTP {status} {code}")
}

/// A publisher: batches of 1-4 new values to server `which`, until told to stop.
async fn publisher(run: Arc<Run>, which: usize) {
    let mut caller = Caller::new(run.ports[which]);
    let path = format!("/pubsub/topic{TOPIC}");
    let mut batch = 0u64;
    while !run.stop_publishing.load(Ordering::SeqCst) {
        batch += 1;
        let n = 1 + batch % 4;
        let first = run.next_value.fetch_add(n, Ordering::SeqCst);
        let values: Vec<u64> = (first..first + n).collect();
        let msgs: Vec<Value> = values
            .iter()
            .map(|v| json!({"data": format!("chk-{v}")}))
            .collect();
        let phase = run.phase.load(Ordering::SeqCst);
        let outcome = caller.post(&path, &json!({ "messages": msgs })).await;
        let failed = {
            let mut p = run.published.lock().unwrap();
            match outcome {
                Outcome::Answered(200, v)
                    if v["msg_ids"].as_array().map(Vec::len) == Some(values.len()) =>
                {
                    p.ok.extend(&values);
                    p.ok_by_phase[phase] += n;
                    false
                }
                Outcome::Answered(200, v) => {
                    // A 200 whose msg_ids do not match the batch is an acknowledgement of
                    // something else: the checker counts it as acknowledged (so that a loss
                    // shows), and the answer's shape is the test's failure.
                    panic!("publish of {n} messages answered 200 with {v}: not one msg_id each")
                }
                Outcome::Answered(status, v) => {
                    let why = code_of(status, &v);
                    p.failed.extend(values.iter().map(|&x| (x, why.clone())));
                    true
                }
                Outcome::NotSent(why) => {
                    p.failed.extend(values.iter().map(|&x| (x, why.clone())));
                    true
                }
                Outcome::NoAnswer(why) => {
                    p.unknown.extend(values.iter().map(|&x| (x, why.clone())));
                    true
                }
            }
        };
        if failed {
            // A server that is down or without its store answers at once: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A pull subscriber on server `which`: long-polls, records and acks, until told to stop.
async fn puller(run: Arc<Run>, which: usize) {
    let mut caller = Caller::new(run.ports[which]);
    let error = |what: String| {
        *run.pull_errors.lock().unwrap().entry(what).or_default() += 1;
    };
    while !run.stop_pulling.load(Ordering::SeqCst) {
        let req = json!({"sub_key": run.sub_key, "max_messages": 100, "wait_ms": 500});
        let msgs = match caller.post("/pubsub/messages/get", &req).await {
            Outcome::Answered(200, v) => v["messages"].as_array().cloned().unwrap_or_else(|| {
                panic!("POST /pubsub/messages/get answered 200 without messages: {v}")
            }),
            Outcome::Answered(status, v) => {
                error(format!("get: {}", code_of(status, &v)));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Outcome::NotSent(_) | Outcome::NoAnswer(_) => {
                error("get: no answer".into());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        let mut ids = Vec::with_capacity(msgs.len());
        {
            let mut r = run.pulled.lock().unwrap();
            for m in &msgs {
                let data = m["data"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a pulled message without text data: {m}"));
                r.record(data);
                ids.push(m["msg_id"].clone());
            }
        }
        // An ack that fails is no error of the broker's: the messages come again (after
        // the ack timeout, or from the next owner) and count as duplicates.
        let ack = json!({"sub_key": run.sub_key, "msg_ids": ids});
        match caller.post("/pubsub/messages/ack", &ack).await {
            Outcome::Answered(200, _) => {}
            Outcome::Answered(status, v) => error(format!("ack: {}", code_of(status, &v))),
            Outcome::NotSent(_) | Outcome::NoAnswer(_) => error("ack: no answer".into()),
        }
    }
}

/// What the push subscription's endpoint received, from the test upstream's records.
fn pushed(up: &Upstream) -> Received {
    let mut r = Received::default();
    for req in up.requests_to("/echo/push") {
        let doc: Value = serde_json::from_slice(&req.body).unwrap_or_else(|e| {
            panic!(
                "a push delivery whose body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&req.body)
            )
        });
        for m in doc["messages"].as_array().into_iter().flatten() {
            match m["data"].as_str() {
                Some(d) => r.record(d),
                None => r.garbage.push(m.to_string()),
            }
        }
    }
    r
}

/// The verdicts on what subscription `what` received: its report lines, and what is wrong
/// (lost or unexpected values; none when all is well).
fn judge(p: &Published, r: &Received, what: &str) -> (String, Vec<String>) {
    let lost: Vec<u64> =
        p.ok.iter()
            .filter(|v| !r.counts.contains_key(v))
            .copied()
            .collect();
    let mut unexpected: Vec<u64> = r
        .counts
        .keys()
        .filter(|v| !p.ok.contains(v) && !p.failed.contains_key(v) && !p.unknown.contains_key(v))
        .copied()
        .collect();
    unexpected.sort_unstable();
    let dups: u64 = r.counts.values().map(|&c| u64::from(c - 1)).sum();
    let dup_values = r.counts.values().filter(|&&c| c > 1).count();
    let mut recovered: Vec<u64> = r
        .counts
        .keys()
        .filter(|v| p.failed.contains_key(v) || p.unknown.contains_key(v))
        .copied()
        .collect();
    recovered.sort_unstable();
    let refused: Vec<String> = recovered
        .iter()
        .filter_map(|v| p.failed.get(v).map(|why| format!("{v}: {why}")))
        .collect();
    let mut report = format!(
        "{what}: received {} values, lost {}, unexpected {} (+{} not values), duplicates \
         {dups} (of {dup_values} values), recovered {} (of which {} answered an error)\n",
        r.counts.len(),
        lost.len(),
        unexpected.len(),
        r.garbage.len(),
        recovered.len(),
        refused.len(),
    );
    if !refused.is_empty() {
        // No loss: a publish can commit and its answer still be an error (the connection
        // to the store dropped after the commit). Reported with the reasons.
        report.push_str(&format!(
            "  received although answered an error: {:?}\n",
            &refused[..refused.len().min(5)]
        ));
    }
    let mut bad = Vec::new();
    if !lost.is_empty() {
        bad.push(format!(
            "{what}: {} acknowledged values never received, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        ));
    }
    if !unexpected.is_empty() || !r.garbage.is_empty() {
        bad.push(format!(
            "{what}: received values never published: {:?}, and data that is no value: {:?}",
            &unexpected[..unexpected.len().min(20)],
            &r.garbage[..r.garbage.len().min(5)]
        ));
    }
    (report, bad)
}

/// The verdicts themselves, on made-up histories: a loss and a stranger are caught,
/// duplicates and recovered publishes are only reported.
#[test]
fn the_verdicts_catch_losses_and_strangers_and_only_report_the_rest() {
    let mut p = Published::default();
    p.ok.extend([1, 2, 3, 4]);
    p.failed.insert(5, "HTTP 503 unavailable".into());
    p.unknown.insert(6, "no answer".into());
    let mut r = Received::default();
    for d in [
        "chk-1", "chk-2", "chk-2", "chk-3", "chk-4", "chk-5", "chk-6",
    ] {
        r.record(d);
    }
    let (report, bad) = judge(&p, &r, "pull");
    assert!(bad.is_empty(), "{bad:?}");
    assert!(
        report.contains(
            "lost 0, unexpected 0 (+0 not values), duplicates 1 (of 1 values), \
                         recovered 2 (of which 1 answered an error)"
        ),
        "{report}"
    );
    assert!(report.contains("5: HTTP 503 unavailable"), "{report}");

    let mut r = Received::default();
    for d in ["chk-1", "chk-3", "chk-4", "chk-9", "hello"] {
        r.record(d);
    }
    let (_, bad) = judge(&p, &r, "push");
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("1 acknowledged values never received, e.g. [2]"),
        "{bad:?}"
    );
    assert!(
        bad[1].contains("never published: [9]") && bad[1].contains("\"hello\""),
        "{bad:?}"
    );
}

async fn admin(srv: &Server, method: &str, path: &str, body: Value) -> Resp {
    srv.admin(
        method,
        path,
        Some(&srv.admin_token()),
        body.to_string().as_bytes(),
    )
    .await
}

async fn admin_ok(srv: &Server, method: &str, path: &str, body: Value) -> Value {
    let r = admin(srv, method, path, body.clone()).await;
    assert!(
        r.status == 200 || r.status == 201,
        "admin {method} {path} {body}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// The server delivering subscription `sub_key` (its lease holder), as either server's
/// admin API tells; none while no server holds the lease.
async fn owner(servers: &[Option<Server>; 2], sub_key: &str) -> Option<String> {
    for s in servers.iter().flatten() {
        let r = admin(s, "GET", &format!("/v1/pubsub/subs/{sub_key}"), Value::Null).await;
        // The subscription with its figures under `stats` (`pubsub::SubStats`).
        if r.status == 200
            && let Some(o) = r.json()["stats"]["owner"].as_str()
        {
            return Some(o.to_owned());
        }
    }
    None
}

/// POSTs `body` to `path` on `port` until it is answered 200 (the definitions reach the
/// second server with the config version), then the answer; panics with the last outcome
/// after 20 s.
async fn post_until_ok(port: u16, path: &str, body: &Value) -> Value {
    let mut c = Caller::new(port);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match c.post(path, body).await {
            Outcome::Answered(200, v) => return v,
            Outcome::Answered(status, v) => format!("{status} {v}"),
            Outcome::NotSent(e) | Outcome::NoAnswer(e) => e,
        };
        assert!(
            Instant::now() < end,
            "POST {path} {body} on port {port} never answered 200; the last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the current phase: until `n` publishes were acknowledged in it, and for at least
/// [`MIN_PHASE`] (the load goes on meanwhile: the next fault hits a cluster with messages in
/// flight).
async fn run_phase(run: &Run, n: u64) {
    let start = Instant::now();
    let phase = run.phase.load(Ordering::SeqCst);
    let what = format!("{n} acknowledged publishes {}", PHASES[phase]);
    eventually(Duration::from_secs(30), &what, || async {
        (run.published.lock().unwrap().ok_by_phase[phase] >= n).then_some(())
    })
    .await;
    tokio::time::sleep(MIN_PHASE.saturating_sub(start.elapsed())).await;
}

/// Kills -9 the server delivering subscription `sub_key` (the second server when no owner
/// is known) and starts it again on the same ports, store and directory.
async fn kill_owner(servers: &mut [Option<Server>; 2], names: [&str; 2], sub_key: &str) {
    let owner = owner(servers, sub_key).await;
    let i = match owner.as_deref() {
        Some(o) => names.iter().position(|n| *n == o).unwrap_or_else(|| {
            panic!("subscription {sub_key}'s owner {o:?} is not one of the servers {names:?}")
        }),
        None => 1,
    };
    eprintln!(
        "checker: kill -9 server {} (owner of {sub_key}: {owner:?})",
        names[i]
    );
    let mut victim = servers[i].take().expect("the server to kill");
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    victim.wait_exit(Duration::from_secs(10));
    let again = victim.spawn_again();
    again.wait_ready().await;
    servers[i] = Some(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_publishes_survive_kills_and_a_store_outage() {
    let started = Instant::now();
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let secret = cluster_secret("pschk");
    let names = ["a", "b"];
    // Fixed HTTP ports, outside the ephemeral range, so that a restarted server answers
    // where the publishers and subscribers already call it.
    let ports = [
        port_outside_ephemeral_range(),
        port_outside_ephemeral_range(),
    ];
    // One secrets key for both (the first server makes it): each opens what the other
    // sealed (the basic definition's password).
    let key = std::env::temp_dir().join(format!(
        "oxbus-pschk-{}-{}.key",
        std::process::id(),
        next_id()
    ));
    let key_file = format!("{:?}", key.display().to_string());
    let env = |i: usize| {
        Env::new()
            .workers(1)
            .cluster_member(&url, names[i], &secret)
            .set("store", "key_file", &key_file)
            .set("server", "listen", &format!("\"127.0.0.1:{}\"", ports[i]))
    };
    let a = env(0).start().await;
    let b = env(1).start().await;

    // The definitions, through A: a basic-auth caller allowed on /chk/*, the GD topic, and
    // the pub/sub REST channel guarded by that definition.
    admin_ok(
        &a,
        "POST",
        "/v1/security",
        json!({"name": "checker", "type": "basic", "username": USER, "password": PASSWORD}),
    )
    .await;
    admin_ok(
        &a,
        "PUT",
        "/v1/pubsub/endpoints/checker",
        json!({"name": "checker", "security": "checker",
               "topic_patterns": ["pub=/chk/*", "sub=/chk/*"]}),
    )
    .await;
    admin_ok(
        &a,
        "PUT",
        &format!("/v1/pubsub/topics{TOPIC}"),
        json!({"name": TOPIC, "has_gd": true, "max_depth_gd": 10_000_000, "on_full": "refuse",
               "on_no_subs": "keep"}),
    )
    .await;
    admin_ok(
        &a,
        "POST",
        "/v1/channels",
        json!({"name": "pubsub", "type": "pubsub", "url_path": "/pubsub", "security": "checker"}),
    )
    .await;

    // The subscriptions: pull through B's REST API, and push to the test's upstream through
    // B's admin API (the REST API makes pull subscriptions only).
    let up = Upstream::plain().await;
    let path = format!("/pubsub/subscribe/topic{TOPIC}");
    let pull = json!({"delivery": {"type": "pull"}, "ack_timeout_ms": 3000});
    let sub_key = post_until_ok(ports[1], &path, &pull).await["sub_key"]
        .as_str()
        .expect("a sub_key")
        .to_owned();
    let push_key = "sk.chk-push".to_owned();
    let push = json!({
        "topic": TOPIC,
        "delivery": {"type": "push", "url": format!("{}/echo/push", up.address())},
        "batch_size": 50,
        "retry": {"max_attempts": 0, "backoff_ms": 50, "max_backoff_ms": 1000, "multiplier": 2},
    });
    admin_ok(&b, "PUT", &format!("/v1/pubsub/subs/{push_key}"), push).await;
    // Both servers know the pull subscription before the load starts.
    for port in ports {
        let req = json!({"sub_key": sub_key, "max_messages": 1, "wait_ms": 0});
        let v = post_until_ok(port, "/pubsub/messages/get", &req).await;
        assert_eq!(v["messages"], json!([]), "nothing published yet: {v}");
    }

    let run = Arc::new(Run {
        ports,
        sub_key: sub_key.clone(),
        next_value: AtomicU64::new(1),
        phase: AtomicUsize::new(0),
        stop_publishing: AtomicBool::new(false),
        stop_pulling: AtomicBool::new(false),
        published: Mutex::default(),
        pulled: Mutex::default(),
        pull_errors: Mutex::default(),
    });
    let mut publishers = Vec::new();
    for i in 0..4 {
        publishers.push(tokio::spawn(publisher(run.clone(), i % 2)));
    }
    let mut pullers = Vec::new();
    for i in 0..2 {
        pullers.push(tokio::spawn(puller(run.clone(), i % 2)));
    }

    // The faults, each once the cluster has acknowledged publishes since the last one.
    let mut servers = [Some(a), Some(b)];
    run_phase(&run, PER_PHASE).await;
    kill_owner(&mut servers, names, &sub_key).await;
    run.phase.store(1, Ordering::SeqCst);
    run_phase(&run, PER_PHASE).await;

    eprintln!("checker: stopping PostgreSQL");
    let failed_before = {
        let p = run.published.lock().unwrap();
        p.failed.len() + p.unknown.len()
    };
    pg.stop();
    // The outage lasts until the publishers have seen it (a GD publish cannot be
    // acknowledged without the store), so that it is not over before it was felt.
    eventually(
        Duration::from_secs(20),
        "a publish refused during the outage",
        || async {
            let p = run.published.lock().unwrap();
            (p.failed.len() + p.unknown.len() > failed_before).then_some(())
        },
    )
    .await;
    pg.start_again();
    eprintln!("checker: PostgreSQL started again");
    run.phase.store(2, Ordering::SeqCst);
    run_phase(&run, PER_PHASE).await;

    // The second kill is of the push subscription's server (the first was the pull one's):
    // each delivery kind loses its server once, wherever the leases went meanwhile.
    kill_owner(&mut servers, names, &push_key).await;
    run.phase.store(3, Ordering::SeqCst);
    run_phase(&run, PER_PHASE).await;

    run.stop_publishing.store(true, Ordering::SeqCst);
    for p in publishers {
        p.await.expect("a publisher task panicked");
    }
    let published_at = started.elapsed();

    // The drain: until every acknowledged value has reached both subscriptions and nothing
    // new arrived for a while (late duplicates, unexpected values), or the deadline.
    let ok: BTreeSet<u64> = run.published.lock().unwrap().ok.clone();
    let quiet = Duration::from_secs(2);
    let drain_end = Instant::now() + Duration::from_secs(40);
    loop {
        let pulled_all = {
            let r = run.pulled.lock().unwrap();
            ok.iter().all(|v| r.counts.contains_key(v))
                && r.last.is_none_or(|t| t.elapsed() >= quiet)
        };
        let pushed_all = {
            let r = pushed(&up);
            ok.iter().all(|v| r.counts.contains_key(v))
        };
        if (pulled_all && pushed_all) || Instant::now() > drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.stop_pulling.store(true, Ordering::SeqCst);
    for p in pullers {
        p.await.expect("a pull task panicked");
    }

    // The verdicts.
    let p = run.published.lock().unwrap();
    let mut report = format!(
        "published in {published_at:?}: {} acknowledged ({:?} per phase {PHASES:?}), {} failed, \
         {} without answer; pull errors {:?}\n",
        p.ok.len(),
        p.ok_by_phase,
        p.failed.len(),
        p.unknown.len(),
        run.pull_errors.lock().unwrap()
    );
    let mut bad = Vec::new();
    let pulled = std::mem::take(&mut *run.pulled.lock().unwrap());
    for (what, key, r) in [("pull", &sub_key, pulled), ("push", &push_key, pushed(&up))] {
        let (line, wrong) = judge(&p, &r, &format!("{what} subscription {key}"));
        report.push_str(&line);
        bad.extend(wrong);
    }
    eprintln!("checker report (total {:?}):\n{report}", started.elapsed());
    assert!(bad.is_empty(), "{}\n{report}", bad.join("\n"));
    drop(p);
    drop(servers);
    let _ = std::fs::remove_file(secret);
    let _ = std::fs::remove_file(key);
}
