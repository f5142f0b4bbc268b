//! Issue 21, outgoing AMQP: services publish with `self.out.amqp.send` through connections
//! defined by the admin API, against the machine's RabbitMQ (127.0.0.1:5672, guest/guest).
//! Each test declares its own queues (unique names, `x-expires` as a safety net) with the
//! tests' own AMQP client, reads what arrived with `basic.get`, and deletes them.

use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use oxbus_integration::api::{self, admin, text};
use oxbus_integration::prom;
use oxbus_integration::relay::Relay;
use oxbus_integration::*;
use serde_json::{Value, json};

const RABBIT: &str = "amqp://127.0.0.1:5672/%2f";
/// A password no answer or log may show (RabbitMQ refuses it: guest's is `guest`).
const WRONG_PW: &str = "pw-amqp-3c9e1f77";

/// `amqp.send`: sends the payload's `body` `n` times (default 1) through `conn` with the
/// given exchange, routing key, properties, headers and mandatory (`body_kind`: `json` sends
/// the body as a dict, `text` as a str, `bytes` as bytes); `amqp.asend`: the same with
/// `await asend`. Both answer `{"sent": n}` or the exception's class, bases, message and,
/// for a return, its reply code and text.
const SERVICES: &str = r#"
from oxbus import Service


def failure(e):
    return {'error': type(e).__name__, 'bases': [c.__name__ for c in type(e).__mro__],
            'message': str(e), 'reply_code': getattr(e, 'reply_code', None),
            'reply_text': getattr(e, 'reply_text', None)}


def args(p):
    body = p.get('body')
    kind = p.get('body_kind', 'json')
    if kind == 'text':
        body = str(body)
    elif kind == 'bytes':
        body = str(body).encode()
    return (body, p['conn'], p.get('exchange', ''), p.get('routing_key', ''),
            p.get('properties'), p.get('headers'))


class Send(Service):
    name = 'amqp.send'

    def handle(self):
        p = self.request.payload
        try:
            for _ in range(p.get('n', 1)):
                self.out.amqp.send(*args(p), mandatory=p.get('mandatory', False))
        except Exception as e:
            self.response.payload = failure(e)
            return
        self.response.payload = {'sent': p.get('n', 1)}


class Mixed(Service):
    """Concurrent mandatory sends (asyncio.gather): each of `keys` is a routing key; the
    outcome of each in order: 'ok' or the exception's class name and message."""
    name = 'amqp.mixed'

    async def handle(self):
        import asyncio
        p = self.request.payload

        async def one(i, key):
            try:
                await self.out.amqp.asend('mixed-body-%d' % i, p['conn'], '', key, mandatory=True,
                                          timeout=p.get('timeout'))
                return 'ok'
            except Exception as e:
                return type(e).__name__ + ': ' + str(e)
        self.response.payload = await asyncio.gather(*(one(i, k) for i, k in
                                                      enumerate(p['keys'])))


class ASend(Service):
    name = 'amqp.asend'

    async def handle(self):
        p = self.request.payload
        try:
            for _ in range(p.get('n', 1)):
                await self.out.amqp.asend(*args(p), mandatory=p.get('mandatory', False))
        except Exception as e:
            self.response.payload = failure(e)
            return
        self.response.payload = {'sent': p.get('n', 1)}
"#;

fn env(workers: u32) -> Env {
    Env::new()
        .workers(workers)
        .set("metrics", "enabled", "true")
        .service("amqp_send.py", SERVICES)
        .channel("/send", &["POST"], "amqp.send")
        .channel("/asend", &["POST"], "amqp.asend")
        .channel("/mixed", &["POST"], "amqp.mixed")
}

/// The tests' own view of the broker.
struct Broker {
    conn: Connection,
    ch: Channel,
    queues: Vec<String>,
}

impl Broker {
    async fn new() -> Broker {
        let conn = Connection::connect(
            &format!("{RABBIT}?heartbeat=30"),
            ConnectionProperties::default(),
        )
        .await
        .expect("the machine's RabbitMQ on 127.0.0.1:5672");
        let ch = conn.create_channel().await.unwrap();
        Broker {
            conn,
            ch,
            queues: Vec::new(),
        }
    }

