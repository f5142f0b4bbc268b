//! Issue 21, AMQP channels end to end: the real server and workers consuming queues of the
//! machine's RabbitMQ (each test its own queues, deleted after: `oxbus_integration::rabbit`)
//! into a service that records every message it finished (one JSON line per message in a
//! file of the test's), so the tests count what was processed against what the broker
//! still holds.
//!
//! - every message consumed exactly as published (bodies, headers, properties);
//! - a raising service: requeued, then dead-lettered past `max_redeliveries` (classic and
//!   quorum queues);
//! - a server killed -9 mid-batch: after a restart every message processed at least once;
//! - SIGTERM: in-flight messages finish and are acked, the rest go back to the queue;
//! - the broker connection cut (a relay the test controls): reconnect and resume;
//! - live edits: inactive stops consuming, active resumes, delete stops.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use oxbus_integration::api::{admin, text};
use oxbus_integration::rabbit::{self, Rabbit, unique};
use oxbus_integration::relay::Relay;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `amqp.record`: appends what it saw of the message to the file named in its source,
/// once it is done (a line is a message processed); a body starting with `fail` raises,
/// one starting with `slow` takes 200 ms first (its body is appended to `<record>.started`
/// when it starts), one starting with `tick` 20 ms.
fn services(record: &Path) -> String {
    format!(
        r#"import base64
import json
import os
import time

from oxbus import Service

RECORD = {record:?}


class Record(Service):
    name = 'amqp.record'

    def handle(self):
        raw = self.request.raw_request
        msg = self.request.amqp.msg
        if raw.startswith(b'slow'):
            fd = os.open(RECORD + '.started', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, raw + b'\n')
            finally:
                os.close(fd)
            time.sleep(0.2)
        elif raw.startswith(b'tick'):
            time.sleep(0.02)
        line = json.dumps({{
            'body': base64.b64encode(raw).decode(),
            'payload_is_json': not isinstance(self.request.payload, bytes),
            'channel': [self.channel.type, self.channel.name],
            'properties': msg.properties,
            'headers': {{k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v)
                         for k, v in msg.headers.items()}},
            'info': msg.delivery_info,
            'redeliveries': msg.redeliveries,
            'pid': os.getpid(),
            'failed': raw.startswith(b'fail'),
        }})
        fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + '\n').encode())
        finally:
            os.close(fd)
        if raw.startswith(b'fail'):
            raise ValueError('refusing %r' % raw)
"#
    )
}

struct Setup {
    srv: Server,
    record: PathBuf,
    rabbit: Rabbit,
}

async fn setup(workers: u32) -> Setup {
    setup_on(workers, false).await.0
}

/// `postgres`: on a PostgreSQL store of its own (a server killed -9 leaves its registration
/// behind, which a SQLite store, one server's only, refuses a new run beside).
async fn setup_on(workers: u32, postgres: bool) -> (Setup, Option<PgDatabase>) {
    setup_with(workers, postgres, |e| e).await
}

async fn setup_with(
    workers: u32,
    postgres: bool,
    tune: impl FnOnce(Env) -> Env,
) -> (Setup, Option<PgDatabase>) {
    let record = std::env::temp_dir().join(format!(
        "oxbus-it-amqp-{}-{}.jsonl",
        std::process::id(),
        next_id()
    ));
    let _ = std::fs::remove_file(&record);
    let env = Env::new()
        .workers(workers)
        .service("amqp_record.py", &services(&record));
    let env = tune(env);
    let (env, db) = if postgres {
        let (env, db) = env.postgres_store();
        (env, Some(db))
    } else {
        (env, None)
    };
    let srv = env.start().await;
    let setup = Setup {
        srv,
        record,
        rabbit: Rabbit::connect().await,
    };
    (setup, db)
}

/// Every line the service recorded. A line still being written (no newline yet: a read may
/// see part of an append) is not one yet.
fn recorded(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let done = text.rfind('\n').map_or("", |end| &text[..end]);
    done.lines()
        .map(|l| serde_json::from_str(l).expect("a recorded line"))
        .collect()
}

fn body_of(line: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(line["body"].as_str().unwrap())
        .unwrap()
}

/// The bodies whose service started (`slow…` ones), as text.
fn started(record: &Path) -> BTreeSet<String> {
    let mut p = record.as_os_str().to_owned();
    p.push(".started");
    let text = std::fs::read_to_string(PathBuf::from(p)).unwrap_or_default();
    let done = text.rfind('\n').map_or("", |end| &text[..end]);
    done.lines().map(str::to_owned).collect()
}

