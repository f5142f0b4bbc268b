//! Delivery against a real store (SQLite, and PostgreSQL for the takeover): messages are
//! appended to the log and their committed batch sent into the fanout, as the publish path
//! does; pull subscriptions are served by `get_messages`, push ones are delivered to a
//! small HTTP server of the test.

use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::model::pubsub::{DeliveryKind, Message, Retry, Topic};
use crate::pubsub::{Broker, Caller, Committed, SubscribeReq};
use crate::store::Store;

static N: AtomicU32 = AtomicU32::new(0);

fn unique(p: &str) -> String {
    format!(
        "{p}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn sqlite() -> Store {
    let dir = std::env::temp_dir().join(unique("oxbus-deliver-test"));
    std::fs::create_dir_all(&dir).unwrap();
    Store::open(&format!("sqlite:{}", dir.join("oxbus.db").display()))
        .await
        .unwrap()
}

/// A fresh database on the machine's PostgreSQL (OXBUS_TEST_PG): a missing server fails
/// the test, it never skips.
async fn postgres() -> (Store, String) {
    use sqlx::Connection;
    let admin = std::env::var("OXBUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = unique("oxbus_deliver_test");
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for this test: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut c)
        .await
        .unwrap();
    let url = format!("{}/{db}", &admin[..admin.rfind('/').unwrap()]);
    (Store::open(&url).await.unwrap(), db)
}

async fn drop_pg(store: Store, db: String) {
    use sqlx::Connection;
    store.close().await;
    let admin = std::env::var("OXBUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut c)
    .await
    .unwrap();
}

struct Server {
    broker: Broker,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Server {
    async fn start(name: &str, store: &Store) -> Server {
        let metrics = Arc::new(crate::metrics::Metrics::new(false));
        let path = std::env::temp_dir().join(unique("oxbus-deliver-key"));
        let key = Arc::new(crate::secrets::Key::create(&path).unwrap());
        let _ = std::fs::remove_file(&path);
        let outgoing = Arc::new(crate::outgoing::Outgoing::new(key, metrics.clone()));
        let broker = Broker::new(name, store.clone(), metrics, outgoing);
        broker.apply(&store.object_set().await.unwrap());
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        broker.start(rx);
        Server { broker, shutdown }
    }

    /// Stops its tasks and waits until they have handed their leases back.
    async fn stop(self, store: &Store) {
        let _ = self.shutdown.send(true);
        let me = self.broker.inner.server.clone();
        wait_for("the leases to be released", || async {
            store
                .sub_leases()
                .await
                .unwrap()
                .iter()
                .all(|(_, h, _)| h != &me)
        })
        .await;
    }
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn add_topic(servers: &[&Server], store: &Store, def: serde_json::Value) -> Topic {
    let t: Topic = serde_json::from_value(def).unwrap();
    store.put_object(&t, true, "test").await.unwrap();
    let set = store.object_set().await.unwrap();
    for s in servers {
        s.broker.apply(&set);
    }
    t
}

fn msg(topic: &str, priority: u8, data: &str, pub_time_ms: i64) -> Message {
    Message {
        topic: topic.into(),
        seq: 0,
        msg_id: format!("zpsm{}", crate::random::random_hex(12)),
        pub_time_ms,
        expires_at_ms: None,
        priority,
        has_gd: true,
        mime_type: "text/plain".into(),
        correl_id: None,
        in_reply_to: None,
        ext_client_id: None,
        published_by: "service:test".into(),
        data: Bytes::from(data.to_owned()),
    }
}

/// As the publish path does: appended in one transaction, then into the fanout.
async fn publish(s: &Server, store: &Store, topic: &str, msgs: Vec<Message>) -> Vec<Arc<Message>> {
    let seqs = store.sub_append_for_tests(topic, &msgs).await.unwrap();
    let msgs: Vec<Arc<Message>> = msgs
        .into_iter()
        .zip(seqs)
        .map(|(mut m, seq)| {
            m.seq = seq;
            Arc::new(m)
        })
        .collect();
    s.broker.inner.fanout.send(Arc::new(Committed {
        server: s.broker.inner.server.clone(),
        msgs: msgs.clone(),
    }));
    msgs
}

fn pull_req(topic: &str, sub_key: &str) -> SubscribeReq {
    SubscribeReq {
        topic: topic.into(),
        delivery: DeliveryKind::Pull,
        sub_key: Some(sub_key.into()),
        batch_size: None,
        retry: None,
        dead_letter_topic: None,
        ack_timeout_ms: None,
    }
}

fn svc() -> Caller {
    Caller::Service("test".into())
}

fn datas(v: &[crate::pubsub::Delivered]) -> Vec<String> {
    v.iter()
        .map(|d| String::from_utf8_lossy(&d.msg.data).into_owned())
        .collect()
}

async fn pull_in_order_acks_and_long_poll(store: Store) {
    let s = Server::start(&unique("srv"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(&[&s], &store, json!({"name": topic})).await;
    let key = unique("sk");
    s.broker
        .subscribe(&svc(), pull_req(&topic, &key))
        .await
        .unwrap();
    let now = crate::pubsub::now_ms();
    publish(
        &s,
        &store,
        &topic,
        vec![
            msg(&topic, 5, "a", now),
            msg(&topic, 9, "b", now + 1),
            msg(&topic, 5, "c", now + 2),
            msg(&topic, 1, "d", now + 3),
        ],
    )
    .await;
    let got = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        datas(&got),
        ["b", "a", "c", "d"],
        "priority, then publish time"
    );
    assert!(got.iter().all(|d| d.delivery_count == 1));
    let ids: Vec<String> = got.iter().map(|d| d.msg.msg_id.clone()).collect();
    assert_eq!(s.broker.ack(&svc(), &key, &ids).await.unwrap(), 4);
    assert_eq!(
        s.broker.ack(&svc(), &key, &ids).await.unwrap(),
        0,
        "an ack again is no error and acks nothing"
    );
    // The cursor reaches the store (coalesced, soon after).
    wait_for("the cursor to be written", || async {
        store.sub_cursors(&key).await.unwrap()[0].acked_upto == 4
    })
    .await;
    // A long poll waits for the next publish and wakes with it.
    let b = s.broker.clone();
    let k = key.clone();
    let poll = tokio::spawn(async move {
        b.get_messages(&svc(), &k, 10, Duration::from_secs(20))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!poll.is_finished(), "nothing to get yet: the pull waits");
    publish(&s, &store, &topic, vec![msg(&topic, 5, "e", now + 4)]).await;
    let got = poll.await.unwrap();
    assert_eq!(datas(&got), ["e"]);
    // An empty wait answers empty.
    let none = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(none.is_empty(), "e is in flight, not offered again");
    let st = s.broker.sub_stats(&key).await.unwrap();
    assert_eq!(st.in_flight, 1);
    assert_eq!(st.acked, 4);
    assert_eq!(st.owner.as_deref(), Some(s.broker.inner.server.as_str()));
    s.stop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pull_in_order_acks_and_long_poll() {
    pull_in_order_acks_and_long_poll(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pull_in_order_acks_and_long_poll() {
    let (store, db) = postgres().await;
    pull_in_order_acks_and_long_poll(store.clone()).await;
    drop_pg(store, db).await;
}

/// A server stops with messages handed out: the one that takes the lease over delivers
/// the unacked ones again and not the acked one.
async fn at_least_once_after_takeover(store: Store) {
    let a = Server::start(&unique("a"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(&[&a], &store, json!({"name": topic})).await;
    let key = unique("sk");
    a.broker
        .subscribe(&svc(), pull_req(&topic, &key))
        .await
        .unwrap();
    let now = crate::pubsub::now_ms();
    publish(
        &a,
        &store,
        &topic,
        (0..3)
            .map(|i| msg(&topic, 5, &format!("m{i}"), now + i))
            .collect(),
    )
    .await;
    let got = a
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&got), ["m0", "m1", "m2"]);
    a.broker
        .ack(&svc(), &key, &[got[1].msg.msg_id.clone()])
        .await
        .unwrap();
    a.stop(&store).await;
    let b = Server::start(&unique("b"), &store).await;
    let again = b
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&again), ["m0", "m2"], "unacked again, acked not");
    let st = b.broker.sub_stats(&key).await.unwrap();
    assert_eq!(st.owner.as_deref(), Some(b.broker.inner.server.as_str()));
    b.stop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_at_least_once_after_takeover() {
    at_least_once_after_takeover(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_at_least_once_after_takeover() {
    let (store, db) = postgres().await;
    at_least_once_after_takeover(store.clone()).await;
    drop_pg(store, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_redelivers_expired_are_skipped_purge_empties() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(&[&s], &store, json!({"name": topic})).await;
    let key = unique("sk");
    let mut req = pull_req(&topic, &key);
    req.ack_timeout_ms = Some(100);
    s.broker.subscribe(&svc(), req).await.unwrap();
    let now = crate::pubsub::now_ms();
    let mut old = msg(&topic, 9, "expired", now);
    old.expires_at_ms = Some(now - 1);
    publish(&s, &store, &topic, vec![old, msg(&topic, 5, "x", now)]).await;
    let got = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&got), ["x"], "the expired message is skipped");
    // Not acked: offered again after the ack timeout.
    let again = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&again), ["x"]);
    assert_eq!(again[0].delivery_count, 2);
    let st = s.broker.sub_stats(&key).await.unwrap();
    assert_eq!(st.expired, 1);
    assert!(st.failed_attempts >= 1);
    // Purge: everything waiting goes, the cursor to the end of the log.
    publish(
        &s,
        &store,
        &topic,
        (0..4)
            .map(|i| msg(&topic, 5, &format!("p{i}"), now + i))
            .collect(),
    )
    .await;
    wait_for("the messages to be queued", || async {
        s.broker.browse(&key, 100).await.unwrap().len() >= 4
    })
    .await;
    assert_eq!(s.broker.purge(&key).await.unwrap(), 5);
    assert!(s.broker.browse(&key, 100).await.unwrap().is_empty());
    assert_eq!(store.sub_cursors(&key).await.unwrap()[0].acked_upto, 6);
    let none = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(none.is_empty());
    s.stop(&store).await;
}

/// A push endpoint of the test: fails while `failing` is set, records what it got.
struct PushTarget {
    url: String,
    failing: Arc<std::sync::atomic::AtomicBool>,
    got: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    hits: Arc<AtomicU32>,
}

async fn push_target() -> PushTarget {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicU32::new(0));
    let (f, g, h) = (failing.clone(), got.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (f, g, h) = (f.clone(), g.clone(), h.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (f, g, h) = (f.clone(), g.clone(), h.clone());
                    async move {
                        let body = http_body_util::BodyExt::collect(req.into_body())
                            .await
                            .unwrap()
                            .to_bytes();
                        h.fetch_add(1, Ordering::SeqCst);
                        let status = if f.load(Ordering::SeqCst) {
                            500
                        } else {
                            g.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                            200
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    PushTarget {
        url,
        failing,
        got,
        hits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_retries_with_backoff_then_dead_letters_and_requeue() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(&[&s], &store, json!({"name": topic})).await;
    let target = push_target().await;
    let key = unique("sk");
    let req = SubscribeReq {
        topic: topic.clone(),
        delivery: DeliveryKind::Push {
            conn: None,
            path: None,
            url: Some(target.url.clone()),
            method: "POST".into(),
        },
        sub_key: Some(key.clone()),
        batch_size: Some(10),
        retry: Some(Retry {
            max_attempts: 3,
            backoff_ms: 20,
            max_backoff_ms: 100,
            multiplier: 2,
        }),
        dead_letter_topic: None,
        ack_timeout_ms: None,
    };
    s.broker.subscribe(&svc(), req).await.unwrap();
    let now = crate::pubsub::now_ms();
    let sent = publish(&s, &store, &topic, vec![msg(&topic, 5, "hello", now)]).await;
    wait_for("the dead letter", || async {
        !s.broker.dead_letters(&key, 10).await.unwrap().is_empty()
    })
    .await;
    assert_eq!(
        target.hits.load(Ordering::SeqCst),
        3,
        "max_attempts deliveries"
    );
    let dead = s.broker.dead_letters(&key, 10).await.unwrap();
    assert_eq!(dead[0].msg_id, sent[0].msg_id);
    assert_eq!(dead[0].delivery_count, 3);
    assert!(
        dead[0].reason.as_deref().unwrap().contains("answered 500"),
        "{dead:?}"
    );
    // Past the dead letter, the cursor moved on.
    wait_for("the cursor past the dead letter", || async {
        store.sub_cursors(&key).await.unwrap()[0].acked_upto == 1
    })
    .await;
    // Requeued while the endpoint works: delivered, and no dead letter is left.
    target.failing.store(false, Ordering::SeqCst);
    assert_eq!(s.broker.requeue(&key, None).await.unwrap(), 1);
    wait_for("the requeued delivery", || async {
        !target.got.lock().unwrap().is_empty()
    })
    .await;
    let doc = target.got.lock().unwrap()[0].clone();
    assert_eq!(doc["sub_key"], json!(key));
    assert_eq!(doc["messages"][0]["data"], json!("hello"));
    assert_eq!(doc["messages"][0]["msg_id"], json!(sent[0].msg_id));
    wait_for("the requeued dead letter to be deleted", || async {
        s.broker.dead_letters(&key, 10).await.unwrap().is_empty()
    })
    .await;
    // And a new message goes straight through.
    publish(&s, &store, &topic, vec![msg(&topic, 5, "next", now + 1)]).await;
    wait_for("the next delivery", || async {
        target.got.lock().unwrap().len() == 2
    })
    .await;
    s.stop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_gets_a_topic_made_later_and_unsubscribe_forgets() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let base = format!("/{}", unique("p"));
    let key = unique("sk");
    s.broker
        .subscribe(&svc(), pull_req(&format!("{base}/*"), &key))
        .await
        .unwrap();
    let topic = format!("{base}/new");
    add_topic(&[&s], &store, json!({"name": topic})).await;
    wait_for("the lazily made cursor", || async {
        !store.sub_cursors(&key).await.unwrap().is_empty()
    })
    .await;
    publish(
        &s,
        &store,
        &topic,
        vec![msg(&topic, 5, "later", crate::pubsub::now_ms())],
    )
    .await;
    let got = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&got), ["later"]);
    let ids: Vec<String> = got.iter().map(|d| d.msg.msg_id.clone()).collect();
    assert_eq!(s.broker.ack(&svc(), &key, &ids).await.unwrap(), 1);
    let metrics = &s.broker.inner.metrics;
    wait_for("the ack in the metrics", || async {
        metrics.render().unwrap().lines().any(|l| {
            l.contains("delivered") && l.contains(&format!("sub=\"{key}\"")) && l.ends_with(" 1")
        })
    })
    .await;
    s.broker.unsubscribe(&svc(), &key).await.unwrap();
    assert!(
        !metrics.render().unwrap().contains(&format!("\"{key}\"")),
        "a deleted subscription's series go"
    );
    assert!(store.sub_cursors(&key).await.unwrap().is_empty());
    assert!(matches!(
        s.broker.get_messages(&svc(), &key, 1, Duration::ZERO).await,
        Err(crate::pubsub::PubsubError::NoSub(_))
    ));
    s.stop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_first_subscription_gets_what_was_kept() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(&[&s], &store, json!({"name": topic, "on_no_subs": "keep"})).await;
    let now = crate::pubsub::now_ms();
    publish(&s, &store, &topic, vec![msg(&topic, 5, "kept", now)]).await;
    let key = unique("sk");
    s.broker
        .subscribe(&svc(), pull_req(&topic, &key))
        .await
        .unwrap();
    let got = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&got), ["kept"]);
    // A second subscription starts at the end.
    let key2 = unique("sk");
    s.broker
        .subscribe(&svc(), pull_req(&topic, &key2))
        .await
        .unwrap();
    let none = s
        .broker
        .get_messages(&svc(), &key2, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(none.is_empty());
    s.stop(&store).await;
}

/// The bus between test servers: a call goes straight to the peer's `peer_call`.
#[derive(Default)]
struct Bus(std::sync::Mutex<std::collections::HashMap<String, Broker>>);

#[async_trait::async_trait]
impl crate::pubsub::Peers for Bus {
    fn send_committed(&self, _frame: Bytes) {}

    async fn call(
        &self,
        peer: &str,
        meta: serde_json::Value,
        body: Bytes,
        _timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let b = self
            .0
            .lock()
            .unwrap()
            .get(peer)
            .cloned()
            .ok_or_else(|| format!("no peer {peer}"))?;
        Ok(b.peer_call(&meta, body).await)
    }
}

/// Calls on a subscription another server delivers are forwarded to it and answered as if
/// local: pull, ack, figures, browse, purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_another_servers_subscription_are_forwarded() {
    let (store, db) = postgres().await;
    let a = Server::start(&unique("a"), &store).await;
    let b = Server::start(&unique("b"), &store).await;
    let bus = Arc::new(Bus::default());
    for s in [&a, &b] {
        bus.0
            .lock()
            .unwrap()
            .insert(s.broker.inner.server.clone(), s.broker.clone());
        s.broker.set_peers(bus.clone());
    }
    let topic = format!("/{}", unique("t"));
    add_topic(&[&a, &b], &store, json!({"name": topic})).await;
    let key = unique("sk");
    a.broker
        .subscribe(&svc(), pull_req(&topic, &key))
        .await
        .unwrap();
    b.broker.apply(&store.object_set().await.unwrap());
    // Whichever server took its lease delivers it; the other forwards.
    wait_for("the lease to be taken", || async {
        store
            .sub_leases()
            .await
            .unwrap()
            .iter()
            .any(|(k, _, _)| k == &key)
    })
    .await;
    let holder = store
        .sub_leases()
        .await
        .unwrap()
        .into_iter()
        .find(|(k, _, _)| k == &key)
        .unwrap()
        .1;
    let (a, b) = if holder == a.broker.inner.server {
        (a, b)
    } else {
        (b, a)
    };
    let now = crate::pubsub::now_ms();
    publish(
        &a,
        &store,
        &topic,
        (0..3)
            .map(|i| msg(&topic, 5, &format!("f{i}"), now + i))
            .collect(),
    )
    .await;
    let got = b
        .broker
        .get_messages(&svc(), &key, 2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&got), ["f0", "f1"]);
    assert_eq!(got[0].sub_key, key);
    assert_eq!(got[0].msg.topic, topic);
    assert_eq!(
        b.broker
            .ack(&svc(), &key, &[got[0].msg.msg_id.clone()])
            .await
            .unwrap(),
        1
    );
    let st = b.broker.sub_stats(&key).await.unwrap();
    assert_eq!(st.owner.as_deref(), Some(a.broker.inner.server.as_str()));
    assert_eq!(st.acked, 1);
    assert_eq!(st.in_flight, 1);
    let seen: Vec<String> = b
        .broker
        .browse(&key, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.data)
        .collect();
    assert_eq!(seen, ["f1", "f2"]);
    assert_eq!(b.broker.purge(&key).await.unwrap(), 2);
    assert!(b.broker.browse(&key, 10).await.unwrap().is_empty());
    a.stop(&store).await;
    b.stop(&store).await;
    drop_pg(store, db).await;
}

/// Two live servers share the subscriptions: neither takes more than its half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_the_leases() {
    let (store, db) = postgres().await;
    let (na, nb) = (unique("a"), unique("b"));
    for (i, n) in [&na, &nb].into_iter().enumerate() {
        store
            .register_server(&crate::store::ServerRecord {
                name: n.clone(),
                http_address: format!("127.0.0.1:{}", 1000 + i),
                oxbus_version: "test".into(),
                pid: 1,
                started_at: crate::pubsub::now_ms(),
                last_seen: crate::pubsub::now_ms(),
                config_version: 0,
                bus_address: None,
            })
            .await
            .unwrap();
    }
    let topic = format!("/{}", unique("t"));
    let t: Topic = serde_json::from_value(json!({"name": topic})).unwrap();
    store.put_object(&t, true, "test").await.unwrap();
    for i in 0..4 {
        let sub: crate::model::pubsub::Subscription = serde_json::from_value(json!({
            "sub_key": format!("share{i}"),
            "topic": topic,
            "delivery": {"type": "pull"},
        }))
        .unwrap();
        store.put_object(&sub, true, "test").await.unwrap();
    }
    let a = Server::start(&na, &store).await;
    let b = Server::start(&nb, &store).await;
    wait_for("all four leases held", || async {
        store.sub_leases().await.unwrap().len() == 4
    })
    .await;
    let leases = store.sub_leases().await.unwrap();
    let of = |n: &str| leases.iter().filter(|(_, h, _)| h == n).count();
    assert_eq!((of(&na), of(&nb)), (2, 2), "{leases:?}");
    // One stops: the other takes its share over.
    a.stop(&store).await;
    wait_for("b to hold all four", || async {
        store
            .sub_leases()
            .await
            .unwrap()
            .iter()
            .filter(|(_, h, _)| h == &nb)
            .count()
            == 4
    })
    .await;
    b.stop(&store).await;
    drop_pg(store, db).await;
}

/// More than the window: what does not fit in memory is read from the log later; every
/// message arrives once, in order, and the cursor ends at the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_window_arrives_whole_and_in_order() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(&[&s], &store, json!({"name": topic})).await;
    let key = unique("sk");
    s.broker
        .subscribe(&svc(), pull_req(&topic, &key))
        .await
        .unwrap();
    let total = super::queue::WINDOW + 2_500;
    let now = crate::pubsub::now_ms();
    for chunk in 0..total / 500 {
        let msgs = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                msg(&topic, 5, &n.to_string(), now + n as i64)
            })
            .collect();
        publish(&s, &store, &topic, msgs).await;
    }
    let mut seen = Vec::with_capacity(total);
    while seen.len() < total {
        let got = s
            .broker
            .get_messages(&svc(), &key, 1000, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!got.is_empty(), "stalled after {} messages", seen.len());
        let ids: Vec<String> = got.iter().map(|d| d.msg.msg_id.clone()).collect();
        seen.extend(got.iter().map(|d| d.msg.seq));
        assert_eq!(s.broker.ack(&svc(), &key, &ids).await.unwrap(), ids.len());
    }
    let want: Vec<i64> = (1..=total as i64).collect();
    assert_eq!(seen, want, "each once, in order");
    wait_for("the cursor at the end", || async {
        store.sub_cursors(&key).await.unwrap()[0].acked_upto == total as i64
    })
    .await;
    s.stop(&store).await;
}

/// A non-GD message is never stored: it goes from the fanout to the queue in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_gd_messages_are_delivered_from_memory() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(
        &[&s],
        &store,
        json!({"name": topic, "has_gd": false, "max_depth_non_gd": 2}),
    )
    .await;
    let key = unique("sk");
    s.broker
        .subscribe(&svc(), pull_req(&topic, &key))
        .await
        .unwrap();
    // Its task is there (subscribe started it here): it sees what the fanout carries.
    assert_eq!(
        s.broker.sub_stats(&key).await.unwrap().owner.as_deref(),
        Some(s.broker.inner.server.as_str())
    );
    let now = crate::pubsub::now_ms();
    let msgs: Vec<Arc<Message>> = (0..3)
        .map(|i| {
            let mut m = msg(&topic, 5, &format!("n{i}"), now + i);
            m.has_gd = false;
            Arc::new(m)
        })
        .collect();
    s.broker.inner.fanout.send(Arc::new(Committed {
        server: s.broker.inner.server.clone(),
        msgs,
    }));
    let got = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        datas(&got),
        ["n1", "n2"],
        "past max_depth_non_gd the oldest is dropped"
    );
    assert_eq!(s.broker.sub_stats(&key).await.unwrap().overflowed, 1);
    let ids: Vec<String> = got.iter().map(|d| d.msg.msg_id.clone()).collect();
    assert_eq!(s.broker.ack(&svc(), &key, &ids).await.unwrap(), 2);
    assert_eq!(
        store.sub_last_seq(&topic).await.unwrap(),
        0,
        "nothing stored"
    );
    s.stop(&store).await;
}