    /// Declares a queue of a unique name (gone by itself 10 minutes unused).
    async fn queue(&mut self, tag: &str) -> String {
        self.queue_with(tag, FieldTable::default()).await
    }

    async fn queue_with(&mut self, tag: &str, mut args: FieldTable) -> String {
        let name = format!("oxbus-test-{tag}-{}-{}", std::process::id(), next_id());
        args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        self.ch
            .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap();
        self.queues.push(name.clone());
        name
    }

    /// Every message now in `queue` (taken and acked).
    async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m);
        }
        out
    }

    async fn cleanup(self) {
        for q in &self.queues {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}

async fn put_conn(srv: &Server, name: &str, mut def: Value) -> Resp {
    def["name"] = json!(name);
    admin(srv, "PUT", &format!("/v1/outgoing/amqp/{name}"), def).await
}

async fn guest_conn(srv: &Server, name: &str, extra: Value) {
    let mut def = json!({"address": RABBIT, "username": "guest", "password": "guest"});
    def.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = put_conn(srv, name, def).await;
    assert!(r.status == 200 || r.status == 201, "{}", text(&r));
}

async fn send(srv: &Server, path: &str, doc: Value) -> Value {
    let r = srv.post_json(path, &doc).await;
    assert_eq!(r.status, 200, "{path} {doc}: {}", text(&r));
    r.json()
}

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

fn header<'a>(props: &'a lapin::BasicProperties, k: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(&ShortString::from(k))
}