/// The distinct bodies recorded, as text.
fn bodies(path: &Path) -> BTreeSet<String> {
    recorded(path)
        .iter()
        .map(|l| String::from_utf8(body_of(l)).unwrap())
        .collect()
}

fn channel_def(queue: &str, extra: Value) -> Value {
    let mut d = json!({
        "address": rabbit::ADDRESS,
        "username": "guest",
        "password": "guest",
        "queue": queue,
        "service": "amqp.record",
        "prefetch": 20,
        "consumers": 2,
        "heartbeat_s": 5,
    });
    for (k, v) in extra.as_object().unwrap() {
        d[k] = v.clone();
    }
    d
}

async fn put_channel(srv: &Server, name: &str, def: Value, status: u16) -> Value {
    let r = admin(srv, "PUT", &format!("/v1/inbound/amqp/{name}"), def).await;
    assert_eq!(r.status, status, "{}", text(&r));
    r.json()
}

async fn stats(srv: &Server, name: &str) -> Value {
    let r = admin(
        srv,
        "GET",
        &format!("/v1/inbound/amqp/{name}/stats"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    r.json()
}

fn props(i: usize) -> BasicProperties {
    let mut h = BTreeMap::new();
    h.insert(ShortString::from("i"), AMQPValue::LongLongInt(i as i64));
    h.insert(
        ShortString::from("tenant"),
        AMQPValue::LongString(format!("acme-{i}").into()),
    );
    h.insert(
        ShortString::from("urgent"),
        AMQPValue::Boolean(i.is_multiple_of(2)),
    );
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(format!("m-{i}").into())
        .with_correlation_id(format!("c-{i}").into())
        .with_priority((i % 10) as u8)
        .with_timestamp(1_700_000_000 + i as u64)
        .with_type("order".into())
        .with_app_id("it".into())
        .with_headers(FieldTable::from(h))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_consumed_exactly_as_published_and_live_edits_apply() {
    const N: usize = 500;
    let s = setup(2).await;
    let queue = unique("every");
    s.rabbit.queue(&queue, &[]).await;
    for i in 0..N {
        let body = json!({"n": i, "text": format!("zażółć {i}")}).to_string();
        s.rabbit.publish(&queue, body.as_bytes(), props(i)).await;
    }
    let answer = put_channel(&s.srv, "orders-in", channel_def(&queue, json!({})), 201).await;
    assert_eq!(answer["channel"]["has_secret"], true, "{answer}");
    assert!(answer["channel"].get("sealed").is_none());

    eventually(
        Duration::from_secs(60),
        "every message recorded",
        || async { (recorded(&s.record).len() >= N).then_some(()) },
    )
    .await;
    let lines = recorded(&s.record);
    assert_eq!(lines.len(), N, "a message was processed twice");
    let mut seen = BTreeSet::new();
    for l in &lines {
        let i = l["headers"]["i"].as_u64().unwrap() as usize;
        assert!(seen.insert(i), "message {i} twice");
        let want = json!({"n": i, "text": format!("zażółć {i}")}).to_string();
        assert_eq!(body_of(l), want.as_bytes(), "body of {i}");
        assert_eq!(l["payload_is_json"], true);
        assert_eq!(l["channel"], json!(["amqp", "orders-in"]));
        assert_eq!(
            l["properties"],
            json!({
                "content_type": "application/json", "message_id": format!("m-{i}"),
                "correlation_id": format!("c-{i}"), "priority": i % 10,
                "timestamp": 1_700_000_000 + i, "type": "order", "app_id": "it",
                "delivery_mode": 2,
            }),
            "properties of {i}"
        );
        assert_eq!(
            l["headers"],
            json!({"i": i, "tenant": format!("acme-{i}"), "urgent": i.is_multiple_of(2)}),
            "headers of {i}"
        );
        assert_eq!(l["info"]["queue"], queue.as_str());
        assert_eq!(l["info"]["exchange"], "");
        assert_eq!(l["info"]["routing_key"], queue.as_str());
        assert_eq!(l["info"]["redelivered"], false);
        assert!(
            l["info"]["consumer_tag"]
                .as_str()
                .unwrap()
                .contains(".orders-in.")
        );
        assert!(l["info"]["delivery_tag"].as_u64().unwrap() >= 1);
    }

    let st = eventually(Duration::from_secs(10), "every message acked", || async {
        let st = stats(&s.srv, "orders-in").await;
        (st["acked"] == N).then_some(st)
    })
    .await;
    assert_eq!(
        (
            &st["connected"],
            &st["running"],
            &st["consumed"],
            &st["requeued"],
            &st["rejected"]
        ),
        (&json!(true), &json!(true), &json!(N), &json!(0), &json!(0)),
        "{st}"
    );
    assert_eq!(
        s.rabbit.counts(&queue).await,
        (0, 2),
        "two consumers, nothing left"
    );
    let page = oxbus_integration::prom::scrape(&s.srv).await;
    let labels = [
        ("type", "amqp"),
        ("channel", "orders-in"),
        ("outcome", "acked"),
    ];
    assert_eq!(
        page.get("oxbus_inbound_messages_total", &labels),
        Some(N as f64)
    );
    assert_eq!(
        page.get(
            "oxbus_inbound_connected",
            &[("type", "amqp"), ("channel", "orders-in")]
        ),
        Some(1.0)
    );
    let list = admin(&s.srv, "GET", "/v1/inbound/amqp", Value::Null).await;
    let list = list.json();
    assert_eq!(list["amqp"][0]["name"], "orders-in");
    assert_eq!(list["amqp"][0]["status"]["acked"], N);
    assert!(!list.to_string().contains("oxbus1:"), "{list}");

    // Live edits: inactive stops consuming, active again resumes, delete stops.
    put_channel(
        &s.srv,
        "orders-in",
        channel_def(&queue, json!({"is_active": false})),
        200,
    )
    .await;
    eventually(Duration::from_secs(10), "no consumer", || async {
        (s.rabbit.counts(&queue).await.1 == 0).then_some(())
    })
    .await;
    s.rabbit
        .publish(&queue, b"while-inactive", BasicProperties::default())
        .await;
    assert_eq!(s.rabbit.counts(&queue).await, (1, 0));
    put_channel(
        &s.srv,
        "orders-in",
        channel_def(&queue, json!({"consumers": 3})),
        200,
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "resumed with 3 consumers",
        || async {
            (s.rabbit.counts(&queue).await == (0, 3) && recorded(&s.record).len() == N + 1)
                .then_some(())
        },
    )
    .await;
    let r = admin(&s.srv, "DELETE", "/v1/inbound/amqp/orders-in", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    eventually(Duration::from_secs(10), "consumers gone", || async {
        (s.rabbit.counts(&queue).await.1 == 0).then_some(())
    })
    .await;
    let r = admin(
        &s.srv,
        "GET",
        "/v1/inbound/amqp/orders-in/stats",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 404);
    s.srv.assert_no_errors(&[]);
    let _ = std::fs::remove_file(&s.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_service_requeues_then_dead_letters_classic_and_quorum() {
    let s = setup(1).await;
    for (kind, args) in [
        ("classic", vec![]),
        ("quorum", vec![("x-queue-type", "quorum")]),
    ] {
        let queue = unique(&format!("fail-{kind}"));
        let dead = unique(&format!("dead-{kind}"));
        let dlx = unique(&format!("dlx-{kind}"));
        s.rabbit.queue(&dead, &[]).await;
        s.rabbit.fanout_to(&dlx, &dead).await;
        let mut qargs = args.clone();
        qargs.push(("x-dead-letter-exchange", dlx.as_str()));
        s.rabbit.queue(&queue, &qargs).await;
        let name = format!("fails-{kind}");
        put_channel(
            &s.srv,
            &name,
            channel_def(&queue, json!({"max_redeliveries": 2, "consumers": 1})),
            201,
        )
        .await;
        for b in ["fail-1", "ok-1", "fail-2", "ok-2", "fail-3"] {
            s.rabbit
                .publish(&queue, b.as_bytes(), BasicProperties::default())
                .await;
        }
        // Each failing message: its first delivery and two redeliveries fail, then it is
        // rejected without requeue and the queue's DLX takes it.
        eventually(Duration::from_secs(30), "three dead letters", || async {
            (s.rabbit.counts(&dead).await.0 == 3).then_some(())
        })
        .await;
        let st = eventually(Duration::from_secs(10), "settled", || async {
            let st = stats(&s.srv, &name).await;
            (st["rejected"] == 3 && st["acked"] == 2).then_some(st)
        })
        .await;
        assert_eq!(st["requeued"], 6, "{kind}: {st}");
        assert!(
            st["last_error"]
                .as_str()
                .unwrap()
                .contains(&format!("AMQP channel \"{name}\"")),
            "{st}"
        );
        let mut dead_bodies = s.rabbit.drain(&dead).await;
        dead_bodies.sort();
        assert_eq!(
            dead_bodies,
            vec![b"fail-1".to_vec(), b"fail-2".to_vec(), b"fail-3".to_vec()]
        );
        assert_eq!(s.rabbit.counts(&queue).await.0, 0);
        let lines: Vec<Value> = recorded(&s.record)
            .into_iter()
            .filter(|l| l["info"]["queue"] == queue.as_str())
            .collect();
        for b in ["fail-1", "fail-2", "fail-3"] {
            let mut counts: Vec<u64> = lines
                .iter()
                .filter(|l| body_of(l) == b.as_bytes())
                .map(|l| l["redeliveries"].as_u64().unwrap())
                .collect();
            counts.sort();
            assert_eq!(
                counts,
                vec![0, 1, 2],
                "{kind} {b}: the redelivery counts seen"
            );
        }
        for b in ["ok-1", "ok-2"] {
            assert_eq!(
                lines.iter().filter(|l| body_of(l) == b.as_bytes()).count(),
                1,
                "{kind} {b}"
            );
        }
        let r = admin(
            &s.srv,
            "DELETE",
            &format!("/v1/inbound/amqp/{name}"),
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let _ = std::fs::remove_file(&s.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_batch_loses_nothing() {
    const N: usize = 300;
    let (s, _db) = setup_on(2, true).await;
    let queue = unique("kill");
    s.rabbit.queue(&queue, &[]).await;
    for i in 0..N {
        s.rabbit
            .publish(
                &queue,
                format!("tick-{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    put_channel(&s.srv, "killed", channel_def(&queue, json!({})), 201).await;
    eventually(
        Duration::from_secs(30),
        "a part of the batch processed",
        || async { (recorded(&s.record).len() >= 40).then_some(()) },
    )
    .await;
    let Setup {
        mut srv,
        record,
        rabbit,
    } = s;
    srv.signal(nix::sys::signal::Signal::SIGKILL);
    srv.wait_exit(Duration::from_secs(10));
    let before = bodies(&record).len();
    assert!(before < N, "the batch was over before the kill");
    // The broker has every unacked message back once it sees the connection gone; a new
    // server on the same store runs the channel again and takes them.
    let srv = srv.spawn_again();
    srv.wait_ready().await;
    eventually(
        Duration::from_secs(60),
        "every message processed",
        || async { (bodies(&record).len() == N).then_some(()) },
    )
    .await;
    let all = bodies(&record);
    for i in 0..N {
        assert!(all.contains(&format!("tick-{i}")), "tick-{i} lost");
    }
    eventually(Duration::from_secs(10), "the queue empty", || async {
        (rabbit.counts(&queue).await.0 == 0).then_some(())
    })
    .await;
    let _ = std::fs::remove_file(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_messages_and_gives_the_rest_back() {
    const N: usize = 100;
    // One worker taking two at once, while the channel has up to 20 delivered: most of the
    // in-flight messages wait for the worker when SIGTERM comes. Failures are dead-lettered
    // at once (on_error reject), so a message the drain failed would show in the DLQ.
    let (s, _) = setup_with(1, false, |e| e.set("workers", "max_inflight", "2")).await;
    let queue = unique("drain");
    let dead = unique("drain-dead");
    let dlx = unique("drain-dlx");
    s.rabbit.queue(&dead, &[]).await;
    s.rabbit.fanout_to(&dlx, &dead).await;
    s.rabbit
        .queue(&queue, &[("x-dead-letter-exchange", dlx.as_str())])
        .await;
    for i in 0..N {
        s.rabbit
            .publish(
                &queue,
                format!("slow-{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    put_channel(
        &s.srv,
        "drained",
        channel_def(
            &queue,
            // Queued calls the old order (workers retired before this drain) failed at
            // their deadline: 5 s, more than the 20 in flight take (2 s).
            json!({"prefetch": 10, "consumers": 2, "on_error": "reject",
                   "service_timeout_ms": 5000}),
        ),
        201,
    )
    .await;
    eventually(Duration::from_secs(30), "a few processed", || async {
        (recorded(&s.record).len() >= 4).then_some(())
    })
    .await;
    let Setup {
        mut srv,
        record,
        rabbit,
    } = s;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        srv.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        srv.log()
    );
    // Every message either was processed (and acked: not back) or is on the broker again,
    // never both, never neither; none failed; every one whose service started finished.
    let done = bodies(&record);
    let lines = recorded(&record).len();
    assert_eq!(lines, done.len(), "a message was processed twice");
    assert!(done.len() < N, "everything was processed before the drain");
    let begun = started(&record);
    assert!(
        begun.is_subset(&done),
        "started but not finished: {:?}",
        begun.difference(&done).collect::<Vec<_>>()
    );
    assert_eq!(rabbit.counts(&dead).await.0, 0, "the drain failed messages");
    let (ready, consumers) = rabbit.counts(&queue).await;
    assert_eq!(consumers, 0);
    assert_eq!(
        ready as usize + done.len(),
        N,
        "processed {} + back on the queue {ready} != {N}",
        done.len()
    );
    let back: BTreeSet<String> = rabbit
        .drain(&queue)
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert!(back.is_disjoint(&done));
    assert_eq!(back.len() + done.len(), N);
    let _ = std::fs::remove_file(&record);
}

/// SIGINT (fast stop): the workers are killed, but no message their death cut short is
/// rejected (on_error reject with a DLQ that must stay empty): each one not processed is
/// back on the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_dead_letters_nothing_and_gives_back_what_was_not_processed() {
    const N: usize = 60;
    let (s, _) = setup_with(1, false, |e| e.set("workers", "max_inflight", "2")).await;
    let queue = unique("int");
    let dead = unique("int-dead");
    let dlx = unique("int-dlx");
    s.rabbit.queue(&dead, &[]).await;
    s.rabbit.fanout_to(&dlx, &dead).await;
    s.rabbit
        .queue(&queue, &[("x-dead-letter-exchange", dlx.as_str())])
        .await;
    for i in 0..N {
        s.rabbit
            .publish(
                &queue,
                format!("slow-{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    put_channel(
        &s.srv,
        "interrupted",
        channel_def(
            &queue,
            json!({"prefetch": 10, "consumers": 2, "on_error": "reject"}),
        ),
        201,
    )
    .await;
    eventually(Duration::from_secs(30), "a few processed", || async {
        (recorded(&s.record).len() >= 2).then_some(())
    })
    .await;
    let Setup {
        mut srv,
        record,
        rabbit,
    } = s;
    srv.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        srv.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        srv.log()
    );
    assert_eq!(
        rabbit.counts(&dead).await.0,
        0,
        "SIGINT dead-lettered messages"
    );
    let done = bodies(&record);
    assert!(done.len() < N, "everything was processed before SIGINT");
    // At least once: a message whose service finished as its worker was killed may be
    // back too; none is lost.
    let back: BTreeSet<String> = rabbit
        .drain(&queue)
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    let all: BTreeSet<String> = (0..N).map(|i| format!("slow-{i}")).collect();
    let seen: BTreeSet<String> = back.union(&done).cloned().collect();
    assert_eq!(
        seen,
        all,
        "lost: {:?}",
        all.difference(&seen).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_file(&record);
}

/// A message the pool could not take (all busy and no queue; the service not deployed) is
/// not a failure: with on_error reject and a DLX, none is dead-lettered and every one is
/// processed once the service exists or a worker is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_pool_cannot_take_is_returned_not_dead_lettered() {
    const N: usize = 12;
    let (s, _) = setup_with(1, false, |e| {
        e.set("workers", "max_inflight", "1")
            .set("workers", "max_queue", "0")
    })
    .await;
    let queue = unique("busy");
    let dead = unique("busy-dead");
    let dlx = unique("busy-dlx");
    s.rabbit.queue(&dead, &[]).await;
    s.rabbit.fanout_to(&dlx, &dead).await;
    s.rabbit
        .queue(&queue, &[("x-dead-letter-exchange", dlx.as_str())])
        .await;
    for i in 0..N {
        s.rabbit
            .publish(
                &queue,
                format!("slow-{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    // First a service that is not deployed.
    let mut def = channel_def(
        &queue,
        json!({"prefetch": 10, "consumers": 2, "on_error": "reject", "service": "amqp.later"}),
    );
    put_channel(&s.srv, "busy", def.clone(), 201).await;
    eventually(Duration::from_secs(30), "every message tried", || async {
        (stats(&s.srv, "busy").await["consumed"].as_u64() >= Some(N as u64)).then_some(())
    })
    .await;
    assert_eq!(
        s.rabbit.counts(&dead).await.0,
        0,
        "not deployed = dead letter"
    );
    assert!(stats(&s.srv, "busy").await["returned"].as_u64() > Some(0));
    assert!(recorded(&s.record).is_empty());
    // Then the real one, on a pool that takes one message at a time.
    def["service"] = json!("amqp.record");
    put_channel(&s.srv, "busy", def, 200).await;
    eventually(Duration::from_secs(60), "all processed", || async {
        (bodies(&s.record).len() == N).then_some(())
    })
    .await;
    let st = eventually(Duration::from_secs(10), "all acked", || async {
        let st = stats(&s.srv, "busy").await;
        (st["acked"] == N as u64).then_some(st)
    })
    .await;
    assert_eq!(st["rejected"], 0, "{st}");
    assert_eq!(
        s.rabbit.counts(&dead).await.0,
        0,
        "a busy pool = dead letter"
    );
    assert_eq!(s.rabbit.counts(&queue).await.0, 0);
    let _ = std::fs::remove_file(&s.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_broker_connection_reconnects_and_resumes() {
    const N: usize = 100;
    let s = setup(1).await;
    let relay = Relay::start("127.0.0.1:5672").await;
    let queue = unique("cut");
    s.rabbit.queue(&queue, &[]).await;
    for i in 0..N {
        s.rabbit
            .publish(
                &queue,
                format!("tick-a{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    let address = format!("amqp://{}/%2f", relay.host_port());
    put_channel(
        &s.srv,
        "cut",
        channel_def(&queue, json!({"address": address, "prefetch": 5})),
        201,
    )
    .await;
    eventually(Duration::from_secs(30), "a part processed", || async {
        (recorded(&s.record).len() >= 10).then_some(())
    })
    .await;
    relay.cut().await;
    eventually(
        Duration::from_secs(20),
        "the channel sees it lost",
        || async {
            let st = stats(&s.srv, "cut").await;
            (st["connected"] == false).then_some(())
        },
    )
    .await;
    for i in 0..N {
        s.rabbit
            .publish(
                &queue,
                format!("tick-b{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    relay.restore().await;
    eventually(
        Duration::from_secs(60),
        "every message processed",
        || async { (bodies(&s.record).len() == 2 * N).then_some(()) },
    )
    .await;
    let st = eventually(Duration::from_secs(10), "connected again", || async {
        let st = stats(&s.srv, "cut").await;
        (st["connected"] == true).then_some(st)
    })
    .await;
    assert!(st["reconnects"].as_u64().unwrap() >= 1, "{st}");
    assert!(relay.accepted() >= 2);
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("AMQP channel \"cut\""),
        "{st}"
    );
    eventually(Duration::from_secs(10), "the queue empty", || async {
        (s.rabbit.counts(&queue).await.0 == 0).then_some(())
    })
    .await;
    let _ = std::fs::remove_file(&s.record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_checked_and_the_password_never_shown() {
    let s = setup(1).await;
    let queue = unique("defs");
    for (def, want) in [
        (
            json!({"address": "amqp://u:pw@h/"}),
            "address: holds credentials",
        ),
        (json!({"prefetch": 0}), "prefetch: 0 is not 1..=65535"),
        (json!({"consumers": 65}), "consumers: 65 is not 1..=64"),
        (json!({"colour": "red"}), "colour: unknown field"),
    ] {
        let r = admin(
            &s.srv,
            "PUT",
            "/v1/inbound/amqp/bad",
            channel_def(&queue, def),
        )
        .await;
        assert_eq!(r.status, 400, "{}", text(&r));
        assert!(text(&r).contains(want), "{} lacks {want}", text(&r));
        assert!(!text(&r).contains("pw"), "{}", text(&r));
    }
    // A wrong password: the channel reports the broker's refusal, never the password.
    s.rabbit.queue(&queue, &[]).await;
    put_channel(
        &s.srv,
        "wrong",
        channel_def(&queue, json!({"password": "not-the-password-123"})),
        201,
    )
    .await;
    let st = eventually(Duration::from_secs(20), "a connect error", || async {
        let st = stats(&s.srv, "wrong").await;
        st["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert!(st.contains("AMQP channel \"wrong\""), "{st}");
    assert!(!s.srv.log().contains("not-the-password-123"));
    let got = admin(&s.srv, "GET", "/v1/inbound/amqp/wrong", Value::Null).await;
    assert!(!text(&got).contains("not-the-password-123"));
    assert!(!text(&got).contains("oxbus1:"));
    // An edit without the password keeps it; a move to another broker must give it again.
    let mut edit = channel_def(&queue, json!({"prefetch": 7}));
    edit.as_object_mut().unwrap().remove("password");
    put_channel(&s.srv, "wrong", edit.clone(), 200).await;
    edit["address"] = json!("amqp://127.0.0.2:5672/%2f");
    let r = admin(&s.srv, "PUT", "/v1/inbound/amqp/wrong", edit).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("give password again"), "{}", text(&r));

    // The CLI: put with the password from a file, list, stats, delete.
    let dir = std::env::temp_dir().join(format!("oxbus-it-amqp-cli-{}", next_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut def = channel_def(&queue, json!({}));
    def.as_object_mut().unwrap().remove("password");
    std::fs::write(dir.join("def.json"), def.to_string()).unwrap();
    std::fs::write(dir.join("pw"), "guest\n").unwrap();
    let out = oxbus_integration::api::ok(&s.srv.cli(&[
        "inbound",
        "put",
        "amqp",
        "by-cli",
        dir.join("def.json").to_str().unwrap(),
        "--secret-file",
        dir.join("pw").to_str().unwrap(),
    ]));
    assert!(out.contains("amqp channel by-cli created"), "{out}");
    eventually(Duration::from_secs(20), "by-cli connected", || async {
        (stats(&s.srv, "by-cli").await["connected"] == true).then_some(())
    })
    .await;
    let out = oxbus_integration::api::ok(&s.srv.cli(&["inbound", "list", "amqp"]));
    assert!(
        out.contains("by-cli") && out.contains("connected, 0 acked"),
        "{out}"
    );
    let out = oxbus_integration::api::ok(&s.srv.cli(&["inbound", "stats", "amqp", "by-cli"]));
    assert!(out.contains("CONNECTED") && out.contains("by-cli"), "{out}");
    let out = oxbus_integration::api::ok(&s.srv.cli(&["inbound", "delete", "amqp", "by-cli"]));
    assert!(out.contains("amqp channel by-cli deleted"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_imports_with_a_plaintext_password_and_exports_sealed() {
    let s = setup(1).await;
    let queue = unique("import");
    s.rabbit.queue(&queue, &[]).await;
    let mut entry = channel_def(&queue, json!({"password": "guest"}));
    entry["name"] = json!("imported");
    let r = admin(
        &s.srv,
        "POST",
        "/v1/config",
        json!({"channel_amqp": [entry]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(
        text(&r).contains("imported"),
        "the change list names it: {}",
        text(&r)
    );
    // Applied on import: it consumes.
    s.rabbit
        .publish(&queue, b"via-import", BasicProperties::default())
        .await;
    eventually(Duration::from_secs(20), "the message processed", || async {
        bodies(&s.record).contains("via-import").then_some(())
    })
    .await;
    let export = admin(&s.srv, "GET", "/v1/config", Value::Null).await.json();
    let exported = &export["channel_amqp"][0];
    assert_eq!(exported["name"], "imported", "{export}");
    assert!(
        exported["sealed"].as_str().unwrap().starts_with("oxbus1:"),
        "{export}"
    );
    assert!(exported.get("password").is_none());
    // The export imports again as no change (the sealed value opens with this key).
    let r = admin(&s.srv, "POST", "/v1/config", export.clone()).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["changes"], json!([]), "{}", text(&r));
    // A bad entry is refused naming the list, the entry and the field.
    let r = admin(
        &s.srv,
        "POST",
        "/v1/config",
        json!({"channel_amqp": [{"name": "x", "address": "amqp://h/", "queue": "q",
                                 "service": "s", "prefetch": 0}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains("inbound_amqp[0]") && text(&r).contains("prefetch:"),
        "{}",
        text(&r)
    );
    let _ = std::fs::remove_file(&s.record);
}