/// A REST caller (a security definition's endpoint) may make pull subscriptions only, and
/// a dead_letter_topic only one that exists and that it may publish to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_caller_may_only_pull_and_dead_letter_where_it_may_publish() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let base = format!("/{}", unique("rest"));
    let topic = format!("{base}/in");
    add_topic(&[&s], &store, json!({"name": topic})).await;
    add_topic(&[&s], &store, json!({"name": format!("{base}/dl-ok")})).await;
    add_topic(&[&s], &store, json!({"name": format!("{base}/dl-no")})).await;
    let ep: crate::model::pubsub::Endpoint = serde_json::from_value(json!({
        "name": unique("ep"),
        "security": "sec-rest",
        "topic_patterns": [format!("sub={base}/*"), format!("pub={base}/dl-ok")],
    }))
    .unwrap();
    store.put_object(&ep, true, "test").await.unwrap();
    s.broker.apply(&store.object_set().await.unwrap());
    let rest = Caller::Security("sec-rest".into());
    let mut req = pull_req(&topic, &unique("sk"));
    req.delivery = DeliveryKind::Service {
        service: "any.service".into(),
    };
    let e = s.broker.subscribe(&rest, req).await.unwrap_err();
    assert!(
        matches!(&e, crate::pubsub::PubsubError::Forbidden(m) if m.contains("admin API")),
        "{e}"
    );
    let mut req = pull_req(&topic, &unique("sk"));
    req.dead_letter_topic = Some(format!("{base}/dl-none"));
    assert!(matches!(
        s.broker.subscribe(&rest, req).await,
        Err(crate::pubsub::PubsubError::NoTopic(_))
    ));
    let mut req = pull_req(&topic, &unique("sk"));
    req.dead_letter_topic = Some(format!("{base}/dl-no"));
    assert!(matches!(
        s.broker.subscribe(&rest, req).await,
        Err(crate::pubsub::PubsubError::Forbidden(_))
    ));
    let mut req = pull_req(&topic, &unique("sk"));
    req.dead_letter_topic = Some(format!("{base}/dl-ok"));
    let key = s.broker.subscribe(&rest, req).await.unwrap();
    assert!(store.sub_cursors(&key).await.unwrap().len() == 1);
    // Nothing of the refused ones was stored.
    assert_eq!(
        store
            .objects::<crate::model::pubsub::Subscription>()
            .await
            .unwrap()
            .len(),
        1
    );
    s.stop(&store).await;
}

/// A subscription stored by the admin API (no cursors) starts as one made by subscribe():
/// the topic's first subscription gets what `on_no_subs: keep` kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_put_subscription_gets_what_was_kept() {
    let store = sqlite().await;
    let s = Server::start(&unique("srv"), &store).await;
    let topic = format!("/{}", unique("t"));
    add_topic(&[&s], &store, json!({"name": topic, "on_no_subs": "keep"})).await;
    publish(
        &s,
        &store,
        &topic,
        vec![msg(&topic, 5, "kept", crate::pubsub::now_ms() - 60_000)],
    )
    .await;
    let key = unique("sk");
    let sub: crate::model::pubsub::Subscription = serde_json::from_value(json!({
        "sub_key": key, "topic": topic, "delivery": {"type": "pull"},
    }))
    .unwrap();
    store.put_object(&sub, true, "admin").await.unwrap();
    s.broker.apply(&store.object_set().await.unwrap());
    let got = s
        .broker
        .get_messages(&svc(), &key, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(datas(&got), ["kept"]);
    s.stop(&store).await;
}