#[tokio::test]
async fn sends_are_confirmed_and_arrive_with_body_properties_and_headers() {
    let mut broker = Broker::new().await;
    let q = broker.queue("props").await;
    let srv = env(2).start().await;
    guest_conn(&srv, "mq", json!({"pool_size": 2})).await;

    // A dict with properties and headers, through the default exchange.
    let answer = send(
        &srv,
        "/send",
        json!({"conn": "mq", "routing_key": q, "body": {"order": 42, "lines": ["a", "b"]},
               "properties": {"priority": 7, "correlation_id": "corr-1", "message_id": "m-1",
                              "type": "order.created", "app_id": "crm", "timestamp": 1_700_000_000,
                              "expiration": 600_000, "reply_to": "replies"},
               "headers": {"source": "crm", "n": 3, "ok": true, "tags": ["x", 1],
                           "nested": {"k": "v"}}}),
    )
    .await;
    assert_eq!(answer, json!({"sent": 1}));
    // A str and bytes, transient, mandatory (routed: no error).
    let answer = send(
        &srv,
        "/asend",
        json!({"conn": "mq", "routing_key": q, "body": "zażółć", "body_kind": "text",
               "properties": {"delivery_mode": 1}, "mandatory": true}),
    )
    .await;
    assert_eq!(answer, json!({"sent": 1}));

    let got = broker.drain(&q).await;
    assert_eq!(got.len(), 2, "both are in the queue once confirmed");
    let first = &got[0].delivery;
    let body: Value = serde_json::from_slice(&first.data).unwrap();
    assert_eq!(body, json!({"order": 42, "lines": ["a", "b"]}));
    let p = &first.properties;
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(p.delivery_mode(), &Some(2), "persistent unless told");
    assert_eq!(p.priority(), &Some(7));
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "corr-1");
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m-1");
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.created");
    assert_eq!(p.app_id().as_ref().unwrap().as_str(), "crm");
    assert_eq!(p.timestamp(), &Some(1_700_000_000));
    assert_eq!(p.expiration().as_ref().unwrap().as_str(), "600000");
    assert_eq!(p.reply_to().as_ref().unwrap().as_str(), "replies");
    assert_eq!(
        header(p, "source"),
        Some(&AMQPValue::LongString("crm".into()))
    );
    assert_eq!(header(p, "ok"), Some(&AMQPValue::Boolean(true)));
    assert!(matches!(
        header(p, "n"),
        Some(AMQPValue::LongLongInt(3) | AMQPValue::LongInt(3) | AMQPValue::ShortShortInt(3))
    ));
    assert!(matches!(header(p, "tags"), Some(AMQPValue::FieldArray(_))));
    assert!(matches!(
        header(p, "nested"),
        Some(AMQPValue::FieldTable(_))
    ));
    let second = &got[1].delivery;
    assert_eq!(second.data, "zażółć".as_bytes());
    assert_eq!(second.properties.delivery_mode(), &Some(1));
    assert_eq!(second.properties.content_type(), &None);

    // N messages from concurrent invocations: every one confirmed is in the queue.
    let (invocations, each) = (8, 25);
    let sends = (0..invocations).map(|i| {
        let path = if i % 2 == 0 { "/send" } else { "/asend" };
        let doc = json!({"conn": "mq", "routing_key": q, "body": format!("m{i}"),
                         "body_kind": "bytes", "n": each});
        let srv = &srv;
        async move { send(srv, path, doc).await }
    });
    for answer in futures_util::future::join_all(sends).await {
        assert_eq!(answer, json!({"sent": each}));
    }
    let got = broker.drain(&q).await;
    assert_eq!(got.len(), invocations * each);
    for i in 0..invocations {
        let n = got
            .iter()
            .filter(|m| m.delivery.data == format!("m{i}").as_bytes())
            .count();
        assert_eq!(n, each, "invocation {i}'s messages");
    }

    // The figures count them.
    let r = admin(&srv, "GET", "/v1/outgoing/amqp/mq/stats", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let s = r.json();
    assert_eq!(s["calls"], json!(2 + invocations * each));
    assert_eq!(s["errors"], json!(0));
    assert_eq!(s["pool_size"], json!(2));
    // And the metrics, with type="amqp".
    let total = (2 + invocations * each) as f64;
    let labels = [("type", "amqp"), ("conn", "mq")];
    let p = prom::scrape_until(&srv, "the amqp series", |p| {
        p.get("oxbus_outgoing_calls_total", &labels) == Some(total)
    })
    .await;
    assert_eq!(p.get("oxbus_outgoing_pool_size", &labels), Some(2.0));
    assert_eq!(
        p.get("oxbus_outgoing_call_duration_seconds_count", &labels),
        Some(total)
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn unroutable_nacked_refused_and_the_channel_replaced() {
    let mut broker = Broker::new().await;
    let q = broker.queue("returns").await;
    // A full queue that rejects publishes: the broker nacks the second message.
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongInt(1));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let full = broker.queue_with("full", full).await;
    let srv = env(1).start().await;
    // One channel: the send after the refused one goes on the replaced channel.
    guest_conn(&srv, "mq1", json!({"pool_size": 1})).await;

    let nobody = format!("nobody-{}", next_id());
    let answer = send(
        &srv,
        "/send",
        json!({"conn": "mq1", "exchange": "amq.direct", "routing_key": nobody,
               "body": "lost?", "body_kind": "text", "mandatory": true}),
    )
    .await;
    let msg = failed_with(&answer, "AmqpUnroutable");
    assert!(msg.starts_with("AMQP connection \"mq1\""), "{msg}");
    assert!(
        answer["bases"]
            .as_array()
            .unwrap()
            .contains(&json!("OutgoingError"))
    );
    assert_eq!(answer["reply_code"], json!(312));
    assert_eq!(answer["reply_text"], json!("NO_ROUTE"));
    // Not mandatory: the broker drops it and confirms (AMQP's rule), no error.
    let answer = send(
        &srv,
        "/send",
        json!({"conn": "mq1", "exchange": "amq.direct", "routing_key": nobody, "body": 1}),
    )
    .await;
    assert_eq!(answer, json!({"sent": 1}));

    let answer = send(
        &srv,
        "/send",
        json!({"conn": "mq1", "routing_key": full, "body": "one", "body_kind": "text"}),
    )
    .await;
    assert_eq!(answer, json!({"sent": 1}));
    let answer = send(
        &srv,
        "/asend",
        json!({"conn": "mq1", "routing_key": full, "body": "two", "body_kind": "text"}),
    )
    .await;
    let msg = failed_with(&answer, "AmqpNack");
    assert!(msg.starts_with("AMQP connection \"mq1\""), "{msg}");
    assert_eq!(broker.drain(&full).await.len(), 1);

    let missing = format!("oxbus-missing-{}", next_id());
    let answer = send(
        &srv,
        "/send",
        json!({"conn": "mq1", "exchange": missing, "routing_key": "k", "body": 1}),
    )
    .await;
    let msg = failed_with(&answer, "AmqpRefused");
    assert!(msg.contains("AMQP connection \"mq1\""), "{msg}");
    assert!(msg.contains("NOT_FOUND") && msg.contains(&missing), "{msg}");

    for path in ["/send", "/asend"] {
        let answer = send(
            &srv,
            path,
            json!({"conn": "mq1", "routing_key": q, "body": "after", "body_kind": "text"}),
        )
        .await;
        assert_eq!(answer, json!({"sent": 1}), "the channel was replaced");
    }
    assert_eq!(broker.drain(&q).await.len(), 2);

    let s = admin(&srv, "GET", "/v1/outgoing/amqp/mq1/stats", Value::Null)
        .await
        .json();
    assert_eq!(
        (s["calls"].clone(), s["errors"].clone()),
        (json!(4), json!(3))
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn a_closed_port_or_a_wrong_password_fails_clearly() {
    let srv = env(1).start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // A long connect timeout: a refusal must come from the refusal, not from it.
    let r = put_conn(
        &srv,
        "down",
        json!({"address": format!("amqp://127.0.0.1:{port}/%2f"), "connect_timeout_ms": 600_000}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let answer = send(
        &srv,
        "/send",
        json!({"conn": "down", "routing_key": "q", "body": 1}),
    )
    .await;
    let msg = failed_with(&answer, "OutgoingConnectionError");
    assert!(
        msg.starts_with("AMQP connection \"down\": connect to amqp://127.0.0.1:"),
        "{msg}"
    );
    assert!(!msg.contains("no answer within"), "{msg}");
    let ping = admin(&srv, "POST", "/v1/outgoing/amqp/down/ping", Value::Null).await;
    assert_eq!(ping.status, 200);
    assert_eq!(ping.json()["ok"], json!(false));

    let r = put_conn(
        &srv,
        "badpw",
        json!({"address": RABBIT, "username": "guest", "password": WRONG_PW}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let answer = send(
        &srv,
        "/asend",
        json!({"conn": "badpw", "routing_key": "q", "body": 1}),
    )
    .await;
    let msg = failed_with(&answer, "OutgoingConnectionError");
    assert!(msg.starts_with("AMQP connection \"badpw\""), "{msg}");
    assert!(!msg.contains(WRONG_PW), "{msg}");
    let ping = admin(&srv, "POST", "/v1/outgoing/amqp/badpw/ping", Value::Null).await;
    assert_eq!(ping.json()["ok"], json!(false), "{}", text(&ping));
    assert!(!text(&ping).contains(WRONG_PW));

    let answer = send(&srv, "/send", json!({"conn": "nope", "body": 1})).await;
    let msg = failed_with(&answer, "UnknownConnection");
    assert!(msg.contains("no AMQP connection \"nope\""), "{msg}");
    assert!(!srv.log().contains(WRONG_PW), "the log shows the password");
}

#[tokio::test]
async fn admin_put_get_ping_edit_delete_without_showing_credentials() {
    let srv = env(1).start().await;
    // Refusals name the field; a password in the address is never echoed.
    for (def, field) in [
        (json!({"address": "http://127.0.0.1"}), "address"),
        (
            json!({"address": format!("amqp://guest:{WRONG_PW}@127.0.0.1/")}),
            "address",
        ),
        (json!({"address": RABBIT, "pool_size": 0}), "pool_size"),
        (json!({"address": RABBIT, "tls": {"verify": false}}), "tls"),
        (json!({"address": RABBIT, "password": "x"}), "username"),
    ] {
        let r = put_conn(&srv, "bad", def.clone()).await;
        assert_eq!(r.status, 400, "{def}: {}", text(&r));
        assert!(text(&r).contains(field), "{def}: {}", text(&r));
        assert!(!text(&r).contains(WRONG_PW));
    }

    let r = put_conn(
        &srv,
        "orders",
        json!({"address": RABBIT, "username": "guest", "password": "guest", "pool_size": 3}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.json()["connection"]["has_secret"], json!(true));
    let got = admin(&srv, "GET", "/v1/outgoing/amqp/orders", Value::Null).await;
    assert_eq!(got.status, 200);
    let d = got.json();
    assert_eq!(d["pool_size"], json!(3));
    assert_eq!(d["has_secret"], json!(true));
    assert!(
        d.get("sealed").is_none() && d.get("password").is_none(),
        "{d}"
    );
    let list = admin(&srv, "GET", "/v1/outgoing/amqp", Value::Null)
        .await
        .json();
    assert_eq!(list["amqp"].as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains("oxbus1:"), "{list}");

    let ping = admin(&srv, "POST", "/v1/outgoing/amqp/orders/ping", Value::Null).await;
    assert_eq!(ping.json()["ok"], json!(true), "{}", text(&ping));

    // An edit without the password keeps it while address and username stay.
    let r = put_conn(
        &srv,
        "orders",
        json!({"address": RABBIT, "username": "guest", "pool_size": 5}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let ping = admin(&srv, "POST", "/v1/outgoing/amqp/orders/ping", Value::Null).await;
    assert_eq!(ping.json()["ok"], json!(true), "{}", text(&ping));
    let r = put_conn(
        &srv,
        "orders",
        json!({"address": "amqp://localhost:5672/%2f", "username": "guest"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("give password again"), "{}", text(&r));

    // The CLI sees it; the export has it sealed only.
    let out = srv.cli(&["out", "list", "amqp"]);
    let shown = api::ok(&out);
    assert!(
        shown.contains("orders") && shown.contains(RABBIT),
        "{shown}"
    );
    let export = admin(&srv, "GET", "/v1/config", Value::Null).await;
    let e = text(&export);
    assert!(e.contains("outgoing_amqp") && e.contains("oxbus1:"), "{e}");

    let r = admin(&srv, "DELETE", "/v1/outgoing/amqp/orders", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let answer = send(&srv, "/send", json!({"conn": "orders", "body": 1})).await;
    failed_with(&answer, "UnknownConnection");
    let got = admin(&srv, "GET", "/v1/outgoing/amqp/orders", Value::Null).await;
    assert_eq!(got.status, 404);
}

#[tokio::test]
async fn a_cut_connection_is_opened_again_and_sends_resume() {
    let mut broker = Broker::new().await;
    let q = broker.queue("reconnect").await;
    let relay = Relay::start("127.0.0.1:5672").await;
    let srv = env(1).start().await;
    let address = format!("amqp://{}/%2f", relay.host_port());
    guest_conn(
        &srv,
        "cut",
        json!({"address": address, "pool_size": 2, "connect_timeout_ms": 3000}),
    )
    .await;
    let one = json!({"conn": "cut", "routing_key": q, "body": "m", "body_kind": "text"});
    assert_eq!(send(&srv, "/send", one.clone()).await, json!({"sent": 1}));
    assert_eq!(
        relay.accepted(),
        1,
        "the server's one AMQP connection went through the relay"
    );
    relay.cut().await;
    // While the broker is away a send fails, naming the connection.
    let answer = send(&srv, "/send", one.clone()).await;
    let msg = failed_with(&answer, "OutgoingConnectionError");
    assert!(msg.starts_with("AMQP connection \"cut\""), "{msg}");
    relay.restore().await;

    // Sends made before the server noticed or within the backoff of its refused connect
    // fail (as a connection error, naming it); then they go through again, on a new
    // connection.
    let mut confirmed = 1;
    let mut failures = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = send(&srv, "/send", one.clone()).await;
        if answer == json!({"sent": 1}) {
            break;
        }
        let msg = failed_with(&answer, "OutgoingConnectionError");
        assert!(msg.starts_with("AMQP connection \"cut\""), "{msg}");
        failures.push(msg);
        assert!(
            std::time::Instant::now() < deadline,
            "no send went through after the cut: {failures:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    confirmed += 1;
    assert_eq!(
        send(
            &srv,
            "/asend",
            json!({"conn": "cut", "routing_key": q, "body": "m",
                                           "body_kind": "text", "n": 20})
        )
        .await,
        json!({"sent": 20})
    );
    confirmed += 20;
    // Sends in the backoff after the refused connect fail fast with that connect's error,
    // without a new attempt: the relay saw one new connection, not one per send.
    assert!(
        failures
            .iter()
            .all(|m| m.contains("refused") || m.contains("broke")),
        "{failures:?}"
    );
    assert_eq!(relay.accepted(), 2, "one new connection after the cut");
    assert_eq!(
        broker.drain(&q).await.len(),
        confirmed,
        "every confirmed send is there"
    );
    broker.cleanup().await;
}

/// Concurrent mandatory sends, routable and not, on one channel (pool_size 1) of a server
/// whose runtime has two I/O threads: each gets its own outcome (a return is never handed
/// to another send; two publishes racing on the channel never swap their confirms), and
/// the routable ones are all in the queue, each once.
#[tokio::test]
async fn concurrent_mixed_mandatory_sends_on_one_channel_each_get_their_own_outcome() {
    let mut broker = Broker::new().await;
    let q = broker.queue("mixed").await;
    let srv = env(2).set("server", "io_threads", "2").start().await;
    guest_conn(&srv, "one", json!({"pool_size": 1})).await;
    let nowhere = format!("{q}-nowhere");
    let keys: Vec<&str> = (0..40)
        .map(|i| {
            if i % 3 == 0 {
                nowhere.as_str()
            } else {
                q.as_str()
            }
        })
        .collect();
    let rounds = (0..4).map(|_| {
        let srv = &srv;
        let doc = json!({"conn": "one", "keys": keys});
        async move { send(srv, "/mixed", doc).await }
    });
    let mut routed = 0;
    for answer in futures_util::future::join_all(rounds).await {
        let outcomes = answer.as_array().expect("a list of outcomes");
        assert_eq!(outcomes.len(), keys.len());
        for (key, outcome) in keys.iter().zip(outcomes) {
            let outcome = outcome.as_str().unwrap();
            if *key == q {
                assert_eq!(outcome, "ok", "a routable send");
                routed += 1;
            } else {
                assert!(
                    outcome.starts_with("AmqpUnroutable: ") && outcome.contains("NO_ROUTE"),
                    "an unroutable send: {outcome}"
                );
            }
        }
    }
    let got = broker.drain(&q).await;
    assert_eq!(got.len(), routed, "every confirmed send is there once");
    // lapin's own warning of a return carries the message; it is not logged.
    let log = srv.log();
    assert!(
        log.contains("the broker returned the mandatory message"),
        "our own line of a return"
    );
    assert!(
        !log.contains("mixed-body") && !log.contains("Server returned us a message"),
        "a returned message in the server log"
    );
    broker.cleanup().await;
}

/// A broker that accepts TCP connections and never answers: the sends fail as timeouts
/// bounded by the connection's connect timeout or the caller's own `timeout`, and sends
/// made together share one connect attempt.
#[tokio::test]
async fn a_blackholed_broker_gives_timeouts_and_one_connect_attempt_serves_waiting_sends() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s); // kept open, never answered
        }
    });
    let srv = env(1).start().await;
    guest_conn(
        &srv,
        "hole",
        json!({"address": format!("amqp://127.0.0.1:{port}/%2f"),
               "connect_timeout_ms": 1500, "pool_size": 1}),
    )
    .await;
    let answer = send(
        &srv,
        "/mixed",
        json!({"conn": "hole", "keys": ["a", "b", "c", "d"]}),
    )
    .await;
    for outcome in answer.as_array().unwrap() {
        let outcome = outcome.as_str().unwrap();
        assert!(
            outcome.starts_with("OutgoingTimeout: AMQP connection \"hole\""),
            "{outcome}"
        );
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "four sends waiting together made one connect attempt"
    );

    // The caller's timeout bounds the whole send, connecting included.
    guest_conn(
        &srv,
        "hole2",
        json!({"address": format!("amqp://127.0.0.1:{port}/%2f"),
               "connect_timeout_ms": 60000, "confirm_timeout_ms": 60000}),
    )
    .await;
    let answer = send(
        &srv,
        "/mixed",
        json!({"conn": "hole2", "keys": ["a"], "timeout": 0.3}),
    )
    .await;
    let outcome = answer[0].as_str().unwrap();
    assert!(
        outcome.starts_with("OutgoingTimeout: AMQP connection \"hole2\"")
            && outcome.contains("within 300 ms: nothing was sent"),
        "{outcome}"
    );
}
